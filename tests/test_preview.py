"""offline.preview and `reranker preview`: a proposed policy against the live one on the same
logged requests, with paired bootstrap CIs checked against a slow loop bootstrap; a policy
against itself changes nothing; a tighter cap moves exposure; bad input refused before work."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.decide import decide
from engine.decision_log import from_table, read_log
from engine.validate import Limits
from offline.estimators import CHUNK
from offline.evaluate import logged_outcomes, off_policy, slate_log
from offline.policies import version_from_text
from offline.preview import Delta, ExposureChange, PreviewError, metric_line, preview, share_line
from offline.replay import LOGGED, ReplayError, replay
from server.cli import main
from testing.engines import engine_with, policy
from testing.logs import simulate_clicks, synthetic_log
from tests import naive_estimators as naive

CAP = {"name": "cap_cat", "type": "max_count", "attribute": "category", "max": 1}
LIVE = """name: home
version: "1"
slate_size: 3
objective: {weights: {p_click: 1.0}}
constraints:
  - {name: cap_cat, type: max_count, attribute: category, max: 1}
"""
PROPOSED = LIVE.replace('version: "1"', 'version: "2"').replace(
    "{weights: {p_click: 1.0}}", "{weights: {p_click: 1.0, relevance: 0.5}}")
CAPPED = LIVE.replace('version: "1"', 'version: "3"') + \
    "  - {name: cap_top, type: max_count, attribute: seller_tier, value: top, max: 1}\n"


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """300 requests of 20 candidates served by an epsilon-greedy policy (K=3), with clicks."""
    folder = tmp_path_factory.mktemp("log")
    eng = engine_with(policy(name="explore", slate_size=3, constraints=[CAP],
                             exploration={"scheme": "epsilon", "epsilon": 0.5, "top_m": 4}))
    synthetic_log(folder, eng, "explore", 300, candidates_per_request=20, rows_per_group=100)
    simulate_clicks(folder, seed=7)
    return folder


def _slates(version, records) -> list[list[int]]:
    return [[it.index for it in decide(version, rec.request(), limits=Limits()).result.items] for rec in records]


def _quantiles(x) -> tuple[float, float]:
    lo, hi = np.quantile(np.asarray(x, dtype=np.float64), [0.025, 0.975])
    return float(lo), float(hi)


def test_paired_delta_cis_match_a_slow_loop_bootstrap(log, tmp_path):
    n, B, seed = 60, 40, 3
    live, prop = version_from_text(LIVE), version_from_text(PROPOSED)
    pv = preview(log, live, prop, sample=n, outcomes=log / "outcomes", n_bootstrap=B, seed=seed)
    assert pv.records == n and pv.sample == "the first 60 of 300 records"
    records = from_table(read_log(log))[:n]
    w = 1.0 / np.log2(np.arange(3) + 2.0)
    s_live, s_prop = _slates(live, records), _slates(prop, records)
    v_live = [float(rec.candidates.scores["p_click"][s] @ w[:len(s)]) for rec, s in zip(records, s_live)]
    v_prop = [float(rec.candidates.scores["p_click"][s] @ w[:len(s)]) for rec, s in zip(records, s_prop)]

    def exposure(slates, value):  # per record: (exposure of seller_tier == value, all exposure)
        out = []
        for rec, s in zip(records, slates):
            a = rec.candidates.attributes["seller_tier"]
            tiers = [a.dictionary[a.codes[i]] for i in s]
            out.append((sum(w[k] for k, t in enumerate(tiers) if t == value), float(w[:len(s)].sum())))
        return out

    tier = pv.exposure["seller_tier"][0]
    e_live, e_prop = exposure(s_live, tier.value), exposure(s_prop, tier.value)
    changed = [a != b for a, b in zip(s_live, s_prop)]
    # the values themselves
    d = next(m for m in pv.metrics if m.name == "expected_p_click")
    assert d.live == pytest.approx(np.mean(v_live), rel=1e-12) and d.proposed == pytest.approx(np.mean(v_prop), rel=1e-12)
    assert pv.changed.delta == pytest.approx(np.mean(changed), abs=1e-12)
    share = lambda e, rows: sum(e[i][0] for i in rows) / sum(e[i][1] for i in rows)  # noqa: E731
    assert tier.change.live == pytest.approx(share(e_live, range(n)), rel=1e-12)
    # the loop bootstrap: the same resamples (tests/naive_estimators.draws), each recomputed
    resamples = naive.draws(n, B, seed, CHUNK)
    metric = [np.mean([v_prop[i] for i in r]) - np.mean([v_live[i] for i in r]) for r in resamples]
    rel = [(np.mean([v_prop[i] for i in r]) - np.mean([v_live[i] for i in r])) / np.mean([v_live[i] for i in r])
           for r in resamples]
    shares = [share(e_prop, r) - share(e_live, r) for r in resamples]
    changes = [np.mean([changed[i] for i in r]) for r in resamples]
    assert (d.low, d.high) == pytest.approx(_quantiles(metric), abs=1e-12)
    assert (d.rel_low, d.rel_high) == pytest.approx(_quantiles(rel), abs=1e-12)
    assert (tier.change.low, tier.change.high) == pytest.approx(_quantiles(shares), abs=1e-12)
    assert (pv.changed.low, pv.changed.high) == pytest.approx(_quantiles(changes), abs=1e-12)
    # off-policy: the same resamples for both policies, the estimator recomputed on each
    snips = next(e for e in pv.off_policy if e.name == "snips")
    sub = replay(_first(log, n, tmp_path), [live, prop])
    by = sub.policies
    lo = logged_outcomes(sub.source, log / "outcomes", sub.by_label()[LOGGED])
    log_l, log_p = slate_log(lo, by[1]), slate_log(lo, by[2])
    assert snips.live == pytest.approx(naive.value(log_l, "snips"), rel=1e-12)
    loop = [naive.value(log_p, "snips", r) - naive.value(log_l, "snips", r) for r in resamples]
    assert (snips.low, snips.high) == pytest.approx(_quantiles(loop), abs=1e-12)
    assert snips.low < snips.delta < snips.high
    # every estimator's values are offline.evaluate's
    ope = off_policy(sub, log / "outcomes", n_bootstrap=0)
    assert {e.name for e in pv.off_policy} == set(ope.estimates[by[1].label])
    for e in pv.off_policy:
        assert e.live == pytest.approx(ope.estimates[by[1].label][e.name].value, rel=1e-12, abs=1e-15)
        assert e.proposed == pytest.approx(ope.estimates[by[2].label][e.name].value, rel=1e-12, abs=1e-15)


def _first(log, n: int, folder) -> str:
    """The first n records of the log as one file (as preview's sample=n reads them)."""
    path = str(folder / "first.parquet")
    pq.write_table(read_log(log).slice(0, n), path)
    return path


def test_a_policy_against_itself_changes_nothing(log):
    pv = preview(log, version_from_text(LIVE), version_from_text(LIVE), outcomes=log / "outcomes",
                 n_bootstrap=50)
    assert pv.records == 300 and pv.sample == "all records"
    assert pv.changed.delta == 0 and (pv.changed.low, pv.changed.high) == (0, 0)
    assert pv.lines[0] == "0.0 % of 300 slates change (95 % CI 0.0 to 0.0 %)"
    for d in pv.metrics + pv.off_policy:
        assert d.delta == 0, d
        if not math.isnan(d.low):
            assert d.low == d.high == 0, d
    assert len(pv.off_policy) >= 4
    assert all(not changes for changes in pv.exposure.values())
    assert all(r["live_relaxed"] == r["proposed_relaxed"] for r in pv.rules.values())


def test_a_tighter_cap_lowers_the_capped_values_share(log):
    pv = preview(log, version_from_text(LIVE), version_from_text(CAPPED), n_bootstrap=200)
    top = next(c for c in pv.exposure["seller_tier"] if c.value == "top")
    assert top.change.delta < 0 and top.change.high < 0 and top.change.significant
    assert top.change.live > 1 / 3 >= top.change.proposed - 1e-12  # at most 1 of 3 positions now
    # every tier is listed (3 values), and the share changes add up to 0
    assert sum(c.change.delta for c in pv.exposure["seller_tier"]) == pytest.approx(0.0, abs=1e-12)
    line = share_line(top)
    assert line in pv.lines and line.startswith(
        f"seller_tier 'top' exposure share {100 * top.change.live:.1f} % -> {100 * top.change.proposed:.1f} % "
        f"({100 * top.change.delta:+.1f} points, 95 % CI {100 * top.change.low:+.1f} to ")
    assert pv.off_policy == [] and pv.outcome is None


def test_plain_language_lines():
    new = ExposureChange("seller_tier", "new", Delta("new", 0.041, 0.098, 0.057, 0.051, 0.063))
    assert share_line(new) == "seller_tier 'new' exposure share 4.1 % -> 9.8 % (+5.7 points, 95 % CI +5.1 to +6.3)"
    d = Delta("expected_p_purchase", 0.5, 0.496, -0.004, -0.006, -0.002, -0.008, -0.012, -0.004)
    assert metric_line(d) == "expected p_purchase -0.8 % (0.5 -> 0.496; 95 % CI -1.2 to -0.4 %)"
    assert metric_line(d, "purchases per slate (snips estimate)").startswith("purchases per slate (snips estimate) -0.8 %")
    small = ExposureChange("seller", "s45", Delta("s45", 0.0201, 0.0205, 0.0004, 0.0001, 0.0007))
    assert share_line(small) == "seller 's45' exposure share 2.010 % -> 2.050 % (+0.040 points, 95 % CI +0.010 to +0.070)"
    tenth = Delta("expected_p_click", 6.395, 6.383, -0.012, -0.013, -0.011, -0.0019, -0.0021, -0.0017)
    assert metric_line(tenth) == "expected p_click -0.19 % (6.395 -> 6.383; 95 % CI -0.21 to -0.17 %)"
    no_ci = Delta("expected_p_click", 0.0, 0.2, 0.2, math.nan, math.nan)
    assert metric_line(no_ci) == "expected p_click 0 -> 0.2 (+0.2)"


def test_bad_options_and_logs_are_refused_before_any_work(log):
    live = version_from_text(LIVE)
    with pytest.raises(PreviewError, match=r"sample: must be an integer >= 1 \(the first N records\), got 0"):
        preview(log, live, live, sample=0)
    with pytest.raises(PreviewError, match="n_bootstrap: must be 0 .* got 1"):
        preview(log, live, live, n_bootstrap=1)
    colours = version_from_text(LIVE.replace("attribute: category", "attribute: colour"))
    with pytest.raises(ReplayError, match=r"policy 'home' needs candidates.attributes\['colour'\]"):
        preview(log, live, colours)


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_cli_end_to_end(log, tmp_path, capsys):
    policies = tmp_path / "policies"
    policies.mkdir()
    _write(policies / "home.yaml", LIVE)
    proposed = _write(tmp_path / "home_new.yaml", CAPPED)
    code = main(["preview", "--live", "home", "--policies", str(policies), "--proposed", proposed,
                 "--log", str(log), "--sample", "120", "--bootstrap", "100", "--json",
                 "--report", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert data["records"] == 120 and data["sample"] == "the first 120 of 300 records"
    assert data["live"]["policy"] == data["proposed"]["policy"] == "home"
    assert data["live"]["digest"] != data["proposed"]["digest"]
    assert data["outcome"] == "clicks" and data["off_policy"]  # LOG/outcomes found
    assert next(m for m in data["metrics"] if m["name"] == "coverage")["low"] is None  # NaN: no CI
    top = next(c for c in data["exposure"]["seller_tier"] if c["value"] == "top")
    assert top["high"] < 0
    assert (tmp_path / "out" / "preview.json").exists()
    md = (tmp_path / "out" / "preview.md").read_text()
    assert data["lines"][0] in md and "## exposure share by seller_tier" in md
    # the same with a file for --live, as tables
    code = main(["preview", "--live", str(policies / "home.yaml"), "--proposed", proposed,
                 "--log", str(log), "--sample", "50", "--bootstrap", "20"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "of 50 slates change" in captured.out and "seller_tier 'top' exposure share" in captured.out
    assert "direct metrics (paired bootstrap CIs of the delta)" in captured.out


def test_cli_refuses_a_bad_proposed_policy_with_its_line_and_runs_nothing(log, tmp_path, capsys):
    bad = _write(tmp_path / "bad.yaml", LIVE.replace("max: 1}", "max: -2}"))
    code = main(["preview", "--live", _write(tmp_path / "live.yaml", LIVE), "--proposed", bad,
                 "--log", str(tmp_path / "no-such-log")])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "the proposed policy is invalid, nothing was previewed" in captured.err
    assert "bad.yaml" in captured.err and "line 6" in captured.err and "constraints[0].max" in captured.err
    # an unknown live name lists the names the folder has
    policies = tmp_path / "p"
    policies.mkdir()
    _write(policies / "home.yaml", LIVE)
    code = main(["preview", "--live", "homepage", "--policies", str(policies),
                 "--proposed", _write(tmp_path / "ok.yaml", CAPPED), "--log", str(log)])
    assert code == 2 and "no valid policy of that name in" in capsys.readouterr().err
    # a log the proposed policy cannot run on: named, exit 1
    colours = _write(tmp_path / "colours.yaml", LIVE.replace("attribute: category", "attribute: colour"))
    code = main(["preview", "--live", str(policies / "home.yaml"), "--proposed", colours, "--log", str(log)])
    err = capsys.readouterr().err
    assert code == 1 and "needs candidates.attributes['colour']" in err


def test_a_seeded_random_sample_is_reproducible_and_in_log_order(tmp_path):
    from offline.preview import _sample_records
    from engine.decision_log import read_log
    from testing.engines import engine_with, policy
    from testing.logs import synthetic_log

    folder = tmp_path / "log"
    synthetic_log(folder, engine_with(policy(name="p", slate_size=3)), "p", 60, candidates_per_request=10)
    ids = read_log(folder).column("request_id").to_pylist()
    def sampled(name: str, seed: int) -> list[str]:
        (tmp_path / name).mkdir()
        return read_log(_sample_records(folder, 20, str(tmp_path / name), seed)).column("request_id").to_pylist()

    a, b, c = sampled("a", 7), sampled("b", 7), sampled("c", 8)
    assert a == b != c and len(set(a)) == 20
    assert a == [i for i in ids if i in set(a)]  # log order kept
    assert a != ids[:20]


def test_rule_costs_are_reported_when_asked(log):
    pv = preview(log, version_from_text(LIVE), version_from_text(CAPPED), n_bootstrap=0, sample=60,
                 rule_costs=True)
    costs = {r: (v["live_cost"], v["proposed_cost"]) for r, v in pv.rules.items() if "live_cost" in v}
    assert set(costs) >= {"cap_cat", "cap_top"}
    assert costs["cap_cat"][0] >= 0 and costs["cap_cat"][1] >= 0
    assert math.isnan(costs["cap_top"][0]) and costs["cap_top"][1] >= 0  # the live policy has no cap_top
    plain = preview(log, version_from_text(LIVE), version_from_text(CAPPED), n_bootstrap=0, sample=60)
    assert not any("live_cost" in v for v in plain.rules.values())
