"""Multi-process serving: `serve_processes` runs several `server.app.serve` workers on one port.

The supervisor reserves the port (SO_REUSEPORT), spawns the workers, forwards SIGTERM / SIGINT /
SIGHUP to them, restarts a worker that dies after it served, and stops everything when one dies
before it ever served. Each worker is a full single-process server (`server.app.serve`): its own
engine, warm-up, policy watcher, health and metrics. `server.app` knows nothing of this module.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import time

from server.app import DEFAULT_ADDRESS, DEFAULT_GRACE_S, BindError
from server.startup import process_started_ago_s
from server.worker import worker_entry

log = logging.getLogger("server.app")  # one logger name for the server's lines, as before

DEFAULT_PROCESSES = 2  # one per core on the 2-core target machine
RESTART_DELAY_S = 1.0  # a worker that died is restarted after this pause (no tight crash loop)


def reserve_port(address: str) -> tuple[socket.socket, str, int]:
    """Bind (not listen) a SO_REUSEPORT socket on `address` to fix its port when it is 0.

    Returns (socket, host, port). Keep the socket open while workers bind the same port with
    SO_REUSEPORT: nobody else can take the port meanwhile, and a bound socket that does not
    listen receives no connections. Raises BindError (e.g. a non-sharing process owns the port).
    """
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
        family, kind, proto, _name, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (ValueError, OSError) as exc:
        raise BindError(f"cannot listen on {address!r}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {address!r}: {exc}") from exc
    return sock, host, sock.getsockname()[1]


def check_worker_ports(base: int, processes: int, address: str,
                       metrics_ports: tuple[int, ...] = ()) -> None:
    """`serve --worker-ports BASE`: worker i listens on BASE + i alone. Raises ValueError naming
    the flag when a port is out of range or clashes with --address's port or a metrics port
    (`metrics_ports`: every metrics port the server will bind, heavy workers' included)."""
    if not 1 <= base <= 65535:
        raise ValueError(f"--worker-ports: must be a port in 1-65535, got {base}")
    last = base + processes - 1
    if last > 65535:
        raise ValueError(f"--worker-ports: worker ports {base}-{last} (one per process, "
                         f"--processes {processes}) go past 65535; use a base of at most "
                         f"{65536 - processes}")
    ports = range(base, last + 1)
    _host, _, port_text = address.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        port = 0  # the bind itself reports a bad address
    if port in ports:
        raise ValueError(f"--worker-ports: worker ports {base}-{last} include --address's port {port}")
    clash = sorted(set(ports) & set(metrics_ports))
    if clash:
        raise ValueError(f"--worker-ports: worker ports {base}-{last} include metrics port "
                         f"{clash[0]} (--metrics-port + a worker's index)")


def serve_processes(
    address: str = DEFAULT_ADDRESS,
    policies_dir: str = "policies",
    *,
    processes: int = DEFAULT_PROCESSES,
    grace_s: float = DEFAULT_GRACE_S,
    worker_ports: int | None = None,
    **options,
) -> int:
    """Run `processes` workers, each a full `serve` (own engine, warm-up, policy watcher, health,
    metrics on metrics_port + index) on one port shared with SO_REUSEPORT; the kernel spreads
    connections over them. Returns the exit code (0 after a graceful stop).

    The parent picks the port when `address` asks for port 0, logs "listening" (with "port"),
    then "serving" once every worker reports SERVING. SIGTERM / SIGINT are forwarded to the
    workers, which drain (`grace_s`); SIGHUP too (reload). A worker that dies after it served is
    logged and restarted; one that dies before it ever served stops everything (exit 1). Workers
    whose parent is gone (SIGKILL, crash) stop on their own, as on SIGTERM.
    `worker_ports`: worker i also listens on port worker_ports + i alone (not shared): one
    client channel with gRPC's round_robin over those ports keeps a connection per worker.
    Options are `serve`'s keyword arguments. Call from the main thread.
    """
    import multiprocessing

    t_start = time.monotonic() - process_started_ago_s()
    sock, host, port = reserve_port(address)
    shared = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    ctx = multiprocessing.get_context("spawn")  # no gRPC / numba state copied across a fork
    ready = ctx.Queue()
    log_level = logging.getLogger().getEffectiveLevel()
    options = dict(options, grace_s=grace_s)

    def start(index: int):
        own = options if worker_ports is None else dict(options, worker_port=worker_ports + index)
        proc = ctx.Process(target=worker_entry, name=f"reranker-worker-{index}", daemon=False,
                           args=(index, shared, policies_dir, own, log_level, ready))
        proc.start()
        return proc

    events: queue.SimpleQueue[int] = queue.SimpleQueue()
    handled = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.signal(sig, lambda signum, _frame: events.put(signum)) for sig in handled}
    workers: dict[int, multiprocessing.process.BaseProcess] = {}
    served: set[int] = set()
    code = 0
    try:
        log.info("starting", extra={
            "address": shared, "port": port, "processes": processes, "policies_dir": policies_dir,
            "pid": os.getpid(), "note": "each worker loads the policies and compiles its kernels "
            "before it takes calls (seconds with a warm Numba cache, about a minute without)"})
        for index in range(processes):
            workers[index] = start(index)
        signum = None
        while signum is None:
            try:
                signum = events.get(timeout=0.2)
                if hasattr(signal, "SIGHUP") and signum == signal.SIGHUP:
                    for proc in workers.values():
                        if proc.is_alive():
                            os.kill(proc.pid, signal.SIGHUP)
                    signum = None
                continue
            except queue.Empty:
                pass
            while not ready.empty():
                index, pid = ready.get()
                first = len(served) < processes
                if not served:  # the port takes connections now (the parent held it bound only)
                    log.info("listening", extra={
                        "address": shared, "port": port, "processes": processes,
                        "worker_ports": None if worker_ports is None
                        else [worker_ports + i for i in range(processes)],
                        "policies_dir": policies_dir, "pid": os.getpid(),
                        "tls": options.get("tls") is not None,
                        "seconds": round(time.monotonic() - t_start, 1)})
                served.add(index)
                log.info("worker ready", extra={"worker": index, "pid": pid})
                if first and len(served) == processes:
                    log.info("serving", extra={"port": port, "processes": processes,
                                               "pids": [p.pid for p in workers.values()],
                                               "startup_ms": round((time.monotonic() - t_start) * 1e3, 1)})
            for index, proc in list(workers.items()):
                if proc.is_alive():
                    continue
                if index not in served:
                    log.error("worker exited before serving; stopping",
                              extra={"worker": index, "exitcode": proc.exitcode})
                    code = 1
                    signum = signal.SIGTERM
                    break
                log.error("worker died; restarting it",
                          extra={"worker": index, "pid": proc.pid, "exitcode": proc.exitcode})
                time.sleep(RESTART_DELAY_S)
                workers[index] = start(index)
        log.info("shutting down", extra={"signal": signal.Signals(signum).name, "grace_s": grace_s,
                                         "processes": processes})
        for proc in workers.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + 15.0
        for index, proc in workers.items():
            proc.join(max(deadline - time.monotonic(), 0.1))
            if proc.is_alive():
                log.error("worker did not stop in time; killing it", extra={"worker": index})
                proc.kill()
                proc.join(5.0)
        log.info("stopped", extra={"exitcodes": {i: p.exitcode for i, p in workers.items()}})
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc in workers.values():
            if proc.is_alive():
                proc.kill()
        sock.close()
