"""CP-SAT on the reduced model: a bounded improver, and minimal conflicts of hard rules.

`solve_cpsat` solves the same reduced assignment model as `solvers.mip` (see solvers.reduce),
with the hint as a CP-SAT solution hint, a hard time limit and parameters tuned for small
latency budgets (see CPSAT_PARAMS). CP-SAT needs an integer objective: every objective
coefficient c (weight * utility, soft penalties) becomes round(c * scale) with
scale = OBJECTIVE_RESOLUTION / max |c|, so the largest coefficient is ~1e9 and int64 sums stay
far from overflow (L + violation units <= a few thousand terms). Rounding moves each term by at
most 0.5 / scale, so the objective of any slate moves by at most E = 0.5 * (P + sum of violation
upper bounds) / scale, about 1e-8 relative: a slate optimal for the scaled objective is within
2E of the true optimum, and the reported bound is scaled_bound / scale + E, which is a true
upper bound. The reported objective is always re-evaluated by `evaluate`.

`find_conflict` builds the feasibility model (no objective) with one enforcement literal per
active hard rule, solves with all literals as assumptions in single-worker mode (where CP-SAT
reports a small core through sufficient_assumptions_for_infeasibility), then runs a deletion
filter so the result is minimal: removing any one reported rule leaves the others feasible.
"""

from __future__ import annotations

import time

import numpy as np
from ortools.sat.python import cp_model

from solvers.mip import _Run, exact_solve, relax_by_priority
from solvers.problem import SlateProblem, SolveResult
from solvers.reduce import ExactModel, build_model, model_rows, row_incidence

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


class ConflictSearchTimeout(TimeoutError):
    """find_conflict ran out of time. `core` is the smallest rule set proven infeasible so far
    (not necessarily minimal), or None when even infeasibility was not proven."""

    def __init__(self, message: str, core: list[int] | None):
        super().__init__(message)
        self.core = core


def _params(solver: cp_model.CpSolver, time_limit: float, params: dict) -> None:
    for k, v in params.items():
        setattr(solver.parameters, k, v)
    solver.parameters.max_time_in_seconds = max(float(time_limit), 1e-3)
    solver.parameters.log_search_progress = False


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


def _row_members(model: ExactModel, cols: np.ndarray,
                 live_only: bool = False) -> dict[int, list[int]]:
    """Row -> positions in `cols` of its columns. live_only: leave out <= rows with at most rhs
    entries (they can neither bind nor cost); otherwise every row, empty ones included."""
    rr, cc = row_incidence(model, cols)
    order = np.argsort(rr, kind="stable")
    rr, cc = rr[order], cc[order]
    cuts = np.searchsorted(rr, np.arange(model.rows.n + 1))
    r = model.rows
    rows = np.arange(r.n)
    if live_only:
        rows = np.flatnonzero(~r.upper | (np.diff(cuts) > r.rhs))
    return {k: cc[cuts[k]:cuts[k + 1]].tolist() for k in rows.tolist()}


def cpsat_backend(model: ExactModel, cols: np.ndarray, start: np.ndarray | None,
                  time_limit: float, params: dict | None = None) -> _Run:
    """Solve the model restricted to `cols` with CP-SAT (scaled integer objective).
    `time_limit` covers model building too: CP-SAT gets what is left of it."""
    t_enter = time.perf_counter()
    # ---- data ------------------------------------------------------------------------------
    r = model.rows
    members = _row_members(model, cols, live_only=True)
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
    solver = cp_model.CpSolver()
    _params(solver, time_limit - (time.perf_counter() - t_enter),
            CPSAT_PARAMS if params is None else params)
    status = solver.solve(cp)
    err = 0.5 * (model.free_pos.shape[0] + e_ub_total) / scale
    if status == cp_model.INFEASIBLE:
        return _Run("infeasible", None, -np.inf)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return _Run("timeout", None, np.inf)
    bound = solver.best_objective_bound / scale + err + model.constant
    vals = np.array([solver.boolean_value(lit) for lit in x], dtype=np.bool_)
    return _Run("optimal" if status == cp_model.OPTIMAL else "feasible", cols[vals], bound)


def solve_cpsat(problem: SlateProblem, *, time_limit_s: float, hint: np.ndarray | None = None,
                relax: bool = False, prune: bool = True) -> SolveResult:
    """CP-SAT as a bounded improver: the best slate found within `time_limit_s`, warm-started
    from `hint`, never worse than a feasible hint. Statuses as solvers.mip.solve_mip.

    prune=False skips the LP pricing / reduced-cost fixing of solvers.reduce (class reduction
    and pin fixing stay): an independent check of that reduction, and the slower path.
    """
    def once(p: SlateProblem, limit: float) -> SolveResult:
        return exact_solve(p, time_limit_s=limit, hint=hint, backend=cpsat_backend,
                           solver="cpsat", price=prune)

    if relax:
        return relax_by_priority(problem, time_limit_s=time_limit_s, solve=once)
    return once(problem, time_limit_s)


# --------------------------------------------------------------------------------------------
# Minimal conflicts
# --------------------------------------------------------------------------------------------

CONFLICT_PARAMS: dict[str, object] = {
    "num_workers": 1,  # cores come from the single-worker search
    "cp_model_presolve": False,  # presolve can report literals outside the assumptions
    # counting arguments (4 items in 5 positions, at most 1 per 2) are LP reasoning: on
    # tests/instances.py inf_medium the search takes 4.1 s at the default level, 0.2 s at 2
    "linearization_level": 2,
    "random_seed": 0,
}


def find_conflict(problem: SlateProblem, *, time_limit_s: float) -> list[int] | None:
    """A minimal set of active hard constraint rows that cannot hold together given these
    candidates (sorted), or None when the active hard rules are feasible.

    Minimal: the reported rows are infeasible together, and dropping any one of them leaves the
    others feasible. Among several minimal conflicts, the deletion filter tries to drop the
    highest-priority rows first, so the conflict reported tends to name rules that may give way.
    Raises ConflictSearchTimeout when the time limit stops the search.
    """
    t0 = time.perf_counter()
    deadline = t0 + max(float(time_limit_s), 0.0)
    L = problem.length
    if L == 0:
        return None
    t = problem.constraints
    model = build_model(problem, objective=False, fix_pins=False)
    if model.conflict:  # a rule that cannot hold on its own is a minimal conflict by itself
        return [int(model.conflict[0])]
    # ---- feasibility model: columns of the class-reduced universe ---------------------------
    cols = np.arange(model.n_cols, dtype=np.int64)
    cp = cp_model.CpModel()
    x = _add_structure(cp, model, cols)
    members = _row_members(model, cols)
    hard = np.flatnonzero(model_rows(problem, objective=False))
    lit = {int(c): cp.new_bool_var(f"rule{c}") for c in hard.tolist()}
    r = model.rows
    for k in range(r.n):
        e = lit[int(r.constraint[k])]
        rhs = int(r.rhs[k])
        if not members[k]:
            if (rhs < 0) if r.upper[k] else (rhs > 0):
                cp.add_bool_or([e.Not()])  # the row fails for every slate
            continue
        s = cp_model.LinearExpr.sum([x[i] for i in members[k]])
        if r.upper[k]:
            cp.add(s <= rhs).only_enforce_if(e)
        else:
            cp.add(s >= rhs).only_enforce_if(e)
    keys = model.col_keys()
    for c, i, p in zip(model.pins.constraint.tolist(), model.pins.item.tolist(),
                       model.pins.position.tolist()):
        k = int(np.searchsorted(keys, i * L + p))
        cp.add_implication(lit[c], x[k])
    # rules whose every row was dropped as never binding hold for every slate: never in a core
    involved = sorted(set(r.constraint.tolist()) | set(model.pins.constraint.tolist()))
    index_of = {lit[c].index: c for c in involved}

    def solve(rules: list[int]) -> tuple[int, list[int]]:
        left = deadline - time.perf_counter()
        if left <= 0:
            return cp_model.UNKNOWN, []
        cp.clear_assumptions()
        cp.add_assumptions([lit[c] for c in rules])
        solver = cp_model.CpSolver()
        _params(solver, left, CONFLICT_PARAMS)
        status = solver.solve(cp)
        core: list[int] = []
        if status == cp_model.INFEASIBLE:
            core = sorted({index_of[i] for i in solver.sufficient_assumptions_for_infeasibility()
                           if i in index_of} & set(rules))
        return status, core

    # ---- solve with every rule assumed -------------------------------------------------------
    status, core = solve(involved)
    if status in (cp_model.FEASIBLE, cp_model.OPTIMAL):
        return None
    if status != cp_model.INFEASIBLE:
        raise ConflictSearchTimeout("conflict search: feasibility not decided in time", None)
    if core and core != involved:
        status2, core2 = solve(core)  # make sure the reported core is infeasible on its own
        if status2 == cp_model.INFEASIBLE:
            core = core2 if core2 else core
        elif status2 in (cp_model.FEASIBLE, cp_model.OPTIMAL):
            core = involved
        else:
            raise ConflictSearchTimeout("conflict search: core not verified in time", involved)
    if not core:
        core = involved
    # ---- deletion filter: keep a rule only if the others are feasible without it -------------
    pr = t.priority
    for c in sorted(core, key=lambda c: (-int(pr[c]), c)):
        if c not in core:
            continue
        rest = [d for d in core if d != c]
        if not rest:
            break  # one rule, infeasible alone (the empty set is always feasible: N >= L)
        status, sub = solve(rest)
        if status == cp_model.INFEASIBLE:
            core = sub if sub and set(sub) <= set(rest) and len(sub) < len(rest) and \
                _confirm(solve, sub) else rest
        elif status not in (cp_model.FEASIBLE, cp_model.OPTIMAL):
            raise ConflictSearchTimeout("conflict search: minimality not proven in time", core)
    return sorted(int(c) for c in core)


def _confirm(solve, rules: list[int]) -> bool:
    status, _ = solve(rules)
    return status == cp_model.INFEASIBLE


def warmup() -> None:
    """The CP-SAT paths once (solve cold and with a hint, conflict search); see mip.warmup."""
    import dataclasses

    from solvers.mip import warmup_problem

    problem = warmup_problem()
    first = solve_cpsat(problem, time_limit_s=1.0)
    solve_cpsat(problem, time_limit_s=1.0, hint=first.slate)
    all_on = dataclasses.replace(problem, active=np.ones(problem.constraints.n, dtype=np.bool_))
    find_conflict(all_on, time_limit_s=1.0)
