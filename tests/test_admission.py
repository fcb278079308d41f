"""Admission control over a real channel: batch and work caps, the heavy lane, calls shed after
expiring in the queue (counted), errors that carry the worker's pid, and log lines of bounded size."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health

from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.admission import Admission, AdmissionLimits
from server.app import create_server, set_serving
from server.errors import FIELD_METADATA_KEY
from server.logging_setup import MAX_LINE_CHARS, JsonFormatter
from server.metrics import ServerMetrics
from server.servicer import WORKER_PID_METADATA_KEY

from tests.test_server import example_request, grown_request

TIMEOUT_S = 30.0
PID = str(os.getpid())


@pytest.fixture
def serve(engine):
    """serve(limits, max_workers=2, engine=engine) -> (stub, servicer's admission, metrics)."""
    started = []

    def make(limits: AdmissionLimits | None = None, max_workers: int = 2, eng=None):
        metrics = ServerMetrics()
        h = health.HealthServicer()
        server, port = create_server("127.0.0.1:0", eng or engine, max_workers=max_workers,
                                     health_servicer=h, metrics=metrics, admission=limits)
        server.start()
        set_serving(h, True)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        stub = pb_grpc.RerankerStub(channel)
        stub.raw_channel = channel  # for calls with hand-made bytes
        return stub, metrics

    yield make
    for server, channel in started:
        channel.close()
        server.stop(None)


def _trailing(err: grpc.RpcError) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in err.trailing_metadata() or ():
        out.setdefault(k, []).append(v)
    return out


def _metric(metrics: ServerMetrics, name: str, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_batch_over_the_cap_is_refused_naming_requests(serve):
    stub, metrics = serve(AdmissionLimits(max_batch=3))
    req = example_request()
    assert len(stub.RerankBatch(pb.RerankBatchRequest(requests=[req] * 3), timeout=TIMEOUT_S).results) == 3
    with pytest.raises(grpc.RpcError) as info:
        stub.RerankBatch(pb.RerankBatchRequest(requests=[req] * 4), timeout=TIMEOUT_S)
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == ("requests: at most 3 requests per RerankBatch on this server (reranker "
                             "serve --max-batch), got 4; split the batch")
    meta = _trailing(err)
    assert meta[FIELD_METADATA_KEY] == ["requests"] and meta[WORKER_PID_METADATA_KEY] == [PID]
    assert _metric(metrics, "reranker_shed_total", reason="batch_too_large") == 1
    assert _metric(metrics, "reranker_errors_total", method="RerankBatch", code="RESOURCE_EXHAUSTED") == 1


def test_a_request_over_the_work_cap_is_refused_before_decoding(serve):
    stub, metrics = serve(AdmissionLimits(max_work=100_000))
    small = example_request()  # 50 candidates
    stub.Rerank(small, timeout=TIMEOUT_S)
    big = grown_request(3000)  # 3000 x K=10 (home_feed) = 30,000: fine without explain ...
    stub.Rerank(big, timeout=TIMEOUT_S)
    big.explain = True  # ... but explain runs one greedy more per rule
    with pytest.raises(grpc.RpcError) as info:
        stub.Rerank(big, timeout=TIMEOUT_S)
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details().startswith("candidates.item_ids: this request asks for ")
    assert "over this server's limit of 100,000 (reranker serve --max-work)" in err.details()
    assert _trailing(err)[WORKER_PID_METADATA_KEY] == [PID]
    assert _metric(metrics, "reranker_shed_total", reason="work_too_large") == 1
    # a batch counts the sum of its entries
    with pytest.raises(grpc.RpcError) as info:
        stub.RerankBatch(pb.RerankBatchRequest(requests=[grown_request(3000)] * 4), timeout=TIMEOUT_S)
    # (home_feed is in auto mode: its exact model counts as much again, 4 x 2 x 30,000)
    assert info.value.details().startswith("candidates.item_ids: this batch's requests ask for 240,000 work units")


def test_exact_and_auto_mode_count_the_exact_model_too(serve):
    stub, metrics = serve(AdmissionLimits(max_work=50_000))
    auto = grown_request(3000)  # home_feed, auto mode: 3000 x 10 greedy + as much for the model
    with pytest.raises(grpc.RpcError) as info:
        stub.Rerank(auto, timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details().startswith("candidates.item_ids: this request asks for 60,000 work units")
    assert "exact or auto mode counts twice" in info.value.details()
    assert info.value.details().endswith("explain: false or solver: SOLVER_MODE_GREEDY")
    greedy = grown_request(3000)
    greedy.solver = pb.SOLVER_MODE_GREEDY  # 30,000 units: served
    assert stub.Rerank(greedy, timeout=TIMEOUT_S).diagnostics.solver == "greedy"
    exact = grown_request(3000)
    exact.solver = pb.SOLVER_MODE_EXACT
    with pytest.raises(grpc.RpcError) as info:
        stub.Rerank(exact, timeout=TIMEOUT_S)
    assert info.value.details().startswith("candidates.item_ids: this request asks for 60,000 work units")
    assert _metric(metrics, "reranker_shed_total", reason="work_too_large") == 2


def test_heavy_calls_share_one_lane_and_normal_calls_never_wait_for_it(serve):
    lane = Admission(AdmissionLimits(heavy_work=10_000))
    stub, metrics = serve(lane, max_workers=2)
    heavy = grown_request(3000)  # 60,000 units (auto mode: the exact model counts too)
    normal = example_request()  # 1,000 units
    with lane.lane(10**9):  # the test holds the lane, standing in for a long heavy call
        with pytest.raises(grpc.RpcError) as info:  # a second heavy call is refused at once
            stub.Rerank(heavy, timeout=TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details().startswith("heavy lane busy: a request of 60,000 work units runs only")
        assert _trailing(info.value)[WORKER_PID_METADATA_KEY] == [PID]
        stub.Rerank(normal, timeout=TIMEOUT_S)  # normal calls do not use the lane
    stub.Rerank(heavy, timeout=TIMEOUT_S)  # free again
    assert _metric(metrics, "reranker_shed_total", reason="heavy_lane_busy") == 1
    assert _metric(metrics, "reranker_heavy_lane_calls_total") == 2  # the test's hold + the call


class _BlockingEngine:
    """Holds its handler thread until released: the queue behind it fills."""

    def __init__(self, real) -> None:
        self.real, self.release, self.entered = real, threading.Event(), threading.Event()

    def rerank(self, req):
        self.entered.set()
        self.release.wait(30)
        return self.real.rerank(req)

    def estimate_work(self, *args):
        return self.real.estimate_work(*args)


def test_calls_that_expire_in_the_queue_are_shed_and_counted(serve, engine, caplog):
    blocking = _BlockingEngine(engine)
    stub, metrics = serve(max_workers=1, eng=blocking)
    req = example_request()
    first = stub.Rerank.future(req, timeout=TIMEOUT_S)
    assert blocking.entered.wait(10)
    with pytest.raises(grpc.RpcError) as info:  # waits behind the first call, expires there
        stub.Rerank(req, timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with caplog.at_level(logging.WARNING, logger="server.admission"):
        blocking.release.set()
        assert first.result(timeout=TIMEOUT_S).items
        message = "calls shed or refused by admission control"
        lines = lambda: [r for r in caplog.records if r.getMessage() == message]  # noqa: E731
        deadline = time.monotonic() + 10
        # the counter moves under the admission lock, the line is written just after it: wait
        # for both (the line is written on the handler's thread)
        while _metric(metrics, "reranker_shed_total", reason="deadline_in_queue") < 1 or not lines():
            assert time.monotonic() < deadline, "the expired call was never counted and logged"
            time.sleep(0.01)
    assert _metric(metrics, "reranker_errors_total", method="Rerank", code="DEADLINE_EXCEEDED") == 1
    assert [r.shed for r in lines()] == [{"deadline_in_queue": 1}]


def test_shed_calls_are_summarised_in_one_line_per_interval_even_when_shedding_stops(caplog):
    admission = Admission(AdmissionLimits(log_interval_s=0.2))
    message = "calls shed or refused by admission control"
    with caplog.at_level(logging.WARNING, logger="server.admission"):
        admission.count_shed("deadline_in_queue", method="Rerank")  # logged at once
        admission.count_shed("queue_full", method="Rerank")  # within the interval: summed ...
        admission.count_shed("deadline_in_queue", method="Rerank")
        lines = lambda: [r for r in caplog.records if r.getMessage() == message]  # noqa: E731
        assert [r.shed for r in lines()] == [{"deadline_in_queue": 1}]
        deadline = time.monotonic() + 10
        while len(lines()) < 2:  # ... and logged when the interval ends, with no further call
            assert time.monotonic() < deadline, "the rest of the interval was never summarised"
            time.sleep(0.01)
    assert [r.shed for r in lines()] == [{"deadline_in_queue": 1}, {"queue_full": 1, "deadline_in_queue": 1}]
    assert admission.shed["deadline_in_queue"] == 2 and admission.shed["queue_full"] == 1


def test_admission_limits_name_the_bad_setting():
    with pytest.raises(ValueError, match="admission max_batch: must be an integer >= 1, got 0"):
        AdmissionLimits(max_batch=0)
    with pytest.raises(ValueError, match="admission heavy_wait_s: must be a number >= 0, got -1"):
        AdmissionLimits(heavy_wait_s=-1)


# ------------------------------------------------------------------------------ log lines


def _format(**extra) -> str:
    record = logging.LogRecord("server.servicer", logging.INFO, __file__, 1, "msg " + "m" * 5000, (), None)
    for k, v in extra.items():
        setattr(record, k, v)
    return JsonFormatter().format(record)


def test_every_logged_field_is_clipped_and_the_line_is_bounded():
    line = _format(request_id="r" * 20_000, items=list(range(10_000)), nested={"a": {"b": {"c": {"d": {"e": 1}}}}},
                   blob=b"\x00" * 1_000_000)
    assert len(line) <= MAX_LINE_CHARS
    out = json.loads(line)
    assert out["request_id"].startswith("r" * 1000) and out["request_id"].endswith("...(clipped, 20000 chars)")
    assert out["msg"].endswith("...(clipped, 5004 chars)")
    assert out["items"][:20] == list(range(20)) and out["items"][20] == "...(clipped, 10000 entries)"
    assert out["blob"] == "<1000000 bytes>"


def test_a_line_with_many_large_fields_is_clipped_harder():
    line = _format(**{f"f{i}": "x" * 5000 for i in range(40)})
    assert len(line) <= MAX_LINE_CHARS
    out = json.loads(line)
    assert out["level"] == "INFO" and out["logger"] == "server.servicer"


def test_a_16_mib_request_logs_a_short_line(caplog):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.clip")
    logger.addHandler(handler)
    try:
        logger.warning("rejected", extra={"request_id": "x" * (16 << 20)})
    finally:
        logger.removeHandler(handler)
    assert len(stream.getvalue()) < 2 * 1024


def test_calls_beyond_the_queue_bound_are_refused_at_once_and_counted(serve, engine):
    blocking = _BlockingEngine(engine)
    lane = Admission(AdmissionLimits(max_queue=1))
    stub, metrics = serve(lane, max_workers=1, eng=blocking)
    req = example_request()
    first = stub.Rerank.future(req, timeout=TIMEOUT_S)  # holds the only handler thread
    assert blocking.entered.wait(10)
    second = stub.Rerank.future(req, timeout=TIMEOUT_S)  # waits in the queue ...
    deadline = time.monotonic() + 10
    while _metric(metrics, "reranker_queued_calls") < 1:
        assert time.monotonic() < deadline, "the second call never reached the queue"
        time.sleep(0.01)
    with pytest.raises(grpc.RpcError) as info:  # ... so the third is refused, not queued
        stub.Rerank(req, timeout=TIMEOUT_S)
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == ("queue full: 1 calls already wait for a handler thread on this server "
                             "process (reranker serve --max-queue); retry with backoff")
    assert _trailing(err)[WORKER_PID_METADATA_KEY] == [PID]
    assert not first.done() and not second.done()  # refused while the others still wait
    blocking.release.set()
    assert first.result(timeout=TIMEOUT_S).items and second.result(timeout=TIMEOUT_S).items
    assert _metric(metrics, "reranker_shed_total", reason="queue_full") == 1
    assert _metric(metrics, "reranker_errors_total", method="Rerank", code="RESOURCE_EXHAUSTED") == 1
    assert _metric(metrics, "reranker_queued_calls") == 0
    assert lane.waiting == 0


def test_max_queue_setting_is_checked():
    with pytest.raises(ValueError, match=r"admission max_queue: must be an integer >= 0 or None, got -1"):
        AdmissionLimits(max_queue=-1)


class _BrokenListing:
    """An engine whose ListPolicies fails (a bug): INTERNAL, still with the pid."""

    def __init__(self, real) -> None:
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def list_policies(self):
        raise RuntimeError("listing broke")


@pytest.mark.parametrize("method", ["Rerank", "RerankBatch", "ListPolicies", "ValidatePolicy"])
def test_every_error_of_every_method_carries_the_worker_pid(serve, engine, method):
    stub, _metrics = serve(AdmissionLimits(max_batch=1), eng=_BrokenListing(engine))
    bad = {
        "Rerank": lambda: stub.Rerank(pb.RerankRequest(policy="no_such_policy"), timeout=TIMEOUT_S),
        "RerankBatch": lambda: stub.RerankBatch(pb.RerankBatchRequest(requests=[example_request()] * 2),
                                                timeout=TIMEOUT_S),
        "ListPolicies": lambda: stub.ListPolicies(pb.ListPoliciesRequest(), timeout=TIMEOUT_S),
        "ValidatePolicy": lambda: stub.ValidatePolicy(pb.ValidatePolicyRequest(yaml="#" * (2 << 20)),
                                                      timeout=TIMEOUT_S),
    }[method]
    with pytest.raises(grpc.RpcError) as info:
        bad()
    assert info.value.code() != grpc.StatusCode.OK
    assert _trailing(info.value)[WORKER_PID_METADATA_KEY] == [PID]
    # bytes that are no message of the method's request type: refused before any handler code
    call = stub.raw_channel.unary_unary(f"/reranker.v1.Reranker/{method}", request_serializer=None,
                                          response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff\xff", timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request: not a valid reranker.v1.")
    assert _trailing(info.value)[WORKER_PID_METADATA_KEY] == [PID]


def test_a_large_message_is_refused_unparsed_while_the_lane_is_busy(serve):
    lane = Admission(AdmissionLimits(heavy_bytes=100_000))
    stub, metrics = serve(lane)
    big = grown_request(3000)
    assert big.ByteSize() > 100_000
    stub.Rerank(big, timeout=TIMEOUT_S)  # lane free: served (3000 x 10 units is not heavy work)
    with lane.lane(10**9):
        with pytest.raises(grpc.RpcError) as info:
            stub.Rerank(big, timeout=TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details().startswith(f"heavy lane busy: a message of {big.ByteSize():,} bytes")
        assert _trailing(info.value)[WORKER_PID_METADATA_KEY] == [PID]
        stub.Rerank(example_request(), timeout=TIMEOUT_S)  # small messages are not held up
    assert _metric(metrics, "reranker_shed_total", reason="heavy_lane_busy") == 1
    assert _metric(metrics, "reranker_errors_total", method="Rerank", code="RESOURCE_EXHAUSTED") == 1
