"""In-process cost of the servicer's Rerank handler on bench_grpc's request (N=1000, K=50,
3 scores, 3 attributes, greedy), without gRPC: parse (`RerankRequest.FromString`, as
server.app's handler does), then `RerankerServicer._rerank` (decode, compile, solve, report,
encode, metrics) and the response's serialization, the trailers set on a stand-in context.

Two paths in the same run, interleaved in blocks of 50 calls so that drift of the machine hits
both alike:
- `old`: the report builds one `SlateItem` per position (the list-building `slate_items` this
  change replaced, kept here and patched into engine.decide for the old arm's calls), and
  `convert.encode_result` + `SerializeToString` (one protobuf item per position);
- `new`: the columnar slate (engine.types.SlateItems) and the fast encoder (server.encode),
  which returns the response's bytes.

Reported: medians of every stage the response reports (elapsed_us: decode, compile, solve,
report, encode, total) and of the whole handler (parse to bytes), per path, and new / old.
Also the per-call cost of `ServerMetrics.observe_ok` alone.

    python -m benchmarks.bench_handler [--calls 2000] [--encodings dictionary,plain] [--profile]

`--profile`: cProfile of the new path (top functions by own time) after the measurement.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_grpc import POLICY, make_request
from benchmarks.common import markdown_table, save

STAGES = ("decode", "compile", "solve", "report", "encode", "total")
PATHS = ("old", "new")


class _Context:
    """The grpc.ServicerContext methods the servicer calls on a served request."""

    def time_remaining(self):
        return None

    def set_trailing_metadata(self, md) -> None:
        self.trailing = md


def _old_slate_items(compiled, slate, item_ids, scores, explain):
    """engine.report.slate_items before the columnar slate: one SlateItem per position."""
    from engine.types import SlateItem

    idx = compiled.index[slate]
    util = compiled.problem.utility[slate]
    items = []
    for p, (r, u) in enumerate(zip(idx.tolist(), util.tolist())):
        contrib = {}
        if explain:
            contrib = {name: w * float(scores[name][r]) for name, w in compiled.weights.items()}
            if compiled.boost is not None:
                contrib["exposure_boost"] = float(compiled.boost[slate[p]])
        items.append(SlateItem(item_ids[r], r, p + 1, u, contrib))
    return items


def _setup():
    from engine.engine import Engine
    from server.metrics import ServerMetrics
    from server.servicer import RerankerServicer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_feed.yaml").write_text(POLICY)
        engine = Engine.from_directory(tmp)
    engine.warmup()
    metrics = ServerMetrics()
    return engine, metrics, RerankerServicer(engine, metrics)


def _paths(servicer):
    """path -> call(raw) -> (response bytes, handler µs)."""
    import engine.decide as decide
    from server._gen.reranker.v1 import reranker_pb2 as pb

    ctx = _Context()
    new_items = decide.slate_items
    perf = time.perf_counter_ns
    parse = pb.RerankRequest.FromString
    md = servicer._pid_metadata

    def old(raw: bytes):
        decide.slate_items = _old_slate_items
        try:
            t0 = perf()
            msg = parse(raw)
            out = servicer._rerank(msg, ctx, raw, None).SerializeToString()
            ctx.set_trailing_metadata(md)
            t1 = perf()
        finally:
            decide.slate_items = new_items
        return out, (t1 - t0) / 1e3

    def new(raw: bytes):
        t0 = perf()
        msg = parse(raw)
        out = servicer._rerank(msg, ctx, raw, None, as_bytes=True)
        ctx.set_trailing_metadata(md)
        t1 = perf()
        return out, (t1 - t0) / 1e3

    return {"old": old, "new": new}


def measure(servicer, encoding: str, calls: int, warmup: int = 200, block: int = 50) -> dict:
    from server._gen.reranker.v1 import reranker_pb2 as pb

    raw = make_request(encoding).SerializeToString()
    paths = _paths(servicer)
    answers = {p: paths[p](raw)[0] for p in PATHS}
    a, b = (pb.RerankResponse.FromString(answers[p]) for p in PATHS)
    for r in (a, b):  # timings differ; everything else must not
        for s in list(r.diagnostics.elapsed_us):
            r.diagnostics.elapsed_us[s] = 0.0
    if a != b:
        raise AssertionError("old and new paths answer differently")
    for _ in range(warmup):
        for p in PATHS:
            paths[p](raw)
    handler = {p: [] for p in PATHS}
    stages = {p: {s: [] for s in STAGES} for p in PATHS}
    done = 0
    while done < calls:
        n = min(block, calls - done)
        for p in PATHS:
            call = paths[p]
            for _ in range(n):
                out, us = call(raw)
                handler[p].append(us)
                elapsed = pb.RerankResponse.FromString(out).diagnostics.elapsed_us
                for s in STAGES:
                    stages[p][s].append(elapsed[s])
        done += n
    row = {"encoding": encoding, "request_bytes": len(raw), "response_bytes": len(answers["new"]),
           "calls": calls}
    for p in PATHS:
        row[f"{p}_handler_us"] = float(np.median(handler[p]))
        for s in STAGES:
            row[f"{p}_{s}_us"] = float(np.median(stages[p][s]))
    row["new_over_old_handler"] = row["new_handler_us"] / row["old_handler_us"]
    for s in ("report", "encode", "total"):
        row[f"new_over_old_{s}"] = row[f"new_{s}_us"] / row[f"old_{s}_us"]
    return row


def metrics_cost(engine, metrics, calls: int) -> float:
    """Median µs of one ServerMetrics.observe_ok on a served result."""
    from server import convert

    msg = make_request()
    result = engine.rerank(convert.decode_request(msg, msg.SerializeToString()))
    perf = time.perf_counter_ns
    out = []
    for _ in range(calls):
        t0 = perf()
        metrics.observe_ok(result, 0.0003)
        out.append((perf() - t0) / 1e3)
    return float(np.median(out))


def profile(servicer, calls: int, top: int = 30) -> None:
    import cProfile
    import pstats

    raw = make_request().SerializeToString()
    new = _paths(servicer)["new"]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        new(raw)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def _columns():
    cols = [("encoding", "string columns"), ("response_bytes", "response bytes")]
    for p in PATHS:
        cols.append((f"{p}_handler_us", f"{p} handler µs"))
    for s in STAGES:
        for p in PATHS:
            cols.append((f"{p}_{s}_us", f"{p} {s} µs"))
    cols += [("new_over_old_handler", "new / old handler"), ("new_over_old_report", "new / old report"),
             ("new_over_old_encode", "new / old encode"), ("new_over_old_total", "new / old total")]
    return cols


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per path and encoding")
    ap.add_argument("--encodings", default="dictionary,plain")
    ap.add_argument("--profile", action="store_true", help="cProfile of the new path afterwards")
    args = ap.parse_args()
    engine, metrics, servicer = _setup()
    rows = [measure(servicer, enc, args.calls) for enc in args.encodings.split(",")]
    observe_us = metrics_cost(engine, metrics, args.calls)
    load = os.getloadavg()
    meta = {"calls": args.calls, "load_average": load, "observe_ok_us": observe_us,
            "paths": "old: SlateItem list + encode_result + SerializeToString; new: SlateItems + server.encode"}
    print(markdown_table(rows, _columns()))
    print(f"ServerMetrics.observe_ok: {observe_us:.2f} µs median; load average {load}")
    print(f"saved {save('handler', rows, meta)}")
    if args.profile:
        profile(servicer, args.calls)


if __name__ == "__main__":
    main()
