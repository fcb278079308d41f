"""Anytime portfolio: the greedy always answers; an exact solve improves or certifies it when the
budget left and the problem warrant it; the best valid slate wins.

Budget contract: the exact solver gets the time left before `deadline` (a perf_counter instant)
minus a safety margin for reporting and encoding; it hands back its incumbent or nothing, never
an error, and the greedy slate is always there to fall back on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from solvers.bound import (
    SlateBound, bounded_rows, linear_objective, monotone_weights, multiplier_size, slate_bound,
)
from solvers.codes import DIV_NONE, MAX_COUNT, MIN_COUNT, RELAX_CONFLICT
from solvers.evaluate import evaluate
from solvers.exact import exact_unsupported
from solvers.greedy import constraint_ranks, solve_greedy_evaluated
from solvers.problem import ConstraintTable, Evaluation, SlateProblem, SolveResult

log = logging.getLogger(__name__)

#: Time kept back from the budget for reporting and encoding the answer.
SAFETY_S = 0.0008
#: Below this much time left, an exact solve is not started (model building alone takes ~1 ms).
MIN_EXACT_S = 0.002
#: Share of the time left that the exact solver is given (the rest absorbs overheads).
EXACT_SHARE = 0.7
#: Relative tolerance for "the objective reaches the bound".
TOL = 1e-9
#: Relative gap at which the greedy answer's own bound proves it optimal: the MIP's optimality
#: gap (solvers.exact.highs_mip.MIP_REL_GAP), so that both mean the same by "optimal".
CERT_TOL = 1e-7
#: Subgradient steps of the greedy answer's Lagrangian bound (solvers.bound; ~5-10 us each at
#: N=1000, K=20; the steps stop early once the bound meets the greedy objective) when more than
#: BOUND_FULL_S is left in auto / exact mode, else (greedy mode, short budgets, answers that do
#: not come from `solve`) BOUND_STEPS_SHORT.
BOUND_STEPS = 40
BOUND_STEPS_SHORT = 8
BOUND_FULL_S = 0.005  # 40 steps take <= ~2 ms even where each costs ~50 us
#: Time the greedy answer's bound may take: BOUND_SHARE of the time left, at most BOUND_MAX_S
#: (BOUND_MAX_S_FULL with the full step count). A subgradient step costs ~25 us at N=1000, K=20
#: but ~340 us at K=50 with a window (the assignment grows with N x K): unboxed, 8 steps took
#: 2.7 ms of a greedy answer whose greedy took 0.1 ms.
BOUND_SHARE = 0.1
#: ... and with the full step count (auto / exact mode, more than BOUND_FULL_S left): a bound that
#: proves the greedy optimal saves the whole exact solve, and at a 10 ms budget the MIP rarely
#: proves anything in what is left anyway (bench_certify --only budget: mixed family proven at
#: 10 ms 77 % with 0.1, see RESULTS for 0.2).
BOUND_SHARE_FULL = 0.2
BOUND_MAX_S = 0.0003
BOUND_MAX_S_FULL = 0.002
#: In greedy mode, above this many candidate-position-position units (N x K x K) not even one
#: step fits BOUND_MAX_S: the answer keeps the sort bound.
BOUND_GREEDY_MAX_UNITS = 1_500_000
#: Greedy mode plans its steps from the problem's size, not from a clock, so that the same
#: request gets the same bytes in every process (the serving process, its heavy worker, a
#: replay): a step costs about max(STEP_NS_NL * N * L, STEP_NS_NLL * N * L * L) ns, the first
#: one FIRST_STEP_S more (set-up), measured on windowed rules, the costliest kind
#: (`python -m benchmarks.bench_certify --only steps`). Only when the answer's whole budget
#: (`solve`'s budget_s: the budget_ms the answer reports) is GREEDY_PLAN_MIN_LEFT_S or less does
#: the clock decide, as in the other modes. Not the time left: that depends on how fast the
#: process got there (a heavy worker at nice +10 on a loaded machine can spend the whole 10 ms
#: budget before the bound), and deciding on it gave the heavy and the in-thread lane different
#: bounds for the same request.
STEP_NS_NL = 2.6
STEP_NS_NLL = 0.11
FIRST_STEP_S = 30e-6
GREEDY_PLAN_MIN_LEFT_S = 0.003


def planned_steps(n: int, length: int, steps: int, time_s: float) -> int:
    """Subgradient steps that fit `time_s` by the cost model above (at least 1, at most
    `steps`)."""
    step_s = max(STEP_NS_NL * n * length, STEP_NS_NLL * n * length * length) * 1e-9
    if step_s <= 0:
        return max(1, steps)
    return int(max(1, min(steps, 1 + (time_s - FIRST_STEP_S - step_s) // step_s)))


def _greedy_bound(problem: SlateProblem, relaxed: np.ndarray, incumbent: float, sort_bound: float,
                  steps: int, time_s: float, greedy_mode: bool, sort_only: bool = False,
                  planned: bool = False) -> SlateBound:
    """`solvers.bound.slate_bound` within about `time_s`: one step, timed, then as many more as
    that step's time says fit (warm-started from its multipliers); the best bound of the two.
    `planned` (greedy mode with time to spare): the steps that fit by `planned_steps`' cost
    model, no clock, so the bound is a function of the request alone.
    `sort_only` (the policy's `solver.bound: sort`): the sort bound, wherever it is valid."""
    L = problem.length
    too_big = greedy_mode and problem.n * L * L > BOUND_GREEDY_MAX_UNITS
    if (sort_only or too_big) and math.isfinite(sort_bound) and monotone_weights(problem.position_weight):
        return SlateBound(sort_bound, "sort", sort_bound, math.nan)  # valid: monotone weights
    mu = np.zeros(multiplier_size(problem, bounded_rows(problem, relaxed)), dtype=np.float64)
    if planned:
        return slate_bound(problem, relaxed=relaxed, incumbent=incumbent,
                           steps=planned_steps(problem.n, L, steps, time_s), mu=mu,
                           sort_bound=sort_bound)
    t0 = time.perf_counter()
    best = slate_bound(problem, relaxed=relaxed, incumbent=incumbent, steps=1, mu=mu,
                       sort_bound=sort_bound)
    spent = time.perf_counter() - t0
    more = min(steps - 1, int((time_s - spent) / spent)) if spent > 0 else steps - 1
    if more > 0 and best.method == "lagrangian" and best.value > incumbent + CERT_TOL * max(1.0, abs(incumbent)):
        nxt = slate_bound(problem, relaxed=relaxed, incumbent=incumbent, steps=more, mu=mu,
                          sort_bound=sort_bound)
        if nxt.method in ("lagrangian", "sort") and nxt.value < best.value:
            best = dataclasses.replace(nxt, steps=best.steps + nxt.steps)
    return best


@dataclass
class Outcome:
    """What `solve` answers: the winning slate and how good it is."""

    result: SolveResult  # the winning slate
    objective: float
    bound: float  # NaN when unknown
    status: str  # optimal | feasible | relaxed
    elapsed_us: dict[str, float] = field(default_factory=dict)
    conflicts: list[list[int]] = field(default_factory=list)  # minimal conflicting rule sets
    # what the exact solver said when it ran (optimal, feasible, timeout, infeasible, relaxed,
    # error); "skipped: <reason>" when the mode asked for it but solvers.exact.exact_unsupported
    # refused the problem; "" when it was not asked for or not needed (greedy mode, a provably
    # optimal greedy slate, too little budget left)
    exact_status: str = ""
    evaluation: Evaluation | None = None  # of `result.slate` against the problem solved
    # how `bound` was obtained: "lagrangian" / "sort" (solvers.bound.slate_bound on the rules the
    # greedy kept), "sort (fallback: <why>)" when the Lagrangian failed, "exact" from the MIP
    bound_method: str = ""


def greedy_is_optimal(problem: SlateProblem) -> bool:
    """Whether the greedy slate is provably optimal, so that no exact solve is needed.

    True for non-increasing weights >= 0 and no similarity diversity, with either no rules or
    only hard whole-slate caps on one attribute (a partition matroid, on which greedy is
    optimal). Plain Python on short lists: the arrays are small and numpy's per-call overhead
    is not.

    Parameters
    ----------
    problem : SlateProblem
        The compiled problem.

    Returns
    -------
    bool
        True when the greedy slate is optimal (False means "not known to be").
    """
    if problem.div_mode != DIV_NONE:
        return False
    t = problem.constraints
    if t.n:
        L = problem.length
        attrs = t.attr.tolist()
        if not (all(k == MAX_COUNT for k in t.kind.tolist()) and all(t.hard.tolist())
                and min(t.top.tolist()) >= L and attrs.count(attrs[0]) == len(attrs)):
            return False
    return monotone_weights(problem.position_weight)


def _tighter(a: float, b: float) -> bool:
    """Whether bound a is finite and tighter than b (b NaN / inf counts as no bound)."""
    return math.isfinite(a) and not a >= b


def _relax_key(result: SolveResult, rank: np.ndarray) -> tuple:
    """Smaller is better: the most important rule relaxed first, then how many were."""
    ranks = sorted((int(rank[c]) for c in np.flatnonzero(result.relaxed)), reverse=True)
    return tuple(ranks)


def solve(problem: SlateProblem, *, mode: str, deadline: float, bound: str = "lagrangian",
          budget_s: float | None = None) -> Outcome:
    """Greedy, then (mode auto/exact, time permitting) the exact MIP warm-started from it.

    The exact solve is skipped in greedy mode, for an empty slate, when
    `solvers.exact.exact_unsupported` gives a reason (the outcome's exact_status is then
    ``"skipped: <reason>"``), when the greedy slate is provably optimal or reaches the sorting
    bound, and when less than MIN_EXACT_S is left. An exact solver failure is logged and the
    greedy slate stands (exact_status "error").

    Parameters
    ----------
    problem : SlateProblem
        The compiled problem.
    mode : str
        A solver mode of `solvers.codes.SOLVER_MODES` ("greedy", "auto", "exact").
    deadline : float
        The `time.perf_counter()` instant the answer is due; the exact solver gets
        EXACT_SHARE of what is left after SAFETY_S.
    bound : str, default "lagrangian"
        The policy's `solver.bound`: "lagrangian" (the greedy answer's bound from
        `solvers.bound`, time-boxed) or "sort" (the sort bound the greedy kernel gives for free,
        where it is valid: a looser certificate, ~0.1-0.2 ms less per call at N=1000, K=20).
    budget_s : float, optional
        The answer's whole budget in seconds (the caller's budget_ms / 1000). In greedy mode the
        bound's steps are planned from the problem's size when it is over
        GREEDY_PLAN_MIN_LEFT_S, however little of it is left: the answer is then a function of
        the problem and the budget alone. Default: the time left when `solve` is called.

    Returns
    -------
    Outcome
        The best valid slate found (hard rules relaxed first by importance, then objective),
        its objective, bound, status and timings.
    """
    elapsed: dict[str, float] = {}
    t0 = time.perf_counter()
    # the kernel's sort bound comes free, and the evaluation of the slate in the same call
    greedy, sort_bound, g_ev = solve_greedy_evaluated(problem)
    t1 = time.perf_counter()
    elapsed["solve_greedy"] = (t1 - t0) * 1e6  # (with the evaluation of its slate)
    g_obj = g_ev.objective
    relaxed = greedy.status == "relaxed"
    # a valid bound for the greedy answer (on the rules it kept), within microseconds: the
    # Lagrangian of the linear rules, non-linear terms bounded by constants (solvers.bound)
    t_b = time.perf_counter()
    # greedy mode (no exact solve for the bound to save) and short budgets take fewer steps
    full = mode != "greedy" and deadline - t_b > BOUND_FULL_S
    # greedy mode: planned from the budget, never from the time left (see GREEDY_PLAN_MIN_LEFT_S)
    planned = mode == "greedy" and (deadline - t0 if budget_s is None else budget_s) > GREEDY_PLAN_MIN_LEFT_S
    lag = _greedy_bound(problem, greedy.relaxed, linear_objective(problem, g_ev), sort_bound,
                        BOUND_STEPS if full else BOUND_STEPS_SHORT,
                        BOUND_MAX_S if planned else
                        min((BOUND_SHARE_FULL if full else BOUND_SHARE) * max(deadline - t_b, 0.0),
                            BOUND_MAX_S_FULL if full else BOUND_MAX_S),
                        greedy_mode=mode == "greedy", sort_only=bound == "sort", planned=planned)
    elapsed["bound"] = (time.perf_counter() - t_b) * 1e6
    g_bound = lag.value if math.isfinite(lag.value) else math.nan

    def greedy_outcome(bound: float, exact_status: str = "", method: str = lag.method) -> Outcome:
        if not relaxed and (g_obj >= bound - CERT_TOL * max(1.0, abs(bound)) or greedy_is_optimal(problem)):
            return Outcome(greedy, g_obj, max(bound, g_obj), "optimal", elapsed,
                           exact_status=exact_status, evaluation=g_ev, bound_method=method)
        return Outcome(greedy, g_obj, bound if not relaxed else g_bound,
                       "relaxed" if relaxed else "feasible", elapsed, exact_status=exact_status,
                       evaluation=g_ev, bound_method=method)

    if mode == "greedy" or problem.length == 0:
        return greedy_outcome(g_bound)
    unsupported = exact_unsupported(problem)
    if unsupported is not None:
        return greedy_outcome(g_bound, f"skipped: {unsupported}")
    if not relaxed and (g_obj >= g_bound - CERT_TOL * max(1.0, abs(g_bound)) or greedy_is_optimal(problem)):
        return greedy_outcome(g_bound)
    left = deadline - time.perf_counter() - SAFETY_S
    if left < MIN_EXACT_S:
        return greedy_outcome(g_bound)

    from solvers.exact import solve_mip  # imported lazily: greedy-only users never load HiGHS

    t2 = time.perf_counter()
    try:
        # HiGHS honours its limit, but model building and the final evaluation come on top: keep
        # a proportional margin so the answer lands inside the budget under load too
        exact = solve_mip(problem, time_limit_s=left * EXACT_SHARE, hint=greedy.slate, relax=True)
    except Exception:  # noqa: BLE001 - an exact solver failure must never fail the request
        log.exception("exact solver failed; answering with the greedy slate")
        elapsed["solve_exact"] = (time.perf_counter() - t2) * 1e6
        return greedy_outcome(g_bound, "error")
    elapsed["solve_exact"] = (time.perf_counter() - t2) * 1e6

    if exact.status not in ("optimal", "feasible", "relaxed"):
        # timeout / infeasible without a usable slate: the greedy stands; a bound from the exact
        # solve applies only when both looked at the same rules (greedy relaxed nothing)
        bound, method = g_bound, lag.method
        if not relaxed and exact.status == "timeout" and _tighter(exact.bound, g_bound):
            bound, method = exact.bound, "exact"
        return greedy_outcome(bound, exact.status, method)

    e_ev = evaluate(problem, exact.slate)
    e_obj = e_ev.objective
    rank = constraint_ranks(problem.constraints.priority)
    e_key, g_key = _relax_key(exact, rank), _relax_key(greedy, rank)
    exact_wins = e_key < g_key or (e_key == g_key and e_obj > g_obj + TOL * max(1.0, abs(g_obj)))
    conflicts = [list(c) for c in exact.conflicts]
    if not exact_wins:
        out = greedy_outcome(g_bound, exact.status)
        if not relaxed and math.isfinite(exact.bound) and e_key == g_key:
            if _tighter(exact.bound, g_bound):
                out.bound_method = "exact"
                out.bound = max(exact.bound, g_obj)
            if out.bound <= g_obj + TOL * max(1.0, abs(g_obj)) and exact.status == "optimal":
                out.status = "optimal"
        out.conflicts = conflicts
        return out
    exact_relaxed = bool(exact.relaxed.any())
    bound, method = (exact.bound, "exact") if math.isfinite(exact.bound) else (g_bound, lag.method)
    if not exact_relaxed and not relaxed and _tighter(g_bound, bound):
        bound, method = g_bound, lag.method  # both honour the same rules: the tighter one
    if exact_relaxed:
        status = "relaxed"
    elif exact.status == "optimal":
        status = "optimal"
    else:
        status = "feasible"
    return Outcome(exact, e_obj, max(bound, e_obj), status, elapsed, conflicts, exact.status, e_ev,
                   method)


def answer_bound(problem: SlateProblem, result: SolveResult,
                 evaluation: Evaluation) -> tuple[float, str]:
    """The bound and its method for a slate that did not come from `solve` (a sampled fair
    ranking, an exploration draw): `solvers.bound.slate_bound` on the rules the slate kept.

    Parameters
    ----------
    problem : SlateProblem
        The problem the slate answers.
    result : SolveResult
        The slate and the hard rules it relaxed.
    evaluation : Evaluation
        `evaluate(problem, result.slate)`.

    Returns
    -------
    bound : float
        >= every slate meeting the hard rules `result` kept (NaN when none could be computed),
        and >= the slate's objective.
    method : str
        As `Outcome.bound_method`.
    """
    b = slate_bound(problem, relaxed=result.relaxed,
                    incumbent=linear_objective(problem, evaluation), steps=BOUND_STEPS_SHORT)
    if not math.isfinite(b.value):
        return math.nan, b.method
    return max(b.value, evaluation.objective), b.method


#: Why `search_conflicts` could not settle whether the greedy's relaxations are true conflicts
#: (each depends on the time left, so on the process's speed: the answer says which).
UNSETTLED_EXACT_TIMEOUT = ("the conflict search was not run: the exact solve ran out of its share of "
                           "the budget on these rules")
UNSETTLED_NO_TIME = "the conflict search was not run: too little of the budget was left"
UNSETTLED_TIMEOUT = "the conflict search ran out of time"
UNSETTLED_FAILED = "the conflict search failed"


def search_conflicts(problem: SlateProblem, outcome: Outcome, *,
                     deadline: float) -> tuple[list[list[int]], str]:
    """`explain_conflicts`, and why the search did not settle, when it did not.

    Returns
    -------
    conflicts : list of list of int
        As `explain_conflicts`.
    unsettled : str
        "" when the conflicts are settled (found, the rules proven feasible together, or no
        search needed); else why not, one of the UNSETTLED_* texts: the greedy's conflict
        relaxations then stand unexplained, and a larger budget may explain them.
    """
    if outcome.conflicts or not outcome.result.relaxed.any():
        return outcome.conflicts, ""
    if not np.any(outcome.result.relax_reason == RELAX_CONFLICT):
        return [], ""
    if outcome.exact_status == "timeout":
        # the search decides the whole rule set with the same MIP first: when the exact solve
        # just ran out of its share of this budget on it, the rest of the budget cannot do it
        # either (it used to try, and answered milliseconds late)
        return [], UNSETTLED_EXACT_TIMEOUT
    left = deadline - time.perf_counter() - SAFETY_S
    if left < MIN_EXACT_S:
        return [], UNSETTLED_NO_TIME
    # imported lazily: greedy-only users never load HiGHS or OR-Tools
    from solvers.exact import ConflictSearchTimeout, find_conflict

    try:
        core = find_conflict(problem, time_limit_s=left)
    except ConflictSearchTimeout:
        return [], UNSETTLED_TIMEOUT
    except Exception:  # noqa: BLE001 - a failed explanation must never fail the request
        log.exception("conflict search failed")
        return [], UNSETTLED_FAILED
    return ([core] if core else []), ""


def explain_conflicts(problem: SlateProblem, outcome: Outcome, *, deadline: float) -> list[list[int]]:
    """Minimal conflicting rule sets behind the relaxations of `outcome`, if time allows.

    The greedy relaxes a rule when it cannot place a candidate; whether the rules truly conflict
    (rather than the greedy having painted itself into a corner) is settled here: the HiGHS MIP
    decides the whole rule set, then CP-SAT finds a minimal conflict
    (`solvers.exact.find_conflict`, which decides with the MIP first). `search_conflicts` also
    says why, when the search could not settle it.

    Parameters
    ----------
    problem : SlateProblem
        The problem `outcome` answers (soft terms and diversity are ignored by the search).
    outcome : Outcome
        The answer of `solve`; its own conflicts (from an exact relaxation) are returned as they
        are.
    deadline : float
        The `time.perf_counter()` instant the answer is due.

    Returns
    -------
    list of list of int
        Sorted constraint-table rows of each minimal conflict; empty when the greedy relaxed
        nothing for a conflict, the rules are feasible together, time ran out or the search
        failed (logged).
    """
    return search_conflicts(problem, outcome, deadline=deadline)[0]


__all__ = ["Outcome", "solve", "explain_conflicts", "search_conflicts", "greedy_is_optimal",
           "answer_bound"]


def warmup() -> None:
    """Load the exact solvers' modules and run each once on a tiny problem, so that the first
    real request does not pay for imports (HiGHS, OR-Tools) or first-call set-up."""
    # imported here on purpose: loading HiGHS and OR-Tools is what this warm-up is for
    from solvers.bound import warmup as bound_warmup
    from solvers.exact import find_conflict, solve_mip

    bound_warmup()

    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    table = ConstraintTable.from_rows([dict(kind=MAX_COUNT, attr=0, bound=1),
                                       dict(kind=MIN_COUNT, attr=0, value=1, bound=1)], length=2)
    problem = SlateProblem(utility=np.array([3.0, 2.0, 1.0]), position_weight=np.array([1.0, 0.5]),
                           codes=np.array([[0, 0, 1]], dtype=np.int64), n_values=i64(2),
                           constraints=table, active=np.ones(2, dtype=np.bool_),
                           pre_reason=np.zeros(2, dtype=np.int64))
    solve_mip(problem, time_limit_s=1.0, hint=None)
    find_conflict(problem, time_limit_s=1.0)
