"""Greedy mode's bound is a function of the request and its budget, not of how fast the process
got to it: the heavy worker (nice +10) on a loaded machine can spend the whole 10 ms budget on
the greedy before the bound is computed, and the bound's steps used to be decided by the time
left then (one clocked step instead of the planned ones), so the heavy and the in-thread lane
answered the same request with different bounds (tests/test_heavy_process.py, at byte ~1081:
`diagnostics.bound`). A slow fake clock plays the loaded process here."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

from engine import portfolio
from server import convert
from server._gen.reranker.v1 import reranker_pb2 as pb
from tests.test_heavy_process import _greedy  # the heavy lane test's request: the flake this file pins down

#: every perf_counter reading this much past the one before: the greedy "takes" longer than the
#: whole 10 ms budget of home_feed, as it did in the loaded heavy worker
SLOW_TICK_S = 4e-3


def _slow_clock(monkeypatch, tick_s: float = SLOW_TICK_S) -> None:
    real = time.perf_counter
    ticks = itertools.count()
    monkeypatch.setattr(portfolio.time, "perf_counter", lambda: real() + tick_s * next(ticks))


def _clock_free(engine, req: pb.RerankRequest) -> tuple[bytes, pb.Diagnostics]:
    resp = convert.encode_result(engine.rerank(convert.decode_request(req, None)))
    resp.diagnostics.ClearField("elapsed_us")
    return resp.SerializeToString(deterministic=True), resp.diagnostics


@pytest.mark.parametrize("n,k,explain", [(3000, None, True), (3000, None, False), (1000, 5, False)])
def test_a_slow_process_answers_a_greedy_request_with_the_same_bytes(engine, monkeypatch, n, k, explain):
    """The requests of test_heavy_process's heavy-vs-thread comparison: on the old code the slow
    run's bound was the one-step bound (4.418... instead of 4.234... for the first)."""
    req = _greedy(n, explain=explain, k=k)
    fast, fast_diag = _clock_free(engine, req)
    _slow_clock(monkeypatch)
    slow, slow_diag = _clock_free(engine, req)
    assert (slow_diag.bound, slow_diag.bound_method) == (fast_diag.bound, fast_diag.bound_method)
    assert slow == fast
    assert fast_diag.bound_method == "lagrangian" and fast_diag.budget_ms == 10.0


def test_the_greedy_bound_is_planned_from_the_budget_not_the_time_left(monkeypatch):
    """Random problems of every family, several budgets over GREEDY_PLAN_MIN_LEFT_S: a slow
    clock with the budget spent (deadline already past) gives the bound of a fast run."""
    from benchmarks.bench_certify import family_problem

    rng = np.random.default_rng(20261203)
    cases = []
    for family in ("caps", "spacing", "mixed"):
        for _ in range(4):
            n, L = int(rng.integers(30, 400)), int(rng.integers(3, 15))
            budget_s = float(rng.choice([0.0031, 0.01, 0.05]))
            cases.append((family_problem(int(rng.integers(1 << 30)), n, L, family), budget_s))
    fast = [portfolio.solve(p, mode="greedy", deadline=time.perf_counter() + b, budget_s=b)
            for p, b in cases]
    _slow_clock(monkeypatch)
    for (p, b), f in zip(cases, fast, strict=True):
        s = portfolio.solve(p, mode="greedy", deadline=time.perf_counter() - 1.0, budget_s=b)
        assert (s.bound, s.bound_method, s.status) == (f.bound, f.bound_method, f.status)
        assert np.array_equal(s.result.slate, f.result.slate) and s.objective == f.objective
        assert math.isnan(s.bound) or s.bound >= s.objective


def test_a_short_budget_still_leaves_the_steps_to_the_clock(monkeypatch):
    """At GREEDY_PLAN_MIN_LEFT_S or less of budget the clock decides, as in the other modes: with
    the time gone, one step (never the planned ones, which could run past a tight deadline)."""
    from benchmarks.bench_certify import family_problem
    from solvers.bound import linear_objective, slate_bound

    p = family_problem(3, 200, 10, "spacing")  # its bound improves with each of 8 steps
    planned = portfolio.solve(p, mode="greedy", deadline=time.perf_counter() + 1.0, budget_s=0.01)
    _slow_clock(monkeypatch)
    short = portfolio.solve(p, mode="greedy", deadline=time.perf_counter() - 1.0,
                            budget_s=portfolio.GREEDY_PLAN_MIN_LEFT_S)
    one = slate_bound(p, relaxed=short.result.relaxed, incumbent=linear_objective(p, short.evaluation),
                      steps=1)
    assert short.bound == max(one.value, short.objective)
    assert planned.bound < short.bound  # the planned steps were tighter: the clock did decide
