"""Rerank throughput with the exposure ledger in process and in Redis (one engine, one thread).

Policy: slate of 10 from 200 candidates, caps per category, an amortized exposure rule on
seller_tier (so every request reads the ledger before solving and writes to it after). The same
requests run against both ledgers in the same run; a policy without the exposure rule is the
baseline.

    python -m benchmarks.bench_rerank_ledger [--quick]
"""

from __future__ import annotations


import numpy as np

from benchmarks.common import bench_main, time_calls
from engine.ledger import InProcessLedger, RedisLedger
from engine.types import RerankRequest
from testing.redis_server import RedisServer
from testing.engines import candidates, engine_with, policy

COLUMNS = [("ledger", "ledger"), ("median_us", "Rerank median µs"), ("p99_us", "p99 µs"),
           ("per_s", "requests/s (1 thread)"), ("over_baseline", "× no exposure rule")]


def run(quick: bool = False) -> list[dict]:
    base_doc = policy(slate_size=10, constraints=[
        {"name": "cap", "type": "max_count", "attribute": "category", "max": 3}], solver={"mode": "greedy"})
    doc = {**base_doc, "exposure": {"amortized": [
        {"name": "new", "attribute": "seller_tier", "target": {"new": 0.2}, "gain": 1.0}]}}
    requests = [RerankRequest("p", candidates(200, seed=s)) for s in range(50)]
    reps = 300 if quick else 3000
    rows = []

    def measure(name, eng):
        it = iter(range(10**9))
        t = time_calls(lambda: eng.rerank(requests[next(it) % len(requests)]), reps, warmup=20)
        rows.append(dict(ledger=name, median_us=float(np.median(t)), p99_us=float(np.percentile(t, 99)),
                         per_s=1e6 / float(np.mean(t))))

    measure("none (baseline)", engine_with(base_doc))
    eng = engine_with(doc)
    eng.ledger = InProcessLedger()
    measure("in-process", eng)
    with RedisServer() as server:
        eng = engine_with(doc)
        eng.ledger = RedisLedger(server.url)
        measure("redis", eng)
        eng.ledger.close()
    for row in rows:
        row["over_baseline"] = row["median_us"] / rows[0]["median_us"]
    return rows


def main() -> None:
    bench_main("rerank_ledger", "Rerank with the exposure ledger", run, COLUMNS, __doc__)


if __name__ == "__main__":
    main()
