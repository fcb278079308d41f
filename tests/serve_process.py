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
