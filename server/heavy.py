"""The heavy lane in a process of its own (`reranker serve --heavy-lane process`, the default).

A heavy call (more than --heavy-work units, or a message over --heavy-bytes) spends tens to
hundreds of milliseconds in Python (explain's conflict model, a batch's per-entry decode,
compile and encode); in the serving process that Python holds the GIL in stretches of ~15 ms
and the other handler thread's normal calls wait for it. So each serving process starts one
**heavy worker**: a child process running the same server (`server.app.serve`: same policies
folder, hot reload, last-good-version store, ledger, BLAS pinning, warm-up before SERVING; a
decision-log folder of its own; its heavy lane off) on a unix domain socket only the serving
process knows. The serving process forwards each heavy call to it as raw bytes (a generic
unary call with identity serializers: the serving process parses nothing more), with the
caller's remaining deadline and metadata, and relays the reply bytes, status, details and
trailing metadata (x-worker-pid: the heavy worker's pid, x-field, ...) unchanged.

- Slots: the serving process still takes its one heavy slot (server.admission) before
  forwarding, so a heavy call that finds the slot taken is refused at once, as with the
  in-thread lane ("heavy lane busy", RESOURCE_EXHAUSTED, counted as heavy_lane_busy).
- Supervision: a thread of the serving process waits on the heavy worker; when it dies it is
  logged, restarted after a pause (longer after each failure to start), and until it reports
  SERVING again heavy calls are refused UNAVAILABLE ("heavy lane unavailable ..."); normal
  calls never touch it. The heavy worker runs at a lower CPU priority (niceness +`nice`,
  serve --heavy-nice, default DEFAULT_HEAVY_NICE), so that when the cores are busy the
  scheduler prefers the normal calls' process.
- Stopping: the serving process stops its heavy worker (SIGTERM, then SIGKILL after a grace)
  after its own server stopped; a heavy worker whose parent is gone stops on its own (as
  workers do), so none is ever orphaned. SIGHUP to the serving process reaches it too.
- Metrics: the heavy worker serves its own /metrics on the serving process's metrics port +
  HEAVY_METRICS_PORT_OFFSET (any free port when that is 0; none when metrics are off). The
  serving process counts what it forwarded, refused and relayed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time

import grpc

log = logging.getLogger("server.app")  # one logger name for the server's lines

HEAVY_METRICS_PORT_OFFSET = 100  # heavy worker of worker i: metrics on metrics_port + i + 100
DEFAULT_HEAVY_NICE = 10  # the heavy worker's niceness increment (0: the serving process's priority)
RESTART_DELAY_S = 1.0  # first pause before a restart; doubled per failure to start, up to 30 s
MAX_RESTART_DELAY_S = 30.0
READY_TIMEOUT_S = 600.0  # a heavy worker that is not SERVING after this long is killed and restarted
#: serving-process-side status codes that mean "the heavy worker is not there" when the reply
#: carries no x-worker-pid (the transport failed, not the heavy worker's servicer)
_TRANSPORT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
                    grpc.StatusCode.UNKNOWN)
#: server.servicer.WORKER_PID_METADATA_KEY (the servicer imports this module, not the reverse;
#: tests/test_heavy_process.py checks that they agree)
WORKER_PID_METADATA_KEY = "x-worker-pid"
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                    ("grpc.enable_retries", 0)]


class HeavyUnavailable(Exception):
    """The heavy worker is not serving (starting, restarting, stopped); UNAVAILABLE."""


class RelayedStatus(Exception):
    """The heavy worker answered with an error status: relayed to the caller unchanged."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details, self.trailers = code, details, trailers


def relay(context: grpc.ServicerContext, status: RelayedStatus):
    """End the call with the heavy worker's status, details and trailing metadata (raises)."""
    if status.trailers:
        context.set_trailing_metadata(status.trailers)
    context.abort(status.code, status.details)
    raise AssertionError("unreachable: context.abort returned")  # pragma: no cover


class HeavyWorker:
    """The serving-process side of the heavy lane: starts, supervises, stops one heavy worker
    process, and forwards calls to it. Thread-safe."""

    def __init__(self, serve, policies_dir: str, options: dict, *, tag: str, worker: int | None,
                 log_level: int, nice: int = DEFAULT_HEAVY_NICE) -> None:
        """`serve`: server.app.serve, what the heavy worker runs (handed in: this module imports
        no server module that imports it). `options`: its keyword arguments (its address,
        role and `on_serving` are set here). `tag`: names it in log lines ("heavy worker"; the
        `worker` field says whose)."""
        import multiprocessing

        self._ctx = multiprocessing.get_context("spawn")  # no gRPC / numba state across a fork
        self._serve = serve
        self._nice = nice
        self._policies_dir = policies_dir
        self._options = options
        self._tag = tag
        self._worker = worker
        self._log_level = log_level
        self._dir = ""  # the socket's folder (start: mkdtemp, 0700, so only this user connects)
        self._ready = None  # the reading end of the current heavy worker's "serving" pipe
        self._lock = threading.Lock()
        self._proc = None
        self._channel: grpc.Channel | None = None
        self._address = ""
        self._pid: int | None = None
        self._starts = 0
        self._stopping = threading.Event()
        self._stopped = False
        self._serving = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0  # heavy workers restarted after dying
        self.unavailable = 0  # heavy calls refused because no heavy worker was serving
        self.forwarded = 0  # calls forwarded (whatever their answer)

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> "HeavyWorker":
        """Start the heavy worker and its supervising thread (returns at once)."""
        self._dir = tempfile.mkdtemp(prefix="reranker-heavy-")
        self._thread = threading.Thread(target=self._supervise, name="heavy-supervisor", daemon=True)
        self._thread.start()
        return self

    def wait_serving(self, timeout: float) -> bool:
        """Wait until the heavy worker reports SERVING (True) or `timeout` passes (False)."""
        return self._serving.wait(timeout)

    @property
    def serving(self) -> bool:
        return self._serving.is_set()

    @property
    def pid(self) -> int | None:
        return self._pid

    def _spawn(self):
        from server.startup import heavy_entry

        self._starts += 1
        path = os.path.join(self._dir, f"heavy-{self._starts}.sock")
        address = f"unix:{path}"
        # a pipe, not a multiprocessing.Queue: a serving process leaves by os._exit, and a
        # queue's semaphores would then be reported leaked by the resource tracker
        reader, writer = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=heavy_entry, daemon=False,
            name="reranker-heavy" if self._worker is None else f"reranker-heavy-{self._worker}",
            args=(self._serve, self._tag, self._worker, address, self._policies_dir, self._options, self._log_level,
                  writer, self._nice))
        proc.start()
        writer.close()  # the child's copy stays open: EOF here once it is gone
        if self._ready is not None:
            self._ready.close()
        self._ready = reader
        log.info(self._tag + " started", extra={"worker": self._worker, "pid": proc.pid,
                                                 "address": address, "parent_pid": os.getpid()})
        return proc, address

    def _supervise(self) -> None:
        try:
            self._supervise_loop()
        finally:  # stopping: reap the last heavy worker once stop() has ended it
            proc = self._proc
            if proc is not None:
                proc.join(60.0)

    def _supervise_loop(self) -> None:
        delay = RESTART_DELAY_S
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                proc, address = self._spawn()
                self._proc = proc
            if not self._await_ready(proc):
                if self._stopping.is_set():
                    return
                log.error(self._tag + " exited before serving; restarting it",
                          extra={"worker": self._worker, "pid": proc.pid, "exitcode": proc.exitcode,
                                 "delay_s": delay})
                self._pause(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY_S)
                continue
            delay = RESTART_DELAY_S
            channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            with self._lock:
                self._channel, self._address, self._pid = channel, address, proc.pid
                self._serving.set()
            log.info(self._tag + " ready", extra={"worker": self._worker, "pid": proc.pid,
                                                   "address": address})
            proc.join()  # until it dies (or is stopped)
            with self._lock:
                self._serving.clear()
                self._channel = None
                self._pid = None
            channel.close()
            if self._stopping.is_set():
                return
            self.restarts += 1
            log.error(self._tag + " died; restarting it",
                      extra={"worker": self._worker, "pid": proc.pid, "exitcode": proc.exitcode,
                             "note": "heavy calls are refused UNAVAILABLE until it serves again"})
            self._pause(delay)

    def _await_ready(self, proc) -> bool:  # (runs on the supervising thread, which reaps)
        """Wait for `proc`'s SERVING message (True) or its end / a stop / READY_TIMEOUT_S (False)."""
        end = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < end and not self._stopping.is_set():
            try:
                if not self._ready.poll(0.2):
                    if not proc.is_alive():
                        return False
                    continue
                pid = self._ready.recv()
            except (EOFError, OSError):  # it exited before it served
                proc.join(5)
                return False
            if pid == proc.pid:
                return True
        if proc.is_alive() and not self._stopping.is_set():  # hung in its start: killed, restarted
            proc.kill()
            proc.join(5)
        return False

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def signal(self, signum: int) -> None:
        """Send `signum` (SIGHUP: reload) to the heavy worker, if it runs."""
        from multiprocessing.connection import wait

        proc = self._proc
        if proc is not None and not wait([proc.sentinel], 0):
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, grace_s: float) -> None:
        """Stop the heavy worker (SIGTERM; SIGKILL when it has not exited within grace + 10 s)
        and the supervisor; remove the socket folder. Call once the serving process's own
        server has stopped (calls in flight there may still be forwarded until then)."""
        import signal as signals

        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._stopping.set()
            proc = self._proc
        self._serving.clear()
        # Only the supervising thread reaps the process (two threads in waitpid on one child:
        # the loser sees ECHILD and would take it for alive); here its sentinel says it ended.
        from multiprocessing.connection import wait

        if proc is not None and not wait([proc.sentinel], 0):
            try:
                os.kill(proc.pid, signals.SIGTERM)
            except ProcessLookupError:
                pass
            if not wait([proc.sentinel], grace_s + 10.0):  # still running: not reaped, safe to kill
                log.error(self._tag + " did not stop in time; killing it",
                          extra={"worker": self._worker, "pid": proc.pid})
                proc.kill()
                wait([proc.sentinel], 5.0)
        if self._thread is not None:
            self._thread.join(10.0)
        channel = self._channel
        if channel is not None:
            channel.close()
        if self._ready is not None:
            self._ready.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        if proc is not None:
            log.info(self._tag + " stopped", extra={"worker": self._worker, "pid": proc.pid,
                                                     "exitcode": proc.exitcode})

    # ---------------------------------------------------------------------------- forwarding
    def forward(self, method: str, raw: bytes, context: grpc.ServicerContext) -> bytes:
        """Send the call's bytes to the heavy worker with the caller's remaining deadline and
        metadata; return its reply bytes, its trailing metadata set on `context`. An error status
        of the heavy worker is raised as RelayedStatus (pass it to `relay`); HeavyUnavailable
        when no heavy worker serves, or it went away during the call."""
        with self._lock:
            channel = self._channel if self._serving.is_set() else None
            if channel is None:
                self.unavailable += 1
            else:
                self.forwarded += 1
        if channel is None:
            raise HeavyUnavailable("heavy lane unavailable: this server process's heavy worker is "
                                   "starting or restarting; retry with backoff (normal calls are "
                                   "served meanwhile)")
        remaining = context.time_remaining()
        timeout = None if remaining is None or remaining > 365 * 24 * 3600.0 else max(remaining, 0.0)
        metadata = tuple((k, v) for k, v in (context.invocation_metadata() or ())
                         if not k.startswith((":", "grpc-")) and k not in ("user-agent", "te",
                                                                             "content-type"))
        call = channel.unary_unary(f"/reranker.v1.Reranker/{method}", request_serializer=None,
                                   response_deserializer=None)
        try:
            reply, outcome = call.with_call(raw, timeout=timeout, metadata=metadata or None)
        except grpc.RpcError as exc:
            trailers = tuple(exc.trailing_metadata() or ())
            if exc.code() in _TRANSPORT_CODES and not any(k == WORKER_PID_METADATA_KEY for k, _ in trailers):
                with self._lock:
                    self.unavailable += 1
                raise HeavyUnavailable(
                    "heavy lane unavailable: this server process's heavy worker went away during "
                    f"the call ({exc.code().name}: {exc.details()}); it is restarted; retry with "
                    "backoff") from None
            raise RelayedStatus(exc.code(), exc.details() or "", trailers) from None
        trailers = tuple(outcome.trailing_metadata() or ())
        if trailers:
            context.set_trailing_metadata(trailers)
        return reply
