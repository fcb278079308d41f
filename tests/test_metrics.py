"""Prometheus metrics: recorded by the servicer, served over HTTP, scraped by the test."""

from __future__ import annotations

from collections import Counter

import time
import urllib.request
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health
from prometheus_client.parser import text_string_to_metric_families

from engine.ledger import LedgerStats
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.app import create_server, set_serving
from server.metrics import LATENCY_BUCKETS, UNKNOWN_POLICY, ServerMetrics
from tests.test_server import example_request

TIMEOUT_S = 20.0


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample on the endpoint: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def metered(engine):
    metrics = ServerMetrics()
    watcher = SimpleNamespace(reloads=3, rejected=1)
    metrics.watch_reloads(watcher)
    metrics.watch_ledger(engine)
    health_servicer = health.HealthServicer()
    server, port = create_server("127.0.0.1:0", engine, max_workers=4,
                                 health_servicer=health_servicer, metrics=metrics)
    server.start()
    set_serving(health_servicer, True)
    httpd, metrics_port = metrics.serve_http(0)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield SimpleNamespace(stub=pb_grpc.RerankerStub(channel), metrics_port=metrics_port,
                                  metrics=metrics, watcher=watcher)
    finally:
        httpd.shutdown()
        server.stop(None)


def test_calls_move_counters_and_histograms_with_their_labels(metered):
    before = scrape(metered.metrics_port)
    req = example_request()
    resp = metered.stub.Rerank(req, timeout=TIMEOUT_S)
    resp2 = metered.stub.Rerank(req, timeout=TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as info:
        metered.stub.Rerank(pb.RerankRequest(policy="no_such_policy", candidates=req.candidates),
                            timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    bad = pb.RerankRequest()
    bad.CopyFrom(req)
    bad.candidates.item_ids[1] = bad.candidates.item_ids[0]  # duplicate id
    batch = metered.stub.RerankBatch(pb.RerankBatchRequest(requests=[req, bad]), timeout=TIMEOUT_S)
    assert batch.results[0].HasField("response") and batch.results[1].HasField("error")
    after = scrape(metered.metrics_port)

    def moved(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    # In auto mode with a 10 ms budget the exact solver may or may not finish on a loaded
    # machine, so the three answers need not share a solver label: count each answer under its own.
    answered = [resp, resp2, batch.results[0].response]
    labels = Counter((r.diagnostics.solver,
                      pb.SlateStatus.Name(r.diagnostics.status).removeprefix("SLATE_STATUS_").lower())
                     for r in answered)
    for (solver, status), count in labels.items():
        ok = dict(policy=req.policy, solver=solver, status=status)
        assert moved("reranker_requests_total", **ok) == count  # two Rerank calls + one batch entry
        assert moved("reranker_request_seconds_count", **ok) == count
        assert moved("reranker_request_seconds_sum", **ok) > 0
        assert moved("reranker_request_seconds_bucket", **ok, le="+Inf") == count
        # cumulative buckets (no assertion on how fast the calls were: that is the machine's)
        les = [str(b) for b in LATENCY_BUCKETS]
        assert all(("reranker_request_seconds_bucket", frozenset({**ok, "le": le}.items())) in after
                   for le in les), les
        buckets = [moved("reranker_request_seconds_bucket", **ok, le=le) for le in les]
        assert buckets == sorted(buckets) and 0 <= buckets[0] and buckets[-1] <= count, buckets
    assert sum(labels.values()) == 3

    # an unknown policy name never becomes a label
    assert moved("reranker_requests_total", policy=UNKNOWN_POLICY, solver="none", status="not_found") == 1
    assert not any(dict(k[1]).get("policy") == "no_such_policy" for k in after)
    assert moved("reranker_errors_total", method="Rerank", code="NOT_FOUND") == 1
    assert moved("reranker_errors_total", method="RerankBatch", code="INVALID_ARGUMENT") == 1
    assert moved("reranker_requests_total", policy=req.policy, solver="none", status="invalid_argument") == 1
    outcomes = Counter(r.diagnostics.exact_status for r in answered if r.diagnostics.exact_status)
    for outcome, count in outcomes.items():
        assert moved("reranker_exact_solver_total", policy=req.policy, outcome=outcome) == count


def test_reloads_and_ledger_are_read_at_scrape_time(metered):
    samples = scrape(metered.metrics_port)
    assert sample(samples, "reranker_policy_reloads_total") == 3
    assert sample(samples, "reranker_policy_reloads_rejected_total") == 1
    metered.watcher.reloads += 1
    assert sample(scrape(metered.metrics_port), "reranker_policy_reloads_total") == 4
    assert ("reranker_ledger_rejected_total", frozenset()) in samples
    assert sample(samples, "reranker_ledger_healthy") == 1


def test_relaxations_exact_outcomes_and_ledger_stats_from_results():
    metrics = ServerMetrics()
    rule = lambda name, relaxed: SimpleNamespace(name=name, relaxed=relaxed)  # noqa: E731
    result = SimpleNamespace(policy="p", solver="greedy", status="relaxed", exact_status="timeout",
                             constraints=[rule("cap", True), rule("fresh", False), rule("pin", True)])
    metrics.observe_ok(result, 0.002)
    metrics.observe_ok(result, 0.004)
    ledger = SimpleNamespace(stats=LedgerStats(outages=2, errors=5, queued=7, flushed=4),
                             healthy=lambda: False)
    metrics.watch_ledger(SimpleNamespace(ledger=ledger))
    get = metrics.registry.get_sample_value
    assert get("reranker_relaxations_total", {"policy": "p", "rule": "cap"}) == 2
    assert get("reranker_relaxations_total", {"policy": "p", "rule": "pin"}) == 2
    assert get("reranker_relaxations_total", {"policy": "p", "rule": "fresh"}) is None
    assert get("reranker_exact_solver_total", {"policy": "p", "outcome": "timeout"}) == 2
    labels = {"policy": "p", "solver": "greedy", "status": "relaxed"}
    assert get("reranker_request_seconds_bucket", {**labels, "le": "0.003"}) == 1
    assert get("reranker_request_seconds_bucket", {**labels, "le": "0.005"}) == 2
    assert get("reranker_request_seconds_sum", labels) == pytest.approx(0.006)
    for name, value in (("outages", 2), ("errors", 5), ("queued", 7), ("flushed", 4)):
        assert get(f"reranker_ledger_{name}_total", {}) == value
    assert get("reranker_ledger_healthy", {}) == 0
    # after a policy served once, its errors carry its name
    metrics.observe_error("Rerank", "p", "INVALID_ARGUMENT", 0.0001)
    assert get("reranker_requests_total", {"policy": "p", "solver": "none", "status": "invalid_argument"}) == 1


def test_admission_families_are_exposed_before_anything_is_shed(metered):
    """Every shed reason is on the endpoint from the start (at 0), so that an alert on
    rate(reranker_shed_total[5m]) has a series to watch; the queue gauge reads 0 when idle."""
    from server.admission import SHED_REASONS

    samples = scrape(metered.metrics_port)
    names = {name for name, _ in samples}
    assert {"reranker_shed_total", "reranker_heavy_lane_calls_total", "reranker_queued_calls"} <= names
    reasons = {dict(labels)["reason"] for name, labels in samples if name == "reranker_shed_total"}
    assert reasons == set(SHED_REASONS) == {"deadline_in_queue", "cancelled_in_queue", "queue_full",
                                            "batch_too_large", "work_too_large", "heavy_lane_busy"}
    assert sample(samples, "reranker_queued_calls") == 0


def test_a_skipped_exact_solve_counts_as_skipped_whatever_its_reason():
    metrics = ServerMetrics()
    for reason in ("similarity diversity (mmr)", "coverage / calibration rows (coverage row 3)",
                   "coverage / calibration rows (calibration row 7)"):
        metrics.observe_ok(SimpleNamespace(policy="p", solver="greedy", status="feasible",
                                           exact_status=f"skipped: {reason}", constraints=[]), 0.001)
    get = metrics.registry.get_sample_value
    assert get("reranker_exact_solver_total", {"policy": "p", "outcome": "skipped"}) == 3
    outcomes = {s.labels["outcome"] for m in metrics.registry.collect() for s in m.samples
                if s.name == "reranker_exact_solver_total"}
    assert outcomes == {"skipped"}


def test_every_step_of_a_call_is_timed(metered):
    """A Rerank answer reports the steps before its response (queue, receive, parse, admission)
    next to the engine's stages, `total` runs from the handler's start so it holds them all, and
    the steps after the response (serialize, send) reach the step histogram, once per answer."""
    before = scrape(metered.metrics_port)
    req = example_request()
    resps = [metered.stub.Rerank(req, timeout=TIMEOUT_S) for _ in range(3)]
    for resp in resps:
        e = resp.diagnostics.elapsed_us
        for step in ("queue", "receive", "parse", "admission", "decode", "compile", "solve", "report",
                     "encode", "total"):
            assert e[step] >= 0, step
        inside = e["parse"] + e["admission"] + e["decode"] + e["compile"] + e["solve"] + e["report"] + e["encode"]
        assert e["total"] >= inside - 1e-6
        assert e["total"] - inside < 0.5 * e["total"] + 200, "total holds little but its steps"
    def counts(samples):
        return [sample(samples, "reranker_call_step_seconds_count", step=s) for s in ("serialize", "send")]

    deadline = time.monotonic() + 10  # observed after each answer is sent: the last may lag
    while True:
        after = scrape(metered.metrics_port)
        moved = [a - b for a, b in zip(counts(after), counts(before))]
        if moved == [3, 3] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert moved == [3, 3]
    for step in ("serialize", "send"):
        assert sample(after, "reranker_call_step_seconds_sum", step=step) > \
            sample(before, "reranker_call_step_seconds_sum", step=step)
