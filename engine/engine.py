"""The engine: policies in, slates out. Compile -> solve -> report, under the caller's budget."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

import numpy as np

from engine.compile import CompiledPolicy, compile_policy, compile_request
from engine.errors import FieldIssue, PolicyInvalid
from engine.policy_loader import LoadedPolicy, PolicyStore, parse_policy_text
from engine import portfolio
from engine.report import conflict_text, constraint_reports, gap, slate_items
from engine.types import ConflictReport, PolicyInfo, RerankRequest, RerankResult
from engine.validate import Limits, validate_candidates, validate_request_scalars
from solvers.evaluate import evaluate
from solvers.greedy import solve_greedy
from solvers.greedy import warmup as warmup_greedy
from solvers.problem import SlateProblem, SolveResult

log = logging.getLogger(__name__)

#: Kept back from the caller's deadline for the trip back (encode, network).
DEADLINE_MARGIN_MS = 1.0


def _us(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1000.0


class Engine:
    """Thread-safe: `rerank` may be called from many threads at once."""

    def __init__(self, store: PolicyStore, *, limits: Limits | None = None,
                 policies_dir: str | None = None):
        self.store = store
        self.limits = limits or Limits()
        self.policies_dir = policies_dir
        self._compiled: dict[tuple[str, str], CompiledPolicy] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_directory(cls, policies_dir: str, *, limits: Limits | None = None) -> "Engine":
        store = PolicyStore.from_directory(policies_dir)
        for err in store.errors:
            log.error("policy rejected", extra={"source": err.source, "error": str(err)})
        return cls(store, limits=limits, policies_dir=policies_dir)

    # ---------------------------------------------------------------- lifecycle
    def warmup(self) -> None:
        """Compile every kernel and every loaded policy, so the first request is fast."""
        t0 = time.perf_counter()
        warmup_greedy()
        portfolio.warmup()
        for loaded in self.store.list():
            self._compiled_policy(loaded)
        log.info("warm-up done", extra={"seconds": round(time.perf_counter() - t0, 3)})

    def reload(self) -> list[PolicyInvalid]:
        """Re-read the policy folder; an invalid file never replaces a valid loaded version."""
        if self.policies_dir is None:
            return []
        return self.store.reload_directory(self.policies_dir)

    def list_policies(self) -> list[PolicyInfo]:
        out = []
        for lp in self.store.list():
            p = lp.policy
            out.append(PolicyInfo(p.name, p.version, lp.source, lp.digest, p.slate_size,
                                  p.solver.mode, p.solver.budget_ms,
                                  [c.name for c in p.constraints], p.description))
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
            cp = compile_policy(loaded.policy)
            with self._lock:
                # drop older versions of the same policy
                for k in [k for k in self._compiled if k[0] == key[0]]:
                    del self._compiled[k]
                self._compiled[key] = cp
        return cp

    def rerank(self, req: RerankRequest) -> RerankResult:
        t_start = time.perf_counter_ns()
        validate_request_scalars(req, self.limits)
        loaded = self.store.get(req.policy)
        validate_candidates(req.candidates, self.limits)
        cp = self._compiled_policy(loaded)
        compiled = compile_request(cp, req)
        problem = compiled.problem
        t_compiled = time.perf_counter_ns()
        elapsed = {"compile": (t_compiled - t_start) / 1000.0}

        mode = req.solver or loaded.policy.solver.mode
        budget_ms = req.budget_ms or loaded.policy.solver.budget_ms
        if req.deadline_ms is not None:
            budget_ms = min(budget_ms, max(req.deadline_ms - DEADLINE_MARGIN_MS, 0.0))
        deadline = t_start / 1e9 + budget_ms / 1000.0  # perf_counter seconds
        outcome = portfolio.solve(problem, mode=mode, deadline=deadline)
        result = outcome.result
        if mode != "greedy" or req.explain:
            outcome.conflicts = portfolio.explain_conflicts(problem, outcome, deadline=deadline)
        t_solved = time.perf_counter_ns()
        elapsed.update(outcome.elapsed_us)
        elapsed["solve"] = (t_solved - t_compiled) / 1000.0

        ev = evaluate(problem, result.slate)
        bound = outcome.bound
        status = outcome.status
        costs = self._rule_costs(problem, result, ev.objective) if req.explain else None
        report = constraint_reports(cp, compiled, result, ev, costs, outcome.conflicts)
        items = slate_items(compiled, result.slate, req.candidates.item_ids,
                            req.candidates.scores, req.explain)
        elapsed["report"] = _us(t_solved)
        elapsed["engine_total"] = _us(t_start)
        return RerankResult(
            items=items, policy=loaded.policy.name, policy_version=loaded.policy.version,
            solver=result.solver, status=status, objective=ev.objective, bound=bound,
            gap=gap(ev.objective, bound), constraints=report, elapsed_us=elapsed,
            budget_ms=budget_ms, exact_status=outcome.exact_status,
            conflicts=[ConflictReport([cp.names[k] for k in sorted(core)], conflict_text(cp, sorted(core)))
                       for core in outcome.conflicts],
            eligible=problem.n, request_id=req.request_id,
        )

    @staticmethod
    def _rule_costs(problem: SlateProblem, result: SolveResult, objective: float) -> dict[int, float]:
        """What each rule costs: objective of the greedy slate without the rule minus this
        answer's objective (a greedy estimate; it can be slightly negative)."""
        t = problem.constraints
        costs: dict[int, float] = {}
        for j in range(t.n):
            if t.hard[j]:
                if result.relaxed[j]:
                    costs[j] = 0.0
                    continue
                active = problem.active.copy()
                active[j] = False
                variant = replace(problem, active=active)
            else:
                penalty = t.penalty.copy()
                penalty[j] = 0.0
                variant = replace(problem, constraints=replace(t, penalty=penalty))
            alt = solve_greedy(variant, active=variant.active)
            costs[j] = evaluate(variant, alt.slate).objective - objective
        return costs


__all__ = ["Engine", "Limits"]
