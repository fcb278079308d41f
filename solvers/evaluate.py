"""Objective, violation and slack of a slate: the single definition shared by every solver.

The wrappers pack the rule table as the kernels take it (solvers._greedy_kernels.pack_table)
and run the Numba kernels of solvers._evaluate_kernels.
"""

from __future__ import annotations

import numpy as np

from solvers._evaluate_kernels import constraint_status, slate_diversity, sort_bound
from solvers._greedy_kernels import pack_table
from solvers.problem import Evaluation, SlateProblem


def diversity_terms(problem: SlateProblem, slate: np.ndarray) -> np.ndarray:
    """The diversity term div_p of every position of `slate` (solvers.problem defines it).

    Parameters
    ----------
    problem : SlateProblem
    slate : array_like of int, shape (L,)
        Candidate indices, one per position.

    Returns
    -------
    ndarray of float64, shape (L,)
        div_p <= 0 given the items above position p; zeros when diversity is off.

    Raises
    ------
    ValueError
        When diversity is on and the problem has no embeddings.
    """
    slate = np.ascontiguousarray(slate, dtype=np.int64)
    div = np.zeros(slate.shape[0], dtype=np.float64)
    if problem.diversity_on and slate.shape[0]:
        if problem.embeddings is None:
            raise ValueError("embeddings: required when div_mode is set, got None")
        emb = np.ascontiguousarray(problem.embeddings, dtype=np.float32)
        slate_diversity(slate, emb, int(problem.div_mode), float(problem.div_weight),
                        int(problem.div_window), div)
    return div


def evaluate(problem: SlateProblem, slate: np.ndarray) -> Evaluation:
    """Score `slate` against `problem`.

    objective = utility_part + diversity_part - penalty_part: soft constraints cost
    penalty * violation; hard ones are reported in `violation` / `slack` but never enter the
    objective; diversity_part = sum_p position_weight[p] * div_p (0 without diversity).

    Parameters
    ----------
    problem : SlateProblem
    slate : array_like of int, shape (L,)
        Candidate indices, one per position, L <= problem.length.

    Returns
    -------
    Evaluation
        objective, utility_part, penalty_part, diversity_part, and per rule the violation (in
        the units of its kind, solvers.problem) and the slack.

    Raises
    ------
    ValueError
        When the slate is longer than problem.length.
    """
    slate = np.ascontiguousarray(slate, dtype=np.int64)
    t = problem.constraints
    L = slate.shape[0]
    if L > problem.length:
        raise ValueError(f"slate: at most {problem.length} positions, got {L}")
    violation = np.empty(t.n, dtype=np.float64)
    slack = np.empty(t.n, dtype=np.float64)
    parts = np.empty(2, dtype=np.float64)
    constraint_status(slate, problem.utility, problem.position_weight, problem.codes,
                      problem.n_values, *pack_table(t), violation, slack, parts)
    return evaluation_of(problem, slate, violation, slack, parts)


def evaluation_of(problem: SlateProblem, slate: np.ndarray, violation: np.ndarray,
                  slack: np.ndarray, parts: np.ndarray) -> Evaluation:
    """The Evaluation of `slate` from what `constraint_status` wrote for it (violation, slack,
    parts = [utility part, penalty part]), with the diversity part added: what `evaluate`
    returns (solvers.greedy.solve_greedy_evaluated has the kernel output already).

    Parameters
    ----------
    problem : SlateProblem
    slate : ndarray of int64, shape (L,), C-contiguous
    violation, slack : ndarray of float64, shape (C,)
    parts : ndarray of float64, shape (2,)

    Returns
    -------
    Evaluation
    """
    L = slate.shape[0]
    utility_part = float(parts[0])
    penalty_part = float(parts[1])
    diversity_part = 0.0
    if L and problem.diversity_on:
        diversity_part = float(problem.position_weight[:L] @ diversity_terms(problem, slate))
    return Evaluation(utility_part + diversity_part - penalty_part, utility_part, penalty_part,
                      violation, slack, diversity_part)


def objective_upper_bound_unconstrained(problem: SlateProblem) -> float:
    """Objective of the best slate ignoring every constraint.

    A valid upper bound whenever the position weights are non-increasing and soft penalties are
    >= 0 (sorting is then optimal; diversity terms, coverage and calibration violations only
    ever subtract).

    Parameters
    ----------
    problem : SlateProblem

    Returns
    -------
    float
        sum_p position_weight[p] * (the p-th largest utility), summed in position order, so that
        it equals the utility part of `evaluate` bit for bit when the slate is sorted by utility
        (and the sort bound of solvers.greedy.solve_greedy_with_bound).
    """
    return float(sort_bound(problem.utility, problem.position_weight))
