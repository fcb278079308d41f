"""Constrained greedy: the always-available answer, in microseconds.

`solve_greedy` trusts the constraint table (engine.compile builds valid problems) but checks the
parts a caller may get wrong when building a problem by hand: the diversity inputs and the
coverage / calibration rows (`check_extensions`), and (in the kernel) finite utilities. It packs
the rule table (`solvers._greedy_kernels.pack_table`, once per call), allocates the outputs, runs
the Numba kernel in solvers._greedy_kernels (which also ranks the rules and marks the relaxed
ones) and assembles a SolveResult.
"""

from __future__ import annotations

import math

import numpy as np

from solvers import _greedy_kernels as _k
from solvers._solve_kernels import greedy_evaluated as _greedy_evaluated
from solvers.codes import CALIBRATION, COVERAGE, DIV_DPP, DIV_MMR, DIV_NONE, PIN, RELAX_NONE
from solvers.evaluate import evaluation_of
from solvers.problem import Evaluation, SlateProblem, SolveResult

_NO_EMBEDDINGS = np.zeros((0, 0), dtype=np.float32)


def check_extensions(problem: SlateProblem) -> None:
    """Check the diversity settings and the coverage / calibration rows of `problem`.

    Cheap checks only: finite embeddings are the request validation's job.

    Parameters
    ----------
    problem : SlateProblem
        The problem about to be solved.

    Raises
    ------
    ValueError
        What, where, what was expected and what came, when the diversity settings or a
        coverage / calibration row cannot be solved as documented in solvers.problem.
    """
    if problem.div_mode not in (DIV_NONE, DIV_MMR, DIV_DPP):
        raise ValueError(f"div_mode: must be {DIV_NONE} (none), {DIV_MMR} (mmr) or {DIV_DPP} "
                         f"(dpp), got {problem.div_mode!r}")
    if not (math.isfinite(problem.div_weight) and problem.div_weight >= 0):
        raise ValueError(f"div_weight: must be a finite number >= 0, got {problem.div_weight!r}")
    if problem.div_window < 0:
        raise ValueError(f"div_window: must be an integer >= 0, got {problem.div_window!r}")
    if problem.diversity_on:
        emb = problem.embeddings
        if emb is None:
            raise ValueError("embeddings: required when div_mode is set, got None")
        if emb.ndim != 2 or emb.shape[0] != problem.n:
            raise ValueError(f"embeddings: must have shape (N, d) with N = {problem.n} candidates, "
                             f"got {emb.shape}")
    t = problem.constraints
    for c in np.flatnonzero((t.kind == COVERAGE) | (t.kind == CALIBRATION)):
        name = "coverage" if t.kind[c] == COVERAGE else "calibration"
        if t.hard[c]:
            raise ValueError(f"constraints[{c}] ({name}): must be soft (hard=False), got hard=True")
        if not (t.penalty[c] >= 0):
            raise ValueError(f"constraints[{c}] ({name}).penalty: must be >= 0, got {t.penalty[c]}")
        if t.kind[c] == CALIBRATION:
            width = int(problem.n_values[t.attr[c]])
            target = t.target_of(c)
            if target.shape[0] != width:
                raise ValueError(f"constraints[{c}] (calibration).target: must have one share per "
                                 f"value ({width}), got {target.shape[0]}")
            if not (np.all(target >= 0) and abs(float(target.sum()) - 1.0) <= 1e-9):
                raise ValueError(f"constraints[{c}] (calibration).target: must be shares >= 0 "
                                 f"summing to 1, got {target.tolist()}")


def kernel_embeddings(problem: SlateProblem) -> np.ndarray:
    """The embeddings as the kernels take them.

    Parameters
    ----------
    problem : SlateProblem

    Returns
    -------
    ndarray of float32, shape (N, d)
        C-contiguous (a copy only when the stored ones are not); shape (0, 0) when diversity
        is off.
    """
    if not problem.diversity_on:
        return _NO_EMBEDDINGS
    return np.ascontiguousarray(problem.embeddings, dtype=np.float32)


def constraint_ranks(priority: np.ndarray) -> np.ndarray:
    """Rank of each rule in the order rules give way.

    Lowest priority first, and among equal priorities the later rule in the policy first (the
    kernel's `_ranks` computes the same).

    Parameters
    ----------
    priority : ndarray of int64, shape (C,)
        ConstraintTable.priority: higher = more important.

    Returns
    -------
    ndarray of int64, shape (C,)
        A permutation of 0..C-1; rank 0 gives way first.
    """
    C = priority.shape[0]
    order = np.lexsort((-np.arange(C), priority))
    rank = np.empty(C, dtype=np.int64)
    rank[order] = np.arange(C, dtype=np.int64)
    return rank


def solve_greedy(problem: SlateProblem, *, active: np.ndarray | None = None) -> SolveResult:
    """Fill the slate position by position with the best feasible candidate.

    Parameters
    ----------
    problem : SlateProblem
        The compiled problem (utilities, position weights, codes, rules, diversity).
    active : ndarray of bool, shape (C,), optional
        Overrides problem.active (used to price rules: solve again with one rule dropped). Rules
        it switches off are not reported as relaxed.

    Returns
    -------
    SolveResult
        The slate (candidate indices, one per position), the hard rules that gave way with
        their reason and position, solver "greedy" and status "feasible" or "relaxed".

    Raises
    ------
    ValueError
        When a utility is not finite, or as `check_extensions`.
    """
    return solve_greedy_with_bound(problem, active=active)[0]


def solve_greedy_with_bound(problem: SlateProblem, *,
                            active: np.ndarray | None = None) -> tuple[SolveResult, float]:
    """`solve_greedy`, and the sort bound that the kernel reads off its scan order for free.

    Parameters
    ----------
    problem : SlateProblem
    active : ndarray of bool, shape (C,), optional
        As for `solve_greedy`.

    Returns
    -------
    result : SolveResult
        As `solve_greedy` returns it.
    sort_bound : float
        sum_p position_weight[p] * (the p-th largest utility): the same float as
        solvers.evaluate.objective_upper_bound_unconstrained.
    """
    return _solve(problem, active, False)[:2]


def solve_greedy_evaluated(problem: SlateProblem) -> tuple[SolveResult, float, Evaluation]:
    """`solve_greedy_with_bound` and `solvers.evaluate.evaluate` of its slate, in one kernel call
    (solvers._solve_kernels.greedy_evaluated: the same kernels on the same arrays, so the same
    slate, sort bound and evaluation).

    Parameters
    ----------
    problem : SlateProblem

    Returns
    -------
    result : SolveResult
    sort_bound : float
    evaluation : Evaluation
        `evaluate(problem, result.slate)`.
    """
    return _solve(problem, None, True)


def _solve(problem: SlateProblem, active: np.ndarray | None, evaluated: bool):
    t = problem.constraints
    if problem.div_mode != DIV_NONE or (t.n and max(t.kind.tolist()) > PIN):
        check_extensions(problem)
    act = (problem.active if active is None else np.asarray(active)).astype(np.bool_)
    slate = np.empty(problem.length, dtype=np.int64)
    reason = problem.pre_reason.astype(np.int64)
    relax_pos = np.empty(t.n, dtype=np.int64)
    relaxed = np.empty(t.n, dtype=np.bool_)
    info = np.empty(1, dtype=np.float64)
    args = (problem.utility, problem.position_weight, problem.codes, problem.n_values,
            *_k.pack_table(t), kernel_embeddings(problem), int(problem.div_mode),
            float(problem.div_weight), int(problem.div_window), act, slate, reason, relax_pos,
            relaxed, info)
    if evaluated:
        violation = np.empty(t.n, dtype=np.float64)
        slack = np.empty(t.n, dtype=np.float64)
        parts = np.empty(2, dtype=np.float64)
        n_relaxed = _greedy_evaluated(*args, violation, slack, parts)
    else:
        n_relaxed = _k.greedy_slate(*args)
    if n_relaxed < 0:  # the kernel assumes finite utilities and wrote nothing
        j = -1 - n_relaxed
        raise ValueError(f"utility[{j}]: must be finite, got {problem.utility[j]}")
    if active is not None:
        relaxed &= np.asarray(active, dtype=np.bool_)  # rules dropped by the caller are not "relaxed"
        reason[~relaxed] = RELAX_NONE
        n_relaxed = int(relaxed.sum())
    status = "relaxed" if n_relaxed else "feasible"
    result = SolveResult(slate, relaxed, reason, relax_pos, "greedy", status)
    if evaluated:
        return result, float(info[0]), evaluation_of(problem, slate, violation, slack, parts)
    return result, float(info[0]), None


def warmup_problem() -> SlateProblem:
    """The tiny problem the kernels' warm-ups run: 4 candidates, a slate of 3, a hard cap, a soft
    minimum, a hard window and a hard pin (every code path of the rule loop)."""
    from solvers.codes import MAX_COUNT, MIN_COUNT, WINDOW
    from solvers.problem import ConstraintTable

    table = ConstraintTable.from_rows([
        dict(kind=MAX_COUNT, attr=0, bound=2), dict(kind=MIN_COUNT, attr=0, value=1, bound=1,
                                                     hard=False, penalty=1.0),
        dict(kind=WINDOW, attr=0, bound=1, size=2), dict(kind=PIN, item=3, position=2),
    ], length=3)
    return SlateProblem(
        utility=np.array([3.0, 2.0, 1.0, 0.5]), position_weight=np.array([1.0, 0.6, 0.5]),
        codes=np.array([[0, 1, 0, 1]], dtype=np.int64), n_values=np.array([2], dtype=np.int64),
        constraints=table, active=np.ones(4, dtype=np.bool_), pre_reason=np.zeros(4, dtype=np.int64),
    )


def warmup() -> None:
    """Compile (or load from the Numba cache) every kernel, then run each on a tiny problem.

    The kernels have explicit signatures, so importing their modules compiles them (and the
    helpers they call); the runs touch every code path (every rule kind, a pin, both diversity
    methods with and without a window, coverage and calibration rows) so that a broken kernel
    fails here, at start-up, rather than on the first request. Takes no arguments and returns
    None.
    """
    from dataclasses import replace

    from solvers.evaluate import evaluate
    from solvers.codes import MAX_COUNT
    from solvers.problem import ConstraintTable

    problem = warmup_problem()
    evaluate(problem, solve_greedy(problem).slate)
    solve_greedy_evaluated(problem)

    # diversity (every mode, with and without a window) with coverage and calibration rows
    extended = ConstraintTable.from_rows([
        dict(kind=MAX_COUNT, attr=0, bound=2), dict(kind=COVERAGE, attr=0, hard=False, penalty=1.0),
        dict(kind=CALIBRATION, attr=0, hard=False, penalty=1.0, target=[0.5, 0.5]),
        dict(kind=PIN, item=3, position=2),
    ], length=3)
    emb = np.array([[1, 0], [0.6, 0.8], [0, 1], [0, 0]], dtype=np.float32)
    for mode in (DIV_MMR, DIV_DPP):
        for window in (0, 1):
            p = replace(problem, constraints=extended, embeddings=emb, div_mode=mode,
                        div_weight=0.5, div_window=window)
            evaluate(p, solve_greedy(p).slate)
