"""The engine's stages (compile, solve, report) through the servicer's Rerank handler, in process
(issue 16's glue around the kernels): bench_handler's request (N=1000, K=50, 3 scores,
3 attributes, greedy) with dictionary and plain string columns, and bench_load's policy at
K=20 in auto mode (the exact solve runs). Cases interleaved in blocks of 50 calls; medians of the
response's elapsed_us per stage, their sum ("glue": compile + solve + report, the validation
counted in compile) and the handler (parse to bytes).

Made for A/B runs of two trees (git worktrees), alternating, each with its own PYTHONPATH:

    PYTHONPATH=<tree> python -m benchmarks.bench_glue [--calls 1000] [--no-save]
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

STAGES = ("compile", "solve", "report", "engine_total")


class _Context:
    """The grpc.ServicerContext methods the servicer calls on a served request."""

    def time_remaining(self):
        return None

    def set_trailing_metadata(self, md) -> None:
        self.trailing = md


def _servicer():
    from engine.engine import Engine
    from server.metrics import ServerMetrics
    from server.servicer import RerankerServicer

    auto = (POLICY.replace("name: bench_feed", "name: bench_auto")
            .replace("slate_size: 50", "slate_size: 20").replace("mode: greedy", "mode: auto"))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_feed.yaml").write_text(POLICY)
        (Path(tmp) / "bench_auto.yaml").write_text(auto)
        engine = Engine.from_directory(tmp)
    engine.warmup()
    return RerankerServicer(engine, ServerMetrics())


def _cases() -> list[tuple[str, bytes]]:
    from server._gen.reranker.v1 import reranker_pb2 as pb

    cases = [(f"greedy K=50 {enc}", make_request(enc).SerializeToString())
             for enc in ("dictionary", "plain")]
    req = make_request("dictionary")
    req.policy, req.slate_size, req.solver = "bench_auto", 20, pb.SOLVER_MODE_AUTO
    cases.append(("auto K=20 dictionary", req.SerializeToString()))
    return cases


def run(calls: int, block: int = 50, warmup: int = 200) -> list[dict]:
    from server._gen.reranker.v1 import reranker_pb2 as pb

    servicer = _servicer()
    ctx = _Context()
    parse, perf = pb.RerankRequest.FromString, time.perf_counter_ns
    cases = _cases()
    for _ in range(warmup):
        for _, raw in cases:
            servicer._rerank(parse(raw), ctx, raw, None, as_bytes=True)
    samples = {name: {s: [] for s in ("handler",) + STAGES} for name, _ in cases}
    for _ in range(max(1, calls // block)):
        for name, raw in cases:
            d = samples[name]
            for _ in range(block):
                t0 = perf()
                out = servicer._rerank(parse(raw), ctx, raw, None, as_bytes=True)
                d["handler"].append((perf() - t0) / 1e3)
                elapsed = pb.RerankResponse.FromString(out).diagnostics.elapsed_us
                for s in STAGES:
                    d[s].append(elapsed[s])
    rows = []
    for name, d in samples.items():
        row = {"case": name, "calls": len(d["handler"])}
        row.update({f"{s}_us": float(np.median(v)) for s, v in d.items()})
        row["glue_us"] = row["compile_us"] + row["solve_us"] + row["report_us"]
        rows.append(row)
    return rows


COLUMNS = [("case", "case"), ("compile_us", "compile µs"), ("solve_us", "solve µs"),
           ("report_us", "report µs"), ("glue_us", "compile + solve + report µs"),
           ("engine_total_us", "engine total µs"), ("handler_us", "handler µs")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1000, help="calls per case")
    ap.add_argument("--no-save", action="store_true", help="print only (no results file)")
    args = ap.parse_args()
    rows = run(args.calls)
    print(markdown_table(rows, COLUMNS))
    load = os.getloadavg()
    print(f"load average {load}")
    if not args.no_save:
        print(f"saved {save('glue', rows, {'calls': args.calls, 'load_average': load})}")


if __name__ == "__main__":
    main()
