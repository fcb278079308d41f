"""Exact slate solve as a MIP (HiGHS through `highspy`), over the reduced model of
solvers.exact.model.

Formulation (data -> variables -> constraints -> objective -> solve -> status -> values):
    x[k] in {0, 1}  for every surviving column k = (candidate j, position p)
    e[r] >= 0       violation of soft count row r
    sum_{k at p} x[k] = 1          every free position holds one candidate
    sum_{k of j} x[k] <= 1         every candidate at most once
    count_r(x) - e[r] <= rhs[r]    max_count / window rows (one per value and window)
    count_r(x) + e[r] >= rhs[r]    min_count rows, and coverage rows (rhs 1, see below)
    max  sum_k cost[k] x[k] - sum_r penalty[r] e[r] + constant
which is `evaluate`'s objective term by term: max_count with ALL_VALUES has one row (and one e)
per value, window one per window and value, soft pins add penalty to their column and -penalty
to the constant, hard pins fix their position. A COVERAGE row (reward `penalty` per distinct
value of its attribute at positions < m = min(top, L)) is linearised as y_v <= count_v(x) with
y_v in [0, 1] for every value v that some column at a position < m can cover; with
y_v = 1 - e_v that is the soft row count_v(x) + e_v >= 1 priced `penalty`, and the constant gets
penalty * (coverable values + values the hard pins in the top m cover) - penalty * min(top,
n_distinct) (solvers.exact.model). At integral x the optimum takes e_v = 0 exactly when v is
covered, so the objective is evaluate's. Similarity diversity (MMR, DPP) and calibration rows
are not linear: `exact_unsupported` refuses them (greedy only).

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
solvers.exact.pricing (reduced-cost fixing against the hint) cuts the model from ~17 000 columns to a
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

from solvers._highs import new_highs
from solvers.exact.conflict import find_conflict
from solvers.exact.driver import Run, exact_solve, relax_by_priority, warmup_problem
from solvers.exact.model import ExactModel
from solvers.exact.pricing import assignment_lp
from solvers.problem import SlateProblem, SolveResult

# Proven optimal means: incumbent within this relative gap of the bound (HiGHS's default 1e-4
# would call slates optimal that lose 0.01 %; the exact tests compare to brute force at 1e-6).
MIP_REL_GAP = 1e-7
MIP_ABS_GAP = 1e-9

# HiGHS options on top of output off, time limit, gaps, one thread and a fixed seed.
HIGHS_OPTIONS: dict[str, object] = {"presolve": "off", "mip_heuristic_run_feasibility_jump": False}


def highs_mip(model: ExactModel, cols: np.ndarray, start: np.ndarray | None,
              time_limit: float) -> Run:
    """Solve the model restricted to `cols` with HiGHS (the MIP backend of `exact_solve`).

    Parameters
    ----------
    model : ExactModel
        The reduced model.
    cols : numpy.ndarray
        int64 model columns the MIP may use (ascending).
    start : numpy.ndarray or None
        Columns of a feasible slate (one per free position), given to HiGHS as a start.
    time_limit : float
        Seconds for the whole call: HiGHS gets what model building leaves of it.

    Returns
    -------
    Run
        Status, chosen columns and HiGHS's dual bound (read before the values).
    """
    t_enter = time.perf_counter()
    # ---- data, variables (x binary, then e continuous >= 0) and constraints -----------------
    r = model.rows
    n = cols.shape[0]
    alp = assignment_lp(model, cols)
    lp, live, soft = alp.lp, alp.live, alp.viol_rows
    n_e = soft.shape[0]
    # ---- objective ---------------------------------------------------------------------------
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.offset_ = float(model.constant)
    lp.col_cost_ = np.concatenate([model.col_cost[cols], -r.penalty[live][soft]])
    lp.col_upper_ = np.concatenate([np.ones(n), np.full(n_e, highspy.kHighsInf)])
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
        return Run("infeasible", None, -np.inf)
    if not has_sol:
        return Run("timeout", None, bound)
    x = np.asarray(h.getSolution().col_value)[:n]
    chosen = cols[x > 0.5]
    return Run("optimal" if status == S.kOptimal else "feasible", chosen, bound)


def solve_mip(problem: SlateProblem, *, time_limit_s: float, hint: np.ndarray | None = None,
              relax: bool = False) -> SolveResult:
    """Best slate under every active hard rule, with a proven bound (HiGHS MIP).

    Parameters
    ----------
    problem : SlateProblem
        The problem. One the exact model cannot represent (`exact_unsupported` gives a
        reason) is refused with a ValueError naming the reason.
    time_limit_s : float
        Wall-clock limit of the whole call, reductions included, up to model-building overhead.
    hint : numpy.ndarray, optional
        Any slate; when it meets the active hard rules it warm-starts the solve and is never
        beaten by the returned slate.
    relax : bool, default False
        When the active hard rules are infeasible, relax one minimal conflict at a time
        (`relax_by_priority` with `solvers.exact.conflict.find_conflict`), lowest priority
        first, marked RELAX_INFEASIBLE, and solve the rest.

    Returns
    -------
    SolveResult
        solver "mip"; status "optimal" (proven, relative gap <= MIP_REL_GAP), "feasible"
        (incumbent; `bound` is an upper bound), "timeout" (no incumbent: the hint, or an empty
        slate, is returned), "infeasible" (proven; the hint or an empty slate is returned) or,
        with relax=True, "relaxed" (rules were relaxed, the rest solved).

    Raises
    ------
    ValueError
        When `exact_unsupported(problem)` is not None.
    """
    def once(p: SlateProblem, limit: float) -> SolveResult:
        return exact_solve(p, time_limit_s=limit, hint=hint, backend=highs_mip, solver="mip")

    if relax:
        return relax_by_priority(problem, time_limit_s=time_limit_s, solve=once,
                                 find_conflict=find_conflict)
    return once(problem, time_limit_s)


def find_conflict_mip_first(problem: SlateProblem, *, time_limit_s: float,
                            known_infeasible: bool = False) -> list[int] | None:
    """`solvers.exact.conflict.find_conflict` with ``decide=solve_mip``: the MIP decides the whole
    rule set first (~20 ms at N=1000, K=20, where CP-SAT on the full feasibility model takes
    ~1 s), then CP-SAT finds and shrinks the core. This is `solvers.exact.find_conflict`, the
    search the engine runs; parameters and return value as `conflict.find_conflict`."""
    return find_conflict(problem, time_limit_s=time_limit_s, known_infeasible=known_infeasible,
                         decide=solve_mip)


def warmup() -> None:
    """Run every MIP code path once (LP pricing with and without a start, MIP, relaxation with
    a conflict search), so the first request does not pay one-time initialisation (~20 ms)."""
    problem = warmup_problem()
    first = solve_mip(problem, time_limit_s=1.0)
    solve_mip(problem, time_limit_s=1.0, hint=first.slate)
    all_on = dataclasses.replace(problem, active=np.ones(problem.constraints.n, dtype=np.bool_))
    solve_mip(all_on, time_limit_s=1.0, relax=True)
