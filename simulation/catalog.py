"""The item and seller sampler of one market (shard): who sells what, and who leaves.

Sellers: `initial_sellers` on day 0 (tier "established"), then a Poisson number of new sellers a
day, each with no history (tier "new" for `new_seller_days` days). Every seller has
`items_per_seller` item slots; an item lives an exponential number of days and its seller
replaces it with a new one (a new generation of the slot) the next day. Item attributes
(category, quality around its seller's, price, P(purchase | click), video or not) are drawn from
the item's identity (slot, generation), so a surviving seller has the same items under every
policy. RecSim NG's viable corpus: at the end of each day, a seller at least `churn.window_days`
old whose position-weighted exposure or clicks over the last window stay below the thresholds
leaves for good.
"""

from __future__ import annotations

import numpy as np

from simulation import rng
from simulation.scenario import Catalog as CatalogConfig

#: generations per slot that an item key can tell apart
_GEN_BITS = 20


def share_of(total: int, shards: int, shard: int) -> int:
    """The part of `total` that shard `shard` of `shards` gets (the first ones get the remainder)."""
    return total // shards + (1 if shard < total % shards else 0)


class Catalog:
    def __init__(self, cfg: CatalogConfig, horizon: int, seed: int, shard: int, shards: int):
        self.cfg = cfg
        self.horizon = horizon
        self.shard = shard
        k = lambda stream: rng.stream_key(seed, shard, stream)  # noqa: E731
        self._k_attrs, self._k_life, self._k_stock = k(rng.ITEM_ATTRS), k(rng.ITEM_LIFE), k(rng.ITEM_STOCK)
        s0 = share_of(cfg.initial_sellers, shards, shard)
        lam = cfg.new_sellers_per_day / shards
        per_day = rng.poisson(k(rng.SELLER_ARRIVALS), lam, np.arange(horizon))
        per_day[0] = 0
        self.arrival = np.concatenate([np.zeros(s0, np.int64),
                                       np.repeat(np.arange(horizon, dtype=np.int64), per_day)])
        self.n_initial = s0
        S, M = len(self.arrival), cfg.items_per_seller
        self.n_sellers = S
        self.seller_quality = cfg.seller_quality_sd * rng.normal(k(rng.SELLER_QUALITY), np.arange(S))
        self.seller_names = tuple(f"s{shard}-{s}" for s in range(S))
        self.alive = np.zeros(S, np.bool_)
        self.left_day = np.full(S, -1, np.int64)
        self.exposure = np.zeros((S, horizon))  # per seller and day
        self.clicks_by_day = np.zeros((S, horizon), np.int64)
        # item slots
        self.seller_of = np.repeat(np.arange(S, dtype=np.int64), M)
        n = S * M
        self.gen = np.zeros(n, np.int64)
        self.born = self.arrival[self.seller_of].copy()
        self.death = np.zeros(n, np.int64)
        self.category = np.zeros(n, np.int64)
        self.quality = np.zeros(n)
        self.price = np.zeros(n)
        self.purchase_prob = np.zeros(n)
        self.video = np.zeros(n, np.bool_)
        self.clicks = np.zeros(n, np.int64)  # the item's clicks since it was listed (popularity)
        self._draw(np.arange(n))
        self.out_of_stock = np.zeros(n, np.bool_)
        self.live = np.zeros(0, np.int64)
        self.item_exposure = np.zeros(n)  # per slot, today

    # -- items
    def item_key(self, slots: np.ndarray) -> np.ndarray:
        return (slots.astype(np.int64) << _GEN_BITS) | self.gen[slots]

    def _draw(self, slots: np.ndarray) -> None:
        """(Re)draw the items in `slots` from their identity (slot, generation)."""
        cfg, key = self.cfg, self.item_key(slots)
        k = self._k_attrs
        self.category[slots] = np.minimum((rng.uniform(k, key, 0) * cfg.categories).astype(np.int64),
                                          cfg.categories - 1)
        self.quality[slots] = self.seller_quality[self.seller_of[slots]] + cfg.quality_sd * rng.normal(k, key, 1)
        self.price[slots] = cfg.price_median * np.exp(cfg.price_sd_log * rng.normal(k, key, 2))
        # P(purchase | click) around its mean, a Beta-like spread from a logit-normal draw
        p = cfg.purchase_given_click
        if 0.0 < p < 1.0:
            logit = np.log(p / (1.0 - p)) + 0.5 * rng.normal(k, key, 3)
            self.purchase_prob[slots] = 1.0 / (1.0 + np.exp(-logit))
        else:
            self.purchase_prob[slots] = p
        self.video[slots] = rng.uniform(k, key, 4) < cfg.video_share
        life = -np.log(rng.uniform(self._k_life, key)) * cfg.item_lifetime_days
        self.death[slots] = self.born[slots] + np.maximum(1, np.ceil(life)).astype(np.int64)
        self.clicks[slots] = 0

    # -- days
    def start_day(self, d: int) -> np.ndarray:
        """Open day d: today's new sellers list their items, expired items are replaced, stock is
        drawn. Returns the live item slots (sellers present today), in slot order."""
        arriving = self.arrival == d
        self.alive |= arriving & (self.left_day < 0)
        live = np.flatnonzero(self.alive[self.seller_of])
        expired = live[self.death[live] <= d]
        if len(expired):
            self.gen[expired] += 1
            self.born[expired] = d
            self._draw(expired)
        self.out_of_stock[live] = rng.uniform(self._k_stock, self.item_key(live), d) < self.cfg.out_of_stock_share
        self.live = live
        self.item_exposure[:] = 0.0
        return live

    def tier_new(self, d: int) -> np.ndarray:
        """bool[sellers]: seller_tier is 'new' on day d (arrived after day 0, for new_seller_days)."""
        return (self.arrival > 0) & (d - self.arrival < self.cfg.new_seller_days)

    def record(self, d: int, slots: np.ndarray, weights: np.ndarray, clicked: np.ndarray) -> None:
        """Add a step's impressions: `slots` int64[R, K] (-1: no item), `weights` float64[K] of
        exposure per position, `clicked` the clicked slots (int64, -1: none)."""
        ok = slots >= 0
        sellers = self.seller_of[slots[ok]]
        w = np.broadcast_to(weights, slots.shape)[ok]
        self.exposure[:, d] += np.bincount(sellers, weights=w, minlength=self.n_sellers)
        self.item_exposure += np.bincount(slots[ok], weights=w, minlength=len(self.item_exposure))
        c = clicked[clicked >= 0]
        if len(c):
            np.add.at(self.clicks, c, 1)
            self.clicks_by_day[:, d] += np.bincount(self.seller_of[c], minlength=self.n_sellers)

    def end_day(self, d: int) -> np.ndarray:
        """Close day d: sellers failing the viability rule leave. Returns those sellers."""
        ch = self.cfg.churn
        W = ch.window_days
        old = self.alive & (d - self.arrival + 1 >= W)
        if not old.any() or (ch.min_exposure <= 0 and ch.min_clicks <= 0):
            return np.zeros(0, np.int64)
        lo = max(0, d - W + 1)
        exp_w = self.exposure[:, lo:d + 1].sum(axis=1)
        clk_w = self.clicks_by_day[:, lo:d + 1].sum(axis=1)
        leaving = old & ((exp_w < ch.min_exposure) | (clk_w < ch.min_clicks))
        out = np.flatnonzero(leaving)
        self.alive[out] = False
        self.left_day[out] = d
        return out
