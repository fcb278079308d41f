"""The user model of one market (shard), in the shape of RecSim's interest-evolution user.

State per user: an interest per category (drawn from the user's identity), a satisfaction (an
exponential average over sessions), whether the user is still around, what they bought.
- Response (`choose`): a multinomial logit over the slate and "no click" (logit 0): item logit =
  intercept + affinity_weight * affinity + log(examination weight of its position); the affinity
  of user u for item i is interest[u, category(i)] + quality(i).
- Session (`Session budget`): a time budget; a slate without a click spends browse_cost, a click
  spends click_cost and gives back give_back * quality (a bad item takes time instead).
- Transition (`after_clicks`): the interest in a clicked item's category moves by interest_step
  toward +1 if the item was good (quality > 0), toward -1 if bad.
- Return (`end_sessions`): after a session, satisfaction = memory * satisfaction + (1 - memory) *
  the session's sum over clicks of (1 + quality); the user comes back with probability
  sigmoid(base + slope * satisfaction), else leaves for good. A retained user visits on a day with
  probability visit_prob; a new user visits on the day they arrive.
"""

from __future__ import annotations

import numpy as np

from simulation import rng
from simulation.catalog import share_of
from simulation.scenario import Users as UsersConfig


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def choose(logits: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """The clicked position per row of `logits` float64[R, K] (-inf: no item there) against the
    no-click option (logit 0), by inverting the choice CDF at `uniforms` float64[R]; -1: no click."""
    if logits.shape[1] == 0:
        return np.full(logits.shape[0], -1, np.int64)
    top = np.maximum(logits.max(axis=1, initial=0.0), 0.0)
    e = np.exp(logits - top[:, None])
    denom = np.exp(-top) + e.sum(axis=1)
    cdf = np.cumsum(e, axis=1) / denom[:, None]
    pos = (cdf < uniforms[:, None]).sum(axis=1)
    return np.where(pos < logits.shape[1], pos, -1).astype(np.int64)


def click_probabilities(logits: np.ndarray) -> np.ndarray:
    """P(click at each position) float64[R, K] of the same choice model."""
    top = np.maximum(logits.max(axis=1, initial=0.0), 0.0) if logits.size else np.zeros(len(logits))
    e = np.exp(logits - top[:, None])
    return e / (np.exp(-top) + e.sum(axis=1))[:, None]


class Users:
    def __init__(self, cfg: UsersConfig, categories: int, horizon: int, seed: int, shard: int, shards: int):
        self.cfg = cfg
        k = lambda stream: rng.stream_key(seed, shard, stream)  # noqa: E731
        self._k_visit, self._k_budget, self._k_return = k(rng.USER_VISIT), k(rng.USER_BUDGET), k(rng.USER_RETURN)
        u0 = share_of(cfg.initial, shards, shard)
        per_day = rng.poisson(k(rng.USER_ARRIVALS), cfg.arrivals_per_day / shards, np.arange(horizon))
        per_day[0] = 0
        self.arrival = np.concatenate([np.zeros(u0, np.int64),
                                       np.repeat(np.arange(horizon, dtype=np.int64), per_day)])
        U = len(self.arrival)
        self.n = U
        self.n_initial = u0
        uid = np.arange(U)
        self.interest = cfg.interest_sd * rng.normal(k(rng.USER_INTEREST), uid[:, None], np.arange(categories)[None, :])
        self.retained = np.ones(U, np.bool_)
        self.left_day = np.full(U, -1, np.int64)
        self.satisfaction = np.zeros(U)
        self.value = np.zeros(U)  # purchases' value so far (LTV)
        self.sessions = np.zeros(U, np.int64)

    def visitors(self, d: int) -> np.ndarray:
        """Users with a session on day d, in user order."""
        here = (self.arrival <= d) & self.retained
        u = np.flatnonzero(here)
        visit = (self.arrival[u] == d) | (rng.uniform(self._k_visit, u, d) < self.cfg.returns.visit_prob)
        return u[visit]

    def budgets(self, users: np.ndarray, d: int) -> np.ndarray:
        """Session budgets: budget x U(0.5, 1.5), from the user and day."""
        return self.cfg.session.budget * (0.5 + rng.uniform(self._k_budget, users, d))

    def affinity(self, users: np.ndarray, category: np.ndarray, quality: np.ndarray) -> np.ndarray:
        """float64[R, L]: true affinity of each user for each item."""
        return self.interest[users][:, category] + quality[None, :]

    def after_clicks(self, users: np.ndarray, category: np.ndarray, quality: np.ndarray) -> None:
        """Interest evolution for clicks of `users` on items of `category` and `quality` (one each)."""
        step = self.cfg.interest_step
        if step <= 0 or not len(users):
            return
        cur = self.interest[users, category]
        toward = np.where(quality > 0, 1.0, -1.0)
        self.interest[users, category] = cur + step * (toward - cur)

    def end_sessions(self, users: np.ndarray, d: int, session_value: np.ndarray) -> np.ndarray:
        """Sessions of `users` ended on day d with satisfaction `session_value`; returns the
        users who leave for good."""
        r = self.cfg.returns
        self.sessions[users] += 1
        s = r.memory * self.satisfaction[users] + (1.0 - r.memory) * session_value
        self.satisfaction[users] = s
        leave = rng.uniform(self._k_return, users, d) >= sigmoid(r.base + r.slope * s)
        gone = users[leave]
        self.retained[gone] = False
        self.left_day[gone] = d
        return gone
