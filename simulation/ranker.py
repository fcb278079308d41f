"""The upstream ranker: noisy, popularity-biased scores, and the candidates it sends the engine.

score(u, i) = affinity(u, i) + noise_sd * noise(u, day, step, i) + popularity_bias * log(1 + clicks(i)),
the noise drawn from the request's and the item's identity (common random numbers). The top
`candidates` items by score are the request; its score columns are the ranker's predictions in
the click model's units: p_click = sigmoid(intercept + affinity_weight * score), p_purchase =
p_click * P(purchase | click), p_add_to_cart = p_click * min(1, 2 P(purchase | click)),
predicted_value = p_purchase * price.
"""

from __future__ import annotations

import numpy as np

from simulation import rng
from simulation.scenario import Ranker as RankerConfig


def scores(cfg: RankerConfig, affinity: np.ndarray, noise_key: int, request_keys: tuple, item_keys: np.ndarray,
           popularity: np.ndarray) -> np.ndarray:
    """float64[R, L] ranker scores of the R requests (request_keys: (user[R], day, step)) over L items."""
    out = affinity.copy()
    if cfg.noise_sd > 0:
        u, d, s = request_keys
        out += cfg.noise_sd * rng.normal(noise_key, u[:, None], d, s, item_keys[None, :])
    if cfg.popularity_bias > 0:
        out += cfg.popularity_bias * np.log1p(popularity)[None, :]
    return out


def retrieve(score: np.ndarray, n: int) -> np.ndarray:
    """int64[R, n]: per row the columns of the n highest scores, best first."""
    R, L = score.shape
    if n >= L:
        top = np.broadcast_to(np.arange(L), (R, L))
    else:
        top = np.argpartition(-score, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(score, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return np.ascontiguousarray(top, dtype=np.int64)
