"""Minimal conflicts of hard rules, found with CP-SAT.

`find_conflict` builds feasibility models (no objective) with one enforcement literal per
active hard rule, solves with the literals as assumptions in single-worker mode (where CP-SAT
reports a small core through sufficient_assumptions_for_infeasibility), then runs a deletion
filter so the result is minimal: removing any one reported rule leaves the others feasible.
Each model holds only the rules it is asked about, aggregated per class of candidates those
rules cannot tell apart, so conflicts among the rules of one or two attributes are found on
models of a few hundred booleans whatever N is (see find_conflict for the steps and timings).

`solvers.exact.driver.relax_by_priority` takes `find_conflict` as an argument, and
`find_conflict` takes the exact solve that decides the whole rule set first (`decide`) as one:
this module imports no exact backend, and the backends import it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from itertools import combinations

import numpy as np
from ortools.sat.python import cp_model

from solvers.codes import PIN
from solvers.exact._sat import new_cp_solver
from solvers.exact.model import (
    build_model, constraint_classes, hard_rules_view, model_rows, row_members,
)
from solvers.problem import SlateProblem, SolveResult

CONFLICT_PARAMS: dict[str, object] = {
    "num_workers": 1,  # cores come from the single-worker search
    "cp_model_presolve": False,  # presolve can report literals outside the assumptions
    # counting arguments (4 items in 5 positions, at most 1 per 2) are LP reasoning: on
    # testing/instances.py inf_medium the search takes 4.1 s at the default level, 0.2 s at 2
    "linearization_level": 2,
    "random_seed": 0,
}


class ConflictSearchTimeout(TimeoutError):
    """find_conflict ran out of time. `core` is the smallest rule set proven infeasible so far
    (not necessarily minimal), or None when even infeasibility was not proven."""

    def __init__(self, message: str, core: list[int] | None):
        super().__init__(message)
        self.core = core


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
        for k, mem in row_members(agg, cols).items():
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
        solver = new_cp_solver(left, CONFLICT_PARAMS)
        status = solver.solve(self.cp)
        core: list[int] = []
        if status == cp_model.INFEASIBLE:
            found = {self.index_of[i] for i in solver.sufficient_assumptions_for_infeasibility()
                     if i in self.index_of}
            core = sorted(found & set(rules))
        return status, core


def _restrict(problem: SlateProblem, rules) -> SlateProblem:
    act = np.zeros(problem.constraints.n, dtype=np.bool_)
    act[list(rules)] = True
    return dataclasses.replace(problem, active=act & problem.active)


def _feasible(problem: SlateProblem, rules: list[int], deadline: float) -> tuple[int, list[int]]:
    """CP-SAT status of `rules` alone on their own (coarse) model, and a core when infeasible."""
    if not rules:
        return cp_model.FEASIBLE, []  # no rule: any L candidates (N >= L)
    if time.perf_counter() >= deadline:  # building the model alone takes milliseconds at N=1000
        return cp_model.UNKNOWN, []
    fm = _FeasibilityModel(problem, rules)
    if fm.trivial:
        return cp_model.INFEASIBLE, fm.trivial[:1]
    return fm.solve(rules, deadline)


def _rule_groups(problem: SlateProblem, involved: list[int]) -> list[list[int]]:
    """Rule sets to search for a first conflict, cheapest model first, the full set last: for
    every set of attributes, the counting rules on them plus every pin. A conflict usually lives
    among the rules of one or two attributes, whose model is tiny whatever N is."""
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


def find_conflict(problem: SlateProblem, *, time_limit_s: float, known_infeasible: bool = False,
                  decide: Callable[..., SolveResult] | None = None) -> list[int] | None:
    """A minimal set of active hard constraint rows that cannot hold together given these
    candidates, or None when the active hard rules are feasible.

    1. With `decide` (and not `known_infeasible`): decide the whole rule set with it first,
       given half the time (solve_mip: its slates are checked by evaluate; its infeasibility
       proofs, an LP certificate or HiGHS, are cross-checked by step 2, which returns None if
       CP-SAT finds the full set feasible after all). Measured on N=1000, K=20: ~20 ms, where
       CP-SAT on the full feasibility model takes ~1 s.
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

    Parameters
    ----------
    problem : SlateProblem
        The problem; only its active hard rows are read (soft terms and diversity are ignored,
        so problems the exact solvers refuse are searched too).
    time_limit_s : float
        Wall-clock limit of the whole search.
    known_infeasible : bool, default False
        The caller has just proven the active hard rules infeasible (e.g. an exact solve in
        `relax_by_priority`): step 1 is skipped.
    decide : callable, optional
        `decide(problem, time_limit_s=...) -> SolveResult`, an exact solve of the whole rule
        set (the portfolio passes `solve_mip`); status "optimal" or "feasible" ends the search
        with None. Without it, CP-SAT decides in step 2: the same answer, slower on large
        feasible problems.

    Returns
    -------
    list of int or None
        Sorted constraint-table rows of a minimal conflict, or None when the active hard rules
        are feasible (or the slate is empty).

    Raises
    ------
    ConflictSearchTimeout
        When the time limit stops the search (its `core` is the smallest infeasible rule set
        proven so far, if any).
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
    if decide is not None and not known_infeasible:
        left = deadline - time.perf_counter()  # the model above took its share already
        if left <= 0:
            raise ConflictSearchTimeout("conflict search: no time left to decide the rule set", None)
        status = decide(problem, time_limit_s=0.5 * left).status
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
