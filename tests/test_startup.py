"""Warm-up reaches every kernel a loaded policy uses: after `Engine.warmup`, real first requests to
every example policy (every solver mode, explain on and off, embeddings, calibration targets)
compile nothing more. Run in a fresh interpreter, where nothing else has compiled anything."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


_SCRIPT = r"""
import json, sys
import numba
from numba.core.registry import CPUDispatcher

from engine.engine import Engine
from server import convert
from tests.test_fuzz import base_request

def signatures():
    out = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith(("solvers", "engine", "server")) or module is None:
            continue
        for attr, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher):
                out[f"{name}.{attr}"] = len(obj.signatures)
    return out

engine = Engine.from_directory("policies")
steps = []
engine.warmup(progress=lambda step, i, n, s: steps.append([step, i, n]))
convert.warmup()
before = signatures()
modules = set(sys.modules)
answered = 0
for policy in [p.name for p in engine.list_policies()]:
    for solver in ("greedy", "exact", "auto"):
        for explain in (False, True):
            for n, k in ((50, 0), (300, 7)):
                msg = base_request(policy, n, 1, True)
                msg.explain, msg.slate_size = explain, k
                msg.solver = {"greedy": 2, "exact": 3, "auto": 1}[solver]
                if policy == "discovery":
                    msg.targets["taste"].shares["shoes"] = 1.0
                engine.rerank(convert.decode_request(msg))
                answered += 1
after = signatures()
print(json.dumps({"steps": steps, "answered": answered,
                  "imported": sorted(set(sys.modules) - modules),
                  "new": {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}}))
"""


#: the example policies (policies/*.yaml), by name
POLICY_NAMES = sorted(p.stem for p in (REPO / "policies").glob("*.yaml"))


def test_first_requests_after_warmup_compile_nothing():
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["answered"] == len(POLICY_NAMES) * 3 * 2 * 2
    assert out["new"] == {}, f"kernels compiled by a first request after warm-up: {out['new']}"
    # nor imported anything (the FA*IR tables' scipy.stats took 0.5 s of a first DPP request)
    assert out["imported"] == [], f"modules first imported by a request after warm-up: {out['imported']}"
    # progress: one step per kernel family and per policy, numbered
    names = [s[0] for s in out["steps"]]
    assert names[:2] == ["greedy kernels", "exact solvers"]
    assert sorted(names[2:]) == [f"policy {name}" for name in POLICY_NAMES]
    steps = 2 + len(POLICY_NAMES)
    assert [s[1] for s in out["steps"]] == list(range(1, steps + 1))
    assert {s[2] for s in out["steps"]} == {steps}


def test_sigterm_with_a_drain_window_reports_not_serving_while_still_serving(tmp_path):
    """--drain: after SIGTERM, health says NOT_SERVING at once, calls are still answered for the
    window, then the process stops and exits 0."""
    import os
    import shutil
    import signal
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
    from tests.conftest import POLICIES_DIR
    from tests.serve_process import log_waiter
    from tests.test_server import example_request

    shutil.copy(POLICIES_DIR / "home_feed.yaml", tmp_path / "home_feed.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--processes", "1",
                             "--address", "127.0.0.1:0", "--policies", str(tmp_path), "--metrics-port", "-1",
                             "--state-dir", "", "--drain", "3", "--grace", "1"],
                            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    wait_for = log_waiter(proc)
    try:
        port = wait_for("listening", timeout=120)["port"]
        wait_for("serving", timeout=120)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.RerankerStub(channel)
            stub.Rerank(example_request(), timeout=10)
            os.kill(proc.pid, signal.SIGTERM)
            wait_for("draining", timeout=10)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert stub.Rerank(example_request(), timeout=10).items  # still served
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_connections_age_out_without_errors_for_the_client(engine):
    """max_connection_age: the server closes old connections (GOAWAY); a client calling
    throughout reconnects by itself and sees no error."""
    import time

    import grpc
    from grpc_health.v1 import health

    from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
    from server.app import create_server, set_serving
    from tests.test_server import example_request

    h = health.HealthServicer()
    server, port = create_server("127.0.0.1:0", engine, health_servicer=h, max_connection_age_s=0.3)
    server.start()
    set_serving(h, True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RerankerStub(channel)
            req = example_request()
            end = time.monotonic() + 2.5
            calls = 0
            while time.monotonic() < end:
                stub.Rerank(req, timeout=10)  # raises on any error
                calls += 1
            assert calls > 20
    finally:
        server.stop(None)
