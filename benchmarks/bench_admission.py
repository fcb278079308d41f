"""Admission control (issue 9 item 6): does a normal caller keep its latency while heavy callers
send the largest requests the server admits?

    .venv/bin/python -m benchmarks.bench_admission           # full run (~2 minutes; quiet machine)
    .venv/bin/python -m benchmarks.bench_admission --quick   # smoke run (~40 s)

One `reranker serve --processes 1` (2 handler threads, the default) per phase, on loopback. A
normal client sends Rerank at a fixed rate (open loop, 100/s, N=1000 candidates, K=20, the
`bench_feed` policy of benchmarks.bench_grpc), on its own connection. Heavy clients, each on its
own connection, loop without pause (a refused one backs off 10 ms):

- explain: N=10,000, K=250, explain on: 10,000 x 250 x (1 + 3 rules) = 1e7 work units, the
  default --max-work;
- batch: a RerankBatch of 64 (the default --max-batch) requests of N=3,000, K=20 (3.8e6 units).

Phases, each on a fresh server: the normal client alone, then next to both heavy clients, with
admission control on (the defaults) and off (limits raised out of the way: the baseline of the
same run). Reported: the normal client's p50 / p99 / max, its errors, and what the heavy clients
got (answered, refused). Target: normal p99 <= 20 ms with admission on.

The clients run in this process and share the machine's cores with the server: the figures
include that contention, as a real neighbour's would.

Results: benchmarks/results/admission.json (quick runs: admission_quick.json).
"""

from __future__ import annotations

import argparse
import json
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
#: admission control out of the way (the baseline)
OFF_FLAGS = ("--max-batch", "1000000", "--max-work", "1000000000000", "--heavy-work", "1000000000000")

COLUMNS = [("phase", "phase"), ("admission", "admission control"), ("normal_rate", "normal req/s"),
           ("normal_ok", "normal answered"), ("normal_p50_ms", "normal p50 ms"),
           ("normal_p99_ms", "normal p99 ms"), ("normal_max_ms", "normal max ms"),
           ("normal_errors", "normal errors"), ("explain_ok", "heavy explain answered"),
           ("explain_refused", "heavy explain refused"), ("batch_ok", "heavy batch answered"),
           ("batch_refused", "heavy batch refused"), ("heavy_median_ms", "heavy answer median ms"),
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


def _heavy_loop(address: str, method: str, payload: bytes, stop_at: threading.Event, out: dict,
                lat: list[float]) -> None:
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


def _payloads() -> dict[str, bytes]:
    normal = make_request("dictionary", n=NORMAL_N)
    explain = make_request("dictionary", n=10_000, seed=7)
    explain.slate_size, explain.explain = 250, True  # 10,000 x 250 x (1 + 3 rules) = 1e7 units
    entry = make_request("dictionary", n=3_000, seed=8)
    batch = pb.RerankBatchRequest(requests=[entry] * 64)
    return {"normal": normal.SerializeToString(), "explain": explain.SerializeToString(),
            "batch": batch.SerializeToString()}


def run(quick: bool = False) -> list[dict]:
    seconds = 4.0 if quick else 20.0
    payloads = _payloads()
    phases = [("alone", "on", ()), ("with heavy clients", "on", ()),
              ("alone", "off", OFF_FLAGS), ("with heavy clients", "off", OFF_FLAGS)]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        policies = Path(tmp) / "policies"
        policies.mkdir()
        (policies / "bench_feed.yaml").write_text(POLICY)
        for label, admission, flags in phases:
            proc, address = _server(policies, *flags)
            try:
                row = _phase(address, payloads, heavy=label != "alone", seconds=seconds)
            finally:
                stop(proc)
            row = {"phase": label, "admission": admission, "normal_rate": RATE, **row,
                   "target_p99_ms": TARGET_P99_MS}
            alone = next((r for r in rows if r["phase"] == "alone" and r["admission"] == admission), None)
            if alone and alone.get("normal_p99_ms") and row.get("normal_p99_ms"):
                row["p99_vs_alone"] = row["normal_p99_ms"] / alone["normal_p99_ms"]
            rows.append(row)
    return rows


def _phase(address: str, payloads: dict[str, bytes], *, heavy: bool, seconds: float) -> dict:
    with _channel(address, "normal") as ch:
        call = ch.unary_unary("/reranker.v1.Reranker/Rerank")
        for _ in range(50):  # warm the connection and the server's caches
            call(payloads["normal"], timeout=NORMAL_TIMEOUT_S)
        stop_at = threading.Event()
        outs = {"explain": {}, "batch": {}}
        heavy_lat: list[float] = []
        threads = []
        if heavy:
            for kind, method in (("explain", "Rerank"), ("batch", "RerankBatch")):
                threads.append(threading.Thread(
                    target=_heavy_loop, args=(address, method, payloads[kind], stop_at, outs[kind], heavy_lat),
                    daemon=True))
            for t in threads:
                t.start()
            time.sleep(1.0)  # the heavy clients are at it before the normal one is measured
        result = _open_loop(call, payloads["normal"], RATE, seconds)
        stop_at.set()
        for t in threads:
            t.join(HEAVY_TIMEOUT_S)
    row = dict(result)
    if heavy:
        for kind, out in outs.items():
            row[f"{kind}_ok"] = out.get("ok", 0)
            row[f"{kind}_refused"] = out.get("refused", 0)
            other = {k: v for k, v in out.items() if k not in ("ok", "refused")}
            if other:
                row[f"{kind}_errors"] = json.dumps(other)
        row["heavy_median_ms"] = _pct(heavy_lat, 50)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (smoke run)")
    args = parser.parse_args()
    sizes = {k: len(v) for k, v in _payloads().items()}
    rows = run(args.quick)
    title = "Admission control: a normal client next to heavy ones"
    print_table(title, rows, COLUMNS)
    path = save("admission_quick" if args.quick else "admission", rows,
                {"quick": args.quick, "payload_bytes": sizes, "normal_rate": RATE,
                 "target_p99_ms": TARGET_P99_MS})
    print(path)
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
