"""What a client gets from one connection against several: `reranker serve --processes 2`.

SO_REUSEPORT hands each TCP *connection* to one worker process for its whole life, so a client
with a single channel (one connection) is served by one worker, whatever the other worker is
doing. Measured here, closed loop (C calls in flight), N=1000, K=20, the bench_load payload
(pre-serialised, responses unparsed), each row for `--duration` seconds:

- `one connection`: one channel, its C calls on one connection (one worker);
- `8 connections`: 8 channels, spread 4 + 4 over the two workers (bench_load's `_channels`),
  calls round-robin over them: the baseline, same run;
- `round_robin over worker ports` (when `reranker serve` has `--worker-ports`): ONE channel whose
  target lists every worker's own port, with gRPC's client-side `round_robin` policy: the
  channel keeps a connection per worker and spreads its calls over them;
- `--processes 1, one connection`: what one worker serves, for scale.

    python -m benchmarks.bench_connections [--quick] [--duration S] [--concurrency C ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

import grpc

from benchmarks.bench_load import (
    CHANNEL_OPTIONS, RERANK_METHOD, _channel, _channels, _free_port, _prepare, _round_robin,
    _serve_help, _wait_serving, closed_loop, stop,
)
from benchmarks.common import markdown_table, print_table, save

COLUMNS = [("repeat", "round"), ("layout", "client"), ("processes", "server processes"), ("concurrency", "C"),
           ("connections", "connections"), ("throughput_rps", "req/s"), ("p50_ms", "p50 ms"),
           ("p99_ms", "p99 ms"), ("errors", "errors"), ("over_spread", "req/s / 8 connections"),
           ("loadavg_1m", "load avg 1 min")]


def _free_ports(n: int) -> int:
    """A base port with the `n` ports from it free right now (each bound briefly to check)."""
    import socket

    for _ in range(200):
        base = _free_port()
        socks = []
        try:
            for p in range(base, base + n):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def _start(policies: Path, processes: int, worker_ports: int | None = None):
    import subprocess

    from benchmarks.bench_load import RERANKER, ROOT

    address = f"127.0.0.1:{_free_port()}"
    while worker_ports is not None and worker_ports <= int(address.rsplit(":", 1)[1]) < worker_ports + processes:
        address = f"127.0.0.1:{_free_port()}"
    cmd = [str(RERANKER), "serve", "--address", address, "--policies", str(policies),
           "--processes", str(processes), "--metrics-port", "0", "--log-level", "WARNING"]
    if worker_ports is not None:
        cmd += ["--worker-ports", str(worker_ports)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        _wait_serving(address, proc)
        if worker_ports is not None:
            for i in range(processes):
                _wait_serving(f"127.0.0.1:{worker_ports + i}", proc)
    except BaseException:
        stop(proc)
        raise
    return proc, address


async def _measure(layout: str, channels: list, payload: bytes, concurrency: int, duration_s: float,
                   connections: int, processes: int) -> dict:
    call = _round_robin(channels, RERANK_METHOD)
    await closed_loop(call, payload, 4, 1.0)  # warm the connections
    row = await closed_loop(call, payload, concurrency, duration_s)
    return {"layout": layout, "processes": processes, "connections": connections, **row,
            "loadavg_1m": os.getloadavg()[0]}


async def _close(channels) -> None:
    for ch in channels:
        await ch.close()


def run(quick: bool = False, duration_s: float | None = None,
        concurrency: tuple[int, ...] = (16,), repeats: int = 1) -> dict:
    duration_s = duration_s or (3.0 if quick else 10.0)
    worker_ports = "--worker-ports" in _serve_help()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        policies, _responses, payloads = _prepare(Path(tmp))
        payload = payloads[1000]
        base = _free_ports(2) if worker_ports else None
        proc, address = _start(policies, 2, base)
        try:
            for c, r in ((c, r) for r in range(repeats) for c in concurrency):
                async def two_workers():  # the layouts interleaved, `repeats` times
                    out = []
                    one = [_channel(address, 0)]
                    out.append(await _measure("one connection", one, payload, c, duration_s, 1, 2))
                    await _close(one)
                    spread = await _channels(address, 2)
                    out.append(await _measure("8 connections", spread, payload, c, duration_s, len(spread), 2))
                    await _close(spread)
                    if base is not None:
                        target = "ipv4:" + ",".join(f"127.0.0.1:{base + i}" for i in range(2))
                        rr = [grpc.aio.insecure_channel(target, options=[
                            *CHANNEL_OPTIONS, ("grpc.lb_policy_name", "round_robin"),
                            ("grpc.use_local_subchannel_pool", 1)])]
                        out.append(await _measure("round_robin over worker ports (one channel)", rr,
                                                  payload, c, duration_s, 2, 2))
                        await _close(rr)
                    return out
                rows += [dict(row, repeat=r) for row in asyncio.run(two_workers())]
        finally:
            stop(proc)
        proc, address = _start(policies, 1)
        try:
            for c in concurrency:
                async def one_worker():
                    one = [_channel(address, 0)]
                    row = await _measure("one connection", one, payload, c, duration_s, 1, 1)
                    await _close(one)
                    return row
                rows.append(asyncio.run(one_worker()))
        finally:
            stop(proc)
    for c in concurrency:
        for rep in range(repeats):  # against the 8 connections of the same round
            spread = next(r for r in rows if r["layout"] == "8 connections" and r["concurrency"] == c
                          and r.get("repeat") == rep)
            for r in rows:
                if r["concurrency"] == c and r.get("repeat", rep) == rep:
                    r["over_spread"] = r["throughput_rps"] / spread["throughput_rps"]
    meta = {"quick": quick, "duration_s": duration_s, "repeats": repeats, "n": 1000, "k": 20, "concurrency": concurrency,
            "worker_ports": worker_ports, "cpus": os.cpu_count(),
            "client": "grpc.aio in this process, pre-serialised requests, responses unparsed"}
    return {"rows": rows, "meta": meta}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per row")
    parser.add_argument("--duration", type=float, default=None, help="seconds per row (default 10)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16], help="calls in flight")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of the 2-process layouts, interleaved (default 1)")
    args = parser.parse_args()
    result = run(args.quick, args.duration, tuple(args.concurrency), args.repeats)
    print_table("one connection against several, serve --processes 2", result["rows"], COLUMNS)
    print(markdown_table(result["rows"], COLUMNS))
    print(f"saved {save('connections', result['rows'], result['meta'])}")


if __name__ == "__main__":
    main()
