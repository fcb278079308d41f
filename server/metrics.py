"""Prometheus metrics: what the server did, per policy, solver and outcome.

One `ServerMetrics` per process, with its own `CollectorRegistry` (tests can build several).
The servicer calls `observe_ok` / `observe_error` after every Rerank (and every batch entry);
label children are bound once per (policy, solver, status) and cached, so a call costs a dict
lookup, one histogram observe and one counter increment.

Policy reloads (from `server.watch.PolicyWatcher`) and ledger counters (from
`engine.ledger.stats`) are read at scrape time by custom collectors: nothing is pushed.

With several worker processes (`reranker serve --processes N`) every worker serves its own
registry on its own port, `metrics_port + worker index`; scrape each one.

Label cardinality is bounded: a policy name enters a label only once it served a request (so a
flood of requests naming unknown policies all count under `policy="_unknown"`).
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9464
UNKNOWN_POLICY = "_unknown"
NO_SOLVER = "none"
# Seconds; the interesting range is 0.1 ms (a small greedy slate) to 50 ms (an exact solve).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                   0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25)


STEP_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                0.005, 0.01)


class ServerMetrics:
    """The server's metric families and the cached label children the servicer updates."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        labels = ("policy", "solver", "status")
        self.requests = Counter("reranker_requests", "Rerank calls (batch entries included), by "
                                "policy, solver and outcome (slate status, or the gRPC code name)",
                                labels, registry=self.registry)
        self.latency = Histogram("reranker_request_seconds", "Server-side time per Rerank "
                                 "(decode to encode), by policy, solver and outcome",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.relaxations = Counter("reranker_relaxations", "Hard rules given up in a served slate",
                                   ("policy", "rule"), registry=self.registry)
        self.exact = Counter("reranker_exact_solver", "Exact-solver outcomes (RerankResult.exact_status)",
                             ("policy", "outcome"), registry=self.registry)
        self.errors = Counter("reranker_errors", "Failed calls by method and gRPC status code",
                              ("method", "code"), registry=self.registry)
        self.variants = Counter("reranker_experiment_requests", "Rerank calls served by an "
                                "experiment variant (the policy label is the variant's policy)",
                                ("experiment", "variant", "status"), registry=self.registry)
        self.variant_latency = Histogram("reranker_experiment_request_seconds", "Server-side time "
                                         "per Rerank served by an experiment variant",
                                         ("experiment", "variant"), buckets=LATENCY_BUCKETS,
                                         registry=self.registry)
        self.steps = Histogram("reranker_call_step_seconds", "Time of the steps of a Rerank call "
                               "that happen after its response is built (serialize: gRPC's "
                               "serialization of it; send: handing it, the status and trailers to "
                               "gRPC's transport); the steps before are in each response's "
                               "diagnostics.elapsed_us", ("step",), buckets=STEP_BUCKETS,
                               registry=self.registry)
        self._step_children = {s: self.steps.labels(s) for s in ("serialize", "send")}
        self._children: dict[tuple[str, str, str], tuple] = {}
        self._known_policies: set[str] = set()
        self._lock = threading.Lock()

    # -------------------------------------------------------------------------- recording

    def _child(self, policy: str, solver: str, status: str) -> tuple:
        key = (policy, solver, status)
        pair = self._children.get(key)
        if pair is None:
            with self._lock:
                pair = self._children.get(key)
                if pair is None:
                    pair = (self.requests.labels(*key), self.latency.labels(*key))
                    self._children[key] = pair
        return pair

    def observe_ok(self, result, seconds: float) -> None:
        """A served slate: `result` is the engine's RerankResult."""
        policy = result.policy
        if policy not in self._known_policies:
            self._known_policies.add(policy)
        count, hist = self._child(policy, result.solver, result.status)
        count.inc()
        hist.observe(seconds)
        for c in result.constraints:
            if c.relaxed:
                self.relaxations.labels(policy, c.name).inc()
        e = getattr(result, "experiment", None)
        if e is not None:  # names come from validated experiment files: bounded label values
            self.variants.labels(e.experiment, e.variant, result.status).inc()
            self.variant_latency.labels(e.experiment, e.variant).observe(seconds)
        if result.exact_status:  # "skipped: <reason>" counts as "skipped" (bounded label values)
            self.exact.labels(policy, result.exact_status.split(":", 1)[0]).inc()

    def observe_steps(self, serialize_s: float, send_s: float) -> None:
        """The steps of an answered call after its response was built (server.callclock)."""
        self._step_children["serialize"].observe(serialize_s)
        self._step_children["send"].observe(send_s)

    def observe_error(self, method: str, policy: str, code_name: str, seconds: float) -> None:
        """A refused or failed call; `code_name` as grpc.StatusCode.X.name (e.g. INVALID_ARGUMENT)."""
        label = policy if policy in self._known_policies else UNKNOWN_POLICY
        count, hist = self._child(label, NO_SOLVER, code_name.lower())
        count.inc()
        hist.observe(seconds)
        self.errors.labels(method, code_name).inc()

    # ------------------------------------------------------------------------ collectors

    def watch_reloads(self, watcher) -> None:
        """Expose `watcher.reloads` / `watcher.rejected` (a server.watch.PolicyWatcher)."""
        self.registry.register(_WatcherCollector(watcher))

    def watch_ledger(self, engine) -> None:
        """Expose `engine.ledger.stats` (outages, errors, queued, flushed, ...) if it has them."""
        self.registry.register(_LedgerCollector(engine))

    def watch_decision_log(self, decision_log) -> None:
        """Expose an engine.decision_log.DecisionLog's counts (written, dropped by reason, ...)."""
        self.registry.register(_DecisionLogCollector(decision_log))

    def watch_admission(self, admission) -> None:
        """Expose a server.admission.Admission's counts (shed calls by reason, heavy-lane calls)."""
        self.registry.register(_AdmissionCollector(admission))

    def watch_heavy(self, heavy) -> None:
        """Expose a server.heavy.HeavyWorker's state (up, restarts, forwarded, unavailable)."""
        self.registry.register(_HeavyCollector(heavy))

    def serve_http(self, port: int, host: str = DEFAULT_METRICS_HOST):
        """Serve /metrics on host:port (0 = any free port); returns (http server, bound port)."""
        httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        return httpd, httpd.server_address[1]


class _DecisionLogCollector:
    def __init__(self, decision_log) -> None:
        self._log = decision_log

    def describe(self):
        return []

    def collect(self):
        s = self._log.stats
        written = CounterMetricFamily("reranker_decision_log_written", "Decision records the log's sink accepted")
        written.add_metric([], float(s.written))
        dropped = CounterMetricFamily("reranker_decision_log_dropped", "Decision records lost, by "
                                      "reason (queue full, log closed, unconvertible, unwritten "
                                      "at close, lost by the sink)", labels=["reason"])
        for reason in ("full", "closed", "invalid", "unwritten", "sink"):
            dropped.add_metric([reason], float(getattr(s, f"dropped_{reason}")))
        errors = CounterMetricFamily("reranker_decision_log_write_errors", "Failed decision-log sink calls (retried)")
        errors.add_metric([], float(s.write_errors))
        queued = GaugeMetricFamily("reranker_decision_log_queued", "Decision records waiting to be written")
        queued.add_metric([], float(s.queued))
        return [written, dropped, errors, queued]


class _WatcherCollector:
    def __init__(self, watcher) -> None:
        self._watcher = watcher

    def describe(self):
        return []

    def collect(self):
        reloads = CounterMetricFamily("reranker_policy_reloads", "Policy folder reloads that ran")
        reloads.add_metric([], float(getattr(self._watcher, "reloads", 0)))
        rejected = CounterMetricFamily("reranker_policy_reloads_rejected",
                                       "Invalid policy files seen by a reload (the previous version stayed live)")
        rejected.add_metric([], float(getattr(self._watcher, "rejected", 0)))
        unloaded = CounterMetricFamily("reranker_policies_unloaded", "Policies unloaded because "
                                       "their file was deleted or renamed (or now names another policy)")
        unloaded.add_metric([], float(getattr(self._watcher, "unloaded", 0)))
        return [reloads, rejected, unloaded]


_LEDGER_FIELDS = ("outages", "errors", "queued", "flushed", "duplicates", "rejected", "ignored",
                  "data_lost")
_LEDGER_HELP = {
    "rejected": "Exposure ledger: deltas dropped as non-finite, too large or not numbers",
    "ignored": "Exposure ledger: stored totals read back non-finite or implausibly large, read as 0",
    "data_lost": "Exposure ledger: namespaces Redis lost (restart without persistence, flush); "
                 "their cumulative exposure restarted from zero",
}


class _LedgerCollector:
    def __init__(self, engine) -> None:
        self._engine = engine

    def describe(self):
        return []

    def collect(self):
        ledger = getattr(self._engine, "ledger", None)
        stats = getattr(ledger, "stats", None) if ledger is not None else None
        if stats is None:
            return []
        out = []
        for name in _LEDGER_FIELDS:
            if hasattr(stats, name):
                fam = CounterMetricFamily(f"reranker_ledger_{name}", _LEDGER_HELP.get(
                    name, f"Exposure ledger: {name}") + f" (engine.ledger.stats.{name})")
                fam.add_metric([], float(getattr(stats, name)))
                out.append(fam)
        healthy = getattr(ledger, "healthy", None)
        if healthy is not None:
            up = GaugeMetricFamily("reranker_ledger_healthy", "1 when the ledger backend is reachable")
            up.add_metric([], 1.0 if (healthy() if callable(healthy) else healthy) else 0.0)
            out.append(up)
        return out


class _AdmissionCollector:
    def __init__(self, admission) -> None:
        self._admission = admission

    def describe(self):
        return []

    def collect(self):
        shed = CounterMetricFamily("reranker_shed", "Calls shed or refused by admission control, by "
                                   "reason (deadline_in_queue: expired while waiting for a handler "
                                   "thread; cancelled_in_queue: the client gave up meanwhile; "
                                   "queue_full: refused, --max-queue calls already waited; "
                                   "batch_too_large; work_too_large; heavy_lane_busy)",
                                   labels=("reason",))
        for reason, n in self._admission.shed.items():
            shed.add_metric([reason], float(n))
        heavy = CounterMetricFamily("reranker_heavy_lane_calls", "Calls that ran in the heavy lane")
        heavy.add_metric([], float(self._admission.heavy_calls))
        waiting = GaugeMetricFamily("reranker_queued_calls", "Calls waiting for a handler thread "
                                    "now (reranker serve --max-queue bounds them)")
        waiting.add_metric([], float(getattr(self._admission, "waiting", 0)))
        return [shed, heavy, waiting]


class _HeavyCollector:
    """The heavy worker process as its serving process sees it (its own calls are counted by
    its own /metrics, on this port + server.heavy.HEAVY_METRICS_PORT_OFFSET)."""

    def __init__(self, heavy) -> None:
        self._heavy = heavy

    def describe(self):
        return []

    def collect(self):
        h = self._heavy
        up = GaugeMetricFamily("reranker_heavy_worker_up", "1 while this process's heavy worker "
                               "process serves (--heavy-lane process)")
        up.add_metric([], 1.0 if h.serving else 0.0)
        restarts = CounterMetricFamily("reranker_heavy_worker_restarts", "Heavy worker processes "
                                       "restarted after they died")
        restarts.add_metric([], float(h.restarts))
        forwarded = CounterMetricFamily("reranker_heavy_lane_forwarded", "Heavy calls forwarded to "
                                        "the heavy worker process (whatever it answered)")
        forwarded.add_metric([], float(h.forwarded))
        unavailable = CounterMetricFamily("reranker_heavy_lane_unavailable", "Heavy calls refused "
                                          "UNAVAILABLE: no heavy worker process was serving")
        unavailable.add_metric([], float(h.unavailable))
        return [up, restarts, forwarded, unavailable]
