"""Ranked group fairness (FA*IR): m-tables and the multiple-testing adjustment of alpha.

Reference: M. Zehlike, F. Bonchi, C. Castillo, S. Hajian, M. Megahed, R. Baeza-Yates,
"FA*IR: A Fair Top-k Ranking Algorithm", CIKM 2017 (arXiv:1706.06368), and the correction of its
significance adjustment in M. Zehlike, T. Suehr, C. Castillo, "A Note on the Significance
Adjustment for FA*IR with Two Protected Groups", 2020 (arXiv:2012.12795).

The ranked group fairness test. Let F(x; i, p) be the binomial CDF. A prefix of length i holding x
protected items *fairly represents* the protected group with minimal proportion p at significance
a iff F(x; i, p) > a (the paper's Definition "fair representation condition", strict inequality).
The m-table is the smallest such count at every prefix:

    m(i) = min { x in {0..i} : F(x; i, p) > a }        i = 1..k

Note the strict ">": scipy.stats.binom.ppf(a, i, p) is min{x : F(x) >= a}, which differs exactly
when a equals a CDF value (e.g. p = 0.5, a = 0.125). The reference implementation
(fairsearch-core) uses ppf; we follow the paper's definition.

A ranking passes the test iff every prefix i holds at least m(i) protected items. Testing k
prefixes at level a each rejects a truly fair ranking (each position protected independently with
probability p) with probability well above a, so the paper runs the per-prefix tests at a corrected
level alpha_c chosen so that the probability of rejecting a fair ranking is alpha.
`failure_probability` computes that probability exactly (see its docstring) and `adjusted_alpha`
searches alpha_c.

`fair_mtable` is the table FA*IR uses (at the adjusted level by default), `prefix_minimums` turns
a table into "at least n in the top i" rows, and `multi_mtables` gives one table per group for
several protected groups (a Bonferroni split of alpha, see its docstring).

Everything here takes and returns plain numbers / numpy arrays (and lists of them).
`adjusted_alpha` and `fair_mtable` are cached; the tables `fair_mtable` and `multi_mtables`
return are shared and read-only, while `mtable` computes a fresh, writable array on every call.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.stats import binom

__all__ = [
    "adjusted_alpha",
    "failure_probability",
    "fair_mtable",
    "mtable",
    "multi_mtables",
    "prefix_minimums",
]

# A table whose failure probability exceeds alpha by less than this relative amount is accepted:
# the DP's float rounding (~1e-15) must not flip an exact tie (p = 0.5 gives dyadic probabilities).
_REL_TIE = 1e-12


def _check(k: int, p: float, alpha: float) -> tuple[int, float, float]:
    if int(k) != k or k < 0:
        raise ValueError(f"k: must be an integer >= 0, got {k!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p: must be in [0, 1], got {p!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha!r}")
    return int(k), float(p), float(alpha)


def _cdf_rows(k: int, p: float, xmax: int) -> np.ndarray:
    """C[i-1, x] = F(x; i, p) for i = 1..k, x = 0..xmax-1 (columns past i hold 1)."""
    i = np.arange(1, k + 1)[:, None]
    x = np.arange(xmax)[None, :]
    return binom.cdf(x, i, p)


def _mtable_from(cdf: np.ndarray, a: float) -> np.ndarray:
    """m(i) = #{x : F(x; i, p) <= a} (= min{x : F(x; i, p) > a}, F increasing in x)."""
    return (cdf <= a).sum(axis=1).astype(np.int64)


def _mtable(k: int, p: float, a: float) -> np.ndarray:
    out = np.zeros(k, dtype=np.int64)
    # Only x <= i can qualify (F(i; i, p) = 1 > a). Blocks of rows keep memory O(k * block).
    block = max(1, 4_000_000 // (k + 1))
    for s in range(0, k, block):
        e = min(k, s + block)
        i = np.arange(s + 1, e + 1)[:, None]
        x = np.arange(e + 1)[None, :]
        out[s:e] = ((binom.cdf(x, i, p) <= a) & (x <= i)).sum(axis=1)
    return out


def mtable(k: int, p: float, alpha: float) -> np.ndarray:
    """Unadjusted m-table: the fewest protected items each prefix may hold at level `alpha`.

    m[i-1] = min{x : F(x; i, p) > alpha} for i = 1..k, F the binomial CDF. This is the paper's
    binomial inverse CDF with the strict inequality of its fair representation condition (see
    the module docstring for how it differs from scipy.stats.binom.ppf). The level is used as
    given, with no multiple-testing adjustment (`fair_mtable` applies `adjusted_alpha`).

    Parameters
    ----------
    k : int
        Length of the ranking (the number of prefixes), an integer >= 0; an integral float such
        as 10.0 is accepted.
    p : float
        Minimal proportion of the protected group, in [0, 1].
    alpha : float
        Significance level of each prefix's test, in (0, 1).

    Returns
    -------
    m : ndarray of int64, shape (k,)
        m[i-1] is the minimum number of protected items in the top i. m is non-decreasing,
        m[i-1] <= i, and p = 0 gives all zeros. A fresh, writable array (not cached).

    Raises
    ------
    ValueError
        If k is not an integer >= 0, p is not in [0, 1] or alpha is not in (0, 1); the message
        names the argument.
    """
    k, p, alpha = _check(k, p, alpha)
    return _mtable(k, p, alpha)


def failure_probability(mt: np.ndarray, p: float) -> float:
    """Exact probability that a fair ranking fails the m-table `mt` at some prefix.

    A fair ranking has each position protected independently with probability p. It fails iff
    for some prefix i the protected count X_i is below mt[i-1]. This is the type I error of the
    ranked group fairness test run with table `mt`.

    Parameters
    ----------
    mt : array_like of int, shape (k,)
        An m-table: mt[i-1] is the minimum protected count of the prefix of length i (as from
        `mtable` or `fair_mtable`). Converted to int64.
    p : float
        Probability that a position of the fair ranking is protected, in [0, 1] (not checked).

    Returns
    -------
    float
        The probability, in [0, 1], that some prefix i holds fewer than mt[i-1] protected
        items; 0.0 for an empty table (k = 0).

    Notes
    -----
    The paper computes the success probability recursively over the m-table's "blocks" (runs of
    positions between the points where m increases by one) with memoisation; this is the same
    quantity computed forward as a dynamic program over the distribution of the protected count
    among rankings that have not failed yet:

        d_0 = delta_0;  d_i(c) = (1-p) d_{i-1}(c) + p d_{i-1}(c-1);  then the mass at c < mt[i-1]
        is removed and added to the failure probability.

    O(k^2) arithmetic, k vectorised numpy steps. The failed mass is accumulated directly (not as
    1 - success), so small failure probabilities keep their relative precision.
    """
    mt = np.asarray(mt, dtype=np.int64)
    k = mt.shape[0]
    if k == 0:
        return 0.0
    d = np.zeros(k + 1)
    d[0] = 1.0
    fail = 0.0
    q = 1.0 - p
    for i in range(1, k + 1):
        # d holds counts 0..i-1; one more position moves mass p from count c to c + 1.
        prev = d[:i].copy()
        d[:i] = prev * q
        d[1:i + 1] += prev * p
        m = mt[i - 1]
        if m > 0:
            fail += d[:m].sum()
            d[:m] = 0.0
    return float(fail)


@functools.lru_cache(maxsize=1024)
def _adjusted_alpha_cached(k: int, p: float, alpha: float) -> float:
    if k == 0 or p == 0.0 or p == 1.0:
        return alpha  # all-zero table, or every fair ranking is all-protected: never fails
    limit = alpha * (1.0 + _REL_TIE)
    m_alpha = _mtable(k, p, alpha)
    if failure_probability(m_alpha, p) <= limit:
        return alpha
    # As a function of the level a, m(i) jumps from x to x+1 exactly at a = F(x; i, p), so the
    # table is constant between consecutive CDF values and only those <= alpha matter; they all
    # sit in columns x < m_alpha(i) <= max(m_alpha).
    cdf = _cdf_rows(k, p, int(m_alpha.max()) + 1)
    bps = np.unique(cdf[(cdf > 0.0) & (cdf <= alpha)])
    # Levels below bps[0] give the all-zero table (failure 0). Failure probability is
    # non-decreasing in the level (tables grow pointwise), so binary-search the largest j whose
    # table T(bps[j]) still has failure <= alpha. T(bps[-1]) = T(alpha) fails (checked above).
    # Invariant: T(bps[lo]) passes (lo = -1: the zero table); T(bps[hi]) fails.
    lo, hi = -1, bps.size - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if failure_probability(_mtable_from(cdf, bps[mid]), p) <= limit:
            lo = mid
        else:
            hi = mid
    # The passing table is constant on [bps[lo], bps[hi]); return the midpoint, away from both
    # jumps, so that mtable(k, p, result) reproduces it whatever the rounding of a CDF value.
    left = bps[lo] if lo >= 0 else 0.0
    return float(0.5 * (left + bps[hi]))


def adjusted_alpha(k: int, p: float, alpha: float) -> float:
    """The corrected per-prefix significance alpha_c for a ranking of length k (paper, Sec. 4.2).

    The paper binary-searches alpha_c so that the probability that a fair ranking fails the test
    (`failure_probability` of the m-table at level alpha_c) is alpha. That probability is a step
    function of the level, so "equal to alpha" is rarely attainable; we return a level whose
    table has the **largest failure probability that does not exceed alpha** (type I error is
    guaranteed <= alpha).

    Parameters
    ----------
    k : int
        Length of the ranking, an integer >= 0 (an integral float is accepted).
    p : float
        Minimal proportion of the protected group, in [0, 1].
    alpha : float
        Target probability, in (0, 1), that a fair ranking fails the test at any prefix (the
        family-wise type I error).

    Returns
    -------
    alpha_c : float
        A level in (0, alpha] at which `mtable(k, p, alpha_c)` is the chosen table: the midpoint
        of the level interval on which that table is constant (any level in it gives the same
        table). alpha itself when the unadjusted table already fails with probability <= alpha
        (always for k = 0, p = 0 or p = 1).

    Raises
    ------
    ValueError
        If k is not an integer >= 0, p is not in [0, 1] or alpha is not in (0, 1).

    Notes
    -----
    The search is exact and discrete: the table can only change at the CDF values
    F(x; i, p) <= alpha, so we binary-search those breakpoints (O(log k) DP evaluations of
    O(k^2) each) instead of bisecting a float, and return the midpoint of the level interval on
    which the chosen table is constant.

    Differences from the reference implementation (fairsearch-core): it returns the boundary
    table whose failure probability is *closest* to alpha, which may exceed it (k=20, p=0.25,
    alpha=0.1 gives failure 0.105 there; we return the next smaller table). If the unadjusted
    table already fails with probability <= alpha (short rankings, small p), alpha itself is
    returned, as in the 2020 correction note.

    Cached on (k, round(p, 12), round(alpha, 12)).
    """
    k, p, alpha = _check(k, p, alpha)
    return _adjusted_alpha_cached(k, round(p, 12), round(alpha, 12))


@functools.lru_cache(maxsize=1024)
def _fair_mtable_cached(k: int, p: float, alpha: float, adjust: bool) -> np.ndarray:
    level = _adjusted_alpha_cached(k, p, alpha) if adjust else alpha
    out = _mtable(k, p, level)
    out.setflags(write=False)
    return out


def fair_mtable(k: int, p: float, alpha: float, adjust: bool = True) -> np.ndarray:
    """The m-table used by FA*IR: at level adjusted_alpha(k, p, alpha) if `adjust`, else at alpha.

    Parameters
    ----------
    k, p : int, float
        As for `adjusted_alpha`.
    alpha : float
        Significance, in (0, 1): the family-wise level if `adjust`, else each prefix's level.
    adjust : bool, default True
        Run the per-prefix tests at `adjusted_alpha(k, p, alpha)` (type I error <= alpha over
        the whole ranking) rather than at alpha.

    Returns
    -------
    m : ndarray of int64, shape (k,)
        `mtable(k, p, level)`. Cached on (k, round(p, 12), round(alpha, 12), adjust); the
        returned array is shared and read-only (copy it before modifying).

    Raises
    ------
    ValueError
        If k is not an integer >= 0, p is not in [0, 1] or alpha is not in (0, 1).
    """
    k, p, alpha = _check(k, p, alpha)
    return _fair_mtable_cached(k, round(p, 12), round(alpha, 12), bool(adjust))


def prefix_minimums(mt: np.ndarray) -> list[tuple[int, int]]:
    """The (within_top, min) pairs where the requirement increases.

    Each pair reads "at least `min` protected in the top `within_top`". Together these rows are
    equivalent to the whole table: a prefix i between two rows inherits the requirement of the
    last row at or before it.

    Parameters
    ----------
    mt : array_like of int, shape (k,)
        An m-table (mt[i-1]: the minimum protected count in the top i). Converted to int64.

    Returns
    -------
    list of tuple of (int, int)
        (within_top, min) for every 1-based position i where mt[i-1] exceeds the previous entry
        (the entry before position 1 counts as 0), in increasing order of within_top; [] for an
        empty or all-zero table. Rows are emitted with the new value even if m jumps by more
        than one (a jump never happens for a valid m-table, which grows by at most 1 per
        position, but the function does not rely on it).

    Examples
    --------
    >>> prefix_minimums([0, 0, 0, 1, 1, 1, 2])
    [(4, 1), (7, 2)]
    """
    mt = np.asarray(mt, dtype=np.int64)
    if mt.size == 0:
        return []
    prev = np.concatenate(([0], mt[:-1]))
    idx = np.flatnonzero(mt > prev)
    return [(int(i) + 1, int(mt[i])) for i in idx]


def multi_mtables(k: int, ps: list[float], alpha: float, adjust: bool = True) -> list[np.ndarray]:
    """One m-table per protected group, for several protected groups at once.

    Group g's table is fair_mtable(k, ps[g], alpha / G, adjust), G = len(ps): a Bonferroni split
    of alpha over the groups (see Notes).

    Parameters
    ----------
    k : int
        Length of the ranking, an integer >= 0 (an integral float is accepted).
    ps : sequence of float, length G
        Minimal proportion of each protected group, each in [0, 1]; the groups are disjoint, so
        the proportions must sum to <= 1 (checked up to 1e-9).
    alpha : float
        Family-wise significance shared by all groups; each group is tested at alpha / G, which
        must lie in (0, 1).
    adjust : bool, default True
        Passed to `fair_mtable`: adjust each group's level alpha / G for its k prefix tests.

    Returns
    -------
    list of ndarray of int64, shape (k,)
        One table per group, in the order of `ps`; [] when `ps` is empty (then nothing else is
        checked). The arrays are `fair_mtable`'s cached, shared, read-only ones.

    Raises
    ------
    ValueError
        If sum(ps) > 1 (message names `ps`), or, from `fair_mtable`, if k is not an integer
        >= 0, a proportion is not in [0, 1] or alpha / G is not in (0, 1).

    Notes
    -----
    What the papers do: FA*IR (2017) handles a single protected group. The 2020 note
    (arXiv:2012.12795) generalises the test to several protected groups with a multinomial
    model and a tree of m-tables ("mTree"), whose exact failure probability it computes and
    adjusts; its cost grows quickly with the number of groups.

    What we do (conservative and cheap): a Bonferroni split over the G groups, then the
    single-group adjustment for each. By the union bound, the probability that a fair ranking
    (positions drawn independently from any joint distribution with marginals ps) fails *any*
    group's table is at most sum_g alpha / G = alpha, whatever the dependence between groups.
    The price is tables a little looser than the exact multinomial correction would give.

    The groups are separate constraints; we require sum(ps) <= 1 (they are disjoint proportions)
    but do not check joint satisfiability (sum_g m_g[i] <= i), which holds for the usual values
    since each m_g(i) is at most the binomial median; the greedy reports any relaxation.
    """
    ps = [float(p) for p in ps]
    if not ps:
        return []
    if sum(ps) > 1.0 + 1e-9:
        raise ValueError("ps: proportions of disjoint protected groups must sum to <= 1, "
                         f"got {sum(ps)!r}")
    level = alpha / len(ps)
    return [fair_mtable(k, p, level, adjust) for p in ps]
