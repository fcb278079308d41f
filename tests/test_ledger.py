"""Exposure ledger: the in-process default, and the Redis backend against a real redis-server
(started per test by testing/redis_server.py), including crashes, hangs and restarts mid-run.

Deltas are multiples of 1/8 so that every sum is exact in binary floating point and totals can
be compared with ==, whatever the order of the additions.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from engine.ledger import InProcessLedger, Ledger, LedgerStats, RedisLedger, ledger_from_url
from testing.redis_server import RedisServer, free_port, redis_server, require_redis_server  # noqa: F401

NS = "marketplace/new_sellers"
TIMEOUT_S = 0.05
RETRY_S = 0.05


def fast(url: str, **kw) -> RedisLedger:
    return RedisLedger(url, timeout_s=TIMEOUT_S, retry_interval_s=RETRY_S, **kw)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def settled(*ledgers: RedisLedger) -> bool:
    return all(ld.healthy and ld.stats.pending == 0 for ld in ledgers)


def ledger_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "engine.ledger" and r.levelno == logging.WARNING]


# -- in-process -------------------------------------------------------------------------------
def test_in_process_adds_per_namespace_and_group():
    ledger = InProcessLedger()
    assert isinstance(ledger, Ledger)
    assert ledger.snapshot(NS) == {}
    ledger.record(NS, {"new": (1.0, 0.5), "old": (2.0, 1.0)})
    ledger.record(NS, {"new": (0.25, 0.125)})
    ledger.record("other/rule", {"new": (8.0, 8.0)})
    assert ledger.snapshot(NS) == {"new": (1.25, 0.625), "old": (2.0, 1.0)}
    assert ledger.snapshot("other/rule") == {"new": (8.0, 8.0)}
    snap = ledger.snapshot(NS)
    snap["new"] = (0.0, 0.0)  # a copy: changing it changes nothing
    assert ledger.snapshot(NS)["new"] == (1.25, 0.625)
    assert ledger.stats == LedgerStats() and ledger.healthy
    ledger.close()


def test_in_process_is_thread_safe():
    ledger = InProcessLedger()
    n_threads, n_calls = 8, 2000

    def work(t: int) -> None:
        for _ in range(n_calls):
            ledger.record(NS, {"a": (0.125, 0.25), f"t{t}": (1.0, 0.0)})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    snap = ledger.snapshot(NS)
    assert snap["a"] == (0.125 * n_threads * n_calls, 0.25 * n_threads * n_calls)
    assert all(snap[f"t{t}"] == (float(n_calls), 0.0) for t in range(n_threads))


def test_invalid_deltas_are_dropped_counted_and_never_raise(caplog):
    ledger = InProcessLedger()
    ledger.record(NS, {"ok": (1.0, 1.0), "nan": (float("nan"), 1.0), "inf": (1.0, float("inf")),
                       "short": (1.0,), "text": ("x", 1.0), "huge": (1.0, 1e10)})
    ledger.record(NS, None)  # type: ignore[arg-type]
    assert ledger.snapshot(NS) == {"ok": (1.0, 1.0)}
    assert ledger.stats.rejected == 6
    assert ledger_warnings(caplog) == [  # once per namespace, not per request
        f"ledger {NS!r}: dropped 5 invalid delta(s): each needs two finite numbers (exposure, "
        "merit) of magnitude <= 1e+09; further drops are counted in stats.rejected"]


def test_ledger_from_url():
    assert isinstance(ledger_from_url(None), InProcessLedger)
    assert isinstance(ledger_from_url("memory://"), InProcessLedger)
    port = free_port()  # nothing listens there: the ledger starts in an outage, without raising
    ledger = ledger_from_url(f"redis://127.0.0.1:{port}/0", timeout_s=TIMEOUT_S, retry_interval_s=10)
    try:
        assert isinstance(ledger, RedisLedger) and not ledger.healthy
        assert ledger.stats.outages == 1
    finally:
        ledger.close()
    with pytest.raises(ValueError, match=r"ledger url: expected 'memory://' or a redis://, "
                                         r"rediss:// or unix:// URL, got 'ftp://h/x'"):
        ledger_from_url("ftp://user:secret@h/x")
    with pytest.raises(ValueError, match="RedisLedger timeout_s: must be a number > 0, got 0"):
        RedisLedger("redis://127.0.0.1:1/0", timeout_s=0)


# -- Redis: normal operation -------------------------------------------------------------------
def test_redis_drops_invalid_deltas_without_blocking_the_queue(redis_server):
    a = fast(redis_server.url)
    try:
        a.record(NS, {"ok": (1.0, 0.5), "nan": (float("nan"), 0.0)})
        assert a.snapshot(NS) == {"ok": (1.0, 0.5)}
        assert a.healthy and a.stats.rejected == 1 and a.stats.errors == 0
    finally:
        a.close()


def test_two_replicas_see_each_others_increments(redis_server):
    a, b = fast(redis_server.url), fast(redis_server.url)
    try:
        a.record(NS, {"new": (1.0, 0.5), "old": (2.0, 1.0)})
        b.record(NS, {"new": (0.25, 0.5)})
        b.record("other/rule", {"x": (4.0, 0.0)})
        expected = {"new": (1.25, 1.0), "old": (2.0, 1.0)}
        assert a.snapshot(NS) == expected and b.snapshot(NS) == expected
        assert a.snapshot("other/rule") == {"x": (4.0, 0.0)}
        assert a.snapshot("unknown/rule") == {}
        assert a.stats == LedgerStats() and b.stats == LedgerStats()
    finally:
        a.close()
        b.close()


def test_sums_are_exact_doubles_and_group_names_round_trip(redis_server):
    a = fast(redis_server.url)
    odd = 'new:sellers "ü" \\ [1]'
    try:
        e = tiny = huge = 0.0
        for _ in range(10):
            a.record(NS, {odd: (0.1, 1e-300), "": (1e8 + 0.3, 0.0)})  # 1e8+0.3: inexact
            e, tiny, huge = e + 0.1, tiny + 1e-300, huge + (1e8 + 0.3)
        assert a.snapshot(NS) == {odd: (e, tiny), "": (huge, 0.0)}
        assert e == 0.9999999999999999  # the IEEE sum, not a rounded decimal
    finally:
        a.close()


def test_concurrent_increments_from_threads_are_all_counted(redis_server):
    replicas = [fast(redis_server.url), fast(redis_server.url)]
    n_threads, n_calls = 4, 250

    def work(ledger: RedisLedger) -> None:
        for _ in range(n_calls):
            ledger.record(NS, {"new": (0.125, 1.0), "old": (1.0, 0.5)})

    threads = [threading.Thread(target=work, args=(ld,)) for ld in replicas for _ in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    n = len(threads) * n_calls
    try:
        assert all(settled(ld) for ld in replicas)
        for ld in replicas:
            assert ld.snapshot(NS) == {"new": (0.125 * n, 1.0 * n), "old": (1.0 * n, 0.5 * n)}
            assert ld.stats.errors == 0
    finally:
        for ld in replicas:
            ld.close()


def test_max_staleness_view_has_every_own_write_under_concurrency(redis_server):
    """Reads and writes from 8 threads interleave; the mirror must still hold each own write
    exactly once (a read includes the writes up to its hash version, the rest are added)."""
    a = fast(redis_server.url, max_staleness_s=0.02)
    n_threads, n_calls = 8, 150

    def work() -> None:
        for _ in range(n_calls):
            a.snapshot(NS)
            a.record(NS, {"g": (0.125, 0.25)})

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        n = n_threads * n_calls
        assert a.snapshot(NS) == {"g": (0.125 * n, 0.25 * n)}  # likely from the mirror
        time.sleep(0.03)
        assert a.snapshot(NS) == {"g": (0.125 * n, 0.25 * n)}  # re-read from Redis
    finally:
        a.close()


def test_max_staleness_serves_the_mirror_then_rereads(redis_server):
    a = fast(redis_server.url, max_staleness_s=0.3)
    b = fast(redis_server.url)
    try:
        a.record(NS, {"g": (1.0, 0.0)})
        assert a.snapshot(NS) == {"g": (1.0, 0.0)}  # read from Redis, mirror now fresh
        b.record(NS, {"g": (2.0, 0.0)})
        a.record(NS, {"g": (4.0, 0.0)})  # own writes are always in the mirror
        assert a.snapshot(NS) == {"g": (5.0, 0.0)}  # b's write not seen yet
        time.sleep(0.35)
        assert a.snapshot(NS) == {"g": (7.0, 0.0)}
    finally:
        a.close()
        b.close()


# -- Redis: outages ----------------------------------------------------------------------------
def test_crash_mid_run_no_call_fails_and_replicas_converge_without_loss(caplog):
    """kill -9 under load from 2 replicas x 3 threads, restart on the same port: every call
    answers quickly, both replicas catch up, and Redis ends with the exact totals."""
    require_redis_server()
    caplog.set_level(logging.INFO, logger="engine.ledger")
    server = RedisServer(durable=True).start()  # acknowledged writes survive the kill
    replicas = [fast(server.url), fast(server.url)]
    stop = threading.Event()
    counts, failures, slowest, served_down = [], [], [0.0], [0]
    lock = threading.Lock()

    def work(ledger: RedisLedger) -> None:
        n = 0
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                snap = ledger.snapshot(NS)
                ledger.record(NS, {"new": (0.125, 0.5), "old": (1.0, 0.25)})
                took = time.perf_counter() - t0
                n += 1
                with lock:
                    slowest[0] = max(slowest[0], took)
                    if not server.running:
                        served_down[0] += 1
                assert isinstance(snap, dict)
                time.sleep(0.0005)
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)
        with lock:
            counts.append(n)

    threads = [threading.Thread(target=work, args=(ld,)) for ld in replicas for _ in range(3)]
    try:
        for th in threads:
            th.start()
        time.sleep(0.3)
        server.kill()
        time.sleep(0.4)
        assert all(not ld.healthy for ld in replicas)
        down = [ld.snapshot(NS) for ld in replicas]  # answered from the mirrors
        assert all(s["new"][0] > 0 for s in down)
        server.start()
        time.sleep(0.3)
        stop.set()
        for th in threads:
            th.join()
        assert not failures, failures
        assert wait_until(lambda: settled(*replicas)), [ld.stats for ld in replicas]
        n = sum(counts)
        expected = {"new": (0.125 * n, 0.5 * n), "old": (1.0 * n, 0.25 * n)}
        assert [ld.snapshot(NS) for ld in replicas] == [expected, expected]
        for ld in replicas:
            s = ld.stats
            assert s.outages >= 1 and s.errors >= 1 and s.queued > 0 and s.flushed == s.queued
        assert served_down[0] > 0  # requests were answered while Redis was down
        # Logged once per outage (not per request), and each recovery logged.
        outages = sum(ld.stats.outages for ld in replicas)
        warnings = ledger_warnings(caplog)
        assert len(warnings) == outages and all("unreachable" in m for m in warnings)
        recoveries = [r for r in caplog.records if r.levelno == logging.INFO
                      and "reachable again" in r.getMessage()]
        assert len(recoveries) == outages
    finally:
        stop.set()
        for ld in replicas:
            ld.close()
        server.close()


def test_snapshot_during_outage_is_last_remote_state_plus_local_deltas(redis_server):
    a, b = fast(redis_server.url), fast(redis_server.url)
    try:
        b.record(NS, {"old": (3.0, 1.0)})
        a.record(NS, {"new": (1.0, 0.5)})
        assert a.snapshot(NS) == {"new": (1.0, 0.5), "old": (3.0, 1.0)}
        redis_server.kill()
        a.record(NS, {"new": (0.5, 0.5)})
        a.record(NS, {"new": (0.25, 0.0), "old": (1.0, 0.0)})
        assert a.snapshot(NS) == {"new": (1.75, 1.0), "old": (4.0, 1.0)}
        assert a.stats.outages == 1 and a.stats.queued == 2 and a.stats.flushed == 0
    finally:
        a.close()
        b.close()


def test_crash_without_persistence_keeps_what_the_ledger_held(redis_server):
    """The default test server keeps nothing across a kill: Redis's own totals are gone (durability
    is Redis's job: run it with an append-only file), but every delta the ledger was holding
    during the outage reaches the restarted server."""
    a = fast(redis_server.url)
    try:
        a.record(NS, {"g": (100.0, 0.0)})
        redis_server.kill()
        a.record(NS, {"g": (1.0, 0.5)})
        a.record(NS, {"g": (2.0, 0.5)})
        redis_server.start()
        assert wait_until(lambda: settled(a))
        assert a.snapshot(NS) == {"g": (3.0, 1.0)}
    finally:
        a.close()


def test_hung_server_costs_one_timeout_then_catches_up_exactly_once(redis_server):
    """SIGSTOP: the write is sent, Redis cannot answer, the client times out. After SIGCONT Redis
    applies it; the ledger's retry of that same write must be recognised and skipped."""
    a, b = fast(redis_server.url), fast(redis_server.url)
    try:
        a.record(NS, {"g": (1.0, 0.0)})
        redis_server.pause()
        t0 = time.perf_counter()
        a.record(NS, {"g": (2.0, 0.0)})  # times out: outcome unknown
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(100):
            a.record(NS, {"g": (4.0, 0.0)})
            a.snapshot(NS)
        rest = (time.perf_counter() - t0) / 100
        assert first < 3 * TIMEOUT_S and rest < 0.005, (first, rest)
        assert a.snapshot(NS) == {"g": (403.0, 0.0)}
        redis_server.resume()
        assert wait_until(lambda: settled(a))
        assert a.snapshot(NS) == b.snapshot(NS) == {"g": (403.0, 0.0)}
        s = a.stats
        assert (s.outages, s.queued, s.flushed) == (1, 101, 101)
        assert s.duplicates <= 1  # 1 when Redis ran the timed-out write after SIGCONT
    finally:
        a.close()
        b.close()


def test_unreachable_at_start_then_catches_up(redis_server):
    port = redis_server.port
    redis_server.kill()
    a = fast(f"redis://127.0.0.1:{port}/0")
    try:
        assert not a.healthy
        a.record(NS, {"g": (1.0, 0.25)})
        assert a.snapshot(NS) == {"g": (1.0, 0.25)}
        redis_server.start()
        assert wait_until(lambda: settled(a))
        b = fast(redis_server.url)
        assert b.snapshot(NS) == {"g": (1.0, 0.25)}
        b.close()
    finally:
        a.close()


def test_close_writes_what_is_held(redis_server):
    a = RedisLedger(redis_server.url, timeout_s=TIMEOUT_S, retry_interval_s=60)  # no recovery soon
    redis_server.kill()
    a.record(NS, {"g": (1.0, 0.5)})
    redis_server.start()
    a.close()  # writes the queued delta now
    b = fast(redis_server.url)
    try:
        assert b.snapshot(NS) == {"g": (1.0, 0.5)}
        assert a.stats.pending == 0
        a.record(NS, {"g": (1.0, 0.0)})  # after close: held locally, never raises
        assert a.snapshot(NS) == {"g": (2.0, 0.5)}
    finally:
        b.close()


def test_wrong_key_type_is_an_outage_not_an_exception(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.set("reranker:ledger:ns:" + NS, "not a hash")
    a = fast(redis_server.url)
    try:
        a.record(NS, {"g": (1.0, 0.0)})
        assert not a.healthy and a.snapshot(NS) == {"g": (1.0, 0.0)}
        client.delete("reranker:ledger:ns:" + NS)
        assert wait_until(lambda: settled(a))
        stored = client.hgetall("reranker:ledger:ns:" + NS)
        assert stored.pop(b"_epoch").startswith(b"reranker:ledger:writer:")  # who created it
        assert {k: float(v) for k, v in stored.items()} == \
            {b"exp:g": 1.0, b"merit:g": 0.0, b"_v": 1.0}  # _v: the hash's write counter
    finally:
        a.close()
        client.close()
