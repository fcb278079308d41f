"""Pareto frontiers of a policy's parameters over a logged traffic sample.

    sweep = pareto(log, "policies/home_feed.yaml",
                   vary=["objective.weights.p_purchase=0:4:9", "constraints.max_3_per_category.max=1:5:5"],
                   metrics=["expected_p_click", "share:seller_tier=new"])

Every grid point is the policy file with the varied numbers set, validated like any policy; all
points are replayed together in one pass over the log (offline.replay: each chunk is read and
converted once for every point), and the non-dominated points form the frontier. Then `refine`
rounds evaluate the midpoints (in parameter space) of neighbouring frontier points, sorted by the
first metric, where the curve is coarsest.

Parameter paths are dotted paths into the policy document: `objective.weights.p_purchase`,
`diversity.weight`, `solver.budget_ms`; an element of a list of named entries by its name
(`constraints.max_3_per_category.max`) or its index (`constraints.0.max`). A path that is not in
the policy is an error naming the valid ones, except a new score under `objective.weights` (an
absent weight is 0). Values: `lo:hi:n` (n evenly spaced values), or `a,b,c`. Integer fields get
rounded values.

Metrics: any of the replay's metrics (`expected_<score>`, `coverage`, `exposure_gini`,
`differs_share`, `mean_displacement`), `share:<attribute>=<value>` (that value's exposure share),
`relaxed:<rule>` (the share of requests where the rule was relaxed or violated). Higher is better;
`NAME:min` makes lower better.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from engine.errors import PolicyInvalid
from offline.estimators import bootstrap_sums
from offline.policies import version_from_text
from offline.replay import PolicyReplay, replay

#: how many values one `--vary` may have
MAX_VALUES = 100
#: how many points a grid may have
MAX_POINTS = 2_000


class ParetoError(ValueError):
    """A sweep that cannot start: a bad --vary or --metric, or a policy file that does not load."""


# ------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class Vary:
    path: tuple[str, ...]
    values: tuple[float, ...]

    @property
    def name(self) -> str:
        return ".".join(self.path)


def numeric_paths(doc, prefix: tuple[str, ...] = ()) -> list[str]:
    """Every number in a policy document, as the dotted paths `--vary` takes."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += numeric_paths(v, prefix + (str(k),))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            key = v.get("name") if isinstance(v, dict) and isinstance(v.get("name"), str) else str(i)
            out += numeric_paths(v, prefix + (key,))
    elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
        out.append(".".join(prefix))
    return out


def _values(spec: str, where: str) -> tuple[float, ...]:
    m = re.fullmatch(r"\s*(-?[\d.eE+-]+)\s*:\s*(-?[\d.eE+-]+)\s*:\s*(\d+)\s*", spec)
    try:
        if m:
            lo, hi, n = float(m.group(1)), float(m.group(2)), int(m.group(3))
            if not 1 <= n <= MAX_VALUES:
                raise ParetoError(f"{where}: the number of values must be 1..{MAX_VALUES}, got {n}")
            values = tuple(np.linspace(lo, hi, n).tolist()) if n > 1 else (lo,)
        else:
            values = tuple(float(x) for x in spec.split(",") if x.strip())
    except ValueError as e:
        if isinstance(e, ParetoError):
            raise
        raise ParetoError(f"{where}: expected LO:HI:N or a comma-separated list of numbers, got {spec!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ParetoError(f"{where}: expected finite numbers, got {spec!r}")
    return values


def _locate(doc, path: tuple[str, ...]):
    """(container, key) of `path` in `doc`, or None."""
    node = doc
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, dict):
            if last:
                return (node, part) if part in node else None
            if part not in node:
                return None
            node = node[part]
        elif isinstance(node, list):
            idx = next((j for j, v in enumerate(node) if isinstance(v, dict) and v.get("name") == part), None)
            if idx is None and part.isdigit() and int(part) < len(node):
                idx = int(part)
            if idx is None:
                return None
            if last:
                return node, idx
            node = node[idx]
        else:
            return None
    return None


def parse_vary(specs: list[str], doc: dict) -> list[Vary]:
    """The `--vary PATH=VALUES` options, checked against the policy document."""
    out = []
    valid = numeric_paths(doc)
    for spec in specs:
        path_text, sep, values = spec.partition("=")
        where = f"--vary {spec!r}"
        if not sep or not path_text.strip():
            raise ParetoError(f"{where}: expected PATH=LO:HI:N, e.g. objective.weights.p_click=0:2:5")
        path = tuple(p for p in path_text.strip().split("."))
        loc = _locate(doc, path)
        new_weight = (loc is None and len(path) == 3 and path[:2] == ("objective", "weights")
                      and isinstance(doc.get("objective", {}).get("weights"), dict))
        if loc is None and not new_weight:
            raise ParetoError(f"{where}: the policy has no number at {path_text.strip()!r}; "
                              f"the numbers it has: {', '.join(valid)}")
        if loc is not None and not isinstance(loc[0][loc[1]], (int, float)) or (
                loc is not None and isinstance(loc[0][loc[1]], bool)):
            raise ParetoError(f"{where}: {path_text.strip()!r} is not a number in the policy")
        out.append(Vary(path, _values(values, where)))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ParetoError(f"--vary: a path is given twice ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
    return out


def apply(doc: dict, vary: list[Vary], values: tuple[float, ...]) -> dict:
    """A copy of `doc` with each varied path set to its value (integers where the policy has one)."""
    out = copy.deepcopy(doc)
    for v, x in zip(vary, values):
        loc = _locate(out, v.path)
        if loc is None:  # a new objective weight
            out["objective"]["weights"][v.path[2]] = float(x)
            continue
        container, key = loc
        container[key] = int(round(x)) if isinstance(container[key], int) else float(x)
    return out


# ------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class Metric:
    name: str
    minimise: bool = False

    def of(self, p: PolicyReplay) -> float:
        if self.name.startswith("share:"):
            attr, _, value = self.name[len("share:"):].partition("=")
            return p.exposure_share.get(attr, {}).get(value, 0.0)
        if self.name.startswith("relaxed:"):
            rule = self.name[len("relaxed:"):]
            return p.relaxation_rate.get(rule, 0.0) + p.violation_rate.get(rule, 0.0)
        return p.metrics[self.name]

    def columns(self, p: PolicyReplay) -> tuple[np.ndarray, bool] | None:
        """Per-record columns whose sums give this metric, and whether it is their ratio
        (numerator, denominator) rather than a mean; None where the metric is not a mean over
        records (coverage, Gini, rule rates: no interval)."""
        w = p.position_weights
        if w is None:
            return None
        if self.name.startswith("expected_") and self.name[len("expected_"):] in p.record_scores:
            m = p.record_scores[self.name[len("expected_"):]]
            return (m @ w[:m.shape[1]])[:, None], False
        if self.name.startswith("share:") and p.slate_index is not None:
            attr, _, value = self.name[len("share:"):].partition("=")
            if attr not in p.slate_values:
                return None
            keys, codes = p.slate_values[attr]
            names = keys.to_pylist()
            code = names.index(value) if value in names else -2
            k = codes.shape[1]
            num = (codes == code) @ w[:k]
            den = (p.slate_index[:, :k] >= 0) @ w[:k]
            return np.column_stack([num, den]), True
        return None

    def better(self, a: float, b: float) -> bool:
        return a < b if self.minimise else a > b


def parse_metrics(specs: list[str]) -> list[Metric]:
    if not 2 <= len(specs) <= 3:
        raise ParetoError(f"--metric: give 2 or 3 metrics, got {len(specs)}")
    out = []
    for s in specs:
        name, _, how = s.partition(":") if not s.startswith(("share:", "relaxed:")) else (s, "", "")
        if s.startswith(("share:", "relaxed:")) and s.endswith(":min"):
            name, how = s[:-4], "min"
        if how not in ("", "min", "max"):
            raise ParetoError(f"--metric {s!r}: expected NAME, NAME:min or NAME:max")
        if name.startswith("share:") and "=" not in name:
            raise ParetoError(f"--metric {s!r}: expected share:ATTRIBUTE=VALUE")
        out.append(Metric(name, how == "min"))
    return out


def _check_metric_names(metrics: list[Metric], p: PolicyReplay) -> None:
    for m in metrics:
        if not m.name.startswith(("share:", "relaxed:")) and m.name not in p.metrics:
            raise ParetoError(f"--metric {m.name!r}: the replay has no such metric (it has: "
                              f"{', '.join(sorted(p.metrics))}, share:ATTRIBUTE=VALUE, relaxed:RULE)")


# ------------------------------------------------------------------ the sweep
@dataclass
class Point:
    values: tuple[float, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95 % bootstrap CI where the metric has one
    frontier: bool = False
    round: int = 0  # 0: the grid, r: refinement round r
    text: str = ""  # the policy file of this point
    error: str | None = None  # the point's policy is invalid (then it has no metrics)
    file: str | None = None


@dataclass
class Sweep:
    policy: str
    vary: list[Vary]
    metrics: list[Metric]
    points: list[Point]
    records: int
    seconds: float

    def frontier(self) -> list[Point]:
        first = self.metrics[0]
        pts = [p for p in self.points if p.frontier]
        return sorted(pts, key=lambda p: p.metrics[first.name], reverse=not first.minimise)

    def to_json(self) -> dict:
        return {"policy": self.policy, "records": self.records, "seconds": self.seconds,
                "vary": [{"path": v.name, "values": list(v.values)} for v in self.vary],
                "metrics": [{"name": m.name, "minimise": m.minimise} for m in self.metrics],
                "points": [{"values": dict(zip((v.name for v in self.vary), p.values)), "metrics": p.metrics,
                            "ci95": {k: list(v) for k, v in p.ci.items()},
                            "frontier": p.frontier, "round": p.round, "error": p.error, "file": p.file}
                           for p in self.points]}


def dominated(a: dict, b: dict, metrics: list[Metric]) -> bool:
    """Whether `b` dominates `a`: at least as good in every metric, better in one."""
    at_least = all(not m.better(a[m.name], b[m.name]) for m in metrics)
    return at_least and any(m.better(b[m.name], a[m.name]) for m in metrics)


def mark_frontier(points: list[Point], metrics: list[Metric]) -> None:
    ok = [p for p in points if p.error is None]
    for p in ok:
        p.frontier = not any(dominated(p.metrics, q.metrics, metrics) for q in ok if q is not p)


def _evaluate(points: list[Point], doc: dict, vary: list[Vary], metrics: list[Metric], log, *,
              n_bootstrap: int = 0, seed: int = 0, **kw) -> int:
    versions, live = [], []
    for p in points:
        p.text = yaml.safe_dump(apply(doc, vary, p.values), sort_keys=False, allow_unicode=True)
        try:
            versions.append(version_from_text(p.text, "<pareto point>"))
            live.append(p)
        except PolicyInvalid as e:
            p.error = "; ".join(f"{i.path}: {i.message}" for i in e.issues) or str(e)
    if not versions:
        return 0
    report = replay(log, versions, **kw)
    results = report.policies[1:]  # [0] is the log's own slates
    _check_metric_names(metrics, results[0])
    for p, r in zip(live, results):
        p.metrics = {m.name: m.of(r) for m in metrics}
        p.ci = {m.name: ci for m in metrics if (ci := interval(m, r, n_bootstrap, seed)) is not None}
    return report.records


def interval(metric: Metric, r: PolicyReplay, n_bootstrap: int, seed: int) -> tuple[float, float] | None:
    """The 95 % percentile bootstrap CI of a metric over the records (resampled with
    offline.estimators.bootstrap_sums; the same seed gives every point the same resamples)."""
    cols = metric.columns(r)
    if cols is None or n_bootstrap <= 0 or r.n == 0:
        return None
    stats, ratio = cols
    sums = bootstrap_sums(stats, n_bootstrap, seed)
    values = (np.divide(sums[:, 0], sums[:, 1], out=np.zeros(len(sums)), where=sums[:, 1] > 0)
              if ratio else sums[:, 0] / r.n)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def pareto(log: str | os.PathLike, policy_file: str | os.PathLike, *, vary: list[str], metrics: list[str],
           refine: int = 1, workers: int = 0, use_ray: bool = False, ray_address: str | None = None,
           progress: bool = False, n_bootstrap: int = 1000, seed: int = 0) -> Sweep:
    """Sweep the grid of `vary` over the log, then `refine` rounds between frontier neighbours."""
    import time

    try:
        text = Path(policy_file).read_text(encoding="utf-8")
        version_from_text(text, os.fspath(policy_file))  # the base policy must load
    except OSError as e:
        raise ParetoError(f"cannot read {policy_file}: {e.strerror or e}") from None
    except PolicyInvalid as e:
        raise ParetoError(str(e)) from None
    doc = yaml.safe_load(text)
    v = parse_vary(vary, doc)
    ms = parse_metrics(metrics)
    grid = list(itertools.product(*(x.values for x in v)))
    if len(grid) > MAX_POINTS:
        raise ParetoError(f"--vary: the grid has {len(grid):,} points, more than {MAX_POINTS:,}")
    kw = dict(workers=workers, use_ray=use_ray, ray_address=ray_address, progress=progress,
              n_bootstrap=n_bootstrap, seed=seed)
    t0 = time.perf_counter()
    points = [Point(tuple(g)) for g in grid]
    records = _evaluate(points, doc, v, ms, log, **kw)
    mark_frontier(points, ms)
    seen = {p.values for p in points}
    integer = {q for q in v if isinstance(_leaf(doc, q.path), int) and not isinstance(_leaf(doc, q.path), bool)}
    for r in range(1, refine + 1):
        front = Sweep("", v, ms, points, 0, 0).frontier()
        mids = []
        for a, b in zip(front, front[1:]):
            mid = tuple(float(round((x + y) / 2)) if q in integer else (x + y) / 2
                        for x, y, q in zip(a.values, b.values, v))
            if mid not in seen:
                seen.add(mid)
                mids.append(Point(mid, round=r))
        if not mids:
            break
        _evaluate(mids, doc, v, ms, log, **kw)
        points += mids
        mark_frontier(points, ms)
    return Sweep(os.fspath(policy_file), v, ms, points, records, time.perf_counter() - t0)


def _leaf(doc: dict, path: tuple[str, ...]):
    loc = _locate(doc, path)
    return None if loc is None else loc[0][loc[1]]


# ------------------------------------------------------------------ output
def write_points(sweep: Sweep, folder: str | os.PathLike, *, frontier_only: bool = False) -> list[Path]:
    """Write each point's policy file (`point-NNN.yaml`, a header saying what it is), ready to
    promote."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(sweep.points):
        if p.error is not None or (frontier_only and not p.frontier):
            continue
        head = [f"# Pareto point {i} of a sweep of {sweep.policy} over {sweep.records:,} logged requests",
                "# " + ", ".join(f"{v.name} = {x:g}" for v, x in zip(sweep.vary, p.values)),
                "# " + ", ".join(f"{k} = {x:.6g}" for k, x in p.metrics.items())
                + ("  (on the frontier)" if p.frontier else "  (dominated)")]
        path = folder / f"point-{i:03d}.yaml"
        path.write_text("\n".join(head) + "\n" + p.text)
        p.file = str(path)
        out.append(path)
    return out


def plot(sweep: Sweep, path: str | os.PathLike) -> Path:
    """The points, frontier in colour and dominated points grey (2 metrics: a scatter; 3: the
    third as colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = sweep.metrics
    ok = [p for p in sweep.points if p.error is None]
    fig, ax = plt.subplots(figsize=(7, 5))
    dom = [p for p in ok if not p.frontier]
    front = sweep.frontier()
    x, y = ms[0].name, ms[1].name
    ax.scatter([p.metrics[x] for p in dom], [p.metrics[y] for p in dom], color="lightgrey", label="dominated")
    if len(ms) == 3:
        sc = ax.scatter([p.metrics[x] for p in front], [p.metrics[y] for p in front],
                        c=[p.metrics[ms[2].name] for p in front], cmap="viridis", label="frontier", zorder=3)
        fig.colorbar(sc, ax=ax, label=ms[2].name)
    else:
        ax.scatter([p.metrics[x] for p in front], [p.metrics[y] for p in front], color="tab:blue",
                   label="frontier", zorder=3)
    ax.plot([p.metrics[x] for p in front], [p.metrics[y] for p in front], color="tab:blue", alpha=0.5)
    for p in front:  # 95 % bootstrap CIs of the frontier points, where the metric has one
        ex, ey = p.ci.get(x), p.ci.get(y)
        ax.errorbar(p.metrics[x], p.metrics[y], fmt="none", ecolor="tab:blue", alpha=0.4,
                    xerr=None if ex is None else [[p.metrics[x] - ex[0]], [ex[1] - p.metrics[x]]],
                    yerr=None if ey is None else [[p.metrics[y] - ey[0]], [ey[1] - p.metrics[y]]])
    ax.set_xlabel(x + (" (lower is better)" if ms[0].minimise else ""))
    ax.set_ylabel(y + (" (lower is better)" if ms[1].minimise else ""))
    ax.set_title(f"{Path(sweep.policy).name}: {len(front)} of {len(ok)} points on the frontier")
    ax.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
