"""Slate off-policy estimators (numpy), with a round bootstrap CI and the effective sample size.

A log of n rounds (logged slates of at most K positions) with their rewards and the probabilities
that the logging (behaviour) policy b and the target policy e give to what was logged is a
`SlateLog`; `estimate(log, name)` returns an `Estimate` of the target's expected slate value

    V(e) = E_x E_{s ~ e(.|x)} [ sum_k w_k r_k ],   w = position_weight (default all ones).

Notation (row i, position k; every ratio is target / behaviour):
    rho_k   = target_marginal / behavior_marginal          (item-position ratio)
    c_k     = target_cascade / behavior_cascade (c_0 = 1)  (prefix ratio)
    W       = target_joint / behavior_joint                (slate ratio)
    R       = sum_k w_k r_k                                 (slate reward)

Estimators (each is the mean over rounds of the per-round term, except the self-normalised ones):

* "ips"    W R.  Unbiased for any reward model, whenever b gives positive probability to every
           slate e can show. Its variance grows with the slate space.
* "snips"  sum_i W_i R_i / sum_i W_i (self-normalised: biased, consistent, lower variance).
* "iips"   sum_k w_k rho_k r_k (Li et al. 2018, "independent IPS"). Unbiased when the expected
           reward at k depends only on the item at k (item-position click model), for any b.
* "sniips" sum_k w_k (sum_i rho_ik r_ik / sum_i rho_ik): self-normalised per position.
* "rips"   sum_k w_k c_k r_k (McInerney et al. 2020, reward-interaction IPS). Unbiased under the
           cascade model: the expected reward at k depends only on the prefix 1..k.
* "snrips" sum_k w_k (sum_i c_ik r_ik / sum_i c_ik): self-normalised per position.
* "pi"     (sum_k rho_k - L + 1) R, L = the slate's length (Swaminathan et al. 2017,
           pseudo-inverse, closed form). Unbiased when (a) the expected slate reward is additive
           over item-position pairs, E[R | x, s] = sum_k phi(x, k, s_k), and (b) the logging
           policy factorises over positions, b(s|x) = prod_k b_k(s_k|x) (each position drawn
           independently of the others), and b_k > 0 wherever e puts mass at k. It is biased
           when b does not factorise (a ranking drawn without replacement, Plackett-Luce, ...);
           then give `pi_weight` = the general pseudo-inverse weight q_e' Gamma^+ 1_s, which
           `pseudo_inverse_weights` computes for small catalogs by enumerating b's support, and
           which is unbiased under (a) alone whenever q_e lies in the range of Gamma (always when
           e only shows slates b can show).
* "dm"     sum_k w_k q_target_k: the reward model alone. Unbiased only when the model is right
           *and* the target's choice at k given the logged prefix has the law it has given its own
           prefix (true for K = 1, and for targets that factorise over positions with a reward
           model of the item at k only).
* "dr"     sum_k w_k [ c_k (r_k - q_logged_k) + c_{k-1} q_target_k ] (Kiyohara et al. 2022,
           cascade doubly robust; with K = 1 the DR of Dudik et al. 2011). Unbiased under the
           cascade model for *any* reward model, provided q_logged_k is a function of (x, logged
           prefix 1..k) and q_target_k is exactly the target's expectation of that same function
           over the item at k given the logged prefix 1..k-1; the closer q is to the truth, the
           smaller the variance. q may be a per-position reward model E[r_k | x, a_1..k] or
           Kiyohara's cumulative Q_k = E[r_k + sum of the later (weighted) rewards]: the formula
           and its unbiasedness are the same, the cumulative form usually has lower variance.

With K = 1, "iips" = "ips" = "rips" = standard IPW, and "dr" = standard DR.

Slates shorter than K (`mask`): an absent position counts as reward 0 with ratio 1 (its
entries are ignored, NaN included); the self-normalised forms thus divide by the mean of
(rho where present, 1 where absent), whose expectation is 1 as for a full slate.

Bootstrap: resample the n rounds with replacement (n draws, uniform, independent: B resamples,
seeded), recompute the estimate on each (the self-normalised ones as a ratio of resampled sums,
position by position), and take the percentile interval: the alpha/2 and 1 - alpha/2 quantiles
(numpy's linear interpolation) of the B values. It is exact for that scheme: the counts of each
resample are drawn as a multinomial over chunks of rounds, then uniform draws inside each chunk
(offline/_estimator_kernels.py explains why that is the same law), which keeps the work O(n B)
but cache-local. For ips, iips, rips and pi (SPARSE: their per-round term is 0 when the round
has no reward) only the rewarded rounds are drawn one by one: how many of the n draws hit them
is Binomial(n, n_rewarded / n), and the rest add 0, so with clicks on 1 % of rounds the work is
~1 % (the same law, exactly). A seed gives the same resamples to every estimator of a group
(SPARSE, and the others), and to both groups when every round has a reward: common random
numbers, so differences between those estimators are not bootstrap noise.

Effective sample size (ESS): (sum v)^2 / sum v^2 over the weights v the estimator uses - W for
ips/snips, the pseudo-inverse weight for pi; for the per-position weights (rho for iips/sniips,
c for rips/snrips/dr) the minimum over positions of that position's ESS over the rounds where it
is present; n for dm (no weights). All-zero weights give 0. A warning is set when
ESS < ESS_MIN (100: too few effective rounds for an interval to mean much) or ESS < ESS_SHARE * n
(1 %: the estimate rests on a small part of the log, a sign of heavy-tailed weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from offline import _estimator_kernels as _kernels

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "iips", "sniips", "rips", "snrips", "pi", "dm",
                               "dr")
# The SlateLog fields each estimator needs beyond reward, behavior_marginal and target_marginal.
REQUIRES: dict[str, tuple[str, ...]] = {
    "ips": ("behavior_joint", "target_joint"),
    "snips": ("behavior_joint", "target_joint"),
    "iips": (),
    "sniips": (),
    "rips": ("behavior_cascade", "target_cascade"),
    "snrips": ("behavior_cascade", "target_cascade"),
    "pi": (),
    "dm": ("q_target",),
    "dr": ("behavior_cascade", "target_cascade", "q_logged", "q_target"),
}
# Estimators whose per-round term is 0 when every present reward is 0 (the bootstrap skips those
# rounds: clicks are rare, so this is most of a log).
SPARSE: tuple[str, ...] = ("ips", "iips", "rips", "pi")
ESS_MIN = 100.0
ESS_SHARE = 0.01
CHUNK = 1024  # rounds per bootstrap chunk (the rows one resample reads stay in cache)
_CASCADE_SLACK = 1e-9  # relative slack on "a longer prefix is no more likely"


@dataclass(frozen=True)
class SlateLog:
    """Logged slates, their rewards and the probabilities both policies give them.

    reward             float64[n, K]  observed reward at each position (click 0/1, ...)
    behavior_marginal  float64[n, K]  P_logging(logged item at position k | x), in (0, 1]
    target_marginal    float64[n, K]  P_target(logged item at position k | x), in [0, 1]
    behavior_cascade   float64[n, K]  P_logging(logged prefix 1..k | x), in (0, 1], non-increasing
    target_cascade     float64[n, K]  P_target(logged prefix 1..k | x), in [0, 1], non-increasing
    behavior_joint     float64[n]     P_logging(whole logged slate | x), in (0, 1]
    target_joint       float64[n]     P_target(whole logged slate | x), in [0, 1]
    q_logged           float64[n, K]  reward model at the logged item/position (given the prefix)
    q_target           float64[n, K]  the target's expectation, over its choice at k given the
                                      logged prefix 1..k-1, of the same reward model
    position_weight    float64[K]     >= 0, default ones: slate value = sum_k w_k r_k
    mask               bool[n, K]     position present (a prefix of each row); default all True
    pi_weight          float64[n]     optional pseudo-inverse weight of the logged slate,
                                      overriding the closed form (see pseudo_inverse_weights)

    Arrays are coerced to C-contiguous float64 (bool for mask). Entries at absent positions are
    never read. Every problem raises ValueError naming the field, and the first bad row / column.
    """

    reward: np.ndarray
    behavior_marginal: np.ndarray
    target_marginal: np.ndarray
    behavior_cascade: np.ndarray | None = None
    target_cascade: np.ndarray | None = None
    behavior_joint: np.ndarray | None = None
    target_joint: np.ndarray | None = None
    q_logged: np.ndarray | None = None
    q_target: np.ndarray | None = None
    position_weight: np.ndarray | None = None
    mask: np.ndarray | None = None
    pi_weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n(self) -> int:
        return self.reward.shape[0]

    @property
    def k(self) -> int:
        return self.reward.shape[1]


@dataclass(frozen=True)
class Estimate:
    """One estimator's estimate of the target's expected slate value, with its bootstrap CI."""

    estimator: str
    value: float
    ci_low: float        # bootstrap percentile CI (default 95 %); NaN when n_bootstrap = 0
    ci_high: float
    ess: float           # effective sample size (module docstring: which weights)
    n: int
    warning: str | None  # set when ess < ESS_MIN or ess < ESS_SHARE * n
    se: float = math.nan  # bootstrap standard error (std of the resampled estimates, ddof 1)
    n_bootstrap: int = 0
    alpha: float = 0.05


# --------------------------------------------------------------------------- validation

def _fail(field: str, where: str, what: str) -> None:
    raise ValueError(f"SlateLog.{field}{where}: {what}")


def _as_float(log: SlateLog, field: str, value) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        _fail(field, "", f"must be a numeric array, got {type(value).__name__} ({exc})")
    if arr.dtype.kind not in "biuf":
        _fail(field, "", f"must be a numeric array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    object.__setattr__(log, field, arr)
    return arr


def _first_bad(bad: np.ndarray) -> str:
    idx = np.argwhere(bad)[0]
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _check_values(field: str, arr: np.ndarray, present: np.ndarray, low: float | None,
                  low_open: bool, high: float | None) -> None:
    finite = np.isfinite(arr) | ~present
    if not finite.all():
        where = _first_bad(~finite)
        _fail(field, where, f"must be finite, got {float(arr[tuple(np.argwhere(~finite)[0])])!r}")
    if low is not None:
        bad = present & ((arr <= low) if low_open else (arr < low))
        if high is not None:
            bad |= present & (arr > high)
        if bad.any():
            pos = tuple(np.argwhere(bad)[0])
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high is not None \
                else f">= {low:g}"
            _fail(field, _first_bad(bad), f"must be in {interval}, got {float(arr[pos])!r}")


def _validate(log: SlateLog) -> None:
    reward = _as_float(log, "reward", log.reward)
    if reward.ndim != 2:
        _fail("reward", "", f"must be 2-D (n rounds, K positions), got shape {reward.shape}")
    n, k = reward.shape
    if n < 1 or k < 1:
        _fail("reward", "", f"needs at least one round and one position, got shape {reward.shape}")

    if log.mask is None:
        mask = np.ones((n, k), dtype=bool)
    else:
        mask = np.asarray(log.mask)
        if mask.shape != (n, k):
            _fail("mask", "", f"must have shape (n, K) = {(n, k)} like reward, got {mask.shape}")
        if mask.dtype != bool:
            if mask.dtype.kind not in "iu" or not np.isin(mask, (0, 1)).all():
                _fail("mask", "", f"must be boolean (or 0/1 integers), got dtype {mask.dtype}")
            mask = mask.astype(bool)
        mask = np.ascontiguousarray(mask)
        gaps = ~mask[:, :-1] & mask[:, 1:]
        if gaps.any():
            i = int(np.argwhere(gaps)[0][0])
            _fail("mask", f"[{i}]", "present positions must come first (a prefix of the slate), "
                  f"got {mask[i].tolist()}")
    object.__setattr__(log, "mask", mask)

    _check_values("reward", reward, mask, None, False, None)
    per_position = (("behavior_marginal", 0.0, True, 1.0), ("target_marginal", 0.0, False, 1.0),
                    ("behavior_cascade", 0.0, True, 1.0), ("target_cascade", 0.0, False, 1.0),
                    ("q_logged", None, False, None), ("q_target", None, False, None))
    for field, low, low_open, high in per_position:
        value = getattr(log, field)
        if value is None:
            continue
        arr = _as_float(log, field, value)
        if arr.shape != (n, k):
            _fail(field, "", f"must have shape (n, K) = {(n, k)} like reward, got {arr.shape}")
        _check_values(field, arr, mask, low, low_open, high)
    for field in ("behavior_cascade", "target_cascade"):
        arr = getattr(log, field)
        if arr is None:
            continue
        rises = mask[:, 1:] & (arr[:, 1:] > arr[:, :-1] * (1 + _CASCADE_SLACK))
        if rises.any():
            i, j = (int(v) for v in np.argwhere(rises)[0])
            _fail(field, f"[{i}, {j + 1}]", "a prefix cannot be more likely than the prefix one "
                  f"shorter, got {float(arr[i, j + 1])!r} after {float(arr[i, j])!r}")
    if (log.behavior_cascade is None) != (log.target_cascade is None):
        missing = "behavior_cascade" if log.behavior_cascade is None else "target_cascade"
        _fail(missing, "", "is needed with the other policy's cascade probabilities")
    if (log.behavior_joint is None) != (log.target_joint is None):
        missing = "behavior_joint" if log.behavior_joint is None else "target_joint"
        _fail(missing, "", "is needed with the other policy's joint probabilities")

    per_round = (("behavior_joint", 0.0, True, 1.0), ("target_joint", 0.0, False, 1.0),
                 ("pi_weight", None, False, None))
    for field, low, low_open, high in per_round:
        value = getattr(log, field)
        if value is None:
            continue
        arr = _as_float(log, field, value)
        if arr.shape != (n,):
            _fail(field, "", f"must have shape (n,) = ({n},), one value per round, got {arr.shape}")
        _check_values(field, arr, np.ones(n, dtype=bool), low, low_open, high)

    if log.position_weight is None:
        object.__setattr__(log, "position_weight", np.ones(k))
    else:
        pw = _as_float(log, "position_weight", log.position_weight)
        if pw.shape != (k,):
            _fail("position_weight", "", f"must have shape (K,) = ({k},), got {pw.shape}")
        _check_values("position_weight", pw, np.ones(k, dtype=bool), 0.0, False, math.inf)


# --------------------------------------------------------------------------- estimators

def _clean(log: SlateLog, field: str, absent: float) -> np.ndarray:
    arr = getattr(log, field)
    return arr if log.mask.all() else np.where(log.mask, arr, absent)


def _ratio(log: SlateLog, num: str, den: str) -> np.ndarray:
    """target / behaviour at present positions, 1 at absent ones."""
    return _clean(log, num, 1.0) / _clean(log, den, 1.0)


def _slate_reward(log: SlateLog) -> np.ndarray:
    return _clean(log, "reward", 0.0) @ log.position_weight


def _missing(log: SlateLog, estimator: str) -> list[str]:
    return [f for f in REQUIRES[estimator] if getattr(log, f) is None]


def _check_name(estimator: str) -> None:
    if estimator not in REQUIRES:
        raise ValueError(f"estimator: unknown {estimator!r}, expected one of {', '.join(ESTIMATORS)}")


def _require(log: SlateLog, estimator: str) -> None:
    _check_name(estimator)
    missing = _missing(log, estimator)
    if missing:
        raise ValueError(f"estimator {estimator!r} needs SlateLog.{missing[0]}, which is None")


def pi_weights(log: SlateLog) -> np.ndarray:
    """The pseudo-inverse weight of each round: `pi_weight` when given, else the closed form
    sum_k rho_k - L + 1 over the L present positions (exact when the logging policy factorises
    over positions)."""
    if log.pi_weight is not None:
        return log.pi_weight
    rho = _ratio(log, "target_marginal", "behavior_marginal")
    return rho.sum(axis=1) - log.k + 1.0


def per_round(log: SlateLog, estimator: str) -> np.ndarray:
    """float64[n]: the per-round terms whose mean is the (non-self-normalised) estimate, which the
    bootstrap resamples. For "snips" / "sniips" / "snrips" these are the numerators' terms, i.e.
    the terms of "ips" / "iips" / "rips"."""
    _require(log, estimator)
    pw = log.position_weight
    r = _clean(log, "reward", 0.0)
    if estimator in ("ips", "snips"):
        return log.target_joint / log.behavior_joint * _slate_reward(log)
    if estimator in ("iips", "sniips"):
        return (_ratio(log, "target_marginal", "behavior_marginal") * r) @ pw
    if estimator in ("rips", "snrips"):
        return (_ratio(log, "target_cascade", "behavior_cascade") * r) @ pw
    if estimator == "pi":
        return pi_weights(log) * _slate_reward(log)
    if estimator == "dm":
        return _clean(log, "q_target", 0.0) @ pw
    # dr
    c = _ratio(log, "target_cascade", "behavior_cascade")
    c_prev = np.empty_like(c)
    c_prev[:, 0] = 1.0
    c_prev[:, 1:] = c[:, :-1]
    terms = c * (r - _clean(log, "q_logged", 0.0)) + c_prev * _clean(log, "q_target", 0.0)
    return terms @ pw


def _weights(log: SlateLog, estimator: str) -> np.ndarray | None:
    """The weights the ESS is computed on: [n] or [n, K] (NaN at absent positions), None for dm."""
    if estimator in ("ips", "snips"):
        return log.target_joint / log.behavior_joint
    if estimator == "pi":
        return pi_weights(log)
    if estimator == "dm":
        return None
    num, den = (("target_marginal", "behavior_marginal") if estimator in ("iips", "sniips")
                else ("target_cascade", "behavior_cascade"))
    return np.where(log.mask, _ratio(log, num, den), np.nan)


def effective_sample_size(weights: np.ndarray) -> float:
    """(sum w)^2 / sum w^2 over the non-NaN entries of a weight vector (0 when all are 0); for a
    2-D array the minimum over columns that have any entry."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[~np.isnan(w)]
        sq = float(np.dot(w, w))
        return float(w.sum()) ** 2 / sq if sq > 0 else 0.0
    out = [effective_sample_size(w[:, j]) for j in range(w.shape[1]) if (~np.isnan(w[:, j])).any()]
    return min(out) if out else 0.0


def ess_warning(estimator: str, ess: float, n: int) -> str | None:
    """The plain-language warning for a small ESS (None when ESS >= ESS_MIN and >= ESS_SHARE n)."""
    if ess >= ESS_MIN and ess >= ESS_SHARE * n:
        return None
    why = (f"below {ESS_MIN:g}" if ess < ESS_MIN else f"below {ESS_SHARE:.0%} of the {n} rounds")
    return (f"{estimator}: effective sample size {ess:.1f} is {why}: the target policy's weights "
            f"are so uneven that a few rounds decide this estimate; do not trust it or its "
            f"interval")


def round_stats(log: SlateLog, estimator: str) -> tuple[np.ndarray, callable]:
    """The per-round statistics the bootstrap resamples (float64[n, m]) and the function that
    turns their column sums (float64[..., m], vectorised over resamples) into the estimate: the
    mean of `per_round` terms, or numerator and denominator terms for the self-normalised forms
    (per position for sniips / snrips). Callers that bootstrap several things with the same
    resamples (offline.preview) stack these columns."""
    n = log.n
    if estimator in ("snips",):
        w = log.target_joint / log.behavior_joint
        stats = np.column_stack([w * _slate_reward(log), w])
        return stats, lambda s: _safe_div(s[..., 0], s[..., 1])
    if estimator in ("sniips", "snrips"):
        num, den = (("target_marginal", "behavior_marginal") if estimator == "sniips"
                    else ("target_cascade", "behavior_cascade"))
        rho = _ratio(log, num, den)
        stats = np.hstack([rho * _clean(log, "reward", 0.0), rho])
        k, pw = log.k, log.position_weight
        return stats, lambda s: _safe_div(s[..., :k], s[..., k:]) @ pw
    return per_round(log, estimator)[:, None], lambda s: s[..., 0] / n


def _safe_div(num, den):
    """num / den with 0 / 0 = 0 (a position no round gives target weight to adds nothing)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


# --------------------------------------------------------------------------- bootstrap

def bootstrap_draws(n: int, n_bootstrap: int, seed: int, chunk: int = CHUNK,
                    n_live: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The randomness of B = n_bootstrap resamples of n rounds, from numpy's PCG64 seeded with
    seed: the number of draws falling in each chunk of rounds, int64[B, J], and one splitmix64
    state per resample, uint64[B].

    n_live = None (or n): J = ceil(n / chunk), row b ~ Multinomial(n, chunk sizes / n).
    n_live < n: only n_live "live" rounds are drawn individually (the
    others contribute nothing): hits_b ~ Binomial(n, n_live / n) draws land on live rounds, and
    row b ~ Multinomial(hits_b, live chunk sizes / n_live), J = ceil(n_live / chunk). That is
    the law of the live rounds' counts under n uniform draws from all n rounds."""
    rng = np.random.default_rng(seed)
    live = n if n_live is None else n_live
    n_chunks = max(1, -(-live // chunk))
    sizes = np.full(n_chunks, chunk, dtype=np.float64)
    sizes[-1] = live - chunk * (n_chunks - 1)
    if live == n:
        totals = rng.multinomial(n, sizes / n, size=n_bootstrap)
    elif live == 0:
        totals = np.zeros((n_bootstrap, 1), dtype=np.int64)
    else:
        hits = rng.binomial(n, live / n, size=n_bootstrap)
        totals = rng.multinomial(hits, sizes / live)
    states = rng.integers(0, np.iinfo(np.uint64).max, size=n_bootstrap, dtype=np.uint64,
                          endpoint=True)
    return np.ascontiguousarray(totals, dtype=np.int64), states


def bootstrap_sums(stats: np.ndarray, n_bootstrap: int, seed: int, chunk: int = CHUNK,
                   live: np.ndarray | None = None) -> np.ndarray:
    """float64[B, m]: for each of B resamples of the n rows of stats (float64[n, m]) drawn with
    replacement, the sum of the resampled rows.

    live (bool[n], optional): the rows that may be non-zero; the others must be all-zero rows,
    and are not drawn one by one (bootstrap_draws: only how many draws hit live rows matters).
    The result has the same law either way; the draws differ unless every row is live. One
    column runs the direct kernel (a sum per draw); several run the wide one (the same draws
    counted per round of a chunk, then one dot product per column), single-threaded: no BLAS,
    whose threads only contend on a busy box."""
    stats = np.ascontiguousarray(stats, dtype=np.float64)
    n, m = stats.shape
    if live is not None and not live.all():
        stats = np.ascontiguousarray(stats[live])
        totals, states = bootstrap_draws(n, n_bootstrap, seed, chunk, n_live=stats.shape[0])
    else:
        totals, states = bootstrap_draws(n, n_bootstrap, seed, chunk)
    out = np.zeros((n_bootstrap, m))
    if stats.shape[0] == 0:
        return out
    if m == 1:
        _kernels.bootstrap_sums(stats, chunk, totals, states, out)
    else:
        _kernels.bootstrap_sums_wide(np.ascontiguousarray(stats.T), chunk, totals, states,
                                     np.empty(chunk), out)
    return out


def rewarded(log: SlateLog) -> np.ndarray:
    """bool[n]: rounds with a non-zero reward at some present position. The per-round terms of
    the SPARSE estimators are 0 elsewhere, so their bootstrap draws only these one by one."""
    return (_clean(log, "reward", 0.0) != 0).any(axis=1)


def _check_options(n_bootstrap, alpha, seed) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) \
            or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap: must be an integer >= 0, got {n_bootstrap!r}")
    if isinstance(n_bootstrap, (int, np.integer)) and 0 < n_bootstrap < 2:
        raise ValueError(f"n_bootstrap: must be 0 (no interval) or >= 2, got {n_bootstrap!r}")
    if not isinstance(alpha, (int, float, np.floating)) or not 0 < alpha < 1:
        raise ValueError(f"alpha: must be a number in (0, 1), got {alpha!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")


def _finish(log: SlateLog, estimator: str, value: float, boot: np.ndarray | None, alpha: float
            ) -> Estimate:
    ess = effective_sample_size(w) if (w := _weights(log, estimator)) is not None else float(log.n)
    if boot is None:
        low = high = se = math.nan
        b = 0
    else:
        low, high = (float(v) for v in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
        se = float(np.std(boot, ddof=1))
        b = boot.shape[0]
    return Estimate(estimator, float(value), low, high, float(ess), log.n,
                    ess_warning(estimator, ess, log.n), se, b, float(alpha))


def estimate(log: SlateLog, estimator: str, *, n_bootstrap: int = 1000, alpha: float = 0.05,
             seed: int = 0) -> Estimate:
    """One estimator's estimate, bootstrap percentile CI (n_bootstrap resamples, seeded; 0 = no
    interval), ESS and warning. Raises ValueError for an unknown name or a missing field."""
    return estimate_all(log, [estimator], n_bootstrap=n_bootstrap, alpha=alpha, seed=seed)[estimator]


def estimate_all(log: SlateLog, estimators=None, *, n_bootstrap: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> dict[str, Estimate]:
    """Several estimates from one bootstrap pass (the same resamples for all, as one call per
    estimator with the same seed would draw). estimators=None: every estimator whose fields the
    log has, in ESTIMATORS order; a list: exactly those, ValueError naming a missing field."""
    if estimators is None:
        names = [e for e in ESTIMATORS if not _missing(log, e)]
    else:
        names = [estimators] if isinstance(estimators, str) else list(estimators)
        for e in names:
            _require(log, e)
    _check_options(n_bootstrap, alpha, seed)
    if not names:
        return {}
    out = {}
    live = rewarded(log) if any(e in SPARSE for e in names) else None
    for group in ([e for e in names if e in SPARSE], [e for e in names if e not in SPARSE]):
        if not group:
            continue
        parts = [round_stats(log, e) for e in group]
        offsets = np.cumsum([0] + [s.shape[1] for s, _ in parts])
        stats = np.hstack([s for s, _ in parts]) if len(parts) > 1 else parts[0][0]
        totals = stats.sum(axis=0)
        sums = None
        if n_bootstrap:
            sums = bootstrap_sums(stats, n_bootstrap, seed, live=live if group[0] in SPARSE
                                  else None)
        for e, (_, fin), lo, hi in zip(group, parts, offsets[:-1], offsets[1:]):
            value = fin(totals[lo:hi])
            boot = None if sums is None else fin(sums[:, lo:hi])
            out[e] = _finish(log, e, value, boot, alpha)
    return {e: out[e] for e in names}


# --------------------------------------------------------------------------- pseudo-inverse

def pseudo_inverse_weights(slates: np.ndarray, behavior_prob: np.ndarray,
                           target_marginal: np.ndarray, n_items: int | None = None) -> np.ndarray:
    """The general pseudo-inverse weight q_e' Gamma^+ 1_s of each slate of the logging policy's
    support in one context (Swaminathan et al. 2017), for small catalogs.

    slates           int[S, K]      every slate the logging policy can show (item ids 0..m-1)
    behavior_prob    float64[S]     its probability of each (summing to 1)
    target_marginal  float64[K, m]  the target's P(item j at position k)
    Returns float64[S]: the weight to give a round that logged slate s (SlateLog.pi_weight).
    1_s is the indicator vector of the K (position, item) pairs of s, Gamma = E_b[1_s 1_s'],
    q_e = vec(target_marginal). E_b[weight * R] = V(e) whenever the expected slate reward is
    additive over (position, item) pairs and q_e lies in the range of Gamma. When the logging
    policy factorises over positions this equals sum_k rho_k - K + 1.
    """
    slates = np.asarray(slates)
    if slates.ndim != 2 or slates.dtype.kind not in "iu":
        raise ValueError(f"slates: must be a 2-D integer array (S slates, K positions), got "
                         f"shape {slates.shape} dtype {slates.dtype}")
    s_count, k = slates.shape
    prob = np.asarray(behavior_prob, dtype=np.float64)
    if prob.shape != (s_count,) or not np.isfinite(prob).all() or (prob < 0).any():
        raise ValueError(f"behavior_prob: must be {s_count} finite probabilities >= 0, one per "
                         f"slate, got shape {prob.shape}")
    if abs(prob.sum() - 1.0) > 1e-9:
        raise ValueError(f"behavior_prob: must sum to 1, got {prob.sum()!r}")
    q = np.asarray(target_marginal, dtype=np.float64)
    m = n_items if n_items is not None else q.shape[-1]
    if q.shape != (k, m) or not np.isfinite(q).all() or (q < 0).any() or (q > 1).any():
        raise ValueError(f"target_marginal: must be float[K, m] = {(k, m)} in [0, 1], got shape "
                         f"{q.shape}")
    if slates.size and (slates.min() < 0 or slates.max() >= m):
        raise ValueError(f"slates: item ids must be in [0, {m}), got {slates.min()}..{slates.max()}")
    ind = np.zeros((s_count, k * m))
    ind[np.repeat(np.arange(s_count), k), (np.arange(k) * m + slates).ravel()] = 1.0
    gamma = ind.T @ (prob[:, None] * ind)
    return ind @ (np.linalg.pinv(gamma, hermitian=True) @ q.ravel())


def warmup() -> None:
    """Compile (or load) the bootstrap kernels."""
    _kernels.warmup()
