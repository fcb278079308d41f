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
