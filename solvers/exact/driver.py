"""The budgeted exact solve, shared by every backend, and relaxation by priority.

`exact_solve` prepares the reduced model (`solvers.exact.pricing.prepare`: reductions and LP
pricing), finds an incumbent when the hint gives none, prunes by reduced cost and hands the
surviving columns to a backend (`solvers.exact.highs_mip.highs_mip`,
`solvers.exact.cpsat.cpsat_backend`), all within one time limit; a backend returns a `Run`.
`relax_by_priority` solves, and while the active hard rules are infeasible asks a conflict
finder (passed in: `solvers.exact.conflict.find_conflict`) for a minimal conflict and relaxes
its lowest-priority rule. Only the backends and the LP pricing call a solver library.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from solvers.codes import (
    ALL_VALUES, MAX_COUNT, MIN_COUNT, PIN, RELAX_INFEASIBLE, RELAX_NONE, WINDOW,
)
from solvers.evaluate import evaluate, objective_upper_bound_unconstrained
from solvers.exact.model import ExactModel, exact_unsupported, hard_feasible, weights_monotone
from solvers.exact.pricing import Prepared, prepare, prune_columns
from solvers.problem import ConstraintTable, SlateProblem, SolveResult


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """What one backend call found on a column subset of the reduced model.

    status: "optimal" (proven on those columns), "feasible" (an incumbent), "infeasible"
    (proven), "timeout" (nothing found). cols: the chosen columns, one per free position, or
    None. bound: upper bound on the objective over those columns (inf when unknown, -inf when
    infeasible).
    """

    status: str
    cols: np.ndarray | None
    bound: float


#: A backend: (model, cols, start, time_limit) -> Run, where `start` holds the columns of a
#: feasible slate (a warm start) or is None, and `time_limit` covers the backend's model building.
Backend = Callable[[ExactModel, np.ndarray, "np.ndarray | None", float], Run]


def _result(problem: SlateProblem, slate: np.ndarray, status: str, bound: float,
            relaxed: np.ndarray | None = None, reason: np.ndarray | None = None,
            solver: str = "mip") -> SolveResult:
    C = problem.constraints.n
    if relaxed is None:
        relaxed = problem.constraints.hard & ~np.asarray(problem.active, dtype=np.bool_)
        reason = np.where(relaxed, problem.pre_reason, RELAX_NONE).astype(np.int64)
    return SolveResult(np.asarray(slate, dtype=np.int64), relaxed, reason,
                       np.full(C, -1, dtype=np.int64), solver, status, float(bound))


def _empty_or(hint: np.ndarray | None, L: int) -> np.ndarray:
    return np.asarray(hint, dtype=np.int64) if hint is not None else np.zeros(0, dtype=np.int64)


def _check(problem: SlateProblem, model: ExactModel, run: Run) -> np.ndarray | None:
    """The run's slate when it is a valid slate meeting every active hard rule, else None."""
    if run.cols is None or run.cols.shape[0] != model.free_pos.shape[0]:
        return None
    slate = model.slate_from_columns(run.cols)
    return slate if hard_feasible(problem, slate) else None


# Least cost per column of one backend call (building + first LP), with / without a starting
# solution, measured on benchmarks/bench_exact.py models (HiGHS: numpy arrays, ~8 row entries per
# column, root LP from scratch ~10 us per column; CP-SAT: one Python call per variable and row
# entry). A backend is not started when this alone would overrun the time left: solvers check
# their time limits between steps, not inside model building or a root LP.
# HiGHS with a start: 1e-5, not the 3e-6 that building and MIP setup alone cost. Measured on the
# priced models of bench_certify's mixed + coverage family (N=1000, K=20, 30 seeds; coverage's LP
# gap leaves 160-2100 columns on 2 of 3 seeds): a call with a 1 ms limit costs 1.5 ms + ~4 us per
# column, but once HiGHS enters its root LP it finishes it, so a 1734-column model answered in
# ~15 ms for any limit from 5 to 12 ms (17 ms past a 20 ms request budget). A call that cannot
# reach the end of its root LP only hands back its start, so starting it buys nothing.
CALL_SECONDS_PER_COLUMN = {"mip": (1e-5, 1e-5), "cpsat": (2e-5, 4e-5)}


def _cheap_bound(problem: SlateProblem) -> float:
    """Sorting bound (no rule can raise the objective above the best unconstrained slate) when it
    is valid: non-increasing weights >= 0 and soft penalties >= 0. NaN otherwise."""
    t = problem.constraints
    if weights_monotone(problem) and np.all(t.penalty[~t.hard] >= 0.0):
        return objective_upper_bound_unconstrained(problem)
    return float("nan")


def exact_solve(problem: SlateProblem, *, time_limit_s: float, hint: np.ndarray | None,
                backend: Backend, solver: str, price: bool = True) -> SolveResult:
    """The budgeted exact solve that every backend shares.

    Prepare (reduce + price), find an incumbent if none, prune, solve. Budget: half of it for
    the reductions and the LP, the rest for the backend. When the LP does not finish, the
    unpriced model (tens of thousands of columns at N=1000) is not built: the incumbent comes
    back as "feasible", or the LP's small column set is searched for one.

    Parameters
    ----------
    problem : SlateProblem
        The problem; `exact_unsupported(problem)` must be None.
    time_limit_s : float
        Wall-clock limit of the whole call, reductions included (up to model-building overhead).
    hint : numpy.ndarray or None
        Any slate; used as the incumbent and warm start when it meets the active hard rules.
    backend : Backend
        `backend(model, cols, start, time_limit) -> Run`, e.g. `highs_mip` or `cpsat_backend`.
    solver : str
        The name reported in `SolveResult.solver` and used for CALL_SECONDS_PER_COLUMN.
    price : bool, default True
        False skips the LP pricing and reduced-cost fixing (class reduction and pin fixing
        stay).

    Returns
    -------
    SolveResult
        Status "optimal", "feasible", "timeout" or "infeasible" (see `solve_mip`), never a
        slate worse than a feasible hint; `bound` is a proven upper bound.

    Raises
    ------
    ValueError
        When `exact_unsupported(problem)` gives a reason (the reason is in the message).
    """
    t0 = time.perf_counter()
    deadline = t0 + max(float(time_limit_s), 0.0)
    why = exact_unsupported(problem)
    if why is not None:
        raise ValueError(f"{solver}: the problem has {why}, which the exact solvers do not "
                         "model (solvers.exact.exact_unsupported); use the greedy")
    L = problem.length
    if L == 0:
        return _result(problem, np.zeros(0, dtype=np.int64), "optimal", 0.0, solver=solver)
    prep: Prepared = prepare(problem, hint=hint, deadline=t0 + 0.5 * (deadline - t0),
                             price=price)
    model = prep.model
    if model.conflict or prep.infeasible:
        return _result(problem, _empty_or(hint, L), "infeasible", -np.inf, solver=solver)
    if model.free_pos.shape[0] == 0:  # every position pinned
        slate = model.fixed.copy()
        ok = hard_feasible(problem, slate)
        return _result(problem, slate if ok else _empty_or(hint, L),
                       "optimal" if ok else "infeasible",
                       evaluate(problem, slate).objective if ok else -np.inf, solver=solver)
    incumbent, inc_obj, cols = prep.incumbent, prep.incumbent_objective, prep.cols
    ub = prep.upper_bound if np.isfinite(prep.upper_bound) else _cheap_bound(problem)
    per_col = CALL_SECONDS_PER_COLUMN.get(solver, (0.0, 0.0))

    def affordable(c: np.ndarray, warm: bool) -> bool:
        return c.shape[0] * per_col[not warm] < deadline - time.perf_counter()

    complete = True  # `cols` holds an optimal slate (if any): a proof there is a proof
    if price and prep.reduced is None and not affordable(cols, incumbent is not None):
        # the LP did not finish in its share of the budget, and the unpriced model is too big
        if incumbent is not None:
            return _result(problem, incumbent, "feasible", max(ub, inc_obj), solver=solver)
        cols, complete = prep.seed_cols, False
    elif incumbent is None and prep.reduced is not None and prep.seed_cols.shape[0] < cols.shape[0]:
        # No feasible hint: solve the small LP-restricted model first for an incumbent; when it is
        # optimal there and pricing keeps no column outside it, it is optimal everywhere.
        left = deadline - time.perf_counter()
        run = backend(model, prep.seed_cols, None, 0.5 * left) \
            if affordable(prep.seed_cols, False) else Run("timeout", None, np.inf)
        slate = _check(problem, model, run)
        if slate is not None:
            incumbent, inc_obj = slate, evaluate(problem, slate).objective
            cols = prune_columns(ub, prep.reduced, inc_obj)
            if run.status == "optimal" and np.isin(cols, prep.seed_cols).all():
                return _result(problem, slate, "optimal", max(min(run.bound, ub), inc_obj),
                               solver=solver)
    start = model.columns_of(incumbent) if incumbent is not None else None
    left = deadline - time.perf_counter()
    run = backend(model, cols, start, left) if affordable(cols, start is not None) \
        else Run("timeout", None, np.inf)
    if not complete:  # a restricted column set proves nothing about the whole problem
        run = Run("feasible" if run.cols is not None else "timeout", run.cols, np.inf)
    slate = _check(problem, model, run)
    if run.status == "infeasible":
        if incumbent is not None:  # cannot happen unless numerics disagree: keep the incumbent
            return _result(problem, incumbent, "feasible", max(ub, inc_obj), solver=solver)
        return _result(problem, _empty_or(hint, L), "infeasible", -np.inf, solver=solver)
    if slate is None:
        if incumbent is not None:
            return _result(problem, incumbent, "feasible", max(min(run.bound, ub), inc_obj),
                           solver=solver)
        return _result(problem, _empty_or(hint, L), "timeout", min(run.bound, ub), solver=solver)
    obj = evaluate(problem, slate).objective
    if incumbent is not None and inc_obj > obj:  # never hand back worse than the warm start
        slate, obj = incumbent, inc_obj
    # Columns pruned by reduced cost only hold slates worse than the incumbent, so the bound over
    # `cols` (never below the incumbent) bounds the whole problem; the LP bound does too.
    bound = max(min(run.bound, ub), obj)
    return _result(problem, slate, run.status, bound, solver=solver)


def lowest_priority(problem: SlateProblem, rows: list[int]) -> int:
    """The rule that gives way first among `rows`.

    Parameters
    ----------
    problem : SlateProblem
        The problem (its constraint priorities).
    rows : list of int
        Constraint-table rows, e.g. a minimal conflict.

    Returns
    -------
    int
        The row with the lowest priority, the later one in policy order on ties (the order
        solvers.greedy.constraint_ranks uses).
    """
    pr = problem.constraints.priority
    return min(rows, key=lambda c: (int(pr[c]), -c))


#: A conflict finder: (problem, *, time_limit_s, known_infeasible) -> sorted rule rows of a
#: minimal conflict, or None when the active hard rules are feasible; raises TimeoutError
#: (e.g. solvers.exact.conflict.ConflictSearchTimeout) when it runs out of time.
ConflictFinder = Callable[..., "list[int] | None"]


def relax_by_priority(problem: SlateProblem, *, time_limit_s: float,
                      solve: Callable[[SlateProblem, float], SolveResult],
                      find_conflict: ConflictFinder) -> SolveResult:
    """Solve; while the active hard rules are infeasible, find a minimal conflict and relax its
    lowest-priority member (RELAX_INFEASIBLE), then solve again.

    Parameters
    ----------
    problem : SlateProblem
        The problem to solve.
    time_limit_s : float
        Wall-clock limit for all the solves and conflict searches together.
    solve : callable
        `solve(problem, time_limit_s) -> SolveResult`, one exact solve (status "infeasible"
        when the active hard rules admit no slate).
    find_conflict : ConflictFinder
        Called as `find_conflict(problem, time_limit_s=..., known_infeasible=True)` after each
        infeasible solve (usually `solvers.exact.conflict.find_conflict`). A TimeoutError from
        it counts as running out of time.

    Returns
    -------
    SolveResult
        The last solve's result. Status "relaxed" when any rule was relaxed here (`relaxed` and
        `relax_reason` say which, RELAX_INFEASIBLE); "timeout" when time ran out while rules
        were still in conflict; `conflicts` lists the conflicts in the order they were relaxed.
    """
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s
    res = solve(problem, max(deadline - time.perf_counter(), 0.0))
    if res.status != "infeasible":
        return res
    active = np.asarray(problem.active, dtype=np.bool_).copy()
    reason = np.asarray(problem.pre_reason, dtype=np.int64).copy()
    current = problem
    cores: list[tuple[int, ...]] = []
    while res.status == "infeasible":
        left = deadline - time.perf_counter()
        try:
            core = find_conflict(current, time_limit_s=left, known_infeasible=True) \
                if left > 0 else None
        except TimeoutError:
            core = None
        if core is None:  # out of time (or the solvers disagree): report what is known
            return dataclasses.replace(res, status="timeout" if left <= 0 or cores else
                                       res.status, conflicts=tuple(cores))
        cores.append(tuple(int(k) for k in core))
        c = lowest_priority(problem, core)
        active[c] = False
        reason[c] = RELAX_INFEASIBLE
        current = dataclasses.replace(current, active=active.copy(), pre_reason=reason.copy())
        res = solve(current, max(deadline - time.perf_counter(), 0.0))
    relaxed = problem.constraints.hard & ~active
    out_reason = np.where(relaxed, reason, RELAX_NONE).astype(np.int64)
    status = "relaxed" if res.status in ("optimal", "feasible") else res.status
    return dataclasses.replace(res, relaxed=relaxed, relax_reason=out_reason, status=status,
                               conflicts=tuple(cores))


def warmup_problem() -> SlateProblem:
    """A small problem touching every exact code path.

    Returns
    -------
    SlateProblem
        N=40, L=8: caps, minimums, a soft window, a pin and an inactive minimum (3 of category 0
        in the top 3, which conflicts with the cap of 2 when switched on).
    """
    rng = np.random.default_rng(0)
    n, L = 40, 8
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    table = ConstraintTable.from_rows([
        dict(kind=MAX_COUNT, attr=0, value=ALL_VALUES, bound=2),
        dict(kind=MIN_COUNT, attr=1, value=1, bound=2, top=4, priority=1),
        dict(kind=WINDOW, attr=0, value=ALL_VALUES, bound=1, size=2, hard=False, penalty=0.1),
        dict(kind=PIN, item=5, position=1),
        dict(kind=MIN_COUNT, attr=0, value=0, bound=3, top=3),
    ], length=L)
    return SlateProblem(
        utility=rng.gamma(2.0, 1.0, size=n), position_weight=1.0 / np.log2(np.arange(2, L + 2)),
        codes=np.stack([rng.integers(0, 5, size=n), (rng.random(n) < 0.3).astype(np.int64)]),
        n_values=i64(5, 2), constraints=table, active=np.array([True, True, True, True, False]),
        pre_reason=np.zeros(5, dtype=np.int64),
    )
