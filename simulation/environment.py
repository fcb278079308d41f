"""The environment loop of one market (shard) under one policy: days, sessions, steps.

Each day: the catalog opens (new sellers, replaced items, stock), the day's visitors start a
session each, and the sessions advance step by step together (vectorised over the sessions
still running): the upstream ranker scores every live item for every running session and sends
its top N; the engine re-ranks each request under the simulated policy (`engine.decide.decide`,
one call per request, in user order, with a ledger owned by this simulation for the policy's
amortized exposure rules: snapshots read before each call, its deltas recorded after); the users
respond (a click or none, a purchase or none), spend and win back time, and their interests
move. Ended sessions decide whether their users come back; at night, sellers below the viability
rule leave. Every random number is keyed by what it is about (simulation.rng), so two policies
see the same users, items and noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engine.decide import PolicyVersion, decide
from engine.errors import RerankError
from engine.ledger import InProcessLedger
from engine.types import Attribute, Candidates, RerankRequest, slate_indices
from engine.validate import Limits
from simulation import rng
from simulation.catalog import Catalog
from simulation.ranker import retrieve, scores
from simulation.scenario import AVAILABILITY, CONTENT_TYPES, TIERS, Scenario
from simulation.users import Users, choose, sigmoid

#: examination weights of the click model, by name (K -> float64[K])
POSITION_BIAS: dict[str, Callable[[int], np.ndarray]] = {
    "log2": lambda k: 1.0 / np.log2(np.arange(k) + 2.0),
    "reciprocal": lambda k: 1.0 / (np.arange(k) + 1.0),
    "none": lambda k: np.ones(k),
}


class SimulationError(RuntimeError):
    """A simulation cannot go on (the engine refused a simulated request)."""


def exposure_weights(k: int) -> np.ndarray:
    """Exposure of a position in the seller metrics and the viability rule: log2 (1 / log2(k + 2))."""
    return POSITION_BIAS["log2"](k)


#: per-day series every shard reports: sums over the shard's users / sellers / items (summed
#: over shards) ...
SUMMED = ("sessions", "requests", "impressions", "clicks", "purchases", "revenue", "active_users",
          "cohort_retained", "users_arrived", "initial_sellers_alive", "new_sellers_arrived",
          "new_sellers_alive", "new_sellers_viable_base", "new_sellers_viable", "new_seller_exposure",
          "exposure", "sellers_alive", "live_items")
#: ... and market statistics of the shard (averaged over shards)
MARKET = ("gini", "hhi", "item_gini", "coverage")


@dataclass
class ShardResult:
    """What one (policy, seed, shard) run gives: per-day series, totals, timings."""

    label: str
    seed: int
    shard: int
    days: int
    daily: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float64[days]
    totals: dict[str, float] = field(default_factory=dict)
    engine_s: float = 0.0  # time inside decide
    total_s: float = 0.0  # the whole run

    def key(self) -> tuple:
        return (self.label, self.seed, self.shard)


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0: equal, -> 1: concentrated); 0 for none."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n, total = len(x), float(x.sum())
    if n == 0 or total <= 0.0:
        return 0.0
    return float((2.0 * np.arange(1, n + 1) - n - 1.0) @ x / (n * total))


def hhi(x: np.ndarray) -> float:
    """Herfindahl-Hirschman index of the shares of `x` (1/n: equal, 1: one takes all); 0 for none."""
    x = np.asarray(x, dtype=np.float64)
    total = float(x.sum())
    if total <= 0.0:
        return 0.0
    s = x / total
    return float(s @ s)


def calibrate_intercept(scenario: Scenario, target_ctr: float, seed: int = 0) -> tuple[float, float]:
    """The click model's intercept at which the upstream ranker's own slates (its top K, no
    re-ranking) of day 0 get `target_ctr` clicks per impression, by bisection over a sample of
    `clicks.calibration_requests` requests of shard 0. Returns (intercept, achieved CTR)."""
    cfg = scenario.clicks
    cat = Catalog(scenario.catalog, scenario.horizon_days, seed, 0, scenario.shards)
    users = Users(scenario.users, scenario.catalog.categories, scenario.horizon_days, seed, 0, scenario.shards)
    live = cat.start_day(0)
    n_req = cfg.calibration_requests
    key = rng.stream_key(seed, 0, rng.CALIBRATION)
    who = (rng.uniform(key, np.arange(n_req), 0) * users.n_initial).astype(np.int64)
    A = users.affinity(who, cat.category[live], cat.quality[live])
    S = scores(scenario.ranker, A, key, (np.arange(n_req), 1, 0),
               cat.item_key(live), cat.clicks[live].astype(np.float64))
    K = scenario.engine.slate_size
    top = retrieve(S, K)
    a = np.take_along_axis(A, top, axis=1)
    logw = np.log(POSITION_BIAS[cfg.position_bias](K))[None, :]

    def ctr(alpha: float) -> float:
        z = alpha + cfg.affinity_weight * a + logw
        top_z = np.maximum(z.max(axis=1), 0.0)
        e = np.exp(z - top_z[:, None])
        p = e.sum(axis=1) / (np.exp(-top_z) + e.sum(axis=1))
        return float(p.mean() / K)

    lo, hi = -60.0, 30.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if ctr(mid) < target_ctr:
            lo = mid
        else:
            hi = mid
    alpha = 0.5 * (lo + hi)
    return alpha, ctr(alpha)


class Market:
    """One shard's users and catalog under one policy, with its own ledger."""

    def __init__(self, scenario: Scenario, version: PolicyVersion, seed: int, shard: int, intercept: float,
                 label: str = ""):
        self.s = scenario
        self.version = version
        self.label = label or version.name
        self.seed, self.shard = seed, shard
        self.intercept = intercept
        H = scenario.horizon_days
        self.catalog = Catalog(scenario.catalog, H, seed, shard, scenario.shards)
        self.users = Users(scenario.users, scenario.catalog.categories, H, seed, shard, scenario.shards)
        self._k_noise = rng.stream_key(seed, shard, rng.RANKER_NOISE)
        self._k_click = rng.stream_key(seed, shard, rng.CLICK)
        self._k_buy = rng.stream_key(seed, shard, rng.PURCHASE)
        self.ledger = InProcessLedger()
        self.namespaces = version.ledger_namespaces()
        self.limits = Limits()
        K = scenario.engine.slate_size
        self.K = K
        self.logw = np.log(POSITION_BIAS[scenario.clicks.position_bias](K))
        self.expw = exposure_weights(K)
        self.categories = tuple(f"c{c}" for c in range(scenario.catalog.categories))
        self.solver = "greedy" if scenario.engine.solver == "greedy" else None
        self.engine_s = 0.0
        self.daily = {name: np.zeros(H) for name in SUMMED + MARKET}

    # -- one request through the engine
    def _decide(self, cand: np.ndarray, cols: dict, ids: list[str], attrs: dict, req_id: str, user: int) -> np.ndarray:
        candidates = Candidates(item_ids=[ids[j] for j in cand.tolist()], scores=cols, attributes=attrs,
                                numeric={})
        req = RerankRequest(policy=self.version.name, candidates=candidates, slate_size=self.K,
                            solver=self.solver, request_id=req_id, user_id=f"u{self.shard}-{user}")
        t0 = time.perf_counter()
        try:
            if self.namespaces:
                snaps = {ns: self.ledger.snapshot(ns) for ns in self.namespaces}
                decision = decide(self.version, req, limits=self.limits, snapshots=snaps)
                for ns, deltas in decision.deltas.items():
                    self.ledger.record(ns, deltas)
            else:
                decision = decide(self.version, req, limits=self.limits)
        except RerankError as e:
            raise SimulationError(f"policy {self.label!r}: the engine refused request {req_id}: {e}") from None
        finally:
            self.engine_s += time.perf_counter() - t0
        return slate_indices(decision.result.items)

    def run_day(self, d: int) -> None:
        s, cat, users, K = self.s, self.catalog, self.users, self.K
        daily = self.daily
        live = cat.start_day(d)
        L = len(live)
        ids = [f"i{self.shard}-{j}-{g}" for j, g in zip(live.tolist(), cat.gen[live].tolist())]
        item_keys = cat.item_key(live)
        cat_live, q_live = cat.category[live], cat.quality[live]
        tier_codes = cat.tier_new(d).astype(np.int64)[cat.seller_of[live]]
        seller_codes = cat.seller_of[live]
        video = cat.video[live].astype(np.int64)
        stock = cat.out_of_stock[live].astype(np.int64)
        pp, price = cat.purchase_prob[live], cat.price[live]
        shown = np.zeros(L, np.bool_)

        visitors = users.visitors(d)
        budget = users.budgets(visitors, d)
        session_value = np.zeros(len(visitors))
        running = np.arange(len(visitors))
        daily["sessions"][d] = len(visitors)
        daily["active_users"][d] = len(visitors)
        aw = s.clicks.affinity_weight
        N = min(s.engine.candidates, L)
        for step in range(s.users.session.max_steps):
            if not len(running) or L == 0:
                break
            u = visitors[running]
            A = users.affinity(u, cat_live, q_live)
            S = scores(s.ranker, A, self._k_noise, (u, d, step), item_keys, cat.clicks[live].astype(np.float64))
            cand = retrieve(S, N)  # [R, N] local item indices, upstream order
            s_hat = np.take_along_axis(S, cand, axis=1)
            p_click = sigmoid(self.intercept + aw * s_hat)
            pp_c = pp[cand]
            p_buy = p_click * pp_c
            cols_all = {"p_click": p_click, "p_add_to_cart": p_click * np.minimum(1.0, 2.0 * pp_c),
                        "p_purchase": p_buy, "predicted_value": p_buy * price[cand]}
            codes = {"category": (cat_live[cand], self.categories), "seller": (seller_codes[cand], cat.seller_names),
                     "seller_tier": (tier_codes[cand], TIERS), "content_type": (video[cand], CONTENT_TYPES),
                     "availability": (stock[cand], AVAILABILITY)}
            R = len(running)
            slates = np.full((R, K), -1, np.int64)  # local item indices
            for r in range(R):
                cols = {name: m[r] for name, m in cols_all.items()}
                attrs = {name: Attribute(c[r], dic) for name, (c, dic) in codes.items()}
                picked = self._decide(cand[r], cols, ids, attrs, f"{self.shard}-{u[r]}-{d}-{step}", int(u[r]))
                slates[r, :len(picked)] = cand[r][picked]
            daily["requests"][d] += R
            # the users' response, vectorised over the running sessions
            ok = slates >= 0
            safe = np.where(ok, slates, 0)
            a_sl = np.take_along_axis(A, safe, axis=1)
            logits = np.where(ok, self.intercept + aw * a_sl + self.logw[None, :], -np.inf)
            pos = choose(logits, rng.uniform(self._k_click, u, d, step))
            clicked_local = np.where(pos >= 0, slates[np.arange(R), np.maximum(pos, 0)], -1)
            has = clicked_local >= 0
            clicked_slot = np.where(has, live[np.maximum(clicked_local, 0)], -1)
            shown[slates[ok]] = True
            cat.record(d, np.where(ok, live[safe], -1), self.expw, clicked_slot)
            daily["impressions"][d] += ok.sum()
            daily["clicks"][d] += has.sum()
            # purchases
            buy = has & (rng.uniform(self._k_buy, u, d, step) < pp[np.maximum(clicked_local, 0)])
            if buy.any():
                v = price[clicked_local[buy]]
                np.add.at(users.value, u[buy], v)
                daily["purchases"][d] += buy.sum()
                daily["revenue"][d] += v.sum()
            # time budget and interest evolution
            sess = s.users.session
            q_click = np.where(has, q_live[np.maximum(clicked_local, 0)], 0.0)
            budget[running] -= np.where(has, sess.click_cost - sess.give_back * q_click, sess.browse_cost)
            session_value[running] += np.where(has, 1.0 + q_click, 0.0)
            if has.any():
                users.after_clicks(u[has], cat_live[clicked_local[has]], q_click[has])
            running = running[budget[running] > 0]
        users.end_sessions(visitors, d, session_value)
        cat.end_day(d)
        self._day_metrics(d, live, shown)

    def _day_metrics(self, d: int, live: np.ndarray, shown: np.ndarray) -> None:
        cat, users, daily = self.catalog, self.users, self.daily
        W = self.s.catalog.churn.window_days
        exp_today = cat.exposure[:, d]
        present = (cat.arrival <= d) & ((cat.left_day < 0) | (cat.left_day >= d))  # open today
        new = cat.arrival > 0
        daily["cohort_retained"][d] = users.retained[:users.n_initial].sum()
        daily["users_arrived"][d] = (users.arrival <= d).sum()
        daily["initial_sellers_alive"][d] = cat.alive[:cat.n_initial].sum()
        daily["sellers_alive"][d] = cat.alive.sum()
        daily["new_sellers_arrived"][d] = (new & (cat.arrival <= d)).sum()
        daily["new_sellers_alive"][d] = (new & cat.alive).sum()
        # new sellers past their first window: how many of them are still there
        base = new & (d - cat.arrival + 1 >= W)
        daily["new_sellers_viable_base"][d] = base.sum()
        daily["new_sellers_viable"][d] = (base & cat.alive).sum()
        daily["new_seller_exposure"][d] = exp_today[new].sum()
        daily["exposure"][d] = exp_today.sum()
        daily["live_items"][d] = len(live)
        daily["gini"][d] = gini(exp_today[present])
        daily["hhi"][d] = hhi(exp_today[present])
        daily["item_gini"][d] = gini(cat.item_exposure[live])
        daily["coverage"][d] = shown.mean() if len(shown) else 0.0

    def run(self, advance: Callable[[int], None] | None = None) -> ShardResult:
        t0 = time.perf_counter()
        for d in range(self.s.horizon_days):
            self.run_day(d)
            if advance is not None:
                advance(int(self.daily["sessions"][d]))
        users = self.users
        cohort = users.n_initial
        totals = {"cohort": float(cohort), "cohort_value": float(users.value[:cohort].sum()),
                  "users": float(users.n), "value": float(users.value.sum()),
                  "initial_sellers": float(self.catalog.n_initial)}
        return ShardResult(self.label, self.seed, self.shard, self.s.horizon_days,
                           {k: v.copy() for k, v in self.daily.items()}, totals, self.engine_s,
                           time.perf_counter() - t0)


def simulate_shard(scenario: Scenario, version: PolicyVersion, seed: int, shard: int, intercept: float,
                   label: str = "", advance: Callable[[int], None] | None = None) -> ShardResult:
    """Run one market (shard) of one seed under one policy over the horizon."""
    return Market(scenario, version, seed, shard, intercept, label).run(advance)
