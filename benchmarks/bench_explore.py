"""Exploration sampling against the deterministic greedy on the same problem (issue 11 target:
at most 3x the greedy at N=1000, K=20, home_feed-like rules).

The instance is bench_greedy's (at most 3 per category, at least 3 new-seller items in the top
10 with look-ahead, at most 1 item per seller in any 3 consecutive positions). Every setting of
the RESULTS table is timed: epsilon over the top 10 and the top 50, softmax (T=0.5) over the
top 10 and the top 50, and softmax over every feasible candidate at T = 0.1, 0.5 and 2. In each
round the greedy and every setting are called once, in an order rotated from round to round (so
no setting always runs right after another), each draw with a new seed; the medians over the
rounds are compared with the greedy's of the same run (the "greedy" row, ratio 1).

    python -m benchmarks.bench_explore [--quick]
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.bench_greedy import instance
from benchmarks.common import bench_main
from solvers.explore import EXPLORE_EPSILON, EXPLORE_SOFTMAX, sample_slate
from solvers.explore import warmup as explore_warmup
from solvers.greedy import solve_greedy, warmup

COLUMNS = [("n", "N"), ("k", "K"), ("setting", "exploration"), ("greedy_us", "greedy µs"),
           ("explore_us", "median µs"), ("explore_p99_us", "p99 µs"),
           ("ratio", "median / greedy"), ("mean_support", "mean support"),
           ("mean_log_joint", "mean log joint")]

SETTINGS = [("epsilon 0.1, top 10", dict(scheme=EXPLORE_EPSILON, epsilon=0.1, top_m=10)),
            ("epsilon 0.3, top 50", dict(scheme=EXPLORE_EPSILON, epsilon=0.3, top_m=50)),
            ("softmax T=0.5, top 10", dict(scheme=EXPLORE_SOFTMAX, temperature=0.5, top_m=10)),
            ("softmax T=0.5, top 50", dict(scheme=EXPLORE_SOFTMAX, temperature=0.5, top_m=50)),
            ("softmax T=0.1, all", dict(scheme=EXPLORE_SOFTMAX, temperature=0.1)),
            ("softmax T=0.5, all", dict(scheme=EXPLORE_SOFTMAX, temperature=0.5)),
            ("softmax T=2, all", dict(scheme=EXPLORE_SOFTMAX, temperature=2.0))]
GREEDY = "greedy"


def _timed(fn) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1000.0


def run(quick: bool = False) -> list[dict]:
    warmup()
    explore_warmup()
    out = []
    for n, k in ((1000, 20), (1000, 50), (5000, 20)):
        if quick and (n, k) != (1000, 20):
            continue
        problem = instance(n, k)
        rounds = 300 if quick else 3000
        calls = [(GREEDY, lambda seed: solve_greedy(problem))]
        calls += [(name, lambda seed, kw=kw: sample_slate(problem, seed=seed, **kw))
                  for name, kw in SETTINGS]
        times = {name: np.empty(rounds) for name, _ in calls}
        for seed in range(5):  # warm caches
            for _, fn in calls:
                fn(seed)
        for r in range(rounds):
            shift = r % len(calls)
            for name, fn in calls[shift:] + calls[:shift]:
                times[name][r] = _timed(lambda: fn(r))
        g = float(np.median(times[GREEDY]))
        out.append(dict(n=n, k=k, setting=GREEDY, greedy_us=g, explore_us=g,
                        explore_p99_us=float(np.percentile(times[GREEDY], 99)), ratio=1.0,
                        mean_support=1.0, mean_log_joint=0.0))
        for name, kw in SETTINGS:
            draws = [sample_slate(problem, seed=10**6 + s, **kw) for s in range(50)]
            med = float(np.median(times[name]))
            out.append(dict(n=n, k=k, setting=name, greedy_us=g, explore_us=med,
                            explore_p99_us=float(np.percentile(times[name], 99)),
                            ratio=med / g,
                            mean_support=float(np.mean([d.support.mean() for d in draws])),
                            mean_log_joint=float(np.mean([d.log_joint for d in draws]))))
    return out


def main() -> None:
    bench_main("explore", "Exploration sampling vs greedy (medians, rotated rounds)", run, COLUMNS,
               __doc__)


if __name__ == "__main__":
    main()
