"""Fairness-of-exposure LP: first compile and re-solve times, Birkhoff-von Neumann decomposition
and sampling, and every installed CVXPY backend on the same LP.

Instances: M candidates with utilities uniform in [0.1, 1], 2 groups drawn at random (each
non-empty), DCG position weights 1 / log2(1 + j), demographic parity within tolerance 0.01.
Two slate shapes per M: K = M (rank every candidate, the paper's setting) and K = min(M, 10)
(a 10-item slate out of M candidates). Target: re-solve at M = 20 <= 5 ms.

Baseline in the same run: the same LP written as matrices by hand and solved by scipy's linprog
(HiGHS) without CVXPY, rebuilt for every request ("direct linprog"). Backend rows (K = M, after
the first five rows) run every installed CVXPY backend on the same instances, interleaved, and
give its re-solve median and its largest objective gap to the chosen backend (CLARABEL, which
appears again there so that its numbers come from the same interleaved run).

    python -m benchmarks.bench_exposure [--quick]
"""

from __future__ import annotations

import argparse
import time

import cvxpy as cp
import numpy as np

from benchmarks.common import markdown_table, print_table, save, time_calls
from solvers.exposure_lp import ExposureLP, birkhoff_von_neumann, sample_ranking
from testing.exposure_reference import reference_lp

CHOSEN = "CLARABEL"
COLUMNS = [("solver", "solver"), ("m", "M"), ("k", "K"), ("first_ms", "build + first solve ms"),
           ("resolve_ms", "re-solve ms"), ("resolve_p90_ms", "re-solve p90 ms"),
           ("in_solver_ms", "in solver ms"), ("linprog_ms", "direct linprog ms"),
           ("linprog_over_resolve", "linprog / re-solve"), ("bvn_ms", "BvN ms"),
           ("components", "BvN components"), ("sample_us", "sample µs"),
           ("objective_gap", "objective gap vs chosen"), ("status", "status")]


def instance(m: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.1, 1.0, m)
    groups = rng.integers(0, 2, m)
    groups[:2] = [0, 1]
    v = 1.0 / np.log2(np.arange(2, k + 2))
    return u, groups, v


def direct_linprog(u, groups, v, tol: float) -> float:
    """The same LP without CVXPY, built as dense matrices per request and solved by scipy's
    linprog (HiGHS): the test suite's independent reference, two groups, demographic parity."""
    return reference_lp(u, groups, v, 2, "demographic_parity", tol)


def measure(m: int, k: int, repeats: int) -> dict:
    """The chosen backend at one shape: compile, re-solves, BvN, sampling, direct baseline."""
    tol = 0.01
    t0 = time.perf_counter()
    lp = ExposureLP(m, k, 2, "demographic_parity", solver=CHOSEN)
    first = lp.solve(*instance(m, k, 0), tol)
    first_ms = (time.perf_counter() - t0) * 1e3
    times, in_solver, results = [], [], []
    for r in range(1, repeats + 1):
        res = lp.solve(*instance(m, k, r), tol)
        times.append(res.solve_ms)
        in_solver.append(lp._problem.solver_stats.solve_time * 1e3)
        results.append(res)
    bvn_ms, comps = [], []
    for res in results[:20]:
        t = time.perf_counter()
        dec = birkhoff_von_neumann(res.P)
        bvn_ms.append((time.perf_counter() - t) * 1e3)
        comps.append(len(dec))
    rng = np.random.default_rng(0)
    sample = time_calls(lambda: sample_ranking(dec, rng), 2000)
    lin = time_calls(lambda: direct_linprog(*instance(m, k, 1), tol), max(3, repeats // 4), warmup=1)
    assert abs(direct_linprog(*instance(m, k, 1), tol) - results[0].objective) < 1e-6
    row = dict(solver=CHOSEN, m=m, k=k, first_ms=first_ms, resolve_ms=float(np.median(times)),
               resolve_p90_ms=float(np.percentile(times, 90)),
               in_solver_ms=float(np.median(in_solver)), linprog_ms=float(np.median(lin)) / 1000.0,
               bvn_ms=float(np.median(bvn_ms)), components=int(np.median(comps)),
               sample_us=float(np.median(sample)), status=first.status)
    row["linprog_over_resolve"] = row["linprog_ms"] / row["resolve_ms"]
    return row


def compare_backends(m: int, solvers: list[str], repeats: int) -> list[dict]:
    """Every backend on the same K = m instances, interleaved (one instance, every backend in
    turn) so that load on the machine affects all of them alike."""
    tol = 0.01
    lps, first_ms = {}, {}
    for solver in solvers:
        t0 = time.perf_counter()
        lps[solver] = ExposureLP(m, m, 2, "demographic_parity", solver=solver)
        lps[solver].solve(*instance(m, m, 0), tol)
        first_ms[solver] = (time.perf_counter() - t0) * 1e3
    times = {s: [] for s in solvers}
    in_solver = {s: [] for s in solvers}
    objective = {s: [] for s in solvers}
    status = {s: set() for s in solvers}
    for r in range(1, repeats + 1):
        data = instance(m, m, r)
        for solver in solvers:
            if solver == "OSQP" and r > max(3, repeats // 10):
                continue  # ~100x slower; a few runs suffice
            res = lps[solver].solve(*data, tol)
            times[solver].append(res.solve_ms)
            st = lps[solver]._problem.solver_stats.solve_time
            in_solver[solver].append(st * 1e3 if st is not None else np.nan)
            objective[solver].append(res.objective)
            status[solver].add(res.status)
    rows = []
    for solver in solvers:
        n = len(objective[solver])
        gap = np.abs(np.array(objective[solver]) - np.array(objective[CHOSEN][:n]))
        gap = gap[np.isfinite(gap)]  # runs without a solution (OSQP user_limit) have no objective
        rows.append(dict(solver=solver, m=m, k=m, first_ms=first_ms[solver],
                         resolve_ms=float(np.median(times[solver])),
                         resolve_p90_ms=float(np.percentile(times[solver], 90)),
                         in_solver_ms=(float(np.nanmedian(in_solver[solver]))
                                       if np.isfinite(in_solver[solver]).any() else None),
                         objective_gap=(f"{np.max(gap):.1e}" if solver != CHOSEN and gap.size
                                        else None),
                         status="/".join(sorted(status[solver]))))
    return rows


def run(quick: bool = False) -> list[dict]:
    repeats = 15 if quick else 60
    rows = []
    for m in (10, 20, 50):
        for k in sorted({m, min(m, 10)}, reverse=True):
            rows.append(measure(m, k, repeats))
    backends = [CHOSEN] + [s for s in ("HIGHS", "GLOP", "SCS", "SCIPY", "OSQP")
                           if s in cp.installed_solvers()]
    for m in (20, 50):
        rows += compare_backends(m, backends, repeats)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = run(args.quick)
    print_table("Fairness-of-exposure LP (medians)", rows, COLUMNS)
    at20 = next(r for r in rows if r["solver"] == CHOSEN and r["m"] == 20 and r["k"] == 20)
    print(f"re-solve at M = K = 20: {at20['resolve_ms']:.2f} ms (target <= 5 ms)")
    print(save("exposure", rows, {"quick": args.quick, "chosen": CHOSEN}))
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
