"""offline.replay and offline.evaluate: replaying a log under policies, the same numbers in
process, on local processes and on a real local Ray, and off-policy estimates that find a known
truth; bad logs and policies refused before any work, naming what is wrong."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.decide import decide
from engine.decision_log import from_table, read_log
from offline.evaluate import check_propensities, off_policy
from offline.policies import version_from_text
from offline.replay import LOGGED, ReplayError, gini, replay
from testing.engines import engine_with, policy
from testing.logs import simulate_clicks, synthetic_log

CAP = {"name": "cap_cat", "type": "max_count", "attribute": "category", "max": 1}
TARGET = """name: target
version: "1"
slate_size: 3
objective: {weights: {p_click: 1.0}}
constraints:
  - {name: cap_cat, type: max_count, attribute: category, max: 1}
"""
SHUFFLED = """name: shuffled
version: "1"
slate_size: 3
objective: {weights: {relevance: 1.0}}
"""
AMORTIZED = """name: fair
version: "1"
slate_size: 3
objective: {weights: {p_click: 1.0}}
exposure:
  amortized:
    - {name: tiers, attribute: seller_tier, gain: 2.0}
"""


@pytest.fixture(scope="module")
def explored_log(tmp_path_factory):
    """600 requests of 20 candidates, served by an epsilon-greedy policy (K=3), with clicks
    drawn from a known click model."""
    folder = tmp_path_factory.mktemp("log")
    eng = engine_with(policy(name="explore", slate_size=3, constraints=[CAP],
                             exploration={"scheme": "epsilon", "epsilon": 0.5, "top_m": 4}))
    synthetic_log(folder, eng, "explore", 600, candidates_per_request=20, rows_per_group=100)
    simulate_clicks(folder, seed=7)
    return folder


def test_replay_reports_direct_metrics_differences_and_exposure(explored_log):
    report = replay(explored_log, [version_from_text(TARGET), version_from_text(SHUFFLED)])
    by = report.by_label()
    assert report.records == 600 and [p.label for p in report.policies] == [LOGGED, "target", "shuffled"]
    target, logged, shuffled = by["target"], by[LOGGED], by["shuffled"]
    assert target.failed == 0 and target.n == 600
    # the target is the logging policy without its exploration: at least as many expected clicks
    assert target.metrics["expected_p_click"] > logged.metrics["expected_p_click"]
    assert shuffled.metrics["expected_relevance"] > target.metrics["expected_relevance"]
    # with epsilon 0.5 over 3 slots, about 1 - (0.5 + 0.5 / 4)^3 ~ 76 % of logged slates differ
    assert 0.6 < target.metrics["differs_share"] < 0.9
    assert target.metrics["mean_displacement"] > 0 and logged.metrics["differs_share"] == 0
    # direct metric = the mean over records of the log2-weighted p_click of the policy's slate
    records = from_table(read_log(explored_log))
    version = version_from_text(TARGET)
    w = 1.0 / np.log2(np.arange(3) + 2.0)
    expected = np.mean([rec.candidates.scores["p_click"][[it.index for it in decide(
        version, rec.request(), limits=__import__("engine.validate").validate.Limits()).result.items]] @ w
        for rec in records])
    assert target.metrics["expected_p_click"] == pytest.approx(expected, rel=1e-12)
    shares = target.exposure_share["category"]
    assert sum(shares.values()) == pytest.approx(1.0) and len(shares) > 1
    assert target.relaxation_rate == {}  # 20 candidates always hold 3 categories
    assert set(target.solve_us) == {"p50", "p90", "p99", "max"}


def test_off_policy_estimates_find_the_known_truth(explored_log):
    report = replay(explored_log, [version_from_text(TARGET)])
    ope = off_policy(report, explored_log / "outcomes", n_bootstrap=400, seed=1)
    truth = report.by_label()["target"].metrics["expected_p_click"]  # clicks follow the scores
    on_policy = ope.on_policy
    for name in ("ips", "rips", "snrips", "dr", "snips"):
        e = ope.estimates["target"][name]
        assert abs(e.value - truth) < 4 * e.se, (name, e.value, truth, e.se)
        assert e.ci_low < e.value < e.ci_high
    # the logging policy's own estimates are its on-policy mean (weights 1)
    assert ope.estimates[LOGGED]["ips"].value == pytest.approx(on_policy, rel=1e-12)
    # and the logged policy's log2-weighted score sum is the truth of its clicks too
    assert abs(on_policy - report.by_label()[LOGGED].metrics["expected_p_click"]) < 4 * ope.estimates[LOGGED]["ips"].se
    assert ope.unmatched_outcomes == 0 and ope.stochastic == 600


def test_in_process_workers_and_ray_give_the_same_numbers(explored_log):
    versions = [version_from_text(TARGET), version_from_text(AMORTIZED)]
    runs = [replay(explored_log, versions),
            replay(explored_log, versions, workers=2),
            replay(explored_log, versions, use_ray=True)]
    assert [r.mode for r in runs] == ["in process", "2 workers", "ray"]
    keyed = [[{**p.to_json(), "solve_us": None, "total_us": None} for p in r.policies] for r in runs]
    assert keyed[0] == keyed[1] == keyed[2]
    # the amortized policy's ledger ran in log order: its boosts moved exposure towards rare tiers
    fair, target = runs[0].by_label()["fair"], runs[0].by_label()["target"]
    assert fair.exposure_share["seller_tier"] != target.exposure_share["seller_tier"]


def test_a_policy_needing_an_unlogged_column_is_named_before_any_work(explored_log):
    needs_brand = TARGET.replace("attribute: category", "attribute: colour").replace("name: target", "name: colours")
    needs_score = SHUFFLED.replace("relevance", "p_return")
    with pytest.raises(ReplayError) as info:
        replay(explored_log, [version_from_text(needs_brand), version_from_text(needs_score)])
    text = str(info.value)
    assert "policy 'colours' needs candidates.attributes['colour'] (constraints[0] 'cap_cat'), which the log " \
           "does not have (it has: availability, brand, category" in text
    assert "policy 'shuffled' needs candidates.scores['p_return'] (objective.weights)" in text


def test_bad_log_files_are_refused_with_file_row_and_column(explored_log, tmp_path):
    table = read_log(explored_log)
    broken = tmp_path / "missing"
    broken.mkdir()
    pq.write_table(table.drop_columns(["slate_index"]), broken / "decisions-0000.parquet")
    with pytest.raises(ReplayError, match=r"decisions-0000.parquet: column 'slate_index' is missing"):
        replay(broken, [version_from_text(TARGET)])
    typed = tmp_path / "typed"
    typed.mkdir()
    i = table.schema.get_field_index("budget_ms")
    pq.write_table(table.set_column(i, "budget_ms", table.column("budget_ms").cast(pa.float32())),
                   typed / "decisions-0000.parquet")
    with pytest.raises(ReplayError, match=r"column 'budget_ms': expected type double, got float"):
        replay(typed, [version_from_text(TARGET)])
    bad = tmp_path / "propensity"
    bad.mkdir()
    joint = table.column("joint").to_numpy(zero_copy_only=False).copy()
    joint[17] = 1.5
    j = table.schema.get_field_index("joint")
    pq.write_table(table.set_column(j, "joint", pa.array(joint)), bad / "decisions-0000.parquet")
    with pytest.raises(ValueError, match=r"decisions-0000.parquet: row 17: column 'joint': a propensity must be "
                                         r"in \(0, 1\], got 1.5"):
        check_propensities(bad)


def test_outcomes_matching_no_logged_request_are_counted(explored_log, tmp_path):
    from engine.decision_log import outcomes_to_batch
    from engine.decision_log.record import OutcomeRecord

    extra = tmp_path / "outcomes"
    extra.mkdir()
    real = pq.read_table(explored_log / "outcomes" / "outcomes-0000.parquet")
    pq.write_table(real, extra / "outcomes-0000.parquet")
    stray = [OutcomeRecord("nobody", 1, "x", clicks=1), OutcomeRecord("nobody-2", 2, "y", clicks=1)]
    pq.write_table(pa.Table.from_batches([outcomes_to_batch(stray)]), extra / "outcomes-0001.parquet")
    report = replay(explored_log, [version_from_text(TARGET)])
    ope = off_policy(report, extra, n_bootstrap=0)
    assert ope.unmatched_outcomes == 2 and ope.outcome_rows == real.num_rows + 2
    assert any("2 of" in note and "match no logged request" in note for note in ope.notes)


def test_gini_by_hand():
    assert gini(np.array([1.0, 1.0, 1.0])) == 0.0
    assert gini(np.array([0.0, 0.0, 3.0])) == pytest.approx(2.0 / 3.0)  # (n - 1) / n: all on one
    assert gini(np.array([])) == 0.0


def test_reranker_replay_prints_tables_and_writes_the_report(explored_log, tmp_path, capsys):
    import json

    from server.cli import main

    target = tmp_path / "target.yaml"
    target.write_text(TARGET)
    out_dir = tmp_path / "report"
    code = main(["replay", "--log", str(explored_log), "--policy", str(target), "--no-progress",
                 "--bootstrap", "200", "--report", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "replayed 600 records" in out and "direct metrics" in out and "off-policy estimates" in out
    # epsilon logged without marginals: the marginal estimators are left out, and the note says so
    assert "iips, sniips, pi) are left out" in out
    data = json.loads((out_dir / "report.json").read_text())
    assert [p["label"] for p in data["policies"]] == ["logged", "target"]
    assert set(data["off_policy"]["estimates"]["target"]) == {"ips", "snips", "rips", "snrips", "dm", "dr"}
    assert "<img" in (out_dir / "report.html").read_text() and (out_dir / "estimates.png").stat().st_size > 0
    assert "| metric | logged | target |" in (out_dir / "report.md").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(TARGET.replace("max: 1", "max: -1"))
    assert main(["replay", "--log", str(explored_log), "--policy", str(bad), "--no-progress"]) == 1
    assert "bad.yaml" in capsys.readouterr().err


def test_an_unreachable_ray_is_a_clear_error(explored_log):
    import socket

    from offline.runner import RayUnavailable

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RayUnavailable, match=rf"cannot reach Ray at 127.0.0.1:{port}: .*ray start --head"):
        replay(explored_log, [version_from_text(TARGET)], use_ray=True, ray_address=f"127.0.0.1:{port}")
    with pytest.raises(RayUnavailable, match="expected HOST:PORT"):
        replay(explored_log, [version_from_text(TARGET)], use_ray=True, ray_address="nowhere")


def test_exposure_read_from_the_columns_matches_a_loop_over_the_records(explored_log):
    """Exposure is counted from the log's Arrow columns (offline.replay._block); a plain loop over
    the records' candidates must give the same shares and item exposure."""
    from collections import defaultdict

    report = replay(explored_log, [version_from_text(TARGET)])
    logged = report.by_label()[LOGGED]
    w = 1.0 / np.log2(np.arange(3) + 2.0)
    by_attr: dict = defaultdict(lambda: defaultdict(float))
    by_item: dict = defaultdict(float)
    for rec in from_table(read_log(explored_log)):
        for p, i in enumerate(rec.slate_index.tolist()):
            by_item[rec.candidates.item_ids[i]] += w[p]
            for name, attr in rec.candidates.attributes.items():
                by_attr[name][attr.dictionary[attr.codes[i]]] += w[p]
    for name, values in by_attr.items():
        total = sum(values.values())
        assert logged.exposure_share[name] == pytest.approx({v: x / total for v, x in values.items()}, rel=1e-12)
    assert logged.item_exposure == pytest.approx(dict(by_item), rel=1e-12)
