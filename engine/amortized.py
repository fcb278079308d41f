"""Amortized exposure control across requests, after FairCo (Morik et al. 2020, "Controlling
Fairness and Bias in Dynamic Learning-to-Rank").

Each answered slate gives its groups exposure (the position weights of their items) and merit
(see `exposure_deltas`); the ledger (`engine.ledger`) sums both per group over all requests of one
rule. Before the next request is solved, `boosts` turns the sums into an additive utility boost
per group, and the solver ranks by utility + boost of the item's group. A group whose cumulative
share of exposure is below its target is pushed up until it has caught up, then left alone.

The formula, for the ledger snapshot {g: (E_g, M_g)} of one rule:

    E       = sum_g E_g                     total exposure handed out so far (negatives count 0)
    M       = sum_g max(M_g, 0)             total merit
    t_g     = targets[g]                    explicit target share of exposure, or, when targets
            = max(M_g, 0) / M               is None, the merit share (exposure proportional to
                                            merit: the paper's disparate-exposure notion)
    d_g     = max(0, t_g * E - E_g)         cumulative exposure shortfall (FairCo's error term)
    unit    = E / n_requests_hint           exposure one request hands out, when the hint is
            = 1                             given; otherwise one unit of position weight (the
                                            top slot under the log2/reciprocal/none discounts)
    scale   = utility_scale                 when given; otherwise M / E, the merit (utility)
            = M / E                         per unit of exposure handed out so far; 1 if M = 0
    boost_g = gain * scale * d_g / unit

So a group `unit` exposure short of its target is boosted by `gain * scale` of utility: gain is
dimensionless and gain = 1 means "one unit of missing exposure is worth the utility an average
unit of exposure carries". Groups at or above target get 0; groups without a target (share mode)
are not listed, and an empty ledger gives all zeros.

Like FairCo's error term ((tau - 1) * the average disparity), d_g is a *cumulative* quantity: while
a group stays short its boost keeps growing, so it catches up whatever utility gap it has to
overcome (integral action); once its cumulative share reaches the target the boost drops to 0,
and it then hovers around the smallest boost that holds the target, the gap in cumulative share
shrinking like 1/n. With n_requests_hint, d_g / unit = n * (t_g - E_g / E), which is exactly
FairCo's error in share units; without it, the boost is that times the exposure of one slate
(sum of its position weights), a constant factor for a given policy: the dynamics are the same,
only the meaning of `gain` differs.

What one request can add is bounded, whatever it sends (a caller's scores of 1e307 once sent the
shared merit to inf and broke the policy for every caller, across restarts):

- exposure is the position weights of the slate, at most their sum per request;
- merit is recorded in exposure units (`normalised_merit`): each request splits its slate's
  exposure among the groups in proportion to their merit, so every request counts once in the
  merit shares, however large its utilities, and the totals grow by at most the slate's exposure
  per request;
- the scale that turns missing exposure into utility comes from the request being answered
  (`request_scale`: the utility per unit of exposure of its best L candidates), not from the
  ledger, so a boost is always in the current request's utility units;
- a boost larger than the request's utility spread moves nothing further, so boosts are clipped
  to that spread (`clip_boosts`): boosted utilities stay within 2x the request's own range.

The ledger side refuses non-finite deltas and ignores non-finite or implausibly large totals
written by an older version (see `engine.ledger.MAX_TOTAL`).

Differences from the paper, on purpose: (1) FairCo compares each group with the best-treated
group (max over pairwise disparities of exposure/merit); here each group is compared with its
target share of the total, which also covers explicit share targets; (2) the paper's merit of a
group is the mean relevance of its candidates for each query, here it is a sum of utilities
(over the slate by default, over all candidates with `candidate_merit`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

_MAX_BOOST = float(np.finfo(np.float64).max)


def boosts(snapshot: Mapping[str, tuple[float, float]], targets: Mapping[str, float] | None,
           gain: float, *, n_requests_hint: int | None = None,
           utility_scale: float | None = None) -> dict[str, float]:
    """Additive utility boost per group (formula in the module docstring).

    snapshot: group -> (cumulative exposure, cumulative merit), as `Ledger.snapshot` returns.
    targets: group -> target share of total exposure (each in [0, 1], sum <= 1); None for
        merit-proportional targets. Returns one entry per target group (share mode) or per
        snapshot group (merit mode).
    gain: >= 0; 0 switches the controller off.
    n_requests_hint: requests recorded so far in this ledger namespace, if known (>= 1).
    utility_scale: utility per unit of exposure, if the caller knows it better than the
        ledger's M / E (say, when merit is recorded over all candidates rather than the slate).
    Raises ValueError for invalid targets, gain, hint or scale.
    """
    if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain >= 0):
        raise ValueError(f"amortized gain: must be a finite number >= 0, got {gain!r}")
    if n_requests_hint is not None and not (isinstance(n_requests_hint, (int, np.integer))
                                            and n_requests_hint >= 1):
        raise ValueError(f"amortized n_requests_hint: must be an integer >= 1, got {n_requests_hint!r}")
    if utility_scale is not None and not (math.isfinite(utility_scale) and utility_scale > 0):
        raise ValueError(f"amortized utility_scale: must be a finite number > 0, got {utility_scale!r}")
    if targets is not None:
        for g, t in targets.items():
            if not (isinstance(t, (int, float)) and 0 <= t <= 1):
                raise ValueError(f"amortized targets[{g!r}]: must be a share in [0, 1], got {t!r}")
        if sum(targets.values()) > 1 + 1e-9:
            raise ValueError(f"amortized targets: shares must sum to at most 1, got "
                             f"{sum(targets.values()):.6g}")

    # non-finite totals (a ledger written by an older version) count as 0, never as inf, and
    # finite ones are capped at 1e300 so that their sums stay finite too
    exposure = {g: (float(e) if 0.0 < e <= 1e300 else (1e300 if 1e300 < e < math.inf else 0.0))
                for g, (e, _) in snapshot.items()}
    merit = {g: (float(m) if 0.0 < m <= 1e300 else (1e300 if 1e300 < m < math.inf else 0.0))
             for g, (_, m) in snapshot.items()}
    E = sum(exposure.values())
    M = sum(merit.values())
    if targets is not None:
        share = dict(targets)
    else:
        share = {g: (m / M if M > 0 else 0.0) for g, m in merit.items()}
    if E <= 0 or gain == 0:
        return {g: 0.0 for g in share}
    unit = E / n_requests_hint if n_requests_hint is not None else 1.0
    scale = utility_scale if utility_scale is not None else (M / E if M > 0 else 1.0)
    factor = gain * scale / unit
    out = {}
    for g, t in share.items():
        d = max(0.0, t * E - exposure.get(g, 0.0))
        b = factor * d if d > 0 else 0.0
        # finite whatever the inputs (a huge gain times a huge shortfall overflows): the largest
        # double already outranks everything, and `clip_boosts` brings it to the request's range
        out[g] = b if math.isfinite(b) else _MAX_BOOST
    return out




def exposure_deltas(slate_groups: Sequence[str | None], position_weights: np.ndarray,
                    utilities: np.ndarray, *,
                    candidate_merit: Mapping[str, float] | None = None) -> dict[str, tuple[float, float]]:
    """What one answered slate adds to the ledger: group -> (exposure, merit).

    slate_groups[k]: group of the item at position k (None: the item belongs to no group and
        adds nothing); position_weights[k]: its position weight (the array may be longer than
        the slate, as when fewer items than K were eligible); utilities[k]: its utility, without
        any fairness boost.
    exposure_g = sum of the position weights of the group's items in the slate.
    merit_g = sum of max(utility, 0) of the group's items in the slate (merit is non-negative),
        or candidate_merit[g] when given: the caller's merit over all candidates of the request
        (see `merit_by_group`). Prefer the latter with merit-proportional targets: with slate
        merit, a group that is never shown never gains merit, so it never gets a target.
    Raises ValueError when the arrays are too short for the slate.
    """
    n = len(slate_groups)
    pw = np.asarray(position_weights, dtype=np.float64)
    u = np.asarray(utilities, dtype=np.float64)
    if pw.ndim != 1 or pw.shape[0] < n:
        raise ValueError(f"exposure_deltas position_weights: need at least {n} weights (one per "
                         f"slate position), got shape {pw.shape}")
    if u.ndim != 1 or u.shape[0] != n:
        raise ValueError(f"exposure_deltas utilities: need {n} values (one per slate item), got "
                         f"shape {u.shape}")
    acc: dict[str, list[float]] = {}
    for k, g in enumerate(slate_groups):
        if g is None:
            continue
        a = acc.setdefault(g, [0.0, 0.0])
        a[0] += float(pw[k])
        if candidate_merit is None:
            a[1] += max(float(u[k]), 0.0)
    if candidate_merit is not None:
        for g, m in candidate_merit.items():
            acc.setdefault(g, [0.0, 0.0])[1] += max(float(m), 0.0)
    return {g: (a[0], a[1]) for g, a in acc.items()}


def merit_by_group(codes: np.ndarray, names: Sequence[str], utilities: np.ndarray) -> dict[str, float]:
    """Merit per group over all candidates: sum of max(utility, 0) per group code.

    codes[i]: group code of candidate i (an index into names; negative: no group). Groups with
    no candidate are left out. Vectorised (bincount), for candidate_merit in exposure_deltas."""
    codes = np.asarray(codes, dtype=np.int64)
    u = np.maximum(np.asarray(utilities, dtype=np.float64), 0.0)
    if codes.shape != u.shape:
        raise ValueError(f"merit_by_group: codes and utilities must have one entry per candidate, "
                         f"got shapes {codes.shape} and {u.shape}")
    if codes.size and codes.max() >= len(names):
        raise ValueError(f"merit_by_group codes: must be < len(names) = {len(names)}, got {codes.max()}")
    keep = codes >= 0
    sums = np.bincount(codes[keep], weights=u[keep], minlength=len(names))
    present = np.bincount(codes[keep], minlength=len(names)) > 0
    return {names[i]: float(sums[i]) for i in np.flatnonzero(present)}


def normalised_merit(deltas: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """The same deltas with merit re-expressed in exposure units: the groups' merits are scaled
    so that they sum to the exposure the slate handed out (sum of the deltas' exposures), keeping
    their ratios. All merit 0 (or no exposure) -> merit 0. Finite in, finite out, whatever the
    magnitudes (the ratios are taken after dividing by the largest merit)."""
    exposure_total, top = 0.0, 0.0
    for e, m in deltas.values():  # NaN fails every comparison: it counts as 0
        if e > 0:
            exposure_total += e
        if m > top:
            top = m
    if top <= 0 or exposure_total <= 0:
        return {g: (e, 0.0) for g, (e, _) in deltas.items()}
    if top == math.inf:  # only the infinite ones count, equally
        rel = {g: (1.0 if m == math.inf else 0.0) for g, (_, m) in deltas.items()}
    else:
        rel = {g: (m / top if m > 0 else 0.0) for g, (_, m) in deltas.items()}
    k = exposure_total / sum(rel.values())
    return {g: (e, k * rel[g]) for g, (e, _) in deltas.items()}


def request_scale(utility: np.ndarray, position_weights: np.ndarray) -> tuple[float, float]:
    """(scale, spread) of one request's utilities, for `boosts(utility_scale=scale)` and
    `clip_boosts(spread)`.

    scale = sum of |u| over the L best candidates / sum of the first L position weights (L = the
    number of position weights, at most the number of candidates): the utility per unit of
    exposure this request hands out, the request-level twin of the ledger's M / E. 1.0 when that
    is 0 (all utilities 0). spread = max(u) - min(u). Both finite (non-finite utilities, which the
    compiler refuses anyway, give (1.0, 0.0)).
    """
    u = np.asarray(utility, dtype=np.float64)
    pw = np.asarray(position_weights, dtype=np.float64)
    n = u.shape[0]
    L = min(n, pw.shape[0])
    if L == 0:
        return 1.0, 0.0
    hi, lo = float(u.max()), float(u.min())  # NaN propagates: one check covers every entry
    if not (math.isfinite(hi) and math.isfinite(lo)):
        return 1.0, 0.0
    spread = hi - lo  # Python floats: overflow gives inf, no warning
    top = np.partition(u, n - L)[n - L:] if L < n else u
    if max(hi, -lo) * L < 1e308:
        scale = float(np.abs(top).sum()) / float(pw[:L].sum())
    else:  # the sum may overflow
        with np.errstate(over="ignore"):
            scale = float(np.abs(top).sum()) / float(pw[:L].sum())
    if not (math.isfinite(scale) and scale > 0):
        scale = 1.0
    if not math.isfinite(spread):
        spread = 0.0
    return scale, spread


def clip_boosts(group_boosts: Mapping[str, float], spread: float, scale: float) -> dict[str, float]:
    """Boosts clipped to [0, spread + scale]: a boost of spread + scale already lifts the worst
    candidate above the best, so nothing beyond it changes a ranking, and boosted utilities stay
    finite and within a few times the request's own range."""
    cap = spread + scale
    return {g: min(max(b, 0.0), cap) if math.isfinite(b) else (cap if b > 0 else 0.0)
            for g, b in group_boosts.items()}
