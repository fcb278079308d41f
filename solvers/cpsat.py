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

`find_conflict` builds feasibility models (no objective) with one enforcement literal per
active hard rule, solves with the literals as assumptions in single-worker mode (where CP-SAT
reports a small core through sufficient_assumptions_for_infeasibility), then runs a deletion
filter so the result is minimal: removing any one reported rule leaves the others feasible.
Each model holds only the rules it is asked about, aggregated per class of candidates those
rules cannot tell apart, so conflicts among the rules of one or two attributes are found on
models of a few hundred booleans whatever N is (see find_conflict for the steps and timings).
"""

from __future__ import annotations

import time

import numpy as np
from ortools.sat.python import cp_model

from solvers.mip import _Run, exact_solve, relax_by_priority
from solvers.codes import PIN
from solvers.problem import SlateProblem, SolveResult
from solvers.reduce import (
    ExactModel, build_model, constraint_classes, hard_rules_view, model_rows, row_incidence,
)

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


class _FeasibilityModel:
    """CP-SAT feasibility model of `rules` (active hard rows) with one enforcement literal each.

    Candidates are classed by the attributes these rules read only (build_model on the problem
    restricted to `rules`), and the model is aggregated per class: y[class, p] = "position p
    holds a member of the class", at most min(class size, L) positions per class. Exact for
    feasibility: members of a class match every row alike, so any per-class assignment is
    realised by distinct members. A model of two rules on one attribute has a handful of
    classes (pinned candidates are singletons) however large N is.
    """

    def __init__(self, problem: SlateProblem, rules: list[int]):
        import dataclasses

        sub = _restrict(problem, rules)
        model = build_model(sub, objective=False, fix_pins=False)
        self.trivial = [int(c) for c in model.conflict]
        # ---- data: one representative per class, its capacity, columns (class, position) --
        L = model.length
        k_of = model.klass[model.items]
        reps_k, first, capacity = np.unique(k_of, return_index=True, return_counts=True)
        reps = model.items[first]  # ascending class label; items ascending within
        order = np.argsort(reps, kind="stable")
        reps, capacity = reps[order], np.minimum(capacity[order], L)
        C = reps.shape[0]
        agg = dataclasses.replace(
            model, items=reps, col_item=np.repeat(np.arange(C, dtype=np.int64), L),
            col_pos=np.tile(np.arange(L, dtype=np.int64), C), col_cost=np.zeros(C * L))
        cols = np.arange(C * L, dtype=np.int64)
        # ---- variables and constraints -------------------------------------------------------
        cp = cp_model.CpModel()
        y = [cp.new_bool_var(f"y{k}") for k in range(C * L)]
        for p in range(L):
            cp.add_exactly_one(y[p::L])
        for c in range(C):
            lits = y[c * L:(c + 1) * L]
            if capacity[c] == 1:
                cp.add_at_most_one(lits)
            elif capacity[c] < L:
                cp.add(cp_model.LinearExpr.sum(lits) <= int(capacity[c]))
        lit = {c: cp.new_bool_var(f"rule{c}") for c in rules}
        r = agg.rows
        for k, mem in _row_members(agg, cols).items():
            e = lit[int(r.constraint[k])]
            rhs = int(r.rhs[k])
            if not mem:
                if (rhs < 0) if r.upper[k] else (rhs > 0):
                    cp.add_bool_or([e.Not()])  # the row fails for every slate
                continue
            s = cp_model.LinearExpr.sum([y[i] for i in mem])
            if r.upper[k]:
                cp.add(s <= rhs).only_enforce_if(e)
            else:
                cp.add(s >= rhs).only_enforce_if(e)
        for c, i, p in zip(model.pins.constraint.tolist(), model.pins.item.tolist(),
                           model.pins.position.tolist()):
            if i < 0 or p >= L:
                cp.add_bool_or([lit[c].Not()])
                continue
            cls = int(np.searchsorted(reps, i))  # a pinned candidate is its own class
            cp.add_implication(lit[c], y[cls * L + p])
        self.cp, self.lit = cp, lit
        self.index_of = {v.index: c for c, v in lit.items()}

    def solve(self, rules: list[int], deadline: float) -> tuple[int, list[int]]:
        """(status, core): core = the assumed rules CP-SAT reports sufficient for infeasibility."""
        left = deadline - time.perf_counter()
        if left <= 0:
            return cp_model.UNKNOWN, []
        self.cp.clear_assumptions()
        self.cp.add_assumptions([self.lit[c] for c in rules])
        solver = cp_model.CpSolver()
        _params(solver, left, CONFLICT_PARAMS)
        status = solver.solve(self.cp)
        core: list[int] = []
        if status == cp_model.INFEASIBLE:
            found = {self.index_of[i] for i in solver.sufficient_assumptions_for_infeasibility()
                     if i in self.index_of}
            core = sorted(found & set(rules))
        return status, core


def _restrict(problem: SlateProblem, rules) -> SlateProblem:
    import dataclasses

    act = np.zeros(problem.constraints.n, dtype=np.bool_)
    act[list(rules)] = True
    return dataclasses.replace(problem, active=act & problem.active)


def _feasible(problem: SlateProblem, rules: list[int], deadline: float) -> tuple[int, list[int]]:
    """CP-SAT status of `rules` alone on their own (coarse) model, and a core when infeasible."""
    if not rules:
        return cp_model.FEASIBLE, []  # no rule: any L candidates (N >= L)
    fm = _FeasibilityModel(problem, rules)
    if fm.trivial:
        return cp_model.INFEASIBLE, fm.trivial[:1]
    return fm.solve(rules, deadline)


def _rule_groups(problem: SlateProblem, involved: list[int]) -> list[list[int]]:
    """Rule sets to search for a first conflict, cheapest model first, the full set last: for
    every set of attributes, the counting rules on them plus every pin. A conflict usually lives
    among the rules of one or two attributes, whose model is tiny whatever N is."""
    from itertools import combinations

    t = problem.constraints
    counting = [c for c in involved if t.kind[c] != PIN]
    pins = [c for c in involved if t.kind[c] == PIN]
    attrs = sorted({int(t.attr[c]) for c in counting})
    groups: dict[tuple[int, ...], None] = {}
    if len(attrs) <= 6:
        for size in range(1, len(attrs)):
            for combo in combinations(attrs, size):
                g = tuple(sorted([c for c in counting if int(t.attr[c]) in combo] + pins))
                groups.setdefault(g, None)
    full = tuple(sorted(involved))
    groups.pop(full, None)

    def size(g) -> int:  # candidates kept by the class reduction of the group's rules
        sub = _restrict(problem, g)
        klass = constraint_classes(sub, model_rows(sub, objective=False))
        return int(np.minimum(np.bincount(klass), problem.length).sum())

    full_size = size(full)
    sized = [(size(g), g) for g in groups]
    # a group nearly as large as the full set costs as much to decide: leave it to the full set
    ordered = sorted((sz, g) for sz, g in sized if 2 * sz <= full_size)
    return [list(g) for _, g in ordered] + [list(full)]


def find_conflict(problem: SlateProblem, *, time_limit_s: float,
                  known_infeasible: bool = False) -> list[int] | None:
    """A minimal set of active hard constraint rows that cannot hold together given these
    candidates (sorted), or None when the active hard rules are feasible.

    1. Decide the whole rule set with solvers.mip.solve_mip (its slates are checked by
       evaluate; its infeasibility proofs, an LP certificate or HiGHS, are cross-checked by
       step 2, which returns None if CP-SAT finds the full set feasible after all). Measured
       on N=1000, K=20: ~20 ms, where CP-SAT on the full feasibility model takes ~1 s.
    2. First conflict: CP-SAT with one enforcement literal per rule, all rules of a group
       assumed, single worker, no objective, no presolve (presolve can report literals outside
       the assumptions), sufficient_assumptions_for_infeasibility as the core. Groups are the
       rules of one attribute set plus the pins, smallest model first (at most half the size of
       the full model), the full set last.
    3. Deletion filter: drop each rule of the core in turn (highest priority first, so the
       conflict tends to name rules that may give way); if the rest is still infeasible (CP-SAT,
       on a model of just those rules) it is dropped for good, else it is kept. Every kept rule
       was necessary when tested and the core only shrinks afterwards, so dropping any one
       rule of the result leaves a feasible set: the result is minimal.
    known_infeasible=True (the caller has just proven it, e.g. solve_mip) skips step 1.
    Raises ConflictSearchTimeout when the time limit stops the search.
    """
    t0 = time.perf_counter()
    deadline = t0 + max(float(time_limit_s), 0.0)
    if problem.length == 0:
        return None
    problem = hard_rules_view(problem)  # feasibility needs the hard rows only
    t = problem.constraints
    model = build_model(problem, objective=False, fix_pins=False)
    if model.conflict:  # a rule that cannot hold on its own is a minimal conflict by itself
        return [int(model.conflict[0])]
    # rules whose every row was dropped as never binding hold for every slate: never in a core
    involved = sorted(set(model.rows.constraint.tolist()) | set(model.pins.constraint.tolist()))
    if not involved:
        return None
    # ---- 1. the whole rule set ---------------------------------------------------------------
    if not known_infeasible:
        from solvers.mip import solve_mip

        status = solve_mip(problem, time_limit_s=0.5 * (deadline - t0)).status
        if status in ("optimal", "feasible"):
            return None
    # ---- 2. a first core ---------------------------------------------------------------------
    core: list[int] | None = None
    for rules in _rule_groups(problem, involved):
        status, found = _feasible(problem, rules, deadline)
        if status == cp_model.INFEASIBLE:
            core = found or rules
            break
        if status not in (cp_model.FEASIBLE, cp_model.OPTIMAL):
            raise ConflictSearchTimeout("conflict search: feasibility not decided in time", None)
    if core is None:
        return None
    # make sure the reported core is infeasible on its own (cores are sufficient, not exact)
    status, sub = _feasible(problem, core, deadline)
    if status in (cp_model.FEASIBLE, cp_model.OPTIMAL):
        core = rules
    elif status != cp_model.INFEASIBLE:
        raise ConflictSearchTimeout("conflict search: core not verified in time", rules)
    elif sub and set(sub) < set(core):
        core = sub if _feasible(problem, sub, deadline)[0] == cp_model.INFEASIBLE else core
    # ---- 3. deletion filter -------------------------------------------------------------------
    pr = t.priority
    for c in sorted(core, key=lambda c: (-int(pr[c]), c)):
        if c not in core:
            continue
        rest = [d for d in core if d != c]
        status, sub = _feasible(problem, rest, deadline)
        if status == cp_model.INFEASIBLE:
            core = rest
            if sub and set(sub) < set(rest) and \
                    _feasible(problem, sub, deadline)[0] == cp_model.INFEASIBLE:
                core = sub
        elif status not in (cp_model.FEASIBLE, cp_model.OPTIMAL):
            raise ConflictSearchTimeout("conflict search: minimality not proven in time", core)
    return sorted(int(c) for c in core)


def warmup() -> None:
    """The CP-SAT paths once (solve cold and with a hint, conflict search); see mip.warmup."""
    import dataclasses

    from solvers.mip import warmup_problem

    problem = warmup_problem()
    first = solve_cpsat(problem, time_limit_s=1.0)
    solve_cpsat(problem, time_limit_s=1.0, hint=first.slate)
    all_on = dataclasses.replace(problem, active=np.ones(problem.constraints.n, dtype=np.bool_))
    find_conflict(all_on, time_limit_s=1.0)
