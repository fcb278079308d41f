"""Exact slate solve as a MIP (HiGHS through `highspy`), over the reduced model of solvers.reduce.

Formulation (data -> variables -> constraints -> objective -> solve -> status -> values):
    x[k] in {0, 1}  for every surviving column k = (candidate j, position p)
    e[r] >= 0       violation of soft count row r
    sum_{k at p} x[k] = 1          every free position holds one candidate
    sum_{k of j} x[k] <= 1         every candidate at most once
    count_r(x) - e[r] <= rhs[r]    max_count / window rows (one per value and window)
    count_r(x) + e[r] >= rhs[r]    min_count rows
    max  sum_k cost[k] x[k] - sum_r penalty[r] e[r] + constant
which is `evaluate`'s objective term by term: max_count with ALL_VALUES has one row (and one e)
per value, window one per window and value, soft pins add penalty to their column and -penalty
to the constant, hard pins fix their position.

Backend choice, by measurement (`python -m benchmarks.bench_exact --quick --backends`: the same
reduced model and columns, greedy slate as start, one call incl. model building, 2-core
machine, 3 seeds of the "mixed" family; median ms, all four found the same optimum):

                                   highspy  pywraplp SCIP  pywraplp CBC  MathOpt HiGHS
    N=500,  K=20, LP-priced          3.9        50.5          34.2          18.0
    N=1000, K=20, LP-priced          2.0         7.8           5.3           5.5
    N=500,  K=20, class-reduced     92         1017          1262           865
    N=1000, K=20, class-reduced    185         2299          2353          1979

highspy wins everywhere: HiGHS is the fastest engine here, and its arrays-in API (the model
passed as CSC arrays) avoids the per-variable Python calls that pywraplp and MathOpt need.
The rows show the other lesson of the issue: formulation beats solver. LP pricing in
solvers.reduce (reduced-cost fixing against the hint) cuts the model from ~17 000 columns to a
few dozen; each call is then 24-90x faster for every backend (the pricing itself costs 2-7 ms).

HiGHS options (HIGHS_OPTIONS), measured on the priced models (median ms, 4 seeds each):
presolve off and the feasibility-jump heuristic off (pointless with a start) take N=500, K=20
mixed from 7.7 to 2.9, N=1000, K=50 mixed from 21.5 to 8.5, N=100, K=20 from 12.1 to 3.6; the
models are already reduced, HiGHS presolve only costs time.
"""

from __future__ import annotations

import dataclasses
import time

import highspy
import numpy as np
from scipy.sparse import csc_matrix

from solvers._highs import new_highs, silence_banner
from solvers.evaluate import evaluate, objective_upper_bound_unconstrained
from solvers.codes import RELAX_INFEASIBLE, RELAX_NONE
from solvers.problem import SlateProblem, SolveResult
from solvers.reduce import (
    ExactModel, Prepared, hard_feasible, prepare, prune_columns, row_incidence, unsupported_terms,
    weights_monotone,
)

# Proven optimal means: incumbent within this relative gap of the bound (HiGHS's default 1e-4
# would call slates optimal that lose 0.01 %; the exact tests compare to brute force at 1e-6).
MIP_REL_GAP = 1e-7
MIP_ABS_GAP = 1e-9

# HiGHS options on top of output off, time limit, gaps, one thread and a fixed seed.
HIGHS_OPTIONS: dict[str, object] = {"presolve": "off", "mip_heuristic_run_feasibility_jump": False}


@dataclasses.dataclass(frozen=True, slots=True)
class _Run:
    status: str  # optimal | feasible | infeasible | timeout
    cols: np.ndarray | None  # chosen columns (one per free position) or None
    bound: float


def highs_mip(model: ExactModel, cols: np.ndarray, start: np.ndarray | None,
              time_limit: float) -> _Run:
    """Solve the model restricted to `cols` with HiGHS. `start` = columns of a feasible slate.
    `time_limit` covers model building too: HiGHS gets what is left of it."""
    t_enter = time.perf_counter()
    # ---- data ------------------------------------------------------------------------------
    r = model.rows
    P = model.free_pos.shape[0]
    n = cols.shape[0]
    pos_index = np.full(model.length, -1, dtype=np.int64)
    pos_index[model.free_pos] = np.arange(P)
    it, item_of_col = np.unique(model.col_item[cols], return_inverse=True)
    I = it.shape[0]
    rr, cc = row_incidence(model, cols)
    # a <= row with at most rhs entries on `cols` can neither bind nor cost: leave it out
    nnz = np.bincount(rr, minlength=r.n)
    live = np.flatnonzero(~r.upper | (nnz > r.rhs))
    R = live.shape[0]
    row_of = np.full(r.n, -1, dtype=np.int64)
    row_of[live] = np.arange(R)
    keep = row_of[rr] >= 0
    rr, cc = row_of[rr[keep]], cc[keep]
    upper, rhs = r.upper[live], r.rhs[live].astype(np.float64)
    soft = np.flatnonzero(r.soft[live])
    n_e = soft.shape[0]
    # ---- variables: x (binary) then e (continuous, >= 0) -------------------------------------
    inf = highspy.kHighsInf
    cost = np.concatenate([model.col_cost[cols], -r.penalty[live][soft]])
    # ---- constraints: positions, items, count rows ------------------------------------------
    row_idx = np.concatenate([pos_index[model.col_pos[cols]], P + item_of_col, P + I + rr,
                              P + I + soft])
    col_idx = np.concatenate([np.arange(n), np.arange(n), cc, n + np.arange(n_e)])
    vals = np.concatenate([np.ones(2 * n + rr.shape[0]), np.where(upper[soft], -1.0, 1.0)])
    A = csc_matrix((vals, (row_idx, col_idx)), shape=(P + I + R, n + n_e))
    lp = highspy.HighsLp()
    lp.num_col_ = n + n_e
    lp.num_row_ = P + I + R
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.offset_ = float(model.constant)
    lp.col_cost_ = cost
    lp.col_lower_ = np.zeros(n + n_e)
    lp.col_upper_ = np.concatenate([np.ones(n), np.full(n_e, inf)])
    lp.row_lower_ = np.concatenate([np.ones(P), np.full(I, -inf), np.where(upper, -inf, rhs)])
    lp.row_upper_ = np.concatenate([np.ones(P), np.ones(I), np.where(upper, rhs, inf)])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n + [highspy.HighsVarType.kContinuous] * n_e
    h = new_highs()
    h.setOptionValue("time_limit", max(float(time_limit) - (time.perf_counter() - t_enter), 1e-3))
    h.setOptionValue("mip_rel_gap", MIP_REL_GAP)
    h.setOptionValue("mip_abs_gap", MIP_ABS_GAP)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    for key, value in HIGHS_OPTIONS.items():
        h.setOptionValue(key, value)
    h.passModel(lp)
    # ---- warm start: the incumbent's columns and its violations ----------------------------
    if start is not None:
        pos = np.searchsorted(cols, start)
        if np.all(pos < n) and np.all(cols[np.minimum(pos, n - 1)] == start):
            x0 = np.zeros(n + n_e)
            x0[pos] = 1.0
            x0[n:] = model.violations(start)[live][soft]
            sol = highspy.HighsSolution()
            sol.col_value = x0.tolist()
            h.setSolution(sol)
    # ---- solve, then status and bound before values -----------------------------------------
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    bound = float(info.mip_dual_bound)
    S = highspy.HighsModelStatus
    if status == S.kInfeasible:
        return _Run("infeasible", None, -np.inf)
    if not has_sol:
        return _Run("timeout", None, bound)
    x = np.asarray(h.getSolution().col_value)[:n]
    chosen = cols[x > 0.5]
    return _Run("optimal" if status == S.kOptimal else "feasible", chosen, bound)


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


def _check(problem: SlateProblem, model: ExactModel, run: _Run) -> np.ndarray | None:
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
CALL_SECONDS_PER_COLUMN = {"mip": (3e-6, 1e-5), "cpsat": (2e-5, 4e-5)}


def _cheap_bound(problem: SlateProblem) -> float:
    """Sorting bound (no rule can raise the objective above the best unconstrained slate) when it
    is valid: non-increasing weights >= 0 and soft penalties >= 0. NaN otherwise."""
    t = problem.constraints
    if weights_monotone(problem) and np.all(t.penalty[~t.hard] >= 0.0):
        return objective_upper_bound_unconstrained(problem)
    return float("nan")


def exact_solve(problem: SlateProblem, *, time_limit_s: float, hint: np.ndarray | None,
                backend, solver: str, price: bool = True) -> SolveResult:
    """Prepare (reduce + price), find an incumbent if none, prune, solve; shared by MIP and
    CP-SAT. `backend(model, cols, start_cols, time_limit) -> _Run`. price=False skips the LP
    pricing and reduced-cost fixing (class reduction and pin fixing stay).

    Budget: half of it for the reductions and the LP, the rest for the backend. When the LP does
    not finish, the unpriced model (tens of thousands of columns at N=1000) is not built: the
    incumbent comes back as "feasible", or the LP's small column set is searched for one.
    """
    t0 = time.perf_counter()
    deadline = t0 + max(float(time_limit_s), 0.0)
    why = unsupported_terms(problem)
    if why is not None:
        raise ValueError(f"{solver}: the problem has {why}, which the exact solvers do not "
                         "model (SlateProblem.greedy_only); use the greedy")
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
            if affordable(prep.seed_cols, False) else _Run("timeout", None, np.inf)
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
        else _Run("timeout", None, np.inf)
    if not complete:  # a restricted column set proves nothing about the whole problem
        run = _Run("feasible" if run.cols is not None else "timeout", run.cols, np.inf)
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
    """The row of `rows` that gives way first: lowest priority, then the later one in policy
    order (the order solvers.greedy.constraint_ranks uses)."""
    pr = problem.constraints.priority
    return min(rows, key=lambda c: (int(pr[c]), -c))


def relax_by_priority(problem: SlateProblem, *, time_limit_s: float, solve) -> SolveResult:
    """Solve; while the active hard rules are infeasible, find a minimal conflict and relax its
    lowest-priority member (RELAX_INFEASIBLE), then solve again. Status "relaxed" when any rule
    was relaxed here; `conflicts` lists the conflicts in the order they were relaxed."""
    from solvers.cpsat import ConflictSearchTimeout, find_conflict

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
        except ConflictSearchTimeout:
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


def solve_mip(problem: SlateProblem, *, time_limit_s: float, hint: np.ndarray | None = None,
              relax: bool = False) -> SolveResult:
    """Best slate under every active hard rule, with a proven bound.

    status: "optimal" (proven, relative gap <= MIP_REL_GAP), "feasible" (incumbent; `bound` is
    an upper bound), "timeout" (no incumbent: the hint, or an empty slate, is returned),
    "infeasible" (proven; the hint or an empty slate is returned), "relaxed" (relax=True only:
    the active hard rules were infeasible; rules were relaxed one minimal conflict at a time,
    lowest priority first, marked RELAX_INFEASIBLE, and the rest solved).
    `hint` (any slate; used when it meets the active hard rules) warm-starts the solve and is
    never beaten by the returned slate. The whole call, reductions included, honours
    `time_limit_s` up to model-building overhead.
    """
    def once(p: SlateProblem, limit: float) -> SolveResult:
        return exact_solve(p, time_limit_s=limit, hint=hint, backend=highs_mip, solver="mip")

    if relax:
        return relax_by_priority(problem, time_limit_s=time_limit_s, solve=once)
    return once(problem, time_limit_s)


def warmup_problem() -> SlateProblem:
    """A small problem touching every exact code path (caps, minimums, a soft window, a pin and
    an inactive minimum, 3 of category 0 in the top 3, that conflicts with the cap of 2)."""
    from solvers.codes import ALL_VALUES, MAX_COUNT, MIN_COUNT, PIN, WINDOW
    from solvers.problem import ConstraintTable

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


def warmup() -> None:
    """Run every MIP code path once (LP pricing with and without a start, MIP, relaxation with
    a conflict search), so the first request does not pay one-time initialisation (~20 ms)."""
    problem = warmup_problem()
    first = solve_mip(problem, time_limit_s=1.0)
    solve_mip(problem, time_limit_s=1.0, hint=first.slate)
    all_on = dataclasses.replace(problem, active=np.ones(problem.constraints.n, dtype=np.bool_))
    solve_mip(all_on, time_limit_s=1.0, relax=True)


def silence_highs_banner() -> None:
    """Kept for callers of the old name: see `solvers._highs.silence_banner`."""
    silence_banner()
