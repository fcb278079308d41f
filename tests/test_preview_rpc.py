"""The PreviewPolicy RPC: a proposed revision previewed against the live policy on the server's
decision log, over a real gRPC server; the errors a caller can make, named."""

from __future__ import annotations

import json

import grpc
import pytest

from engine.engine import Engine
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.app import create_server
from testing.engines import engine_with, policy
from testing.logs import synthetic_log
from testing.policies import BROKEN_POLICY

LIVE = policy(name="feed", slate_size=5, constraints=[
    {"name": "cap_cat", "type": "max_count", "attribute": "category", "max": 3}])
PROPOSED = """name: feed
version: "2"
slate_size: 5
objective: {weights: {p_click: 1.0}}
constraints:
  - {name: cap_cat, type: max_count, attribute: category, max: 1}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decisions")
    engine: Engine = engine_with(LIVE)
    synthetic_log(folder, engine, "feed", 150, candidates_per_request=30)
    server, port = create_server("127.0.0.1:0", engine, max_workers=2)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield engine, folder, pb_grpc.RerankerStub(channel)
    finally:
        server.stop(None)


def test_preview_over_grpc_reports_the_deltas(served):
    engine, folder, stub = served
    engine.decision_log_source = str(folder)
    resp = stub.PreviewPolicy(pb.PreviewPolicyRequest(policy="feed", proposed_yaml=PROPOSED, sample=100),
                              timeout=120)
    assert resp.records == 100
    assert "of 100 slates change" in resp.lines[0]
    assert any("category" in line and "exposure share" in line for line in resp.lines)
    report = json.loads(resp.report_json)
    assert report["records"] == 100


def test_preview_errors_are_named(served):
    engine, folder, stub = served
    engine.decision_log_source = None
    with pytest.raises(grpc.RpcError) as info:
        stub.PreviewPolicy(pb.PreviewPolicyRequest(policy="feed", proposed_yaml=PROPOSED), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--decision-log DIR" in info.value.details()
    engine.decision_log_source = str(folder)
    with pytest.raises(grpc.RpcError) as info:
        stub.PreviewPolicy(pb.PreviewPolicyRequest(policy="feed", proposed_yaml=BROKEN_POLICY), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "line" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.PreviewPolicy(pb.PreviewPolicyRequest(policy="nope", proposed_yaml=PROPOSED), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
