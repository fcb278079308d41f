"""Why the server's stages take 2-3x their in-process time: cold caches between calls (issue 16).

In a served call, the client, gRPC's poller and the kernel's network path run between two
handler runs and evict the caches; an in-process loop keeps them hot. This runs bench_grpc's
request (N=1000, K=50, dictionary strings) through parse, decode and the engine in one process,
in alternating blocks of 50 calls: "hot" (back to back) and "cold" (a 32 MB buffer is written
before each call, which evicts every cache level). Medians per stage, same run.

    python -m benchmarks.bench_cold [--calls N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_grpc import POLICY, make_request
from benchmarks.common import print_table, save

STAGES = ("parse", "decode", "engine", "compile", "solve", "report")
EVICT_BYTES = 32 << 20


def run(calls: int = 2000, block: int = 50, encoding: str = "dictionary") -> dict:
    from engine.engine import Engine
    from server import convert
    from server._gen.reranker.v1 import reranker_pb2 as pb

    junk = np.ones(EVICT_BYTES, dtype=np.uint8)
    raw = make_request(encoding).SerializeToString()
    perf = time.perf_counter
    samples = {"hot": [], "cold": []}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_feed.yaml").write_text(POLICY)
        engine = Engine.from_directory(tmp)
        for i in range(calls + 200):
            mode = "cold" if (i // block) % 2 else "hot"
            if mode == "cold":
                junk += 1  # writes every cache line of 32 MB
            t0 = perf()
            msg = pb.RerankRequest.FromString(raw)
            t1 = perf()
            req = convert.decode_request(msg, raw)
            t2 = perf()
            result = engine.rerank(req)
            t3 = perf()
            if i >= 200:  # warm-up
                e = result.elapsed_us
                samples[mode].append(((t1 - t0) * 1e6, (t2 - t1) * 1e6, (t3 - t2) * 1e6,
                                      e.get("compile", 0.0), e.get("solve", 0.0), e.get("report", 0.0)))
    med = {m: np.median(np.array(v), axis=0) for m, v in samples.items()}
    rows = []
    for j, stage in enumerate(STAGES):
        rows.append({"stage": stage, "hot_us": float(med["hot"][j]), "cold_us": float(med["cold"][j]),
                     "cold_over_hot": float(med["cold"][j] / med["hot"][j]) if med["hot"][j] else float("nan")})
    meta = {"calls": calls, "block": block, "encoding": encoding, "evict_bytes": EVICT_BYTES,
            "loadavg_1m": os.getloadavg()[0]}
    return {"rows": rows, "meta": meta}


COLUMNS = [("stage", "stage"), ("hot_us", "hot µs (median)"), ("cold_us", "cold µs (median)"),
           ("cold_over_hot", "cold / hot")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--encoding", choices=("dictionary", "plain"), default="dictionary")
    args = ap.parse_args()
    result = run(args.calls, encoding=args.encoding)
    print_table(f"hot vs cold caches, {args.encoding} strings, load {result['meta']['loadavg_1m']:.1f}",
                result["rows"], COLUMNS)
    save(f"cold_{args.encoding}", result["rows"], result["meta"])


if __name__ == "__main__":
    main()
