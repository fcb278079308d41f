"""What-if preview (issue 13 target): 10,000 logged requests (N=200, K=20), two policies, in at
most 10 s on this machine; against replaying the same two policies in the same run (the
baseline: what the preview adds is the paired bootstrap and the report). 3 alternating runs.

    python -m benchmarks.bench_preview [--quick]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_replay import POLICY, make_log
from benchmarks.common import bench_main
from offline.policies import version_from_text
from offline.preview import preview
from offline.replay import replay

COLUMNS = [("what", "what"), ("records", "records"), ("median_s", "median s"), ("runs", "runs s"),
           ("vs", "vs replay")]


def run(quick: bool = False) -> list[dict]:
    records = 1_000 if quick else 10_000
    text = POLICY.replace("slate_size: 10", "slate_size: 20")
    live = version_from_text(text)
    proposed = version_from_text(text.replace('version: "1"', 'version: "2"').replace("max: 3}", "max: 2}"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_preview_"))
    try:
        make_log(tmp, records, n=200)
        rp, pv = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            replay(tmp, [live, proposed])
            rp.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            preview(tmp, live, proposed, n_bootstrap=1000)
            pv.append(time.perf_counter() - t0)
        base = float(np.median(rp))
        return [{"what": "replay of both policies (baseline)", "records": records, "median_s": base,
                 "runs": ", ".join(f"{x:.2f}" for x in rp), "vs": 1.0},
                {"what": "preview, 1,000 paired resamples", "records": records, "median_s": float(np.median(pv)),
                 "runs": ", ".join(f"{x:.2f}" for x in pv), "vs": float(np.median(pv)) / base}]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    bench_main("preview", "What-if preview against replay", run, COLUMNS, __doc__)
