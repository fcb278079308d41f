"""Pareto sweep (issue 13 target): 50 points over 10,000 logged requests (N=200, K=20) in at most
2 minutes locally, and Ray no slower than local processes. The same sweep in process (the
baseline), with --workers 2 and on a local Ray, in one run.

    python -m benchmarks.bench_pareto [--quick]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.bench_replay import POLICY, make_log
from benchmarks.common import bench_main
from offline.pareto import pareto

COLUMNS = [("mode", "mode"), ("points", "points"), ("records", "records"), ("seconds", "seconds"),
           ("per_point_s", "s per point"), ("vs", "vs in process"), ("frontier", "frontier points")]


def run(quick: bool = False) -> list[dict]:
    records = 1_000 if quick else 10_000
    tmp = Path(tempfile.mkdtemp(prefix="bench_pareto_"))
    try:
        make_log(tmp, records, n=200)
        base = tmp / "policy.yaml"
        base.write_text(POLICY.replace("slate_size: 10", "slate_size: 20"))
        vary = ["objective.weights.p_purchase=0:20:10", "constraints.max_3_per_category.max=2:6:5"]
        metrics = ["expected_p_click", "expected_p_purchase"]
        rows, base_s = [], None
        for mode, kw in (("in process", {}), ("--workers 2", {"workers": 2}), ("--ray (local)", {"use_ray": True})):
            t0 = time.perf_counter()
            sweep = pareto(tmp, base, vary=vary, metrics=metrics, refine=0, **kw)
            s = time.perf_counter() - t0
            base_s = base_s or s
            rows.append({"mode": mode, "points": len(sweep.points), "records": sweep.records, "seconds": s,
                         "per_point_s": s / len(sweep.points), "vs": base_s / s,
                         "frontier": len(sweep.frontier())})
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    bench_main("pareto", "Pareto sweep: 50 points over a log", run, COLUMNS, __doc__)
