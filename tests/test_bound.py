"""The answer bound (solvers/bound.py, solvers/_bound_kernels.py): the kernel's dual value against
its slow twin (tests/naive.lagrangian_dual, enumeration of every slate), validity against the
brute-force optimum on random tiny instances with every rule family, diversity, coverage and
calibration, validity and tightness against the MIP oracle, the fallback, and every engine
answer's bound and gap."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from engine import portfolio
from engine.report import gap, gap_kind
from solvers import _bound_kernels as _k
from solvers.bound import bounded_rows, multiplier_size, slate_bound
from solvers.codes import (
    CALIBRATION, COVERAGE, DIV_DPP, DIV_MMR, NO_MATCH,
)
from solvers.evaluate import evaluate, objective_upper_bound_unconstrained
from solvers.greedy import solve_greedy_with_bound
from solvers.problem import ConstraintTable, SlateProblem
from testing.instances import at_least, brute_force, build, cap, dcg, pin, window
from tests.naive import lagrangian_dual


def random_problem(rng: np.random.Generator, *, extras: bool = True) -> SlateProblem:
    """N <= 7, L <= 4, two attributes; a random mix of every rule kind, hard and soft."""
    N = int(rng.integers(3, 8))
    L = int(rng.integers(1, min(N, 4) + 1))
    nv = [int(rng.integers(2, 4)), int(rng.integers(2, 4))]
    codes = [rng.integers(0, nv[0], size=N), rng.integers(0, nv[1], size=N)]
    u = rng.normal(1.0, 1.0, size=N)
    kind = rng.integers(0, 4)
    w = {0: dcg(L), 1: np.ones(L), 2: rng.uniform(-0.5, 1.0, size=L),
         3: np.sort(rng.uniform(0.1, 1.0, size=L))}[int(kind)]  # incl. negative / increasing
    rules = []
    for _ in range(int(rng.integers(1, 5))):
        r = int(rng.integers(0, 8))
        hard = bool(rng.random() < 0.5)
        pen = float(rng.uniform(0.1, 2.0))
        a = int(rng.integers(0, 2))
        top = int(rng.integers(1, L + 1))
        if r == 0:
            rules.append(cap(a, int(rng.integers(1, 3)), top=top, hard=hard, penalty=pen))
        elif r == 1:
            rules.append(cap(a, int(rng.integers(0, 2)), value=int(rng.integers(0, nv[a])),
                             top=top, hard=hard, penalty=pen))
        elif r == 2:
            rules.append(at_least(a, int(rng.integers(0, nv[a])), int(rng.integers(1, top + 1)),
                                  top=top, hard=hard, penalty=pen))
        elif r == 3:
            rules.append(window(a, int(rng.integers(2, 4)), 1, hard=hard, penalty=pen))
        elif r == 4:
            rules.append(pin(int(rng.integers(0, N)), int(rng.integers(0, L)), hard=hard,
                             penalty=pen))
        elif r == 5:
            rules.append(at_least(a, NO_MATCH, 1, top=top, hard=False, penalty=pen))
        elif r == 6 and extras:
            rules.append(dict(kind=COVERAGE, attr=a, top=top, hard=False, penalty=pen))
        elif r == 7 and extras:
            t = rng.dirichlet(np.ones(nv[a]))
            rules.append(dict(kind=CALIBRATION, attr=a, top=top, hard=False, penalty=pen,
                              target=t.tolist()))
    rows = [{**r, "top": L if r.get("top") is None else r["top"]} for r in rules]
    table = ConstraintTable.from_rows(rows, length=L)
    p = SlateProblem(np.ascontiguousarray(u), np.ascontiguousarray(w, dtype=np.float64),
                     np.ascontiguousarray(np.array(codes, dtype=np.int64)),
                     np.array(nv, dtype=np.int64), table, np.ones(table.n, dtype=np.bool_),
                     np.zeros(table.n, dtype=np.int64))
    if extras and rng.random() < 0.4:
        emb = rng.normal(size=(N, 3)).astype(np.float32)
        p = dataclasses.replace(p, embeddings=emb, div_mode=int(rng.choice([DIV_MMR, DIV_DPP])),
                                div_weight=float(rng.uniform(0.1, 1.0)),
                                div_window=int(rng.integers(0, 3)))
    return p


def _kernel(problem, use, mu, steps=0, target=-math.inf):
    t = problem.constraints
    out = np.empty(5)
    _k.lagrangian_bound(problem.utility, problem.position_weight, problem.codes,
                        problem.n_values, t.rules, t.penalty, t.hard, use, target, steps, mu, out)
    return out


@pytest.mark.parametrize("seed", range(100))
def test_kernel_dual_value_equals_enumeration(seed):
    rng = np.random.default_rng(seed)
    p = random_problem(rng)  # coverage rows are in the relaxation; diversity, calibration are not
    t = p.constraints
    use = bounded_rows(p)
    hard_pins = [(int(t.item[c]), int(t.position[c])) for c in range(t.n)
                 if use[c] and t.kind[c] == 3 and t.hard[c]]
    if len(set(i for i, _ in hard_pins)) < len(hard_pins) or len(set(q for _, q in hard_pins)) < len(hard_pins):
        assert _kernel(p, use, np.zeros(0))[3] == _k.BOUND_PIN_CLASH  # no slate meets them
        return
    n = multiplier_size(p, use)
    caps = np.concatenate([np.full(int(multiplier_size(p, use & (np.arange(t.n) == c))),
                                   np.inf if t.hard[c] else t.penalty[c]) for c in range(t.n)]
                          + [np.zeros(0)])
    mu = np.minimum(rng.exponential(0.7, size=n), caps) * (rng.random(n) < 0.7)
    mu = np.ascontiguousarray(mu)
    want = lagrangian_dual(p, use, mu.copy())
    out = _kernel(p, use, mu.copy())
    assert out[3] == _k.BOUND_OK
    assert out[2] == pytest.approx(want, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", range(150))
def test_bound_is_at_least_the_brute_force_optimum(seed):
    rng = np.random.default_rng(1000 + seed)
    p = random_problem(rng)
    t = p.constraints
    relaxed = (rng.random(t.n) < 0.25) & t.hard
    kept = dataclasses.replace(p, active=np.asarray(p.active) & ~relaxed)
    opt, _ = brute_force(kept)
    b = slate_bound(p, relaxed=relaxed, steps=int(rng.integers(0, 30)),
                    incumbent=opt if math.isfinite(opt) and rng.random() < 0.5 else -math.inf)
    if b.method.startswith("sort (fallback"):
        assert "clashing hard pins" in b.method
        assert not math.isfinite(opt) or b.value >= opt - 1e-9 or not math.isfinite(b.value) \
            or b.value >= opt - 1e-9
        return
    assert math.isfinite(b.value)
    if math.isfinite(opt):
        assert b.value >= opt - 1e-9 * max(1.0, abs(opt)), (b, opt)
    w = p.position_weight
    if np.all(w >= 0) and np.all(np.diff(w) <= 0):
        assert b.value <= objective_upper_bound_unconstrained(p) + 1e-12


def test_bound_reaches_the_optimum_when_the_relaxation_is_tight():
    # one hard cap: greedy is optimal, the Lagrangian proves it in a few steps
    rng = np.random.default_rng(5)
    u = rng.gamma(2.0, 1.0, size=40)
    cat = rng.integers(0, 4, size=40)
    p = build(u, dcg(8), [cat], [cap(0, 2), at_least(0, 1, 3, top=5)])
    g, sb = solve_greedy_with_bound(p)
    obj = evaluate(p, g.slate).objective
    b = slate_bound(p, incumbent=obj, steps=60, sort_bound=sb)
    assert b.method == "lagrangian" and b.value < sb
    from solvers.exact import solve_mip

    opt = evaluate(p, solve_mip(p, time_limit_s=10.0, hint=g.slate).slate).objective
    assert opt - 1e-9 <= b.value <= opt * (1 + 1e-6)


def _medium(seed: int, n: int, L: int, soft: bool) -> SlateProblem:
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 8, size=n)
    seller = rng.integers(0, max(8, n // 10), size=n)
    new = (rng.random(n) < 0.2).astype(np.int64)
    u = rng.gamma(2.0, 1.0, size=n) * (1.0 - 0.3 * new)
    order = np.argsort(-u)
    rules = [cap(0, max(2, L // 4), hard=not soft, penalty=0.7), cap(0, 1, top=3),
             window(1, 3, 1, hard=not soft, penalty=0.4),
             at_least(2, 1, max(1, L // 4), top=max(2, L // 2), hard=not soft, penalty=1.5),
             window(0, 4, 2), pin(int(order[L + 2]), 1), pin(int(order[2 * L]), L // 2, hard=False,
                                                              penalty=0.5)]
    return build(u, dcg(L), [cat, seller, new], rules,
                 n_values=[8, max(8, n // 10), 2])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("soft", [False, True])
def test_bound_against_the_mip_oracle(seed, soft):
    from solvers.exact import solve_mip

    p = _medium(seed, [100, 200, 300][seed % 3], [10, 15, 20][seed % 3], soft)
    g, sb = solve_greedy_with_bound(p)
    go = evaluate(p, g.slate).objective
    b = slate_bound(p, relaxed=g.relaxed, incumbent=go, steps=80, sort_bound=sb)
    r = solve_mip(p, time_limit_s=20.0, hint=g.slate)
    assert r.status == "optimal"
    opt = evaluate(p, r.slate).objective
    if not g.relaxed.any():
        assert b.value >= opt - 1e-9 * max(1.0, abs(opt))
        assert b.value <= sb + 1e-12
    assert b.value >= go - 1e-9 * max(1.0, abs(go))


def test_failures_fall_back_to_the_sort_bound_and_say_so():
    # clashing hard pins: two items pinned at one position
    p = build([3.0, 2.0, 1.0], dcg(2), [[0, 1, 0]], [pin(0, 0), pin(1, 0)])
    b = slate_bound(p)
    assert b.method == "sort (fallback: clashing hard pins)"
    assert b.value == objective_upper_bound_unconstrained(p)
    # utilities that overflow the sum: the dual value is not finite
    p = build([1e308, 1e308, 1.0], np.ones(2), [[0, 1, 0]], [cap(0, 1)])
    b = slate_bound(p)
    assert b.method == "sort (fallback: a non-finite value)" and math.isnan(b.lagrangian)


def test_bad_warm_start_is_named():
    p = build([3.0, 2.0, 1.0], dcg(2), [[0, 1, 0]], [cap(0, 1)])
    with pytest.raises(ValueError, match=r"mu: must be a C-contiguous float64 array of length 2, got float64\(5,\)"):
        slate_bound(p, mu=np.zeros(5))
    mu = np.zeros(2)
    slate_bound(p, mu=mu, steps=5)  # a warm start of the right length is used and updated


def test_nonlinear_terms_are_named_and_bounded():
    rng = np.random.default_rng(2)
    p = build(rng.random(6), dcg(3), [[0, 1, 2, 0, 1, 2]],
              [dict(kind=COVERAGE, attr=0, hard=False, penalty=1.0, top=3, bound=0),
               dict(kind=CALIBRATION, attr=0, hard=False, penalty=2.0, top=3, bound=0,
                    target=[0.2, 0.3, 0.5])])
    p = dataclasses.replace(p, embeddings=rng.normal(size=(6, 2)).astype(np.float32),
                            div_mode=DIV_DPP, div_weight=0.5)
    b = slate_bound(p)
    assert b.terms == ("dpp", "coverage", "calibration")
    opt, _ = brute_force(p)
    assert b.value >= opt


# --- the report's gap ---------------------------------------------------------------------------

@pytest.mark.parametrize("objective, bound, kind, value", [
    (9.0, 10.0, "relative", 0.1),
    (10.0, 10.0, "relative", 0.0),
    (0.0, 2.0, "relative", 1.0),
    (-13.998, 9.358, "absolute", 23.356),  # objective of the other sign: no ratio (was 250 %)
    (-5.0, -4.0, "absolute", 1.0),  # bound <= 0
    (-4.0, 0.0, "absolute", 4.0),
    (1.0, math.nan, "", None),
    (1.0, math.inf, "", None),
])
def test_gap_is_relative_only_where_a_ratio_means_something(objective, bound, kind, value):
    assert gap_kind(objective, bound) == kind
    g = gap(objective, bound)
    assert (g is None) if value is None else g == pytest.approx(value)


def test_every_portfolio_answer_carries_a_valid_bound():
    import time

    for seed in range(30):
        rng = np.random.default_rng(500 + seed)
        p = random_problem(rng)
        if np.any(p.position_weight < 0):
            continue  # the greedy's objective model assumes no negative weight is placed first
        for mode in ("greedy", "auto"):
            out = portfolio.solve(p, mode=mode, deadline=time.perf_counter() + 1.0)
            kept = dataclasses.replace(p, active=np.asarray(p.active) & ~out.result.relaxed)
            opt, _ = brute_force(kept)
            assert out.bound >= out.objective - 1e-12
            if math.isfinite(opt):
                assert out.bound >= opt - 1e-9 * max(1.0, abs(opt)), (seed, mode, out.bound, opt)
            assert out.bound_method in ("lagrangian", "sort", "exact") or \
                out.bound_method.startswith("sort (fallback")


def test_engine_reports_gap_kind_and_bound_method():
    from engine.types import RerankRequest
    from testing.engines import candidates, engine_with, policy

    eng = engine_with(policy(slate_size=10, constraints=[
        {"name": "cap", "type": "max_count", "attribute": "category", "max": 2},
        {"name": "new", "type": "min_count", "attribute": "seller_tier", "value": "new", "min": 3,
         "within_top": 6}]))
    r = eng.rerank(RerankRequest("p", candidates(200, seed=3), solver="greedy"))
    assert r.bound_method in ("lagrangian", "sort") and r.gap_kind == "relative"
    assert r.bound >= r.objective
    assert "bound" in r.elapsed_us


def test_policy_can_ask_for_the_free_sort_bound():
    """`solver.bound: sort`: the greedy kernel's sort bound (every rule ignored), valid and
    named; the default Lagrangian bound is never looser on the same request."""
    from engine.types import RerankRequest
    from testing.engines import candidates, engine_with, policy

    rules = [{"name": "cap", "type": "max_count", "attribute": "category", "max": 2},
             {"name": "new", "type": "min_count", "attribute": "seller_tier", "value": "new", "min": 3,
              "within_top": 6}]
    for seed in range(5):
        req = RerankRequest("p", candidates(200, seed=seed), solver="greedy")
        sort = engine_with(policy(constraints=rules, solver={"mode": "greedy", "bound": "sort"})).rerank(req)
        lag = engine_with(policy(constraints=rules, solver={"mode": "greedy"})).rerank(req)
        assert sort.bound_method == "sort" and lag.bound_method == "lagrangian"
        assert [i.item_id for i in sort.items] == [i.item_id for i in lag.items]
        assert sort.objective <= sort.bound + 1e-9 and lag.bound <= sort.bound + 1e-9


def test_bad_bound_setting_is_named():
    from engine.errors import PolicyInvalid
    from engine.policy_loader import parse_policy_text

    text = ("name: p\nversion: '1'\nslate_size: 5\nobjective: {weights: {p_click: 1.0}}\n"
            "solver: {mode: greedy, bound: exact}\n")
    with pytest.raises(PolicyInvalid) as e:
        parse_policy_text(text, "p.yaml")
    msg = str(e.value)
    assert "solver.bound" in msg and "lagrangian" in msg and "sort" in msg


def test_greedy_mode_bound_does_not_depend_on_the_clock(monkeypatch):
    """Greedy mode plans its subgradient steps from the problem's size: the same request gets
    the same bound (the same bytes) in a fast process and in a slow one (a heavy worker at a
    lower priority, a replay on a loaded machine); the clock decides only when the budget runs
    short."""
    import time

    from benchmarks.bench_certify import family_problem

    p = family_problem(3, 200, 10, "spacing")  # its bound improves with each of 8 steps
    fast = portfolio.solve(p, mode="greedy", deadline=time.perf_counter() + 1.0)
    real = time.perf_counter
    ticks = iter(range(10**9))
    # a clock where every reading is 100 us past the one before: every step "takes" 100 us+
    monkeypatch.setattr(portfolio.time, "perf_counter", lambda: real() + 100e-6 * next(ticks))
    slow = portfolio.solve(p, mode="greedy", deadline=real() + 1.0)
    assert slow.bound == fast.bound and slow.bound_method == fast.bound_method == "lagrangian"
    assert slow.objective == fast.objective


def test_planned_steps_fit_the_time_and_stay_in_range():
    assert portfolio.planned_steps(1000, 20, 8, portfolio.BOUND_MAX_S) >= 2
    assert portfolio.planned_steps(200, 10, 8, portfolio.BOUND_MAX_S) == 8  # small: every step
    assert portfolio.planned_steps(5000, 30, 8, portfolio.BOUND_MAX_S) == 1  # at least one
    assert portfolio.planned_steps(1000, 20, 8, 0.0) == 1
    for n, L in ((300, 10), (1000, 20), (3000, 10)):
        k = portfolio.planned_steps(n, L, 8, portfolio.BOUND_MAX_S)
        step = max(portfolio.STEP_NS_NL * n * L, portfolio.STEP_NS_NLL * n * L * L) * 1e-9
        assert k == 1 or portfolio.FIRST_STEP_S + k * step <= portfolio.BOUND_MAX_S + 1e-12
