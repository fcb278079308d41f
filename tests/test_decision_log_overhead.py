"""What keeps the decision log off the request threads' way (engine.decision_log): strings
encoded without a Python step per value (checked against encoding each one), records staged so
that the request is freed before its batch is written, the converter's pauses, the writer
thread's lowered priority, and the options that set them."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import weakref
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from engine.decision_log import DecisionLog, from_table, to_batch
from engine.decision_log import writer as writer_module
from engine.decision_log.schema import Staged, _utf8, assemble
from engine.types import Candidates
from tests.test_decision_log import ListSink, _record, _wait_until

STRINGS = [
    [], [""], ["", ""], ["a"], ["abc", "", "d"], ["ïtem-日本-🛒", "x", "€"],
    ["nul\x00inside", "b"], ["\x00"], ["\x00", "", "\x00\x00"], ["a\x00", "\x00b", "plain"],
    [f"item-{i}" for i in range(1000)],
]


@pytest.mark.parametrize("values", STRINGS, ids=range(len(STRINGS)))
def test_utf8_matches_encoding_each_string(values):
    data, lengths = _utf8(values)
    encoded = [v.encode("utf-8") for v in values]
    assert data.dtype == np.uint8 and lengths.dtype == np.int64
    assert data.tobytes() == b"".join(encoded)
    assert lengths.tolist() == [len(e) for e in encoded]


def test_utf8_of_a_sequence_that_is_not_a_list():
    values = tuple(f"v{i}" for i in range(5))
    data, lengths = _utf8(values)
    assert data.tobytes() == b"v0v1v2v3v4" and lengths.tolist() == [2] * 5


def test_utf8_refuses_a_value_that_is_not_a_string():
    with pytest.raises(TypeError):
        _utf8(["a", 5])


def _same(a: pa.RecordBatch, b: pa.RecordBatch) -> bool:
    """Equal bit for bit (RecordBatch.equals says NaN != NaN)."""
    def ipc(batch):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as w:
            w.write_batch(batch)
        return sink.getvalue().to_pybytes()
    return ipc(a) == ipc(b)


def _with_ids(rec, ids: list[str]):
    c = rec.candidates
    return replace(rec, candidates=Candidates(ids, c.scores, c.attributes, c.numeric, c.embeddings))


def test_odd_ids_round_trip_through_a_batch():
    ids = ["", "nul\x00id", "\x00", "日本", "a", "", "b\x00", "c", "d", "e"]
    records = [_with_ids(_record(0), ids), _record(1)]
    back = from_table(to_batch(records))
    assert list(back[0].candidates.item_ids) == ids
    assert list(back[1].candidates.item_ids) == list(records[1].candidates.item_ids)


def test_pauses_come_between_pieces_and_do_not_change_the_batch():
    records = [_record(i) for i in range(6)]
    calls = []
    paused = to_batch(records, writer="w", dropped=2, pause=lambda: calls.append(1))
    assert _same(paused, to_batch(records, writer="w", dropped=2))
    assert len(calls) >= 3 * len(records)  # at least: ids, attributes, embeddings of each record


def test_assemble_of_staged_records_equals_to_batch():
    records = [_record(i, embeddings=e) for i, e in enumerate(("dense", "none", "empty", "dense"))]
    staged = [Staged(r) for r in records]
    assert _same(assemble(staged, writer="w", dropped=0), to_batch(records, writer="w", dropped=0))
    assert all(s.rec.candidates.n == 0 for s in staged)  # the staged record keeps no candidates
    assert all(s.nbytes > 1024 for s in staged)


def test_a_staged_record_frees_the_request_before_its_batch_is_written():
    sink = ListSink()
    log = DecisionLog(sink, batch_size=100, flush_s=60.0, stage_size=100, stage_every_s=0.005)
    rec = _record(3)
    scores = rec.candidates.scores["p_click"]
    alive = weakref.ref(scores)
    expected = scores.copy()
    assert log.offer(rec)
    del rec, scores

    def freed() -> bool:
        gc.collect()
        return alive() is None

    _wait_until(freed, timeout_s=10)
    assert sink.rows == 0 and log.pending() == 1  # staged, not written: the batch is not full
    assert log.close(timeout_s=10)
    (back,) = from_table(sink.batches[0])
    assert back.candidates.scores["p_click"].tobytes() == expected.tobytes()


def test_the_pacer_sleeps_only_once_a_slice_of_work_has_gone_by(monkeypatch):
    slept = []
    monkeypatch.setattr(writer_module.time, "sleep", lambda s: slept.append(s))
    never = writer_module._Pacer(None, 0.001)
    for _ in range(5):
        never()
    assert slept == []
    pacer = writer_module._Pacer(3600.0, 0.001)  # an hour's slice: not over yet
    pacer()
    assert slept == []
    pacer = writer_module._Pacer(1e-9, 0.002)
    t = time.perf_counter()
    while time.perf_counter() - t < 1e-6:
        pass
    pacer()
    assert slept == [0.002]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_the_writer_thread_runs_at_a_lower_priority_and_the_caller_does_not():
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    log = DecisionLog(ListSink(), writer_nice=5)
    try:
        _wait_until(lambda: log._thread.native_id is not None)
        tid = log._thread.native_id
        _wait_until(lambda: os.getpriority(os.PRIO_PROCESS, tid) == min(19, before + 5))
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    finally:
        assert log.close()


@pytest.mark.parametrize("options, message", [
    ({"convert_slice_s": 0}, "DecisionLog convert_slice_s: must be a number > 0 or None, got 0"),
    ({"convert_slice_s": "fast"}, "DecisionLog convert_slice_s: must be a number > 0 or None, got 'fast'"),
    ({"convert_sleep_s": -1}, "DecisionLog convert_sleep_s: must be a number > 0, got -1"),
    ({"stage_every_s": 0}, "DecisionLog stage_every_s: must be a number > 0, got 0"),
    ({"stage_size": 0}, "DecisionLog stage_size: must be an integer >= 1, got 0"),
    ({"writer_nice": 20}, r"DecisionLog writer_nice: must be an integer in \[0, 19\], got 20"),
    ({"writer_nice": 1.5}, r"DecisionLog writer_nice: must be an integer in \[0, 19\], got 1.5"),
])
def test_the_new_options_are_checked_naming_them(options, message):
    with pytest.raises(ValueError, match=message):
        DecisionLog(ListSink(), **options)
