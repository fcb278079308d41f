"""Which gRPC Python server has the lowest floor: the sync server (a thread pool) or grpc.aio?

Issue 16 asks whether the sync server's hand-off from gRPC's poller thread to a pool thread is
worth replacing. This measures the floor itself: a raw-bytes echo (no protobuf either way; the
answer is bench_grpc's response size) served by the sync server with 8 and with 2 pool threads
(ours runs 2) and by a grpc.aio server, each in a process of its own (`--serve MODE` below),
called one at a time from this process with bench_grpc's N=1000 plain-strings request, the
servers' calls interleaved in blocks of 100 so that drift on the machine hits all alike.

    python -m benchmarks.bench_echo_servers [--calls N]
    python -m benchmarks.bench_echo_servers --modes options [--encoding plain|dictionary]
                    # the sync server's channel arguments: BDP probe, lookahead, TCP read chunks, ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import numpy as np

from benchmarks.common import print_table, save

SERVICE, METHOD = "reranker.bench.Echo", "Rerank"
#: the sync servers: threads and channel arguments beyond OPTIONS (`--modes options` runs these)
SYNC_MODES = {
    "sync, 8 threads": (8, []),
    "sync, 2 threads": (2, []),
    "sync, 2 threads, no BDP probe": (2, [("grpc.http2.bdp_probe", 0)]),
    "sync, 2 threads, 1 MiB lookahead": (2, [("grpc.http2.lookahead_bytes", 1 << 20)]),
    "sync, 2 threads, 256 KiB TCP reads": (2, [("grpc.experimental.tcp_min_read_chunk_size", 256 << 10),
                                               ("grpc.experimental.tcp_read_chunk_size", 256 << 10)]),
    "sync, 2 threads, latency target": (2, [("grpc.optimization_target", "latency")]),
}
MODES = ("sync, 8 threads", "sync, 2 threads", "aio")
OPTION_MODES = ("sync, 2 threads", "sync, 2 threads, no BDP probe", "sync, 2 threads, 1 MiB lookahead",
                "sync, 2 threads, 256 KiB TCP reads", "sync, 2 threads, latency target")
RESPONSE_BYTES = 1791  # the real server's response to bench_grpc's request (K=50), as RESULTS.md records
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)]


def _serve(mode: str, response_bytes: int) -> None:
    """Run one echo server until killed; print its port first."""
    response = bytes(response_bytes)
    if mode == "aio":
        async def main() -> None:
            server = grpc.aio.server(options=OPTIONS)

            async def echo(request, context):
                return response

            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(echo)}),))
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            print(port, flush=True)
            await server.wait_for_termination()

        asyncio.run(main())
        return
    threads, extra = SYNC_MODES[mode]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=OPTIONS + extra)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(lambda request, context: response)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    threading.Event().wait()


def run(calls: int = 2000, block: int = 100, modes: tuple[str, ...] = MODES, encoding: str = "plain") -> dict:
    from benchmarks.bench_grpc import make_request

    payload = make_request(encoding).SerializeToString()
    response_bytes = RESPONSE_BYTES
    procs, stubs = [], {}
    try:
        for mode in modes:
            p = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_echo_servers", "--serve", mode,
                                  "--response-bytes", str(response_bytes)], stdout=subprocess.PIPE, text=True)
            procs.append(p)
            port = int(p.stdout.readline())
            stubs[mode] = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary(f"/{SERVICE}/{METHOD}")
        for call in stubs.values():
            for _ in range(200):
                call(payload, timeout=10)
        lat = {m: [] for m in modes}
        perf = time.perf_counter
        for b in range(max(calls // block, 1)):
            for mode, call in stubs.items():
                for _ in range(block):
                    t = perf()
                    call(payload, timeout=10)
                    lat[mode].append(perf() - t)
            print(f"\r{(b + 1) * block}/{calls} calls per server", end="", flush=True)
        print()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    base = float(np.median(lat[modes[0]]))
    rows = []
    for mode in modes:
        v = np.array(lat[mode]) * 1e6
        rows.append({"server": mode, "calls": len(v), "median_us": float(np.median(v)),
                     "p99_us": float(np.percentile(v, 99)),
                     "vs_first": float(np.median(v)) / (base * 1e6)})
    meta = {"request_bytes": len(payload), "response_bytes": response_bytes, "block": block, "encoding": encoding,
            "loadavg_1m": os.getloadavg()[0]}
    return {"rows": rows, "meta": meta}


COLUMNS = [("server", "echo server"), ("calls", "calls"), ("median_us", "median µs"),
           ("p99_us", "p99 µs"), ("vs_first", "median / the first server's")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--modes", choices=("servers", "options"), default="servers",
                    help="servers: sync with 8 / 2 threads and aio; options: the sync server with 2 "
                         "threads and each channel-argument variant of SYNC_MODES")
    ap.add_argument("--encoding", choices=("plain", "dictionary"), default="plain",
                    help="bench_grpc's request with plain (69,787 bytes) or dictionary (40,926) strings")
    ap.add_argument("--serve", choices=(*SYNC_MODES, "aio"), help=argparse.SUPPRESS)
    ap.add_argument("--response-bytes", type=int, default=RESPONSE_BYTES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        _serve(args.serve, args.response_bytes)
        return
    result = run(args.calls, modes=MODES if args.modes == "servers" else OPTION_MODES, encoding=args.encoding)
    print_table(f"raw-bytes echo floors, {result['meta']['request_bytes']:,}-byte requests, "
                f"load average {result['meta']['loadavg_1m']:.1f}", result["rows"], COLUMNS)
    save("echo_servers" if args.modes == "servers" else f"echo_servers_options_{args.encoding}",
         result["rows"], result["meta"])


if __name__ == "__main__":
    main()
