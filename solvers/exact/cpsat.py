"""Exact slate solve with CP-SAT on the reduced model: a bounded improver.

`solve_cpsat` solves the same reduced assignment model as `solvers.exact.highs_mip` (see
solvers.exact.model and solvers.exact.pricing), with the hint as a CP-SAT solution hint, a hard
time limit and parameters tuned for small latency budgets (see CPSAT_PARAMS). CP-SAT needs an
integer objective: every objective coefficient c (weight * utility, soft penalties) becomes
round(c * scale) with scale = OBJECTIVE_RESOLUTION / max |c|, so the largest coefficient is ~1e9
and int64 sums stay far from overflow (L + violation units <= a few thousand terms). Rounding
moves each term by at most 0.5 / scale, so the objective of any slate moves by at most
E = 0.5 * (P + sum of violation upper bounds) / scale, about 1e-8 relative: a slate optimal for
the scaled objective is within 2E of the true optimum, and the reported bound is
scaled_bound / scale + E, which is a true upper bound. The reported objective is always
re-evaluated by `evaluate`. Coverage rows are the soft >= rows of the model (an e_v in {0, 1}
per coverable value, count_v + e_v >= 1; solvers.exact.model), so they need no code of their
own here. Minimal conflicts of hard rules (also CP-SAT) are `solvers.exact.conflict`.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from ortools.sat.python import cp_model

from solvers.exact._sat import new_cp_solver
from solvers.exact.conflict import find_conflict
from solvers.exact.driver import Run, exact_solve, relax_by_priority, warmup_problem
from solvers.exact.model import ExactModel, row_members
from solvers.problem import SlateProblem, SolveResult

OBJECTIVE_RESOLUTION = 1e9

# Tuned on the LP-priced models of benchmarks/bench_exact.py (2-core machine, 4 seeds each of
# N/K/rules = 500/20/mixed, 1000/20/mixed, 1000/50/mixed, 500/50/spacing, 100/20/mixed,
# 1000/20/caps, greedy hint, 5 s limit; median ms on 500/20/mixed, proven of 24):
#   defaults, 1 worker                                   2654 ms, 17/24 proven
#   defaults, 2 workers                                  2624 ms, 17/24
#   1 worker, linearization_level 2                        12 ms, 24/24
#   + cp_model_presolve off                                 8 ms, 24/24
#   + symmetry 0, probing 0, 1 presolve iteration (these)   7 ms, 24/24 (1000/50/mixed: 35 ms)
#   the same with 2 workers                              2592 ms, 17/24
# The LP relaxation (linearization_level 2) is what proves these optima. With 2 workers CP-SAT's
# worker portfolio applies its own per-worker settings and the runs look like the defaults.
# Presolve stays on but short (one iteration, no probing): slightly faster than off.
CPSAT_PARAMS: dict[str, object] = {
    "num_workers": 1,
    "linearization_level": 2,
    "symmetry_level": 0,
    "cp_model_probing_level": 0,
    "max_presolve_iterations": 1,
    "random_seed": 0,
}


def _add_structure(cp: cp_model.CpModel, model: ExactModel, cols: np.ndarray):
    """x per column, one per free position, each item at most once. Returns x."""
    x = [cp.new_bool_var(f"x{k}") for k in range(cols.shape[0])]
    pos = model.col_pos[cols]
    order = np.argsort(pos, kind="stable")
    bounds = np.searchsorted(pos[order], model.free_pos, side="left").tolist() + [cols.shape[0]]
    for a, b in zip(bounds[:-1], bounds[1:]):
        cp.add_exactly_one([x[k] for k in order[a:b].tolist()])
    item = model.col_item[cols]
    istarts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]]).tolist() + [cols.shape[0]]
    for a, b in zip(istarts[:-1], istarts[1:]):
        if b - a > 1:
            cp.add_at_most_one(x[a:b])
    return x


def cpsat_backend(model: ExactModel, cols: np.ndarray, start: np.ndarray | None,
                  time_limit: float, params: dict | None = None) -> Run:
    """Solve the model restricted to `cols` with CP-SAT (the CP-SAT backend of `exact_solve`).

    Parameters
    ----------
    model, cols, start, time_limit
        The `Backend` arguments, as in `solvers.exact.highs_mip.highs_mip` (`start` becomes a
        CP-SAT solution hint; CP-SAT gets what model building leaves of `time_limit`).
    params : dict, optional
        CP-SAT parameters instead of CPSAT_PARAMS.

    Returns
    -------
    Run
        Status, chosen columns and a true upper bound (the scaled bound plus the rounding
        error, see the module docstring).
    """
    t_enter = time.perf_counter()
    # ---- data ------------------------------------------------------------------------------
    r = model.rows
    members = row_members(model, cols, live_only=True)
    cost = model.col_cost[cols]
    top = max(np.abs(cost).max(initial=0.0), r.penalty.max(initial=0.0), 1e-12)
    scale = OBJECTIVE_RESOLUTION / top
    # ---- variables and constraints ---------------------------------------------------------
    cp = cp_model.CpModel()
    x = _add_structure(cp, model, cols)
    e_terms = []
    e_ub_total = 0
    for k, mem in members.items():
        lits = [x[i] for i in mem]
        rhs = int(r.rhs[k])
        if r.soft[k]:
            ub = max(len(lits) - rhs, 0) if r.upper[k] else max(rhs, 0)
            if ub == 0:
                continue
            e = cp.new_int_var(0, ub, f"e{k}")
            e_ub_total += ub
            e_terms.append((e, int(round(r.penalty[k] * scale)), k))
            if r.upper[k]:
                cp.add(cp_model.LinearExpr.sum(lits) - e <= rhs)
            else:
                cp.add(cp_model.LinearExpr.sum(lits) + e >= rhs)
        elif r.upper[k]:
            if rhs < 0:
                cp.add_bool_or([])  # infeasible row
            elif rhs == 0:
                for lit in lits:
                    cp.add(lit == 0)
            elif rhs == 1:
                cp.add_at_most_one(lits)
            elif rhs < len(lits):
                cp.add(cp_model.LinearExpr.sum(lits) <= rhs)
        elif rhs > len(lits):
            cp.add_bool_or([])
        elif rhs > 0:
            cp.add(cp_model.LinearExpr.sum(lits) >= rhs)
    # ---- objective (integer-scaled, see module docstring) ----------------------------------
    coef = np.rint(cost * scale).astype(np.int64).tolist()
    obj = cp_model.LinearExpr.weighted_sum(x, coef)
    if e_terms:
        obj = obj - cp_model.LinearExpr.weighted_sum([t[0] for t in e_terms],
                                                      [t[1] for t in e_terms])
    cp.maximize(obj)
    # ---- hint --------------------------------------------------------------------------------
    if start is not None:
        pos = np.searchsorted(cols, start)
        if np.all(pos < cols.shape[0]) and np.all(cols[np.minimum(pos, cols.shape[0] - 1)] == start):
            on = np.zeros(cols.shape[0], dtype=np.bool_)
            on[pos] = True
            for lit, v in zip(x, on.tolist()):
                cp.add_hint(lit, v)
            viol = model.violations(start)
            for e, _, k in e_terms:
                cp.add_hint(e, int(viol[k]))
    # ---- solve, then status and bound before values -----------------------------------------
    solver = new_cp_solver(time_limit - (time.perf_counter() - t_enter),
                           CPSAT_PARAMS if params is None else params)
    status = solver.solve(cp)
    err = 0.5 * (model.free_pos.shape[0] + e_ub_total) / scale
    if status == cp_model.INFEASIBLE:
        return Run("infeasible", None, -np.inf)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return Run("timeout", None, np.inf)
    bound = solver.best_objective_bound / scale + err + model.constant
    vals = np.array([solver.boolean_value(lit) for lit in x], dtype=np.bool_)
    return Run("optimal" if status == cp_model.OPTIMAL else "feasible", cols[vals], bound)


def solve_cpsat(problem: SlateProblem, *, time_limit_s: float, hint: np.ndarray | None = None,
                relax: bool = False, prune: bool = True) -> SolveResult:
    """CP-SAT as a bounded improver: the best slate found within `time_limit_s`, warm-started
    from `hint` (as a CP-SAT solution hint), never worse than a feasible hint.

    Parameters
    ----------
    problem, time_limit_s, hint, relax
        As in `solvers.exact.highs_mip.solve_mip` (a problem `exact_unsupported` refuses
        raises ValueError with the reason).
    prune : bool, default True
        False skips the LP pricing / reduced-cost fixing of solvers.exact.pricing (class
        reduction and pin fixing stay): an independent check of that reduction, and the slower
        path.

    Returns
    -------
    SolveResult
        solver "cpsat"; statuses as `solve_mip`'s.
    """
    def once(p: SlateProblem, limit: float) -> SolveResult:
        return exact_solve(p, time_limit_s=limit, hint=hint, backend=cpsat_backend,
                           solver="cpsat", price=prune)

    if relax:
        return relax_by_priority(problem, time_limit_s=time_limit_s, solve=once,
                                 find_conflict=find_conflict)
    return once(problem, time_limit_s)


def warmup() -> None:
    """Run the CP-SAT paths once (solve cold and with a hint, a conflict search), so that the
    first request does not pay one-time initialisation; see `solvers.exact.highs_mip.warmup`."""
    problem = warmup_problem()
    first = solve_cpsat(problem, time_limit_s=1.0)
    solve_cpsat(problem, time_limit_s=1.0, hint=first.slate)
    all_on = dataclasses.replace(problem, active=np.ones(problem.constraints.n, dtype=np.bool_))
    find_conflict(all_on, time_limit_s=1.0)
