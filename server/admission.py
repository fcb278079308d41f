"""Admission control: what one caller may ask of a server process, so that no caller can take
the service from the others.

- `max_batch`: entries of one RerankBatch (RESOURCE_EXHAUSTED naming `requests` above it).
- `max_work`: work units of one request (`engine.validate.work_units`: candidates x slate
  positions x greedy runs x a diversity factor); above it the request is refused
  (RESOURCE_EXHAUSTED naming `candidates.item_ids`) before it is decoded. A batch counts the sum
  of its entries.
- a message larger than `heavy_bytes` while the heavy lane is busy is refused before it is even
  parsed (parsing a 10,000-candidate request holds the GIL for milliseconds); with the lane in a
  process of its own (server.heavy) such a message always goes there unparsed;
- the heavy lane: a request (or batch) of more than `heavy_work` units runs only while it holds
  the process's one heavy slot, so at most one handler thread at a time does heavy work and the
  others stay free for normal calls. A heavy call that cannot get the slot within `heavy_wait_s`
  is refused (RESOURCE_EXHAUSTED, "heavy lane busy"): heavy callers share one thread per process,
  and retry.
- `max_queue`: calls that may wait for a handler thread (None: no bound). A call that arrives
  while that many wait is refused at once (RESOURCE_EXHAUSTED, "queue full"), on a thread of its
  own, instead of waiting behind them (server.app's handler pool does this).
- Calls whose deadline passed while they waited in the server's queue are shed before any work
  (DEADLINE_EXCEEDED), counted by reason, and summarised in the log at most once per
  `log_interval_s`.

Everything is counted in `stats` (read by server.metrics at scrape time).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from server.errors import Overloaded

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_WORK = 10_000_000  # ~0.3-1 s of greedy time on the 2-core machine
DEFAULT_HEAVY_WORK = 500_000  # ~15-50 ms: 10x a normal N=1000, K=50 request
DEFAULT_HEAVY_WAIT_S = 0.0
DEFAULT_HEAVY_BYTES = 512 * 1024  # a normal N=1000 request is ~40-70 KB (without embeddings)

#: Reasons a call is shed or refused (the `reason` label of reranker_shed_total).
SHED_REASONS = ("deadline_in_queue", "cancelled_in_queue", "queue_full", "batch_too_large",
                "work_too_large", "heavy_lane_busy")


@dataclass(frozen=True)
class AdmissionLimits:
    max_batch: int = DEFAULT_MAX_BATCH
    max_work: int = DEFAULT_MAX_WORK
    heavy_work: int = DEFAULT_HEAVY_WORK
    heavy_wait_s: float = DEFAULT_HEAVY_WAIT_S
    heavy_bytes: int = DEFAULT_HEAVY_BYTES
    log_interval_s: float = 1.0
    max_queue: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_work", "heavy_work", "heavy_bytes"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"admission {name}: must be an integer >= 1, got {v!r}")
        if self.max_queue is not None and not (isinstance(self.max_queue, int) and self.max_queue >= 0):
            raise ValueError(f"admission max_queue: must be an integer >= 0 or None, got {self.max_queue!r}")
        if not (self.heavy_wait_s >= 0):
            raise ValueError(f"admission heavy_wait_s: must be a number >= 0, got {self.heavy_wait_s!r}")


@dataclass
class _Counts:
    shed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SHED_REASONS, 0))
    heavy: int = 0  # calls that ran in the heavy lane


class Admission:
    """One per server process; thread-safe."""

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self._heavy = threading.Semaphore(1)
        self._busy = False
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._unlogged: dict[str, int] = {}
        self._waiting = 0  # calls queued for a handler thread, not started yet
        self._last_log = -float("inf")
        self._flusher: threading.Timer | None = None
        #: called as (method, gRPC code name) for calls dropped in the queue (the servicer points
        #: it at reranker_errors_total), since no handler sees them
        self.error_observer = None

    # ---------------------------------------------------------------------------- counters
    @property
    def shed(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts.shed)

    @property
    def heavy_calls(self) -> int:
        with self._lock:
            return self._counts.heavy

    def count_shed(self, reason: str, **context) -> None:
        """Count one shed / refused call; log a summary at most once per log interval (calls
        shed within the interval are summed into one line logged when it ends)."""
        now = time.monotonic()
        with self._lock:
            self._counts.shed[reason] += 1
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            wait = self._last_log + self.limits.log_interval_s - now
            if wait > 0:
                if self._flusher is None:  # the rest of this interval's calls: one line later
                    self._flusher = threading.Timer(wait, self._flush)
                    self._flusher.daemon = True
                    self._flusher.start()
                return
            summary, self._unlogged = self._unlogged, {}
            self._last_log = now
        log.warning("calls shed or refused by admission control", extra={"shed": summary, **context})

    def _flush(self) -> None:
        with self._lock:
            self._flusher = None
            summary, self._unlogged = self._unlogged, {}
            if summary:
                self._last_log = time.monotonic()
        if summary:
            log.warning("calls shed or refused by admission control", extra={"shed": summary})

    def count_dropped(self, method: str, expired: bool) -> None:
        """A call grpc dropped while it waited in the queue (its handler never ran). The error
        counter moves before the shed counter, so whoever sees the shed sees the error too."""
        observer = self.error_observer
        if observer is not None:
            observer(method, "DEADLINE_EXCEEDED" if expired else "CANCELLED")
        self.count_shed("deadline_in_queue" if expired else "cancelled_in_queue", method=method)

    @property
    def waiting(self) -> int:
        """Calls waiting for a handler thread now."""
        return self._waiting

    def enter_queue(self) -> bool:
        """A call is queued for a handler thread: False (not queued) when max_queue already wait."""
        limit = self.limits.max_queue
        with self._lock:
            if limit is not None and self._waiting >= limit:
                return False
            self._waiting += 1
            return True

    def leave_queue(self) -> None:
        """A queued call's task started (its handler runs now, or grpc drops it)."""
        with self._lock:
            self._waiting -= 1

    def count_queue_full(self, method: str) -> None:
        """A call refused because `max_queue` calls were already waiting for a handler thread."""
        self.count_shed("queue_full", method=method)
        observer = self.error_observer
        if observer is not None:
            observer(method, "RESOURCE_EXHAUSTED")

    # --------------------------------------------------------------------------- the lane
    @contextmanager
    def lane(self, work: int, policy: str = "", *, message_bytes: int | None = None):
        """Run the body in the heavy lane when `work` > heavy_work (else directly), or, given
        `message_bytes` (a message over heavy_bytes, not parsed), in any case. A busy lane (not
        free within heavy_wait_s) is counted and raised as Overloaded (RESOURCE_EXHAUSTED).
        Yields whether the body holds the lane (with --heavy-lane process, the servicer then
        forwards the call to the heavy worker process: server.heavy)."""
        if message_bytes is None and work <= self.limits.heavy_work:
            yield False
            return
        wait = self.limits.heavy_wait_s
        if not (self._heavy.acquire(timeout=wait) if wait > 0 else self._heavy.acquire(blocking=False)):
            self.count_shed("heavy_lane_busy", policy=policy)
            if message_bytes is not None:
                raise Overloaded("", f"heavy lane busy: a message of {message_bytes:,} bytes runs only "
                                     "while no other heavy request runs on this server process (over "
                                     f"{self.limits.heavy_bytes:,} bytes, or {self.limits.heavy_work:,} "
                                     "work units); retry with backoff, or send a smaller request")
            raise Overloaded("", f"heavy lane busy: a request of {work:,} work units runs only while "
                                 "no other heavy request runs on this server process (above "
                                 f"{self.limits.heavy_work:,} units, reranker serve --heavy-work); "
                                 "retry with backoff, or send a smaller request")
        with self._lock:
            self._counts.heavy += 1
            self._busy = True
        try:
            yield True
        finally:
            with self._lock:
                self._busy = False
            self._heavy.release()

    @property
    def lane_busy(self) -> bool:
        """Whether a heavy call holds the lane now (a hint: it may free up at any moment)."""
        return self._busy
