"""The report of a replay: rich tables on a console, JSON for machines, Markdown and HTML with
plots (estimates with CIs per policy; exposure shares and their differences from the log)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from offline.evaluate import OffPolicy
from offline.replay import LOGGED, ReplayReport

#: attribute values shown per attribute in tables and plots (the rest are summed as "other")
TOP_VALUES = 8


def _f(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def to_json(report: ReplayReport, ope: OffPolicy | None = None) -> dict:
    out = report.to_json()
    if ope is not None:
        out["off_policy"] = ope.to_json()
    return out


def metric_rows(report: ReplayReport) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per metric, one column per policy (the log first)."""
    labels = [p.label for p in report.policies]
    names = list(dict.fromkeys(k for p in report.policies for k in p.metrics))
    rows = []
    for name in names:
        rows.append([name] + [_f(p.metrics.get(name)) for p in report.policies])
    rows.append(["failed records"] + [f"{p.failed:,}" for p in report.policies])
    for key in ("p50", "p99"):
        rows.append([f"solve µs {key}"] + [_f(p.solve_us.get(key), 3) for p in report.policies])
    return ["metric"] + labels, rows


def _top(shares: dict[str, float]) -> dict[str, float]:
    items = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    top = dict(items[:TOP_VALUES])
    rest = sum(v for _, v in items[TOP_VALUES:])
    if rest > 0:
        top["(other)"] = rest
    return top


def exposure_rows(report: ReplayReport, attribute: str) -> tuple[list[str], list[list[str]]]:
    base = report.by_label()[LOGGED].exposure_share.get(attribute, {})
    values = list(_top(base))
    for p in report.policies:
        for v in _top(p.exposure_share.get(attribute, {})):
            if v not in values:
                values.append(v)
    rows = []
    for v in values:
        row = [v]
        for p in report.policies:
            s = p.exposure_share.get(attribute, {})
            share = s.get(v, 0.0) if v != "(other)" else _top(s).get("(other)", 0.0)
            logged = base.get(v, 0.0) if v != "(other)" else _top(base).get("(other)", 0.0)
            row.append(_pct(share) if p.label == LOGGED else f"{_pct(share)} ({100 * (share - logged):+.1f})")
        rows.append(row)
    return [f"{attribute} exposure"] + [p.label for p in report.policies], rows


def estimate_rows(ope: OffPolicy) -> tuple[list[str], list[list[str]]]:
    header = ["policy", "estimator", f"{ope.outcome} per slate", "95 % CI", "ESS", "warning"]
    rows = []
    for label, by in ope.estimates.items():
        for name, e in by.items():
            rows.append([label, name, _f(e.value), f"{_f(e.ci_low)} to {_f(e.ci_high)}", f"{e.ess:,.0f}",
                         e.warning or ""])
    return header, rows


def print_report(report: ReplayReport, ope: OffPolicy | None, out: Console) -> None:
    out.print(f"replayed {report.records:,} records of {escape(report.source)} under "
              f"{len(report.policies) - 1} policies ({report.mode}, {report.seconds:.1f} s, "
              f"{report.records * max(len(report.policies) - 1, 1) / max(report.seconds, 1e-9):,.0f} "
              f"decisions/s)")
    header, rows = metric_rows(report)
    t = Table(*header, title="direct metrics (from the logged scores)")
    for r in rows:
        t.add_row(*map(escape, r))
    out.print(t)
    attrs = sorted({a for p in report.policies for a in p.exposure_share})
    for a in attrs:
        header, rows = exposure_rows(report, a)
        t = Table(*header, title=f"exposure share by {a} (points vs the log)")
        for r in rows:
            t.add_row(*map(escape, r))
        out.print(t)
    rules = sorted({r for p in report.policies for r in (*p.relaxation_rate, *p.violation_rate)})
    if rules:
        t = Table("rule", *[p.label for p in report.policies], title="relaxed (hard) / violated (soft) share")
        for r in rules:
            t.add_row(escape(r), *[_pct(p.relaxation_rate.get(r, 0.0) + p.violation_rate.get(r, 0.0))
                                   for p in report.policies])
        out.print(t)
    for p in report.policies:
        for msg, count in p.errors.items():
            out.print(f"{escape(p.label)}: {count:,} record(s) failed: {escape(msg)}", style="yellow")
    if ope is not None:
        header, rows = estimate_rows(ope)
        t = Table(*header, title=f"off-policy estimates ({ope.outcome} per slate; on the log: "
                                 f"{_f(ope.on_policy)})")
        for r in rows:
            t.add_row(*map(escape, r))
        out.print(t)
        for note in ope.notes:
            out.print(f"note: {escape(note)}", style="yellow")


# ------------------------------------------------------------------ files
def _plots(report: ReplayReport, ope: OffPolicy | None) -> dict[str, bytes]:
    """name -> PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    if ope is not None and ope.estimates:
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.35 * sum(len(v) for v in ope.estimates.values())))
        labels, values, lo, hi = [], [], [], []
        for label, by in ope.estimates.items():
            for name, e in by.items():
                labels.append(f"{label} / {name}")
                values.append(e.value)
                lo.append(e.value - e.ci_low if math.isfinite(e.ci_low) else 0.0)
                hi.append(e.ci_high - e.value if math.isfinite(e.ci_high) else 0.0)
        y = range(len(labels))
        ax.errorbar(values, list(y), xerr=[lo, hi], fmt="o", capsize=3)
        ax.axvline(ope.on_policy, color="grey", linestyle="--", label="on the log")
        ax.set_yticks(list(y), labels)
        ax.invert_yaxis()
        ax.set_xlabel(f"{ope.outcome} per slate (95 % bootstrap CI)")
        ax.legend(loc="best")
        fig.tight_layout()
        out["estimates"] = _png(fig)
    for a in sorted({a for p in report.policies for a in p.exposure_share}):
        base = report.by_label()[LOGGED].exposure_share.get(a, {})
        values = list(_top(base))
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(report.policies)
        for j, p in enumerate(report.policies):
            top = _top(p.exposure_share.get(a, {}))
            ax.bar([i + j * width for i in range(len(values))], [100 * top.get(v, 0.0) for v in values],
                   width, label=p.label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(values))], values, rotation=30, ha="right")
        ax.set_ylabel("share of exposure (%)")
        ax.set_title(f"exposure by {a}")
        ax.legend(loc="best")
        fig.tight_layout()
        out[f"exposure_{a}"] = _png(fig)
    return out


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(report: ReplayReport, ope: OffPolicy | None, folder: str | Path) -> dict[str, Path]:
    """report.json, report.md (+ PNG plots beside it) and report.html (plots inline) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = _plots(report, ope)
    for name, png in plots.items():
        (folder / f"{name}.png").write_bytes(png)
    sections: list[tuple[str, list[str], list[list[str]]]] = [("Direct metrics (from the logged scores)",
                                                                *metric_rows(report))]
    for a in sorted({a for p in report.policies for a in p.exposure_share}):
        sections.append((f"Exposure share by {a} (points against the log)", *exposure_rows(report, a)))
    if ope is not None:
        sections.append((f"Off-policy estimates ({ope.outcome} per slate)", *estimate_rows(ope)))
    title = f"Replay of {report.source}"
    intro = (f"{report.records:,} records, {len(report.policies) - 1} policies, {report.mode}, "
             f"{report.seconds:.1f} s.")
    notes = ope.notes if ope is not None else []
    md = [f"# {title}", "", intro, ""] + [f"> {n}" for n in notes] + [""]
    page = [f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    page += [f"<p class=note>{html.escape(n)}</p>" for n in notes]
    for heading, header, rows in sections:
        md += [f"## {heading}", "", _md_table(header, rows), ""]
        page.append(f"<h2>{html.escape(heading)}</h2>{_html_table(header, rows)}")
    for name, png in plots.items():
        md += [f"![{name}]({name}.png)", ""]
        page.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,'
                    f'{base64.b64encode(png).decode()}">')
    style = ("<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}td:first-child{text-align:left}"
             ".note{color:#a60}</style>")
    paths = {"json": folder / "report.json", "md": folder / "report.md", "html": folder / "report.html"}
    paths["json"].write_text(json.dumps(to_json(report, ope), indent=2, default=str) + "\n")
    paths["md"].write_text("\n".join(md))
    paths["html"].write_text(f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}"
                             f"</title>{style}</head><body>{''.join(page)}</body></html>\n")
    return paths
