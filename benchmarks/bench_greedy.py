"""In-process greedy latency against the argpartition floor and a plain-Python greedy.

Rules active in every instance: max 3 per category, at least 3 'new'-tier items in the top 10
(with look-ahead), at most 1 item per seller in any 3 consecutive positions.

    python -m benchmarks.bench_greedy [--quick]
"""

from __future__ import annotations


import numpy as np

from benchmarks.baselines import python_greedy, python_greedy_fullscan, topk_argpartition
from benchmarks.common import bench_main, time_calls
from solvers.evaluate import evaluate
from solvers.greedy import solve_greedy, warmup
from solvers.codes import ALL_VALUES, MAX_COUNT, MIN_COUNT, WINDOW
from testing.random_problems import make_problem

COLUMNS = [("n", "N"), ("k", "K"), ("floor_us", "argpartition top-K µs"),
           ("greedy_us", "greedy µs"), ("greedy_p99_us", "greedy p99 µs"),
           ("python_us", "Python sorted-scan µs"), ("fullscan_us", "Python full-scan µs"),
           ("greedy_over_floor", "greedy / floor"), ("python_over_greedy", "sorted-scan / greedy"),
           ("fullscan_over_greedy", "full-scan / greedy"), ("same_slate", "same slate")]


def instance(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    utility = rng.gamma(2.0, 1.0, size=n) * rng.uniform(0.5, 1.0, size=n)
    category = rng.integers(0, 20, size=n)
    tier = (rng.random(n) < 0.05).astype(np.int64)  # 1 = new seller
    seller = rng.integers(0, 50, size=n)
    codes = np.ascontiguousarray(np.stack([category, tier, seller]).astype(np.int64))
    L = min(k, n)
    pw = 1.0 / np.log2(np.arange(2, L + 2))
    base = dict(top=L, size=0, hard=True, penalty=0.0, priority=0, item=-1, position=-1)
    rows = [
        {**base, "kind": MAX_COUNT, "attr": 0, "value": ALL_VALUES, "bound": 3},
        {**base, "kind": MIN_COUNT, "attr": 1, "value": 1, "bound": 3, "top": min(10, L)},
        {**base, "kind": WINDOW, "attr": 2, "value": ALL_VALUES, "bound": 1, "size": 3},
    ]
    return make_problem(utility, pw, codes, np.array([20, 2, 50]), rows)


def run(quick: bool = False) -> list[dict]:
    warmup()
    out = []
    for n in (100, 1000, 5000):
        for k in (10, 50):
            problem = instance(n, k)
            u, codes = problem.utility, problem.codes
            reps = 200 if quick else 2000
            floor = time_calls(lambda: topk_argpartition(u, k), reps)
            greedy = time_calls(lambda: solve_greedy(problem), reps)
            args = (u, codes[0], 3, codes[1], 1, 3, min(10, problem.length), codes[2], 3, 1, k)
            py = time_calls(lambda: python_greedy(*args), 5 if quick else 30, warmup=1)
            full = time_calls(lambda: python_greedy_fullscan(*args), 3 if quick else 7, warmup=0)
            ours = solve_greedy(problem)
            theirs = python_greedy(*args)
            row = dict(n=n, k=k, floor_us=float(np.median(floor)), greedy_us=float(np.median(greedy)),
                       greedy_p99_us=float(np.percentile(greedy, 99)), python_us=float(np.median(py)),
                       fullscan_us=float(np.median(full)),
                       same_slate=ours.slate.tolist() == theirs == python_greedy_fullscan(*args),
                       objective=evaluate(problem, ours.slate).objective,
                       relaxed=int(ours.relaxed.sum()))
            row["greedy_over_floor"] = row["greedy_us"] / row["floor_us"]
            row["python_over_greedy"] = row["python_us"] / row["greedy_us"]
            row["fullscan_over_greedy"] = row["fullscan_us"] / row["greedy_us"]
            out.append(row)
    return out


def main() -> None:
    bench_main("greedy", "In-process greedy (medians)", run, COLUMNS, __doc__)


if __name__ == "__main__":
    main()
