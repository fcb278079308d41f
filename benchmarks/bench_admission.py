"""Admission control (issue 9 item 6): does a normal caller keep its latency while heavy callers
send the largest requests the server admits?

    .venv/bin/python -m benchmarks.bench_admission           # full run (~5 minutes; quiet machine)
    .venv/bin/python -m benchmarks.bench_admission --quick   # smoke run (~2 minutes)
    .venv/bin/python -m benchmarks.bench_admission --server-flags '--max-queue 8'  # more serve flags

One `reranker serve --processes 1` (2 handler threads, the default) per phase, on loopback. A
normal client sends Rerank at a fixed rate (open loop, 100/s, N=1000 candidates, K=20, the
`bench_feed` policy of benchmarks.bench_grpc), on its own connection. Heavy clients, each on its
own connection, loop without pause (a refused one backs off 10 ms):

- explain: N=10,000, K=250, explain on: 10,000 x 250 x (1 + 3 rules) = 1e7 work units, the
  default --max-work;
- batch: a RerankBatch of 64 (the default --max-batch) requests of N=3,000, K=20 (3.8e6 units).

Phases, each on a fresh server: the normal client alone, next to the batch client, the explain
client and both, with admission control on (the defaults) and the heavy lane in a process of its
own (`--heavy-lane process`, the default), then the same four with the heavy lane in a thread of
the serving process (`--heavy-lane thread`, the lane before issue 9's last step); then alone and
next to both with admission control off (limits raised out of the way, everything in the serving
process: the baseline of the same run). `--lanes process,off` runs only some of them. Reported: the normal client's p50 / p99 / max, its errors, and what the heavy clients
got (answered, refused). Target: normal p99 <= 20 ms with admission on.

The normal client runs in this process, each heavy client in a process of its own (so that the
heavy clients' own Python does not delay the normal client's); all share the machine's cores
with the server: the figures include that contention, as a real neighbour's would.

Results: benchmarks/results/admission.json (quick runs: admission_quick.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.bench_grpc import POLICY, make_request
from benchmarks.bench_load import RERANKER, ROOT, _free_port, _wait_serving, stop
from benchmarks.common import markdown_table, print_table, save
from server._gen.reranker.v1 import reranker_pb2 as pb

RATE = 100.0  # normal calls per second
NORMAL_N = 1000
NORMAL_TIMEOUT_S = 5.0
HEAVY_TIMEOUT_S = 60.0
TARGET_P99_MS = 20.0
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
           ("grpc.use_local_subchannel_pool", 1)]
#: admission control out of the way (the baseline): no caps, no heavy lane, everything in the
#: serving process
OFF_FLAGS = ("--max-batch", "1000000", "--max-work", "1000000000000", "--heavy-work", "1000000000000",
             "--heavy-bytes", "1000000000000", "--heavy-lane", "thread")
THREAD_FLAGS = ("--heavy-lane", "thread")

COLUMNS = [("phase", "phase"), ("admission", "admission control"), ("heavy_lane", "heavy lane"),
           ("normal_rate", "normal req/s"),
           ("normal_ok", "normal answered"), ("normal_p50_ms", "normal p50 ms"),
           ("normal_p99_ms", "normal p99 ms"), ("normal_max_ms", "normal max ms"),
           ("normal_errors", "normal errors"), ("explain_ok", "heavy explain answered"),
           ("explain_refused", "heavy explain refused"), ("explain_median_ms", "explain answer median ms"),
           ("batch_ok", "heavy batch answered"), ("batch_refused", "heavy batch refused"),
           ("batch_median_ms", "batch answer median ms"),
           ("p99_vs_alone", "p99 / alone (same admission)")]


def _server(policies: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    address = f"127.0.0.1:{_free_port()}"
    cmd = [str(RERANKER), "serve", "--address", address, "--policies", str(policies),
           "--processes", "1", "--metrics-port", "-1", "--log-level", "WARNING", *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain
    try:
        _wait_serving(address, proc, timeout_s=300)
    except BaseException:
        stop(proc)
        raise
    return proc, address


def _channel(address: str, tag: str) -> grpc.Channel:
    """A channel with a connection of its own (the tag makes its arguments unique)."""
    return grpc.insecure_channel(address, options=[*OPTIONS, ("bench.connection", tag)])


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _open_loop(call, payload: bytes, rate: float, seconds: float) -> dict:
    """`payload` sent at `rate` per second on schedule (futures), whatever the answers' latency."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    pending = []
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        due = t0 + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.002))
        start = time.perf_counter()
        fut = call.future(payload, timeout=NORMAL_TIMEOUT_S)

        def done(f, start=start):
            ms = (time.perf_counter() - start) * 1e3
            exc = f.exception()
            with lock:
                if exc is None:
                    lat.append(ms)
                else:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

        fut.add_done_callback(done)
        pending.append(fut)
    for f in pending:
        try:
            f.result()
        except grpc.RpcError:
            pass
    return {"normal_calls": n, "normal_ok": len(lat), "normal_p50_ms": _pct(lat, 50),
            "normal_p99_ms": _pct(lat, 99), "normal_max_ms": max(lat) if lat else None,
            "normal_errors": json.dumps(errors) if errors else ""}


def _heavy_loop(address: str, method: str, payload: bytes, stop_at, results) -> None:
    """A heavy client (in a process of its own, so that its GIL is not the normal client's)."""
    out: dict[str, int] = {}
    lat: list[float] = []
    with _channel(address, f"heavy-{method}") as ch:
        call = ch.unary_unary(f"/reranker.v1.Reranker/{method}")
        while not stop_at.is_set():
            t0 = time.perf_counter()
            try:
                call(payload, timeout=HEAVY_TIMEOUT_S)
                out["ok"] = out.get("ok", 0) + 1
                lat.append((time.perf_counter() - t0) * 1e3)
            except grpc.RpcError as e:
                key = "refused" if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else e.code().name
                out[key] = out.get(key, 0) + 1
                time.sleep(0.01)  # a refused heavy caller backs off a little and retries
    results.put((method, out, lat))


def _payloads() -> dict[str, bytes]:
    normal = make_request("dictionary", n=NORMAL_N)
    explain = make_request("dictionary", n=10_000, seed=7)
    explain.slate_size, explain.explain = 250, True  # 10,000 x 250 x (1 + 3 rules) = 1e7 units
    entry = make_request("dictionary", n=3_000, seed=8)
    batch = pb.RerankBatchRequest(requests=[entry] * 64)
    return {"normal": normal.SerializeToString(), "explain": explain.SerializeToString(),
            "batch": batch.SerializeToString()}


def run(quick: bool = False, extra_flags: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> list[dict]:
    """`only`: the heavy lanes whose phases run ("process", "thread", "-" for admission off)."""
    seconds = 4.0 if quick else 20.0
    payloads = _payloads()
    both = "with heavy batch + explain"
    phases = [("alone", "on", "process", ()), ("with heavy batch", "on", "process", ()),
              ("with heavy explain", "on", "process", ()), (both, "on", "process", ()),
              ("alone", "on", "thread", THREAD_FLAGS), ("with heavy batch", "on", "thread", THREAD_FLAGS),
              ("with heavy explain", "on", "thread", THREAD_FLAGS), (both, "on", "thread", THREAD_FLAGS),
              ("alone", "off", "-", OFF_FLAGS), (both, "off", "-", OFF_FLAGS)]
    if only:
        phases = [p for p in phases if p[2] in only]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        policies = Path(tmp) / "policies"
        policies.mkdir()
        (policies / "bench_feed.yaml").write_text(POLICY)
        for label, admission, lane, flags in phases:
            proc, address = _server(policies, *flags, *extra_flags)
            try:
                kinds = [k for k in ("batch", "explain") if k in label]
                row = _phase(address, payloads, kinds, seconds=seconds)
            finally:
                stop(proc)
            row = {"phase": label, "admission": admission, "heavy_lane": lane, "normal_rate": RATE, **row,
                   "target_p99_ms": TARGET_P99_MS}
            alone = next((r for r in rows if r["phase"] == "alone" and r["admission"] == admission
                          and r["heavy_lane"] == lane), None)
            if alone and alone.get("normal_p99_ms") and row.get("normal_p99_ms"):
                row["p99_vs_alone"] = row["normal_p99_ms"] / alone["normal_p99_ms"]
            rows.append(row)
    return rows


def _phase(address: str, payloads: dict[str, bytes], kinds: list[str], *, seconds: float) -> dict:
    with _channel(address, "normal") as ch:
        call = ch.unary_unary("/reranker.v1.Reranker/Rerank")
        for _ in range(50):  # warm the connection and the server's caches
            call(payloads["normal"], timeout=NORMAL_TIMEOUT_S)
        ctx = multiprocessing.get_context("spawn")
        stop_at, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_heavy_loop, daemon=True,
                             args=(address, "RerankBatch" if kind == "batch" else "Rerank", payloads[kind],
                                   stop_at, results)) for kind in kinds]
        for p in procs:
            p.start()
        if procs:
            time.sleep(3.0)  # the heavy clients (started, connected) are at it before measuring
        result = _open_loop(call, payloads["normal"], RATE, seconds)
        stop_at.set()
        outs: dict[str, dict] = {}
        heavy_lat: dict[str, list[float]] = {}
        for _ in procs:
            method, out, lat = results.get(timeout=HEAVY_TIMEOUT_S + 30)
            kind = "batch" if method == "RerankBatch" else "explain"
            outs[kind], heavy_lat[kind] = out, lat
        for p in procs:
            p.join(30)
    row = dict(result)
    if kinds:
        for kind in kinds:
            out = outs[kind]
            row[f"{kind}_ok"] = out.get("ok", 0)
            row[f"{kind}_refused"] = out.get("refused", 0)
            other = {k: v for k, v in out.items() if k not in ("ok", "refused")}
            if other:
                row[f"{kind}_errors"] = json.dumps(other)
            row[f"{kind}_median_ms"] = _pct(heavy_lat[kind], 50)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (smoke run)")
    parser.add_argument("--server-flags", default="", metavar="FLAGS",
                        help="more `reranker serve` flags for every phase, e.g. '--gil-switch-ms 0.5'")
    parser.add_argument("--note", default="", help="a note kept in the result file's meta (what was measured)")
    parser.add_argument("--out", default="", metavar="NAME",
                        help="result file name under benchmarks/results (default admission / admission_quick)")
    parser.add_argument("--lanes", default="", metavar="LANES",
                        help="only these phases: comma-separated of process, thread, off (default all)")
    args = parser.parse_args()
    extra = tuple(shlex.split(args.server_flags))
    only = tuple("-" if x == "off" else x for x in args.lanes.split(",") if x)
    sizes = {k: len(v) for k, v in _payloads().items()}
    rows = run(args.quick, extra, only)
    title = "Admission control: a normal client next to heavy ones"
    print_table(title, rows, COLUMNS)
    path = save(args.out or ("admission_quick" if args.quick else "admission"), rows,
                {"quick": args.quick, "server_flags": list(extra), "lanes": args.lanes or "all", "note": args.note,
                 "payload_bytes": sizes, "normal_rate": RATE,
                 "target_p99_ms": TARGET_P99_MS})
    print(path)
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
