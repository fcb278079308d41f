"""What a worker process of `server.supervisor.serve_processes` runs.

A spawned worker imports this module first, so it imports nothing heavy at module level:
`worker_entry` sets up the JSON logs, compiles the kernels with progress lines
(`server.startup.import_kernels`), then `worker_main` imports `server.app` and serves.
"""

from __future__ import annotations

import logging
import os

from server.startup import import_kernels, stop_with_parent

log = logging.getLogger("server.app")  # one logger name for the server's lines, as before


def worker_entry(index: int, address: str, policies_dir: str, options: dict, log_level: int,
                 ready) -> None:
    """What a spawned worker process runs: JSON logs first, then the kernels with progress, then
    `worker_main` (which imports server.app: importing it any earlier would compile the wire
    kernels without the progress lines)."""
    from server.logging_setup import configure_logging

    configure_logging(log_level)
    import_kernels("worker ", index)
    worker_main(index, address, policies_dir, options, log_level, ready)


def worker_main(index: int, address: str, policies_dir: str, options: dict, log_level: int,
                 ready) -> None:
    """A worker process (spawned): JSON logs, then `serve` on the shared port.

    Once `serve` has returned (calls drained, servers stopped) the worker leaves with os._exit:
    the interpreter's own teardown (about 1,200 modules, numba / LLVM objects) took 0.3-0.6 s, more
    on a busy machine, of every stop and restart, and there is nothing left for it to do. What
    it would do and matters is done here first: flush the logs, flush `ready` to the parent.

    A worker whose parent is gone (killed, crashed) stops like on SIGTERM: orphaned workers would
    otherwise serve on, unsupervised, and stay in the port's SO_REUSEPORT group next to the
    workers of a new `serve` on the same port, taking their share of its connections."""
    import sys

    # server.app only now: this module is what a spawned worker imports first (see worker_entry)
    from server.app import serve
    from server.logging_setup import configure_logging

    configure_logging(log_level)
    stop_with_parent(index)
    try:
        code = serve(address, policies_dir, worker=index,
                     on_serving=lambda port: ready.put((index, os.getpid())), **options)
    except Exception:  # noqa: BLE001 - bad policy folder, port, ...: logged (JSON), exit 1
        log.exception("worker cannot start", extra={"worker": index})
        code = 1
    ready.close()
    ready.join_thread()  # the "ready" message, if still in the feeder thread, reaches the parent
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
