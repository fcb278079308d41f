"""The decision log in serving: `reranker serve --decision-log DIR` logs every answer off the
request path, flushes on SIGTERM, and the log replays through the pure request path to the
slates the callers got, bit for bit."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from engine.decision_log import from_table, join_outcomes, read_log, read_outcomes, summarise
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from tests.conftest import POLICIES_DIR
from tests.serve_process import assert_log_replays, log_waiter
from tests.test_fuzz import base_request

REPO = Path(__file__).resolve().parent.parent


def test_a_served_log_is_flushed_on_sigterm_and_replays_to_the_same_slates(tmp_path):
    log_dir = tmp_path / "decisions"
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--processes", "1", "--address", "127.0.0.1:0",
         "--policies", str(POLICIES_DIR), "--metrics-port", "-1", "--decision-log", str(log_dir)],
        stderr=subprocess.PIPE, text=True, cwd=REPO)
    wait_for = log_waiter(proc)
    served = {}
    try:
        port = wait_for("listening", timeout=180)["port"]
        wait_for("serving", timeout=180)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RerankerStub(channel)
            for i, name in enumerate(["home_feed", "search", "marketplace", "discovery"] * 6):
                req = base_request(name, 120, seed=i, dictionary_encoded=bool(i % 2))
                req.request_id = f"req-{i}"
                req.user_id = f"user-{i % 5}"
                resp = stub.Rerank(req, timeout=30)
                served[req.request_id] = (name, [it.item_id for it in resp.items], resp.policy_digest)
            outcomes = pb.ReportOutcomesRequest(outcomes=[
                pb.Outcome(request_id="req-3", position=2, item_id=served["req-3"][1][1], clicks=1),
                pb.Outcome(request_id="req-3", position=2, clicks=1, purchases=1),
                pb.Outcome(request_id="req-5", position=1, add_to_carts=1)])
            assert stub.ReportOutcomes(outcomes, timeout=10) == pb.ReportOutcomesResponse(accepted=3)
            with pytest.raises(grpc.RpcError) as info:
                stub.ReportOutcomes(pb.ReportOutcomesRequest(outcomes=[pb.Outcome(request_id="x")]),
                                    timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == "outcomes[0].position: must be a 1-based position >= 1, got 0"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    table = read_log(log_dir)
    records = from_table(table)
    assert sorted(r.request_id for r in records) == sorted(served)  # every answer, nothing twice
    assert summarise(table)["records"] == len(served)
    joined = join_outcomes(table, read_outcomes(log_dir / "outcomes")).to_pylist()
    by_key = {(r["request_id"], r["position"]): r for r in joined}
    assert (by_key[("req-3", 2)]["clicks"], by_key[("req-3", 2)]["purchases"]) == (2, 1)
    assert by_key[("req-5", 1)]["add_to_carts"] == 1 and by_key[("req-5", 2)]["clicks"] == 0
    assert_log_replays(records, served, POLICIES_DIR)


def test_reranker_log_summarises_a_log_folder(tmp_path, capsys):
    from engine.decision_log import DecisionLog, ParquetSink
    from engine.types import RerankRequest
    from server.cli import main
    from testing.engines import candidates, engine_with, policy

    eng = engine_with(policy(slate_size=4))
    eng.decision_log = DecisionLog(ParquetSink(tmp_path / "log"))
    for i in range(7):
        eng.rerank(RerankRequest("p", candidates(20, seed=i), request_id=f"r{i}"))
    eng.close()
    assert main(["log", str(tmp_path / "log")]) == 0
    out = capsys.readouterr().out
    assert "7 decision record(s)" in out and "mean slate length 4.0" in out
    assert main(["log", str(tmp_path / "log"), "--json"]) == 0
    assert '"records": 7' in capsys.readouterr().out


def test_report_outcomes_without_an_outcome_log_is_a_failed_precondition():
    from engine.errors import Unavailable
    from testing.engines import engine_with, policy

    with pytest.raises(Unavailable, match="no outcome log: start the server with --decision-log DIR"):
        engine_with(policy()).report_outcomes([])


def test_reranker_outcomes_imports_a_csv_beside_the_decisions(tmp_path, capsys):
    from server.cli import main

    good = tmp_path / "outcomes.csv"
    good.write_text("request_id,position,item_id,clicks,add_to_carts,purchases\n"
                    "r1,1,sku-1,1,0,0\nr1,1,,1,1,0\nr2,3,sku-9,0,0,1\n")
    assert main(["outcomes", str(good), "--log", str(tmp_path / "log")]) == 0
    assert "wrote 3 outcome(s)" in capsys.readouterr().out
    table = read_outcomes(tmp_path / "log" / "outcomes").to_pylist()
    assert sorted((r["request_id"], r["position"], r["clicks"], r["add_to_carts"], r["purchases"])
                  for r in table) == [("r1", 1, 1, 0, 0), ("r1", 1, 1, 1, 0), ("r2", 3, 0, 0, 1)]
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,position,clicks\nr1,0,1\n")
    assert main(["outcomes", str(bad), "--log", str(tmp_path / "log2")]) == 1
    out = capsys.readouterr().out
    assert f"{bad}, line 2: request_id must be set, position an integer >= 1" in out
    assert "nothing written" in out
