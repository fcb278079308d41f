"""Exploration policies through the engine: a seeded stochastic slate that keeps every hard rule,
its propensities in the answer and the decision log, and a replay that draws the same slate."""

from __future__ import annotations

import math

import pytest

from engine.decide import decide, exploration_seed
from engine.decision_log import DecisionLog, ParquetSink, from_table, read_log
from engine.errors import PolicyInvalid
from engine.policy_loader import parse_policy_text
from engine.types import RerankRequest
from server.convert import encode_result
from testing.engines import candidates, engine_with, policy
from tests.checker import check_answer

CAPPED = dict(constraints=[{"name": "cap", "type": "max_count", "attribute": "category", "max": 2}])


@pytest.mark.parametrize("exploration", [
    {"scheme": "epsilon", "epsilon": 0.5, "top_m": 6},
    {"scheme": "softmax", "temperature": 0.2},
    {"scheme": "softmax", "temperature": 0.2, "top_m": 8, "marginal_samples": 200},
])
def test_exploration_draws_valid_seeded_slates_with_their_propensities(exploration):
    eng = engine_with(policy(slate_size=6, exploration=exploration, **CAPPED))
    c = candidates(80, seed=5)
    slates = set()
    for i in range(30):
        req = RerankRequest("p", c, request_id=f"r{i}")
        r = eng.rerank(req)
        check_answer(eng.store.get("p").policy, c, r)  # every hard rule holds
        p = r.propensities
        assert p is not None and p.scheme == exploration["scheme"]
        assert p.seed == exploration_seed(req, r.policy_digest)
        assert len(p.cascade) == len(r.items) and p.cascade[-1] == pytest.approx(p.joint)
        assert all(0 < q <= 1 for q in p.cascade)
        assert all(a >= b for a, b in zip(p.cascade, p.cascade[1:]))
        if exploration.get("marginal_samples"):
            assert p.marginal_samples in (0, 200) and len(p.marginal) == len(r.items)
        else:
            assert p.marginal is None
        assert r.solver == f"explore_{exploration['scheme']}"
        again = eng.rerank(req)
        assert [it.item_id for it in again.items] == [it.item_id for it in r.items]  # seeded
        slates.add(tuple(it.item_id for it in r.items))
        resp = encode_result(r)
        assert resp.propensities.joint == p.joint and list(resp.propensities.cascade) == list(p.cascade)
    assert len(slates) > 1  # it explores


def test_a_deterministic_policy_has_no_propensities():
    eng = engine_with(policy(slate_size=5))
    r = eng.rerank(RerankRequest("p", candidates(30), request_id="x"))
    assert r.propensities is None and not encode_result(r).HasField("propensities")


def test_exploration_is_logged_with_propensities_and_replays(tmp_path):
    eng = engine_with(policy(slate_size=6, exploration={"scheme": "epsilon", "epsilon": 0.3},
                             **CAPPED))
    eng.decision_log = DecisionLog(ParquetSink(tmp_path / "log"), sample_rate=0.0)  # exploration: always
    served = {}
    for i in range(25):
        req = RerankRequest("p", candidates(60, seed=i), request_id=f"q{i}")
        r = eng.rerank(req)
        served[req.request_id] = ([it.item_id for it in r.items], r.propensities)
    eng.close()
    records = from_table(read_log(tmp_path / "log"))
    assert sorted(rec.request_id for rec in records) == sorted(served)
    for rec in records:
        items, p = served[rec.request_id]
        assert rec.seed == p.seed and math.isclose(rec.joint, p.joint)
        assert list(rec.cascade) == list(p.cascade)
        replay = decide(eng.version(rec.policy, rec.policy_digest), rec.request(), limits=eng.limits)
        assert [it.item_id for it in replay.result.items] == items


@pytest.mark.parametrize("block, message", [
    ("{scheme: epsilon, epsilon: -0.1}", "exploration.epsilon: must be a finite number between 0 and 1, got -0.1 (line 5)"),
    ("{scheme: softmax, temperature: 0}", "exploration.temperature: must be a finite number > 0 and <= 1e+06, got 0 (line 5)"),
    ("{scheme: softmax}", "exploration.temperature: required by scheme: softmax (a number > 0) (line 5)"),
    ("{scheme: epsilon, epsilon: 0.1, temperature: 1}", "exploration.temperature: only the softmax scheme has a temperature (line 5)"),
])
def test_bad_exploration_settings_are_refused_naming_the_field_and_line(block, message):
    text = f"name: x\nversion: 1\nslate_size: 5\nobjective: {{weights: {{p_click: 1}}}}\nexploration: {block}\n"
    with pytest.raises(PolicyInvalid) as info:
        parse_policy_text(text)
    assert [str(i) for i in info.value.issues] == [message] or message in str(info.value)


def test_the_example_exploration_policy_serves_with_propensities_and_marginals(tmp_path):
    import shutil
    from pathlib import Path

    from engine.engine import Engine

    example = Path(__file__).resolve().parents[1] / "examples" / "policies" / "home_feed_explore.yaml"
    shutil.copy(example, tmp_path / example.name)
    eng = Engine.from_directory(str(tmp_path))
    c = candidates(300, seed=2)
    r = eng.rerank(RerankRequest("home_feed_explore", c, request_id="example-1"))
    check_answer(eng.store.get("home_feed_explore").policy, c, r)
    p = r.propensities
    assert p.scheme == "epsilon" and len(p.cascade) == len(r.items) == 20
    assert p.marginal_samples == 200 and len(p.marginal) == 20 and all(0 <= q <= 1 for q in p.marginal)
    # Monte Carlo: an item drawn with a small probability may not recur in 200 re-draws (0 here)
    assert sum(q > 0 for q in p.marginal) >= 15
