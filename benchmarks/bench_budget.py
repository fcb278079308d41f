"""The anytime portfolio under a budget: does every answer arrive within budget + 2 ms?

For seeded mixed-rule instances (benchmarks.bench_exact families), the engine's portfolio
(greedy, then the exact MIP warm-started from it, then the best valid slate) is run with a
deadline of now + budget. Reported per (N, K, budget): p50 / p99 / max of the wall time past the
budget (negative = early), the share of answers proven optimal, and how much the portfolio gained
over the greedy slate alone (mean objective gain, %).

    python -m benchmarks.bench_budget [--quick]
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.bench_exact import bench_problem
from benchmarks.common import bench_main
from engine import portfolio
from solvers.evaluate import evaluate
from solvers.greedy import solve_greedy, warmup

COLUMNS = [("n", "N"), ("k", "K"), ("budget_ms", "budget ms"), ("runs", "runs"),
           ("over_p50_ms", "past budget p50 ms"), ("over_p99_ms", "past budget p99 ms"),
           ("over_max_ms", "past budget max ms"), ("optimal_share", "proven optimal"),
           ("gain_pct", "gain over greedy %")]


def run(quick: bool = False) -> list[dict]:
    warmup()
    portfolio.warmup()
    seeds = range(8 if quick else 40)
    rows = []
    for n, k in ((500, 20), (1000, 20), (1000, 50)):
        for budget_ms in (5, 10, 50):
            over, optimal, gains = [], 0, []
            for seed in seeds:
                problem = bench_problem(seed, n, k, "mixed")
                g = evaluate(problem, solve_greedy(problem).slate).objective
                t0 = time.perf_counter()
                out = portfolio.solve(problem, mode="auto", deadline=t0 + budget_ms / 1000.0)
                over.append((time.perf_counter() - t0) * 1000.0 - budget_ms)
                optimal += out.status == "optimal"
                gains.append(100.0 * (out.objective - g) / max(abs(g), 1e-12))
            rows.append(dict(n=n, k=k, budget_ms=budget_ms, runs=len(over),
                             over_p50_ms=float(np.median(over)), over_p99_ms=float(np.percentile(over, 99)),
                             over_max_ms=float(np.max(over)), optimal_share=optimal / len(over),
                             gain_pct=float(np.mean(gains))))
    return rows


def main() -> None:
    bench_main("budget", "Portfolio under a budget", run, COLUMNS, __doc__)


if __name__ == "__main__":
    main()
