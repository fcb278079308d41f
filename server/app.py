"""Server assembly: `create_server` (bind, do not start) and `serve` (one process, run until a
signal). Several processes on one port: `server.supervisor.serve_processes`, which runs `serve`
in each worker.

Nothing starts on import.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server import callclock, convert
from server._gen.reranker.v1 import reranker_pb2 as pb
from server.metrics import DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT, ServerMetrics
from server.servicer import SERVICE_NAME, WORKER_PID_METADATA_KEY, RerankerServicer
from server.startup import import_kernels, process_started_ago_s

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Handler threads per process. Two, not more: the handlers are mostly Python, so extra threads
# only take turns on the GIL, and under load that turn-taking shows in the tail (open loop at
# half of max throughput, N=1000, 2 processes: p99 7.2 ms with 8 threads, 4.1-4.8 ms with 1 or 2).
# The second thread keeps a process answering while the first waits on an exact solver, which
# runs without the GIL.
DEFAULT_MAX_WORKERS = 2
DEFAULT_GRACE_S = 5.0
# Clients' connections are closed at this age (plus grpc's +-10 % jitter) so that a restarted
# worker gets its share again within about a minute; calls in flight get as long again.
DEFAULT_MAX_CONNECTION_AGE_S = 30.0
# Where heavy calls run (serve --heavy-lane): a process of its own (server.heavy), or this one.
HEAVY_LANES = ("process", "thread")
HEAVY_READY_WAIT_S = 600.0  # SERVING waits this long at most for the heavy worker's warm-up
NO_HEAVY_LANE = 1 << 62  # a heavy worker's heavy_work / heavy_bytes: its own lane never engages
# Services whose health is reported: "" is the server as a whole.
HEALTH_SERVICES = ("", SERVICE_NAME)


class BindError(RuntimeError):
    """The server could not listen on the address (in use, bad host, no permission)."""


def add_servicer(servicer, server: grpc.Server) -> None:
    """Register `reranker.v1.Reranker` like the generated add_RerankerServicer_to_server, but
    parse requests ourselves: bytes that are not a valid message get INVALID_ARGUMENT naming the
    message type, instead of grpc's own INTERNAL "Exception deserializing request!"."""
    service = pb.DESCRIPTOR.services_by_name["Reranker"]
    handlers = {}
    for method in service.methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        lane = method.name in ("Rerank", "RerankBatch")
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _parsing(getattr(servicer, method.name), request_cls, pass_raw=lane,
                     admission=getattr(servicer, "admission", None) if lane else None,
                     forward=getattr(servicer, "forward_unparsed", None) if lane else None,
                     parse=_LANE_PARSERS.get(method.name)),
            request_deserializer=None,  # raw bytes: parsed in _parsing
            response_serializer=_serializer(response_cls),
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


#: the lane's parsers: the wire kernels read the Candidates (server.convert's lite parse)
_LANE_PARSERS = {"Rerank": convert.parse_rerank, "RerankBatch": convert.parse_rerank_batch}


def _serializer(response_cls):
    """The response serializer: a message is serialized, bytes (a reply relayed from the heavy
    worker, server.heavy) are sent as they are."""
    serialize = response_cls.SerializeToString
    perf = time.perf_counter_ns

    def serializer(response) -> bytes:
        if isinstance(response, bytes):
            return response
        clock = callclock.current()
        if clock is None:
            return serialize(response)
        clock.serialized_from = perf()
        out = serialize(response)
        clock.serialized_to = perf()
        return out

    return serializer


def _parsing(behaviour, request_cls, pass_raw: bool = False, admission=None, forward=None, parse=None):
    """`parse(raw)`: the request's parser (default `request_cls.FromString`; Rerank's is
    convert.parse_rerank, whose lite parse leaves the Candidates to the wire kernels); it raises
    DecodeError as FromString does. `pass_raw`: also hand the request's bytes to `behaviour`
    (keyword `raw`), whose decoder reads the large columns straight from them.
    `forward(method, raw, context)`: with the heavy lane in a process of its own, a message over
    admission's heavy_bytes goes there unparsed (the servicer's forward_unparsed decides whether
    it may: None when the lane is in-thread)."""
    from google.protobuf.message import DecodeError

    name = request_cls.DESCRIPTOR.full_name
    method = getattr(behaviour, "__name__", name)

    perf = time.perf_counter_ns
    if parse is None:
        parse = request_cls.FromString

    def handle(raw: bytes, context: grpc.ServicerContext):
        _dispatched.started = True  # see _ShedCountingPool: this call reached its handler
        clock = callclock.current()
        if clock is not None:
            clock.handled = perf()
        if admission is not None and len(raw) > admission.limits.heavy_bytes and forward is not None:
            handled = forward(method, raw, context)  # None: the lane runs in this process
            if handled is not None:
                return handled
        if admission is not None and len(raw) > admission.limits.heavy_bytes and admission.lane_busy:
            admission.count_shed("heavy_lane_busy")
            if admission.error_observer is not None:
                admission.error_observer(getattr(behaviour, "__name__", name), "RESOURCE_EXHAUSTED")
            context.set_trailing_metadata(((WORKER_PID_METADATA_KEY, str(os.getpid())),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"heavy lane busy: a message of {len(raw):,} bytes runs only while no other "
                          f"heavy request runs on this server process (over "
                          f"{admission.limits.heavy_bytes:,} bytes, or "
                          f"{admission.limits.heavy_work:,} work units); retry with backoff, or send "
                          "a smaller request")
        try:
            request = parse(raw)
        except DecodeError as exc:
            context.set_trailing_metadata(((WORKER_PID_METADATA_KEY, str(os.getpid())),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"request: not a valid {name} message (protobuf: {exc})")
        if clock is not None:
            clock.parsed = perf()
        if pass_raw:
            return behaviour(request, context, raw=raw)
        return behaviour(request, context)

    handle.reranker_method = getattr(behaviour, "__name__", name)  # marks handlers whose queue drops are counted
    return handle


_dispatched = threading.local()


class _ShedCountingPool(futures.ThreadPoolExecutor):
    """The server's handler pool, counting the calls that never reached their handler, and
    refusing calls at once when too many already wait (admission `max_queue`).

    grpc's sync server queues each call for this pool; when the call's deadline passes (or the
    client cancels) while it waits, grpc drops it without calling the handler, so the servicer
    never sees it. This pool notices: a task for one of our methods that ends without the
    handler having started is counted in the admission stats (reason `deadline_in_queue`, or
    `cancelled_in_queue` when its deadline had not passed). It reads the call's method handler and
    deadline from the task's arguments as grpc submits them (grpc._server: context.run,
    _unary_response_in_pool, rpc_event, state, behaviour, ...); anything else runs as is.

    With `max_queue` set, a call of ours that arrives while that many of them wait for a handler
    thread is answered RESOURCE_EXHAUSTED ("queue full", counted as `queue_full`) by a one-thread
    side pool, whose tasks take microseconds, instead of waiting in line."""

    def __init__(self, admission, steps_observer=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._admission = admission
        #: called as (serialize s, send s) after each answered call of ours (server.callclock)
        self._steps_observer = steps_observer
        self._lock = threading.Lock()
        self._refusals: futures.ThreadPoolExecutor | None = None

    def submit(self, fn, /, *args, **kwargs):
        behaviour = args[3] if len(args) > 3 else None
        method = getattr(behaviour, "reranker_method", None)
        if method is None:
            return super().submit(fn, *args, **kwargs)
        submitted = time.perf_counter_ns()
        rpc_event = args[1]
        admission = self._admission
        if not admission.enter_queue():
            return self._refuse(fn, args, kwargs, method)
        observe = self._steps_observer

        def run():
            clock = callclock.start(submitted)
            admission.leave_queue()
            _dispatched.started = False
            try:
                return fn(*args, **kwargs)
            finally:
                callclock.finish()
                if observe is not None and clock.serialized_to:  # the response went out
                    observe((clock.serialized_to - clock.serialized_from) / 1e9,
                            (time.perf_counter_ns() - clock.serialized_to) / 1e9)
                if not _dispatched.started:
                    deadline = getattr(getattr(rpc_event, "call_details", None), "deadline", None)
                    expired = deadline is not None and deadline <= time.time()
                    admission.count_dropped(method, expired)

        try:
            return super().submit(run)
        except BaseException:  # shut down: the call is not queued after all
            admission.leave_queue()
            raise

    def _refuse(self, fn, args, kwargs, method: str):
        """Answer the call RESOURCE_EXHAUSTED on the side pool (grpc's task, behaviour swapped)."""
        self._admission.count_queue_full(method)
        waiting, pid = self._admission.limits.max_queue, str(os.getpid())

        def refuse(_raw, context):
            context.set_trailing_metadata(((WORKER_PID_METADATA_KEY, pid),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"queue full: {waiting} calls already wait for a handler thread on this "
                          "server process (reranker serve --max-queue); retry with backoff")

        if self._refusals is None:
            with self._lock:
                if self._refusals is None:
                    self._refusals = futures.ThreadPoolExecutor(1, thread_name_prefix="rerank-refuse")
        return self._refusals.submit(fn, *args[:3], refuse, *args[4:], **kwargs)

    def shutdown(self, wait: bool = True, **kwargs) -> None:
        if self._refusals is not None:
            self._refusals.shutdown(wait, **kwargs)
        super().shutdown(wait, **kwargs)


def create_server(
    address: str,
    engine,
    *,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_concurrent_rpcs: int | None = None,
    health_servicer: health.HealthServicer | None = None,
    metrics=None,
    tls: tuple[bytes, bytes] | None = None,
    reuse_port: bool = False,
    admission=None,
    max_connection_age_s: float | None = None,
    heavy=None,
    worker_address: str | None = None,
) -> tuple[grpc.Server, int]:
    """Build a server for `engine` bound to `address` ("host:port"; port 0 = any free port).

    The server is NOT started. It serves `reranker.v1.Reranker`, `grpc.health.v1.Health` and
    server reflection. Health reports NOT_SERVING for "" and "reranker.v1.Reranker" until the
    caller calls `set_serving(health_servicer, True)`; pass your own `health_servicer` to be able
    to. Messages larger than `max_message_bytes` are refused by gRPC (RESOURCE_EXHAUSTED); past
    `max_concurrent_rpcs` in flight, new calls are refused (RESOURCE_EXHAUSTED) instead of queued.

    `metrics`: a `server.metrics.ServerMetrics` the servicer records every call in (None: off).
    `tls`: (private key PEM, certificate chain PEM): listen with TLS (grpc.ssl_server_credentials,
    no client certificates asked); None: plaintext.
    `reuse_port`: bind with SO_REUSEPORT so that several processes share the port (the kernel
    spreads connections over them); off by default, so that a port in use fails loudly.

    `admission`: a `server.admission.AdmissionLimits` (None: the defaults), or an `Admission`
    to share: batch and per-request work caps and the heavy lane.
    `max_connection_age_s`: close every client connection (GOAWAY, after a grace of the same
    length for calls in flight) once it is this old, so that clients reconnect and a restarted
    worker gets its share of the connections again (grpc adds +-10 % jitter); None: never.
    `heavy`: a started `server.heavy.HeavyWorker`: heavy calls are forwarded to that process
    (the heavy lane in a process of its own); None: they run in this process's heavy lane.
    `worker_address`: also listen on this "host:port" of this process alone (never SO_REUSEPORT,
    so a port in use fails loudly), for clients that balance over the workers themselves
    (`serve --worker-ports`); same servicer, handler pool, health and reflection. The returned
    server is then a `ServerGroup` of the two (start / stop / wait_for_termination).

    Returns (server, bound port). Raises BindError if an address cannot be bound.
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Unless asked to share it, fail loudly if another process already listens on the port.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    if max_connection_age_s is not None:
        age_ms = max(int(max_connection_age_s * 1000), 1)
        options += [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", age_ms)]
    from server.admission import Admission

    if not isinstance(admission, Admission):
        admission = Admission(admission)
    pool = _ShedCountingPool(admission, steps_observer=None if metrics is None else metrics.observe_steps,
                             max_workers=max_workers, thread_name_prefix="rerank")
    servicer = RerankerServicer(engine, metrics, admission, heavy=heavy)
    if health_servicer is None:
        health_servicer = health.HealthServicer()
    set_serving(health_servicer, False)

    def build(bind: str, opts: list) -> tuple[grpc.Server, int]:
        server = grpc.server(pool, options=opts, maximum_concurrent_rpcs=max_concurrent_rpcs)
        add_servicer(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
        try:
            if tls is None:
                port = server.add_insecure_port(bind)
            else:
                port = server.add_secure_port(bind, grpc.ssl_server_credentials([tls]))
        except RuntimeError as exc:
            raise BindError(f"cannot listen on {bind!r}: {exc}") from exc
        if port == 0:  # older grpc versions report failure this way
            raise BindError(f"cannot listen on {bind!r}")
        return server, port

    server, port = build(address, options)
    if worker_address is None:
        return server, port
    # grpc sets SO_REUSEPORT per server, not per port: the worker's own port needs its own
    # server (its own completion queue and poller thread; the handler pool is the one above)
    exclusive = [(k, 0 if k == "grpc.so_reuseport" else v) for k, v in options]
    try:
        own, own_port = build(worker_address, exclusive)
    except BindError:
        server.stop(None)
        raise
    return ServerGroup((server, own)), port


class ServerGroup:
    """Several grpc servers of one process (the shared port and a worker's own port,
    `create_server(worker_address=...)`) started and stopped together, like one grpc.Server."""

    def __init__(self, servers) -> None:
        self.servers = tuple(servers)

    def start(self) -> None:
        for server in self.servers:
            server.start()

    def stop(self, grace: float | None) -> threading.Event:
        """Stop every server (each with `grace`); the event is set once all have stopped."""
        events = [server.stop(grace) for server in self.servers]
        done = threading.Event()

        def wait() -> None:
            for event in events:
                event.wait()
            done.set()

        if all(event.is_set() for event in events):
            done.set()
        else:
            threading.Thread(target=wait, name="servers-stop", daemon=True).start()
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for server in self.servers:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not server.wait_for_termination(left):
                return False
        return True


#: Server reflection v1 (what grpcurl and current clients ask first). grpcio-reflection ships only
#: v1alpha; the two protocols' messages are the same on the wire (only the package name differs),
#: so v1 is served by the v1alpha servicer under the v1 method name (see server.reflection_v1).
REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names, server: grpc.Server) -> None:
    """Serve reflection v1alpha and v1 for `service_names` (plus both reflection services)."""
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    from server import reflection_v1

    reflection_v1.message_classes()  # registers grpc/reflection/v1/reflection.proto: v1 is describable
    names = (*service_names, reflection.SERVICE_NAME, REFLECTION_V1_SERVICE)
    servicer = reflection.ReflectionServicer(names)
    reflection._reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        REFLECTION_V1_SERVICE, {"ServerReflectionInfo": handler}),))


def set_serving(health_servicer: health.HealthServicer, serving: bool) -> None:
    """Report SERVING / NOT_SERVING for the server ("") and for reranker.v1.Reranker."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in HEALTH_SERVICES:
        health_servicer.set(name, status)


def open_decision_log(target: str, *, sample_rate: float = 1.0, worker: int | None = None,
                      folder: str | None = None):
    """The (decision log, outcome log) of `serve --decision-log TARGET`: a folder of Parquet files
    (one sub-folder per worker process, so that writers never share a file; outcomes under
    TARGET/outcomes), or a Redis stream (`redis://host:port/db`, every worker appending to one
    stream; no outcome log: ReportOutcomes is refused). `folder`: the sub-folder's name instead
    of worker-N (a heavy worker's: heavy or heavy-N)."""
    from engine.decision_log import DecisionLog, ParquetSink, RedisStreamSink, is_stream_url, outcome_log

    if is_stream_url(target):
        return DecisionLog(RedisStreamSink(target), sample_rate=sample_rate), None
    per_worker = folder if folder is not None else f"worker-{worker}" if worker is not None else ""
    return (DecisionLog(ParquetSink(os.path.join(target, per_worker)), sample_rate=sample_rate),
            outcome_log(os.path.join(target, "outcomes", per_worker)))


def serve(
    address: str = DEFAULT_ADDRESS,
    policies_dir: str = "policies",
    *,
    experiments_dir: str | None = None,
    decision_log: str | None = None,
    log_sample_rate: float = 1.0,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_concurrent_rpcs: int | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    ledger_url: str | None = None,
    watch_interval_s: float = 1.0,
    settle_s: float = 0.5,
    state_dir: str | None = None,
    metrics_port: int | None = DEFAULT_METRICS_PORT,
    metrics_host: str = DEFAULT_METRICS_HOST,
    tls: tuple[bytes, bytes] | None = None,
    worker: int | None = None,
    on_serving: Callable[[int], None] | None = None,
    admission=None,
    max_connection_age_s: float | None = DEFAULT_MAX_CONNECTION_AGE_S,
    drain_s: float = 0.0,
    blas_threads: int | None = 1,
    gil_switch_ms: float | None = None,
    heavy_lane: str = "process",
    heavy_nice: int | None = None,
    heavy_role: str | None = None,
    worker_port: int | None = None,
) -> int:
    """Load policies, start, warm up, report SERVING; run until SIGTERM / SIGINT. Returns 0.

    `admission`: server.admission.AdmissionLimits (batch / work caps, heavy lane); None: defaults.
    `max_connection_age_s`: clients' connections are closed (GOAWAY, then as long again for the
    calls in flight) at this age, so that they reconnect and spread over the workers again
    after one was restarted; None: never.
    `drain_s`: on SIGTERM, report NOT_SERVING for this long while still serving (load balancers
    notice and stop sending), then stop taking calls and give those in flight `grace_s`.
    `blas_threads`: BLAS threads in this process (threadpoolctl); 1 keeps numpy's linear algebra
    (DPP requests) from oversubscribing the cores next to the handler threads; None: BLAS default.
    `gil_switch_ms`: sys.setswitchinterval in milliseconds (None: Python's 5 ms). A heavy call's
    Python code keeps a normal call waiting for the GIL up to this long at every hand-over.
    `heavy_lane`: "process" (default): this process starts a heavy worker (server.heavy) and
    forwards heavy calls to it, so their Python never holds this process's GIL; "thread": heavy
    calls run in this process, one at a time (the lane of server.admission).
    `heavy_nice`: the heavy worker's niceness increment (None: server.heavy.DEFAULT_HEAVY_NICE).
    `heavy_role`: set by server.heavy only: this process IS a heavy worker (named so in its log
    lines), on a unix socket, with its own heavy lane off and no worker port offset.

    `ledger_url`: where amortized-fairness rules keep cumulative exposure: None / "memory://"
    (this process only) or "redis://host:port/db" (shared by every replica).
    `watch_interval_s`: how often the policy folder is checked for edits (0: only on SIGHUP).
    `settle_s`: a policy file is loaded only once its size, mtime and bytes stayed the same this
    long (start-up, file watch and SIGHUP alike), so a half-written file never goes live.
    `state_dir`: where the last good version of every policy file is kept, and served from when
    the file is invalid as this process starts (a worker restarted after a crash, a restarted
    server); None: engine.policy_loader.default_state_dir(policies_dir); "": off.
    `metrics_port`: Prometheus /metrics on metrics_host:metrics_port (None: off; 0: any free port).
    If that port cannot be bound the error is logged and the server runs without metrics.
    `tls`: (key PEM, certificate PEM) to serve over TLS; None: plaintext.
    `worker`: this process is worker number `worker` of `serve_processes` (the port is shared
    with SO_REUSEPORT, log messages say "worker ...", metrics on metrics_port + worker);
    `on_serving(port)` is called once the server reports SERVING.
    `worker_port`: also listen on this port (same host as `address`) of this process alone, never
    shared (no SO_REUSEPORT): `serve --worker-ports`, for clients with one channel that balance
    over the workers' own ports (gRPC round_robin) instead of one connection per worker process.

    SIGTERM / SIGINT: health goes NOT_SERVING (load balancers stop sending), in-flight calls get
    `grace_s` seconds to finish, then the process exits 0. SIGHUP reloads the policies (an invalid
    file never replaces a loaded policy; its errors are logged). Call from the main thread.
    """
    if heavy_lane not in HEAVY_LANES:
        raise ValueError(f"heavy_lane: must be one of {', '.join(HEAVY_LANES)}, got {heavy_lane!r}")
    t0 = time.perf_counter()
    started = process_started_ago_s()
    tag = heavy_role + " " if heavy_role else "" if worker is None else "worker "
    blas = _limit_blas(blas_threads)
    if gil_switch_ms:  # how long a thread running Python keeps the GIL while another waits
        import sys

        sys.setswitchinterval(gil_switch_ms / 1000.0)
    log.info(tag + "starting", extra={"worker": worker, "pid": os.getpid(), "blas_threads": blas,
                                      "policies_dir": policies_dir})
    import_kernels(tag, worker)
    from engine.engine import Engine  # heavy (numba): imported when serving, not on import
    if worker is not None and metrics_port and heavy_role is None:
        metrics_port += worker
    if state_dir is None:
        from engine.policy_loader import default_state_dir

        found = default_state_dir(policies_dir)
        state_dir = "" if found is None else str(found)
    limits = getattr(admission, "limits", admission)
    if heavy_role is not None:  # a heavy worker: every call it gets is heavy; no lane inside it
        from server.admission import AdmissionLimits

        limits = dataclasses.replace(limits or AdmissionLimits(), heavy_work=NO_HEAVY_LANE,
                                     heavy_bytes=NO_HEAVY_LANE)
        admission, max_connection_age_s = limits, None
    heavy = None
    if heavy_lane == "process" and heavy_role is None:
        from server.heavy import DEFAULT_HEAVY_NICE, HEAVY_METRICS_PORT_OFFSET, HeavyWorker

        heavy_options = dict(
            experiments_dir=experiments_dir, decision_log=decision_log, log_sample_rate=log_sample_rate,
            max_workers=max_workers, max_message_bytes=max_message_bytes, grace_s=grace_s,
            ledger_url=ledger_url, watch_interval_s=watch_interval_s, settle_s=settle_s,
            state_dir=state_dir, metrics_host=metrics_host, admission=limits, drain_s=0.0,
            metrics_port=None if metrics_port is None else (
                0 if metrics_port == 0 else metrics_port + HEAVY_METRICS_PORT_OFFSET),
            max_connection_age_s=None, blas_threads=blas_threads, gil_switch_ms=gil_switch_ms,
            heavy_lane="thread")
        heavy = HeavyWorker(serve, policies_dir, heavy_options, worker=worker,
                            tag="heavy worker",
                            log_level=logging.getLogger().getEffectiveLevel(),
                            nice=DEFAULT_HEAVY_NICE if heavy_nice is None else heavy_nice)
        heavy.start()  # it loads and warms up while this process does
    try:  # (until the try below takes over: a failure here must not leave the heavy worker)
        engine = Engine.from_directory(policies_dir, ledger_url=ledger_url, settle_s=settle_s,
                                       state_dir=state_dir or None, experiments_dir=experiments_dir)
        if decision_log:
            engine.decision_log, engine.outcome_log = open_decision_log(
                decision_log, sample_rate=log_sample_rate, worker=worker,
                folder=None if heavy_role is None else "heavy" if worker is None else f"heavy-{worker}")
            engine.decision_log_source = decision_log
        health_servicer = health.HealthServicer()
        metrics = metrics_http = None
        if metrics_port is not None:
            metrics = ServerMetrics()
            metrics.watch_ledger(engine)
            if engine.decision_log is not None:
                metrics.watch_decision_log(engine.decision_log)
            try:
                metrics_http, bound = metrics.serve_http(metrics_port, metrics_host)
            except OSError as exc:  # serving matters more than its metrics: say so loudly, go on
                log.error("metrics endpoint not started; serving without it",
                          extra={"address": f"{metrics_host}:{metrics_port}", "error": str(exc)})
            else:
                log.info(tag + "metrics", extra={"address": f"{metrics_host}:{bound}", "port": bound,
                                                 "worker": worker})
        server, port = create_server(
            address,
            engine,
            max_workers=max_workers,
            max_message_bytes=max_message_bytes,
            max_concurrent_rpcs=max_concurrent_rpcs,
            health_servicer=health_servicer,
            metrics=metrics,
            tls=tls,
            reuse_port=worker is not None and heavy_role is None,
            admission=admission,
            max_connection_age_s=max_connection_age_s,
            heavy=heavy,
            worker_address=None if worker_port is None or heavy_role is not None
            else f"{address.rsplit(':', 1)[0]}:{worker_port}",
        )
    except BaseException:
        if heavy is not None:
            heavy.stop(0.0)
        raise
    if heavy is not None and metrics is not None:
        metrics.watch_heavy(heavy)

    watcher = None
    events: queue.SimpleQueue[int] = queue.SimpleQueue()
    handled = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.signal(sig, lambda signum, _frame: events.put(signum)) for sig in handled}
    try:
        server.start()
        log.info(tag + "listening", extra={"health": "NOT_SERVING until warm-up is done","worker": worker, "pid": os.getpid(),"address": address if heavy_role else f"{address.rsplit(':', 1)[0]}:{port}", "port": port,
                                      "policies_dir": policies_dir, "state_dir": state_dir or None,
                                      "policies": [p.name for p in engine.list_policies()],
                                      "max_workers": max_workers, "tls": tls is not None,
                                      "worker_port": None if heavy_role else worker_port})
        def progress(step: str, i: int, n: int, seconds: float) -> None:
            log.info(tag + "warm-up", extra={"step": step, "i": i, "of": n,
                                             "seconds": round(seconds, 1), "worker": worker})

        engine.warmup(progress)
        if heavy is not None and not heavy.wait_serving(HEAVY_READY_WAIT_S):
            log.error(tag + "heavy worker not serving yet; serving without it (heavy calls are "
                      "refused UNAVAILABLE until it is)", extra={"worker": worker,
                                                                "waited_s": HEAVY_READY_WAIT_S})
        # Everything alive now (modules, numba dispatchers, policies) lives as long as the
        # process: keep it out of the cyclic collector, whose full passes over ~170k objects
        # would otherwise stall a request for milliseconds now and then.
        gc.collect()
        gc.freeze()
        set_serving(health_servicer, True)
        now = time.perf_counter()
        log.info(tag + "serving", extra={
            "startup_ms": round((now - t0 + started) * 1e3, 1),  # from the process's start
            "warmup_ms": round((now - t0) * 1e3, 1), "worker": worker, "pid": os.getpid()})
        if on_serving is not None:
            on_serving(port)
        if watch_interval_s > 0:
            from server.watch import PolicyWatcher

            watcher = PolicyWatcher(engine, policies_dir, watch_interval_s, settle_s).start()
            if metrics is not None:
                metrics.watch_reloads(watcher)

        while True:
            try:
                signum = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if hasattr(signal, "SIGHUP") and signum == signal.SIGHUP:
                if heavy is not None:
                    heavy.signal(signal.SIGHUP)
                _reload(engine, settle_s)
                continue
            break
        log.info(tag + "shutting down", extra={"signal": signal.Signals(signum).name, "grace_s": grace_s,
                                               "worker": worker})
        if watcher is not None:
            watcher.stop()
        set_serving(health_servicer, False)
        if drain_s > 0:  # NOT_SERVING, still serving: balancers move traffic away first
            log.info(tag + "draining", extra={"drain_s": drain_s, "worker": worker})
            _wait_unless(events, drain_s)
        server.stop(grace_s).wait()
        if heavy is not None:  # after the server: calls in flight were still being forwarded
            heavy.stop(grace_s)
        engine.close()  # after the drain: the ledger writes what the last calls recorded
        log.info(tag + "stopped", extra={"worker": worker})
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop(None)
        if heavy is not None:
            heavy.stop(0.0)
        if metrics_http is not None:
            _stop_http(metrics_http)


def _wait_unless(events: "queue.SimpleQueue[int]", seconds: float) -> None:
    """Sleep `seconds`, cut short by a second SIGTERM / SIGINT (SIGHUP is ignored meanwhile)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            signum = events.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if signum in (signal.SIGTERM, signal.SIGINT):
            return


def _limit_blas(threads: int | None) -> int | None:
    """Cap BLAS / OpenMP threads in this process (threadpoolctl); returns the cap in force."""
    if threads is None:
        return None
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    return threads


def _stop_http(httpd) -> None:
    """Stop a socketserver (the metrics endpoint) and close its socket, promptly.

    `httpd.shutdown()` returns only once `serve_forever` notices, which it checks after each
    request and otherwise every 0.5 s (its poll interval): that was up to 0.5 s of every exit.
    Connecting to it while `shutdown` waits makes it notice at once."""
    stopper = threading.Thread(target=httpd.shutdown, name="metrics-stop", daemon=True)
    stopper.start()
    host, port = httpd.server_address[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    while stopper.is_alive():
        try:
            socket.create_connection((host, port), timeout=0.1).close()
        except OSError:  # cannot connect: the poll interval still ends it
            pass
        stopper.join(0.05)
    httpd.server_close()


def _reload(engine, settle_s: float) -> None:
    """SIGHUP: reload the policy folder, waiting for files still being written (one log shape
    with the file watch: server.watch.reload_and_log)."""
    from server.watch import reload_and_log

    try:
        reload_and_log(engine, "sighup", settle_s)
    except Exception:  # noqa: BLE001 - a failed reload must not take the server down
        log.exception("policy reload failed; keeping the loaded policies", extra={"trigger": "sighup"})
