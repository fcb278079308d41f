"""Shared benchmark helpers: timing, tables, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).parent / "results"


def time_calls(fn, repeat: int, warmup: int = 3) -> np.ndarray:
    """Wall time of `repeat` calls of fn(), in microseconds (one measurement per call)."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeat)
    for r in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        out[r] = (time.perf_counter_ns() - t0) / 1000.0
    return out


def machine() -> dict:
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}


def save(name: str, rows: list[dict], meta: dict | None = None) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "machine": machine(), "meta": meta or {}, "rows": rows}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for _, header in columns:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*[_fmt(row.get(key)) for key, _ in columns])
    Console().print(table)


def run_part(prefix: str, name: str, parts: dict, quick: bool, meta: dict | None = None) -> list[dict]:
    """Run one part of a multi-part benchmark (`parts[name] = (function(quick) -> rows, columns)`):
    a rule, the table, results saved as `<prefix>_<name>.json`, the markdown table."""
    from rich.console import Console

    console = Console()
    fn, columns = parts[name]
    console.rule(f"{prefix.replace('_', ' ')}: {name}")
    rows = fn(quick)
    print_table(f"{prefix.replace('_', ' ')}: {name}", rows, columns)
    console.print(save(f"{prefix}_{name}", rows, {"quick": quick, **(meta or {})}))
    console.print(markdown_table(rows, columns), soft_wrap=True)
    return rows


def parts_main(doc: str | None, run_one, parts: dict, quick_help: str = "smoke run") -> None:
    """The command line of a multi-part benchmark: `[--quick] [--only PART ...]`, each part run by
    `run_one(name, quick)` (usually `run_part` with the benchmark's prefix)."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--only", nargs="*", choices=list(parts))
    args = parser.parse_args()
    for name in args.only or parts:
        run_one(name, args.quick)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---:" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def bench_main(name: str, title: str, run, columns: list[tuple[str, str]], doc: str | None) -> list[dict]:
    """The command line of one benchmark module: `--quick`, run, print a table, save the JSON
    results under benchmarks/results/<name>.json and print the table as markdown."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or title).splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    rows = run(args.quick)
    print_table(title, rows, columns)
    print(save(name, rows, {"quick": args.quick}))
    print(markdown_table(rows, columns))
    return rows
