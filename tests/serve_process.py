"""Helpers for tests that run `reranker serve` as a subprocess and read its JSON log lines."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable


def log_waiter(proc: subprocess.Popen) -> Callable[..., dict]:
    """`wait_for(msg, timeout=60)`: the next JSON log record on proc's stderr whose msg is `msg`
    (earlier records are skipped); raises queue.Empty when none comes within the timeout."""
    records: queue.Queue[dict] = queue.Queue()
    threading.Thread(target=lambda: [records.put(json.loads(line)) for line in proc.stderr],
                     daemon=True).start()

    def wait_for(msg: str, timeout: float = 60) -> dict:
        end = time.monotonic() + timeout
        while True:
            record = records.get(timeout=max(end - time.monotonic(), 0.01))
            if record["msg"] == msg:
                return record

    return wait_for


def assert_log_replays(records, served: dict, policies_dir) -> None:
    """Every logged record names the policy revision that served it and the slate the caller got
    (`served`: request id -> (policy, item ids, digest)), and replays to that slate, bit for bit,
    through the pure request path - where the answer did not depend on the clock (engine.decide:
    an exact solve stopped by its time limit may end elsewhere on another run). Most of them must."""
    from engine.decide import decide
    from engine.engine import Engine

    engine = Engine.from_directory(str(policies_dir))
    strict = 0
    for rec in records:
        name, items, digest = served[rec.request_id]
        assert (rec.policy, rec.policy_digest) == (name, digest)
        assert list(rec.slate_item_ids) == items
        replay = decide(engine.version(rec.policy, rec.policy_digest), rec.request(),
                        limits=engine.limits, boosts=rec.boosts)
        status = rec.diagnostics.exact_status or ""
        if status in ("", "optimal") or status.startswith("skipped"):
            assert [it.item_id for it in replay.result.items] == items, (rec.request_id, status)
            strict += 1
        else:  # timed out: the same length, within the same rules
            assert len(replay.result.items) == len(items), (rec.request_id, status)
    assert strict >= len(records) / 2, f"only {strict} of {len(records)} answers were clock-free"


class LogRecords:
    """Every JSON log record of proc's stderr, kept (lines that are not JSON are skipped), so
    that records can be looked up in any order: `wait(msg, timeout=60, **fields)` returns the
    first record with that msg (and those field values) not returned before."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.records: list[dict] = []
        self.done = False  # stderr closed: the process (tree) is gone
        self._taken: set[int] = set()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            if not line.startswith("{"):
                continue
            with self._cond:
                self.records.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self.done = True
            self._cond.notify_all()

    def all(self, msg: str, **fields) -> list[dict]:
        with self._cond:
            return [r for r in self.records if r["msg"] == msg
                    and all(r.get(k) == v for k, v in fields.items())]

    def wait(self, msg: str, timeout: float = 60, **fields) -> dict:
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, r in enumerate(self.records):
                    if i not in self._taken and r["msg"] == msg and all(
                            r.get(k) == v for k, v in fields.items()):
                        self._taken.add(i)
                        return r
                left = end - time.monotonic()
                if left <= 0 or self.done:
                    last = [(r["msg"], r.get("error") or r.get("exitcode")) for r in self.records[-8:]]
                    raise TimeoutError(f"no log record {msg!r} {fields or ''} within {timeout} s"
                                       f"{' (the process exited)' if self.done else ''}; last: {last}")
                self._cond.wait(left)
