"""The greedy kernel against its slow twin, and the evaluation kernel against the definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers import _greedy_kernels
from solvers.evaluate import evaluate, objective_upper_bound_unconstrained
from solvers.greedy import constraint_ranks, solve_greedy, solve_greedy_with_bound
from solvers.codes import MAX_COUNT, MIN_COUNT, PIN, RELAX_CONFLICT, RELAX_SHORTAGE, WINDOW
from tests import naive
from testing.random_problems import make_problem, random_problem

from engine.portfolio import greedy_is_optimal


def _check_against_twin(problem):
    result = solve_greedy(problem)
    slate, active, reason, relax_pos = naive.greedy(problem)
    assert result.slate.tolist() == slate
    expected_relaxed = [bool(problem.constraints.hard[c]) and not active[c] for c in range(problem.constraints.n)]
    assert result.relaxed.tolist() == expected_relaxed
    assert [int(r) if rel else 0 for r, rel in zip(reason, expected_relaxed)] == result.relax_reason.tolist()
    assert [p for p, rel in zip(relax_pos, expected_relaxed) if rel] == result.relax_position[result.relaxed].tolist()
    return result


def _check_valid(problem, result):
    L = problem.length
    slate = result.slate.tolist()
    assert len(slate) == L and len(set(slate)) == L
    assert all(0 <= i < problem.n for i in slate)
    ev = evaluate(problem, result.slate)
    t = problem.constraints
    for c in range(t.n):
        if t.hard[c] and not result.relaxed[c]:
            assert ev.violation[c] == 0, f"hard rule {c} (kind {t.kind[c]}) broken but not reported"


@pytest.mark.parametrize("seed", range(400))
def test_kernel_matches_twin_random(seed):
    problem = random_problem(seed, ties=seed % 3 == 0)
    result = _check_against_twin(problem)
    _check_valid(problem, result)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 30), k=st.integers(1, 12),
       rules=st.integers(0, 7), ties=st.booleans())
def test_kernel_matches_twin_property(seed, n, k, rules, ties):
    problem = random_problem(seed, n=n, k=k, n_rules=rules, ties=ties)
    result = _check_against_twin(problem)
    _check_valid(problem, result)


@pytest.mark.parametrize("seed", range(200))
def test_evaluate_matches_definitions(seed):
    problem = random_problem(seed)
    rng = np.random.default_rng(seed)
    slate = rng.permutation(problem.n)[: problem.length]
    ev = evaluate(problem, slate)
    violation, slack = naive.constraint_status(problem, slate.tolist())
    assert ev.violation.tolist() == violation
    assert ev.slack.tolist() == slack
    assert ev.objective == pytest.approx(naive.objective(problem, slate.tolist()), abs=1e-9)


def _rows(*rows):
    base = dict(kind=MAX_COUNT, attr=0, value=-1, bound=0, top=10, size=0, hard=True, penalty=0.0,
                priority=0, item=-1, position=-1)
    return [{**base, **r} for r in rows]


def test_no_constraints_is_a_sort_with_index_ties():
    u = np.array([1.0, 3.0, 3.0, 2.0, 0.5])
    problem = make_problem(u, [1.0, 0.5, 0.3], np.zeros((1, 5), dtype=np.int64), [1], [])
    assert solve_greedy(problem).slate.tolist() == [1, 2, 3]


def test_cap_per_value():
    u = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    codes = np.array([[0, 0, 0, 1, 1]])
    problem = make_problem(u, [1.0, 0.9, 0.8, 0.7], codes, [2], _rows(dict(bound=2, top=4)))
    assert solve_greedy(problem).slate.tolist() == [0, 1, 3, 4]


def test_min_count_lookahead_in_prefix():
    # the best items are all category 0; at least 2 of category 1 must be in the top 3
    u = np.array([9.0, 8.0, 7.0, 6.0, 1.0, 0.5])
    codes = np.array([[0, 0, 0, 0, 1, 1]])
    problem = make_problem(u, [1.0, 0.9, 0.8, 0.7], codes, [2],
                           _rows(dict(kind=MIN_COUNT, value=1, bound=2, top=3)))
    result = solve_greedy(problem)
    assert result.slate.tolist() == [0, 4, 5, 1]
    assert not result.relaxed.any()


def test_two_minimums_on_one_attribute_are_planned_jointly():
    # need 2 of value 1 and 2 of value 2 in the top 4: the top item (value 0) must not be picked
    u = np.array([10.0, 5.0, 4.0, 3.0, 2.0])
    codes = np.array([[0, 1, 1, 2, 2]])
    problem = make_problem(u, [1.0, 0.9, 0.8, 0.7], codes, [3],
                           _rows(dict(kind=MIN_COUNT, value=1, bound=2, top=4),
                                 dict(kind=MIN_COUNT, value=2, bound=2, top=4)))
    result = solve_greedy(problem)
    assert sorted(result.slate.tolist()) == [1, 2, 3, 4]
    assert not result.relaxed.any()


def test_window_spacing():
    u = np.array([5.0, 4.0, 3.0, 2.0])
    codes = np.array([[0, 0, 1, 1]])
    problem = make_problem(u, [1.0, 1.0, 1.0, 1.0], codes, [2],
                           _rows(dict(kind=WINDOW, bound=1, size=2)))
    assert solve_greedy(problem).slate.tolist() == [0, 2, 1, 3]


def test_pin_reserves_item_and_counts_toward_caps():
    u = np.array([5.0, 4.0, 3.0, 2.0])
    codes = np.array([[0, 0, 0, 1]])
    rows = _rows(dict(bound=1, top=4), dict(kind=PIN, attr=-1, item=1, position=2))
    problem = make_problem(u, [1.0, 0.9, 0.8, 0.7], codes, [2], rows)
    result = solve_greedy(problem)
    # item 1 (category 0) is pinned at position 3, so category 0's single slot is taken
    assert result.slate.tolist() == [3, 0, 1, 2]
    # only 2 categories for 4 slots: at position 2 every candidate breaks the cap, which gives way
    assert result.relaxed.tolist() == [True, False]
    assert result.relax_position.tolist() == [1, -1]


def test_conflict_relaxes_lowest_priority_first():
    u = np.array([3.0, 2.0, 1.0])
    codes = np.array([[0, 0, 0]])
    rows = _rows(dict(bound=1, top=3, priority=5), dict(kind=WINDOW, bound=1, size=2, priority=1))
    problem = make_problem(u, [1.0, 0.5, 0.2], codes, [1], rows)
    result = solve_greedy(problem)
    assert result.slate.tolist() == [0, 1, 2]
    # at position 2 both rules block everything; the window (priority 1) goes first, the cap
    # (priority 5) must then go too since every candidate is still blocked by it
    assert result.relaxed.tolist() == [True, True]
    assert result.relax_reason.tolist() == [RELAX_CONFLICT, RELAX_CONFLICT]
    assert result.relax_position.tolist() == [1, 1]


def test_shortage_is_reported_as_such():
    u = np.array([3.0, 2.0, 1.0])
    codes = np.array([[0, 0, 1]])
    rows = _rows(dict(kind=MIN_COUNT, value=1, bound=2, top=3))
    problem = make_problem(u, [1.0, 0.5, 0.2], codes, [2], rows)
    result = solve_greedy(problem)
    assert result.relaxed.tolist() == [True]
    assert result.relax_reason.tolist() == [RELAX_SHORTAGE]


def test_ranks_lowest_priority_then_later_rule_first():
    assert constraint_ranks(np.array([0, 5, 0, 1])).tolist() == [1, 3, 0, 2]


def test_greedy_never_beats_brute_force_on_tiny_problems():
    for seed in range(60):
        problem = random_problem(seed, n=6, k=3, n_rules=3)
        result = solve_greedy(problem)
        if result.relaxed.any():
            continue
        best = naive.brute_force_best(problem)
        assert evaluate(problem, result.slate).objective <= best + 1e-9


@pytest.mark.parametrize("seed", range(100))
def test_kernel_ranks_and_sort_bound(seed):
    """The kernel's own rule ranks are constraint_ranks; its sort bound (from the scan order) is
    the sorted top-L sum of the twin and of objective_upper_bound_unconstrained, bit for bit."""
    problem = random_problem(seed, ties=seed % 2 == 0)
    priority = problem.constraints.priority
    assert _greedy_kernels._ranks(priority).tolist() == constraint_ranks(priority).tolist()
    assert constraint_ranks(priority).tolist() == naive.ranks(priority)
    result, bound = solve_greedy_with_bound(problem)
    assert result.slate.tolist() == solve_greedy(problem).slate.tolist()
    assert bound == naive.sort_bound(problem) == objective_upper_bound_unconstrained(problem)
    if not problem.constraints.n:  # a plain sort: the objective is the bound itself
        assert evaluate(problem, result.slate).objective == bound


def test_sort_bound_when_every_position_is_pinned():
    # the free-position scan never runs: the bound still covers the L best utilities
    u = np.array([1.0, 5.0, 3.0, 4.0])
    rows = _rows(dict(kind=PIN, attr=-1, item=0, position=0), dict(kind=PIN, attr=-1, item=2, position=1))
    problem = make_problem(u, [1.0, 0.5], np.zeros((1, 4), dtype=np.int64), [1], rows)
    result, bound = solve_greedy_with_bound(problem)
    assert result.slate.tolist() == [0, 2]
    assert bound == 5.0 + 0.5 * 4.0 == objective_upper_bound_unconstrained(problem)


def test_non_finite_utility_is_refused():
    problem = make_problem(np.array([1.0, np.inf, 0.5]), [1.0], np.zeros((1, 3), dtype=np.int64), [1], [])
    with pytest.raises(ValueError, match=r"utility\[1\]: must be finite, got inf"):
        solve_greedy(problem)


@pytest.mark.parametrize("seed", range(40))
def test_lookahead_with_rare_values_deep_in_the_order(seed):
    """Hard minimums of values that are rare and low-ranked: the look-ahead soon admits only
    their items, which lie beyond the first stretches of the scan order (the kernel then examines
    just the matching items). With caps, windows, soft rules and pins around them."""
    rng = np.random.default_rng(seed)
    n, L = int(rng.integers(150, 400)), int(rng.integers(8, 16))
    u = rng.normal(size=n) if seed % 3 else rng.integers(0, 6, size=n).astype(np.float64)
    rare = (rng.random(n) < 0.04) & (u < np.quantile(u, 0.7))
    codes = np.stack([rare.astype(np.int64) + (rare & (rng.random(n) < 0.5)),
                      rng.integers(0, 6, size=n), rng.integers(0, 3, size=n)])
    pw = 1.0 / np.log2(np.arange(2, L + 2))
    rows = _rows(dict(kind=MIN_COUNT, attr=0, value=1, bound=int(rng.integers(1, 4)), top=int(rng.integers(4, L + 1))),
                 dict(kind=MIN_COUNT, attr=0, value=2, bound=int(rng.integers(0, 3)), top=L,
                      hard=bool(seed % 2), penalty=0.5, priority=1),
                 dict(kind=MAX_COUNT, attr=1, bound=int(rng.integers(1, 4)), top=L),
                 dict(kind=WINDOW, attr=2, bound=1, size=2, hard=seed % 4 != 0, penalty=0.3))
    if seed % 5 == 0:
        rows += _rows(dict(kind=PIN, attr=-1, item=int(np.argmax(u)), position=int(rng.integers(0, L))))
    problem = make_problem(u, pw, codes, [3, 6, 3], rows)
    result = _check_against_twin(problem)
    _check_valid(problem, result)


def _is_optimal_numpy(problem):
    """greedy_is_optimal as first written with numpy (the reference for the list version)."""
    w = problem.position_weight
    if problem.div_mode != 0 or not (np.all(w >= 0) and np.all(np.diff(w) <= 0)):
        return False
    t = problem.constraints
    if t.n == 0:
        return True
    return bool(np.all(t.kind == MAX_COUNT) and np.all(t.hard) and np.all(t.top >= problem.length)
                and np.unique(t.attr).shape[0] == 1)


@pytest.mark.parametrize("seed", range(150))
def test_greedy_is_optimal_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    problem = random_problem(seed, n_rules=int(rng.integers(0, 3)))
    t = problem.constraints
    if seed % 2:  # mostly whole-slate hard caps on one attribute, weights sometimes unsorted
        for c in range(t.n):
            t.kind[c], t.hard[c], t.attr[c], t.top[c] = MAX_COUNT, seed % 6 != 1, 0, problem.length
        if seed % 3 == 0 and problem.length > 1:
            problem.position_weight[-1] = problem.position_weight[0] + 1.0
    assert greedy_is_optimal(problem) == _is_optimal_numpy(problem)


@pytest.mark.parametrize("seed", range(60))
def test_scan_order_stretches_make_the_sorted_order(seed):
    """However the stretches are cut, they concatenate to utility desc, index asc."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 3000))
    u = rng.integers(0, 5, size=n).astype(np.float64) if seed % 3 == 0 else rng.gamma(2.0, 1.0, size=n)
    order = np.empty(n, dtype=np.int64)
    n_order, cut, want = 0, np.inf, int(rng.integers(1, 80))
    while n_order < n:
        new_n, cut = _greedy_kernels._extend_order(u, order, n_order, cut, want)
        assert new_n > n_order
        assert np.all(u[order[n_order:new_n]] >= cut) and np.all(np.delete(u, order[:new_n]) < cut)
        n_order, want = new_n, want * 2
    assert cut == -np.inf
    assert order.tolist() == np.lexsort((np.arange(n), -u)).tolist()
