"""A simulation's report: a rich table, plots over time (PNG), an HTML page, JSON. Formats only."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from simulation.run import METRICS, Simulation

#: the plots over time: (series, title, y label)
PLOTS = (
    ("retention", "Day-0 cohort retained", "share of users"),
    ("revenue", "Revenue per day", "value"),
    ("active_users", "Active users per day", "users"),
    ("seller_survival", "Day-0 sellers alive", "share of sellers"),
    ("new_seller_success", "New sellers alive after their first window", "share of new sellers"),
    ("new_seller_share", "New sellers' exposure share", "share of exposure"),
    ("gini", "Exposure Gini over sellers", "Gini"),
    ("hhi", "Exposure HHI over sellers", "HHI"),
    ("item_gini", "Exposure Gini over live items", "Gini"),
    ("coverage", "Catalog coverage per day", "share of live items shown"),
)


def _num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if x != 0 and abs(x) < 10 ** -(digits - 1):
        return f"{x:.2e}"
    return f"{x:,.{digits}f}" if abs(x) < 1000 else f"{x:,.1f}"


def _ci(d: dict) -> str:
    if d["lo"] is None:
        return "n/a (1 seed)"
    return f"[{_num(d['lo'])}, {_num(d['hi'])}]"


def _significant(d: dict) -> bool:
    return d["lo"] is not None and (d["lo"] > 0 or d["hi"] < 0)


def print_report(sim: Simulation, console) -> None:
    """The metrics per policy (means over seeds) and each policy's paired difference with the first."""
    from rich.table import Table

    console.print(f"[bold]scenario {sim.scenario.name}[/bold]: {sim.scenario.horizon_days} days, "
                  f"{len(sim.seeds)} seed(s), {sim.scenario.shards} shard(s); {sim.calibration.text()}")
    base = sim.labels[0]
    table = Table(title="Long-term metrics (mean over seeds); differences paired by seed, 95 % t intervals")
    table.add_column("metric", justify="left")
    for lab in sim.labels:
        table.add_column(lab, justify="right")
    for lab in sim.labels[1:]:
        table.add_column(f"{lab} - {base}", justify="right")
        table.add_column("95 % CI", justify="right")
    means = {lab: sim.mean_metrics(lab) for lab in sim.labels}
    for key, (title, higher) in METRICS.items():
        row = [title] + [_num(means[lab][key]) for lab in sim.labels]
        for lab in sim.labels[1:]:
            d = sim.differences[lab][key]
            better = (d["mean"] > 0) == higher
            style = ("green" if better else "red") if _significant(d) else ""
            row += [f"[{style}]{_num(d['mean'])}[/{style}]" if style else _num(d["mean"]), _ci(d)]
        table.add_row(*row)
    console.print(table)
    t = sim.timing()
    console.print(f"{t['sessions']:,} sessions, {t['requests']:,} engine requests in {t['wall_s']:.1f} s "
                  f"({t['mode']}); time in the engine {100 * t['engine_share']:.0f} % of the tasks' time")


def plot(sim: Simulation, path: str | Path) -> Path:
    """One PNG: every series over time, a line per policy (mean over seeds), a band from the
    lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = (len(PLOTS) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    days = np.arange(1, sim.scenario.horizon_days + 1)
    for ax, (key, title, ylabel) in zip(axes.flat, PLOTS):
        for lab in sim.labels:
            per_seed = np.array([r.series[key] for r in sim.runs[lab]])
            line, = ax.plot(days, per_seed.mean(axis=0), label=lab, linewidth=1.6)
            if len(per_seed) > 1:
                ax.fill_between(days, per_seed.min(axis=0), per_seed.max(axis=0), color=line.get_color(), alpha=0.15)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("day")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(PLOTS):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{sim.scenario.name}: {len(sim.seeds)} seed(s), mean and seed range", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_html(sim: Simulation, path: str | Path, png_name: str) -> Path:
    """A self-contained page (the PNG beside it): the calibration, the table, the plot."""
    e = html.escape
    base = sim.labels[0]
    means = {lab: sim.mean_metrics(lab) for lab in sim.labels}
    head = "".join(f"<th>{e(lab)}</th>" for lab in sim.labels)
    head += "".join(f"<th>{e(lab)} &minus; {e(base)}</th><th>95 % CI</th>" for lab in sim.labels[1:])
    rows = []
    for key, (title, higher) in METRICS.items():
        cells = "".join(f"<td>{_num(means[lab][key])}</td>" for lab in sim.labels)
        for lab in sim.labels[1:]:
            d = sim.differences[lab][key]
            cls = ("better" if (d["mean"] > 0) == higher else "worse") if _significant(d) else ""
            cells += f"<td class='{cls}'>{_num(d['mean'])}</td><td>{e(_ci(d))}</td>"
        rows.append(f"<tr><th>{e(title)}</th>{cells}</tr>")
    t = sim.timing()
    policies = "".join(f"<li><b>{e(lab)}</b>: {e(src)} (sha256 {e(dig[:12])})</li>"
                       for lab, src, dig in zip(sim.labels, sim.sources, sim.digests))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>simulation: {e(sim.scenario.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} th:first-child{{text-align:left}}
.better{{color:#070;font-weight:bold}} .worse{{color:#a00;font-weight:bold}}</style></head><body>
<h1>Simulation: {e(sim.scenario.name)}</h1>
<p>{e(sim.scenario.description)}</p>
<p>{sim.scenario.horizon_days} days, seeds {e(", ".join(map(str, sim.seeds)))}, {sim.scenario.shards} shard(s);
policies on common random numbers (the same users, items and noise under every policy).</p>
<p><b>Calibration</b>: {e(sim.calibration.text())}.</p>
<ul>{policies}</ul>
<h2>Metrics</h2>
<p>Means over seeds; differences are paired by seed (B &minus; A per seed), with a 95 % t interval over seeds.
Green / red: the interval excludes 0, in the better / worse direction.</p>
<table><tr><th>metric</th>{head}</tr>{"".join(rows)}</table>
<h2>Over time</h2>
<p>Lines: the mean over seeds; bands: the lowest to the highest seed.</p>
<img src="{e(png_name)}" alt="metrics over time" style="max-width:100%">
<p>{t['sessions']:,} sessions, {t['requests']:,} engine requests in {t['wall_s']:.1f} s ({e(t['mode'])}).</p>
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def write_report(sim: Simulation, out_dir: str | Path) -> list[Path]:
    """simulation.png, report.html and simulation.json in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot(sim, out / "simulation.png")
    page = write_html(sim, out / "report.html", png.name)
    js = out / "simulation.json"
    js.write_text(json.dumps(sim.to_json(), indent=2) + "\n", encoding="utf-8")
    return [png, page, js]
