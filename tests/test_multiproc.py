"""`reranker serve --processes 2` as a real process tree: one port shared with SO_REUSEPORT,
both workers answer, a killed worker is restarted, SIGTERM drains everything and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.app import BindError, reserve_port
from server.servicer import WORKER_PID_METADATA_KEY
from tests.conftest import POLICIES_DIR
from tests.serve_process import log_waiter
from tests.test_server import example_request

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")


def test_reserve_port_picks_a_port_and_shares_it_only_with_reuseport_sockets():
    sock, host, port = reserve_port("127.0.0.1:0")
    try:
        assert host == "127.0.0.1" and port > 0
        other = socket.socket()
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", port))  # no SO_REUSEPORT: refused
        other.close()
        sharer, _, same = reserve_port(f"127.0.0.1:{port}")
        assert same == port
        sharer.close()
    finally:
        sock.close()
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    try:
        with pytest.raises(BindError, match="cannot listen on"):
            reserve_port(f"127.0.0.1:{plain.getsockname()[1]}")
    finally:
        plain.close()


def worker_pid(stub, request) -> int:
    _resp, call = stub.Rerank.with_call(request, timeout=20)
    return int(dict(call.trailing_metadata())[WORKER_PID_METADATA_KEY])


def test_two_workers_share_the_port_restart_and_drain_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--processes", "2", "--address", "127.0.0.1:0",
         "--policies", str(POLICIES_DIR), "--grace", "1", "--metrics-port", "0",
         "--watch-interval", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=POLICIES_DIR.parent,
    )
    wait_for = log_waiter(proc)

    try:
        port = wait_for("listening")["port"]
        pids = set(wait_for("serving")["pids"])
        assert len(pids) == 2 and proc.pid not in pids
        request = example_request()
        seen: set[int] = set()
        end = time.monotonic() + 15
        while seen != pids and time.monotonic() < end:
            # a new channel is a new connection: the kernel picks a worker for each
            with grpc.insecure_channel(f"127.0.0.1:{port}",
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="reranker.v1.Reranker"), timeout=10)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                seen.add(worker_pid(pb_grpc.RerankerStub(channel), request))
        assert seen == pids, f"workers that answered: {seen}, started: {pids}"

        # a worker that dies is logged and restarted
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        died = wait_for("worker died; restarting it", timeout=20)
        assert died["pid"] == victim
        ready = wait_for("worker ready", timeout=60)
        assert ready["worker"] == died["worker"] and ready["pid"] != victim

        proc.send_signal(signal.SIGTERM)
        assert wait_for("shutting down", timeout=10)["signal"] == "SIGTERM"
        stopped = wait_for("stopped", timeout=30)
        assert set(stopped["exitcodes"].values()) == {0}
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_worker_that_fails_before_serving_stops_everything_with_exit_1(tmp_path, caplog):
    from server.app import serve_processes

    caplog.set_level("INFO", logger="server.app")
    missing = str(tmp_path / "no_policies")
    start = time.monotonic()
    assert serve_processes("127.0.0.1:0", missing, processes=2, metrics_port=None, grace_s=0.5) == 1
    assert time.monotonic() - start < 30
    messages = [r.getMessage() for r in caplog.records]
    assert "worker exited before serving; stopping" in messages
    assert messages[-1] == "stopped"
