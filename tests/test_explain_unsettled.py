"""An explained answer whose conflict search could not settle the greedy's relaxations says so.

With `explain`, the greedy's conflict relaxations are settled by a conflict search that runs on
the time left before the deadline (engine.portfolio.search_conflicts): given the time it finds
the minimal conflict, and the relaxed rule's reason names it; without it, the reason used to be
the greedy's own ("gave way at position ...") with nothing saying that a slower process (a heavy
worker at nice +10, a loaded machine) or a larger budget would have answered otherwise. The
reason now says why it is not settled. A slow fake clock plays the slow process."""

from __future__ import annotations

import time

import pytest

from engine import portfolio
from engine.report import unsettled_note
from engine.types import RerankRequest
from tests.test_bound_budget import _slow_clock
from tests.test_engine import cap_against_window

GAVE_WAY = ("'cap' (at most 2 of one category) gave way at position 3: no remaining candidate could "
            "satisfy it together with 'spacing'")
SETTLED = "relaxed: 'cap' (at most 2 of one category) cannot hold for these candidates"


@pytest.fixture(scope="module")
def conflicted():
    """test_engine's cap against a window: the greedy relaxes the cap, the search settles it."""
    return cap_against_window()


def _cap(eng, c, **kw):
    r = eng.rerank(RerankRequest("p", c, solver="greedy", **kw))
    return r, r.constraints[0]


def test_with_time_the_search_settles_the_conflict_and_adds_nothing(conflicted):
    eng, c = conflicted
    r, cap = _cap(eng, c, explain=True, budget_ms=5000)
    assert cap.reason == SETTLED and [x.rules for x in r.conflicts] == [["cap"]]
    _r, cap = _cap(eng, c)  # not asked to explain: no search, the greedy's words, no note
    assert cap.reason == GAVE_WAY


def test_a_slow_process_says_the_search_had_no_time(conflicted, monkeypatch):
    eng, c = conflicted
    _slow_clock(monkeypatch)  # every reading 4 ms past the one before: the 10 ms budget is gone
    r, cap = _cap(eng, c, explain=True, budget_ms=10)
    assert r.conflicts == []
    assert cap.reason == GAVE_WAY + unsettled_note(portfolio.UNSETTLED_NO_TIME)
    assert cap.reason.endswith(" (whether the rules truly conflict is not settled: the conflict search "
                               "was not run: too little of the budget was left; a larger budget_ms "
                               "may settle it)")
    _r, cap = _cap(eng, c, budget_ms=10)  # not asked to explain: as before, no note
    assert cap.reason == GAVE_WAY


@pytest.mark.parametrize("raised,why", [
    ("timeout", portfolio.UNSETTLED_TIMEOUT), ("error", portfolio.UNSETTLED_FAILED)])
def test_a_search_that_ran_out_of_time_or_failed_says_so(conflicted, monkeypatch, raised, why):
    import solvers.exact

    def find_conflict(problem, *, time_limit_s):
        assert time_limit_s > 1.0  # the time left of the 5 s budget
        if raised == "timeout":
            raise solvers.exact.ConflictSearchTimeout("out of time", None)
        raise RuntimeError("boom")

    monkeypatch.setattr(solvers.exact, "find_conflict", find_conflict)
    eng, c = conflicted
    r, cap = _cap(eng, c, explain=True, budget_ms=5000)
    assert r.conflicts == [] and cap.reason == GAVE_WAY + unsettled_note(why)


def test_search_conflicts_says_why_and_explain_conflicts_stays_a_list(monkeypatch):
    """After an exact timeout the search is not run (test_exact); search_conflicts says why,
    explain_conflicts answers the same list as before."""
    import solvers.exact
    from tests.test_exact import INFEASIBLE

    p = INFEASIBLE[0].problem()
    far = time.perf_counter() + 60.0
    out = portfolio.solve(p, mode="greedy", deadline=far)
    monkeypatch.setattr(solvers.exact, "find_conflict", lambda *a, **k: [0])
    assert portfolio.search_conflicts(p, out, deadline=far) == ([[0]], "")
    assert portfolio.search_conflicts(p, out, deadline=time.perf_counter()) == ([], portfolio.UNSETTLED_NO_TIME)
    out.exact_status = "timeout"
    assert portfolio.search_conflicts(p, out, deadline=far) == ([], portfolio.UNSETTLED_EXACT_TIMEOUT)
    assert portfolio.explain_conflicts(p, out, deadline=far) == []
    ok = portfolio.solve(p, mode="greedy", deadline=far)
    ok.result.relaxed[:] = False  # nothing relaxed: nothing to settle
    assert portfolio.search_conflicts(p, ok, deadline=time.perf_counter()) == ([], "")
