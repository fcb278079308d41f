"""The request path as one pure function (engine.decide) and policy revisions side by side
(engine.versions): the Engine is decide + the ledger; a decision replays from its boosts; any
kept revision answers by digest, and every answer names the digest that served it."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import yaml

from engine.decide import decide
from engine.engine import Engine
from engine.errors import PolicyNotFound
from engine.ledger import InProcessLedger
from engine.policy_loader import PolicyStore
from engine.types import Candidates, RerankRequest
from testing.engines import candidates, engine_with, policy

AMORTIZED = policy(slate_size=10, exposure={"amortized": [
    {"name": "new", "attribute": "seller_tier", "target": {"new": 0.2}, "gain": 1.0}]})


def _slate(result) -> list[str]:
    return [it.item_id for it in result.items]


def _skewed(seed: int) -> Candidates:
    """New sellers score a little lower: the amortized rule has to boost them."""
    c = candidates(100, seed=seed, rare=0.06)
    tiers = np.array(c.attributes["seller_tier"].values())
    scores = {**c.scores, "p_click": np.where(tiers == "new", 0.8, 1.0) * c.scores["p_click"]}
    return Candidates(c.item_ids, scores, c.attributes, c.numeric, c.embeddings)


def test_decide_writes_nothing_and_the_engine_records_exactly_its_deltas():
    eng = engine_with(AMORTIZED)
    for k in range(30):  # build up some ledger state first
        eng.rerank(RerankRequest("p", _skewed(k)))
    req = RerankRequest("p", _skewed(99), request_id="r-99")
    version = eng.version("p")
    snapshots = {ns: eng.ledger.snapshot(ns) for ns in version.ledger_namespaces()}
    assert version.ledger_namespaces() == ["p/new"]
    before = dict(eng.ledger.snapshot("p/new"))
    first = decide(version, req, limits=eng.limits, snapshots=snapshots)
    second = decide(version, req, limits=eng.limits, snapshots=snapshots)
    assert eng.ledger.snapshot("p/new") == before  # decide wrote nothing
    assert _slate(first.result) == _slate(second.result)
    assert first.deltas == second.deltas and first.boosts == second.boosts
    assert first.boosts["seller_tier"]["new"] > 0

    served = eng.rerank(req)
    assert _slate(served) == _slate(first.result)
    after = eng.ledger.snapshot("p/new")
    for group, (e, m) in first.deltas["p/new"].items():
        e0, m0 = before.get(group, (0.0, 0.0))
        assert after[group] == pytest.approx((e0 + e, m0 + m))


def test_a_decision_replays_from_its_boosts_whatever_the_ledger_says_later():
    eng = engine_with(AMORTIZED)
    for k in range(30):
        eng.rerank(RerankRequest("p", _skewed(k)))
    req = RerankRequest("p", _skewed(99), request_id="logged")
    version = eng.version("p")
    logged = decide(version, req, limits=eng.limits,
                    snapshots={ns: eng.ledger.snapshot(ns) for ns in version.ledger_namespaces()})
    for k in range(30, 80):  # the ledger moves on
        eng.rerank(RerankRequest("p", _skewed(k)))
    now = decide(version, req, limits=eng.limits,
                 snapshots={ns: eng.ledger.snapshot(ns) for ns in version.ledger_namespaces()})
    replayed = decide(version, req, limits=eng.limits, boosts=logged.boosts)
    assert logged.boosts["seller_tier"]["new"] > 0
    assert now.boosts != logged.boosts  # the replay below is not trivially the same
    assert _slate(replayed.result) == _slate(logged.result)
    assert replayed.result.objective == logged.result.objective
    assert replayed.deltas == logged.deltas


def test_without_amortized_rules_there_is_nothing_to_record():
    eng = engine_with(policy(slate_size=5))
    d = decide(eng.version("p"), RerankRequest("p", candidates(40)), limits=eng.limits)
    assert d.deltas == {} and d.boosts is None and d.result.boosts == {}
    assert eng.version("p").ledger_namespaces() == []


def _write(folder, doc: dict) -> bytes:
    raw = yaml.safe_dump(doc).encode()
    (folder / f"{doc['name']}.yaml").write_bytes(raw)
    return raw


def test_revisions_answer_side_by_side_and_each_answer_names_its_digest(tmp_path):
    v1 = _write(tmp_path, policy(version="1", slate_size=5))
    eng = Engine(PolicyStore.from_directory(tmp_path), policies_dir=str(tmp_path),
                 ledger=InProcessLedger())
    d1 = hashlib.sha256(v1).hexdigest()
    req = RerankRequest("p", candidates(50, seed=4))
    live = eng.rerank(req)
    assert live.policy_digest == d1 and len(live.items) == 5

    v2 = _write(tmp_path, policy(version="2", slate_size=8))  # the edit goes live on reload
    d2 = hashlib.sha256(v2).hexdigest()
    assert eng.reload() == []
    assert eng.rerank(req).policy_digest == d2 and len(eng.rerank(req).items) == 8
    old = decide(eng.version("p", d1), req, limits=eng.limits).result  # still reachable
    assert old.policy_digest == d1 and old.policy_version == "1" and _slate(old) == _slate(live)
    assert set(eng.versions.digests("p")) == {d1, d2}

    proposed = eng.versions.add_bytes(yaml.safe_dump(policy(version="3", slate_size=3)).encode())
    assert eng.store.get("p").digest == d2  # added, not made live
    assert len(decide(eng.version("p", proposed.digest), req, limits=eng.limits).result.items) == 3

    with pytest.raises(PolicyNotFound, match=r"no policy named 'p@0000"):
        eng.version("p", "0" * 64)


def test_revisions_kept_per_name_are_bounded_and_the_live_one_always_found(tmp_path):
    _write(tmp_path, policy(version="live", slate_size=5))
    eng = Engine(PolicyStore.from_directory(tmp_path), policies_dir=str(tmp_path))
    eng.versions.per_name = 3
    added = [eng.versions.add_bytes(yaml.safe_dump(policy(version=str(i))).encode()).digest
             for i in range(5)]
    assert eng.versions.digests("p") == added[-3:]  # the least recently used went first
    with pytest.raises(PolicyNotFound):
        eng.versions.get("p", added[0])
    live = eng.store.get("p")
    assert eng.versions.get("p", live.digest) is live
