"""Simulation throughput (issue 14 targets): sessions/s at N=200 candidates, K=10, home_feed-like
rules (examples/scenarios/policies/home_feed.yaml), the share of the time spent in the engine
(engine.decide) against the simulator's own work (target: overhead <= engine time), and
`--workers 2` / Ray against one process on the same tasks (target: >= 1.6x). The baseline is the
one-process run of the same run.

    python -m benchmarks.bench_simulate [--quick] [--million [--ray]]

The workload: the example marketplace scenario (examples/scenarios/marketplace.yaml, OBD-calibrated
clicks) cut to 3 days, 2 seeds x 2 shards (4 equal tasks), 600 day-0 users. `--million` runs
1,000,000 sessions instead (100 shards of 10,000 users, one day, every user visits on the day
they arrive) on 2 processes (or Ray) with a progress bar, and reports the time it took.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import markdown_table, print_table, save
from offline.policies import load_version
from simulation.run import calibrate, simulate
from simulation.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "examples" / "scenarios" / "marketplace.yaml"
POLICY = ROOT / "examples" / "scenarios" / "policies" / "home_feed.yaml"

COLUMNS = [("mode", "mode"), ("tasks", "tasks"), ("sessions", "sessions"), ("requests", "requests"),
           ("wall_s", "median s"), ("runs_s", "runs s"), ("sessions_per_s", "sessions/s"), ("engine_share", "engine share"),
           ("overhead_vs_engine", "overhead / engine"), ("speedup", "vs 1 process")]


def workload(quick: bool, million: bool):
    s = load_scenario(SCENARIO)
    if million:
        return s.model_copy(update={
            "horizon_days": 1, "shards": 100, "seeds": 1,
            "users": s.users.model_copy(update={"initial": 1_000_000, "arrivals_per_day": 0.0}),
            "catalog": s.catalog.model_copy(update={"initial_sellers": 2000, "new_sellers_per_day": 0.0})})
    return s.model_copy(update={
        "horizon_days": 1 if quick else 3, "shards": 2, "seeds": 2,
        "users": s.users.model_copy(update={"initial": 100 if quick else 600})})


def _row(mode: str, sim, tasks: int, base_wall: float | None, wall: float | None = None,
         runs: list[float] | None = None) -> dict:
    """One mode's row: `wall` the median wall time of its runs (default: this run's); the engine
    share from the last run's task times (engine.decide against everything else in the tasks)."""
    t = sim.timing()
    wall = t["wall_s"] if wall is None else wall
    engine, other = t["engine_s"], t["simulator_s"]
    return {"mode": mode, "tasks": tasks, "sessions": t["sessions"], "requests": t["requests"],
            "wall_s": wall, "runs_s": ", ".join(f"{x:.2f}" for x in (runs or [wall])),
            "sessions_per_s": t["sessions"] / wall if wall else None, "engine_s": engine, "simulator_s": other,
            "engine_share": t["engine_share"], "overhead_vs_engine": other / engine if engine else None,
            "speedup": (base_wall / wall) if base_wall else 1.0}


def run(quick: bool = False, million: bool = False, use_ray: bool = False) -> list[dict]:
    scenario = workload(quick, million)
    version = load_version(POLICY)
    cal = calibrate(scenario)
    tasks = scenario.seeds * scenario.shards
    if million:
        mode = "ray" if use_ray else "2 processes"
        sim = simulate(scenario, [version], seeds=1, workers=0 if use_ray else 2, ray="" if use_ray else None,
                       progress=True, calibration=cal)
        return [_row(mode, sim, tasks, None)]
    # warm-up (not timed): the engine's kernels in this process (forked workers inherit them),
    # and Ray's start and its workers' imports
    warm = scenario.model_copy(update={"horizon_days": 1,
                                       "users": scenario.users.model_copy(update={"initial": 20})})
    simulate(warm, [version], calibration=cal)
    t0 = time.perf_counter()
    simulate(warm, [version], ray="", calibration=cal)
    ray_start = time.perf_counter() - t0
    walls: dict[str, list[float]] = {"one": [], "two": [], "ray": []}
    sims = {}
    for _ in range(2 if quick else 3):  # alternating, medians quoted
        for key, kw in (("one", {}), ("two", {"workers": 2}), ("ray", {"ray": ""})):
            sims[key] = simulate(scenario, [version], calibration=cal, **kw)
            walls[key].append(sims[key].wall_s)
    med = {k: float(np.median(v)) for k, v in walls.items()}
    rows = [_row("1 process (baseline)", sims["one"], tasks, None, med["one"], walls["one"]),
            _row("--workers 2", sims["two"], tasks, med["one"], med["two"], walls["two"]),
            _row("--ray (local)", sims["ray"], tasks, med["one"], med["ray"], walls["ray"])]
    same = all(json.dumps(sims[k].to_json(timings=False)) == json.dumps(sims["one"].to_json(timings=False))
               for k in sims)
    for r in rows:
        r["same_numbers"] = same
    rows[0]["calibration"] = cal.text()
    rows[2]["ray_start_and_warmup_s"] = ray_start
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 day of 100 users (smoke run)")
    parser.add_argument("--million", action="store_true", help="1,000,000 sessions on 2 processes (long)")
    parser.add_argument("--ray", action="store_true", help="with --million: on a local Ray instead")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = run(args.quick, args.million, args.ray)
    name = "simulate_million" if args.million else "simulate"
    title = "Simulation: 1,000,000 sessions" if args.million else "Simulation throughput (N=200, K=10, home_feed-like)"
    print_table(title, rows, COLUMNS)
    print(save(name, rows, {"quick": args.quick, "million": args.million, "total_s": time.perf_counter() - t0}))
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
