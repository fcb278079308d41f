"""Amortized exposure controller: the boost formula on hand-computed cases, what a slate adds to
the ledger, and simulations (no engine: a top-K ranker over random candidates) in which an
under-exposed group catches up to its target share of cumulative exposure.
"""

from __future__ import annotations

import numpy as np
import pytest

import math

from engine.amortized import (
    boosts, clip_boosts, exposure_deltas, merit_by_group, normalised_merit, request_scale,
)
from engine.ledger import InProcessLedger


# -- the boost formula, by hand ----------------------------------------------------------------
def test_share_target_boost_without_hint():
    # E = 10, M = 5, scale = M/E = 0.5, unit = 1; target exposure 0.2 * 10 = 2, shortfall 1.
    snap = {"new": (1.0, 0.5), "old": (9.0, 4.5)}
    assert boosts(snap, {"new": 0.2}, 2.0) == pytest.approx({"new": 2.0 * 0.5 * 1.0})


def test_share_target_boost_with_hint_counts_shortfall_in_slates():
    # Same ledger after n = 5 requests: one request hands out 10 / 5 = 2 units of exposure, so
    # the shortfall of 1 is half a slate: boost = 2.0 * 0.5 * 1 / 2 = 0.5.
    snap = {"new": (1.0, 0.5), "old": (9.0, 4.5)}
    assert boosts(snap, {"new": 0.2}, 2.0, n_requests_hint=5) == pytest.approx({"new": 0.5})
    # = gain * scale * n * (target share - actual share): FairCo's error term in share units.
    assert boosts(snap, {"new": 0.2}, 2.0, n_requests_hint=5)["new"] == pytest.approx(
        2.0 * 0.5 * 5 * (0.2 - 0.1))


def test_utility_scale_overrides_merit_per_exposure():
    snap = {"new": (1.0, 0.5), "old": (9.0, 4.5)}
    assert boosts(snap, {"new": 0.2}, 2.0, utility_scale=3.0) == pytest.approx({"new": 6.0})


def test_groups_at_or_above_target_get_zero():
    snap = {"new": (2.0, 1.0), "mid": (3.0, 1.0), "old": (5.0, 1.0)}
    assert boosts(snap, {"new": 0.2, "mid": 0.25}, 1.0) == {"new": 0.0, "mid": 0.0}


def test_target_group_absent_from_the_ledger_is_boosted():
    # E = 8, M = 2, scale 0.25; "new" has no exposure: shortfall 0.25 * 8 = 2 -> 1 * 0.25 * 2.
    assert boosts({"old": (8.0, 2.0)}, {"new": 0.25}, 1.0) == pytest.approx({"new": 0.5})


def test_empty_ledger_or_zero_gain_gives_zeros():
    assert boosts({}, {"new": 0.2}, 1.0) == {"new": 0.0}
    assert boosts({"old": (8.0, 2.0)}, {"new": 0.2}, 0.0) == {"new": 0.0}
    assert boosts({}, None, 1.0) == {}


def test_merit_proportional_targets():
    # E = 8, M = 4: "a" has merit share 1/4 -> target 2 <= 6 (boost 0); "b" has 3/4 -> target 6,
    # shortfall 4, scale 0.5 -> boost 1 * 0.5 * 4 = 2.
    snap = {"a": (6.0, 1.0), "b": (2.0, 3.0)}
    assert boosts(snap, None, 1.0) == pytest.approx({"a": 0.0, "b": 2.0})


def test_negative_merit_counts_as_zero_and_no_merit_means_scale_one():
    # Merit shares: a 0 (negative clipped), b 1 -> target of b is all 10 units; shortfall 6.
    snap = {"a": (6.0, -5.0), "b": (4.0, 2.0)}
    assert boosts(snap, None, 1.0) == pytest.approx({"a": 0.0, "b": 0.2 * 6.0})
    # No merit at all: scale 1, shortfall 0.5 * 10 - 4 = 1.
    assert boosts({"a": (6.0, 0.0), "b": (4.0, 0.0)}, {"b": 0.5}, 1.0) == pytest.approx({"b": 1.0})


@pytest.mark.parametrize("args, kwargs, message", [
    (({}, {"new": 0.2}, -1.0), {}, "amortized gain: must be a finite number >= 0, got -1.0"),
    (({}, {"new": 0.2}, float("nan")), {}, "amortized gain: must be a finite number >= 0, got nan"),
    (({}, {"new": 1.5}, 1.0), {}, "amortized targets['new']: must be a share in [0, 1], got 1.5"),
    (({}, {"a": 0.6, "b": 0.5}, 1.0), {}, "amortized targets: shares must sum to at most 1, got 1.1"),
    (({}, {"new": 0.2}, 1.0), {"n_requests_hint": 0},
     "amortized n_requests_hint: must be an integer >= 1, got 0"),
    (({}, {"new": 0.2}, 1.0), {"utility_scale": 0.0},
     "amortized utility_scale: must be a finite number > 0, got 0.0"),
])
def test_invalid_arguments_are_named(args, kwargs, message):
    with pytest.raises(ValueError) as e:
        boosts(*args, **kwargs)
    assert str(e.value) == message


# -- bounded whatever comes in (issue 9: one caller's 1e307 scores sent the merit to inf) ------
def test_boosts_are_finite_for_a_ledger_holding_inf_nan_or_huge_totals():
    inf, nan = math.inf, math.nan
    # non-finite totals count as 0: "a" reads as (0, 0), so E = 4, M = 2 and scale 0.5
    snap = {"a": (inf, nan), "b": (4.0, 2.0), "c": (nan, -inf)}
    assert boosts(snap, {"a": 0.5}, 1.0) == pytest.approx({"a": 0.5 * 2.0})
    assert boosts(snap, None, 1.0) == pytest.approx({"a": 0.0, "b": 0.0, "c": 0.0})
    # huge finite totals: sums stay finite, and an overflowing boost is the largest double
    huge = {"a": (1e308, 1e308), "b": (1e308, 1e308), "new": (0.0, 0.0)}
    for targets, kwargs in [({"new": 0.5}, {}), (None, {}), ({"new": 0.5}, {"utility_scale": 1e300}),
                            ({"new": 0.5}, {"n_requests_hint": 1})]:
        out = boosts(huge, targets, 1e6, **kwargs)
        assert all(math.isfinite(b) and b >= 0 for b in out.values()), (targets, kwargs, out)
    assert boosts(huge, {"new": 0.5}, 1e6)["new"] == pytest.approx(1e6 * 1.0 * 1e300)  # capped totals
    assert boosts(huge, {"new": 0.5}, 1e6, utility_scale=1e300)["new"] == np.finfo(np.float64).max


def test_normalised_merit_splits_the_slate_exposure_by_merit():
    flat = lambda d: {(g, k): v[k] for g, v in d.items() for k in (0, 1)}  # noqa: E731
    d = normalised_merit({"a": (1.0, 3.0), "b": (0.5, 1.0), "c": (0.0, 0.0)})
    assert flat(d) == pytest.approx(flat({"a": (1.0, 1.125), "b": (0.5, 0.375), "c": (0.0, 0.0)}))
    # however large the utilities, a request adds its slate's exposure (1.5) of merit, no more
    for scale in (1e-300, 1.0, 1e297, 5e307):
        big = normalised_merit({"a": (1.0, 3.0 * scale), "b": (0.5, 1.0 * scale)})
        assert flat(big) == pytest.approx(flat({"a": (1.0, 1.125), "b": (0.5, 0.375)})), scale
    # the sum of two 1e308 merits overflows; their ratio does not
    assert normalised_merit({"a": (1.0, 1e308), "b": (1.0, 1e308)}) == {"a": (1.0, 1.0), "b": (1.0, 1.0)}
    # infinite merit (never from the engine): only the infinite ones count, equally
    assert normalised_merit({"a": (1.0, math.inf), "b": (1.0, 5.0)}) == {"a": (1.0, 2.0), "b": (1.0, 0.0)}
    # no merit, negative or NaN merit, or no exposure: merit 0
    assert normalised_merit({"a": (1.0, 0.0), "b": (1.0, -2.0), "c": (1.0, math.nan)}) == \
        {"a": (1.0, 0.0), "b": (1.0, 0.0), "c": (1.0, 0.0)}
    assert normalised_merit({"a": (0.0, 4.0)}) == {"a": (0.0, 0.0)}


def test_request_scale_is_utility_per_unit_of_exposure_of_the_best_candidates():
    u = np.array([5.0, -1.0, 3.0, 0.5])
    pw = np.array([1.0, 0.5])
    assert request_scale(u, pw) == pytest.approx(((5.0 + 3.0) / 1.5, 6.0))
    # fewer candidates than positions: all of them, over as many weights
    assert request_scale(np.array([2.0]), pw) == pytest.approx((2.0, 0.0))
    # all zero -> scale 1; non-finite (refused upstream anyway) -> (1, 0); no candidates -> (1, 0)
    assert request_scale(np.zeros(3), pw) == (1.0, 0.0)
    assert request_scale(np.array([1.0, math.inf]), pw) == (1.0, 0.0)
    assert request_scale(np.array([]), pw) == (1.0, 0.0)
    # the sum of |u| overflowing gives scale 1, the spread overflowing gives spread 0
    assert request_scale(np.array([1e308, 1e308]), pw)[0] == 1.0
    assert request_scale(np.array([1e308, -1e308]), pw) == (1.0, 0.0)


def test_clip_boosts_keeps_boosts_within_the_request_range():
    out = clip_boosts({"a": 0.5, "b": 50.0, "c": -1.0, "d": math.inf, "e": math.nan}, 2.0, 1.0)
    assert out == {"a": 0.5, "b": 3.0, "c": 0.0, "d": 3.0, "e": 0.0}


# -- what a slate adds ----------------------------------------------------------------------------
def test_exposure_deltas_sum_position_weights_and_clipped_utilities_per_group():
    pw = np.array([1.0, 0.5, 0.25, 0.125, 0.0625])  # longer than the slate: fine
    d = exposure_deltas(["a", "b", "a", None], pw, np.array([2.0, -1.0, 1.0, 5.0]))
    assert d == {"a": (1.25, 3.0), "b": (0.5, 0.0)}


def test_exposure_deltas_with_candidate_merit():
    pw = np.array([1.0, 0.5])
    d = exposure_deltas(["a", "b"], pw, np.array([2.0, 1.0]), candidate_merit={"a": 4.0, "c": 2.0})
    assert d == {"a": (1.0, 4.0), "b": (0.5, 0.0), "c": (0.0, 2.0)}


def test_exposure_deltas_errors():
    with pytest.raises(ValueError, match=r"position_weights: need at least 3 weights .* got shape \(2,\)"):
        exposure_deltas(["a", "b", "c"], np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match=r"utilities: need 3 values .* got shape \(4,\)"):
        exposure_deltas(["a", "b", "c"], np.ones(3), np.ones(4))


def test_merit_by_group():
    codes = np.array([0, 1, 0, -1, 2])
    u = np.array([1.0, 2.0, -3.0, 5.0, 0.5])
    assert merit_by_group(codes, ["x", "y", "z", "w"], u) == {"x": 1.0, "y": 2.0, "z": 0.5}
    with pytest.raises(ValueError, match="codes: must be < len"):
        merit_by_group(codes, ["x"], u)


# -- simulations ------------------------------------------------------------------------------------
N, K = 100, 10
PW = 1.0 / np.log2(np.arange(2, K + 2))
WARMUP = 300  # requests answered with the controller off: the ledger starts with the bias in it


def simulate_share(gain: float, *, hint: bool, n: int, target: float = 0.2, seed: int = 0) -> np.ndarray:
    """Cumulative exposure share of "new" after each request. Per request: N candidates, each
    "new" with probability 5 %, utility Beta(2, 5), x 0.97 for new items (a bit lower on average);
    slate = top K by utility + boost; the ledger records exposure and slate merit."""
    rng = np.random.default_rng(seed)
    ledger, ns = InProcessLedger(), "sim/new_sellers"
    shares = np.empty(WARMUP + n)
    for r in range(WARMUP + n):
        is_new = rng.random(N) < 0.05
        utility = rng.beta(2.0, 5.0, N) * np.where(is_new, 0.97, 1.0)
        boost = 0.0
        if r >= WARMUP:
            boost = boosts(ledger.snapshot(ns), {"new": target}, gain,
                           n_requests_hint=r if hint else None)["new"]
        slate = np.argsort(-(utility + boost * is_new), kind="stable")[:K]
        groups = ["new" if x else "old" for x in is_new[slate]]
        ledger.record(ns, exposure_deltas(groups, PW, utility[slate]))
        snap = ledger.snapshot(ns)
        shares[r] = snap.get("new", (0.0, 0.0))[0] / sum(e for e, _ in snap.values())
    return shares


def settle_time(shares: np.ndarray, target: float, tol: float = 0.02) -> int:
    """Requests after which the share enters target +- tol and stays there to the end."""
    outside = np.flatnonzero(np.abs(shares - target) > tol)
    return int(outside[-1] + 1) if outside.size else 0


# Measured with these seeds (settle time after the controller is switched on): gain 1 with the
# hint: 91 requests; without: 91; gain 0.01 with the hint: 578. About 100 is the floor here: with 5
# new items per request, putting all of them on top gives "new" ~65 % of a slate's exposure, and
# catching up 300 requests of ~4.9 % to 20 % takes ~100 such requests. Bounds below have margin.
# Once there, the remaining gap shrinks like 1 / (gain * n): 2000 requests later it is < 0.01 point
# at gain 1 and 0.7 point at gain 0.01 (measured).
@pytest.mark.parametrize("gain, hint, bound, final_tol", [
    (1.0, True, 150, 0.002), (1.0, False, 150, 0.002), (0.01, True, 800, 0.012)])
def test_under_exposed_group_reaches_its_target_share(gain, hint, bound, final_tol):
    n = 2000
    shares = simulate_share(gain, hint=hint, n=n)
    start = shares[WARMUP - 1]
    assert 0.03 <= start <= 0.06, start  # starts at ~5 % (4.9 % for this seed)
    after = shares[WARMUP:]
    took = settle_time(after, 0.2)
    assert took <= bound, took
    assert abs(after[-1] - 0.2) < final_tol  # and it holds


def test_controller_off_leaves_the_bias():
    shares = simulate_share(0.0, hint=True, n=700)
    assert shares[-1] < 0.06


def test_merit_proportional_target_is_reached():
    """Two groups; "b" (30 % of candidates, utility x 0.8) gets less exposure than its share of
    candidate merit until the controller (targets=None, merit over all candidates) corrects it."""
    rng = np.random.default_rng(1)
    ledger, ns, names = InProcessLedger(), "sim/merit", ["a", "b"]
    gap = []
    for r in range(WARMUP + 1000):
        codes = (rng.random(N) < 0.3).astype(np.int64)
        utility = rng.beta(2.0, 5.0, N) * np.where(codes == 1, 0.8, 1.0)
        bv = np.zeros(2)
        if r >= WARMUP:
            b = boosts(ledger.snapshot(ns), None, 1.0, n_requests_hint=r)
            bv = np.array([b.get("a", 0.0), b.get("b", 0.0)])
        slate = np.argsort(-(utility + bv[codes]), kind="stable")[:K]
        ledger.record(ns, exposure_deltas([names[c] for c in codes[slate]], PW, utility[slate],
                                          candidate_merit=merit_by_group(codes, names, utility)))
        snap = ledger.snapshot(ns)
        E, M = sum(e for e, _ in snap.values()), sum(m for _, m in snap.values())
        gap.append(snap["b"][0] / E - snap["b"][1] / M)  # exposure share - merit share of "b"
    gap = np.array(gap)
    assert gap[WARMUP - 1] < -0.04  # under-exposed before (-15 points for this seed)
    took = settle_time(gap[WARMUP:], 0.0)
    assert took <= 100, took  # measured: 50
    assert abs(gap[-1]) < 0.005
