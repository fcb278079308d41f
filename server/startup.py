"""Start-up steps that must run before the heavy modules load: the kernel modules compile their
Numba kernels when imported (explicit signatures; about 40 s in all with an empty Numba cache,
well under 1 s from the cache), so the CLI and each worker process import them here, one by one,
logging each step, instead of showing ~40 s of silence. This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

log = logging.getLogger("server.app")

#: The modules whose import compiles Numba kernels, in the order they are imported.
KERNEL_MODULES = ("solvers._greedy_kernels", "solvers._evaluate_kernels", "server._wire_kernels")
# (solvers._explore_kernels compiles only where a policy explores: in that policy's warm-up step)


def import_kernels(tag: str = "", worker: int | None = None) -> float:
    """Import the kernel modules not yet imported, logging step i of n; returns the seconds."""
    todo = [m for m in KERNEL_MODULES if m not in sys.modules]
    t0 = time.perf_counter()
    for i, name in enumerate(todo, start=1):
        log.info(tag + "compiling kernels", extra={
            "kernel_module": name, "i": i, "of": len(todo), "seconds": round(time.perf_counter() - t0, 1),
            "worker": worker, "pid": os.getpid(),
            "note": "loads from the Numba cache in well under a second; about 40 s when it is empty"})
        importlib.import_module(name)
    seconds = time.perf_counter() - t0
    if todo:
        log.info(tag + "kernels ready", extra={"seconds": round(seconds, 1), "worker": worker,
                                               "pid": os.getpid()})
    return seconds


def process_started_ago_s() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere), so that startup_ms counts
    the interpreter's start and imports, not only what serve() does."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0
