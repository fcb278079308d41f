"""In-process cost of the servicer's Rerank handler on bench_grpc's request (N=1000, K=50,
3 scores, 3 attributes, greedy), without gRPC: parse (`RerankRequest.FromString`, as
server.app's handler does), then `RerankerServicer._rerank` (decode, compile, solve, report,
encode, metrics) and the response's serialization, the trailers set on a stand-in context.

Paths in the same run (`--paths`, default new,lite), interleaved in blocks of 50 calls so that
drift of the machine hits them alike:
- `old`: the report builds one `SlateItem` per position (the list-building `slate_items` the
  columnar slate replaced, kept here and patched into engine.decide for the old arm's calls), and
  `convert.encode_result` + `SerializeToString` (one protobuf item per position);
- `new`: the columnar slate (engine.types.SlateItems) and the fast encoder (server.encode),
  which returns the response's bytes; the request parsed by upb (`RerankRequest.FromString`);
- `lite`: `new`, the request parsed as the server parses Rerank now (`convert.parse_rerank`:
  upb for the top level, the wire kernels for the Candidates).

Reported: medians of every stage the response reports (elapsed_us: decode, compile, solve,
report, encode, total) and of the whole handler (parse to bytes), per path, and the ratios of
each path to the first. Also the per-call cost of `ServerMetrics.observe_ok` alone.

    python -m benchmarks.bench_handler [--calls 2000] [--encodings dictionary,plain] [--paths new,lite] [--profile]

`--profile`: cProfile of the last path (top functions by own time) after the measurement.
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
PATHS = ("old", "new", "lite")


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
    from server import convert
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

    def new(raw: bytes, parse=parse):
        t0 = perf()
        msg = parse(raw)
        out = servicer._rerank(msg, ctx, raw, None, as_bytes=True)
        ctx.set_trailing_metadata(md)
        t1 = perf()
        return out, (t1 - t0) / 1e3

    def lite(raw: bytes):
        return new(raw, convert.parse_rerank)

    return {"old": old, "new": new, "lite": lite}


def measure(servicer, encoding: str, calls: int, warmup: int = 200, block: int = 50,
            paths_run: tuple[str, ...] = ("new", "lite")) -> dict:
    from server._gen.reranker.v1 import reranker_pb2 as pb

    raw = make_request(encoding).SerializeToString()
    paths = _paths(servicer)
    answers = {p: paths[p](raw)[0] for p in paths_run}
    parsed = [pb.RerankResponse.FromString(answers[p]) for p in paths_run]
    for r in parsed:  # timings differ; everything else must not
        for s in list(r.diagnostics.elapsed_us):
            r.diagnostics.elapsed_us[s] = 0.0
    if any(r != parsed[0] for r in parsed):
        raise AssertionError(f"the paths {', '.join(paths_run)} answer differently")
    for _ in range(warmup):
        for p in paths_run:
            paths[p](raw)
    handler = {p: [] for p in paths_run}
    stages = {p: {s: [] for s in STAGES} for p in paths_run}
    done = 0
    while done < calls:
        n = min(block, calls - done)
        for p in paths_run:
            call = paths[p]
            for _ in range(n):
                out, us = call(raw)
                handler[p].append(us)
                elapsed = pb.RerankResponse.FromString(out).diagnostics.elapsed_us
                for s in STAGES:
                    stages[p][s].append(elapsed[s])
        done += n
    row = {"encoding": encoding, "request_bytes": len(raw), "response_bytes": len(answers[paths_run[0]]),
           "calls": calls}
    for p in paths_run:
        row[f"{p}_handler_us"] = float(np.median(handler[p]))
        for s in STAGES:
            row[f"{p}_{s}_us"] = float(np.median(stages[p][s]))
    base = paths_run[0]
    for p in paths_run[1:]:
        for s in ("handler", "decode", "report", "encode", "total"):
            row[f"{p}_over_{base}_{s}"] = row[f"{p}_{s}_us"] / row[f"{base}_{s}_us"]
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


def profile(servicer, calls: int, path: str = "lite", top: int = 30) -> None:
    import cProfile
    import pstats

    raw = make_request().SerializeToString()
    new = _paths(servicer)[path]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        new(raw)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def _columns(paths_run: tuple[str, ...]):
    cols = [("encoding", "string columns"), ("response_bytes", "response bytes")]
    for p in paths_run:
        cols.append((f"{p}_handler_us", f"{p} handler µs"))
    for s in STAGES:
        for p in paths_run:
            cols.append((f"{p}_{s}_us", f"{p} {s} µs"))
    base = paths_run[0]
    for p in paths_run[1:]:
        cols += [(f"{p}_over_{base}_{s}", f"{p} / {base} {s}") for s in ("handler", "decode", "report", "encode", "total")]
    return cols


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per path and encoding")
    ap.add_argument("--encodings", default="dictionary,plain")
    ap.add_argument("--paths", default="new,lite", help=f"some of {','.join(PATHS)}; ratios against the first")
    ap.add_argument("--profile", action="store_true", help="cProfile of the last path afterwards")
    args = ap.parse_args()
    paths_run = tuple(args.paths.split(","))
    if not paths_run or any(p not in PATHS for p in paths_run):
        ap.error(f"--paths: some of {', '.join(PATHS)}, got {args.paths!r}")
    engine, metrics, servicer = _setup()
    load0 = os.getloadavg()
    rows = [measure(servicer, enc, args.calls, paths_run=paths_run) for enc in args.encodings.split(",")]
    observe_us = metrics_cost(engine, metrics, args.calls)
    load = os.getloadavg()
    meta = {"calls": args.calls, "load_average": [load0, load], "observe_ok_us": observe_us,
            "paths": "old: SlateItem list + encode_result + SerializeToString; new: SlateItems + server.encode; "
                     "lite: new with convert.parse_rerank", "paths_run": list(paths_run)}
    print(markdown_table(rows, _columns(paths_run)))
    print(f"ServerMetrics.observe_ok: {observe_us:.2f} µs median; load average {load0} -> {load}")
    print(f"saved {save('handler', rows, meta)}")
    if args.profile:
        profile(servicer, args.calls, paths_run[-1])


if __name__ == "__main__":
    main()
