"""Decision log (issue 11, item 4): what it costs the request path, and whether its writer keeps up.

    .venv/bin/python -m benchmarks.bench_decision_log            # both parts (~2.5 minutes)
    .venv/bin/python -m benchmarks.bench_decision_log --quick    # smoke run (~40 s)
    .venv/bin/python -m benchmarks.bench_decision_log --only sustained

Parts (one process; the writer thread shares the machine's cores with the caller):

- overhead: Engine.rerank of a home_feed-like request (N=1000 candidates with every column kind:
  5 scores, 7 attributes, 1 numeric, 16-dim embeddings; K=20; availability filter, max_count,
  window and a soft min_count in the top 10; greedy, the fastest path, so the log's share is the
  largest) with the log off, and on with a DecisionLog writing Parquet on its thread: the
  request thread calls `should_log` and `offer_decision` (references queued, the record built on
  the writer thread), or builds the record itself (`offer(DecisionRecord.of(...))`). Modes
  alternate in blocks of calls, in rotating order; after each block the log is flushed (untimed)
  so that no block inherits another's backlog. Twice: calls back to back (about 3,000/s: the
  writer is saturated the whole block) and paced at 1,000 calls/s (the sustained target's
  rate). Target: median on / off <= 1.05.
- sustained: a producer thread offers 1,000 records/s (N=1000 requests as above, distinct request
  ids) for 60 s (10 s with --quick) into a DecisionLog -> ParquetSink (default settings: batches
  of 256, 64 MiB files). Reported: records dropped (target 0), writer lag (records waiting,
  sampled every 100 ms: the largest, and as seconds of traffic), the time close() takes to drain
  what is left, MB written, and the process CPU used (cores) while it ran.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import replace

import numpy as np
from rich.console import Console

from benchmarks.common import parts_main, run_part
from engine.decision_log import DecisionLog, DecisionRecord, ParquetSink, log_files, read_log
from engine.types import RerankRequest
from testing.engines import candidates, engine_with

console = Console()
N, K = 1000, 20

POLICY = {
    "name": "feed", "version": "bench-1", "slate_size": K,
    "objective": {"weights": {"p_click": 1.0, "p_add_to_cart": 3.0, "p_purchase": 10.0},
                  "position_discount": "log2"},
    "filters": [{"attribute": "availability", "not_in": ["out_of_stock"]}],
    "constraints": [
        {"name": "max_3_per_category", "type": "max_count", "attribute": "category", "max": 3},
        {"name": "spread_sellers", "type": "window", "attribute": "seller", "size": 3, "max": 1},
        {"name": "videos_in_top_10", "type": "min_count", "attribute": "content_type", "value": "video",
         "min": 2, "within_top": 10, "hard": False, "penalty": 0.5},
    ],
    "solver": {"mode": "greedy", "budget_ms": 10},
}


def _requests(count: int) -> list[RerankRequest]:
    return [RerankRequest("feed", candidates(N, seed=s), request_id=f"bench-{s}", user_id=f"user-{s % 97}")
            for s in range(count)]


# ------------------------------------------------------------------ overhead
OVERHEAD_COLUMNS = [("calls_per_s", "calls"), ("mode", "mode"), ("calls", "n"), ("median_us", "Engine.rerank median µs"),
                    ("p95_us", "p95 µs"), ("p99_us", "p99 µs"), ("over_off", "median / log off"),
                    ("written", "records written"), ("dropped", "dropped")]


def run_overhead(quick: bool, **log_options) -> list[dict]:
    eng = engine_with(POLICY)
    requests = _requests(64)
    for req in requests:  # warm: compile, caches
        eng.rerank(req)
    block, blocks = (500, 6) if quick else (2000, 15)
    rows = []
    for rate in (None, 1000):
        rows.extend(_overhead(eng, requests, block, blocks, rate, log_options))
    return rows


def _overhead(eng, requests, block: int, blocks: int, rate: int | None, log_options: dict) -> list[dict]:
    """Interleaved blocks of the three modes, back to back (rate None) or paced at `rate` calls/s."""
    folder = tempfile.TemporaryDirectory(prefix="bench-dlog-")
    log = DecisionLog(ParquetSink(folder.name), **log_options)
    perf = time.perf_counter_ns

    def off(req):
        eng.rerank(req)

    def deferred(req):
        result = eng.rerank(req)
        if log.should_log(req.request_id):
            log.offer_decision(req, result)

    def built(req):
        result = eng.rerank(req)
        if log.should_log(req.request_id):
            log.offer(DecisionRecord.of(req, result))

    modes = {"log off": off, "log on: offer_decision": deferred, "log on: offer(DecisionRecord.of)": built}
    names = list(modes)
    times: dict[str, list[float]] = {m: [] for m in modes}
    k = 0
    pace = "back to back" if rate is None else f"{rate}/s"
    for b in range(blocks):
        order = names[b % len(names):] + names[:b % len(names)]
        for name in order:
            fn = modes[name]
            t_block = time.perf_counter()
            for i in range(block):
                if rate is not None:
                    wait = t_block + i / rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                req = requests[k % len(requests)]
                k += 1
                t0 = perf()
                fn(req)
                times[name].append((perf() - t0) / 1000.0)
            log.flush(timeout_s=60)  # untimed: the next block starts with an idle writer
        console.print(f"{pace}, block {b + 1}/{blocks}: " + ", ".join(
            f"{m} {np.median(times[m]):.1f} µs" for m in names))
    assert log.close(timeout_s=60)
    written = read_log(folder.name, columns=["request_id"]).num_rows
    folder.cleanup()
    base = float(np.median(times["log off"]))
    rows = []
    for name in names:
        t = np.asarray(times[name])
        on = name != "log off"
        rows.append({"calls_per_s": pace, "mode": name, "calls": len(t), "median_us": float(np.median(t)),
                     "p95_us": float(np.percentile(t, 95)), "p99_us": float(np.percentile(t, 99)),
                     "over_off": float(np.median(t)) / base,
                     "written": written if on else None, "dropped": log.stats.dropped if on else None})
    return rows


# ------------------------------------------------------------------ sustained
SUSTAINED_COLUMNS = [("rate_per_s", "offered / s"), ("seconds", "seconds"), ("offered", "offered"),
                     ("written", "written"), ("dropped", "dropped"), ("write_errors", "write errors"),
                     ("max_queued", "max waiting (records)"), ("max_lag_s", "max lag (s of traffic)"),
                     ("p50_queued", "median waiting"), ("close_s", "close() drain s"),
                     ("mb_written", "MB written"), ("files", "files"), ("cpu_cores", "CPU (cores)"),
                     ("rows_read_back", "rows read back")]


def run_sustained(quick: bool, rate: int = 1000) -> list[dict]:
    seconds = 10.0 if quick else 60.0
    eng = engine_with(POLICY)
    pool = [(req, eng.rerank(req)) for req in _requests(64)]
    folder = tempfile.TemporaryDirectory(prefix="bench-dlog-")
    log = DecisionLog(ParquetSink(folder.name))
    samples: list[int] = []
    stop = threading.Event()

    def monitor():
        while not stop.wait(0.1):
            samples.append(log.stats.queued)

    def produce():
        t0 = time.perf_counter()
        i = 0
        while True:
            due = t0 + i / rate
            now = time.perf_counter()
            if due - t0 >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            req, result = pool[i % len(pool)]
            req = replace(req, request_id=f"sustained-{i}")
            log.offer_decision(req, result)
            i += 1

    watcher = threading.Thread(target=monitor, daemon=True)
    producer = threading.Thread(target=produce)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    watcher.start()
    producer.start()
    producer.join()
    t_close = time.perf_counter()
    log.close(timeout_s=120)
    close_s = time.perf_counter() - t_close
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    stop.set()
    watcher.join()
    files = log_files(folder.name)
    mb = sum(f.stat().st_size for f in files) / 1e6
    read_back = read_log(folder.name, columns=["request_id"]).num_rows
    folder.cleanup()
    s = log.stats
    q = np.asarray(samples or [0])
    return [{"rate_per_s": rate, "seconds": seconds, "offered": s.offered, "written": s.written,
             "dropped": s.dropped, "write_errors": s.write_errors, "max_queued": int(q.max()),
             "max_lag_s": float(q.max()) / rate, "p50_queued": float(np.median(q)),
             "close_s": close_s, "mb_written": mb, "files": len(files), "cpu_cores": cpu / wall,
             "rows_read_back": read_back}]


PARTS = {"overhead": (run_overhead, OVERHEAD_COLUMNS), "sustained": (run_sustained, SUSTAINED_COLUMNS)}


def run(quick: bool = False) -> list[dict]:
    return [row for name in PARTS for row in _run_part(name, quick)]


def _run_part(name: str, quick: bool) -> list[dict]:
    return run_part("decision_log", name, PARTS, quick, {"n": N, "k": K})


def main() -> None:
    parts_main(__doc__, _run_part, PARTS, "fewer calls, 10 s sustained (smoke run)")


if __name__ == "__main__":
    main()
