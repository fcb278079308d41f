"""Certified gaps: how good the bound on each answer is, and what it costs.

Parts (each prints a table and writes benchmarks/results/certify_<part>.json):

- greedy: bench_exact's families (caps, spacing, mixed) at N=1000, K=20, seeded instances. For
  the greedy slate: the certified gap of the new bound (solvers.bound.slate_bound: the
  Lagrangian of the linear rules, as the portfolio computes it) and of the old sort bound,
  against the true gap to the proven optimum (solvers.exact.solve_mip, 20 s limit). Certified
  gap = (bound - greedy objective) / bound; true gap = (optimum - greedy objective) / optimum.
  Time of the bound (median of 15 calls per instance) beside the greedy's own time measured the
  same way in the same run (the baseline: the sort bound comes free with the greedy).
- nonlinear: the mixed family plus a non-linear term the exact solver does not model: DPP
  diversity (clustered 16-d embeddings, weight 0.3), coverage of categories in the top 10 (0.5
  per value) or calibration of categories (weight 1.0). Certified gap of the greedy answer with
  the new bound against the old sort bound (relative where both bound and objective are > 0).
- budget: share of answers proven optimal by the engine's portfolio (auto mode) within a 10 ms
  and a 20 ms budget, by family, N=1000, K=20, with today's bound (the Lagrangian) against the
  sort bound it replaces (same code, the bound swapped back), and the time past the budget.
- coverage: the mixed family plus coverage of categories in the top 10 (0.5 per value), N=1000,
  K=20: share proven optimal by the portfolio (auto mode) within a 10 ms and a 20 ms budget now
  that the MIP models coverage, against the previous code (exact solve skipped for coverage:
  `exact_unsupported` swapped back to refuse it, so the greedy answer and its bound stand),
  interleaved per seed; the time past the budget; and the MIP alone (solve_mip, greedy hint,
  20 s limit): its solve time p50 / p90 and how often it proves the optimum. The mixed family
  without the coverage row, run the same way, is the same-run reference.
- steps: greedy mode's bound plans its subgradient steps from the problem's size
  (engine.portfolio.planned_steps), not from a clock. Per family and size (N x K): the measured
  time of the first step and of each further one against the cost model's, the steps planned,
  and the greedy-mode bound's time and certified gap, planned against clocked (the previous
  code: one step timed, then as many as its time says fit), interleaved in the same run.

    python -m benchmarks.bench_certify [--quick] [--only greedy nonlinear budget coverage steps]
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from benchmarks.bench_exact import MIXES, family_parts
from benchmarks.common import parts_main, run_part, time_calls
from engine import portfolio
from solvers.bound import SlateBound, linear_objective, slate_bound
from solvers.codes import CALIBRATION, COVERAGE, DIV_DPP
from solvers.evaluate import evaluate, objective_upper_bound_unconstrained
from solvers.greedy import solve_greedy_with_bound, warmup
from testing.instances import build, dcg


def family_problem(seed: int, n: int, k: int, mix: str, extra: str = ""):
    """bench_exact.bench_problem's instance (same random draws), plus an optional non-linear
    term: "dpp", "coverage" or "calibration"."""
    import dataclasses

    u, L, columns, rules, n_values = family_parts(seed, n, k, mix)
    cat, n_cat = columns[0], n_values[0]
    if extra == "coverage":
        rules.append(dict(kind=COVERAGE, attr=0, top=min(10, L), hard=False, penalty=0.5))
    if extra == "calibration":
        share = np.bincount(cat, minlength=n_cat) / n
        rules.append(dict(kind=CALIBRATION, attr=0, top=None, hard=False, penalty=1.0,
                          target=share.tolist()))
    p = build(u, dcg(L), columns, rules, n_values=n_values)
    if extra == "dpp":
        erng = np.random.default_rng([seed, 99])
        centres = erng.normal(size=(n_cat, 16))
        emb = (centres[cat] + 0.5 * erng.normal(size=(n, 16))).astype(np.float32)
        p = dataclasses.replace(p, embeddings=emb, div_mode=DIV_DPP, div_weight=0.3)
    return p


def _q(x, q):
    return float(np.percentile(x, q)) if len(x) else None


# ---------------------------------------------------------------------------------------------

def part_greedy(quick: bool) -> list[dict]:
    from solvers.exact import solve_mip

    warmup()
    seeds = range(5 if quick else 30)
    rows, every = [], {"cert": [], "sort": [], "true": [], "us": [], "greedy_us": []}
    for mix in MIXES:
        cert, sortg, true, us, gus, steps = [], [], [], [], [], []
        for seed in seeds:
            p = family_problem(seed, 1000, 20, mix)
            g, sb = solve_greedy_with_bound(p)
            obj = evaluate(p, g.slate).objective
            b = slate_bound(p, relaxed=g.relaxed, incumbent=obj, steps=portfolio.BOUND_STEPS,
                            sort_bound=sb)
            us.append(float(np.median(time_calls(
                lambda: slate_bound(p, relaxed=g.relaxed, incumbent=obj,
                                    steps=portfolio.BOUND_STEPS, sort_bound=sb), 15))))
            gus.append(float(np.median(time_calls(lambda: solve_greedy_with_bound(p), 15))))
            r = solve_mip(p, time_limit_s=20.0, hint=g.slate)
            if r.status != "optimal":
                continue  # counted out: no proven optimum to compare with
            opt = evaluate(p, r.slate).objective
            assert b.value >= opt - 1e-9 * abs(opt), (mix, seed, b.value, opt)  # validity
            cert.append(max(0.0, b.value - obj) / b.value)
            sortg.append(max(0.0, sb - obj) / sb)
            true.append(max(0.0, opt - obj) / opt)
            steps.append(b.steps)
        for key, val in (("cert", cert), ("sort", sortg), ("true", true), ("us", us),
                         ("greedy_us", gus)):
            every[key] += val
        rows.append(_greedy_row(mix, cert, sortg, true, us, gus, steps))
    rows.append(_greedy_row("all", every["cert"], every["sort"], every["true"], every["us"],
                            every["greedy_us"], []))
    return rows


def _greedy_row(name, cert, sortg, true, us, gus, steps) -> dict:
    cert, sortg, true = np.array(cert), np.array(sortg), np.array(true)
    return dict(
        family=name, instances=int(cert.size),
        cert_le_1pct=float(np.mean(cert <= 0.01)), cert_p50_pct=100 * _q(cert, 50),
        cert_p90_pct=100 * _q(cert, 90), cert_max_pct=100 * float(cert.max()),
        true_p50_pct=100 * _q(true, 50), true_max_pct=100 * float(true.max()),
        cert_minus_true_max_pct=100 * float((cert - true).max()),
        sort_le_1pct=float(np.mean(sortg <= 0.01)), sort_p50_pct=100 * _q(sortg, 50),
        sort_max_pct=100 * float(sortg.max()),
        bound_us_p50=_q(us, 50), bound_us_p95=_q(us, 95), greedy_us_p50=_q(gus, 50),
        bound_over_greedy=_q(us, 50) / _q(gus, 50),
        steps_p50=_q(steps, 50) if steps else None, steps_max=max(steps) if steps else None)


GREEDY_COLUMNS = [
    ("family", "family"), ("instances", "n"), ("cert_le_1pct", "cert <= 1 %"),
    ("cert_p50_pct", "cert p50 %"), ("cert_p90_pct", "cert p90 %"), ("cert_max_pct", "cert max %"),
    ("true_p50_pct", "true p50 %"), ("true_max_pct", "true max %"),
    ("cert_minus_true_max_pct", "cert - true max %"),
    ("sort_le_1pct", "sort <= 1 %"), ("sort_p50_pct", "sort p50 %"), ("sort_max_pct", "sort max %"),
    ("bound_us_p50", "bound us p50"), ("bound_us_p95", "bound us p95"),
    ("greedy_us_p50", "greedy us p50"), ("bound_over_greedy", "bound / greedy"),
    ("steps_p50", "steps p50"), ("steps_max", "steps max"),
]


# ---------------------------------------------------------------------------------------------

def part_nonlinear(quick: bool) -> list[dict]:
    from engine.report import gap, gap_kind

    warmup()
    seeds = range(5 if quick else 30)
    rows = []
    for extra in ("dpp", "coverage", "calibration"):
        new, old, kinds, us = [], [], [], []
        for seed in seeds:
            p = family_problem(seed, 1000, 20, "mixed", extra)
            g, sb = solve_greedy_with_bound(p)
            ev = evaluate(p, g.slate)
            obj, lin = ev.objective, linear_objective(p, ev)
            b = slate_bound(p, relaxed=g.relaxed, incumbent=lin, steps=portfolio.BOUND_STEPS,
                            sort_bound=sb)
            us.append(float(np.median(time_calls(
                lambda: slate_bound(p, relaxed=g.relaxed, incumbent=lin,
                                    steps=portfolio.BOUND_STEPS, sort_bound=sb), 9))))
            kinds.append(gap_kind(obj, b.value) == "relative" and gap_kind(obj, sb) == "relative")
            new.append(gap(obj, b.value))
            old.append(gap(obj, sb))
        rel = np.array(kinds)
        new, old = np.array(new)[rel], np.array(old)[rel]
        rows.append(dict(term=extra, instances=len(kinds), relative=int(rel.sum()),
                         new_p50_pct=100 * _q(new, 50), new_p90_pct=100 * _q(new, 90),
                         new_max_pct=100 * float(new.max()) if new.size else None,
                         old_p50_pct=100 * _q(old, 50), old_p90_pct=100 * _q(old, 90),
                         old_max_pct=100 * float(old.max()) if old.size else None,
                         new_le_1pct=float(np.mean(new <= 0.01)) if new.size else None,
                         old_le_1pct=float(np.mean(old <= 0.01)) if old.size else None,
                         bound_us_p50=_q(us, 50)))
    return rows


NONLINEAR_COLUMNS = [
    ("term", "term"), ("instances", "n"), ("relative", "relative gaps"),
    ("new_p50_pct", "new p50 %"), ("new_p90_pct", "new p90 %"), ("new_max_pct", "new max %"),
    ("old_p50_pct", "sort p50 %"), ("old_p90_pct", "sort p90 %"), ("old_max_pct", "sort max %"),
    ("new_le_1pct", "new <= 1 %"), ("old_le_1pct", "sort <= 1 %"), ("bound_us_p50", "bound us p50"),
]


# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def sort_bound_only():
    """The portfolio with its greedy-answer bound swapped back to the sort bound (the baseline)."""
    def sort_only(problem, *, relaxed=None, incumbent=-math.inf, steps=0, mu=None,
                  sort_bound=None) -> SlateBound:
        sb = objective_upper_bound_unconstrained(problem) if sort_bound is None else sort_bound
        return SlateBound(sb, "sort", sb, math.nan)

    saved = portfolio.slate_bound
    portfolio.slate_bound = sort_only
    try:
        yield
    finally:
        portfolio.slate_bound = saved


def part_budget(quick: bool) -> list[dict]:
    warmup()
    portfolio.warmup()
    seeds = range(6 if quick else 30)
    rows = []
    for mix in MIXES:
        for budget_ms in (10, 20):
            row = dict(family=mix, budget_ms=budget_ms, runs=len(seeds))
            for name, ctx in (("new", contextlib.nullcontext), ("sort", sort_bound_only)):
                proven, over, by_bound = 0, [], 0
                with ctx():
                    for seed in seeds:
                        p = family_problem(seed, 1000, 20, mix)
                        t0 = time.perf_counter()
                        out = portfolio.solve(p, mode="auto", deadline=t0 + budget_ms / 1000.0)
                        over.append((time.perf_counter() - t0) * 1000.0 - budget_ms)
                        proven += out.status == "optimal"
                        by_bound += out.status == "optimal" and "solve_exact" not in out.elapsed_us
                row[f"{name}_proven"] = proven / len(seeds)
                row[f"{name}_by_bound"] = by_bound / len(seeds)
                row[f"{name}_over_max_ms"] = float(np.max(over))
                row[f"{name}_over_p50_ms"] = float(np.median(over))
            rows.append(row)
    return rows


@contextlib.contextmanager
def coverage_skipped():
    """The portfolio as before the MIP modelled coverage: the exact solve skipped (the baseline)."""
    saved = portfolio.exact_unsupported

    def old(problem):
        if np.any(problem.constraints.kind == COVERAGE):
            return "coverage / calibration rows (the previous code)"
        return saved(problem)

    portfolio.exact_unsupported = old
    try:
        yield
    finally:
        portfolio.exact_unsupported = saved


def part_coverage(quick: bool) -> list[dict]:
    from solvers.exact import solve_mip

    warmup()
    portfolio.warmup()
    seeds = range(6 if quick else 30)
    rows = []
    # the mixed family without the coverage row is the same-run reference (both variants run
    # the same code there: their difference is noise)
    for extra in ("coverage", ""):
        problems = [family_problem(seed, 1000, 20, "mixed", extra) for seed in seeds]
        mip_ms, mip_proven, greedy_opt = [], 0, 0
        for p in problems:
            g, _ = solve_greedy_with_bound(p)
            t0 = time.perf_counter()
            r = solve_mip(p, time_limit_s=20.0, hint=g.slate)
            mip_ms.append((time.perf_counter() - t0) * 1000.0)
            mip_proven += r.status == "optimal"
            greedy_opt += r.status == "optimal" and \
                evaluate(p, g.slate).objective >= evaluate(p, r.slate).objective - 1e-9
        for budget_ms in (10, 20):
            row = dict(family="mixed+coverage" if extra else "mixed (reference)",
                       budget_ms=budget_ms, runs=len(problems))
            stats = {name: dict(proven=0, over=[], exact=[]) for name in ("mip", "old")}
            for p in problems:  # the two variants interleaved, so load drift hits both alike
                for name, ctx in (("mip", contextlib.nullcontext), ("old", coverage_skipped)):
                    with ctx():
                        t0 = time.perf_counter()
                        out = portfolio.solve(p, mode="auto", deadline=t0 + budget_ms / 1000.0)
                        stats[name]["over"].append((time.perf_counter() - t0) * 1000.0 - budget_ms)
                    stats[name]["proven"] += out.status == "optimal"
                    stats[name]["exact"].append(out.exact_status)
            for name, st in stats.items():
                row[f"{name}_proven"] = st["proven"] / len(problems)
                row[f"{name}_over_p50_ms"] = float(np.median(st["over"]))
                row[f"{name}_over_max_ms"] = float(np.max(st["over"]))
            row["mip_exact_optimal"] = stats["mip"]["exact"].count("optimal") / len(problems)
            row.update(mip_alone_ms_p50=_q(mip_ms, 50), mip_alone_ms_p90=_q(mip_ms, 90),
                       mip_alone_proven=mip_proven / len(problems),
                       greedy_was_optimal=greedy_opt / len(problems))
            rows.append(row)
    return rows


COVERAGE_COLUMNS = [
    ("family", "family"), ("budget_ms", "budget ms"), ("runs", "runs"),
    ("mip_proven", "proven (MIP models coverage)"), ("mip_exact_optimal", "exact status optimal"),
    ("old_proven", "proven (previous: no MIP)"),
    ("mip_over_p50_ms", "past budget p50 ms (MIP)"),
    ("mip_over_max_ms", "past budget max ms (MIP)"),
    ("old_over_max_ms", "past budget max ms (previous)"),
    ("mip_alone_ms_p50", "MIP alone ms p50"), ("mip_alone_ms_p90", "MIP alone ms p90"),
    ("mip_alone_proven", "MIP alone proven"), ("greedy_was_optimal", "greedy already optimal"),
]


BUDGET_COLUMNS = [
    ("family", "family"), ("budget_ms", "budget ms"), ("runs", "runs"),
    ("new_proven", "proven (new bound)"), ("new_by_bound", "of which by the bound alone"),
    ("sort_proven", "proven (sort bound)"), ("sort_by_bound", "of which by the sort bound"),
    ("new_over_p50_ms", "past budget p50 ms (new)"), ("new_over_max_ms", "past budget max ms (new)"),
    ("sort_over_max_ms", "past budget max ms (sort)"),
]

def part_steps(quick: bool) -> list[dict]:
    from solvers.bound import bounded_rows, multiplier_size

    warmup()
    sizes = ((1000, 20), (3000, 10)) if quick else ((200, 10), (1000, 10), (1000, 20), (3000, 10),
                                                   (3000, 20), (1000, 50))
    seeds = range(2 if quick else 5)
    rows = []
    for mix in MIXES:
        for n, k in sizes:
            first, step, model, planned_us, clocked_us, pcert, ccert, nplan = [], [], [], [], [], [], [], []
            for seed in seeds:
                p = family_problem(seed, n, k, mix)
                g, sb = solve_greedy_with_bound(p)
                ev = evaluate(p, g.slate)
                inc = linear_objective(p, ev)

                def run(steps, p=p, g=g, sb=sb):  # no early stop: the incumbent is -inf
                    mu = np.zeros(multiplier_size(p, bounded_rows(p, g.relaxed)))
                    return slate_bound(p, relaxed=g.relaxed, incumbent=-math.inf, steps=steps,
                                       mu=mu, sort_bound=sb)

                t1 = float(np.median(time_calls(lambda: run(1), 9)))
                t9 = float(np.median(time_calls(lambda: run(9), 9)))
                first.append(t1)
                step.append((t9 - t1) / 8)
                L = p.length
                model.append(max(portfolio.STEP_NS_NL * n * L, portfolio.STEP_NS_NLL * n * L * L) / 1e3
                             + portfolio.FIRST_STEP_S * 1e6)  # the first step's model
                nplan.append(portfolio.planned_steps(n, L, portfolio.BOUND_STEPS_SHORT, portfolio.BOUND_MAX_S))
                args = (p, g.relaxed, inc, sb, portfolio.BOUND_STEPS_SHORT, portfolio.BOUND_MAX_S)
                for planned, us, cert in ((True, planned_us, pcert), (False, clocked_us, ccert)):
                    b = portfolio._greedy_bound(*args, greedy_mode=True, planned=planned)
                    us.append(float(np.median(time_calls(
                        lambda planned=planned: portfolio._greedy_bound(*args, greedy_mode=True,
                                                                        planned=planned), 9))))
                    cert.append(max(0.0, b.value - ev.objective) / abs(b.value))
            rows.append(dict(
                family=mix, n=n, k=k, first_step_us=float(np.median(first)),
                step_us=float(np.median(step)), model_step_us=float(np.median(model)),
                first_over_model=float(np.median(first) / np.median(model)),
                planned_steps=int(np.median(nplan)),
                planned_us_p50=float(np.median(planned_us)), clocked_us_p50=float(np.median(clocked_us)),
                planned_cert_p50_pct=100 * float(np.median(pcert)),
                clocked_cert_p50_pct=100 * float(np.median(ccert))))
    return rows


STEPS_COLUMNS = [
    ("family", "family"), ("n", "N"), ("k", "K"), ("first_step_us", "first step us"),
    ("step_us", "next step us"), ("model_step_us", "model first step us"),
    ("first_over_model", "first / model"), ("planned_steps", "steps planned"),
    ("planned_us_p50", "bound us p50 (planned)"), ("clocked_us_p50", "bound us p50 (clocked)"),
    ("planned_cert_p50_pct", "cert gap % p50 (planned)"),
    ("clocked_cert_p50_pct", "cert gap % p50 (clocked)"),
]

PARTS = {"greedy": (part_greedy, GREEDY_COLUMNS), "nonlinear": (part_nonlinear, NONLINEAR_COLUMNS),
         "budget": (part_budget, BUDGET_COLUMNS), "coverage": (part_coverage, COVERAGE_COLUMNS),
         "steps": (part_steps, STEPS_COLUMNS)}


def main() -> None:
    parts_main(__doc__, lambda name, quick: run_part("certify", name, PARTS, quick), PARTS)


if __name__ == "__main__":
    main()
