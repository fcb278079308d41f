"""Scale: seeds and user shards in parallel (local processes, Ray) give the numbers of one process."""

from __future__ import annotations

import json
from pathlib import Path

from offline.policies import load_version
from simulation.run import Calibration, simulate
from simulation.scenario import parse_scenario

POLICIES = Path(__file__).resolve().parent.parent / "examples" / "scenarios" / "policies"

SHARDED = """
name: sharded
horizon_days: 4
shards: 2
users:
  initial: 40
  arrivals_per_day: 2
  session: {budget: 4.0, max_steps: 4}
catalog:
  initial_sellers: 12
  items_per_seller: 5
  new_sellers_per_day: 1
  new_seller_days: 3
  item_lifetime_days: 3
  churn: {window_days: 2, min_exposure: 5.0}
ranker: {noise_sd: 0.5, popularity_bias: 0.5}
clicks: {calibrate: target, target_ctr: 0.05}
engine: {candidates: 20, slate_size: 5}
"""


def test_processes_and_ray_give_the_numbers_of_one_process():
    scenario = parse_scenario(SHARDED)
    versions = [load_version(POLICIES / "home_feed.yaml"), load_version(POLICIES / "home_feed_amortized.yaml")]
    cal = Calibration("test", 0.05, -3.0, 0.05)
    runs = [simulate(scenario, versions, seeds=2, calibration=cal),
            simulate(scenario, versions, seeds=2, workers=2, calibration=cal),
            simulate(scenario, versions, seeds=2, ray="", calibration=cal)]
    assert [r.mode for r in runs] == ["in process", "2 processes", "ray"]
    blobs = [json.dumps(r.to_json(timings=False)) for r in runs]
    assert blobs[0] == blobs[1] == blobs[2]
    # two shards are two markets: both ran, and their sums make the whole
    first = runs[0].runs["sim_home_feed"][0]
    assert first.sessions > 0 and runs[0].to_json()["timing"]["sessions"] > first.sessions
