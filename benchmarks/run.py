"""Run every benchmark, print tables, save JSON results under benchmarks/results/.

    make bench                      # full run (a few minutes)
    python -m benchmarks.run --quick  # smoke run (seconds)
    python -m benchmarks.run --only greedy grpc
"""

from __future__ import annotations

import argparse
import importlib

from rich.console import Console

from benchmarks.common import markdown_table, print_table, save

SUITES = ["greedy", "grpc", "exact", "budget", "diversity", "exposure", "ledger", "rerank_ledger"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--only", nargs="*", choices=SUITES, help="run only these suites")
    args = parser.parse_args(argv)
    console = Console()
    for name in args.only or SUITES:
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
        except ImportError as e:  # a suite whose solver is not built yet
            console.print(f"[yellow]skipping {name}: {e}[/yellow]")
            continue
        console.rule(name)
        result = module.run(quick=args.quick)
        rows, meta = (result["rows"], result.get("meta", {})) if isinstance(result, dict) else (result, {})
        columns = getattr(module, "COLUMNS", [(k, k) for k in rows[0]] if rows else [])
        print_table(name, rows, columns)
        path = save(name, rows, {**meta, "quick": args.quick})
        console.print(markdown_table(rows, columns), soft_wrap=True)
        console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
