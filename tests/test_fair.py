"""FA*IR m-tables and alpha adjustment (solvers/fair.py) against published values and
independent from-scratch computations (exact binomial sums with math.comb, exhaustive
enumeration of rankings, simulation)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from solvers import fair
from solvers.fair import (adjusted_alpha, failure_probability, fair_mtable, mtable, multi_mtables,
                          prefix_minimums)


# --- independent references, written from the definitions only --------------------------------

def cdf_exact(x: int, n: int, p: float) -> float:
    return math.fsum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(x + 1))


def m_exact(i: int, p: float, a: float) -> int:
    """min{x : F(x; i, p) > a}, the paper's fair representation condition."""
    return next(x for x in range(i + 1) if cdf_exact(x, i, p) > a)


def failure_by_enumeration(mt: list[int], p: float) -> float:
    """Sum of P(ranking) over all 2^k protected/unprotected rankings that fail some prefix."""
    k = len(mt)
    total = 0.0
    for bits in itertools.product((0, 1), repeat=k):
        c = np.cumsum(bits)
        if np.any(c < np.asarray(mt)):
            s = int(c[-1])
            total += p**s * (1 - p) ** (k - s)
    return total


# --- published values --------------------------------------------------------------------------

# Zehlike et al., FA*IR (CIKM 2017), table of example m-tables at alpha = 0.1 for k = 1..12,
# reproduced as Table 1 of Zehlike, Suehr & Castillo, arXiv:2012.12795 ("for p = 0.5 at least 1
# protected candidate is needed in the top 4 and 2 in the top 7").
PAPER_TABLE_ALPHA_01 = {
    0.1: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    0.3: [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2],
    0.5: [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4],
    0.7: [0, 1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6],
}


@pytest.mark.parametrize("p", sorted(PAPER_TABLE_ALPHA_01))
def test_mtable_matches_the_papers_table(p):
    got = mtable(12, p, 0.1)
    assert got.dtype == np.int64
    assert got.tolist() == PAPER_TABLE_ALPHA_01[p]


# Unadjusted tables published in the test suite of fairsearch-core, the authors' reference
# implementation (github.com/fair-search/fairsearch-fair-python, tests/test_fair.py).
@pytest.mark.parametrize("k, p, alpha, expected", [
    (10, 0.2, 0.15, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]),
    (20, 0.25, 0.1, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]),
    (30, 0.3, 0.05, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
                     4, 4, 4, 4, 5, 5, 5]),
])
def test_unadjusted_mtable_matches_reference_implementation(k, p, alpha, expected):
    assert mtable(k, p, alpha).tolist() == expected
    assert fair_mtable(k, p, alpha, adjust=False).tolist() == expected


@pytest.mark.parametrize("k, p, alpha, expected, fail", [
    # Same adjusted table and failure probability as the reference implementation.
    (10, 0.2, 0.15, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1], 0.134217728),  # = 0.8**9, no adjustment
    (30, 0.3, 0.05, [0] * 10 + [1] * 6 + [2] * 5 + [3] * 4 + [4] * 5, 0.04877730797178359),
])
def test_adjusted_mtable_matches_reference_implementation(k, p, alpha, expected, fail):
    mt = fair_mtable(k, p, alpha)
    assert mt.tolist() == expected
    assert failure_probability(mt, p) == pytest.approx(fail, rel=1e-12)


def test_adjustment_never_exceeds_alpha_unlike_the_reference_implementation():
    # fairsearch-core returns [0]*8 + [1]*7 + [2]*5 for (20, 0.25, 0.1): the boundary table whose
    # failure probability is *closest* to alpha, 0.10515247355215251 (its published value) > 0.1.
    theirs = np.array([0] * 8 + [1] * 7 + [2] * 5)
    assert failure_probability(theirs, 0.25) == pytest.approx(0.10515247355215251, rel=1e-12)
    ours = fair_mtable(20, 0.25, 0.1)
    assert ours.tolist() == [0] * 9 + [1] * 6 + [2] * 5
    assert failure_probability(ours, 0.25) == pytest.approx(0.08972216723486781, rel=1e-12)


# --- the binomial inverse CDF, checked by direct summation ---------------------------------------

@pytest.mark.parametrize("p", [0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.2])
def test_mtable_equals_direct_cdf_summation(p, alpha):
    k = 40
    assert mtable(k, p, alpha).tolist() == [m_exact(i, p, alpha) for i in range(1, k + 1)]


def test_strict_inequality_differs_from_scipy_ppf_on_ties():
    # F(0; 3, 0.5) = 0.125 exactly. The paper requires F(x) > alpha, so at alpha = 0.125 one
    # protected item is needed in the top 3; scipy's ppf (F(x) >= alpha) would say 0.
    from scipy.stats import binom

    assert binom.cdf(0, 3, 0.5) == 0.125
    assert binom.ppf(0.125, 3, 0.5) == 0
    # F(0; 1, .5) = .5 and F(0; 2, .5) = .25 exceed .125, so the first two prefixes need none.
    assert mtable(3, 0.5, 0.125).tolist() == [0, 0, 1]


# --- failure probability ------------------------------------------------------------------------

@pytest.mark.parametrize("k, p, alpha", [(8, 0.5, 0.2), (10, 0.3, 0.1), (12, 0.7, 0.1),
                                         (14, 0.4, 0.05), (12, 0.2, 0.3)])
def test_failure_probability_equals_exhaustive_enumeration(k, p, alpha):
    mt = mtable(k, p, alpha)
    assert mt.max() > 0  # a non-trivial table
    assert failure_probability(mt, p) == pytest.approx(failure_by_enumeration(mt.tolist(), p),
                                                       rel=1e-12, abs=1e-15)


def test_adjusted_table_fails_fair_rankings_with_probability_alpha_by_simulation():
    k, p, alpha = 40, 0.3, 0.1
    mt = fair_mtable(k, p, alpha)
    rng = np.random.default_rng(7)
    n = 200_000
    counts = np.cumsum(rng.random((n, k)) < p, axis=1)
    rate = float(np.mean(np.any(counts < mt, axis=1)))
    exact = failure_probability(mt, p)
    assert abs(rate - exact) < 4 * math.sqrt(exact * (1 - exact) / n)  # ~0.0027
    assert exact <= alpha and exact > 0.09  # the best table under alpha is close to it here
    unadjusted = failure_probability(mtable(k, p, alpha), p)
    assert unadjusted > 0.2  # the multiple-testing problem the adjustment fixes


@pytest.mark.parametrize("k, p, alpha", [(20, 0.25, 0.1), (30, 0.3, 0.05), (50, 0.5, 0.1),
                                         (25, 0.6, 0.01), (60, 0.15, 0.1)])
def test_adjusted_alpha_gives_the_largest_table_not_exceeding_alpha(k, p, alpha):
    ac = adjusted_alpha(k, p, alpha)
    assert 0 < ac <= alpha
    mt = fair_mtable(k, p, alpha)
    assert mt.tolist() == mtable(k, p, ac).tolist()
    assert failure_probability(mt, p) <= alpha
    # Maximality: the next level at which the table changes (the smallest CDF value above ac,
    # from direct summation) gives a table that fails more often than alpha.
    nxt = min(c for i in range(1, k + 1) for x in range(i)
              if (c := cdf_exact(x, i, p)) > ac)
    assert nxt <= alpha
    bigger = [m_exact(i, p, nxt) for i in range(1, k + 1)]
    assert sum(bigger) > sum(mt)
    assert failure_probability(np.array(bigger), p) > alpha


# --- properties and edge cases -------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 7, 100])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.45, 0.9, 1.0])
@pytest.mark.parametrize("adjust", [False, True])
def test_table_shape_and_monotonicity(k, p, adjust):
    mt = fair_mtable(k, p, 0.1, adjust)
    assert mt.shape == (k,) and mt.dtype == np.int64
    steps = np.diff(np.concatenate(([0], mt)))
    assert np.all((steps == 0) | (steps == 1))  # non-decreasing, by at most one per position
    assert np.all(mt <= np.arange(1, k + 1))
    assert adjusted_alpha(k, p, 0.1) <= 0.1


def test_p_zero_and_p_one():
    assert mtable(20, 0.0, 0.1).tolist() == [0] * 20
    assert fair_mtable(20, 0.0, 0.1).tolist() == [0] * 20
    assert mtable(5, 1.0, 0.1).tolist() == [1, 2, 3, 4, 5]
    assert failure_probability(mtable(5, 1.0, 0.1), 1.0) == 0.0
    assert adjusted_alpha(5, 1.0, 0.1) == 0.1


def test_short_rankings_need_no_adjustment():
    # Only one test can fail (the first 1 in the table), so the level stays alpha.
    assert adjusted_alpha(10, 0.2, 0.15) == 0.15
    assert mtable(0, 0.3, 0.1).shape == (0,)
    assert failure_probability(np.zeros(0, dtype=np.int64), 0.3) == 0.0


def test_caching_and_read_only_tables():
    fair._fair_mtable_cached.cache_clear()
    fair._adjusted_alpha_cached.cache_clear()
    a = fair_mtable(33, 0.3, 0.1)
    b = fair_mtable(33, 0.1 + 0.2, 0.1)  # 0.30000000000000004 rounds to the same key
    assert a is b
    assert fair._fair_mtable_cached.cache_info().hits == 1
    assert fair._adjusted_alpha_cached.cache_info().misses == 1
    adjusted_alpha(33, 0.3, 0.1)
    assert fair._adjusted_alpha_cached.cache_info().hits >= 1
    with pytest.raises(ValueError, match="read-only"):
        a[0] = 5


def test_prefix_minimums():
    assert prefix_minimums(np.array([0, 0, 0, 1, 1, 1, 2])) == [(4, 1), (7, 2)]
    assert prefix_minimums(np.array([0, 0])) == []
    assert prefix_minimums(np.array([], dtype=np.int64)) == []
    assert prefix_minimums(np.array([1, 1, 3])) == [(1, 1), (3, 3)]
    assert prefix_minimums(mtable(12, 0.7, 0.1)) == [(2, 1), (4, 2), (6, 3), (8, 4), (9, 5), (11, 6)]


def test_multi_mtables_bonferroni_then_adjust():
    k, ps, alpha = 30, [0.3, 0.2], 0.1
    tables = multi_mtables(k, ps, alpha, correction="bonferroni")
    assert [t.tolist() for t in tables] == [fair_mtable(k, p, alpha / 2).tolist() for p in ps]
    # Union bound: P(a fair ranking fails some group's table) <= sum of per-group failures <= alpha.
    assert sum(failure_probability(t, p) for t, p in zip(tables, ps)) <= alpha
    assert np.all(tables[0] + tables[1] <= np.arange(1, k + 1))  # jointly satisfiable here
    assert multi_mtables(k, [], alpha) == []
    assert multi_mtables(k, [0.3], alpha)[0].tolist() == fair_mtable(k, 0.3, alpha).tolist()
    with pytest.raises(ValueError, match=r"ps: proportions of disjoint protected groups must sum to <= 1, got 1\.2"):
        multi_mtables(k, [0.6, 0.6], alpha)


@pytest.mark.parametrize("args, message", [
    ((-1, 0.3, 0.1), r"k: must be an integer >= 0, got -1"),
    ((10, 1.5, 0.1), r"p: must be in \[0, 1\], got 1\.5"),
    ((10, 0.3, 0.0), r"alpha: must be in \(0, 1\), got 0\.0"),
    ((10, 0.3, 1.0), r"alpha: must be in \(0, 1\), got 1\.0"),
])
def test_invalid_arguments(args, message):
    for fn in (mtable, adjusted_alpha, fair_mtable):
        with pytest.raises(ValueError, match=message):
            fn(*args)
