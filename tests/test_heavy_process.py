"""The heavy lane in a process of its own (`reranker serve --heavy-lane process`, the default),
as real process trees over real channels: heavy calls are answered by the heavy worker (its pid
in x-worker-pid), with the answers of the in-thread lane; a busy lane refuses at once; a killed
heavy worker is restarted while heavy calls are refused cleanly and normal calls never fail;
SIGHUP reaches it; SIGTERM stops everything and nothing is orphaned."""

from __future__ import annotations

import difflib
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import pytest
from google.protobuf import text_format
from grpc_health.v1 import health
from prometheus_client.parser import text_string_to_metric_families

from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.admission import AdmissionLimits
from server.app import create_server, set_serving
from server.servicer import WORKER_PID_METADATA_KEY
from tests.conftest import POLICIES_DIR
from tests.serve_process import LogRecords
from tests.test_multiproc import gone
from tests.test_server import example_request, grown_request

HEAVY_WORK = 10_000  # --heavy-work of the servers here: 3,000 candidates x K=10 is heavy
TIMEOUT_S = 60.0
BUSY_MESSAGE = "heavy lane busy: a request of "
UNAVAILABLE_MESSAGE = "heavy lane unavailable: this server process's heavy worker "


def _serve(policies, *extra: str) -> tuple[subprocess.Popen, LogRecords]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--address", "127.0.0.1:0", "--policies",
         str(policies), "--metrics-port", "0", "--heavy-work", str(HEAVY_WORK), "--grace", "1",
         "--watch-interval", "0", *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=POLICIES_DIR.parent)
    return proc, LogRecords(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    def __init__(self, proc, logs, port, metrics_port, heavy_pid) -> None:
        self.proc, self.logs, self.port, self.metrics_port = proc, logs, port, metrics_port
        self.heavy_pid = heavy_pid
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
        self.stub = pb_grpc.RerankerStub(self.channel)

    def metric(self, name: str, **labels) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`serve --processes 1` on a copy of the example policies (the reload test edits it)."""
    policies = tmp_path_factory.mktemp("heavy") / "policies"
    shutil.copytree(POLICIES_DIR, policies)
    proc, logs = _serve(policies, "--processes", "1")
    try:
        metrics_port = logs.wait("metrics", timeout=120, worker=None)["port"]
        port = logs.wait("listening", timeout=120)["port"]
        heavy_pid = logs.wait("heavy worker ready", timeout=300)["pid"]
        assert logs.wait("serving", timeout=300)["pid"] == proc.pid
        srv = Server(proc, logs, port, metrics_port, heavy_pid)
        srv.policies = policies
        yield srv
        srv.channel.close()
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def thread_lane(engine):
    """The same policies served in this process with the in-thread heavy lane (a stub)."""
    h = health.HealthServicer()
    srv, port = create_server("127.0.0.1:0", engine, health_servicer=h,
                              admission=AdmissionLimits(heavy_work=HEAVY_WORK))
    srv.start()
    set_serving(h, True)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
    yield pb_grpc.RerankerStub(channel)
    channel.close()
    srv.stop(None)


def _pid(call) -> int:
    return int(dict(call.trailing_metadata())[WORKER_PID_METADATA_KEY])


def _trailers(err: grpc.RpcError) -> dict[str, str]:
    return dict(err.trailing_metadata() or ())


def _clock_free(resp: pb.RerankResponse) -> bytes:
    """The answer without its timings (elapsed_us differs from call to call)."""
    out = pb.RerankResponse()
    out.CopyFrom(resp)
    out.diagnostics.ClearField("elapsed_us")
    return out.SerializeToString(deterministic=True)


def _assert_same_answer(heavy: pb.RerankResponse, local: pb.RerankResponse) -> None:
    """The same bytes but for the timings; on a difference, the fields that differ (text format)
    and both timings (a bound decided by the time left once differed here under load: see
    tests/test_bound_budget.py)."""
    a, b = _clock_free(heavy), _clock_free(local)
    if a == b:
        return
    texts = []
    for resp in (heavy, local):
        out = pb.RerankResponse()
        out.CopyFrom(resp)
        out.diagnostics.ClearField("elapsed_us")
        texts.append(text_format.MessageToString(out).splitlines())
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    diff = "\n".join(difflib.unified_diff(*texts, "heavy", "in-thread", lineterm="", n=0))
    pytest.fail(f"heavy and in-thread answers differ from byte {first}:\n{diff}\nheavy elapsed_us "
                f"{dict(heavy.diagnostics.elapsed_us)}\nin-thread elapsed_us {dict(local.diagnostics.elapsed_us)}")


def _greedy(n: int, *, explain: bool = False, k: int | None = None) -> pb.RerankRequest:
    req = grown_request(n)
    # no clock in the answer: the same bytes on every run (the bound's steps are planned from the
    # problem's size and the budget, engine.portfolio.GREEDY_PLAN_MIN_LEFT_S)
    req.solver = pb.SOLVER_MODE_GREEDY
    req.explain = explain
    if k is not None:
        req.slate_size = k
    return req


def test_the_heavy_lane_names_the_pid_trailer_as_the_servicer_does():
    from server import heavy, servicer

    assert heavy.WORKER_PID_METADATA_KEY == servicer.WORKER_PID_METADATA_KEY


def test_heavy_calls_are_answered_by_the_heavy_worker_as_the_in_thread_lane_answers(server, thread_lane):
    resp, call = server.stub.Rerank.with_call(example_request(), timeout=TIMEOUT_S)
    assert _pid(call) == server.proc.pid  # a normal call: the serving process itself
    assert server.heavy_pid != server.proc.pid
    heavy = _greedy(3000, explain=True)  # 3,000 x 10 x (1 + rules) units: heavy
    resp, call = server.stub.Rerank.with_call(heavy, timeout=TIMEOUT_S)
    assert _pid(call) == server.heavy_pid
    assert len(resp.items) == heavy.slate_size and resp.items[0].contributions  # explained
    same, call = thread_lane.Rerank.with_call(heavy, timeout=TIMEOUT_S)
    assert _pid(call) == os.getpid()
    _assert_same_answer(resp, same)

    # rules that conflict (one category: at most 3 of it cannot fill 10) and a budget that lets
    # the conflict search, which runs on the time left, finish in both lanes: the heavy worker
    # relays the same settled conflict (engine.portfolio.search_conflicts; short of time, the
    # relaxed rule's reason would say the conflict is not settled)
    conflicted = _greedy(3000, explain=True)
    category = conflicted.candidates.attributes["category"]
    del category.codes[:]
    category.codes.extend([0] * 3000)
    conflicted.budget_ms = 10_000
    resp, call = server.stub.Rerank.with_call(conflicted, timeout=TIMEOUT_S)
    assert _pid(call) == server.heavy_pid
    same = thread_lane.Rerank(conflicted, timeout=TIMEOUT_S)
    assert [list(c.rules) for c in resp.diagnostics.conflicts] == [["max_3_per_category"]]
    cap = resp.diagnostics.constraints[0]
    assert cap.relaxed and cap.reason == ("relaxed: 'max_3_per_category' (at most 3 of one category) "
                                          "cannot hold for these candidates")
    _assert_same_answer(resp, same)

    # a batch, and a message over --heavy-bytes (512 KiB), which the serving process never parses
    for batch in (pb.RerankBatchRequest(requests=[_greedy(3000), _greedy(1000, k=5)]),
                  pb.RerankBatchRequest(requests=[_greedy(3000)] * 4)):
        resp, call = server.stub.RerankBatch.with_call(batch, timeout=TIMEOUT_S)
        assert _pid(call) == server.heavy_pid
        same = thread_lane.RerankBatch(batch, timeout=TIMEOUT_S)
        assert len(resp.results) == len(batch.requests)
        for a, b in zip(resp.results, same.results, strict=True):
            _assert_same_answer(a.response, b.response)
    assert batch.ByteSize() > 512 * 1024
    assert server.metric("reranker_heavy_lane_forwarded_total") >= 3


def _niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def test_the_heavy_worker_runs_at_a_lower_cpu_priority(server):
    assert _niceness(server.heavy_pid) - _niceness(server.proc.pid) == 10  # --heavy-nice default


def test_with_the_thread_lane_heavy_calls_stay_in_the_serving_process():
    proc, logs = _serve(POLICIES_DIR, "--processes", "1", "--heavy-lane", "thread")
    try:
        port = logs.wait("listening", timeout=120)["port"]
        logs.wait("serving", timeout=300)
        assert logs.all("heavy worker started") == []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            _resp, call = pb_grpc.RerankerStub(ch).Rerank.with_call(_greedy(3000), timeout=TIMEOUT_S)
        assert _pid(call) == proc.pid
    finally:
        _stop(proc)


def test_the_heavy_worker_s_errors_are_relayed_unchanged(server, thread_lane):
    bad = _greedy(3000)
    bad.candidates.scores["p_click"].values[7] = math.nan
    errors = []
    for stub in (server.stub, thread_lane):
        with pytest.raises(grpc.RpcError) as info:
            stub.Rerank(bad, timeout=TIMEOUT_S)
        errors.append(info.value)
    relayed, local = errors
    assert relayed.code() == local.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert relayed.details() == local.details()
    assert "p_click" in relayed.details()
    trailers = _trailers(relayed)
    assert trailers[WORKER_PID_METADATA_KEY] == str(server.heavy_pid)
    assert trailers["x-field"] == _trailers(local)["x-field"]
    # a heavy call past its deadline: the remaining deadline travels with the forwarded call
    with pytest.raises(grpc.RpcError) as info:
        server.stub.Rerank(_greedy(10_000, explain=True, k=200), timeout=0.005)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_busy_heavy_lane_refuses_heavy_calls_at_once(server):
    before = server.metric("reranker_shed_total", reason="heavy_lane_busy")
    slow = _greedy(8_000, explain=True, k=250)  # 8e6 units: ~0.1-0.3 s in the heavy worker
    assert slow.ByteSize() < 512 * 1024  # (parsed in the serving process: its work is known)
    with futures.ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(server.stub.Rerank.with_call, slow, timeout=TIMEOUT_S) for _ in range(4)]
        answered, refused = [], []
        for f in calls:
            try:
                answered.append(_pid(f.result()[1]))
            except grpc.RpcError as err:
                refused.append(err)
    assert answered and refused, (answered, refused)
    assert set(answered) == {server.heavy_pid}
    for err in refused:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details().startswith(BUSY_MESSAGE + "8,000,000 work units runs only while no other "
                                        "heavy request runs on this server process")
        assert _trailers(err)[WORKER_PID_METADATA_KEY] == str(server.proc.pid)  # refused here
    assert server.metric("reranker_shed_total", reason="heavy_lane_busy") - before == len(refused)


def test_sighup_reloads_the_heavy_worker_too(server):
    path = server.policies / "home_feed.yaml"
    original = path.read_text()
    request = _greedy(3000)

    def digests() -> tuple[str, str]:
        heavy, call = server.stub.Rerank.with_call(request, timeout=TIMEOUT_S)
        assert _pid(call) == server.heavy_pid
        normal = server.stub.Rerank(example_request(), timeout=TIMEOUT_S)
        return heavy.policy_digest, normal.policy_digest

    old = digests()
    assert old[0] == old[1]
    try:
        path.write_text(original + "\n# edited by test_heavy_process\n")
        time.sleep(0.6)  # past the settle interval (0.5 s)
        server.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 30
        while (now := digests()) == old:
            assert time.monotonic() < end, "the edit never went live"
            time.sleep(0.2)
        end = time.monotonic() + 30
        while now[0] != now[1]:  # the two processes reload each on their own: both get there
            assert time.monotonic() < end, f"heavy and normal calls disagree: {now}"
            time.sleep(0.2)
            now = digests()
        assert now[0] != old[0]
    finally:
        path.write_text(original)
        time.sleep(0.6)
        server.proc.send_signal(signal.SIGHUP)


def test_a_killed_heavy_worker_is_restarted_and_normal_calls_never_fail(server):
    stop = threading.Event()
    normal_ok, normal_failed = [], []

    def normal_client() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}",
                                   options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = pb_grpc.RerankerStub(ch)
            req = example_request()
            while not stop.is_set():
                try:
                    _resp, call = stub.Rerank.with_call(req, timeout=10)
                    normal_ok.append(_pid(call))
                except grpc.RpcError as err:
                    normal_failed.append((err.code(), err.details()))
                time.sleep(0.005)

    client = threading.Thread(target=normal_client, daemon=True)
    client.start()
    old = server.heavy_pid
    heavy = _greedy(3000)
    try:
        os.kill(old, signal.SIGKILL)
        refused: list[grpc.RpcError] = []
        new = None
        end = time.monotonic() + 180
        while new is None:
            assert time.monotonic() < end, "heavy calls were never served again"
            try:
                _resp, call = server.stub.Rerank.with_call(heavy, timeout=TIMEOUT_S)
                new = _pid(call)
            except grpc.RpcError as err:
                refused.append(err)
                time.sleep(0.05)
        died = server.logs.wait("heavy worker died; restarting it", timeout=10)
        assert died["pid"] == old
        assert server.logs.wait("heavy worker ready", timeout=10)["pid"] == new
        time.sleep(0.5)  # normal calls go on after the restart too
    finally:
        stop.set()
        client.join(20)
    server.heavy_pid = new
    assert new not in (old, server.proc.pid)
    assert refused, "no heavy call came while the heavy worker restarted"
    for err in refused:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
        assert err.details().startswith(UNAVAILABLE_MESSAGE), err.details()
        assert _trailers(err)[WORKER_PID_METADATA_KEY] == str(server.proc.pid)
    assert normal_failed == []
    assert len(normal_ok) > 20 and set(normal_ok) == {server.proc.pid}
    assert server.metric("reranker_heavy_worker_restarts_total") == 1
    assert server.metric("reranker_heavy_worker_up") == 1
    assert server.metric("reranker_heavy_lane_unavailable_total") == len(refused)
    assert server.metric("reranker_errors_total", method="Rerank", code="UNAVAILABLE") == len(refused)


def test_sigterm_stops_workers_and_heavy_workers_and_none_is_orphaned(tmp_path):
    proc, logs = _serve(POLICIES_DIR, "--processes", "2")
    pids: set[int] = set()
    try:
        serving = logs.wait("serving", timeout=300, processes=2)
        workers = set(serving["pids"])
        started = [logs.wait("heavy worker started", timeout=10, worker=i) for i in (0, 1)]
        heavies = {logs.wait("heavy worker ready", timeout=10, worker=i)["pid"]: i for i in (0, 1)}
        pids = workers | set(heavies)
        assert {r["parent_pid"] for r in started} == workers and len(pids) == 4
        for r in started:
            assert os.path.exists(r["address"].removeprefix("unix:"))
        # a worker killed outright: its heavy worker stops on its own (its parent is gone) ...
        victim = next(p for p, i in heavies.items() if i == 0)
        victim_parent = next(r["parent_pid"] for r in started if r["worker"] == 0)
        os.kill(victim_parent, signal.SIGKILL)
        end = time.monotonic() + 30
        while not gone(victim):
            assert time.monotonic() < end, "the killed worker's heavy worker was orphaned"
            time.sleep(0.05)
        assert logs.wait("heavy worker: parent process gone; stopping", timeout=10, worker=0)["pid"] == victim
        # ... and the replacement worker starts a new one
        replacement = logs.wait("worker ready", timeout=120, worker=0)["pid"]
        fresh = logs.wait("heavy worker ready", timeout=120, worker=0)["pid"]
        pids |= {replacement, fresh}
        live = (pids - {victim, victim_parent}) | {proc.pid}
        assert all(not gone(p) for p in live)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        end = time.monotonic() + 10
        while not all(gone(p) for p in pids):
            assert time.monotonic() < end, [p for p in pids if not gone(p)]
            time.sleep(0.05)
        assert {r["worker"] for r in logs.all("heavy worker stopped") if "pid" in r} >= {0, 1}
        for r in started:  # the socket folders are removed
            assert not os.path.exists(os.path.dirname(r["address"].removeprefix("unix:")))
    finally:
        _stop(proc)
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
