"""Exploration sampling against the deterministic greedy on the same problem (issue 11 target:
at most 3x the greedy at N=1000, K=20, home_feed-like rules).

The instance is bench_greedy's (at most 3 per category, at least 3 new-seller items in the top
10 with look-ahead, at most 1 item per seller in any 3 consecutive positions). The calls are
interleaved (greedy, epsilon, softmax, greedy, ...) in one process, each with a new seed, and the
medians compared.

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
           ("explore_us", "sample_slate µs"), ("explore_p99_us", "sample_slate p99 µs"),
           ("ratio", "sample / greedy"), ("mean_support", "mean support"),
           ("mean_log_joint", "mean log joint")]

SETTINGS = [("epsilon 0.1, top 10", dict(scheme=EXPLORE_EPSILON, epsilon=0.1, top_m=10)),
            ("epsilon 0.3, top 50", dict(scheme=EXPLORE_EPSILON, epsilon=0.3, top_m=50)),
            ("softmax T=0.1", dict(scheme=EXPLORE_SOFTMAX, temperature=0.1)),
            ("softmax T=0.5", dict(scheme=EXPLORE_SOFTMAX, temperature=0.5)),
            ("softmax T=2", dict(scheme=EXPLORE_SOFTMAX, temperature=2.0)),
            ("softmax T=0.5, top 10", dict(scheme=EXPLORE_SOFTMAX, temperature=0.5, top_m=10)),
            ("softmax T=0.5, top 50", dict(scheme=EXPLORE_SOFTMAX, temperature=0.5, top_m=50))]


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
        reps = 300 if quick else 3000
        times = {name: [] for name, _ in SETTINGS}
        greedy = []
        support, log_joint = {name: [] for name, _ in SETTINGS}, {name: [] for name, _ in SETTINGS}
        for seed in range(5):  # warm caches
            solve_greedy(problem)
            for _, kw in SETTINGS:
                sample_slate(problem, seed=seed, **kw)
        for rep in range(reps):
            greedy.append(_timed(lambda: solve_greedy(problem)))
            for name, kw in SETTINGS:
                times[name].append(_timed(lambda: sample_slate(problem, seed=rep, **kw)))
        for rep in range(50):
            for name, kw in SETTINGS:
                r = sample_slate(problem, seed=10**6 + rep, **kw)
                support[name].append(float(r.support.mean()))
                log_joint[name].append(r.log_joint)
        g = float(np.median(greedy))
        for name, _ in SETTINGS:
            med = float(np.median(times[name]))
            out.append(dict(n=n, k=k, setting=name, greedy_us=g, explore_us=med,
                            explore_p99_us=float(np.percentile(times[name], 99)),
                            ratio=med / g, mean_support=float(np.mean(support[name])),
                            mean_log_joint=float(np.mean(log_joint[name]))))
    return out


def main() -> None:
    bench_main("explore", "Exploration sampling vs greedy (medians, interleaved)", run, COLUMNS,
               __doc__)


if __name__ == "__main__":
    main()
