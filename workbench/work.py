"""What the workbench's jobs compute: a preview of an edit against the live file, and a Pareto
sweep of an edit's numbers, on a sample of the decision log, as JSON the page draws.

The sample (the first N records of the log, in log order, as `reranker preview --sample N`) is
written once per size to a Parquet file in the workbench's scratch folder and reused while the
log's files are unchanged, so a preview of 1,000 requests replays 1,000 records without
re-reading the whole log each time.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.decide import PolicyVersion
from offline.pareto import ParetoError, parse_metrics, parse_vary, pareto
from offline.preview import header_line, preview, tables
from offline.replay import CHUNK_ROWS, check_policies, log_chunks, log_fields
from workbench.folder import Folders, unified_diff, with_numbers
from workbench.jobs import Job

#: the sample size the page starts with
DEFAULT_SAMPLE = 1_000
MAX_SAMPLE = 1_000_000
#: bootstrap resamples of a sweep's point CIs (a preview uses offline.preview's default, 1,000)
PARETO_BOOTSTRAP = 200
MAX_PARETO_POINTS = 200
DIRECT_METRICS = ("coverage", "exposure_gini", "differs_share", "mean_displacement")


def _signature(log: str) -> tuple:
    """What changes when the log's files change (a URL: itself, never cached)."""
    p = Path(log)
    files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    out = []
    for f in files:
        if p.is_dir() and "outcomes" in f.relative_to(p).parts:
            continue
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((os.fspath(f), st.st_size, st.st_mtime_ns))
    return tuple(out)


class Samples:
    """First-N samples of one log, cached as Parquet files in a scratch folder."""

    def __init__(self, log: str, scratch: str, workers: int = 0):
        self.log = log
        self.scratch = scratch
        self.workers = workers  # > 1: the sample is cut in that many row groups (chunks run in parallel)
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[tuple, str, int]] = {}
        self._total: tuple[tuple, int] | None = None

    @property
    def is_url(self) -> bool:
        return "://" in self.log

    def total(self) -> int:
        """Records in the log (from the Parquet footers: no rows read)."""
        sig = () if self.is_url else _signature(self.log)
        if self._total is None or self._total[0] != sig or self.is_url:
            self._total = (sig, sum(c.rows() for c in log_chunks(self.log)))
        return self._total[1]

    def get(self, n: int) -> tuple[str, int, int]:
        """(a log source holding the first n records, records in it, records in the whole log)."""
        with self._lock:
            total = self.total()
            if n >= total:
                return self.log, total, total
            sig = () if self.is_url else _signature(self.log)
            hit = self._cache.get(n)
            if hit is not None and hit[0] == sig and not self.is_url:
                return hit[1], n, total
            path = os.path.join(self.scratch, f"sample-{n}.parquet")
            tmp = path + ".tmp"
            rows = CHUNK_ROWS if self.workers <= 1 else max(1, min(CHUNK_ROWS, -(-n // self.workers)))
            pq.write_table(_first_rows(self.log, n), tmp, row_group_size=rows)
            os.replace(tmp, path)
            self._cache[n] = (sig, path, total)
            return path, n, total

    def outcomes(self) -> str | None:
        """LOG/outcomes when the log has one (off-policy estimates), as `reranker preview`."""
        if self.is_url:
            return None
        folder = os.path.join(self.log, "outcomes")
        return folder if os.path.isdir(folder) else None


def _first_rows(log: str, n: int) -> pa.Table:
    """The first n records of a log, reading only the row groups that hold them."""
    tables, have = [], 0
    for chunk in log_chunks(log):
        if have >= n:
            break
        t = chunk.read()
        tables.append(t)
        have += t.num_rows
    return pa.concat_tables(tables).slice(0, n)


def check_sample(sample) -> int:
    if sample is None:
        return DEFAULT_SAMPLE
    if isinstance(sample, bool) or not isinstance(sample, int) or not 1 <= sample <= MAX_SAMPLE:
        raise ValueError(f"sample: expected an integer from 1 to {MAX_SAMPLE:,} (records of the log), got {sample!r}")
    return sample


def check_runs_on_log(log: str, versions: list[PolicyVersion]) -> None:
    """ReplayError naming every column the policies need that the log has not got."""
    check_policies(log, versions)


# ------------------------------------------------------------------ preview
def preview_job(job: Job, samples: Samples, live: PolicyVersion, proposed: PolicyVersion, n: int,
                n_bootstrap: int = 1000) -> dict:
    job.set_phase(f"sampling the first {n:,} records of the log")
    source, records, total = samples.get(n)
    job.work = 2 * records
    job.set_phase(f"replaying the live and the proposed policy on {records:,} records, then "
                  f"{n_bootstrap:,} paired bootstrap resamples")
    pv = preview(source, live, proposed, outcomes=samples.outcomes(), n_bootstrap=n_bootstrap,
                 workers=samples.workers)
    pv.source = samples.log
    pv.sample = "all records" if records >= total else f"the first {records:,} of {total:,} records"
    job.set_phase("formatting")
    return preview_json(pv)


def preview_json(pv) -> dict:
    exposure = {}
    for attr, changes in pv.exposure.items():
        if attr == "item" or not changes:
            continue
        exposure[attr] = [{"value": c.value, "live": c.change.live, "proposed": c.change.proposed,
                           "delta": c.change.delta, "low": _f(c.change.low), "high": _f(c.change.high)}
                          for c in changes]
    deltas = [{"name": d.name, "live": _f(d.live), "proposed": _f(d.proposed), "relative": _f(d.relative),
               "rel_low": _f(d.rel_low), "rel_high": _f(d.rel_high), "significant": d.significant}
              for d in list(pv.metrics) + list(pv.off_policy)
              if not math.isnan(d.relative)]
    return {"header": header_line(pv), "lines": pv.lines, "notes": pv.notes,
            "tables": [{"title": t, "header": h, "rows": r} for t, h, r in tables(pv)],
            "exposure": exposure, "deltas": deltas, "records": pv.records, "sample": pv.sample,
            "changed_share": pv.changed.delta, "live": pv.live, "proposed": pv.proposed}


def _f(x: float):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


# ------------------------------------------------------------------ pareto
def metric_choices(log: str, version: PolicyVersion | None) -> list[str]:
    """The metrics a sweep may use on this log: expected_<score> of every logged score, the
    direct metrics, the exposure share of each logged attribute's values (as share:ATTR=VALUE
    hints, a value to fill in), relaxed:<rule> of the policy's rules."""
    fields = log_fields(log)
    out = [f"expected_{s}" for s in sorted(fields.scores)] + list(DIRECT_METRICS)
    if version is not None:
        out += [f"relaxed:{c.name}" for c in version.loaded.policy.constraints if getattr(c, "name", None)]
    out += [f"share:{a}=" for a in sorted(fields.attributes)]
    return out


def pareto_specs(vary: list[dict]) -> list[str]:
    """The page's vary rows ({path, lo, hi, n} or {path, values}) as `--vary` specs."""
    if not isinstance(vary, list) or not vary:
        raise ParetoError("vary: give at least one number to vary (a path and its values)")
    out = []
    for i, row in enumerate(vary):
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"].strip():
            raise ParetoError(f"vary[{i}].path: expected a number's dotted path, e.g. objective.weights.p_click")
        if isinstance(row.get("values"), str) and row["values"].strip():
            out.append(f"{row['path'].strip()}={row['values'].strip()}")
            continue
        try:
            lo, hi, n = float(row.get("lo")), float(row.get("hi")), int(row.get("n"))
        except (TypeError, ValueError):
            raise ParetoError(f"vary[{i}] ({row['path']}): expected numbers lo and hi and a count n, "
                              f"got lo={row.get('lo')!r}, hi={row.get('hi')!r}, n={row.get('n')!r}") from None
        out.append(f"{row['path'].strip()}={lo!r}:{hi!r}:{n}")
    return out


def check_pareto(text: str, vary: list[str], metrics: list[str]) -> int:
    """Refuse a bad sweep before it starts; returns the number of grid points."""
    import yaml

    doc = yaml.safe_load(text)
    v = parse_vary(vary, doc)
    parse_metrics(metrics)
    points = math.prod(len(x.values) for x in v)
    if points > MAX_PARETO_POINTS:
        raise ParetoError(f"vary: the grid has {points:,} points; the workbench sweeps at most "
                          f"{MAX_PARETO_POINTS} (use `reranker pareto` for more)")
    return points


def pareto_job(job: Job, samples: Samples, folders: Folders, file: str, text: str, vary: list[str],
               metrics: list[str], refine: int, n: int, scratch: str) -> dict:
    import yaml

    job.set_phase(f"sampling the first {n:,} records of the log")
    source, records, total = samples.get(n)
    job.work *= records
    live_text, live_digest = folders.read(file)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="pareto-") as tmp:
        base = os.path.join(tmp, file)
        Path(base).write_text(text, encoding="utf-8")
        job.set_phase(f"replaying the grid on {records:,} records, then {refine} refinement round(s)")
        sweep = pareto(source, base, vary=vary, metrics=metrics, refine=refine, n_bootstrap=PARETO_BOOTSTRAP,
                       workers=samples.workers)
    job.set_phase("formatting")
    paths = [v.path for v in sweep.vary]
    points = []
    texts = {}
    for i, p in enumerate(sweep.points):
        point_text = with_numbers(text, paths, list(p.values)) or p.text
        texts[i] = point_text
        points.append({"index": i, "values": dict(zip((v.name for v in sweep.vary), p.values)),
                       "metrics": p.metrics, "ci": {k: list(v) for k, v in p.ci.items()},
                       "frontier": p.frontier, "round": p.round, "error": p.error,
                       "diff": unified_diff(live_text, point_text, file, live_digest)})
    job.extra["texts"] = texts
    doc_ok = isinstance(yaml.safe_load(text), dict)
    return {"file": file, "records": sweep.records, "seconds": sweep.seconds, "doc_ok": doc_ok,
            "sample": "all records" if records >= total else f"the first {records:,} of {total:,} records",
            "vary": [v.name for v in sweep.vary],
            "metrics": [{"name": m.name, "minimise": m.minimise} for m in sweep.metrics],
            "points": points}
