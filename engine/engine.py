"""The engine: policies in, slates out. Compile -> solve -> report, under the caller's budget."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace


from engine.compile import (
    Compiled,
    CompiledPolicy,
    compile_policy,
    compile_request,
    slate_position_weights,
    request_utility,
)
from engine.errors import FieldIssue, PolicyInvalid
from engine.policy_loader import LoadedPolicy, PolicyStore, parse_policy_text
from engine import exposure, portfolio
from engine.amortized import (
    boosts, clip_boosts, exposure_deltas, merit_by_group, normalised_merit, request_scale,
)
from engine.ledger import InProcessLedger, Ledger, ledger_from_url
from engine.report import conflict_text, constraint_reports, gap, slate_items
from engine.types import ConflictReport, ExposureLPReport, PolicyInfo, RerankRequest, RerankResult
from engine.validate import Limits, validate_candidates, validate_request_scalars, work_units
from engine.warmup_request import warmup_request
from solvers.evaluate import evaluate, objective_upper_bound_unconstrained
from solvers.greedy import solve_greedy
from solvers.greedy import warmup as warmup_greedy
from solvers.problem import SolveResult

log = logging.getLogger(__name__)

#: Kept back from the caller's deadline for the trip back (encode, network).
DEADLINE_MARGIN_MS = 1.0


def _us(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1000.0


class Engine:
    """Thread-safe: `rerank` may be called from many threads at once."""

    def __init__(self, store: PolicyStore, *, limits: Limits | None = None,
                 policies_dir: str | None = None, ledger: Ledger | None = None):
        self.store = store
        self.limits = limits or Limits()
        self.policies_dir = policies_dir
        self.ledger: Ledger = ledger if ledger is not None else InProcessLedger()
        self._compiled: dict[tuple[str, str], CompiledPolicy] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_directory(cls, policies_dir: str, *, limits: Limits | None = None,
                       ledger_url: str | None = None, settle_s: float = 0.0,
                       state_dir: str | None = None) -> "Engine":
        """`ledger_url`: None / "memory://" (in-process, the default) or "redis://host:port/db"
        (shared by every replica) for the exposure ledger of amortized fairness rules.
        `settle_s`: load a file only once it has stopped changing for that long (0: as it is).
        `state_dir`: keep every file's last good version there, and serve it for a file that is
        invalid at start-up (None: off). Rejected files are logged by the store."""
        store = PolicyStore.from_directory(policies_dir, settle_s=settle_s, state_dir=state_dir)
        return cls(store, limits=limits, policies_dir=policies_dir, ledger=ledger_from_url(ledger_url))

    # ---------------------------------------------------------------- lifecycle
    def warmup(self, progress: Callable[[str, int, int, float], None] | None = None) -> None:
        """Compile every kernel any loaded policy can reach, so that no first request pays for
        Numba compilation: the solver kernels on canned problems, then, per policy, synthetic
        requests through the whole request path (every rule, diversity with embeddings, calibration
        targets, explain on and off, each solver mode the policy can use), answered but never
        recorded in the exposure ledger. `progress(step, i, n, seconds so far)` is called before
        each step (the server logs it)."""
        t0 = time.perf_counter()
        policies = self.store.list()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("greedy kernels", warmup_greedy), ("exact solvers", portfolio.warmup)]
        for loaded in policies:
            steps.append((f"policy {loaded.name}", lambda loaded=loaded: self.warmup_policy(loaded)))
        for i, (name, step) in enumerate(steps, start=1):
            if progress is not None:
                progress(name, i, len(steps), time.perf_counter() - t0)
            step()
        log.info("warm-up done", extra={"seconds": round(time.perf_counter() - t0, 3),
                                        "policies": len(policies)})

    def warmup_policy(self, loaded: LoadedPolicy) -> None:
        """Run synthetic requests of one policy version through the request path (see warmup);
        nothing is recorded in the ledger. Errors are logged, never raised: a warm-up must not
        keep a valid policy from serving."""
        cp = self._compiled_policy(loaded)
        lp = loaded.policy.exposure.lp if loaded.policy.exposure else None
        if lp is not None:
            exposure.warmup(lp.top_m, min(lp.top_m, loaded.policy.slate_size), lp.criterion)
        for mode in ("greedy", "exact"):  # a request may ask for either, whatever the policy's mode
            for explain in (False, True):
                req = warmup_request(loaded.policy, mode, explain)
                try:
                    self._rerank(req, loaded, cp, record=False)
                except Exception:  # noqa: BLE001 - logged; the real requests will say what is wrong
                    log.warning("warm-up request failed", exc_info=True,
                                extra={"policy": loaded.name, "solver": mode, "explain": explain})

    def close(self) -> None:
        """Release what lives outside the process: the exposure ledger writes what it still
        holds (each write bounded by its timeout; what cannot be written is logged) and
        disconnects. Rerank calls after close still answer (the ledger answers locally)."""
        self.ledger.close()

    def reload(self, settle_s: float = 0.0) -> list[PolicyInvalid]:
        """Re-read the policy folder; an invalid file never replaces a valid loaded version.
        `settle_s`: wait for files being written (see PolicyStore.reload); what the reload did
        is in `self.store.last_report`."""
        if self.policies_dir is None:
            return []
        return self.store.reload_directory(self.policies_dir, settle_s=settle_s)

    def list_policies(self) -> list[PolicyInfo]:
        """Live policies, each with the state of its file on disk now (digest, invalid, first error)."""
        out = []
        for lp in self.store.list():
            p = lp.policy
            status = self.store.file_status(lp.source)
            error = status.error if status is not None else None
            out.append(PolicyInfo(p.name, p.version, lp.source, lp.digest, p.slate_size,
                                  p.solver.mode, p.solver.budget_ms,
                                  [c.name for c in p.constraints], p.description,
                                  file_digest=status.digest if status is not None else "",
                                  file_invalid=error is not None,
                                  file_error=str(error.issues[0]) if error is not None and error.issues else "",
                                  last_good=lp.last_good))
        return out

    def validate_policy_text(self, text: str, source: str = "<text>") -> list[FieldIssue]:
        try:
            parse_policy_text(text, source)
        except PolicyInvalid as e:
            return list(e.issues)
        return []

    # ---------------------------------------------------------------- the request path
    def _compiled_policy(self, loaded: LoadedPolicy) -> CompiledPolicy:
        key = (loaded.policy.name, loaded.digest)
        cp = self._compiled.get(key)
        if cp is None:
            cp = compile_policy(loaded.policy, loaded.source if loaded.source != "<text>" else "")
            with self._lock:
                # drop older versions of the same policy
                for k in [k for k in self._compiled if k[0] == key[0]]:
                    del self._compiled[k]
                self._compiled[key] = cp
        return cp

    def estimate_work(self, policy: str, n: int, slate_size: int = 0, explain: bool = False,
                      dim: int = 0) -> int:
        """How much solving a request asks for, in work units (admission control; see
        `engine.validate.work_units`), from its size alone. Raises PolicyNotFound."""
        return work_units(self.store.get(policy).policy, n, slate_size, explain, dim)

    def rerank(self, req: RerankRequest) -> RerankResult:
        return self._rerank(req)

    def _rerank(self, req: RerankRequest, loaded: LoadedPolicy | None = None,
                cp: CompiledPolicy | None = None, record: bool = True) -> RerankResult:
        """`loaded` / `cp`: a policy version to use instead of the store's live one (warm-up);
        `record`: add the answer's exposure to the ledger."""
        t_start = time.perf_counter_ns()
        validate_request_scalars(req, self.limits)
        if loaded is None:
            loaded = self.store.get(req.policy)
        validate_candidates(req.candidates, self.limits)
        if cp is None:
            cp = self._compiled_policy(loaded)
        amortized = loaded.policy.exposure.amortized if loaded.policy.exposure else []
        if amortized:
            utility_all = request_utility(cp, req)
            group_boosts = self._exposure_boosts(loaded.policy.name, amortized,
                                                 *request_scale(utility_all, slate_position_weights(cp, req)))
            compiled = compile_request(cp, req, group_boosts, utility_all=utility_all)
        else:
            group_boosts = None
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
        if lp_out is not None and lp_out.problem is not None:
            # the sampled fair ranking, within the hard rules: greedy on the steered utilities,
            # reported against the policy's own objective
            outcome = portfolio.solve(lp_out.problem, mode="greedy", deadline=deadline)
            outcome.evaluation = evaluate(problem, outcome.result.slate)  # the policy's objective
            outcome.objective = outcome.evaluation.objective
            outcome.bound = objective_upper_bound_unconstrained(problem)
            outcome.status = "relaxed" if outcome.result.relaxed.any() else "feasible"
        else:
            outcome = portfolio.solve(problem, mode=mode, deadline=deadline)
        result = outcome.result
        if mode != "greedy" or req.explain:
            outcome.conflicts = portfolio.explain_conflicts(problem, outcome, deadline=deadline)
        t_solved = time.perf_counter_ns()
        elapsed.update(outcome.elapsed_us)
        elapsed["solve"] = (t_solved - t_compiled) / 1000.0

        ev = outcome.evaluation  # computed by the portfolio for the winning slate
        bound = outcome.bound
        status = outcome.status
        costs = self._rule_costs(compiled, result, ev.objective) if req.explain else None
        report = constraint_reports(cp, compiled, result, ev, costs, outcome.conflicts)
        items = slate_items(compiled, result.slate, req.candidates.item_ids,
                            req.candidates.scores, req.explain)
        if amortized and record:
            self._record_exposure(loaded.policy.name, amortized, compiled, req, result.slate)
        elapsed["report"] = _us(t_solved)
        elapsed["engine_total"] = _us(t_start)
        return RerankResult(
            items=items, policy=loaded.policy.name, policy_version=loaded.policy.version,
            solver=result.solver, status=status, objective=ev.objective, bound=bound,
            gap=gap(ev.objective, bound), constraints=report, elapsed_us=elapsed,
            budget_ms=budget_ms, exact_status=outcome.exact_status,
            boosts={f"{attr}={value}": b for attr, by_value in (group_boosts or {}).items()
                    for value, b in by_value.items()},
            exposure_lp=None if lp_out is None else ExposureLPReport(
                lp_out.status, lp_out.objective, lp_out.expected_exposure, lp_out.solve_ms),
            conflicts=[ConflictReport(sorted({cp.names[compiled.rows[r].owner] for r in core},
                                             key=cp.names.index),
                                      conflict_text(cp, compiled, sorted(core)))
                       for core in outcome.conflicts],
            eligible=problem.n, request_id=req.request_id,
        )

    # ---------------------------------------------------------------- exposure across requests
    def _exposure_boosts(self, policy: str, rules, scale: float, spread: float) -> dict[str, dict[str, float]]:
        """Utility boost per attribute value from the ledger (summed over rules on one attribute),
        in this request's utility units (`scale`, see engine.amortized.request_scale) and clipped
        to its utility `spread` (engine.amortized.clip_boosts)."""
        out: dict[str, dict[str, float]] = {}
        for rule in rules:
            snap = self.ledger.snapshot(f"{policy}/{rule.name}")
            for group, b in boosts(snap, rule.target, rule.gain, utility_scale=scale).items():
                if b:
                    by_value = out.setdefault(rule.attribute, {})
                    by_value[group] = by_value.get(group, 0.0) + b
        return {attr: clip_boosts(by_value, spread, scale) for attr, by_value in out.items()}

    def _record_exposure(self, policy: str, rules, compiled: Compiled, req: RerankRequest,
                         slate) -> None:
        """Add this answer's exposure (position weights) and merit (utility before boosts, in
        exposure units: see engine.amortized.normalised_merit), so that no request adds more
        than its slate's exposure to either total."""
        u = compiled.problem.utility - (compiled.boost if compiled.boost is not None else 0.0)
        pw = compiled.problem.position_weight
        for rule in rules:
            attr = req.candidates.attributes[rule.attribute]
            codes = attr.codes[compiled.index]
            merit = merit_by_group(codes, attr.dictionary, u) if rule.target is None else None
            groups = [attr.dictionary[c] for c in codes[slate].tolist()]
            deltas = exposure_deltas(groups, pw[: len(groups)], u[slate], candidate_merit=merit)
            self.ledger.record(f"{policy}/{rule.name}", normalised_merit(deltas))

    @staticmethod
    def _rule_costs(compiled: Compiled, result: SolveResult, objective: float) -> dict[int, float]:
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


__all__ = ["Engine", "Limits"]
