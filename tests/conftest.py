"""Shared fixtures. Keep this small: helpers that only one module needs live in that module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
POLICIES_DIR = REPO / "policies"
EXAMPLES_DIR = REPO / "examples"


OBD_ROOT = REPO / "data" / "obd"


@pytest.fixture(scope="session")
def obd_root() -> Path:
    """The Open Bandit Dataset sample that `make data` fetched (a failure under CI, where
    `make test` must have fetched it; a skip elsewhere)."""
    from offline import obd
    from testing.require import missing

    try:
        obd.verify(OBD_ROOT)
    except obd.ObdError as exc:
        msg = f"the OBD sample is not ready in {OBD_ROOT} ({exc}); run `make data`"
        missing(msg)
    return OBD_ROOT


@pytest.fixture(scope="session")
def policies_dir() -> Path:
    """The repo's example policy folder."""
    return POLICIES_DIR


@pytest.fixture(scope="session")
def engine():
    """A real Engine over the repo's policies, warmed up once per test session."""
    from engine.engine import Engine

    eng = Engine.from_directory(str(POLICIES_DIR))
    eng.warmup()
    return eng


@dataclass(frozen=True)
class LiveServer:
    address: str  # "127.0.0.1:<port>"
    port: int
    server: object  # grpc.Server
    health: object  # grpc_health HealthServicer


@pytest.fixture(scope="module")
def live_server(engine):
    """A started gRPC server on a free localhost port, reporting SERVING (one per test module)."""
    from grpc_health.v1 import health

    from server.app import create_server, set_serving

    health_servicer = health.HealthServicer()
    server, port = create_server("127.0.0.1:0", engine, max_workers=4, health_servicer=health_servicer)
    server.start()
    set_serving(health_servicer, True)
    try:
        yield LiveServer(f"127.0.0.1:{port}", port, server, health_servicer)
    finally:
        server.stop(None)
