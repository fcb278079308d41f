"""What-if preview: a proposed policy against the live one, on the same logged requests.

    pv = preview("logs/decisions", load_version("policies/home.yaml"), load_version("home_new.yaml"))
    print("\\n".join(pv.lines))

Both versions are replayed (offline.replay) on the same records: the whole log, or with
`sample=N` its first N records in log order (not a random sample: the first N are what a person
re-running the preview on the same log gets again). Every number is then compared *paired*:
the records are resampled jointly (offline.estimators.bootstrap_sums, one pass of B resamples
over one matrix of per-record columns for both policies), so a delta's CI is the spread of
proposed(resample) - live(resample), not of two independent intervals.

Reported (each a `Delta`: live, proposed, delta, 95 % CI of the delta, and the relative change
with its CI for metrics):
- the share of slates that change (live slate != proposed slate, item by item);
- direct metrics: `expected_<score>` per logged score (the replay's examination weights),
  `differs_share` and `mean_displacement` against the log; `coverage` and `exposure_gini` with
  their deltas but no CI (they are not means over records, so resampling records does not give
  their law from column sums);
- off-policy estimates of `outcome` per slate where outcomes are given (every estimator the log's
  propensities allow, as offline.evaluate.off_policy picks them), with paired delta CIs;
- exposure: per attribute (and per item) the values whose position-weighted exposure share
  gains and loses the most, in points, with CIs (share = sum_i e_i(v) / sum_i E_i: a ratio of
  column sums, resampled jointly);
- per rule the relaxation (hard) and violation (soft) rate of both, and solve-time percentiles.

`lines` opens the report in plain language, e.g.
    "seller_tier 'new' exposure share 4.1 % -> 9.8 % (+5.7 points, 95 % CI 5.1 to 6.3)"
    "expected p_purchase -0.8 % (0.4213 -> 0.4179; 95 % CI -1.2 to -0.4 %)"
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.decide import PolicyVersion
from engine.decision_log import read_log
from engine.validate import Limits
from offline.estimators import ESTIMATORS, REQUIRES, bootstrap_sums, round_stats
from offline.evaluate import MARGINAL_ESTIMATORS, OUTCOMES, logged_outcomes, slate_log
from offline.replay import (CHUNK_ROWS, LOGGED, PolicyReplay, ReplayError, ReplayReport, check_policies,
                            replay)

#: values listed per attribute among the gainers and among the losers
TOP = 5
#: the estimator of the plain-language off-policy line, the first of these the log allows
HEADLINE_ESTIMATORS = ("snrips", "snips", "dr", "rips", "ips", "dm")
ALPHA = 0.05


class PreviewError(ValueError):
    """The preview cannot run: a bad option, or a log the policies cannot run on."""


@dataclass(frozen=True)
class Delta:
    """live -> proposed of one number, with the 95 % paired bootstrap CI of the change.
    relative = delta / live (NaN when live is 0); CIs are NaN without a bootstrap."""

    name: str
    live: float
    proposed: float
    delta: float
    low: float
    high: float
    relative: float = math.nan
    rel_low: float = math.nan
    rel_high: float = math.nan

    @property
    def significant(self) -> bool:
        """The CI excludes 0."""
        return bool(self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class ExposureChange:
    """A value's exposure share under both policies; delta in share units (x 100 = points)."""

    attribute: str  # an attribute name, or "item"
    value: str
    change: Delta


@dataclass
class Preview:
    source: str
    records: int
    sample: str  # "all records" | "the first N records"
    live: dict  # label, policy, digest
    proposed: dict
    changed: Delta  # the share of slates that change
    metrics: list[Delta]
    off_policy: list[Delta]  # one per estimator, of `outcome` per slate
    outcome: str | None
    exposure: dict[str, list[ExposureChange]]  # attribute | "item" -> gainers (largest first), losers
    rules: dict[str, dict[str, float]]  # rule -> {live_relaxed, proposed_relaxed, live_violated, ...}
    solve_us: dict[str, dict[str, float]]  # "live" | "proposed" -> p50 / p90 / p99 / max
    total_us: dict[str, dict[str, float]]
    failed: dict[str, int]
    lines: list[str]
    notes: list[str] = field(default_factory=list)
    n_bootstrap: int = 0
    seed: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in ("source", "records", "sample", "live", "proposed", "outcome",
                                             "rules", "solve_us", "total_us", "failed", "lines", "notes",
                                             "n_bootstrap", "seed", "seconds")}
        out["changed"] = asdict(self.changed)
        out["metrics"] = [asdict(d) for d in self.metrics]
        out["off_policy"] = [asdict(d) for d in self.off_policy]
        out["exposure"] = {a: [{"value": c.value, **asdict(c.change)} for c in cs]
                           for a, cs in self.exposure.items()}
        return _finite(out)


def _finite(x):
    """NaN -> None, all the way down (JSON has no NaN)."""
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


# ------------------------------------------------------------------ per-record columns
class _Columns:
    """Per-record statistics (float64[n] each) of both policies, resampled together."""

    def __init__(self, n: int):
        self.n = n
        self.cols: list[np.ndarray] = []

    def add(self, x: np.ndarray) -> int:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.n,):
            raise AssertionError(f"a per-record column has shape {x.shape}, expected ({self.n},)")
        self.cols.append(x)
        return len(self.cols) - 1

    def run(self, n_bootstrap: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(column sums float64[m], resampled sums float64[B, m] or None)."""
        stats = np.column_stack(self.cols) if self.cols else np.zeros((self.n, 0))
        sums = stats.sum(axis=0)
        if not n_bootstrap or not self.cols:
            return sums, None
        return sums, bootstrap_sums(stats, n_bootstrap, seed)


def _delta(name: str, f_live, f_prop, sums: np.ndarray, boot: np.ndarray | None) -> Delta:
    """The Delta of two functions of column sums (vectorised over resamples)."""
    lv, pv = float(f_live(sums)), float(f_prop(sums))
    d = pv - lv
    rel = d / lv if lv != 0 else math.nan
    if boot is None:
        return Delta(name, lv, pv, d, math.nan, math.nan, rel)
    bl, bp = np.asarray(f_live(boot), dtype=np.float64), np.asarray(f_prop(boot), dtype=np.float64)
    low, high = (float(v) for v in np.quantile(bp - bl, [ALPHA / 2, 1 - ALPHA / 2]))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (bp - bl) / bl
    r = r[np.isfinite(r)]
    rl, rh = ((float(v) for v in np.quantile(r, [ALPHA / 2, 1 - ALPHA / 2])) if len(r) and lv != 0
              else (math.nan, math.nan))
    return Delta(name, lv, pv, d, low, high, rel, rl, rh)


def _mean(j: int, n: int):
    return lambda s: s[..., j] / n


def _ratio(num: int, den: int):
    def f(s):
        d = s[..., den]
        return np.divide(s[..., num], d, out=np.zeros(np.shape(d)), where=d != 0)
    return f


def _weights(p: PolicyReplay, K: int) -> np.ndarray:
    w = np.zeros(K)
    k = min(K, len(p.position_weights))
    w[:k] = p.position_weights[:k]
    return w


def _record_value(p: PolicyReplay, score: str, n: int) -> np.ndarray:
    """Per record: sum_k w_k score(item at k) of the policy's slate (0 where absent)."""
    m = p.record_scores.get(score)
    if m is None:
        return np.zeros(n)
    return m @ _weights(p, m.shape[1])


def _record_exposure(codes, w: np.ndarray, values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(float64[n, len(values)] the weighted exposure of each value per record, float64[n] the
    record's total exposure of the attribute)."""
    keys, c = codes
    n, K = c.shape
    w = np.pad(w, (0, max(0, K - len(w))))[:K]
    total = (c >= 0) @ w
    index = {v: i for i, v in enumerate(keys.to_pylist())}
    col = np.full(len(keys) + 1, -1, np.int64)
    for j, v in enumerate(values):
        if v in index:
            col[index[v]] = j
    m = col[np.where(c >= 0, c, len(keys))]
    out = np.zeros((n, len(values)))
    rows, pos = np.nonzero(m >= 0)
    np.add.at(out, (rows, m[rows, pos]), w[pos])
    return out, total


def _shares(codes, w: np.ndarray) -> dict[str, float]:
    keys, c = codes
    if not len(keys):
        return {}
    K = c.shape[1]
    w = np.pad(w, (0, max(0, K - len(w))))[:K]
    e = np.zeros(len(keys) + 1)
    np.add.at(e, np.where(c >= 0, c, len(keys)), np.broadcast_to(w, c.shape))
    total = e[:-1].sum()
    return dict(zip(keys.to_pylist(), (e[:-1] / total if total else e[:-1]).tolist()))


def _movers(live: dict[str, float], prop: dict[str, float], top: int) -> list[str]:
    """The `top` values gaining the most share, then the `top` losing the most (non-zero changes)."""
    d = {v: prop.get(v, 0.0) - live.get(v, 0.0) for v in set(live) | set(prop)}
    gain = sorted((v for v, x in d.items() if x > 0), key=lambda v: (-d[v], v))[:top]
    lose = sorted((v for v, x in d.items() if x < 0), key=lambda v: (d[v], v))[:top]
    return gain + lose


# ------------------------------------------------------------------ the preview
def _sample_records(source, n: int, folder: str, sample_seed: int | None) -> str:
    """n records of a log, in log order, written as one Parquet file in `folder` (its path): the
    first n, or with `sample_seed` a uniform sample without replacement (numpy's
    default_rng(sample_seed).choice, kept in log order)."""
    table = read_log(source)
    if sample_seed is None:
        picked = table.slice(0, n)
    else:
        rows = np.sort(np.random.default_rng(sample_seed).choice(table.num_rows, size=n, replace=False))
        picked = table.take(pa.array(rows))
    path = os.path.join(folder, "sample.parquet")
    pq.write_table(picked, path, row_group_size=CHUNK_ROWS)
    return path


def preview(log, live: PolicyVersion, proposed: PolicyVersion, *, sample: int | None = None,
            outcomes=None, outcome: str = "clicks", n_bootstrap: int = 1000, seed: int = 0,
            position_weights: str = "log2", reward: str = "p_click", top: int = TOP,
            limits: Limits | None = None, workers: int = 0, sample_seed: int | None = None,
            rule_costs: bool = False) -> Preview:
    """Replay `live` and `proposed` on the same records of `log` and compare them (module
    docstring). `sample`: N records (None: all): the first N, or a uniform sample seeded by
    `sample_seed`; `outcomes`: a file or folder of
    outcomes for off-policy estimates (None: direct metrics only)."""
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, (int, np.integer))
                               or sample < 1):
        raise PreviewError(f"sample: must be an integer >= 1 (the first N records), got {sample!r}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) \
            or n_bootstrap < 0 or n_bootstrap == 1:
        raise PreviewError(f"n_bootstrap: must be 0 (no intervals) or an integer >= 2, got {n_bootstrap!r}")
    if outcome not in OUTCOMES:
        raise PreviewError(f"outcome: expected one of {', '.join(OUTCOMES)}, got {outcome!r}")
    check_policies(log, [live, proposed])  # a log the policies cannot run on: named before any work
    with tempfile.TemporaryDirectory(prefix="preview-") as tmp:
        source = log
        total = None
        if sample is not None:
            total = len(read_log(log, columns=["request_id"]))
            if sample < total:
                source = _sample_records(log, sample, tmp, sample_seed)
        report = replay(source, [live, proposed], limits=limits, workers=workers, reward=reward,
                        position_weights=position_weights, explain=rule_costs)
        lo = (logged_outcomes(source, outcomes, report.by_label()[LOGGED], outcome=outcome)
              if outcomes is not None else None)
        out = _compare(report, lo, outcome if lo is not None else None, n_bootstrap, seed, top)
    out.source = os.fspath(log)
    out.sample = ("all records" if sample is None or total is None or sample >= total
                  else f"the first {sample:,} of {total:,} records" if sample_seed is None
                  else f"{sample:,} of {total:,} records sampled at random (seed {sample_seed})")
    return out


def _compare(report: ReplayReport, lo, outcome: str | None, n_bootstrap: int, seed: int,
             top: int) -> Preview:
    L, P = report.policies[1], report.policies[2]
    n = report.records
    cols = _Columns(n)
    defs: list[tuple] = []  # (kind, key, f_live, f_prop) evaluated once the sums are in
    notes: list[str] = []

    # the slates that change
    K = max(L.slate_index.shape[1], P.slate_index.shape[1], 1)
    sl, sp = np.full((n, K), -1, np.int64), np.full((n, K), -1, np.int64)
    sl[:, :L.slate_index.shape[1]] = L.slate_index
    sp[:, :P.slate_index.shape[1]] = P.slate_index
    j = cols.add((sl != sp).any(axis=1))
    # as a Delta from 0: the live policy against itself changes no slate
    defs.append(("changed", "changed_share", lambda s: np.zeros(np.shape(s)[:-1]), _mean(j, n)))

    # direct metrics
    for score in sorted(set(L.record_scores) | set(P.record_scores)):
        a, b = cols.add(_record_value(L, score, n)), cols.add(_record_value(P, score, n))
        defs.append(("metric", f"expected_{score}", _mean(a, n), _mean(b, n)))
    a, b = cols.add(L.record_differs), cols.add(P.record_differs)
    defs.append(("metric", "differs_share", _mean(a, n), _mean(b, n)))
    fl, fp = np.isfinite(L.record_displacement), np.isfinite(P.record_displacement)
    a, b = cols.add(np.where(fl, L.record_displacement, 0.0)), cols.add(np.where(fp, P.record_displacement, 0.0))
    ca, cb = cols.add(fl), cols.add(fp)
    defs.append(("metric", "mean_displacement", _ratio(a, ca), _ratio(b, cb)))

    # off-policy estimates
    if lo is not None:
        log_l, log_p = slate_log(lo, L), slate_log(lo, P)
        names = [e for e in ESTIMATORS if all(getattr(log_l, f) is not None for f in REQUIRES[e])]
        if lo.marginal_missing:
            names = [e for e in names if e not in MARGINAL_ESTIMATORS]
            notes.append(f"{lo.marginal_missing} stochastic records have no item-position marginals: "
                         f"{', '.join(MARGINAL_ESTIMATORS)} left out")
        if lo.stochastic == 0:
            notes.append("the log's slates were deterministic (no propensities): the off-policy estimates "
                         "only count the slates a policy shares with the log")
        for e in names:
            fins = []
            for lg in (log_l, log_p):
                stats, fin = round_stats(lg, e)
                first = len(cols.cols)
                for c in range(stats.shape[1]):
                    cols.add(stats[:, c])
                fins.append((first, first + stats.shape[1], fin))
            (l0, l1, fin_l), (p0, p1, fin_p) = fins
            defs.append(("ope", e, lambda s, l0=l0, l1=l1, f=fin_l: f(s[..., l0:l1]),
                         lambda s, p0=p0, p1=p1, f=fin_p: f(s[..., p0:p1])))

    # exposure: the values that move most, per attribute and per item
    movers: dict[str, list[str]] = {}
    sources = {a: (L.slate_values.get(a), P.slate_values.get(a))
               for a in sorted(set(L.slate_values) | set(P.slate_values))}
    sources["item"] = (L.slate_items, P.slate_items)
    for attr, (cl, cp) in sources.items():
        wl, wp = _weights(L, K), _weights(P, K)
        share_l = _shares(cl, wl) if cl is not None else {}
        share_p = _shares(cp, wp) if cp is not None else {}
        values = _movers(share_l, share_p, top)
        if not values:
            movers[attr] = []
            continue
        movers[attr] = values
        idx = []
        for codes, w in ((cl, wl), (cp, wp)):
            if codes is None:
                e, tot = np.zeros((n, len(values))), np.zeros(n)
            else:
                e, tot = _record_exposure(codes, w, values)
            t = cols.add(tot)
            idx.append(([cols.add(e[:, v]) for v in range(len(values))], t))
        (el, tl), (ep, tp) = idx
        for v, a, b in zip(values, el, ep):
            defs.append(("exposure", (attr, v), _ratio(a, tl), _ratio(b, tp)))

    sums, boot = cols.run(n_bootstrap, seed)
    changed = None
    metrics, ope = [], []
    exposure: dict[str, list[ExposureChange]] = {a: [] for a in movers}
    for kind, key, f_l, f_p in defs:
        d = _delta(key if isinstance(key, str) else key[1], f_l, f_p, sums, boot)
        if kind == "changed":
            changed = d
        elif kind == "metric":
            metrics.append(d)
        elif kind == "ope":
            ope.append(d)
        else:
            exposure[key[0]].append(ExposureChange(key[0], key[1], d))
    for name in ("coverage", "exposure_gini"):
        lv, pv = L.metrics.get(name, math.nan), P.metrics.get(name, math.nan)
        metrics.append(Delta(name, lv, pv, pv - lv, math.nan, math.nan,
                             (pv - lv) / lv if lv else math.nan))
    rules = {}
    for r in sorted(set(L.relaxation_rate) | set(P.relaxation_rate) | set(L.violation_rate) | set(P.violation_rate)):
        rules[r] = {"live_relaxed": L.relaxation_rate.get(r, 0.0), "proposed_relaxed": P.relaxation_rate.get(r, 0.0),
                    "live_violated": L.violation_rate.get(r, 0.0),
                    "proposed_violated": P.violation_rate.get(r, 0.0)}
    for r in sorted(set(L.rule_cost) | set(P.rule_cost)):  # preview(rule_costs=True)
        rules.setdefault(r, {"live_relaxed": 0.0, "proposed_relaxed": 0.0, "live_violated": 0.0,
                             "proposed_violated": 0.0})
        rules[r].update(live_cost=L.rule_cost.get(r, math.nan), proposed_cost=P.rule_cost.get(r, math.nan))
    if L.failed or P.failed:
        notes.append(f"failed records (no slate, counted as empty): live {L.failed:,}, proposed {P.failed:,}")
    pv = Preview(source=report.source, records=n, sample="", live=_who(L), proposed=_who(P),
                 changed=changed, metrics=metrics, off_policy=ope, outcome=outcome, exposure=exposure,
                 rules=rules, solve_us={"live": L.solve_us, "proposed": P.solve_us},
                 total_us={"live": L.total_us, "proposed": P.total_us},
                 failed={"live": L.failed, "proposed": P.failed}, lines=[], notes=notes,
                 n_bootstrap=n_bootstrap, seed=seed, seconds=report.seconds)
    pv.lines = plain_lines(pv)
    return pv


def _who(p: PolicyReplay) -> dict:
    return {"label": p.label, "policy": p.policy, "digest": p.digest}


# ------------------------------------------------------------------ plain language
def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f} %"


def _digits(*values: float) -> int:
    """Decimals that tell the numbers apart: 1 from 1 up (and for 0), 2 from 0.1, else 3."""
    m = max((abs(v) for v in values if not math.isnan(v)), default=0.0)
    return 1 if m >= 1 or m == 0 else 2 if m >= 0.1 else 3


def _ci(low: float, high: float, scale: float = 100.0, unit: str = "", digits: int | None = None) -> str:
    if math.isnan(low):
        return ""
    p = _digits(scale * low, scale * high) if digits is None else digits
    return f"95 % CI {scale * low:+.{p}f} to {scale * high:+.{p}f}{unit}"


def share_line(c: ExposureChange) -> str:
    """e.g. "seller_tier 'new' exposure share 4.1 % -> 9.8 % (+5.7 points, 95 % CI +5.1 to +6.3)"."""
    d = c.change
    p = _digits(100 * d.delta, 100 * d.low, 100 * d.high)
    ci = _ci(d.low, d.high, digits=p)
    return (f"{c.attribute} {c.value!r} exposure share {_pct(d.live, p)} -> {_pct(d.proposed, p)} "
            f"({100 * d.delta:+.{p}f} points{', ' + ci if ci else ''})")


def metric_line(d: Delta, label: str | None = None) -> str:
    """e.g. "expected p_click -0.8 % (0.4213 -> 0.4179; 95 % CI -1.2 to -0.4 %)" (relative)."""
    label = label or d.name.replace("expected_", "expected ")
    if math.isnan(d.relative):
        return f"{label} {d.live:.4g} -> {d.proposed:.4g} ({d.delta:+.4g})"
    p = _digits(100 * d.relative, 100 * d.rel_low, 100 * d.rel_high)
    ci = _ci(d.rel_low, d.rel_high, unit=" %", digits=p)
    return f"{label} {100 * d.relative:+.{p}f} % ({d.live:.4g} -> {d.proposed:.4g}{'; ' + ci if ci else ''})"


def plain_lines(pv: Preview) -> list[str]:
    """The opening lines: slates changed, every expected_ metric, the headline off-policy estimate,
    the largest gain and loss of exposure share per attribute, the rules whose rates move."""
    c = pv.changed
    ci = _ci(c.low, c.high, unit=" %").replace("+", "")
    lines = [f"{_pct(c.delta)} of {pv.records:,} slates change"
             + (f" ({ci})" if ci else "")]
    lines += [metric_line(d) for d in pv.metrics if d.name.startswith("expected_")]
    by = {d.name: d for d in pv.off_policy}
    head = next((e for e in HEADLINE_ESTIMATORS if e in by), None)
    if head:
        lines.append(metric_line(by[head], f"{pv.outcome} per slate ({head} estimate)"))
    for attr, changes in pv.exposure.items():
        if attr == "item":
            continue
        gains = [x for x in changes if x.change.delta > 0]
        losses = [x for x in changes if x.change.delta < 0]
        lines += [share_line(x[0]) for x in (gains, losses) if x]
    for rule, r in pv.rules.items():
        for what in ("relaxed", "violated"):
            a, b = r[f"live_{what}"], r[f"proposed_{what}"]
            if a != b:
                lines.append(f"rule {rule} {what} in {_pct(a)} -> {_pct(b)} of requests")
    return lines


# ------------------------------------------------------------------ rendering
def _num(x: float, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _rel(d: Delta) -> str:
    if math.isnan(d.relative):
        return "-"
    ci = "" if math.isnan(d.rel_low) else f" [{100 * d.rel_low:+.1f}, {100 * d.rel_high:+.1f}]"
    return f"{100 * d.relative:+.1f} %{ci}"


def tables(pv: Preview) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report."""
    out = []
    rows = [[d.name, _num(d.live), _num(d.proposed), _num(d.delta, 3),
             "-" if math.isnan(d.low) else f"{_num(d.low, 3)} to {_num(d.high, 3)}", _rel(d)]
            for d in [pv.changed] + pv.metrics]
    out.append(("direct metrics (paired bootstrap CIs of the delta)",
                ["metric", "live", "proposed", "delta", "95 % CI", "relative [95 % CI]"], rows))
    if pv.off_policy:
        rows = [[d.name, _num(d.live), _num(d.proposed), _num(d.delta, 3),
                 "-" if math.isnan(d.low) else f"{_num(d.low, 3)} to {_num(d.high, 3)}", _rel(d)]
                for d in pv.off_policy]
        out.append((f"off-policy estimates ({pv.outcome} per slate)",
                    ["estimator", "live", "proposed", "delta", "95 % CI", "relative [95 % CI]"], rows))
    for attr, changes in pv.exposure.items():
        if not changes:
            continue
        rows = [[c.value, _pct(c.change.live), _pct(c.change.proposed), f"{100 * c.change.delta:+.2f}",
                 "-" if math.isnan(c.change.low) else f"{100 * c.change.low:+.2f} to {100 * c.change.high:+.2f}"]
                for c in changes]
        out.append((f"exposure share by {attr}: largest gains and losses",
                    [attr, "live", "proposed", "points", "95 % CI (points)"], rows))
    if pv.rules:
        costs = any("live_cost" in v for v in pv.rules.values())
        rows = [[r, _pct(v["live_relaxed"]), _pct(v["proposed_relaxed"]), _pct(v["live_violated"]),
                 _pct(v["proposed_violated"])]
                + ([_num(v.get("live_cost", math.nan), 4), _num(v.get("proposed_cost", math.nan), 4)] if costs else [])
                for r, v in pv.rules.items()]
        out.append(("rules (share of requests" + ("; cost: mean objective the rule costs" if costs else "") + ")",
                    ["rule", "relaxed live", "relaxed proposed", "violated live", "violated proposed"]
                    + (["cost live", "cost proposed"] if costs else []), rows))
    rows = [[f"{stage} {k}", _num(getattr(pv, attr)["live"].get(k, math.nan), 3),
             _num(getattr(pv, attr)["proposed"].get(k, math.nan), 3)]
            for stage, attr in (("solve µs", "solve_us"), ("decide µs", "total_us"))
            for k in ("p50", "p90", "p99", "max")]
    out.append(("solve time", ["percentile", "live", "proposed"], rows))
    return out


def header_line(pv: Preview) -> str:
    return (f"preview of {pv.proposed['policy']} ({pv.proposed['digest'][:12]}) against live "
            f"{pv.live['policy']} ({pv.live['digest'][:12]}) on {pv.sample} of {pv.source} "
            f"({pv.records:,} records, {pv.n_bootstrap} paired resamples, {pv.seconds:.1f} s replay)")


def print_preview(pv: Preview, out) -> None:
    """The report on a rich Console: the plain-language lines first, then the tables."""
    from rich.markup import escape
    from rich.table import Table

    out.print(escape(header_line(pv)))
    for line in pv.lines:
        out.print("  " + escape(line))
    for note in pv.notes:
        out.print(escape(note), style="yellow")
    for title, header, rows in tables(pv):
        t = Table(*header, title=title)
        for r in rows:
            t.add_row(*map(escape, r))
        out.print(t)


def write_preview(pv: Preview, folder: str | os.PathLike) -> dict[str, Path]:
    """preview.json and preview.md in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md = [f"# {header_line(pv)}", ""] + [f"- {line}" for line in pv.lines] + [""]
    md += [f"> {n}" for n in pv.notes]
    for title, header, rows in tables(pv):
        md += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    paths = {"json": folder / "preview.json", "md": folder / "preview.md"}
    paths["json"].write_text(json.dumps(pv.to_json(), indent=2, default=str) + "\n")
    paths["md"].write_text("\n".join(md) + "\n")
    return paths


__all__ = ["Delta", "ExposureChange", "Preview", "PreviewError", "ReplayError", "plain_lines",
           "preview", "print_preview", "write_preview"]
