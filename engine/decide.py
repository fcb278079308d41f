"""The request path as one pure function: (policy version, request, exposure state) -> decision.

`decide` compiles the request against one compiled policy version, solves it under the budget
and reports the answer, and returns what the answer adds to the exposure ledger instead of
writing it. It does no I/O and keeps no state between calls: serving (`engine.engine.Engine`),
replay, preview, Pareto sweeps and simulation all call it, and none of them repeats it. The
`Engine` around it owns the policy store, the compiled-policy cache and the ledger: it reads the
ledger's snapshots before the call and records the returned deltas after it.

What makes a decision:
- the policy version (`PolicyVersion`: a validated policy, its content digest and its compiled
  form);
- the request;
- the exposure state of the policy's amortized rules: either the ledger snapshots
  (`snapshots`, namespace -> group -> (exposure, merit)), from which the boosts are computed in
  this request's utility units, or the boosts themselves (`boosts`, attribute -> value -> boost,
  as `Decision.boosts` reports them), which a replay passes to reproduce a logged answer.

Same inputs, same slate: the greedy is deterministic, the exposure LP samples with a seed drawn
from the policy and request ids. (An exact solve stopped by its time limit may differ between
runs: its incumbent depends on the time it had.)
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from engine import exposure, portfolio
from engine.amortized import (
    boosts as ledger_boosts, clip_boosts, exposure_deltas, merit_by_group, normalised_merit,
    request_scale,
)
from engine.compile import (
    Compiled, CompiledPolicy, compile_request, request_utility, slate_position_weights,
)
from engine.policy_loader import LoadedPolicy
from engine.report import conflict_text, constraint_reports, gap, gap_kind, slate_items
from engine.experiments import Assignment
from engine.types import (
    ConflictReport, ExperimentReport, ExposureLPReport, Propensities, RerankRequest, RerankResult,
)
from engine.validate import Limits, validate_candidates, validate_request_scalars
from solvers.codes import EXPLORE_EPSILON, EXPLORE_NAMES
from solvers.evaluate import evaluate
from solvers.greedy import solve_greedy
from solvers.problem import SolveResult

#: Kept back from the caller's deadline for the trip back (encode, network).
DEADLINE_MARGIN_MS = 1.0
#: The epsilon scheme's `top_m` when the policy gives none.
EPSILON_TOP_M = 10

#: group -> (cumulative exposure, cumulative merit), as `engine.ledger.Ledger.snapshot` returns.
Snapshot = Mapping[str, tuple[float, float]]
#: attribute -> value -> additive utility boost (this request's utility units).
Boosts = dict[str, dict[str, float]]


@dataclass(frozen=True)
class PolicyVersion:
    """One revision of a policy: validated, identified by the digest of its bytes, compiled."""

    loaded: LoadedPolicy
    compiled: CompiledPolicy

    @property
    def name(self) -> str:
        return self.loaded.policy.name

    @property
    def digest(self) -> str:
        return self.loaded.digest

    def ledger_namespaces(self) -> list[str]:
        """The ledger namespaces of the policy's amortized rules (`name/rule`), whose snapshots
        `decide` needs; empty when the policy has none."""
        return [ledger_namespace(self.name, rule.name) for rule in _amortized(self.loaded)]


@dataclass(frozen=True)
class Decision:
    """What `decide` returns: the answer, and what it adds to the exposure ledger."""

    result: RerankResult
    #: ledger namespace -> group -> (exposure, merit) to add, merit in exposure units; empty when
    #: the policy has no amortized rule.
    deltas: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    #: the boosts the answer was computed with (None: the policy has no amortized rule); passing
    #: them back as `decide(..., boosts=)` reproduces the answer without the ledger.
    boosts: Boosts | None = None


def ledger_namespace(policy: str, rule: str) -> str:
    return f"{policy}/{rule}"


def _amortized(loaded: LoadedPolicy):
    return loaded.policy.exposure.amortized if loaded.policy.exposure else []


def _us(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1000.0


def exposure_boosts(version: PolicyVersion, snapshots: Mapping[str, Snapshot], scale: float,
                    spread: float) -> Boosts:
    """Utility boost per attribute value from the ledger snapshots (summed over the rules on one
    attribute), in this request's utility units (`scale`, see engine.amortized.request_scale) and
    clipped to its utility `spread` (engine.amortized.clip_boosts)."""
    out: Boosts = {}
    for rule in _amortized(version.loaded):
        snap = snapshots.get(ledger_namespace(version.name, rule.name), {})
        for group, b in ledger_boosts(snap, rule.target, rule.gain, utility_scale=scale).items():
            if b:
                by_value = out.setdefault(rule.attribute, {})
                by_value[group] = by_value.get(group, 0.0) + b
    return {attr: clip_boosts(by_value, spread, scale) for attr, by_value in out.items()}


def decide(version: PolicyVersion, req: RerankRequest, *, limits: Limits,
           snapshots: Mapping[str, Snapshot] | None = None, boosts: Boosts | None = None,
           t_start_ns: int | None = None, assignment: Assignment | None = None,
           scalars_checked: bool = False) -> Decision:
    """Answer one request with one policy version; no I/O, no state.

    Parameters
    ----------
    version : PolicyVersion
        The policy revision to answer with (`req.policy` is not looked up: the caller chose it).
    req : RerankRequest
        The request; validated here against `limits` (InvalidRequest names the field).
    limits : Limits
        Request size limits.
    snapshots : mapping, optional
        Ledger snapshots of `version.ledger_namespaces()` (missing ones count as empty). Used
        only when the policy has amortized rules and `boosts` is not given.
    boosts : dict, optional
        The boosts to apply instead of computing them from `snapshots` (a replay of a logged
        decision passes `Decision.boosts`).
    t_start_ns : int, optional
        `time.perf_counter_ns()` when the call began (the budget counts from it); default now.
    assignment : engine.experiments.Assignment, optional
        The experiment variant the caller chose `version` for; reported in the result.
    scalars_checked : bool, default False
        The caller has run `validate_request_scalars(req, limits)` already (the Engine does,
        before its policy look-up); the candidates are validated here either way.

    Returns
    -------
    Decision
        The result, the exposure deltas to record, and the boosts used.
    """
    t_start = time.perf_counter_ns() if t_start_ns is None else t_start_ns
    if not scalars_checked:
        validate_request_scalars(req, limits)
    validate_candidates(req.candidates, limits)
    loaded, cp = version.loaded, version.compiled
    amortized = _amortized(loaded)
    if amortized:
        utility_all = request_utility(cp, req)
        if boosts is None:
            boosts = exposure_boosts(version, snapshots or {},
                                     *request_scale(utility_all, slate_position_weights(cp, req)))
        compiled = compile_request(cp, req, boosts, utility_all=utility_all)
    else:
        boosts = None
        compiled = compile_request(cp, req)
    problem = compiled.problem
    t_compiled = time.perf_counter_ns()
    elapsed = {"compile": (t_compiled - t_start) / 1000.0}

    mode = req.solver or loaded.policy.solver.mode
    budget_ms = req.budget_ms or loaded.policy.solver.budget_ms
    if req.deadline_ms is not None:
        budget_ms = min(budget_ms, max(req.deadline_ms - DEADLINE_MARGIN_MS, 0.0))
    deadline = t_start / 1e9 + budget_ms / 1000.0  # perf_counter seconds
    lp_out = None
    lp_rule = loaded.policy.exposure.lp if loaded.policy.exposure else None
    if lp_rule is not None:
        attr = req.candidates.attributes[lp_rule.attribute]
        lp_out = exposure.apply(lp_rule, problem, attr.codes[compiled.index], attr.dictionary,
                                f"{loaded.policy.name}/{loaded.policy.version}/{req.user_id}/{req.request_id}",
                                deadline)
    propensities = None
    exploring = loaded.policy.exploration
    if exploring is not None and (lp_out is None or lp_out.problem is None):
        outcome, propensities = _explore(exploring, problem, exploration_seed(req, version.digest))
    elif lp_out is not None and lp_out.problem is not None:
        # the sampled fair ranking, within the hard rules: greedy on the steered utilities,
        # reported against the policy's own objective
        outcome = portfolio.solve(lp_out.problem, mode="greedy", deadline=deadline,
                                  budget_s=budget_ms / 1000.0)
        outcome.evaluation = evaluate(problem, outcome.result.slate)  # the policy's objective
        outcome.objective = outcome.evaluation.objective
        outcome.bound, outcome.bound_method = portfolio.answer_bound(problem, outcome.result,
                                                                     outcome.evaluation)
        outcome.status = "relaxed" if outcome.result.relaxed.any() else "feasible"
    else:
        outcome = portfolio.solve(problem, mode=mode, deadline=deadline, bound=loaded.policy.solver.bound,
                                  budget_s=budget_ms / 1000.0)
    result = outcome.result
    unsettled = ""  # why the conflict search could not settle the greedy's relaxations
    if mode != "greedy" or req.explain:
        outcome.conflicts, unsettled = portfolio.search_conflicts(problem, outcome, deadline=deadline)
    t_solved = time.perf_counter_ns()
    elapsed.update(outcome.elapsed_us)
    elapsed["solve"] = (t_solved - t_compiled) / 1000.0

    ev = outcome.evaluation  # computed by the portfolio for the winning slate
    costs = rule_costs(compiled, result, ev.objective) if req.explain else None
    # asked to explain: a relaxation the search did not settle says so (it depends on the time
    # the search had, so on the process's speed)
    report = constraint_reports(cp, compiled, result, ev, costs, outcome.conflicts,
                                unsettled if req.explain else "")
    items = slate_items(compiled, result.slate, req.candidates.item_ids,
                        req.candidates.scores, req.explain)
    deltas = ({ledger_namespace(version.name, rule.name): slate_exposure(rule, compiled, req, result.slate)
               for rule in amortized} if amortized else {})
    elapsed["report"] = _us(t_solved)
    elapsed["engine_total"] = _us(t_start)
    return Decision(RerankResult(
        items=items, policy=loaded.policy.name, policy_version=loaded.policy.version,
        policy_digest=version.digest,
        solver=result.solver, status=outcome.status, objective=ev.objective, bound=outcome.bound,
        gap=gap(ev.objective, outcome.bound), constraints=report, elapsed_us=elapsed,
        gap_kind=gap_kind(ev.objective, outcome.bound), bound_method=outcome.bound_method,
        budget_ms=budget_ms, exact_status=outcome.exact_status,
        boosts={f"{attr}={value}": b for attr, by_value in (boosts or {}).items()
                for value, b in by_value.items()},
        exposure_lp=None if lp_out is None else ExposureLPReport(
            lp_out.status, lp_out.objective, lp_out.expected_exposure, lp_out.solve_ms),
        conflicts=[ConflictReport(sorted({cp.names[compiled.rows[r].owner] for r in core},
                                         key=cp.names.index),
                                  conflict_text(cp, compiled, sorted(core)))
                   for core in outcome.conflicts],
        eligible=problem.n, request_id=req.request_id,
        propensities=propensities,
        experiment=None if assignment is None else ExperimentReport(
            assignment.experiment, assignment.variant, assignment.bucket, assignment.holdout,
            assignment.layer, assignment.layer_bucket, assignment.unit),
    ), deltas, boosts)


def exploration_seed(req: RerankRequest, digest: str) -> int:
    """The seed of an exploration draw: the first 8 bytes (big-endian) of
    sha256(request id, 0x1F, policy digest), so a replay of the request with the same policy
    revision draws the same slate. A request without an id is keyed by its item ids instead."""
    key = req.request_id or "\x00" + "\x1e".join(req.candidates.item_ids)
    raw = f"{key}\x1f{digest}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big")


def _explore(ex, problem, seed: int):
    """The portfolio's Outcome for an exploration policy: a drawn slate that keeps every hard rule
    (solvers.explore), scored against the policy's objective, and its propensities."""
    # imported here: the exploration kernels compile when imported (explicit signatures), and
    # only a server with an exploration policy needs them (its warm-up request gets here)
    from solvers.explore import marginals, sample_slate

    scheme = EXPLORE_NAMES.index(ex.scheme)
    top_m = ex.top_m if ex.top_m is not None else (EPSILON_TOP_M if scheme == EXPLORE_EPSILON else None)
    options = dict(scheme=scheme, epsilon=ex.epsilon or 0.0, top_m=top_m, temperature=ex.temperature)
    drawn = sample_slate(problem, seed=seed, **options)
    result = SolveResult(drawn.slate, drawn.relaxed, drawn.relax_reason, drawn.relax_position,
                         f"explore_{ex.scheme}", drawn.status)
    ev = evaluate(problem, drawn.slate)
    outcome = portfolio.Outcome(result, ev.objective, math.nan, drawn.status, evaluation=ev)
    outcome.bound, outcome.bound_method = portfolio.answer_bound(problem, result, ev)
    marginal = stderr = None
    samples = 0
    if ex.marginal_samples and problem.length:
        m = marginals(problem, drawn.slate, samples=ex.marginal_samples, seed=seed, **options)
        marginal, stderr, samples = tuple(m.prob.tolist()), tuple(m.stderr.tolist()), m.samples
    return outcome, Propensities(seed, ex.scheme, float(drawn.joint), tuple(drawn.cascade.tolist()),
                                 marginal, samples, stderr)


def slate_exposure(rule, compiled: Compiled, req: RerankRequest, slate) -> dict[str, tuple[float, float]]:
    """What one answer adds to one amortized rule's namespace: exposure (position weights) and
    merit (utility before boosts, in exposure units: see engine.amortized.normalised_merit), so
    that no request adds more than its slate's exposure to either total."""
    u = compiled.problem.utility - (compiled.boost if compiled.boost is not None else 0.0)
    pw = compiled.problem.position_weight
    attr = req.candidates.attributes[rule.attribute]
    codes = attr.codes[compiled.index]
    merit = merit_by_group(codes, attr.dictionary, u) if rule.target is None else None
    groups = [attr.dictionary[c] for c in codes[slate].tolist()]
    deltas = exposure_deltas(groups, pw[: len(groups)], u[slate], candidate_merit=merit)
    return normalised_merit(deltas)


def rule_costs(compiled: Compiled, result: SolveResult, objective: float) -> dict[int, float]:
    """What each policy rule costs: objective of the greedy slate without the rule minus this
    answer's objective (a greedy estimate; it can be slightly negative)."""
    problem = compiled.problem
    t = problem.constraints
    costs: dict[int, float] = {}
    for j, rows in enumerate(compiled.rule_rows):
        if not rows:
            continue
        rows = list(rows)
        if t.hard[rows[0]]:
            if result.relaxed[rows].any():
                costs[j] = 0.0
                continue
            active = problem.active.copy()
            active[rows] = False
            variant = replace(problem, active=active)
        else:
            penalty = t.penalty.copy()
            penalty[rows] = 0.0
            variant = replace(problem, constraints=replace(t, penalty=penalty))
        alt = solve_greedy(variant, active=variant.active)
        costs[j] = evaluate(variant, alt.slate).objective - objective
    return costs


__all__ = ["Decision", "PolicyVersion", "decide", "exposure_boosts", "ledger_namespace"]
