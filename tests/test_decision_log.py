"""The decision log (engine.decision_log): records round-trip through Parquet and Redis Streams bit
for bit, a whole log replays through `decide` to the same slates, the writer never blocks or
raises (full queue, failing sink, Redis down) and counts what it drops, files rotate by size and
time and are published atomically, sampling is deterministic, outcomes join by request id."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from engine.decide import decide
from engine.decision_log import (
    DECISION_SCHEMA, SCHEMA_VERSION, VERSION_KEY, DecisionLog, DecisionRecord, Diagnostics,
    OutcomeRecord, ParquetSink, RedisStreamSink, from_table, join_outcomes, log_files, outcome_log,
    read_log, read_outcomes, read_stream, sampled, sampling_hash, summarise, to_batch,
)
from engine.types import Attribute, Candidates, RerankRequest
from testing.engines import candidates, engine_with, policy
from testing.redis_server import redis_server  # noqa: F401 - the fixture

NAME = re.compile(r"^decisions-\d{8}T\d{6}Z-\d{6}\.parquet$")

AMORTIZED = policy(
    slate_size=10, solver={"mode": "greedy"},
    constraints=[{"name": "cap", "type": "max_count", "attribute": "category", "max": 3}],
    diversity={"method": "mmr", "weight": 0.3},
    exposure={"amortized": [{"name": "new", "attribute": "seller_tier", "target": {"new": 0.2},
                             "gain": 1.0}]})


# ------------------------------------------------------------------ helpers
def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view({8: np.uint64, 4: np.uint32}[a.dtype.itemsize])


def _same_floats(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(_bits(a), _bits(b))


def _same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return _same_floats(np.float64(a), np.float64(b))


def assert_same_request(a: RerankRequest, b: RerankRequest) -> None:
    assert (a.policy, a.slate_size, a.solver, a.explain, a.request_id, a.user_id) == (
        b.policy, b.slate_size, b.solver, b.explain, b.request_id, b.user_id)
    assert _same_float(a.budget_ms, b.budget_ms) and _same_float(a.deadline_ms, b.deadline_ms)
    assert list(a.objective_weights) == list(b.objective_weights)
    assert all(_same_float(a.objective_weights[k], b.objective_weights[k]) for k in a.objective_weights)
    assert [(r, list(s)) for r, s in a.targets.items()] == [(r, list(s)) for r, s in b.targets.items()]
    assert all(_same_float(a.targets[r][v], b.targets[r][v]) for r in a.targets for v in a.targets[r])
    ca, cb = a.candidates, b.candidates
    assert list(ca.item_ids) == list(cb.item_ids)
    for kind in ("scores", "numeric"):
        ma, mb = getattr(ca, kind), getattr(cb, kind)
        assert list(ma) == list(mb), kind  # same columns, same order
        for name in ma:
            assert mb[name].dtype == np.float64 and _same_floats(ma[name], mb[name]), (kind, name)
    assert list(ca.attributes) == list(cb.attributes)
    for name, attr in ca.attributes.items():
        other = cb.attributes[name]
        assert other.codes.dtype == np.int64 and np.array_equal(attr.codes, other.codes)
        assert other.dictionary == attr.dictionary and type(other.dictionary) is tuple
    if ca.embeddings is None:
        assert cb.embeddings is None
    else:
        assert cb.embeddings.dtype == np.float32 and _same_floats(ca.embeddings, cb.embeddings)


def assert_same_record(a: DecisionRecord, b: DecisionRecord) -> None:
    assert_same_request(a.request(), b.request())
    for f in ("ts", "request_id", "unit_id", "policy", "policy_digest", "policy_version",
              "experiment", "variant", "bucket", "holdout", "seed", "slate_item_ids",
              "marginal_samples", "diagnostics"):
        assert getattr(a, f) == getattr(b, f), f
    assert np.array_equal(a.slate_index, b.slate_index) and b.slate_index.dtype == np.int32
    assert _same_float(a.joint, b.joint)
    for f in ("cascade", "marginal"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None and y is None) or _same_floats(x, y), f
    if a.boosts is None:
        assert b.boosts is None
    else:
        assert [(k, list(v)) for k, v in a.boosts.items()] == [(k, list(v)) for k, v in b.boosts.items()]
        assert all(_same_float(a.boosts[k][v], b.boosts[k][v]) for k in a.boosts for v in a.boosts[k])


TRICKY = np.array([-0.0, 0.0, 1e-300, 5e-324, 2.2250738585072014e-308 / 3, -1e308, 1.7976931348623157e308,
                   0.1, 1 / 3, -2.5], dtype=np.float64)  # -0.0, subnormals, extremes


def _record(i: int, *, embeddings: str = "dense", n: int = 10) -> DecisionRecord:
    """A hand-made record using every column type."""
    rng = np.random.default_rng(i)
    scores = np.resize(TRICKY, n).copy()
    rng.shuffle(scores)
    ids = [f"ïtem-{i}-{j}-日本-🛒" for j in range(n)]
    if embeddings == "dense":
        e = rng.normal(size=(n, 4)).astype(np.float32)
        e[0, :] = np.array([-0.0, 1e-45, 3.4e38, -1.5], dtype=np.float32)  # -0.0, subnormal float32
    elif embeddings == "empty":
        e = np.zeros((n, 0), dtype=np.float32)
    else:
        e = None
    numeric = rng.uniform(-1, 1, n)
    numeric[1] = np.nan
    cands = Candidates(
        item_ids=ids,
        scores={"p_click": scores, "zeta": -scores, "alpha": np.full(n, -0.0)},  # not sorted by name
        attributes={"category": Attribute.from_values([f"catégorie-{j % 3}" for j in range(n)]),
                    "seller_tier": Attribute(np.array([j % 2 for j in range(n)], np.int64), ("nëw", "old", "unused"))},
        numeric={"price": numeric}, embeddings=e)
    return DecisionRecord(
        ts=datetime(2026, 1, 2, 3, 4, 5, 123456 + i, tzinfo=timezone.utc), request_id=f"req-{i}-é",
        unit_id=f"user-{i}", policy="home_feed", policy_digest="ab" * 32, policy_version="v1",
        experiment="exp-1" if i % 2 else None, variant="treatment" if i % 2 else None,
        bucket=i * 37 % 10_000 if i % 2 else -1, holdout=i % 3 == 0,
        seed=(2**64 - 1 - i) if i % 2 else None, request_policy="home_feed", candidates=cands,
        slate_size=5, budget_ms=7.5, solver="greedy" if i % 2 else None,
        objective_weights={"p_click": 1.0, "zeta": -0.0, "alpha": 5e-324},
        explain=bool(i % 2), targets={"calib": {"nëw": 0.25, "old": 0.75}} if i % 2 else {},
        user_id=f"user-{i}", deadline_ms=12.25 if i % 2 else None,
        boosts={"seller_tier": {"nëw": 1e-300, "old": -0.0}} if i % 3 else (None if i % 2 else {}),
        slate_index=np.array([3, 1, 4, 0, 2], np.int32), slate_item_ids=tuple(ids[k] for k in (3, 1, 4, 0, 2)),
        diagnostics=Diagnostics("greedy", "relaxed" if i % 2 else "optimal", 1.5 + i, None if i % 2 else 2.0,
                                None if i % 2 else 0.25, "" if i % 2 else "skipped: dpp", 7.5, n,
                                ("cap", "fair") if i % 2 else ()),
        joint=0.125 if i % 2 else None,
        cascade=np.array([0.5, 0.25, 0.125, 0.0625, 0.03125]) if i % 2 else None,
        marginal=np.array([0.5, 0.4, 0.3, 0.2, 1e-300]) if i % 2 else None,
        marginal_samples=0 if i % 4 else 20_000)


class ListSink:
    """An in-memory sink: the batches written."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.lost = 0
        self.closed = False

    def write(self, batch):
        self.batches.append(batch)

    def flush(self):
        pass

    def close(self):
        self.closed = True

    @property
    def rows(self) -> int:
        return sum(b.num_rows for b in self.batches)


class SlowSink(ListSink):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def write(self, batch):
        time.sleep(self.seconds)
        super().write(batch)


class FailingSink(ListSink):
    """Fails its first `failures` writes (None: every write) like a full disk."""

    def __init__(self, failures: int | None) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    def write(self, batch):
        self.attempts += 1
        if self.failures is None or self.attempts <= self.failures:
            raise OSError(28, "No space left on device")
        super().write(batch)


class GatedSink:
    """Wraps a sink; every write waits for `gate` (`entered` is set when one starts)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.lost = 0

    def write(self, batch):
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.inner.write(batch)

    def flush(self):
        self.inner.flush()

    def close(self):
        self.inner.close()


def _wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


def _accounted(log: DecisionLog) -> None:
    s = log.stats
    assert s.offered == s.written + s.dropped + s.queued, s.as_dict()


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("embeddings", ["dense", "empty", "none"])
def test_every_column_type_round_trips_through_parquet_bit_for_bit(tmp_path, embeddings):
    records = [_record(i, embeddings=embeddings) for i in range(12)]
    records.append(_record(99, embeddings=embeddings, n=300))  # long columns: dictionary encoding
    with DecisionLog(ParquetSink(tmp_path), batch_size=5) as log:
        for r in records:
            assert log.offer(r)
    assert log.stats.written == len(records)
    back = from_table(read_log(tmp_path))
    assert len(back) == len(records)
    for a, b in zip(records, back):
        assert_same_record(a, b)
    assert back[0].ts.tzinfo is not None and back[0].ts.microsecond == 123456
    files = log_files(tmp_path)
    assert files and all(NAME.match(f.name) for f in files)
    for f in files:  # the schema version is in every file's metadata
        assert pq.read_metadata(f).metadata[VERSION_KEY] == SCHEMA_VERSION.encode() == b"1"
        assert pq.read_schema(f).equals(DECISION_SCHEMA)


def test_a_batch_round_trips_without_a_file_and_records_do_not_share_the_tables_buffers():
    records = [_record(i) for i in range(4)]
    table = pa.Table.from_batches([to_batch(records, writer="w", dropped=3)])
    assert table.column("log_writer").to_pylist() == ["w"] * 4
    back = from_table(table)
    del table
    for a, b in zip(records, back):
        assert_same_record(a, b)
    assert back[0].candidates.scores["p_click"].flags.writeable


def test_a_log_of_another_schema_version_is_refused_naming_the_file(tmp_path):
    table = pa.Table.from_batches([to_batch([_record(0)])])
    bad = tmp_path / "decisions-20260101T000000Z-000001.parquet"
    pq.write_table(table.replace_schema_metadata({VERSION_KEY: b"2"}), bad)
    with pytest.raises(ValueError, match=r"decisions-20260101T000000Z-000001\.parquet: decision log "
                                         r"schema version '2', this reader reads version '1'"):
        read_log(tmp_path)


# ------------------------------------------------------------------ replay of a whole log
def _skewed(seed: int) -> Candidates:
    """New sellers score a little lower: the amortized rule has to boost them."""
    c = candidates(80, seed=seed, rare=0.06)
    tiers = np.array(c.attributes["seller_tier"].values())
    scores = {**c.scores, "p_click": np.where(tiers == "new", 0.8, 1.0) * c.scores["p_click"]}
    return Candidates(c.item_ids, scores, c.attributes, c.numeric, c.embeddings)


def test_a_whole_log_replays_through_decide_to_the_same_slates(tmp_path):
    eng = engine_with(AMORTIZED)
    served = []
    with DecisionLog(ParquetSink(tmp_path, max_bytes=100_000), batch_size=7) as log:
        for k in range(40):
            req = RerankRequest("p", _skewed(k), request_id=f"r-{k}", user_id=f"u-{k % 5}",
                                explain=k % 4 == 0,
                                objective_weights={"p_purchase": 2.0} if k % 3 == 0 else {})
            version = eng.version(req.policy)
            snapshots = {ns: eng.ledger.snapshot(ns) for ns in version.ledger_namespaces()}
            decision = decide(version, req, limits=eng.limits, snapshots=snapshots)
            for namespace, deltas in decision.deltas.items():  # as Engine.rerank does
                eng.ledger.record(namespace, deltas)
            if k % 2:  # both ways of handing a decision over
                assert log.offer(DecisionRecord.of(req, decision))
            else:
                assert log.offer_decision(req, decision)
            served.append(decision)
    assert log.stats.written == 40 and len(log_files(tmp_path)) > 1
    records = from_table(read_log(tmp_path))
    assert [r.request_id for r in records] == [f"r-{k}" for k in range(40)]
    assert sum(1 for r in records if r.boosts and r.boosts["seller_tier"].get("new", 0) > 0) > 10
    assert len({tuple(sorted(r.boosts.get("seller_tier", {}).items())) for r in records}) > 10  # they move
    for rec, original in zip(records, served):
        replay = decide(eng.version(rec.policy, rec.policy_digest), rec.request(), limits=eng.limits,
                        boosts=rec.boosts)
        result = replay.result
        assert [it.item_id for it in result.items] == list(rec.slate_item_ids)
        assert [it.index for it in result.items] == rec.slate_index.tolist()
        assert _same_float(result.objective, rec.diagnostics.objective)
        assert _same_float(result.objective, original.result.objective)
        assert replay.deltas == original.deltas


# ------------------------------------------------------------------ the writer: never blocks, counts
def test_a_full_queue_drops_and_counts_and_offer_never_blocks():
    sink = SlowSink(0.3)
    log = DecisionLog(sink, queue_size=20, batch_size=5, flush_s=0.01)
    record = _record(1)
    t0 = time.perf_counter()
    accepted = [log.offer(record) for _ in range(2000)]
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.25  # 2000 offers while the sink sleeps 0.3 s per write
    s = log.stats
    assert s.offered == 2000 and s.dropped_full == accepted.count(False) > 1900
    _accounted(log)
    assert log.close(timeout_s=30)
    assert sink.rows == accepted.count(True) == s.written
    assert s.dropped == s.dropped_full and s.queued == 0
    _accounted(log)


def test_a_failing_sink_is_counted_logged_retried_and_the_log_keeps_accepting(caplog):
    sink = FailingSink(failures=3)
    log = DecisionLog(sink, batch_size=4, flush_s=0.01, retry_initial_s=0.01, retry_max_s=0.05)
    with caplog.at_level(logging.WARNING, logger="engine.decision_log"):
        for i in range(30):
            assert log.offer(_record(i))
            time.sleep(0.002)
        assert log.flush(timeout_s=10)
    assert sink.attempts > 3 and log.stats.write_errors == 3
    assert sink.rows == log.stats.written == 30 and log.stats.dropped == 0
    assert [r.request_id for r in from_table(pa.concat_tables(sink.batches))] == [
        f"req-{i}-é" for i in range(30)]  # held batches are written in order
    failures = [r for r in caplog.records if r.getMessage() == "decision log sink write failed"]
    assert failures and failures[0].name == "engine.decision_log"
    assert "No space left on device" in failures[0].error
    assert len(failures) == 1  # rate-limited: one line per 10 s
    assert log.close()


def test_a_sink_that_never_recovers_holds_a_bounded_number_of_batches_then_drops():
    sink = FailingSink(failures=None)
    log = DecisionLog(sink, queue_size=10, batch_size=5, max_held_batches=2, flush_s=0.01,
                      retry_initial_s=0.01, retry_max_s=0.02)
    record = _record(2)
    accepted = 0
    for _ in range(200):
        accepted += log.offer(record)
        time.sleep(0.001)
    assert accepted <= 10 + 2 * 5 + 5  # queue + held batches (+ one being converted)
    assert log.stats.dropped_full == 200 - accepted and log.stats.write_errors > 2
    _accounted(log)
    t0 = time.perf_counter()
    assert log.close(timeout_s=0.3) is False  # the sink is still failing: given up at the timeout
    assert time.perf_counter() - t0 < 2.0
    s = log.stats
    assert s.written == 0 and s.dropped_unwritten == accepted and s.queued == 0
    assert s.dropped == 200 and sink.closed
    assert not log.offer(record) and log.stats.dropped_closed == 1


def test_close_writes_everything_queued_and_later_offers_are_refused(tmp_path):
    log = DecisionLog(ParquetSink(tmp_path), batch_size=1000, flush_s=60.0)  # never due by itself
    for i in range(50):
        log.offer(_record(i))
    assert log.stats.queued == 50 and log_files(tmp_path) == []
    assert log.close(timeout_s=10)
    assert read_log(tmp_path).num_rows == 50 and log.stats.written == 50
    assert not list(tmp_path.glob("*.tmp"))
    assert log.offer(_record(0)) is False and log.stats.dropped_closed == 1
    assert log.close() is True  # idempotent


def test_offer_decision_builds_the_same_record_on_the_writer_thread():
    eng = engine_with(AMORTIZED)
    req = RerankRequest("p", _skewed(3), request_id="r-3", user_id="", targets={})
    decision = decide(eng.version("p"), req, limits=eng.limits)
    sink = ListSink()
    t0 = datetime.now(timezone.utc)
    with DecisionLog(sink) as log:
        assert log.offer_decision(req, decision, experiment="e", variant="b", bucket=7, seed=11)
        assert log.offer_decision(req, decision.result, boosts=decision.boosts)  # a bare result
        assert log.offer_decision(req, None)  # not an answer: dropped on the writer thread
    assert log.stats.written == 2 and log.stats.dropped_invalid == 1
    first, second = from_table(pa.concat_tables(sink.batches))
    expected = DecisionRecord.of(req, decision, ts=first.ts, experiment="e", variant="b", bucket=7, seed=11)
    assert_same_record(first, expected)
    assert first.unit_id == "r-3"  # no user id: the request id is the unit
    assert t0 <= first.ts <= datetime.now(timezone.utc)
    assert_same_record(second, DecisionRecord.of(req, decision, ts=second.ts))


def test_a_malformed_record_is_dropped_alone():
    sink = ListSink()
    bad = replace(_record(3), slate_item_ids=(1, 2, 3))  # not strings
    with DecisionLog(sink, batch_size=3) as log:
        for r in (_record(0), bad, _record(1)):
            assert log.offer(r)
    assert log.stats.dropped_invalid == 1 and log.stats.written == 2 and sink.rows == 2
    assert log.offer("not a record") is False  # even garbage does not raise


# ------------------------------------------------------------------ Parquet files
def test_files_rotate_by_size_and_are_complete_no_tmp_left(tmp_path):
    with DecisionLog(ParquetSink(tmp_path, max_bytes=20_000), batch_size=3) as log:
        for i in range(30):
            log.offer(_record(i, n=40))
    files = log_files(tmp_path)
    assert len(files) >= 3 and all(NAME.match(f.name) for f in files)
    assert len({f.name for f in files}) == len(files)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 30  # each file complete
    assert read_log(tmp_path).column("request_id").to_pylist() == [f"req-{i}-é" for i in range(30)]


def test_files_rotate_by_time_and_a_reader_never_sees_the_open_file(tmp_path):
    sink = ParquetSink(tmp_path, max_seconds=0.2)
    sink.write(to_batch([_record(0)]))
    assert [p.name for p in tmp_path.iterdir()][0].endswith(".parquet.tmp")
    assert read_log(tmp_path).num_rows == 0  # the file being written is not read
    sink.flush()
    assert log_files(tmp_path) == []  # not old enough yet
    time.sleep(0.25)
    sink.flush()  # the log calls this every flush_s, traffic or not
    assert len(log_files(tmp_path)) == 1 and read_log(tmp_path).num_rows == 1

    log = DecisionLog(ParquetSink(tmp_path / "timed", max_seconds=0.15), batch_size=1, flush_s=0.02)
    for i in range(12):
        log.offer(_record(i))
        time.sleep(0.05)
    assert len(log_files(tmp_path / "timed")) >= 2  # finished while the log was running
    assert log.close()
    assert read_log(tmp_path / "timed").num_rows == 12


def test_two_sinks_sharing_a_folder_never_replace_each_others_files(tmp_path):
    a, b = ParquetSink(tmp_path), ParquetSink(tmp_path)
    for sink, i in ((a, 0), (b, 1), (a, 2), (b, 3)):
        sink.write(to_batch([_record(i)]))
    a.close()
    b.close()
    assert len(log_files(tmp_path)) == 2
    assert sorted(read_log(tmp_path).column("request_id").to_pylist()) == [f"req-{i}-é" for i in range(4)]


def test_a_file_that_cannot_be_finished_is_counted_lost_and_the_log_goes_on(tmp_path):
    folder = tmp_path / "logs"
    log = DecisionLog(ParquetSink(folder, max_bytes=1), batch_size=2, flush_s=0.01,
                      retry_initial_s=0.01)
    sink = log.sink
    real_publish = sink._publish
    calls = []

    def failing_publish(tmp, final):  # the link fails once (as on a full disk)
        calls.append(final)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_publish(tmp, final)

    sink._publish = failing_publish
    for i in range(6):
        log.offer(_record(i))
    assert log.close(timeout_s=10)
    s = log.stats
    assert s.write_errors == 1 and s.dropped_sink == 0  # the failed batch was retried whole
    assert read_log(folder).num_rows == 6 == s.written
    assert not list(folder.glob("*.tmp"))


def test_a_failed_write_loses_the_open_files_rows_and_says_so(tmp_path):
    log = DecisionLog(ParquetSink(tmp_path), batch_size=2, flush_s=0.01, retry_initial_s=0.01)
    sink = log.sink
    for i in range(2):
        log.offer(_record(i))
    assert log.flush() and sink.open_rows == 2 and log_files(tmp_path) == []
    writer = sink._writer

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    writer.write_table = disk_full  # the next write into this file fails
    for i in range(2, 4):
        log.offer(_record(i))
    assert log.close(timeout_s=10)
    s = log.stats
    assert s.write_errors == 1 and s.dropped_sink == 2 and s.written == 2 and s.dropped == 2
    _accounted(log)
    assert read_log(tmp_path).column("request_id").to_pylist() == ["req-2-é", "req-3-é"]  # retried
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------ Redis Streams
def test_redis_stream_sink_round_trip(redis_server):
    records = [_record(i) for i in range(9)]
    with DecisionLog(RedisStreamSink(redis_server.url, "test:decisions"), batch_size=4) as log:
        for r in records:
            assert log.offer(r)
    assert log.stats.written == 9
    client = redis.Redis.from_url(redis_server.url)
    assert client.xlen("test:decisions") == 3  # one entry per batch: 4 + 4 + 1
    back = read_stream(redis_server.url, "test:decisions")
    for a, b in zip(records, back, strict=True):
        assert_same_record(a, b)
    assert read_log(redis_server.url, stream="test:decisions").num_rows == 9
    client.close()


def test_redis_stream_is_trimmed_approximately(redis_server):
    sink = RedisStreamSink(redis_server.url, "trim", maxlen=10)
    batch = to_batch([_record(0, n=5)])
    for _ in range(400):
        sink.write(batch)
    client = redis.Redis.from_url(redis_server.url)
    assert 10 <= client.xlen("trim") < 400
    sink.close()
    client.close()


def test_redis_down_is_counted_not_raised_and_held_batches_are_written_after(redis_server):
    log = DecisionLog(RedisStreamSink(redis_server.url, "down", timeout_s=0.2), batch_size=2,
                      flush_s=0.01, retry_initial_s=0.02, retry_max_s=0.1)
    redis_server.kill()
    for i in range(6):
        assert log.offer(_record(i))
    deadline = time.monotonic() + 5
    while log.stats.write_errors < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.stats.write_errors >= 2 and log.stats.written == 0 and log.stats.queued == 6
    redis_server.start()  # same port, empty
    assert log.flush(timeout_s=10)
    assert log.close()
    assert log.stats.written == 6 and log.stats.dropped == 0
    assert [r.request_id for r in read_stream(redis_server.url, "down")] == [f"req-{i}-é" for i in range(6)]


# ------------------------------------------------------------------ sampling
def test_sampling_hash_vectors():
    # published vectors: blake2b(id, digest_size=8, person=b"reranker.dlog"), big-endian
    assert sampling_hash("request-1") == 0x5b32ae1c13852ae5
    assert sampling_hash("") == 0x58ac8f456b99c8f5
    assert sampling_hash("日本-🛒") == 0xc7d67506266893ce


def test_sampling_is_deterministic_and_honours_the_rate():
    ids = [f"req-{i}" for i in range(100_000)]
    for rate in (0.01, 0.1, 0.5):
        got = [sampled(i, rate) for i in ids]
        share = sum(got) / len(ids)
        assert abs(share - rate) <= 0.01  # within 1 % (the target)
        assert abs(share - rate) <= 4 * (rate * (1 - rate) / len(ids)) ** 0.5  # and as a fair coin
        assert got == [sampled(i, rate) for i in ids]  # same id, same answer
    low, high = ({i for i in ids if sampled(i, r)} for r in (0.1, 0.5))
    assert low <= high  # raising the rate only adds ids
    sink = ListSink()
    a = DecisionLog(sink, sample_rate=0.2)
    b = DecisionLog(ListSink(), sample_rate=0.2, exploration_sample_rate=0.5)
    assert [a.should_log(i) for i in ids[:2000]] == [b.should_log(i) for i in ids[:2000]]
    assert all(a.should_log(i, exploration=True) for i in ids[:2000])  # 100 % by default
    assert abs(sum(b.should_log(i, exploration=True) for i in ids) / len(ids) - 0.5) <= 0.01
    assert DecisionLog(ListSink(), sample_rate=0.0).should_log("x") is False
    for log in (a, b):
        log.close()


# ------------------------------------------------------------------ outcomes
def test_outcomes_are_logged_read_and_joined_by_request_id_and_position(tmp_path):
    decisions = [_record(i) for i in range(4)]
    with DecisionLog(ParquetSink(tmp_path / "decisions")) as log:
        for r in decisions:
            log.offer(r)
    t = datetime(2026, 1, 3, tzinfo=timezone.utc)
    with outcome_log(tmp_path / "outcomes", batch_size=2) as out:
        for o in (OutcomeRecord("req-1-é", 1, decisions[1].slate_item_ids[0], clicks=1, ts=t),
                  OutcomeRecord("req-1-é", 1, "", clicks=1, purchases=1, ts=t),  # a second report
                  OutcomeRecord("req-1-é", 3, "", add_to_carts=2, ts=t),
                  OutcomeRecord("req-3-é", 5, "", clicks=1),
                  OutcomeRecord("unknown", 1, "", clicks=9)):  # no such decision: not joined
            assert out.offer(o)
    assert out.stats.written == 5
    outcomes = read_outcomes(tmp_path / "outcomes")
    assert outcomes.num_rows == 5 and outcomes.column("ts").to_pylist()[0] == t
    joined = join_outcomes(read_log(tmp_path / "decisions"), outcomes)
    assert joined.num_rows == 4 * 5  # one row per decision and position, in log order
    rows = joined.to_pylist()
    assert [(r["request_id"], r["position"]) for r in rows] == [
        (f"req-{i}-é", p) for i in range(4) for p in range(1, 6)]
    by = {(r["request_id"], r["position"]): r for r in rows}
    assert (by["req-1-é", 1]["clicks"], by["req-1-é", 1]["purchases"]) == (2, 1)
    assert by["req-1-é", 3]["add_to_carts"] == 2 and by["req-3-é", 5]["clicks"] == 1
    assert sum(r["clicks"] + r["add_to_carts"] + r["purchases"] for r in rows) == 6  # 0 elsewhere
    assert by["req-1-é", 2]["item_id"] == decisions[1].slate_item_ids[1]
    assert by["req-1-é", 2]["candidate_index"] == 1
    assert by["req-1-é", 2]["cascade"] == 0.25 and by["req-1-é", 2]["marginal"] == 0.4
    assert by["req-0-é", 2]["cascade"] is None and by["req-0-é", 2]["joint"] is None
    with pytest.raises(ValueError, match="position: must be an integer >= 1, got 0"):
        OutcomeRecord("r", 0, "")


# ------------------------------------------------------------------ summary
def test_summarise_counts_revisions_variants_statuses_and_notes_drops(tmp_path):
    sink = GatedSink(ParquetSink(tmp_path))
    log = DecisionLog(sink, queue_size=1, batch_size=1, max_held_batches=2, flush_s=60.0)
    log.offer(_record(0))
    assert sink.entered.wait(10)  # record 0 is being written (held until the gate opens)
    log.offer(_record(1))
    _wait_until(lambda: not log._queue)  # taken: the converter holds it, then waits for room
    for i in range(2, 8):  # 2 queued (queue_size 1), 3..7 dropped
        log.offer(_record(i))
    assert log.stats.dropped_full == 5
    sink.gate.set()
    assert log.close()
    with DecisionLog(ParquetSink(tmp_path)) as log2:
        for i in range(3, 7):
            log2.offer(_record(i))
    table = read_log(tmp_path, columns=None)
    s = summarise(table)
    assert s["records"] == 7
    assert s["first_ts"] == "2026-01-02T03:04:05.123456+00:00"
    assert s["last_ts"] == "2026-01-02T03:04:05.123462+00:00"
    assert s["policies"] == [{"policy": "home_feed", "policy_digest": "ab" * 32, "policy_version": "v1",
                              "records": 7}]
    assert s["variants"] == [{"experiment": "exp-1", "variant": "treatment", "records": 3}]
    assert s["mean_slate_length"] == 5.0
    assert s["statuses"] == {"optimal": 4, "relaxed": 3} and s["relaxed"] == {"cap": 3, "fair": 3}
    assert s["with_propensities"] == 3 and s["writers"] == 2
    assert s["dropped"] == 5 and "at least 5 record(s) were dropped by 2 writer(s)" in s["dropped_note"]
    (tmp_path / "nothing-here").mkdir()
    assert summarise(read_log(tmp_path / "nothing-here")) == {"records": 0}


def test_offer_is_safe_from_many_threads():
    sink = ListSink()
    log = DecisionLog(sink, batch_size=16, flush_s=0.01)
    record = _record(5)

    def produce():
        for _ in range(500):
            log.offer(record)

    threads = [threading.Thread(target=produce) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.close(timeout_s=30)
    assert log.stats.offered == 4000 == log.stats.written == sink.rows


def test_reading_a_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such log file or folder: .*missing"):
        read_log(tmp_path / "missing")
    assert os.path.exists(tmp_path)
