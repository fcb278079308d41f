"""The engine: policies in, slates out. Compile -> solve -> report, under the caller's budget."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine import exposure, portfolio
from engine.compile import CompiledPolicy, compile_policy
from engine.decide import PolicyVersion, decide
from engine.errors import FieldIssue, PolicyInvalid, PolicyNotFound, Unavailable
from engine.experiment_store import ExperimentStore
from engine.ledger import InProcessLedger, Ledger, ledger_from_url
from engine.policy_loader import LoadedPolicy, PolicyStore, parse_policy_text
from engine.types import PolicyInfo, RerankRequest, RerankResult
from engine.validate import Limits, validate_request_scalars, work_units
from engine.versions import PolicyVersions
from engine.warmup_request import warmup_request
from solvers.greedy import warmup as warmup_greedy

if TYPE_CHECKING:  # pyarrow loads only when a decision log is configured
    from engine.decision_log import DecisionLog

log = logging.getLogger(__name__)


class Engine:
    """Serving around the pure request path (`engine.decide.decide`): the policy store and its
    versions, the compiled-policy cache, the exposure ledger. Thread-safe: `rerank` may be
    called from many threads at once."""

    #: compiled policy versions kept (live, experiment variants, previews, replays)
    compiled_cache_size = 64

    def __init__(self, store: PolicyStore, *, limits: Limits | None = None,
                 policies_dir: str | None = None, ledger: Ledger | None = None,
                 experiments: ExperimentStore | None = None,
                 decision_log: "DecisionLog | None" = None):
        self.store = store
        #: where served decisions are logged (engine.decision_log); None: not logged
        self.decision_log = decision_log
        #: where ReportOutcomes goes (engine.decision_log.outcome_log); None: refused
        self.outcome_log = None
        self.decision_log_source: str | None = None  # the log's folder or URL (what previews read)
        #: the A/B/n experiments splitting policy names (engine.experiment_store); empty: none
        self.experiments = experiments if experiments is not None else ExperimentStore()
        self.limits = limits or Limits()
        self.policies_dir = policies_dir
        self.ledger: Ledger = ledger if ledger is not None else InProcessLedger()
        #: every revision of every policy this engine has loaded, by (name, digest)
        self.versions = PolicyVersions(store)
        self._compiled: OrderedDict[tuple[str, str], CompiledPolicy] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_directory(cls, policies_dir: str, *, limits: Limits | None = None,
                       ledger_url: str | None = None, settle_s: float = 0.0,
                       state_dir: str | None = None,
                       experiments_dir: str | None = None) -> "Engine":
        """`ledger_url`: None / "memory://" (in-process, the default) or "redis://host:port/db"
        (shared by every replica) for the exposure ledger of amortized fairness rules.
        `settle_s`: load a file only once it has stopped changing for that long (0: as it is).
        `state_dir`: keep every file's last good version there, and serve it for a file that is
        invalid at start-up (None: off). Rejected files are logged by the store.
        `experiments_dir`: a folder of experiment files splitting policy names into variants
        (None: no experiments); checked against the loaded policies, reloaded with them."""
        store = PolicyStore.from_directory(policies_dir, settle_s=settle_s, state_dir=state_dir)
        experiments = ExperimentStore(experiments_dir)
        experiments.reload([lp.name for lp in store.list()])
        return cls(store, limits=limits, policies_dir=policies_dir, ledger=ledger_from_url(ledger_url),
                   experiments=experiments)

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

    def report_outcomes(self, outcomes) -> tuple[int, int]:
        """Queue OutcomeRecords (engine.decision_log) for the outcome log: (accepted, dropped).
        Raises Unavailable when the engine keeps no outcome log."""
        if self.outcome_log is None:
            raise Unavailable("no outcome log: start the server with --decision-log DIR to keep "
                              "outcomes beside the decisions")
        accepted = sum(bool(self.outcome_log.offer(o)) for o in outcomes)
        return accepted, len(outcomes) - accepted

    def close(self) -> None:
        """Release what lives outside the process: the decision log writes what is queued
        (bounded; what it cannot write is counted and logged), the exposure ledger writes what it
        still holds (each write bounded by its timeout; what cannot be written is logged) and
        disconnects. Rerank calls after close still answer (the ledger answers locally; the
        closed log drops and counts)."""
        for log_ in (self.decision_log, self.outcome_log):
            if log_ is not None:
                log_.close()
        self.ledger.close()

    def reload(self, settle_s: float = 0.0) -> list[PolicyInvalid]:
        """Re-read the policy folder; an invalid file never replaces a valid loaded version.
        `settle_s`: wait for files being written (see PolicyStore.reload); what the reload did
        is in `self.store.last_report`."""
        if self.policies_dir is None:
            return []
        self.versions.keep_live()  # the revisions being replaced stay reachable by digest
        errors = self.store.reload_directory(self.policies_dir, settle_s=settle_s)
        self.versions.keep_live()
        if self.experiments.folder is not None:
            self.experiments.reload([lp.name for lp in self.store.list()])
        return errors

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
    def version(self, name: str, digest: str | None = None) -> PolicyVersion:
        """A policy version, compiled: the live one of `name`, or the revision with `digest`
        (any revision this process has loaded: see `versions`). Raises PolicyNotFound."""
        loaded = self.store.get(name) if digest is None else self.versions.get(name, digest)
        return PolicyVersion(loaded, self._compiled_policy(loaded))

    def _compiled_policy(self, loaded: LoadedPolicy) -> CompiledPolicy:
        key = (loaded.policy.name, loaded.digest)
        cp = self._compiled.get(key)
        if cp is None:
            cp = compile_policy(loaded.policy, loaded.source if loaded.source != "<text>" else "")
            with self._lock:
                self._compiled[key] = cp
                self._compiled.move_to_end(key)
                while len(self._compiled) > self.compiled_cache_size:
                    self._compiled.popitem(last=False)  # the least recently compiled version
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
        validate_request_scalars(req, self.limits)  # before the look-up: its errors come first
        assignment = None
        if loaded is None:
            loaded = self.store.get(req.policy)
            assignment = self.experiments.assign(req.policy, req.user_id, req.request_id)
            if assignment is not None and assignment.policy != req.policy:
                try:
                    loaded = self.store.get(assignment.policy)
                except PolicyNotFound:  # the variant's policy went away: the called one serves
                    log.warning("experiment variant's policy not loaded; serving the policy called",
                                extra={"experiment": assignment.experiment,
                                       "variant": assignment.variant, "policy": assignment.policy})
                    assignment = None
        version = PolicyVersion(loaded, cp if cp is not None else self._compiled_policy(loaded))
        snapshots = {ns: self.ledger.snapshot(ns) for ns in version.ledger_namespaces()}
        decision = decide(version, req, limits=self.limits, snapshots=snapshots, t_start_ns=t_start,
                          assignment=assignment, scalars_checked=True)
        if record:
            for namespace, deltas in decision.deltas.items():
                self.ledger.record(namespace, deltas)
            log_ = self.decision_log
            p = decision.result.propensities
            if log_ is not None and log_.should_log(req.request_id, exploration=p is not None):
                options = {}
                if assignment is not None:
                    options.update(experiment=assignment.experiment, variant=assignment.variant,
                                   bucket=assignment.bucket, holdout=assignment.holdout)
                if p is not None:
                    options.update(seed=p.seed, joint=p.joint, cascade=p.cascade,
                                   marginal=p.marginal, marginal_samples=p.marginal_samples)
                log_.offer_decision(req, decision, **options)
        return decision.result


__all__ = ["Engine", "Limits"]
