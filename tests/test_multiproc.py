"""`reranker serve --processes 2` as a real process tree: one port shared with SO_REUSEPORT,
both workers answer, a killed worker is restarted, SIGTERM drains everything and exits 0.

How load spreads: the kernel gives each *connection* to a worker at random (a hash of its
addresses and ports), and the connection stays there. A client spreads its calls over the
workers only by opening several connections, and grpc channels with identical arguments to one
address share a single connection unless "grpc.use_local_subchannel_pool" is set (or their
arguments differ). A few connections split unevenly (8 over 2 workers: 6:2 or worse ~3 times in
10): the load benchmark therefore picks its connections to be spread evenly (bench_load._channels).
"""

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

from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.app import BindError
from server.supervisor import reserve_port
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


def answering_pid(channel: grpc.Channel) -> int:
    """The worker behind this channel's connection (an empty RerankBatch: no work)."""
    _resp, call = pb_grpc.RerankerStub(channel).RerankBatch.with_call(pb.RerankBatchRequest(),
                                                                      timeout=20)
    return int(dict(call.trailing_metadata())[WORKER_PID_METADATA_KEY])


def own_connection(port: int, i: int) -> grpc.Channel:
    """A channel with its own TCP connection (not the global subchannel pool's shared one)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.use_local_subchannel_pool", 1), ("test.connection", i)])


def pids_of_fresh_connections(port: int, n: int = 16) -> list[int]:
    """Which worker each of `n` new connections (open at the same time) reached. Each one is a
    fair coin over 2 workers: all n on one worker by chance has probability 2 * 0.5**n."""
    channels = [own_connection(port, i) for i in range(n)]
    try:
        return [answering_pid(ch) for ch in channels]
    finally:
        for ch in channels:
            ch.close()


def start_two_workers(*extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--processes", "2", "--address", "127.0.0.1:0",
         "--policies", str(POLICIES_DIR), "--metrics-port", "0", *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=POLICIES_DIR.parent,
    )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the parent stops its workers), SIGKILL if it hangs (the workers then stop on
    their own: they watch their parent)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gone(pid: int) -> bool:
    """Exited (a zombie nobody has reaped yet counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_connections_spread_over_the_workers_only_if_channels_do_not_share_one():
    import asyncio

    from benchmarks.bench_load import _channels, _worker_pid

    proc = start_two_workers("--watch-interval", "0")
    wait_for = log_waiter(proc)
    try:
        port = wait_for("listening")["port"]
        pids = set(wait_for("serving")["pids"])

        # channels with identical arguments share one connection (grpc's global subchannel
        # pool), hence one worker, however many of them there are
        shared = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
        try:
            assert len({answering_pid(ch) for ch in shared}) == 1
        finally:
            for ch in shared:
                ch.close()

        # channels with their own connections: each connection lands on either worker
        assert set(pids_of_fresh_connections(port)) == pids

        # the load benchmark's connections: as many on each worker, alternating
        async def bench_connections() -> list[int | None]:
            channels = await _channels(f"127.0.0.1:{port}", workers=2)
            try:
                return [await _worker_pid(ch) for ch in channels]
            finally:
                for ch in channels:
                    await ch.close()

        got = asyncio.run(bench_connections())
        assert len(got) == 8 and set(got) == pids
        assert [got.count(p) for p in pids] == [4, 4] and got[0::2] == [got[0]] * 4
    finally:
        stop(proc)


def test_workers_stop_when_the_parent_is_killed():
    """Orphaned workers would serve on unsupervised, and share the port with a new server's."""
    import json
    import threading

    proc = start_two_workers("--grace", "1", "--watch-interval", "0")
    lines: list[str] = []  # not only JSON: the killed parent's resource tracker warns on stderr
    threading.Thread(target=lambda: [lines.append(line) for line in proc.stderr], daemon=True).start()

    def logged(msg: str) -> list[dict]:
        records = [json.loads(line) for line in list(lines) if line.startswith("{")]
        return [r for r in records if r["msg"] == msg]

    pids: set[int] = set()
    try:
        end = time.monotonic() + 60
        while not logged("serving") and time.monotonic() < end:
            time.sleep(0.05)
        pids = set(logged("serving")[0]["pids"])
        port = logged("listening")[0]["port"]
        proc.kill()
        proc.wait()
        end = time.monotonic() + 10
        while not all(gone(pid) for pid in pids) and time.monotonic() < end:
            time.sleep(0.05)
        assert all(gone(pid) for pid in pids)
        # they stopped as on SIGTERM (drained), not killed
        assert {r["worker"] for r in logged("parent process gone; stopping")} == {0, 1}
        assert {r["worker"] for r in logged("worker stopped")} == {0, 1}
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        stop(proc)
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_idle_server_exits_promptly_on_sigterm():
    """Exit of an idle `serve --processes 2` after SIGTERM (policy watcher and metrics endpoint
    on, --grace 5: an idle server has nothing to wait for). It took 0.6-1.4 s on an idle machine
    (2.4 s seen on a busy one): the workers' interpreter teardown (numba / LLVM, ~1,200 modules)
    and the metrics endpoint's 0.5 s poll interval; now ~0.1-0.2 s. The bound is for a hang."""
    proc = start_two_workers("--grace", "5", "--watch-interval", "1")
    wait_for = log_waiter(proc)
    try:
        wait_for("serving")
        time.sleep(0.5)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        elapsed = time.monotonic() - start
        print(f"serve --processes 2, idle: exited {elapsed:.3f} s after SIGTERM")
        assert elapsed < 2.0
        assert set(wait_for("stopped", timeout=5)["exitcodes"].values()) == {0}
    finally:
        stop(proc)


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
        # new connections reach the new worker and the one that stayed (the dead one's
        # listener left the SO_REUSEPORT group)
        assert set(pids_of_fresh_connections(port)) == (pids - {victim}) | {ready["pid"]}

        proc.send_signal(signal.SIGTERM)
        assert wait_for("shutting down", timeout=10)["signal"] == "SIGTERM"
        stopped = wait_for("stopped", timeout=30)
        assert set(stopped["exitcodes"].values()) == {0}
        assert proc.wait(timeout=10) == 0
    finally:
        stop(proc)


def test_a_worker_that_fails_before_serving_stops_everything_with_exit_1(tmp_path, caplog):
    from server.supervisor import serve_processes

    caplog.set_level("INFO", logger="server.app")
    missing = str(tmp_path / "no_policies")
    start = time.monotonic()
    assert serve_processes("127.0.0.1:0", missing, processes=2, metrics_port=None, grace_s=0.5) == 1
    assert time.monotonic() - start < 30
    messages = [r.getMessage() for r in caplog.records]
    assert "worker exited before serving; stopping" in messages
    assert messages[-1] == "stopped"
