"""Start-up steps that must run before the heavy modules load: the kernel modules compile their
Numba kernels when imported (explicit signatures; about 40 s in all with an empty Numba cache,
well under 1 s from the cache), so the CLI and each worker process import them here, one by one,
logging each step, instead of showing ~40 s of silence. This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("server.app")

#: The modules whose import compiles Numba kernels, in the order they are imported.
KERNEL_MODULES = ("solvers._greedy_kernels", "solvers._evaluate_kernels", "solvers._bound_kernels",
                  "server._wire_kernels")
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


def heavy_entry(serve, tag: str, worker: int | None, address: str, policies_dir: str, options: dict,
                log_level: int, ready, nice: int = 0) -> None:
    """What a heavy worker process (server.heavy) runs: JSON logs, a lower CPU priority, the
    kernels, then `serve` (server.app.serve, handed over by the serving process: this module
    imports no server module) on its unix socket with the heavy role; `ready` (a pipe's sending
    end) gets its pid once it reports SERVING. Stops with its parent (the serving process), and leaves with os._exit
    as workers do."""
    from server.logging_setup import configure_logging

    configure_logging(log_level)
    if nice:
        try:
            os.nice(nice)
        except OSError:  # not allowed here: same priority, still a process of its own
            pass
    import_kernels(tag + " ", worker)
    stop_with_parent(worker, what=tag)
    try:
        code = serve(address, policies_dir, worker=worker, heavy_role=tag,
                     on_serving=lambda _port: ready.send(os.getpid()), **options)
    except Exception:  # noqa: BLE001 - logged (JSON), exit 1: the serving process restarts it
        log.exception(tag + " cannot start", extra={"worker": worker})
        code = 1
    if address.startswith("unix:"):  # its socket, and the folder once empty (a parent killed
        path = address[len("unix:"):]  # outright cannot remove it)
        for remove, target in ((os.unlink, path), (os.rmdir, os.path.dirname(path))):
            try:
                remove(target)
            except OSError:
                pass
    ready.close()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def stop_with_parent(index: int | None, what: str = "") -> None:
    """In a spawned worker (or heavy worker): SIGTERM this process (drain, exit) once the parent
    process is gone. `what` prefixes the log line ("heavy worker: parent process gone; ...")."""
    import multiprocessing
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        wait([parent.sentinel])  # readable once the parent has exited, however it exited
        log.error((what + ": " if what else "") + "parent process gone; stopping",
                  extra={"worker": index, "pid": os.getpid()})
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
