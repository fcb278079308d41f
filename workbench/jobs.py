"""Long work (previews, Pareto sweeps) off the request path: one background thread runs the jobs
in order, and the page polls `Job.to_json()` for its phase and progress, so no request waits on
a replay and the page never freezes.

Progress: each job goes through named phases ("sampling", "replaying", "bootstrap", ...). The
replay itself reports no progress to its caller, so the fraction shown while it runs is an
estimate, elapsed / expected seconds, where the expected time is the job's records x policies
at the throughput the previous jobs measured (capped at 95 % until the job ends); the page says
it is an estimate.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

#: jobs kept for polling (the oldest finished ones are dropped first)
KEEP = 50
#: seconds per (record x policy) before any job has measured it
DEFAULT_RATE_S = 3e-4


class Job:
    def __init__(self, job_id: str, kind: str, work: float, rate: Callable[[], float]):
        self.id = job_id
        self.kind = kind
        self.state = "queued"  # queued | running | done | failed
        self.phase = "waiting for the previous job"
        self.work = work  # records x policies, for the time estimate
        self._rate = rate
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.result: dict | None = None
        self.error: str | None = None
        self.issues: list[dict] = []
        self.extra: dict = {}  # kept server-side (e.g. the sweep's policy texts)
        self.ended = threading.Event()  # set once done or failed (long polls wait on it)

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    def to_json(self) -> dict:
        expected = max(self.work * self._rate(), 0.05)
        if self.state == "done":
            fraction = 1.0
        elif self.state == "running":
            fraction = min(0.95, self.seconds / expected)
        else:
            fraction = 0.0
        out = {"id": self.id, "kind": self.kind, "state": self.state, "phase": self.phase,
               "seconds": round(self.seconds, 3), "expected_seconds": round(expected, 2),
               "fraction": round(fraction, 3), "error": self.error, "issues": self.issues}
        if self.state == "done":
            out["result"] = self.result
        return out


class Jobs:
    """A queue of jobs run one at a time on one background thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._rate = DEFAULT_RATE_S  # learned: seconds per record x policy

    def rate(self) -> float:
        return self._rate

    def learn(self, seconds_per_unit: float) -> None:
        """Fold a measured seconds per (record x policy) into the estimate."""
        if seconds_per_unit > 0:
            self._rate = (seconds_per_unit if self._rate == DEFAULT_RATE_S
                          else 0.5 * self._rate + 0.5 * seconds_per_unit)

    def submit(self, kind: str, work: float, fn: Callable[[Job], dict]) -> Job:
        """Queue `fn(job) -> result` (a JSON-able dict); `work` = records x policies."""
        with self._lock:
            job = Job(f"{kind}-{next(self._ids)}", kind, work, self.rate)
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP:
                old = next((k for k, j in self._jobs.items() if j.state in ("done", "failed")), None)
                if old is None:
                    break
                del self._jobs[old]
        self._pool.submit(self._run, job, fn)
        return job

    def _run(self, job: Job, fn: Callable[[Job], dict]) -> None:
        job.state, job.started = "running", time.time()
        try:
            job.result = fn(job)
            job.state = "done"
            job.phase = "done"
        except Exception as e:  # noqa: BLE001 - the job's error is shown on the page
            job.state, job.phase = "failed", "failed"
            job.error = str(e) or type(e).__name__
            job.issues = list(getattr(e, "issues", []) or [])
            if not isinstance(e, ValueError):
                log.error("workbench job failed", extra={"job": job.id, "trace": traceback.format_exc()})
        finally:
            job.finished = time.time()
            job.ended.set()
        if job.state == "done" and job.work > 0 and job.kind != "warmup":
            self.learn(job.seconds / job.work)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
