"""Run a scenario under several policies over seeds and shards, and compare them.

    result = simulate(scenario, [load_version("A.yaml"), load_version("B.yaml")], seeds=3)

The work is cut into independent tasks, one per (policy, seed, shard): a shard is a market of
its own (its users, its sellers, its ledger), so tasks share nothing and run in process, on local
processes (`workers`) or on Ray (`ray`) with the same numbers: each task's numbers depend only on
(scenario, policy, seed, shard) - every random draw is keyed by what it is about
(simulation.rng) - and the tasks' results are merged in task order.

Common random numbers: policy A and policy B of one seed see the same users (arrivals,
interests, budgets, visit days), the same sellers and items (arrivals, attributes, lifetimes,
stock) and the same noise (ranker noise per request and item, click, purchase and return draws
per user, day and step), whatever the policies do; only what the policies change differs (what is
shown, so who clicks, who comes back, who survives). The paired difference of a metric is
B - A per seed; its CI is the t interval over seeds (95 %). Identical policies give identical
runs, so a difference of exactly 0.

Calibration: the click model's intercept is set once per scenario (seed 0's day-0 market, the
upstream ranker's own slates) to the target CTR per impression: the Open Bandit Dataset sample's
(offline.obd) or the scenario's `clicks.target_ctr`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.decide import PolicyVersion
from simulation.environment import MARKET, SUMMED, ShardResult, calibrate_intercept, simulate_shard
from simulation.scenario import Scenario, ScenarioInvalid, check_policy

#: the scalar metrics of one run, in report order: name -> (label, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "ltv": ("LTV per day-0 user", True),
    "revenue": ("revenue", True),
    "retention": ("day-0 cohort retained at the end", True),
    "active_users_mean": ("active users per day", True),
    "ctr": ("CTR per impression", True),
    "seller_survival": ("day-0 sellers alive at the end", True),
    "new_seller_success": ("new sellers alive after their first window", True),
    "new_seller_share": ("new sellers' exposure share", True),
    "gini": ("exposure Gini over sellers (mean of days)", False),
    "hhi": ("exposure HHI over sellers (mean of days)", False),
    "item_gini": ("exposure Gini over live items (mean of days)", False),
    "coverage": ("catalog coverage (mean of days)", True),
}
#: the per-day series of one run
SERIES = ("revenue", "retention", "active_users", "ctr", "seller_survival", "new_seller_alive",
          "new_seller_success", "new_seller_share", "gini", "hhi", "item_gini", "coverage")


@dataclass(frozen=True)
class Calibration:
    source: str  # "OBD all/random (data/obd)" or "scenario clicks.target_ctr"
    target_ctr: float
    intercept: float
    achieved_ctr: float  # of the upstream ranker's slates on the calibration sample

    def text(self) -> str:
        return (f"click intercept {self.intercept:.4f} calibrated to the CTR per impression of {self.source}: "
                f"target {self.target_ctr:.5f}, achieved {self.achieved_ctr:.5f} on the upstream ranker's own "
                f"slates (day 0, seed 0)")


def calibrate(scenario: Scenario) -> Calibration:
    """The click model's intercept for `scenario` (see the module docstring)."""
    cfg = scenario.clicks
    if cfg.calibrate == "obd":
        from offline import obd

        try:
            data = obd.load(cfg.obd.campaign, cfg.obd.behavior, cfg.obd.root)
        except (OSError, obd.ObdError) as e:
            raise ScenarioInvalid("<scenario>", [_issue("clicks.obd.root", f"cannot read the Open Bandit Dataset "
                                                        f"sample ({e}); run `make data`, or use calibrate: target")]) from None
        target = data.ctr()
        source = f"the OBD sample ({cfg.obd.campaign}/{cfg.obd.behavior}, {data.n:,} impressions-positions)"
    else:
        target = float(cfg.target_ctr)
        source = "the scenario's clicks.target_ctr"
    intercept, achieved = calibrate_intercept(scenario, target)
    return Calibration(source, float(target), float(intercept), float(achieved))


def _issue(path: str, message: str):
    from engine.errors import FieldIssue

    return FieldIssue(path, message)


# ------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class Task:
    index: int
    policy: int  # index into the policies
    seed: int
    shard: int


class ShardTask:
    """The callable a worker runs: Task -> (index, market-days, ShardResult). Pickled to the
    workers with the policy versions (compiled policies pickle)."""

    def __init__(self, scenario: Scenario, policies: Sequence[tuple[str, PolicyVersion]], intercept: float):
        self.scenario = scenario
        self.policies = list(policies)
        self.intercept = intercept

    def __call__(self, task: Task, advance: Callable[[int], None] | None = None):
        label, version = self.policies[task.policy]
        res = simulate_shard(self.scenario, version, task.seed, task.shard, self.intercept, label, advance=advance)
        return task.index, self.scenario.horizon_days, res


def tasks_of(n_policies: int, seeds: Sequence[int], shards: int) -> list[Task]:
    out = []
    for p in range(n_policies):
        for s in seeds:
            for h in range(shards):
                out.append(Task(len(out), p, s, h))
    return out


# ------------------------------------------------------------------ merging and metrics
@dataclass
class Run:
    """One policy under one seed, all shards merged."""

    label: str
    seed: int
    series: dict[str, np.ndarray]
    metrics: dict[str, float]
    engine_s: float
    total_s: float
    sessions: int
    requests: int


def _ratio(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def merge_shards(parts: Sequence[ShardResult]) -> Run:
    """The shards of one (policy, seed), in shard order: sums added, market statistics averaged."""
    parts = sorted(parts, key=lambda p: p.shard)
    d = {k: np.sum([p.daily[k] for p in parts], axis=0) for k in SUMMED}
    m = {k: np.mean([p.daily[k] for p in parts], axis=0) for k in MARKET}
    t = {k: float(sum(p.totals[k] for p in parts)) for k in parts[0].totals}
    series = {
        "revenue": d["revenue"],
        "retention": _ratio(d["cohort_retained"], t["cohort"]),
        "active_users": d["active_users"],
        "ctr": _ratio(d["clicks"], d["impressions"]),
        "seller_survival": _ratio(d["initial_sellers_alive"], t["initial_sellers"]),
        "new_seller_alive": _ratio(d["new_sellers_alive"], d["new_sellers_arrived"]),
        "new_seller_success": _ratio(d["new_sellers_viable"], d["new_sellers_viable_base"]),
        "new_seller_share": _ratio(d["new_seller_exposure"], d["exposure"]),
        **m,
    }
    metrics = {
        "ltv": t["cohort_value"] / t["cohort"],
        "revenue": float(d["revenue"].sum()),
        "retention": float(series["retention"][-1]),
        "active_users_mean": float(d["active_users"].mean()),
        "ctr": float(_ratio(d["clicks"].sum(), d["impressions"].sum())),
        "seller_survival": float(series["seller_survival"][-1]),
        "new_seller_success": float(series["new_seller_success"][-1]),
        "new_seller_share": float(_ratio(d["new_seller_exposure"].sum(), d["exposure"].sum())),
        "gini": float(m["gini"].mean()),
        "hhi": float(m["hhi"].mean()),
        "item_gini": float(m["item_gini"].mean()),
        "coverage": float(m["coverage"].mean()),
    }
    return Run(parts[0].label, parts[0].seed, series, metrics, sum(p.engine_s for p in parts),
               sum(p.total_s for p in parts), int(d["sessions"].sum()), int(d["requests"].sum()))


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """B - A per seed: mean, 95 % t interval over seeds (None with one seed), the differences."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = len(diff)
    mean = float(diff.mean())
    lo = hi = None
    if n > 1:
        from scipy.stats import t as student

        sd = float(diff.std(ddof=1))
        half = float(student.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)
        lo, hi = mean - half, mean + half
    return {"mean": mean, "lo": lo, "hi": hi, "per_seed": diff.tolist()}


@dataclass
class Simulation:
    """The result of `simulate`: every run, and the comparisons against the first policy."""

    scenario: Scenario
    scenario_source: str
    calibration: Calibration
    labels: list[str]
    sources: list[str]
    digests: list[str]
    seeds: list[int]
    runs: dict[str, list[Run]]  # label -> one Run per seed, in seed order
    mode: str
    wall_s: float
    differences: dict[str, dict[str, dict]] = field(default_factory=dict)  # label -> metric -> paired()

    def mean_metrics(self, label: str) -> dict[str, float]:
        runs = self.runs[label]
        return {k: float(np.mean([r.metrics[k] for r in runs])) for k in METRICS}

    def mean_series(self, label: str) -> dict[str, np.ndarray]:
        runs = self.runs[label]
        return {k: np.mean([r.series[k] for r in runs], axis=0) for k in SERIES}

    def timing(self) -> dict:
        runs = [r for rs in self.runs.values() for r in rs]
        engine = sum(r.engine_s for r in runs)
        total = sum(r.total_s for r in runs)
        sessions = sum(r.sessions for r in runs)
        return {"mode": self.mode, "wall_s": self.wall_s, "sessions": sessions,
                "requests": sum(r.requests for r in runs), "engine_s": engine, "simulator_s": total - engine,
                "task_s": total, "engine_share": engine / total if total > 0 else 0.0,
                "sessions_per_s": sessions / self.wall_s if self.wall_s > 0 else 0.0}

    def to_json(self, timings: bool = True) -> dict:
        out = {
            "scenario": self.scenario.name, "scenario_file": self.scenario_source,
            "horizon_days": self.scenario.horizon_days, "shards": self.scenario.shards, "seeds": self.seeds,
            "calibration": {"source": self.calibration.source, "target_ctr": self.calibration.target_ctr,
                            "intercept": self.calibration.intercept, "achieved_ctr": self.calibration.achieved_ctr,
                            "text": self.calibration.text()},
            "policies": [{"label": lab, "file": src, "digest": dig}
                         for lab, src, dig in zip(self.labels, self.sources, self.digests)],
            "metrics": {lab: {"mean": self.mean_metrics(lab),
                              "per_seed": {k: [r.metrics[k] for r in self.runs[lab]] for k in METRICS}}
                        for lab in self.labels},
            "series": {lab: {k: v.tolist() for k, v in self.mean_series(lab).items()} for lab in self.labels},
            "differences": self.differences,
        }
        if timings:
            out["timing"] = self.timing()
        return out


def labels_of(versions: Sequence[PolicyVersion]) -> list[str]:
    """Policy names, with '#2', '#3' for a name given again (the same policy twice compares it
    with itself)."""
    out, seen = [], {}
    for v in versions:
        seen[v.name] = seen.get(v.name, 0) + 1
        out.append(v.name if seen[v.name] == 1 else f"{v.name}#{seen[v.name]}")
    return out


def simulate(scenario: Scenario, versions: Sequence[PolicyVersion], *, seeds: int | None = None,
             workers: int = 0, ray: str | None = None, progress: bool = False,
             scenario_source: str = "<scenario>", calibration: Calibration | None = None) -> Simulation:
    """Run every policy over `seeds` seeds (default: the scenario's) and its shards; compare each
    policy with the first. `workers` >= 2: local processes; `ray`: a Ray address ('' = local)."""
    from offline.runner import progress_bar, run_processes, run_ray

    if not versions:
        raise ValueError("simulate needs at least one policy")
    for v in versions:
        check_policy(v)
    calibration = calibration or calibrate(scenario)
    seed_list = list(range(seeds if seeds is not None else scenario.seeds))
    labels = labels_of(versions)
    task = ShardTask(scenario, list(zip(labels, versions)), calibration.intercept)
    tasks = tasks_of(len(versions), seed_list, scenario.shards)
    t0 = time.perf_counter()
    results: dict[int, ShardResult] = {}
    with progress_bar(len(tasks) * scenario.horizon_days, progress, "simulating market-days") as advance:
        if ray is not None:
            mode = "ray"
            got, _ = run_ray(task, tasks, [], address=ray or None, advance=advance)
            results = dict(got)
        elif workers and workers > 1:
            mode = f"{workers} processes"
            got, _ = run_processes(task, tasks, [], workers=workers, advance=advance)
            results = dict(got)
        else:
            mode = "in process"
            for t in tasks:
                _, _, results[t.index] = task(t, advance)
    wall = time.perf_counter() - t0
    runs: dict[str, list[Run]] = {lab: [] for lab in labels}
    for p, lab in enumerate(labels):
        for s in seed_list:
            parts = [results[t.index] for t in tasks if t.policy == p and t.seed == s]
            runs[lab].append(merge_shards(parts))
    sim = Simulation(scenario, scenario_source, calibration, labels, [v.loaded.source for v in versions],
                     [v.digest for v in versions], seed_list, runs, mode, wall)
    base = labels[0]
    for lab in labels[1:]:
        sim.differences[lab] = {k: paired([r.metrics[k] for r in runs[base]], [r.metrics[k] for r in runs[lab]])
                                for k in METRICS}
    return sim

