"""Constrained greedy: the always-available answer, in microseconds.

`solve_greedy` validates nothing (engine.compile builds valid problems); it coerces arrays, runs
the Numba kernel in solvers._greedy_kernels and assembles a SolveResult.
"""

from __future__ import annotations

import numpy as np

from solvers import _greedy_kernels as _k
from solvers.problem import PIN, RELAX_NONE, SlateProblem, SolveResult


def constraint_ranks(priority: np.ndarray) -> np.ndarray:
    """Rank of each rule in the order rules give way: lowest priority first, and among equal
    priorities the later rule in the policy first. Rank 0 gives way first."""
    C = priority.shape[0]
    order = np.lexsort((-np.arange(C), priority))
    rank = np.empty(C, dtype=np.int64)
    rank[order] = np.arange(C, dtype=np.int64)
    return rank


def solve_greedy(problem: SlateProblem, *, active: np.ndarray | None = None) -> SolveResult:
    """Fill the slate position by position with the best feasible candidate.

    `active` overrides problem.active (used to price rules: solve again with one rule dropped).
    """
    t = problem.constraints
    L = problem.length
    act = np.array(problem.active if active is None else active, dtype=np.bool_, copy=True)
    slate = np.empty(L, dtype=np.int64)
    reason = np.array(problem.pre_reason, dtype=np.int64, copy=True)
    relax_pos = np.full(t.n, -1, dtype=np.int64)
    _k.greedy_slate(problem.utility, problem.position_weight, problem.codes, problem.n_values,
                    t.kind, t.attr, t.value, t.bound, t.top, t.size, t.hard, t.penalty,
                    constraint_ranks(t.priority), t.item, t.position, act, slate, reason, relax_pos)
    relaxed = t.hard & ~act
    if active is not None:
        relaxed &= np.asarray(active, dtype=np.bool_)  # rules dropped by the caller are not "relaxed"
    status = "relaxed" if relaxed.any() else "feasible"
    reason[~relaxed] = RELAX_NONE
    return SolveResult(slate, relaxed, reason, relax_pos, "greedy", status)


def warmup() -> None:
    """Compile (or load from cache) every kernel on a tiny problem touching every code path."""
    from solvers.evaluate import evaluate
    from solvers.problem import ConstraintTable, MAX_COUNT, MIN_COUNT, WINDOW

    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    table = ConstraintTable(
        kind=i64(MAX_COUNT, MIN_COUNT, WINDOW, PIN),
        attr=i64(0, 0, 0, -1), value=i64(-1, 1, -1, -1), bound=i64(2, 1, 1, 0),
        top=i64(3, 3, 3, 3), size=i64(0, 0, 2, 0),
        hard=np.array([True, False, True, True]), penalty=np.array([0.0, 1.0, 0.0, 0.0]),
        priority=i64(0, 0, 0, 0), item=i64(-1, -1, -1, 3), position=i64(-1, -1, -1, 2),
    )
    problem = SlateProblem(
        utility=np.array([3.0, 2.0, 1.0, 0.5]), position_weight=np.array([1.0, 0.6, 0.5]),
        codes=np.array([[0, 1, 0, 1]], dtype=np.int64), n_values=i64(2), constraints=table,
        active=np.ones(4, dtype=np.bool_), pre_reason=np.zeros(4, dtype=np.int64),
    )
    evaluate(problem, solve_greedy(problem).slate)
