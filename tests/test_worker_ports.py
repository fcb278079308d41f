"""`reranker serve --worker-ports BASE`: worker i also listens on BASE + i alone, so that ONE
client channel with gRPC's round_robin over those ports keeps a connection per worker."""

from __future__ import annotations

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
from server.servicer import WORKER_PID_METADATA_KEY
from server.supervisor import check_worker_ports
from testing.processes import stop
from tests.conftest import POLICIES_DIR
from tests.serve_process import log_waiter
from tests.test_cli import run


# ------------------------------------------------------------------- the flag's checks


@pytest.mark.parametrize(("base", "processes", "address", "metrics", "words"), [
    (0, 2, "127.0.0.1:0", (), "must be a port in 1-65535, got 0"),
    (70000, 2, "127.0.0.1:0", (), "must be a port in 1-65535, got 70000"),
    (65535, 2, "127.0.0.1:0", (), "65535-65536"),
    (65000, 3, "127.0.0.1:65002", (), "include --address's port 65002"),
    (9000, 2, "127.0.0.1:50051", (9463, 9001), "include metrics port 9001"),
])
def test_bad_worker_ports_are_refused_naming_the_flag(base, processes, address, metrics, words):
    with pytest.raises(ValueError, match="--worker-ports") as exc:
        check_worker_ports(base, processes, address, metrics)
    assert words in str(exc.value)


@pytest.mark.parametrize(("base", "processes", "address", "metrics"), [
    (65534, 2, "127.0.0.1:0", ()),  # 65534-65535: the last two ports
    (9000, 2, "127.0.0.1:8999", (9002, 9003)),  # right next to both, no overlap
    (1, 1, "[::1]:2", ()),
])
def test_good_worker_ports_pass(base, processes, address, metrics):
    check_worker_ports(base, processes, address, metrics)


@pytest.mark.parametrize(("argv", "words"), [
    (["--worker-ports", "65535", "--processes", "2"], "go past 65535"),
    (["--worker-ports", "50051", "--address", "127.0.0.1:50052"], "--address's port 50052"),
    (["--worker-ports", "9463", "--metrics-port", "9464"], "metrics port 9464"),
    # a heavy worker's metrics port: --metrics-port + index + 100
    (["--worker-ports", "9564", "--metrics-port", "9464"], "metrics port 9564"),
])
def test_serve_refuses_bad_worker_ports_before_starting(capsys, argv, words):
    code, _out, err = run(capsys, "serve", "--policies", str(POLICIES_DIR), *argv)
    assert code == 2
    assert "--worker-ports" in err and words in " ".join(err.split())


def test_a_worker_port_in_use_fails_loudly(engine):
    """The worker's own port is never shared: another socket listening there is a BindError
    (with SO_REUSEPORT the bind would have succeeded next to it)."""
    from server.app import create_server

    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        taken = holder.getsockname()[1]
        with pytest.raises(BindError, match=str(taken)):
            create_server("127.0.0.1:0", engine, reuse_port=True,
                          worker_address=f"127.0.0.1:{taken}")
    finally:
        holder.close()


def test_create_server_with_a_worker_address_serves_on_both(engine):
    from grpc_health.v1 import health

    from server.app import ServerGroup, create_server, set_serving

    base = free_ports(1)
    h = health.HealthServicer()
    server, port = create_server("127.0.0.1:0", engine, health_servicer=h,
                                 worker_address=f"127.0.0.1:{base}")
    assert isinstance(server, ServerGroup) and len(server.servers) == 2
    server.start()
    set_serving(h, True)
    try:
        for p in (port, base):
            with grpc.insecure_channel(f"127.0.0.1:{p}") as ch:
                assert health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="reranker.v1.Reranker"),
                    timeout=10).status == health_pb2.HealthCheckResponse.SERVING
                pb_grpc.RerankerStub(ch).RerankBatch(pb.RerankBatchRequest(), timeout=10)
    finally:
        assert server.stop(1.0).wait(10)
    with grpc.insecure_channel(f"127.0.0.1:{base}") as ch:  # the worker port is closed too
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)


# ------------------------------------------------------------------- two workers, one channel


def free_ports(n: int) -> int:
    """A base port with the n ports from it free right now (briefly bound to check)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n - 1 > 65535:
            continue
        held = []
        try:
            for p in range(base, base + n):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def test_one_round_robin_channel_over_worker_ports_reaches_both_workers(tmp_path):
    base = free_ports(2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--processes", "2", "--address", "127.0.0.1:0",
         "--policies", str(POLICIES_DIR), "--metrics-port", "-1", "--watch-interval", "0",
         "--grace", "1", "--worker-ports", str(base),
         "--state-dir", str(tmp_path / "state")],  # never write into the shipped policies/
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=POLICIES_DIR.parent,
    )
    wait_for = log_waiter(proc)
    try:
        listening = wait_for("listening", timeout=120)
        assert listening["worker_ports"] == [base, base + 1]
        pids = wait_for("serving", timeout=120)["pids"]  # worker 0's pid first
        assert len(set(pids)) == 2

        # each worker port is that worker alone, with health and reflection
        for i, p in enumerate((base, base + 1)):
            with grpc.insecure_channel(f"127.0.0.1:{p}") as ch:
                assert health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="reranker.v1.Reranker"),
                    timeout=10).status == health_pb2.HealthCheckResponse.SERVING
                for _ in range(4):
                    _r, call = pb_grpc.RerankerStub(ch).RerankBatch.with_call(
                        pb.RerankBatchRequest(), timeout=10)
                    assert int(dict(call.trailing_metadata())[WORKER_PID_METADATA_KEY]) == pids[i]
                assert "reranker.v1.Reranker" in reflected_services(ch)

        # one channel, round_robin over both ports: both workers answer its calls
        target = f"ipv4:127.0.0.1:{base},127.0.0.1:{base + 1}"
        with grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")]) as ch:
            grpc.channel_ready_future(ch).result(timeout=10)
            stub = pb_grpc.RerankerStub(ch)

            def answered() -> int:
                _r, call = stub.RerankBatch.with_call(pb.RerankBatchRequest(), timeout=10)
                return int(dict(call.trailing_metadata())[WORKER_PID_METADATA_KEY])

            seen = []
            end = time.monotonic() + 10  # the second subchannel may still be connecting at first
            while set(seen) != set(pids) and time.monotonic() < end:
                seen.append(answered())
            assert set(seen) == set(pids), f"answered by {set(seen)}, workers {pids}"
            # then round_robin alternates: neither worker is starved
            after = [answered() for _ in range(10)]
        assert min(after.count(p) for p in pids) >= 3, after
    finally:
        stop(proc, timeout=30)


def reflected_services(channel: grpc.Channel) -> set[str]:
    from grpc_reflection.v1alpha import reflection_pb2 as rpb
    from grpc_reflection.v1alpha import reflection_pb2_grpc as rpb_grpc

    stub = rpb_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([rpb.ServerReflectionRequest(list_services="")]),
                                        timeout=10)
    return {s.name for reply in replies for s in reply.list_services_response.service}
