"""The decision log's writer: a bounded queue that the request path hands records to, and two
background threads: one turns them into Arrow batches, the other writes those to a sink.

`DecisionLog.offer` never blocks and never raises; everything slow (the Arrow conversion, the
sink's I/O, retries) happens on those threads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow as pa

from engine.decision_log.record import DecisionRecord, candidates_bytes
from engine.decision_log.schema import Staged, assemble, outcomes_to_batch
from engine.decision_log.sinks import MiB, OutcomeSink, Sink
from engine.types import RerankRequest

log = logging.getLogger("engine.decision_log")

#: blake2b personalisation of the sampling hash (see `sampled`)
SAMPLING_PERSON = b"reranker.dlog"


def sampling_hash(request_id: str) -> int:
    """The 64-bit sampling hash of a request id: the big-endian integer of
    blake2b(utf-8 bytes of the id, digest_size=8, person=b"reranker.dlog")."""
    return int.from_bytes(hashlib.blake2b(request_id.encode("utf-8"), digest_size=8,
                                          person=SAMPLING_PERSON).digest(), "big")


def sampled(request_id: str, rate: float) -> bool:
    """Whether a request is logged at sample `rate` (0..1): `sampling_hash(id) < rate * 2**64`,
    so the same id always gets the same answer, in every process. An empty id has nothing to
    hash: it is sampled at random at the same rate."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    if not request_id:
        return random.random() < rate
    return sampling_hash(request_id) < rate * 18446744073709551616.0  # 2**64


@dataclass
class LogStats:
    """Counters of one DecisionLog (records, not batches), for metrics; `queued` is live."""

    offered: int = 0  # records handed to offer() (accepted or not)
    written: int = 0  # records the sink accepted (less those it lost afterwards: dropped_sink)
    dropped_full: int = 0  # refused by offer(): queue full (records or bytes)
    dropped_closed: int = 0  # refused by offer(): the log was closed
    dropped_invalid: int = 0  # could not be converted to Arrow (a malformed record): dropped
    dropped_unwritten: int = 0  # still unwritten when close() gave up (sink failing)
    dropped_sink: int = 0  # accepted by the sink, lost afterwards (see the sink's `lost`)
    write_errors: int = 0  # failed sink calls (every failed attempt counts)
    _log: "DecisionLog | None" = None

    @property
    def dropped(self) -> int:
        """Every record lost, for whatever reason."""
        return (self.dropped_full + self.dropped_closed + self.dropped_invalid
                + self.dropped_unwritten + self.dropped_sink)

    @property
    def queued(self) -> int:
        """Records waiting: in the queue and in batches held for a retry."""
        return 0 if self._log is None else self._log.pending()

    def as_dict(self) -> dict[str, int]:
        return {"offered": self.offered, "written": self.written, "dropped": self.dropped,
                "dropped_full": self.dropped_full, "dropped_closed": self.dropped_closed,
                "dropped_invalid": self.dropped_invalid, "dropped_unwritten": self.dropped_unwritten,
                "dropped_sink": self.dropped_sink, "write_errors": self.write_errors,
                "queued": self.queued}


class _Every:
    """Rate-limited logging: at most one line per key per `interval_s`, saying how many were
    suppressed since the last one."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, level: int, message: str, exc_info: bool = False, **extra) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e18) < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        log.log(level, message, exc_info=exc_info, extra={**extra, "suppressed_since_last": suppressed})


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_IDLE_WAIT_S = 0.05  # the converter's longest wait for records while none come


class _Pacer:
    """The converter's `pause`: once `slice_s` of work has gone by since the last wait, sleep
    `sleep_s`, so that a request thread waiting for the interpreter lock takes it then.

    CPython hands the lock from a thread that runs Python to one that waits for it only when
    the holder blocks, or after the switch interval (5 ms by default). A converter that never
    blocks thus delays every request thread that gives the lock up and takes it back (numba
    kernels, gRPC I/O) by up to 5 ms; one that sleeps every `slice_s` delays it by about
    `slice_s` at most. The cost is converter wall time, not CPU (about one sleep per record)."""

    __slots__ = ("slice_ns", "sleep_s", "_since")

    def __init__(self, slice_s: float | None, sleep_s: float) -> None:
        self.slice_ns = None if slice_s is None else int(slice_s * 1e9)
        self.sleep_s = sleep_s
        self._since = time.perf_counter_ns()

    def __call__(self) -> None:
        if self.slice_ns is not None and time.perf_counter_ns() - self._since >= self.slice_ns:
            time.sleep(self.sleep_s)
            self._since = time.perf_counter_ns()

    def restart(self) -> None:
        """Count the slice from now (the converter was idle, waiting for records)."""
        self._since = time.perf_counter_ns()


def _lower_priority(nice: int) -> None:
    """Add `nice` to the calling thread's nice value (Linux: each thread has its own; elsewhere
    setpriority would change the whole process, so nothing is done)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:  # not permitted (a sandbox): the writer runs at normal priority
        log.debug("decision log writer priority unchanged", extra={"error": str(e)})


class _Deferred:
    """What offer_decision queues: references, and the time; the record is built later."""

    __slots__ = ("req", "answer", "ts_us", "options")

    def __init__(self, req: RerankRequest, answer, ts_us: int, options: dict) -> None:
        self.req, self.answer, self.ts_us, self.options = req, answer, ts_us, options

    def approx_bytes(self) -> int:
        return candidates_bytes(self.req.candidates)

    def record(self) -> DecisionRecord:
        options = self.options
        if options["ts"] is None:
            options = {**options, "ts": _EPOCH + timedelta(microseconds=self.ts_us)}
        return DecisionRecord.of(self.req, self.answer, **options)


class DecisionLog:
    """Decision records to a sink, off the request path.

    `offer(record)` puts a record on a bounded queue and returns at once (~1.5 µs);
    `offer_decision(req, decision)` queues the references and builds the record on the
    converter thread (~2 µs on the request path idle, 7 µs measured inside the gRPC server,
    against ~12 µs for `offer(DecisionRecord.of(...))`). A converter thread stages queued
    records (`schema.Staged`) and assembles them into Arrow batches (`batch_size` records, or
    fewer after `flush_s`, or about `batch_bytes`; `convert_chunk` records per Arrow batch); a
    writer thread writes each assembled table as one `sink.write`, in order, and calls
    `sink.flush()` every `flush_s` (a Parquet sink finishes old files then). The sink is only
    ever called from the writer thread.

    Cost: for N=1000 candidates with every column kind, per record: about 0.1-0.25 ms of
    staging and assembly (columnar: no Python step per candidate, but holding the interpreter
    lock, on the converter thread; the upper figure for gRPC requests, whose ids are read out
    of the protobuf message) and 0.3-0.4 ms of Parquet encoding (not holding it, on the writer
    thread); about 120 KB of Parquet. Sample (`sample_rate`) when that is too much. So that
    the log slows the requests down as little as it can:
    - the converter stages the queued records once `stage_size` (8) wait, or every
      `stage_every_s` (20 ms): copies their candidate columns out of the requests so that
      those are freed (see schema.Staged; keeping 256 requests alive until their batch was
      written cost 10-16 % of bench_grpc's server time, the request threads' memory going
      cold). Not one by one: every time the converter takes the interpreter lock while a
      request runs, the request waits to get it back, and on this 2-core VM those hand-overs
      cost more than the work (staging each record 2 ms after its call: 1.13-1.17x; 8 at a
      time: 1.08-1.10x); nor is it woken by every offer (a wake-up cost the request ~10 µs);
    - the converter pauses (sleeps `convert_sleep_s`) after every `convert_slice_s` (2 ms) of
      work, so that a request thread waiting for the interpreter lock gets it within about
      that (see _Pacer; None: no pauses; short slices mean more hand-overs, which cost more);
    - the writer thread lowers its CPU priority by `writer_nice` (Linux), so that on a busy
      machine the request threads get the cores first; it holds the lock only between writes.

    What is lost, and when (every lost record is counted in `stats`, by reason):
    - **Queue full**: when `queue_size` records, or `queue_bytes` of request data (about what
      the queued records' arrays hold: the queue keeps references to the requests), wait, the
      offered record is dropped (`offer` returns False; `stats.dropped_full`). A warning is
      logged at most every `log_interval_s`.
    - **Sink failing** (disk full, Redis down): the failed batch is held, converted (Arrow), and
      retried with exponential backoff (`retry_initial_s` doubling to `retry_max_s`); each failed
      attempt counts in `stats.write_errors` and is logged (rate-limited). New batches are held
      behind it, up to `max_held_batches`; then the writer stops taking records, the queue
      fills, and new records are dropped as above. Nothing held is dropped while the process
      runs: when the sink recovers, the held batches are written in order.
    - **close(timeout_s)** (SIGTERM): records still queued or held when the sink has not taken
      them by the timeout are dropped (`stats.dropped_unwritten`). Records offered after close
      are dropped (`stats.dropped_closed`).
    - **Malformed record** (cannot be converted): dropped alone, the rest of its batch is
      written (`stats.dropped_invalid`, logged).
    - **After the sink took them**: rows the sink accepted and lost later (the open Parquet
      file, when a later write into it or finishing it fails: see ParquetSink) move from
      `stats.written` to `stats.dropped_sink`; the batch whose write failed is retried.
    - **Process killed** (SIGKILL, crash): everything queued or held, and what the sink has not
      made durable (a Parquet sink's open file).

    Every written row carries `log_writer` (this log's identity) and `log_dropped` (how many
    records this log had dropped before the row's batch), so a reader of the log can tell that
    records are missing (`summarise`).

    Sampling (`should_log`): deterministic by request id (`sampled`), at `sample_rate`, and at
    `exploration_sample_rate` (default 100 %) for requests served by an exploration policy. The
    caller asks before building the record.
    """

    def __init__(self, sink: Sink, *, queue_size: int = 10_000, batch_size: int = 256,
                 flush_s: float = 1.0, sample_rate: float = 1.0, exploration_sample_rate: float = 1.0,
                 queue_bytes: int = 1024 * MiB, batch_bytes: int = 64 * MiB,
                 max_held_batches: int = 16, retry_initial_s: float = 0.1, retry_max_s: float = 10.0,
                 log_interval_s: float = 10.0, convert_chunk: int = 64,
                 convert_slice_s: float | None = 2e-3, convert_sleep_s: float = 20e-6,
                 stage_size: int = 8, stage_every_s: float = 0.02, writer_nice: int = 10,
                 convert: Callable[[list], pa.RecordBatch] | None = None) -> None:
        for name, value, lo in (("queue_size", queue_size, 1), ("batch_size", batch_size, 1),
                                ("queue_bytes", queue_bytes, 1), ("batch_bytes", batch_bytes, 1),
                                ("max_held_batches", max_held_batches, 1),
                                ("convert_chunk", convert_chunk, 1), ("stage_size", stage_size, 1)):
            if not (isinstance(value, int) and value >= lo):
                raise ValueError(f"DecisionLog {name}: must be an integer >= {lo}, got {value!r}")
        for name, value in (("sample_rate", sample_rate), ("exploration_sample_rate", exploration_sample_rate)):
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"DecisionLog {name}: must be a number in [0, 1], got {value!r}")
        if not (isinstance(writer_nice, int) and 0 <= writer_nice <= 19):
            raise ValueError(f"DecisionLog writer_nice: must be an integer in [0, 19], got {writer_nice!r}")
        if convert_slice_s is not None and not (isinstance(convert_slice_s, (int, float)) and convert_slice_s > 0):
            raise ValueError(f"DecisionLog convert_slice_s: must be a number > 0 or None, got {convert_slice_s!r}")
        for name, value in (("flush_s", flush_s), ("retry_initial_s", retry_initial_s),
                            ("retry_max_s", retry_max_s), ("log_interval_s", log_interval_s),
                            ("convert_sleep_s", convert_sleep_s), ("stage_every_s", stage_every_s)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"DecisionLog {name}: must be a number > 0, got {value!r}")
        self.sink = sink
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_s = float(flush_s)
        self.sample_rate = float(sample_rate)
        self.exploration_sample_rate = float(exploration_sample_rate)
        self.queue_bytes = queue_bytes
        self.batch_bytes = batch_bytes
        self.max_held_batches = max_held_batches
        self.retry_initial_s = float(retry_initial_s)
        self.retry_max_s = float(retry_max_s)
        #: records converted per Arrow batch (a write takes several: one row group); 64 costs
        #: about 60 % of the conversion time per record that 256 does
        self.convert_chunk = convert_chunk
        #: the converter's pauses (see _Pacer) and the writer thread's lowered priority
        self.convert_slice_s = None if convert_slice_s is None else float(convert_slice_s)
        self.convert_sleep_s = float(convert_sleep_s)
        self.writer_nice = writer_nice
        #: the converter stages the queued records once `stage_size` wait (the offer that makes
        #: them so wakes it), and every `stage_every_s` while records come
        self.stage_size = stage_size
        self.stage_every_s = float(stage_every_s)
        self._pause = _Pacer(self.convert_slice_s, self.convert_sleep_s)
        #: records -> Arrow batch (None: `to_batch` with this log's writer id and dropped count;
        #: `outcome_log` passes `outcomes_to_batch`)
        self.convert = convert
        #: written into every row's log_writer
        self.writer_id = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.stats = LogStats(_log=self)
        self._say = _Every(log_interval_s)
        self._lock = threading.Lock()
        self._queue: deque[tuple[DecisionRecord, int]] = deque()
        self._queued_bytes = 0
        self._held: deque[pa.Table] = deque()  # converted, waiting for the sink (under _held_cv)
        self._held_cv = threading.Condition()
        self._held_rows = 0  # records taken from the queue and not written yet (under _lock)
        self._converter_done = False
        self._sink_stopped = False
        self._wake = threading.Event()
        self._flush_now = threading.Event()
        self._closed = False
        self._closing = threading.Event()
        self._deadline = float("inf")  # monotonic: when close() gives up
        self._done = threading.Event()
        # two threads: converting (Python, holds the interpreter lock) and writing (mostly in
        # Arrow's C++, releases it) overlap, so the log's throughput is the slower of the two
        self._converter = threading.Thread(target=self._run_convert, name="decision-log-convert", daemon=True)
        self._thread = threading.Thread(target=self._run_sink, name="decision-log-writer", daemon=True)
        self._converter.start()
        self._thread.start()

    # ------------------------------------------------------------ the request path
    def should_log(self, request_id: str, exploration: bool = False) -> bool:
        """Whether to log this request (deterministic per id; see `sampled`)."""
        return sampled(request_id, self.exploration_sample_rate if exploration else self.sample_rate)

    def offer(self, record: DecisionRecord) -> bool:
        """Queue a record for writing; False if it was dropped (queue full, log closed). Never
        blocks, never raises."""
        return self._put(record)

    def offer_decision(self, req: RerankRequest, decision_or_result, **options) -> bool:
        """`offer(DecisionRecord.of(req, decision_or_result, **options))`, with the record built
        on the converter thread: the request path only stamps the time and queues the references
        (about 2 µs instead of 12). `req` and the answer must not be changed afterwards (the
        engine never does). A record that cannot be built counts as malformed (dropped)."""
        options.setdefault("ts", None)
        return self._put(_Deferred(req, decision_or_result, time.time_ns() // 1000, options))

    def _put(self, item) -> bool:
        try:
            size = item.approx_bytes()
            s = self.stats
            with self._lock:
                s.offered += 1
                if self._closed:
                    s.dropped_closed += 1
                    return False
                if len(self._queue) >= self.queue_size or (
                        self._queue and self._queued_bytes + size > self.queue_bytes):
                    s.dropped_full += 1
                    full = True
                else:
                    full = False
                    self._queue.append((item, size))
                    self._queued_bytes += size
                    if len(self._queue) == self.stage_size:  # the converter stages them now
                        self._wake.set()
            if full:
                self._say("full", logging.WARNING, "decision log queue full: records dropped",
                          queue_size=self.queue_size, dropped_full=s.dropped_full)
            return not full
        except Exception:  # noqa: BLE001 - never the caller's problem
            try:
                with self._lock:
                    self.stats.dropped_invalid += 1
                self._say("offer", logging.ERROR, "decision log: offer() failed, record dropped",
                          exc_info=True)
            except Exception:  # noqa: BLE001
                pass
            return False

    # ------------------------------------------------------------ lifecycle
    def pending(self) -> int:
        """Records not written yet: queued, and held in batches waiting for the sink."""
        with self._lock:
            return len(self._queue) + self._held_rows

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Hand everything queued now to the sink (partial batch included) and wait for it;
        True if nothing is left waiting. (A Parquet sink's rows are in files once they are
        finished: see ParquetSink.)"""
        deadline = time.monotonic() + timeout_s
        self._flush_now.set()
        self._wake.set()
        try:
            while time.monotonic() < deadline:
                if self.pending() == 0:
                    return True
                time.sleep(0.005)
            return self.pending() == 0
        finally:
            self._flush_now.clear()

    def close(self, timeout_s: float = 10.0) -> bool:
        """Stop accepting records, write what is queued and held (retrying a failing sink until
        `timeout_s`), close the sink. What is left then is dropped (`stats.dropped_unwritten`).
        True if everything offered before close was written. Idempotent."""
        with self._lock:
            self._closed = True
            if not self._closing.is_set():
                self._deadline = time.monotonic() + timeout_s
        self._closing.set()
        self._wake.set()
        with self._held_cv:
            self._held_cv.notify_all()
        self._done.wait(timeout_s + 6.0)
        return self._done.is_set() and self.pending() == 0 and self.stats.dropped_unwritten == 0

    def __enter__(self) -> "DecisionLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ the writer threads
    def _take(self, limit: int) -> list:
        """Up to `limit` items from the queue (and about `batch_bytes` of request data at most),
        counted as waiting (`_held_rows`) until written or dropped."""
        with self._lock:
            q = self._queue
            out: list = []
            size = 0
            while q and len(out) < limit and size < self.batch_bytes:
                item, n = q.popleft()
                out.append(item)
                size += n
            self._queued_bytes -= size
            self._held_rows += len(out)
            return out

    def _stage(self, item):
        """A queued item made ready for a batch: a decision as a `Staged` record (the request's
        arrays copied, so it can be freed), an outcome as it is; None if it is malformed
        (dropped, counted, logged)."""
        if self.convert is not None:
            return item
        try:
            return Staged(item.record() if type(item) is _Deferred else item, self._pause)
        except Exception as e:  # noqa: BLE001 - a malformed record: this one only
            with self._lock:
                self.stats.dropped_invalid += 1
                self._held_rows -= 1
            request_id = getattr(getattr(item, "req", item), "request_id", "?")
            self._say("invalid", logging.ERROR, "decision log: record cannot be converted, dropped",
                      request_id=request_id, error=f"{type(e).__name__}: {e}")
            return None

    def _batch(self, staged: list) -> pa.RecordBatch:
        if self.convert is not None:
            return self.convert(staged)
        return assemble(staged, writer=self.writer_id, dropped=self.stats.dropped, pause=self._pause)

    def _chunk(self, staged: list) -> tuple[list, pa.RecordBatch | None]:
        """One chunk assembled, and the records kept: a chunk that fails is assembled record by
        record and the malformed ones dropped (logged)."""
        try:
            return staged, self._batch(staged)
        except Exception:  # noqa: BLE001 - find the bad record(s); keep the others
            good = []
            for r in staged:
                try:
                    self._batch([r])
                    good.append(r)
                except Exception as e:  # noqa: BLE001
                    rec = getattr(r, "rec", r)
                    self._say("invalid", logging.ERROR, "decision log: record cannot be converted, dropped",
                              request_id=getattr(rec, "request_id", "?"), error=f"{type(e).__name__}: {e}")
            return good, (self._batch(good) if good else None)

    def _assemble(self, staged: list) -> pa.Table | None:
        """Staged records -> one table (batches of `convert_chunk` records)."""
        kept = 0
        batches = []
        for i in range(0, len(staged), self.convert_chunk):
            good, batch = self._chunk(staged[i:i + self.convert_chunk])
            kept += len(good)
            if batch is not None:
                batches.append(batch)
        if kept < len(staged):
            with self._lock:
                self.stats.dropped_invalid += len(staged) - kept
                self._held_rows -= len(staged) - kept
        return pa.Table.from_batches(batches) if batches else None

    def _sink_call(self, what: str, call, *args) -> bool:
        try:
            call(*args)
            return True
        except Exception as e:  # noqa: BLE001 - counted, logged, retried
            with self._lock:
                self.stats.write_errors += 1
            self._say(f"sink-{what}", logging.WARNING, f"decision log sink {what} failed",
                      sink=type(self.sink).__name__, error=f"{type(e).__name__}: {e}",
                      write_errors=self.stats.write_errors, queued=self.pending())
            return False
        finally:
            self._account_sink_losses()

    def _account_sink_losses(self) -> None:
        lost = getattr(self.sink, "lost", 0)
        if isinstance(lost, int) and lost > self.stats.dropped_sink:
            with self._lock:  # written, then lost: no longer counted as written
                self.stats.written -= lost - self.stats.dropped_sink
                self.stats.dropped_sink = lost

    def _wait_for_room(self) -> bool:
        """Block the converter while `max_held_batches` batches wait for the sink; False when it
        should stop trying (close's deadline passed, or the sink thread has stopped)."""
        with self._held_cv:
            while len(self._held) >= self.max_held_batches:
                if self._sink_stopped or (self._closing.is_set() and time.monotonic() >= self._deadline):
                    return False
                self._held_cv.wait(0.05)
            return True

    def _run_convert(self) -> None:
        """The converter thread: stages the records queued when `stage_size` wait (that offer
        wakes it) or every `stage_every_s` while records come, so that the requests' arrays
        are freed soon; assembles `batch_size` staged records (or fewer after `flush_s`, or
        about `batch_bytes`) into a table and hands it to the sink thread (held). With no
        traffic it looks less often (doubling up to 50 ms)."""
        staged: list = []
        staged_bytes = 0
        oldest = 0.0  # monotonic: when the first of `staged` was taken
        idle_wait = self.stage_every_s
        try:
            while True:
                closing = self._closing.is_set()
                self._wake.clear()  # before looking at the queue: an offer after this wakes us
                if not self._wait_for_room():
                    break
                took = self._take(self.batch_size - len(staged))
                if took and not staged:
                    oldest = time.monotonic()
                self._pause.restart()
                for item in took:
                    s = self._stage(item)
                    if s is not None:
                        staged.append(s)
                        staged_bytes += getattr(s, "nbytes", 0)
                took, item = len(took), None  # no reference to a request kept while waiting
                now = time.monotonic()
                due = closing or self._flush_now.is_set() or now - oldest >= self.flush_s
                if staged and (len(staged) >= self.batch_size or staged_bytes >= self.batch_bytes or due):
                    table = self._assemble(staged)
                    staged, staged_bytes = [], 0
                    if table is not None:
                        with self._held_cv:
                            self._held.append(table)
                            self._held_cv.notify_all()
                    continue
                if self._sink_stopped:
                    break
                if closing and (not self._queue or time.monotonic() >= self._deadline):
                    break
                idle_wait = self.stage_every_s if took else min(idle_wait * 2.0, self.flush_s, _IDLE_WAIT_S)
                wait = min(idle_wait, self.flush_s - (now - oldest)) if staged else idle_wait
                self._wake.wait(max(wait, 0.0005))
        except Exception:  # noqa: BLE001 - a bug here must not go unnoticed; offers keep dropping
            log.exception("decision log converter stopped by an error")
        finally:
            with self._held_cv:
                self._converter_done = True
                self._held_cv.notify_all()

    def _next_for_sink(self, retry_at: float, last_flush: float) -> pa.Table | None:
        """The batch to write now, or None when it is time to flush, stop or retry later."""
        with self._held_cv:
            while True:
                now = time.monotonic()
                if self._held and now >= retry_at:
                    return self._held[0]
                if (not self._held and self._converter_done) or now - last_flush >= self.flush_s:
                    return None
                if self._closing.is_set() and now >= self._deadline:
                    return None
                timeout = self.flush_s - (now - last_flush)
                if self._held:
                    timeout = min(timeout, retry_at - now)
                if self._closing.is_set():
                    timeout = min(timeout, self._deadline - now)
                self._held_cv.wait(max(timeout, 0.001))

    def _run_sink(self) -> None:
        """The sink thread: held tables -> sink.write, in order, retried with backoff; flushes."""
        backoff = self.retry_initial_s
        retry_at = 0.0
        last_flush = time.monotonic()
        _lower_priority(self.writer_nice)
        try:
            while True:
                table = self._next_for_sink(retry_at, last_flush)
                if table is not None:
                    if self._sink_call("write", self.sink.write, table):
                        with self._held_cv:
                            self._held.popleft()
                            self._held_cv.notify_all()
                        with self._lock:
                            self._held_rows -= table.num_rows
                            self.stats.written += table.num_rows
                        backoff, retry_at = self.retry_initial_s, 0.0
                    else:
                        retry_at = time.monotonic() + backoff
                        backoff = min(backoff * 2.0, self.retry_max_s)
                if time.monotonic() - last_flush >= self.flush_s:
                    self._sink_call("flush", self.sink.flush)
                    last_flush = time.monotonic()
                with self._held_cv:
                    if not self._held and self._converter_done:
                        break
                if self._closing.is_set() and time.monotonic() >= self._deadline:
                    break
        except Exception:  # noqa: BLE001 - a bug here must not go unnoticed; offers keep dropping
            log.exception("decision log writer stopped by an error")
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        with self._held_cv:
            self._sink_stopped = True
            self._held_cv.notify_all()
        with self._lock:
            self._closed = True
        self._wake.set()
        self._converter.join(timeout=5.0)  # it stops at its next check (within one conversion)
        self._sink_call("close", self.sink.close)
        with self._lock:
            left = len(self._queue) + self._held_rows
            self._queue.clear()
            self._queued_bytes = 0
            self._held.clear()
            self._held_rows = 0
            self.stats.dropped_unwritten += left
        if left:
            log.error("decision log closed with records unwritten: dropped",
                      extra={"dropped_unwritten": left, "sink": type(self.sink).__name__})
        self._done.set()


def outcome_log(folder, *, max_bytes: int = 64 * MiB, max_seconds: float = 300.0,
                **options) -> DecisionLog:
    """A log of OutcomeRecords to Parquet files in `folder` (an OutcomeSink), with the same
    queue, batching and failure handling as the decision log (`options`: DecisionLog's)."""
    return DecisionLog(OutcomeSink(folder, max_bytes=max_bytes, max_seconds=max_seconds),
                       convert=outcomes_to_batch, **options)


__all__ = ["DecisionLog", "outcome_log", "LogStats", "SAMPLING_PERSON", "sampled", "sampling_hash"]
