"""FA*IR with several protected groups (solvers/fair.py): the exact multinomial failure probability
against brute-force enumeration of every ranking, the adjusted common level against its
definition (largest table not exceeding alpha), Bonferroni as the policy's opt-in, and the
policy field through compilation and the engine."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from engine.compile import compile_policy, fair_rows
from engine.errors import PolicyInvalid
from engine.policy_loader import parse_policy_text
from engine.types import RerankRequest
from solvers import fair
from solvers.fair import (adjusted_alpha_multinomial, failure_probability, fair_mtable, mtable,
                          multi_mtables, multinomial_failure_probability)
from testing.engines import candidates, engine_with, policy
from tests.checker import check_answer


def failure_by_enumeration(tables: list[list[int]], ps: list[float]) -> float:
    """Sum of P(ranking) over all (G+1)^k group sequences (G = unprotected) failing some table."""
    G, k = len(ps), len(tables[0])
    probs = list(ps) + [1.0 - sum(ps)]
    total = 0.0
    for seq in itertools.product(range(G + 1), repeat=k):
        counts = [0] * G
        failed = False
        for i, g in enumerate(seq):
            if g < G:
                counts[g] += 1
            if any(counts[h] < tables[h][i] for h in range(G)):
                failed = True
                break
        if failed:
            total += math.prod(probs[g] for g in seq)
    return total


@pytest.mark.parametrize("k, ps, level", [
    (8, [0.3, 0.2], 0.3), (8, [0.5, 0.4], 0.2), (7, [0.2, 0.2, 0.2], 0.4), (6, [0.3, 0.3, 0.3], 0.3),
    (9, [0.25, 0.25], 0.25), (7, [0.6, 0.1], 0.3),
])
def test_failure_probability_equals_enumeration(k, ps, level):
    tables = [mtable(k, p, level) for p in ps]
    assert max(int(t.max()) for t in tables) > 0  # non-trivial
    got = multinomial_failure_probability(tables, ps)
    assert got == pytest.approx(failure_by_enumeration([t.tolist() for t in tables], ps),
                                rel=1e-12, abs=1e-15)


def test_failure_probability_of_arbitrary_tables_equals_enumeration():
    rng = np.random.default_rng(3)
    for _ in range(6):
        k, G = 6, 2
        ps = list(rng.dirichlet(np.ones(G + 1))[:G])
        tables = [np.minimum(np.sort(rng.integers(0, 3, size=k)), np.arange(1, k + 1)) for _ in ps]
        assert multinomial_failure_probability(tables, ps) == pytest.approx(
            failure_by_enumeration([t.tolist() for t in tables], ps), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("k, p, level", [(10, 0.3, 0.1), (30, 0.3, 0.05), (40, 0.5, 0.2)])
def test_one_group_is_the_binomial_case(k, p, level):
    mt = mtable(k, p, level)
    assert multinomial_failure_probability([mt], [p]) == pytest.approx(failure_probability(mt, p),
                                                                       rel=1e-12)
    assert multi_mtables(k, [p], 0.1)[0].tolist() == fair_mtable(k, p, 0.1).tolist()
    assert multi_mtables(k, [p], 0.1, correction="bonferroni")[0].tolist() == fair_mtable(k, p, 0.1).tolist()


@pytest.mark.parametrize("k, ps, alpha", [
    (50, [0.2, 0.2], 0.1), (40, [0.3, 0.3], 0.05), (60, [0.15, 0.15, 0.15], 0.1),
    (30, [0.3, 0.2], 0.1), (80, [0.1, 0.1, 0.1, 0.1], 0.2),
])
def test_adjusted_level_gives_the_largest_tables_not_exceeding_alpha(k, ps, alpha):
    ac = adjusted_alpha_multinomial(k, ps, alpha)
    assert 0 < ac <= alpha
    tables = multi_mtables(k, ps, alpha)
    assert [t.tolist() for t in tables] == [mtable(k, p, ac).tolist() for p in ps]
    assert multinomial_failure_probability(tables, ps) <= alpha
    # Maximality: the next level at which some table changes (the smallest CDF value of any
    # group above ac) gives tables that fail a fair ranking more often than alpha.
    from scipy.stats import binom

    nxt = min(float(c) for p in ps for i in range(1, k + 1)
              for c in binom.cdf(np.arange(i), i, p) if c > ac)
    if nxt <= alpha:
        bigger = [mtable(k, p, nxt) for p in ps]
        assert sum(int(b.sum()) for b in bigger) > sum(int(t.sum()) for t in tables)
        assert multinomial_failure_probability(bigger, ps) > alpha


@pytest.mark.parametrize("k", [20, 50, 100])
@pytest.mark.parametrize("G, p", [(2, 0.2), (3, 0.15), (4, 0.1), (2, 0.4)])
def test_multinomial_asks_at_least_as_much_as_bonferroni_within_alpha(k, G, p):
    ps, alpha = [p] * G, 0.1
    exact = multi_mtables(k, ps, alpha)
    bonf = multi_mtables(k, ps, alpha, correction="bonferroni")
    assert [t.tolist() for t in bonf] == [fair_mtable(k, p, alpha / G).tolist()] * G
    for e, b in zip(exact, bonf):
        assert np.all(e >= b)
    f_exact = multinomial_failure_probability(exact, ps)
    f_bonf = multinomial_failure_probability(bonf, ps)
    assert f_bonf <= f_exact <= alpha
    assert np.all(sum(exact) <= np.arange(1, k + 1))  # jointly satisfiable


def test_multinomial_is_stricter_somewhere():
    # k = 50, two groups at 0.2: Bonferroni needs 166 protected placements over all prefixes,
    # the exact correction 168 (two more), with joint failure 0.0967 vs 0.0990.
    ps = [0.2, 0.2]
    exact, bonf = multi_mtables(50, ps, 0.1), multi_mtables(50, ps, 0.1, correction="bonferroni")
    assert sum(int(t.sum()) for t in exact) > sum(int(t.sum()) for t in bonf)


def test_failure_by_simulation_three_groups():
    k, ps, alpha = 30, [0.2, 0.2, 0.2], 0.1
    tables = np.stack(multi_mtables(k, ps, alpha))
    rng = np.random.default_rng(11)
    n = 100_000
    draws = rng.choice(4, size=(n, k), p=ps + [0.4])
    fails = np.zeros(n, dtype=bool)
    for g in range(3):
        fails |= np.any(np.cumsum(draws == g, axis=1) < tables[g], axis=1)
    exact = multinomial_failure_probability(tables, ps)
    assert abs(fails.mean() - exact) < 4 * math.sqrt(exact * (1 - exact) / n)


def test_unadjusted_multinomial_uses_alpha_itself():
    assert [t.tolist() for t in multi_mtables(20, [0.3, 0.3], 0.1, adjust=False)] == \
        [mtable(20, 0.3, 0.1).tolist()] * 2
    assert [t.tolist() for t in multi_mtables(20, [0.3, 0.3], 0.1, adjust=False,
                                              correction="bonferroni")] == [mtable(20, 0.3, 0.05).tolist()] * 2


def test_tables_are_cached_and_read_only():
    fair._multi_cached.cache_clear()
    a = multi_mtables(40, [0.2, 0.2], 0.1)
    b = multi_mtables(40, [0.2, 0.1 + 0.1], 0.1)
    assert a[0] is b[0]
    with pytest.raises(ValueError, match="read-only"):
        a[0][0] = 3


@pytest.mark.parametrize("call, message", [
    (lambda: multi_mtables(10, [0.3, 0.3], 0.1, correction="holm"),
     r"correction: must be one of 'multinomial', 'bonferroni', got 'holm'"),
    (lambda: multi_mtables(10, [0.6, 0.6], 0.1), r"ps: proportions of disjoint protected groups must sum to <= 1, got 1\.2"),
    (lambda: multi_mtables(10, [0.3, -0.1], 0.1), r"ps\[1\]: must be in \[0, 1\], got -0\.1"),
    (lambda: multi_mtables(-1, [0.3, 0.3], 0.1), r"k: must be an integer >= 0, got -1"),
    (lambda: adjusted_alpha_multinomial(10, [0.3, 0.3], 1.0), r"alpha: must be in \(0, 1\), got 1\.0"),
    (lambda: multinomial_failure_probability([[0, 1]], [0.3, 0.3]),
     r"tables: must give one table per proportion \(2\), got 1"),
    (lambda: multinomial_failure_probability([[0, 1], [0, 1, 1]], [0.3, 0.3]),
     r"tables: must all have shape \(2,\)"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- the policy field ---------------------------------------------------------------------------

POLICY = """\
name: t
version: 1
slate_size: 50
objective:
  weights: {p_click: 1.0}
constraints:
  - name: fair
    type: fair_prefix
    attribute: seller_tier
    protected: [new, top]
    p: 0.2
    alpha: 0.1
"""


def _need(text: str) -> int:
    cp = compile_policy(parse_policy_text(text))
    return sum(r.bound for r in fair_rows(cp, 50))


def test_policy_defaults_to_multinomial_and_bonferroni_is_opt_in():
    default = parse_policy_text(POLICY)
    assert default.constraints[0].correction == "multinomial"
    bonf_text = POLICY + "    correction: bonferroni\n"
    cp = compile_policy(parse_policy_text(bonf_text))
    rows = fair_rows(cp, 50)
    tables = multi_mtables(50, [0.2, 0.2], 0.1, correction="bonferroni")
    # the rows are prefix_minimums of each table: the last row of each value holds its m(50)
    assert {r.value: r.bound for r in rows} == {"new": int(tables[0][-1]), "top": int(tables[1][-1])}
    exact_rows = fair_rows(compile_policy(default), 50)
    assert [(r.value, r.top, r.bound) for r in exact_rows] != [(r.value, r.top, r.bound) for r in rows]


def test_policy_rejects_an_unknown_correction():
    with pytest.raises(PolicyInvalid) as err:
        parse_policy_text(POLICY + "    correction: holm\n")
    assert "constraints[0].correction: must be one of 'multinomial', 'bonferroni', got 'holm'" in str(err.value)


@pytest.mark.parametrize("correction", ["multinomial", "bonferroni"])
def test_engine_meets_the_tables_of_its_correction(correction):
    c = candidates(300, seed=9, rare=0.1)
    eng = engine_with(policy(slate_size=30, constraints=[
        {"name": "fair", "type": "fair_prefix", "attribute": "seller_tier",
         "protected": ["new", "top"], "p": 0.2, "alpha": 0.1, "correction": correction}]))
    r = eng.rerank(RerankRequest("p", c, solver="greedy"))
    check_answer(eng.store.get("p").policy, c, r)  # re-derives the tables with this correction
    assert r.constraints[0].satisfied and not r.constraints[0].relaxed
