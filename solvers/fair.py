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
several protected groups: by default at one common level adjusted so that the *exact*
multinomial probability that a fair ranking fails some group's table is at most alpha
(`multinomial_failure_probability`, `adjusted_alpha_multinomial`), or, when asked for, with the
older Bonferroni split of alpha over the groups (see its docstring).

Everything here takes and returns plain numbers / numpy arrays (and lists of them).
`adjusted_alpha` and `fair_mtable` are cached; the tables `fair_mtable` and `multi_mtables`
return are shared and read-only, while `mtable` computes a fresh, writable array on every call.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.stats import binom

__all__ = [
    "CORRECTIONS",
    "adjusted_alpha",
    "adjusted_alpha_multinomial",
    "failure_probability",
    "fair_mtable",
    "mtable",
    "multi_mtables",
    "multinomial_failure_probability",
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


def _check_ps(ps) -> list[float]:
    ps = [float(p) for p in ps]
    for g, p in enumerate(ps):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"ps[{g}]: must be in [0, 1], got {p!r}")
    if sum(ps) > 1.0 + 1e-9:
        raise ValueError("ps: proportions of disjoint protected groups must sum to <= 1, "
                         f"got {sum(ps)!r}")
    return ps


def multinomial_failure_probability(tables, ps) -> float:
    """Exact probability that a fair ranking fails at least one of several groups' m-tables.

    A fair ranking draws each position independently: protected group g with probability
    ps[g], unprotected with probability 1 - sum(ps) (the multinomial model of Zehlike, Suehr,
    Baeza-Yates, Bonchi, Castillo and Hajian 2022). It fails iff for some prefix i and some
    group g the count X_g(i) of group g in the top i is below tables[g][i-1]. This is the
    family-wise type I error of testing every prefix of every group.

    Parameters
    ----------
    tables : sequence of array_like of int, each shape (k,)
        One m-table per group (tables[g][i-1]: the minimum count of group g in the top i).
    ps : sequence of float, same length
        Each group's probability, each in [0, 1], summing to <= 1 (checked up to 1e-9).

    Returns
    -------
    float
        The probability, in [0, 1]; 0.0 with no groups or k = 0.

    Raises
    ------
    ValueError
        If the lengths differ (names `tables`), or as for the proportions (names `ps`).

    Notes
    -----
    A forward dynamic program over the joint distribution of the count vector among rankings
    that have not failed yet, as `failure_probability` does for one group. Group g's count is
    capped at c_g = max(tables[g]): once it reaches c_g no later prefix can fail on g, so the
    state space is prod_g (c_g + 1) and the cost O(k * G * prod_g (c_g + 1)). The failed mass
    is accumulated directly, group by group (mass removed for group g is not counted again for
    g' > g), so small failure probabilities keep their relative precision. With one group it
    equals `failure_probability`.
    """
    ps = _check_ps(ps)
    tabs = [np.asarray(t, dtype=np.int64) for t in tables]
    if len(tabs) != len(ps):
        raise ValueError(f"tables: must give one table per proportion ({len(ps)}), got {len(tabs)}")
    if not tabs:
        return 0.0
    k = tabs[0].shape[0]
    if any(t.shape != (k,) for t in tabs):
        raise ValueError(f"tables: must all have shape ({k},), got {[t.shape for t in tabs]}")
    if k == 0:
        return 0.0
    caps = [int(max(t.max(), 0)) for t in tabs]
    G = len(tabs)
    d = np.zeros([c + 1 for c in caps])
    d[(0,) * G] = 1.0
    q = max(0.0, 1.0 - sum(ps))
    fail = 0.0
    for i in range(k):
        new = d * q
        for g, (p, c) in enumerate(zip(ps, caps)):
            if p == 0.0:
                continue
            if c == 0:  # the count of g never matters: the mass stays where it is
                new += p * d
                continue
            src = [slice(None)] * G
            dst = [slice(None)] * G
            src[g], dst[g] = slice(0, c), slice(1, c + 1)
            new[tuple(dst)] += p * d[tuple(src)]
            src[g] = dst[g] = slice(c, c + 1)  # at the cap the count stays capped
            new[tuple(dst)] += p * d[tuple(src)]
        for g, t in enumerate(tabs):
            m = int(t[i])
            if m > 0:
                sl = [slice(None)] * G
                sl[g] = slice(0, m)
                fail += float(new[tuple(sl)].sum())
                new[tuple(sl)] = 0.0
        d = new
    return float(fail)


def _tables_at(cdfs: list[np.ndarray], level: float) -> list[np.ndarray]:
    return [_mtable_from(c, level) for c in cdfs]


@functools.lru_cache(maxsize=256)
def _adjusted_alpha_multinomial_cached(k: int, ps: tuple[float, ...], alpha: float) -> float:
    live = [p for p in ps if 0.0 < p < 1.0]
    if k == 0 or not live:
        return alpha  # only all-zero tables, or a group that is every position: never fails
    limit = alpha * (1.0 + _REL_TIE)
    m_alpha = [_mtable(k, p, alpha) for p in ps]
    if multinomial_failure_probability(m_alpha, ps) <= limit:
        return alpha
    # Each group's table jumps only at that group's CDF values <= alpha, so the tables (all at
    # one level) are constant between consecutive values of the union of those breakpoints;
    # failure is non-decreasing in the level (every table grows pointwise). Binary-search the
    # largest breakpoint whose tables pass, as _adjusted_alpha_cached does for one group.
    cdfs = [_cdf_rows(k, p, int(m.max()) + 1) for p, m in zip(ps, m_alpha)]
    bps = np.unique(np.concatenate([c[(c > 0.0) & (c <= alpha)] for c in cdfs]))
    lo, hi = -1, bps.size - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if multinomial_failure_probability(_tables_at(cdfs, bps[mid]), ps) <= limit:
            lo = mid
        else:
            hi = mid
    left = bps[lo] if lo >= 0 else 0.0
    return float(0.5 * (left + bps[hi]))


def adjusted_alpha_multinomial(k: int, ps, alpha: float) -> float:
    """The common per-prefix level alpha_c for several protected groups tested together.

    The multinomial generalisation of `adjusted_alpha` (Zehlike et al. 2022): every group's
    table is `mtable(k, ps[g], alpha_c)`, and alpha_c is chosen so that the exact probability
    that a fair multinomial ranking fails some group's table at some prefix
    (`multinomial_failure_probability`) is the largest value not exceeding alpha.

    Parameters
    ----------
    k : int
        Length of the ranking, an integer >= 0.
    ps : sequence of float
        Minimal proportion of each protected group, each in [0, 1], summing to <= 1.
    alpha : float
        Family-wise significance, in (0, 1).

    Returns
    -------
    alpha_c : float
        A level in (0, alpha]: the midpoint of the level interval on which the chosen tables are
        constant; alpha itself when the unadjusted tables already fail with probability <= alpha.
        With one group it gives the same table as `adjusted_alpha`.

    Raises
    ------
    ValueError
        If k, a proportion or alpha is out of range (the message names it), or the proportions
        sum to more than 1.

    Notes
    -----
    Against Bonferroni (each group at alpha / G, then the single-group adjustment): the union
    bound makes Bonferroni's tables fail a fair ranking with probability <= alpha, below it by
    the slack of the union bound. With equal proportions (what a `fair_prefix` policy rule
    asks for) Bonferroni's common level is one of the levels searched here, so these tables
    are never smaller than Bonferroni's and often larger: the exact correction asks for as many
    or more protected items at the same stated alpha. (With unequal proportions one common
    level can ask more of one group and less of another than Bonferroni's per-group levels.) The level is searched exactly over
    the breakpoints (O(log(#breakpoints)) dynamic programs). Cached on (k, rounded ps, alpha).
    """
    k, _, alpha = _check(k, 0.0, alpha)
    ps = _check_ps(ps)
    return _adjusted_alpha_multinomial_cached(k, tuple(round(p, 12) for p in ps), round(alpha, 12))


#: The ways `multi_mtables` corrects alpha for several groups; the first is the default.
CORRECTIONS = ("multinomial", "bonferroni")


@functools.lru_cache(maxsize=256)
def _multi_cached(k: int, ps: tuple[float, ...], alpha: float, adjust: bool,
                  correction: str) -> tuple[np.ndarray, ...]:
    if correction == "bonferroni" or len(ps) == 1:
        level = alpha / len(ps)
        return tuple(_fair_mtable_cached(k, p, round(level, 12), adjust) for p in ps)
    level = _adjusted_alpha_multinomial_cached(k, ps, alpha) if adjust else alpha
    out = []
    for p in ps:
        t = _mtable(k, p, level)
        t.setflags(write=False)
        out.append(t)
    return tuple(out)


def multi_mtables(k: int, ps: list[float], alpha: float, adjust: bool = True,
                  correction: str = "multinomial") -> list[np.ndarray]:
    """One m-table per protected group, for several protected groups at once.

    Parameters
    ----------
    k : int
        Length of the ranking, an integer >= 0 (an integral float is accepted).
    ps : sequence of float, length G
        Minimal proportion of each protected group, each in [0, 1]; the groups are disjoint, so
        the proportions must sum to <= 1 (checked up to 1e-9).
    alpha : float
        Family-wise significance shared by all groups, in (0, 1).
    adjust : bool, default True
        Correct the level for testing every prefix (and, with "multinomial", every group).
        False: "multinomial" tests every prefix of every group at alpha itself; "bonferroni" at
        alpha / G.
    correction : {"multinomial", "bonferroni"}, default "multinomial"
        "multinomial": every table at the common level `adjusted_alpha_multinomial(k, ps,
        alpha)`, so that the exact probability that a fair ranking fails any table is <= alpha
        (Zehlike et al. 2022's multinomial model). "bonferroni": group g's table is
        `fair_mtable(k, ps[g], alpha / G, adjust)`; by the union bound a fair ranking fails some
        table with probability <= alpha whatever the dependence between groups, but usually
        well below it, so the tables are smaller (ask for fewer protected items). With one group
        both give `fair_mtable(k, ps[0], alpha, adjust)`.

    Returns
    -------
    list of ndarray of int64, shape (k,)
        One table per group, in the order of `ps`; [] when `ps` is empty (then nothing else is
        checked). The arrays are cached, shared and read-only.

    Raises
    ------
    ValueError
        If sum(ps) > 1 or a proportion is outside [0, 1] (message names `ps`), k is not an
        integer >= 0, alpha (or alpha / G for "bonferroni") is not in (0, 1), or `correction`
        is not one of CORRECTIONS (message names `correction`).

    Notes
    -----
    What the 2022 paper does beyond this: its test accepts a prefix when the *joint*
    multinomial CDF of the count vector exceeds the level, a region that is not a product of
    per-group minimums (its "mTree" of minimal count tuples). The engine's rules are per-group
    prefix minimums ("at least m in the top i"), so we keep product-form tables and make their
    joint type I error exact instead of bounding it by the union bound; the tables then need
    sum_g m_g(i) <= i, which holds because a fair ranking passes them with probability
    1 - failure >= 1 - alpha > 0.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction: must be one of {', '.join(repr(c) for c in CORRECTIONS)}, "
                         f"got {correction!r}")
    ps = _check_ps(ps)
    if not ps:
        return []
    k, _, _ = _check(k, 0.0, alpha / len(ps) if correction == "bonferroni" else alpha)
    return list(_multi_cached(k, tuple(round(p, 12) for p in ps), round(float(alpha), 12),
                              bool(adjust), correction))
