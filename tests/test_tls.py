"""TLS: a server built with a self-signed certificate made here (openssl), reached securely,
refused in plaintext; the CLI's `call --tls-ca` and `serve --tls-cert/--tls-key` end to end."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server import cli
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.app import create_server, set_serving
from tests.conftest import POLICIES_DIR
from tests.serve_process import log_waiter
from tests.test_server import EXAMPLE_REQUEST, example_request

TIMEOUT_S = 20.0

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory) -> tuple[Path, Path]:
    """(key.pem, cert.pem): self-signed for localhost and 127.0.0.1, valid one day."""
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return key, cert


@pytest.fixture(scope="module")
def tls_server(engine, cert_files):
    key, cert = cert_files
    health_servicer = health.HealthServicer()
    server, port = create_server("127.0.0.1:0", engine, max_workers=4, health_servicer=health_servicer,
                                 tls=(key.read_bytes(), cert.read_bytes()))
    server.start()
    set_serving(health_servicer, True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_secure_channel_gets_a_slate(tls_server, cert_files):
    credentials = grpc.ssl_channel_credentials(root_certificates=cert_files[1].read_bytes())
    with grpc.secure_channel(tls_server, credentials) as channel:
        resp = pb_grpc.RerankerStub(channel).Rerank(example_request(), timeout=TIMEOUT_S)
    assert len(resp.items) > 0
    assert resp.policy == example_request().policy


def test_plaintext_channel_to_the_tls_port_fails(tls_server):
    with grpc.insecure_channel(tls_server) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.RerankerStub(channel).ListPolicies(pb.ListPoliciesRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_channel_not_trusting_the_certificate_fails(tls_server):
    with grpc.secure_channel(tls_server, grpc.ssl_channel_credentials()) as channel:  # system CAs
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.RerankerStub(channel).ListPolicies(pb.ListPoliciesRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cli_call_and_policies_with_tls_ca(tls_server, cert_files, capsys):
    ca = str(cert_files[1])
    assert cli.main(["call", "--address", tls_server, "--tls-ca", ca, "--json", str(EXAMPLE_REQUEST)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"] == example_request().policy and out["items"]
    assert cli.main(["policies", "--address", tls_server, "--tls-ca", ca]) == 0
    assert example_request().policy in capsys.readouterr().out
    assert cli.main(["policies", "--address", tls_server, "--tls-ca", "/no/such/ca.pem"]) == 2
    assert "cannot read --tls-ca" in capsys.readouterr().err


def test_cli_serve_rejects_half_a_tls_pair(cert_files, capsys):
    assert cli.main(["serve", "--policies", str(POLICIES_DIR), "--tls-cert", str(cert_files[1])]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_cli_serve_with_tls_certificate(cert_files):
    key, cert = cert_files
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--address", "127.0.0.1:0", "--policies",
         str(POLICIES_DIR), "--grace", "1", "--metrics-port", "-1", "--processes", "1",
         "--tls-cert", str(cert), "--tls-key", str(key)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=POLICIES_DIR.parent,
    )
    wait_for = log_waiter(proc)

    try:
        record = wait_for("listening")
        assert record["tls"] is True
        wait_for("serving")
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{record['port']}", credentials) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
