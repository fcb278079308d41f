"""The workbench page's answer to a preview of 1,000 logged requests (issue 13 target: at most
1 s), over real HTTP: `reranker workbench` runs as a subprocess on a policy folder and a log of
5,000 records (N=200 candidates, K=20, the bench_preview policies: greedy, a category cap
3 -> 2); a client posts the edit, then long-polls the job until its result is in (what the page
does). Baselines in the same run, in this process: offline.preview called directly with
sample=1000 (what `reranker preview --sample 1000` does), and on the 1,000-record sample file
already cut (the work a workbench job does once its sample is cached); and a second workbench with
--workers 2 (its sample cut in 2 row groups replayed on 2 forked processes). 5 alternating runs
after one warm-up of each.

    python -m benchmarks.bench_workbench [--quick]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq

from benchmarks.bench_replay import POLICY, make_log
from benchmarks.common import bench_main
from engine.decision_log import read_log
from offline.policies import version_from_text
from offline.preview import preview
from offline.replay import CHUNK_ROWS

COLUMNS = [("what", "what"), ("records", "records"), ("median_s", "median s"), ("runs", "runs s"),
           ("vs", "vs preview(sample=1000)"), ("target", "target")]
ROOT = Path(__file__).resolve().parent.parent


def _start(policies: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "workbench", "--policies", str(policies),
                             "--log", str(log), "--port", "0", *extra], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if not line.startswith("workbench listening on "):
        proc.kill()
        raise RuntimeError(f"the workbench did not start: {line!r}")
    return proc, line.split()[3]


def _round_trip(client: httpx.Client, text: str, sample: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    job = client.post("/api/preview", json={"file": "bench.yaml", "text": text, "sample": sample}).json()
    while job["state"] in ("queued", "running"):
        job = client.get(f"/api/jobs/{job['id']}", params={"wait": 0.25}).json()
    seconds = time.perf_counter() - t0
    if job["state"] != "done":
        raise RuntimeError(f"the preview job failed: {job.get('error')}")
    return seconds, job["result"]


def run(quick: bool = False) -> list[dict]:
    records, sample, runs = (2_000, 1_000, 2) if quick else (5_000, 1_000, 5)
    text = POLICY.replace("slate_size: 10", "slate_size: 20").replace("bench_replay", "bench")
    proposed_text = text.replace('version: "1"', 'version: "2"').replace("max: 3}", "max: 2}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_workbench_"))
    procs: list = []
    try:
        log = tmp / "log"
        make_log(log, records, n=200)
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "bench.yaml").write_text(text)
        cut = tmp / "sample.parquet"
        pq.write_table(read_log(log).slice(0, sample), cut, row_group_size=CHUNK_ROWS)
        live, proposed = version_from_text(text), version_from_text(proposed_text)
        procs.append(_start(policies, log))
        procs.append(_start(policies, log, "--workers", "2"))
        clients = [httpx.Client(base_url=url, timeout=120) for _, url in procs]
        try:
            for client in clients:  # the workbenches' own warm-up (kernels, the default sample)
                for _ in range(60):
                    if client.get("/api/jobs/warmup-1", params={"wait": 5}).json()["state"] in ("done", "failed"):
                        break
                _round_trip(client, proposed_text, sample)
            preview(log, live, proposed, sample=sample)
            preview(cut, live, proposed)
            direct, on_cut, http, http2 = [], [], [], []
            for _ in range(runs):
                t0 = time.perf_counter()
                pv = preview(log, live, proposed, sample=sample)
                direct.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                preview(cut, live, proposed)
                on_cut.append(time.perf_counter() - t0)
                for client, times in zip(clients, (http, http2)):
                    seconds, result = _round_trip(client, proposed_text, sample)
                    times.append(seconds)
                    if result["lines"] != pv.lines:
                        raise RuntimeError("the workbench's preview differs from offline.preview's on the same records")
        finally:
            for client in clients:
                client.close()
        base = float(np.median(direct))

        def row(what, xs, target=""):
            return {"what": what, "records": sample, "median_s": float(np.median(xs)),
                    "runs": ", ".join(f"{x:.2f}" for x in xs), "vs": float(np.median(xs)) / base, "target": target}

        out = [row("offline.preview(log, sample=1000), in process (baseline)", direct),
               row("offline.preview on the cut 1,000-record sample, in process", on_cut),
               row("workbench: POST /api/preview + long poll to the result (HTTP)", http, "<= 1 s"),
               row("the same, reranker workbench --workers 2", http2, "<= 1 s")]
        for r in out[2:]:
            r["met"] = bool(r["median_s"] <= 1.0)
        return out
    finally:
        for proc, _ in procs:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    bench_main("workbench", "Workbench preview of 1,000 requests over HTTP against offline.preview", run,
               COLUMNS, __doc__)
