"""The Redis Streams decision log through `reranker serve`: two worker processes append to one
stream, a Redis that stops answering fails no call (the records wait and are retried), and the
stream replays through the pure request path to the slates the callers got."""

from __future__ import annotations

import signal
import subprocess
import sys

import grpc

from engine.decision_log import from_table, read_log
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from testing.redis_server import redis_server  # noqa: F401  (fixture)
from tests.conftest import POLICIES_DIR, REPO
from tests.serve_process import assert_log_replays, log_waiter
from tests.test_fuzz import base_request

NAMES = ["home_feed", "search", "marketplace", "discovery"]


def _call(stub, i: int, served: dict) -> None:
    name = NAMES[i % len(NAMES)]
    req = base_request(name, 80, seed=i, dictionary_encoded=bool(i % 2))
    req.request_id, req.user_id = f"req-{i}", f"user-{i % 7}"
    resp = stub.Rerank(req, timeout=30)
    served[req.request_id] = (name, [it.item_id for it in resp.items], resp.policy_digest)


def test_two_workers_log_to_one_stream_through_a_redis_pause(redis_server):  # noqa: F811
    url = f"{redis_server.url}/0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--processes", "2", "--address", "127.0.0.1:0",
         "--policies", str(POLICIES_DIR), "--metrics-port", "-1", "--decision-log", url],
        stderr=subprocess.PIPE, text=True, cwd=REPO)
    wait_for = log_waiter(proc)
    served: dict = {}
    try:
        port = wait_for("listening", timeout=180)["port"]
        wait_for("serving", timeout=180)
        # one channel per call: the kernel spreads new connections over both workers
        for i in range(40):
            if i == 20:
                redis_server.pause()  # Redis stops answering: calls must still succeed
            if i == 30:
                redis_server.resume()
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                _call(pb_grpc.RerankerStub(channel), i, served)
    finally:
        if redis_server.running:
            redis_server.resume()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    assert len(served) == 40  # no call failed while Redis was paused
    table = read_log(url)
    records = from_table(table)
    assert sorted(r.request_id for r in records) == sorted(served)  # each once, none lost
    assert len(set(table.column("log_writer").to_pylist())) == 2  # both workers wrote to the stream
    assert_log_replays(records, served, POLICIES_DIR)
