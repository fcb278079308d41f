"""The greedy kernel against its slow twin, and the evaluation kernel against the definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers.evaluate import evaluate
from solvers.greedy import constraint_ranks, solve_greedy
from solvers.problem import MAX_COUNT, MIN_COUNT, PIN, RELAX_CONFLICT, RELAX_SHORTAGE, WINDOW
from tests import naive
from tests.random_problems import make_problem, random_problem


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
