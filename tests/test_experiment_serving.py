"""Experiments in serving: the Engine splits a policy name across variants by the unit's bucket,
reports the variant, reloads experiments with the policies and keeps the live split when an edit
is refused."""

from __future__ import annotations

import collections

import pytest
import yaml

from engine.bucketing import bucket
from engine.engine import Engine
from engine.types import RerankRequest
from testing.engines import candidates, policy

EXPERIMENT = """\
name: feed_test
policy: p
salt: feed-salt
variants:
  - {name: control, policy: p, weight: 50}
  - {name: wide, policy: p_wide, weight: 40}
  - {name: holdout, weight: 10, holdout: true}
"""


@pytest.fixture
def folders(tmp_path):
    policies, experiments = tmp_path / "policies", tmp_path / "experiments"
    policies.mkdir()
    experiments.mkdir()
    (policies / "p.yaml").write_text(yaml.safe_dump(policy(slate_size=5)))
    (policies / "p_wide.yaml").write_text(yaml.safe_dump(policy(name="p_wide", slate_size=9)))
    (experiments / "feed_test.yaml").write_text(EXPERIMENT)
    return policies, experiments


def _engine(folders) -> Engine:
    policies, experiments = folders
    return Engine.from_directory(str(policies), experiments_dir=str(experiments))


def test_units_are_split_by_their_bucket_and_every_answer_says_which_variant(folders):
    eng = _engine(folders)
    c = candidates(30)
    seen = collections.Counter()
    for u in range(400):
        user = f"user-{u}"
        r = eng.rerank(RerankRequest("p", c, user_id=user, request_id=f"r{u}"))
        e = r.experiment
        assert e is not None and e.experiment == "feed_test" and e.unit == "user_id"
        assert e.bucket == bucket("feed-salt", user)
        want = "control" if e.bucket < 5000 else "wide" if e.bucket < 9000 else "holdout"
        assert e.variant == want and e.holdout == (want == "holdout")
        assert r.policy == ("p_wide" if want == "wide" else "p")  # the holdout: the control's
        assert len(r.items) == (9 if want == "wide" else 5)
        seen[want] += 1
        again = eng.rerank(RerankRequest("p", c, user_id=user, request_id="another"))
        assert again.experiment.variant == want  # the same unit, the same variant
    assert abs(seen["control"] / 400 - 0.5) < 0.1 and abs(seen["wide"] / 400 - 0.4) < 0.1
    assert seen["holdout"] > 0


def test_without_a_user_id_the_request_id_is_the_unit_and_other_policies_are_untouched(folders):
    eng = _engine(folders)
    r = eng.rerank(RerankRequest("p", candidates(30), request_id="req-7"))
    assert r.experiment.unit == "request_id" and r.experiment.bucket == bucket("feed-salt", "req-7")
    assert eng.rerank(RerankRequest("p_wide", candidates(30), user_id="u")).experiment is None
    assert eng.rerank(RerankRequest("p", candidates(30))).experiment is None  # no unit id at all


def test_a_refused_experiment_edit_keeps_the_live_split(folders):
    policies, experiments = folders
    eng = _engine(folders)
    before = eng.rerank(RerankRequest("p", candidates(30), user_id="user-1")).experiment
    (experiments / "feed_test.yaml").write_text(EXPERIMENT.replace("policy: p_wide", "policy: p_nope"))
    eng.reload()
    report = eng.experiments.last_report
    assert [e.source for e in report.errors] == [str(experiments / "feed_test.yaml")]
    message = str(report.errors[0])
    assert "variants[1].policy" in message and "p_nope" in message and "(line 6)" in message
    assert eng.rerank(RerankRequest("p", candidates(30), user_id="user-1")).experiment == before

    (experiments / "feed_test.yaml").write_text(EXPERIMENT.replace("weight: 40", "weight: 45"))
    eng.reload()
    assert "weight" in str(eng.experiments.last_report.errors[0])  # 105 %: refused as well
    assert eng.rerank(RerankRequest("p", candidates(30), user_id="user-1")).experiment == before

    (experiments / "feed_test.yaml").unlink()
    eng.reload()
    assert eng.experiments.last_report.errors == []
    assert eng.rerank(RerankRequest("p", candidates(30), user_id="user-1")).experiment is None


def test_a_variant_whose_policy_went_away_falls_back_to_the_policy_called(folders):
    policies, _ = folders
    eng = _engine(folders)
    (policies / "p_wide.yaml").unlink()
    eng.reload()  # the experiment now names an unknown policy: refused, the live split stays
    assert eng.experiments.last_report.kept_previous
    for u in range(60):
        r = eng.rerank(RerankRequest("p", candidates(30), user_id=f"user-{u}"))
        assert r.policy == "p"  # never NOT_FOUND
        assert r.experiment is None or r.experiment.variant != "wide"


def test_the_response_and_the_metrics_carry_the_variant(folders):
    from server.convert import encode_result
    from server.metrics import ServerMetrics

    eng = _engine(folders)
    result = eng.rerank(RerankRequest("p", candidates(30), user_id="user-3"))
    resp = encode_result(result)
    e = result.experiment
    assert (resp.experiment.experiment, resp.experiment.variant, resp.experiment.bucket,
            resp.experiment.holdout, resp.experiment.unit) == (e.experiment, e.variant, e.bucket,
                                                               e.holdout, "user_id")
    assert not encode_result(eng.rerank(RerankRequest("p_wide", candidates(30)))).HasField("experiment")
    metrics = ServerMetrics()
    metrics.observe_ok(result, 0.002)
    assert metrics.registry.get_sample_value("reranker_experiment_requests_total", {
        "experiment": "feed_test", "variant": e.variant, "status": result.status}) == 1


def test_the_policy_watcher_reloads_when_an_experiment_file_changes(folders):
    import time

    from server.watch import PolicyWatcher

    _, experiments = folders
    eng = _engine(folders)
    watcher = PolicyWatcher(eng, folders[0], interval_s=0.05, settle_s=0.0)
    assert not watcher.check()  # nothing changed since the load
    time.sleep(0.01)
    (experiments / "feed_test.yaml").write_text(EXPERIMENT.replace("weight: 40", "weight: 35")
                                                .replace("weight: 10", "weight: 15"))
    assert watcher.check()
    assert eng.experiments.last_report.errors == []
    assert eng.rerank(RerankRequest("p", candidates(30), user_id="user-9")).experiment is not None
