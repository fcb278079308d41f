"""offline.pareto: grid sweeps of policy parameters over a log, the frontier, refinement between
frontier neighbours, policy files per point, and bad --vary / --metric named."""

from __future__ import annotations

import pytest

from offline.pareto import ParetoError, dominated, mark_frontier, Metric, Point, pareto, plot, write_points
from offline.policies import load_version
from testing.engines import engine_with, policy
from testing.logs import synthetic_log

BASE = """name: mix
version: "1"
slate_size: 5
objective:
  weights: {p_click: 1.0, p_purchase: 0.0}
constraints:
  - {name: cap_cat, type: max_count, attribute: category, max: 3}
"""


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("log")
    synthetic_log(folder, engine_with(policy(name="logged", slate_size=5)), "logged", 200,
                  candidates_per_request=30, rows_per_group=100)
    return folder


@pytest.fixture
def base(tmp_path):
    f = tmp_path / "mix.yaml"
    f.write_text(BASE)
    return f


def test_the_sweep_trades_clicks_for_purchases_and_marks_the_frontier(log, base, tmp_path):
    sweep = pareto(log, base, vary=["objective.weights.p_purchase=0:4:5", "constraints.cap_cat.max=1:3:3"],
                   metrics=["expected_p_click", "expected_p_purchase"], refine=1)
    grid = [p for p in sweep.points if p.round == 0]
    assert len(grid) == 15 and all(p.error is None for p in grid)
    # the brute-force frontier of every evaluated point
    for p in sweep.points:
        others = [q for q in sweep.points if q is not p]
        assert p.frontier == (not any(dominated(p.metrics, q.metrics, sweep.metrics) for q in others))
    front = sweep.frontier()
    assert len(front) >= 2
    # more purchase weight, more expected purchases and fewer clicks along the frontier
    clicks = [p.metrics["expected_p_click"] for p in front]
    purchases = [p.metrics["expected_p_purchase"] for p in front]
    assert clicks == sorted(clicks, reverse=True) and purchases == sorted(purchases)
    assert purchases[-1] > purchases[0]
    # refinement evaluated midpoints between frontier neighbours; the cap stays an integer
    refined = [p for p in sweep.points if p.round == 1]
    assert refined and all(float(p.values[1]).is_integer() for p in refined)
    # every point is a policy file that loads, with the values set
    files = write_points(sweep, tmp_path / "points")
    assert len(files) == len(sweep.points)
    v = load_version(files[-1])
    assert v.loaded.policy.objective.weights["p_purchase"] == pytest.approx(sweep.points[-1].values[0])
    assert "Pareto point" in files[0].read_text().splitlines()[0]
    assert plot(sweep, tmp_path / "frontier.png").stat().st_size > 0


def test_minimised_metrics_and_shares(log, base):
    sweep = pareto(log, base, vary=["constraints.cap_cat.max=1,2,3"],
                   metrics=["expected_p_click", "share:category=cat0:min"], refine=0)
    assert [m.minimise for m in sweep.metrics] == [False, True]
    by_cap = {p.values[0]: p.metrics for p in sweep.points}
    # a looser cap lets the best category take more of the exposure and gives more clicks
    assert by_cap[3.0]["expected_p_click"] >= by_cap[1.0]["expected_p_click"]


def test_bad_vary_and_metric_are_named(log, base):
    with pytest.raises(ParetoError, match=r"no number at 'diversity.weight'; the numbers it has: slate_size, "
                                          r"objective.weights.p_click, objective.weights.p_purchase, constraints.cap_cat.max"):
        pareto(log, base, vary=["diversity.weight=0:1:5"], metrics=["expected_p_click", "coverage"])
    with pytest.raises(ParetoError, match="expected PATH=LO:HI:N"):
        pareto(log, base, vary=["slate_size"], metrics=["expected_p_click", "coverage"])
    with pytest.raises(ParetoError, match="give 2 or 3 metrics"):
        pareto(log, base, vary=["slate_size=3:5:3"], metrics=["expected_p_click"])
    with pytest.raises(ParetoError, match=r"the replay has no such metric \(it has: coverage"):
        pareto(log, base, vary=["slate_size=3:5:3"], metrics=["expected_p_click", "expected_clicks"])
    # a value the policy language refuses makes that point an error, not the sweep
    sweep = pareto(log, base, vary=["constraints.cap_cat.max=-1,2"], metrics=["expected_p_click", "coverage"],
                   refine=0)
    bad = [p for p in sweep.points if p.error]
    assert len(bad) == 1 and "max" in bad[0].error and not bad[0].frontier


def test_frontier_by_hand():
    ms = [Metric("a"), Metric("b", minimise=True)]
    pts = [Point((0,), {"a": 1, "b": 1}), Point((1,), {"a": 2, "b": 2}), Point((2,), {"a": 1, "b": 2}),
           Point((3,), {"a": 2, "b": 1})]
    mark_frontier(pts, ms)
    assert [p.frontier for p in pts] == [False, False, False, True]


def test_reranker_pareto_prints_the_frontier_and_writes_the_points(log, base, tmp_path, capsys):
    import json

    from server.cli import main

    out_dir = tmp_path / "sweep"
    code = main(["pareto", "--policy", str(base), "--log", str(log), "--vary", "objective.weights.p_purchase=0:4:3",
                 "--metric", "expected_p_click", "--metric", "expected_p_purchase", "--out", str(out_dir),
                 "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "points on the frontier" in text and "frontier" in text
    data = json.loads((out_dir / "pareto.json").read_text())
    assert len(data["points"]) >= 3 and (out_dir / "frontier.png").stat().st_size > 0
    assert sorted(p.name for p in out_dir.glob("point-*.yaml"))[0] == "point-000.yaml"
    code = main(["pareto", "--policy", str(base), "--log", str(log), "--vary", "nope.x=1:2:2",
                 "--metric", "expected_p_click", "--metric", "coverage", "--no-progress"])
    assert code == 1 and "the numbers it has" in capsys.readouterr().err


def test_points_carry_bootstrap_intervals_of_their_metrics(log, base):
    sweep = pareto(log, base, vary=["objective.weights.p_purchase=0,4"],
                   metrics=["expected_p_click", "share:category=cat0", "coverage"], refine=0, n_bootstrap=300)
    for p in sweep.points:
        for name in ("expected_p_click", "share:category=cat0"):
            lo, hi = p.ci[name]
            assert lo <= p.metrics[name] <= hi and hi > lo
        assert "coverage" not in p.ci  # not a mean over records: no interval
    # the share's columns sum to the replay's own share
    from offline.pareto import Metric
    from offline.replay import replay
    from offline.policies import version_from_text

    r = replay(log, [version_from_text(BASE)]).policies[1]
    stats, ratio = Metric("share:category=cat0").columns(r)
    assert ratio and stats[:, 0].sum() / stats[:, 1].sum() == pytest.approx(
        r.exposure_share["category"]["cat0"], rel=1e-12)
