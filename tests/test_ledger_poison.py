"""A few requests cannot poison an amortized-fairness policy for everyone (issue 9, item 1), and
a Redis that lost its data is logged and counted.

The reproducer: four accepted requests with one score of 1e307 sent the shared merit to inf, and
every later request to that policy failed INVALID_ARGUMENT, on every worker and after restarts.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from engine.engine import Engine
from engine.errors import InvalidRequest
from engine.ledger import MAX_TOTAL, InProcessLedger, RedisLedger
from engine.policy_loader import PolicyStore, parse_policy_text, LoadedPolicy
from engine.types import Attribute, Candidates, RerankRequest

from testing.redis_server import redis_server  # noqa: F401 - the fixture

# Both kinds of amortized rule: an explicit target share, and merit-proportional exposure.
POLICY = """\
name: fair
version: "1"
slate_size: 10
objective:
  weights: {p_click: 1.0, p_purchase: 5.0}
exposure:
  amortized:
    - name: new_share
      attribute: seller_tier
      target: {new: 0.3}
    - name: by_merit
      attribute: brand
"""
N = 60


def _engine(ledger) -> Engine:
    store = PolicyStore()
    store.add(LoadedPolicy(parse_policy_text(POLICY), "<text>", "d" * 64, 0.0))
    return Engine(store, ledger=ledger)


def _request(seed: int, huge: float | None = None) -> RerankRequest:
    rng = np.random.default_rng(seed)
    p_purchase = rng.random(N) / 20
    if huge is not None:
        p_purchase[int(rng.integers(N))] = huge
    tiers = np.where(np.arange(N) % 5 == 0, "new", "established")
    return RerankRequest("fair", Candidates(
        item_ids=[f"i{j}" for j in range(N)],
        scores={"p_click": rng.random(N) * 0.3, "p_purchase": p_purchase},
        attributes={"seller_tier": Attribute.from_values(tiers.tolist()),
                    "brand": Attribute.from_values([f"b{j % 6}" for j in range(N)])}),
        request_id=f"r{seed}")


def _finite(result) -> bool:
    return (all(math.isfinite(x) for x in (result.objective, result.bound, result.gap))
            and all(math.isfinite(b) for b in result.boosts.values())
            and all(math.isfinite(i.utility) for i in result.items))


def _totals_ok(ledger, requests: int) -> None:
    """Every total finite, and no more than `requests` slates' worth of exposure (each slate
    hands out sum(1/log2(1+p)) < 10 units for K = 10)."""
    for ns in ("fair/new_share", "fair/by_merit"):
        for group, (e, m) in ledger.snapshot(ns).items():
            assert math.isfinite(e) and math.isfinite(m), (ns, group, e, m)
            assert 0 <= e <= 10 * requests and 0 <= m <= 10 * requests, (ns, group, e, m)


def _poison_then_normal(ledger) -> tuple[list, list]:
    """The reproducer's four requests (now refused: their slate objective would overflow), then
    accepted requests as large as the limit allows, then normal traffic."""
    engine = _engine(ledger)
    for seed in range(4):
        with pytest.raises(InvalidRequest, match="overflow"):
            engine.rerank(_request(seed, huge=1e307))
    big = [engine.rerank(_request(100 + seed, huge=1e297)) for seed in range(4)]  # accepted
    normal = [engine.rerank(_request(200 + seed)) for seed in range(60)]
    return big, normal


def _clean_run(ledger) -> list:
    engine = _engine(ledger)
    return [engine.rerank(_request(200 + seed)) for seed in range(60)]


def _same_as_merely_dominant(normal) -> None:
    """A score of 1e297 counts no more than one that merely dominates its request (1e12): an
    engine that got four such requests instead answers the same 60 normal requests with the same
    slates, and boosts equal to 1e-9 (merit is a share of each slate's exposure, and a share
    cannot exceed 1, however large the utility behind it)."""
    engine = _engine(InProcessLedger())
    for seed in range(4):
        engine.rerank(_request(100 + seed, huge=1e12))
    reference = [engine.rerank(_request(200 + seed)) for seed in range(60)]
    for r, ref in zip(normal, reference):
        assert [i.item_id for i in r.items] == [i.item_id for i in ref.items], r.request_id
        assert r.boosts.keys() == ref.boosts.keys()
        assert all(abs(r.boosts[k] - ref.boosts[k]) < 1e-9 for k in r.boosts), (r.boosts, ref.boosts)


def _check(poisoned_big, poisoned, clean, ledger, clean_ledger) -> None:
    assert all(_finite(r) for r in poisoned_big + poisoned)
    _totals_ok(ledger, len(poisoned_big) + len(poisoned))
    # the boosts of normal requests stay in normal requests' units: at most their utility spread
    # plus scale (a few tenths here), never the 1e297 of the big requests
    assert max(b for r in poisoned for b in r.boosts.values()) < 10.0
    # four huge requests count as four requests, not as 1e297 of them: the merit shares the
    # ledger holds after 60 normal ones are close to those of a ledger that never saw them
    def merit_shares(ld):
        snap = ld.snapshot("fair/by_merit")
        total = sum(m for _, m in snap.values())
        return {g: m / total for g, (_, m) in snap.items()}

    mine, theirs = merit_shares(ledger), merit_shares(clean_ledger)
    assert set(mine) == set(theirs)
    assert max(abs(mine[g] - theirs[g]) for g in mine) < 0.05, (mine, theirs)
    share = lambda rs: np.mean([sum(1 for i in r.items if int(i.item_id[1:]) % 5 == 0) / len(r.items)
                                for r in rs])
    assert abs(share(poisoned[-30:]) - share(clean[-30:])) < 0.1


def test_huge_scores_cannot_poison_the_in_process_ledger():
    ledger, clean_ledger = InProcessLedger(), InProcessLedger()
    big, normal = _poison_then_normal(ledger)
    _check(big, normal, _clean_run(clean_ledger), ledger, clean_ledger)
    _same_as_merely_dominant(normal)


def test_huge_scores_cannot_poison_the_redis_ledger_and_a_restart_sees_sane_totals(redis_server):  # noqa: F811
    ledger = RedisLedger(redis_server.url, timeout_s=0.5)
    try:
        big, normal = _poison_then_normal(ledger)
        clean_ledger = InProcessLedger()
        _check(big, normal, _clean_run(clean_ledger), ledger, clean_ledger)
        _same_as_merely_dominant(normal)
    finally:
        ledger.close()
    # "after a restart": a new process (a new ledger on the same Redis) serves normal traffic
    again = RedisLedger(redis_server.url, timeout_s=0.5)
    try:
        engine = _engine(again)
        assert all(_finite(engine.rerank(_request(900 + s))) for s in range(5))
        _totals_ok(again, 4 + 60 + 5)
    finally:
        again.close()


def test_a_redis_ledger_poisoned_by_an_older_version_still_serves(redis_server, caplog):  # noqa: F811
    """Totals of inf, nan or 1e308 written before the fix (or by hand) read as 0, with a warning
    and a counter, and every request is answered."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.hset("reranker:ledger:ns:fair/by_merit",
                mapping={"exp:b0": "5", "merit:b0": "inf", "exp:b1": "nan", "merit:b1": "2",
                         "exp:b2": "1e308", "merit:b2": "1", "merit:b3": "not a number", "_v": "4"})
    client.hset("reranker:ledger:ns:fair/new_share", mapping={"exp:new": "-inf", "merit:new": "1",
                                                             "_v": "1"})
    ledger = RedisLedger(redis_server.url, timeout_s=0.5)
    try:
        engine = _engine(ledger)
        with caplog.at_level(logging.WARNING, logger="engine.ledger"):
            results = [engine.rerank(_request(s)) for s in range(10)]
        assert all(_finite(r) for r in results)
        assert ledger.stats.ignored >= 5
        warned = [r.getMessage() for r in caplog.records if "not finite or above" in r.getMessage()]
        assert len(warned) == 2  # once per namespace
        assert warned[0].startswith("ledger 'fair/")
        assert f"{MAX_TOTAL:.0e}" in warned[0] and "delete the namespace's hash to reset it" in warned[0]
        # the writes repaired the hashes: every total Redis holds is finite and bounded again, so
        # later reads ignore nothing (the groups' bad totals were replaced by the writes' deltas)
        for ns in ("fair/by_merit", "fair/new_share"):
            stored = client.hgetall(f"reranker:ledger:ns:{ns}")
            totals = {k: float(v) for k, v in stored.items() if k.startswith((b"exp:", b"merit:"))}
            assert all(math.isfinite(v) and abs(v) <= MAX_TOTAL for v in totals.values()), (ns, totals)
        ignored = ledger.stats.ignored
        for s in range(10, 15):
            assert _finite(engine.rerank(_request(s)))
        assert ledger.stats.ignored == ignored
        _totals_ok(ledger, 15 + 5)  # the hand-written 5 of b0's exposure, then 15 requests
    finally:
        ledger.close()
        client.close()


def test_redis_losing_its_data_is_logged_and_counted(redis_server, caplog):  # noqa: F811
    import redis

    ledger = RedisLedger(redis_server.url, timeout_s=0.5)
    client = redis.Redis.from_url(redis_server.url)
    try:
        engine = _engine(ledger)
        for s in range(5):
            engine.rerank(_request(s))
        assert ledger.stats.data_lost == 0
        client.flushall()  # what a restart without persistence leaves
        with caplog.at_level(logging.WARNING, logger="engine.ledger"):
            for s in range(5):
                assert _finite(engine.rerank(_request(10 + s)))
        lost = [r.getMessage() for r in caplog.records if "was lost by Redis" in r.getMessage()]
        assert ledger.stats.data_lost == 2, ledger.stats  # two namespaces, one event each
        assert len(lost) == 2 and "fair/new_share" in " ".join(lost)
        assert "starts again from what Redis holds" in lost[0]
        # and no false alarm from ordinary traffic afterwards
        for s in range(20):
            engine.rerank(_request(30 + s))
        assert ledger.stats.data_lost == 2
    finally:
        ledger.close()
        client.close()


def test_a_redis_restarted_without_persistence_is_noticed_by_every_replica(caplog):
    """Two replicas; Redis is killed, then restarted empty (no persistence) while requests go on:
    no request fails, each replica logs one WARNING per namespace and counts it, and the totals
    afterwards are what was written since the loss (the queued deltas and the later requests)."""
    from testing.redis_server import RedisServer, require_redis_server
    from tests.test_ledger import settled, wait_until

    require_redis_server()
    server = RedisServer().start()  # --save '' --appendonly no: a restart comes back empty
    ledgers = [RedisLedger(server.url, timeout_s=0.05, retry_interval_s=0.05) for _ in range(2)]
    try:
        replicas = [_engine(ld) for ld in ledgers]
        with caplog.at_level(logging.WARNING, logger="engine.ledger"):
            for k in range(40):
                if k == 10:
                    server.kill()
                if k == 20:
                    server.start()
                assert _finite(replicas[k % 2].rerank(_request(300 + k)))
            assert wait_until(lambda: settled(*ledgers)), [ld.stats for ld in ledgers]
            for k in range(10):  # a read by each replica after recovery
                assert _finite(replicas[k % 2].rerank(_request(400 + k)))
        for ledger in ledgers:
            assert ledger.stats.outages >= 1
            assert ledger.stats.data_lost == 2, ledger.stats  # two namespaces, one event
        lost = [r.getMessage() for r in caplog.records if "was lost by Redis" in r.getMessage()]
        assert len(lost) == 4, lost  # 2 replicas x 2 namespaces, once each
        assert all(f"127.0.0.1:{server.port}" in m and "had " in m for m in lost), lost
        # what Redis holds now: the 40 slates answered since the kill (the 10 queued during the
        # outage included), not the 10 before it, which Redis lost
        per_slate = sum(1.0 / math.log2(p + 2) for p in range(10))  # every item has a tier
        for ledger in ledgers:
            exposure = sum(e for e, _ in ledger.snapshot("fair/new_share").values())
            assert exposure == pytest.approx(40 * per_slate, rel=1e-9)
    finally:
        for ledger in ledgers:
            ledger.close()
        server.close()


def test_a_redis_restarted_between_requests_costs_no_outage():
    """Redis restarted empty between two requests: the next read notices the loss and reloads
    the script, so the writes that follow reach Redis at once (no NOSCRIPT outage, no queue)."""
    import redis

    from testing.redis_server import RedisServer, require_redis_server

    require_redis_server()
    server = RedisServer().start()
    ledger = RedisLedger(server.url, timeout_s=0.5, retry_interval_s=60.0)  # no recovery in time
    try:
        engine = _engine(ledger)
        for s in range(5):
            engine.rerank(_request(s))
        server.kill()
        server.start()
        for s in range(5):
            assert _finite(engine.rerank(_request(10 + s)))
        assert ledger.stats.data_lost == 2 and ledger.stats.outages == 0, ledger.stats
        assert ledger.stats.pending == 0
        client = redis.Redis.from_url(server.url)
        stored = client.hgetall("reranker:ledger:ns:fair/new_share")
        client.close()
        per_slate = sum(1.0 / math.log2(p + 2) for p in range(10))
        exposure = sum(float(v) for k, v in stored.items() if k.startswith(b"exp:"))
        assert exposure == pytest.approx(5 * per_slate, rel=1e-9)  # the 5 since the restart
    finally:
        ledger.close()
        server.close()


def test_data_loss_metric_is_exported():
    from prometheus_client import generate_latest

    from server.metrics import ServerMetrics

    metrics = ServerMetrics()
    metrics.watch_ledger(_engine(InProcessLedger()))
    text = generate_latest(metrics.registry).decode()
    assert "reranker_ledger_data_lost_total 0.0" in text
    assert "# HELP reranker_ledger_data_lost_total Exposure ledger: namespaces Redis lost" in text
    assert "reranker_ledger_ignored_total 0.0" in text
