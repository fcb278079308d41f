"""The policy store beyond one reload: last good versions that survive restarts, what a rejected
edit looks like from outside (logs, ListPolicies), and files that must not abort a reload."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from engine import policy_loader
from engine.engine import Engine
from engine.errors import PolicyInvalid
from engine.policy_loader import (
    MAX_DEPTH,
    PolicyStore,
    check_folder,
    default_state_dir,
    parse_policy_text,
)
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.app import create_server
from tests.serve_process import log_waiter

POLICY = """name: {name}
version: "{version}"
slate_size: 5
objective:
  weights: {{p_click: 1.0}}
"""
BAD = POLICY.replace("slate_size: 5", "slate_size: 0")
BAD_ERROR = "slate_size: must be an integer between 1 and 1000, got 0 (line 3)"
DEEP = "name: p\nx: " + "[" * 5000 + "]" * 5000 + "\n"


def write(folder: Path, file: str, text: str, name: str = "p", version: str = "1") -> Path:
    path = folder / file
    path.write_text(text.format(name=name, version=version), encoding="utf-8")
    return path


def sha(text: str, name: str = "p", version: str = "1") -> str:
    return hashlib.sha256(text.format(name=name, version=version).encode()).hexdigest()


# ------------------------------------------------------------------------------ last good version


def test_an_invalid_file_at_start_up_is_served_from_its_last_good_version(tmp_path, caplog):
    folder, state = tmp_path / "policies", tmp_path / "state"
    folder.mkdir()
    path = write(folder, "p.yaml", POLICY)
    first = PolicyStore.from_directory(folder, state_dir=state)
    assert first.get("p").policy.version == "1"
    assert sorted(os.listdir(state)) == [f"p.yaml.{sha(POLICY)}"]
    write(folder, "p.yaml", BAD, version="2")
    first.reload_directory(folder)  # rejected: the running store keeps version 1, as before
    caplog.clear()

    # a new process (a worker restarted after a crash, or the whole server) starts now
    with caplog.at_level(logging.WARNING):
        engine = Engine.from_directory(str(folder), state_dir=str(state))
    live = engine.store.get("p")
    assert live.policy.version == "1" and live.last_good and live.digest == sha(POLICY)
    assert [r.getMessage() for r in caplog.records] == [
        f"policy file rejected (serving its last good version '1' (sha256 {sha(POLICY)[:12]}), "
        f"saved in {state}):\n{path}: {BAD_ERROR}"]
    [info] = engine.list_policies()
    assert (info.digest, info.file_digest) == (sha(POLICY), sha(BAD, version="2"))
    assert info.file_invalid and info.last_good and info.file_error == BAD_ERROR

    # fixed: the file's own version goes live and becomes the last good one
    write(folder, "p.yaml", POLICY, version="3")
    assert engine.reload() == []
    [info] = engine.list_policies()
    assert (info.version, info.last_good, info.file_invalid, info.file_error) == ("3", False, False, "")
    assert info.file_digest == info.digest == sha(POLICY, version="3")
    assert f"p.yaml.{sha(POLICY, version='3')}" in os.listdir(state)


def test_without_a_state_dir_an_invalid_file_is_not_loaded(tmp_path, caplog):
    write(tmp_path, "p.yaml", BAD)
    with caplog.at_level(logging.WARNING):
        store = PolicyStore.from_directory(tmp_path)
    assert len(store) == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"policy file rejected (not loaded):\n{tmp_path / 'p.yaml'}: {BAD_ERROR}"]


def test_a_deleted_file_is_not_resurrected(tmp_path):
    folder, state = tmp_path / "policies", tmp_path / "state"
    folder.mkdir()
    write(folder, "p.yaml", POLICY)
    write(folder, "q.yaml", POLICY, name="q")
    store = PolicyStore.from_directory(folder, state_dir=state)
    (folder / "p.yaml").unlink()  # deleted while the server runs
    store.reload_directory(folder)
    assert "p" not in store
    assert sorted(os.listdir(state)) == [f"q.yaml.{sha(POLICY, name='q')}"]
    (folder / "q.yaml").unlink()  # deleted while the server is down
    assert len(PolicyStore.from_directory(folder, state_dir=state)) == 0
    assert os.listdir(state) == []
    write(folder, "p.yaml", BAD)  # a new file of an old name has no last good version
    write(folder, "q.yaml", BAD, name="q")
    assert len(PolicyStore.from_directory(folder, state_dir=state)) == 0


def test_the_newest_saved_version_wins_and_old_ones_are_pruned(tmp_path):
    folder, state = tmp_path / "policies", tmp_path / "state"
    folder.mkdir()
    store = PolicyStore(state_dir=state)
    for v in range(1, 6):
        write(folder, "p.yaml", POLICY, version=str(v))
        store.reload_directory(folder)
        os.utime(state / f"p.yaml.{sha(POLICY, version=str(v))}", (v, v))  # distinct mtimes
    assert sorted(os.listdir(state)) == sorted(f"p.yaml.{sha(POLICY, version=str(v))}" for v in (3, 4, 5))
    (state / f"p.yaml.{sha(POLICY, version='5')}").write_text("damaged")  # digest no longer matches
    write(folder, "p.yaml", BAD)
    assert PolicyStore.from_directory(folder, state_dir=state).get("p").policy.version == "4"
    write(folder, "p.yaml", POLICY, version="3")  # back to an older version: the newest again
    store.reload_directory(folder)
    write(folder, "p.yaml", BAD)
    store.reload_directory(folder)
    assert PolicyStore.from_directory(folder, state_dir=state).get("p").policy.version == "3"


def test_default_state_dir_is_per_user_else_in_the_policy_folder(tmp_path, monkeypatch):
    folder = tmp_path / "policies"
    folder.mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    tag = hashlib.sha256(os.path.realpath(folder).encode()).hexdigest()[:12]
    assert default_state_dir(folder) == tmp_path / "xdg" / "reranker" / "last-good" / f"policies-{tag}"
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "not-a-dir"))
    assert default_state_dir(folder) == folder / ".reranker" / "last-good"


# ------------------------------------------------------------------------------ messages


def test_a_duplicate_never_claims_a_previous_version_it_lost(tmp_path, caplog):
    write(tmp_path, "z.yaml", POLICY, name="x")
    write(tmp_path, "c.yaml", POLICY, name="y")
    store = PolicyStore.from_directory(tmp_path)
    # z.yaml now claims c.yaml's name, and a new b.yaml takes z.yaml's old name
    write(tmp_path, "z.yaml", POLICY, name="y", version="2")
    write(tmp_path, "b.yaml", POLICY, name="x")
    with caplog.at_level(logging.WARNING):
        store.reload_directory(tmp_path)
    assert store.get("x").source == str(tmp_path / "b.yaml")
    assert store.get("y").source == str(tmp_path / "c.yaml")
    assert [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()] == [
        f"policy file rejected (not loaded):\n{tmp_path / 'z.yaml'}: name: policy name 'y' is already "
        f"used by {tmp_path / 'c.yaml'} (line 1)"]


# ------------------------------------------------------------------------------ deep YAML, crashes


def test_deep_nesting_is_refused_with_a_message():
    with pytest.raises(PolicyInvalid) as info:
        parse_policy_text(DEEP, "deep.yaml")
    assert str(info.value) == (f"deep.yaml: the document is nested deeper than {MAX_DEPTH} levels "
                               "(line 2); a policy needs about 6")
    chained = "a0: &a0 [1]\n" + "".join(f"a{i + 1}: &a{i + 1} [*a{i}]\n" for i in range(80))
    with pytest.raises(PolicyInvalid, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse_policy_text(chained + "name: p\n", "chained.yaml")  # the depth is the aliases'
    with pytest.raises(PolicyInvalid) as info:
        parse_policy_text("name: p\nx: &a [*a]\n", "loop.yaml")
    assert str(info.value) == ("loop.yaml: an alias (*name) refers to a value that contains it "
                               "(line 2); write the values out")


def test_one_bad_file_cannot_abort_a_folder_reload(tmp_path, monkeypatch):
    write(tmp_path, "a.yaml", POLICY, name="a")
    (tmp_path / "deep.yaml").write_text(DEEP)
    write(tmp_path, "crash.yaml", POLICY, name="crash")
    real = policy_loader.parse_policy_text

    def parse(text: str, source: str = "<text>"):
        if source.endswith("crash.yaml"):
            raise ValueError("a validator bug")
        return real(text, source)

    monkeypatch.setattr(policy_loader, "parse_policy_text", parse)
    store = PolicyStore.from_directory(tmp_path)
    assert [lp.name for lp in store.list()] == ["a"]
    assert [str(e) for e in store.errors] == [
        f"{tmp_path / 'crash.yaml'}: cannot be loaded: ValueError: a validator bug",
        f"{tmp_path / 'deep.yaml'}: the document is nested deeper than {MAX_DEPTH} levels (line 2); "
        "a policy needs about 6",
    ]


# ------------------------------------------------------------------------------ over gRPC


@pytest.fixture
def folder_server(tmp_path):
    """A real server over an engine on a temporary policy folder (no warm-up: no Rerank here)."""
    folder = tmp_path / "policies"
    folder.mkdir()
    write(folder, "p.yaml", POLICY)
    engine = Engine.from_directory(str(folder))
    server, port = create_server("127.0.0.1:0", engine)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield folder, engine, pb_grpc.RerankerStub(channel), port
    finally:
        server.stop(None)


def test_validate_policy_refuses_deep_nesting_as_an_issue(folder_server):
    _, _, stub, _ = folder_server
    resp = stub.ValidatePolicy(pb.ValidatePolicyRequest(yaml=DEEP, filename="deep.yaml"), timeout=10)
    assert not resp.valid
    assert [(i.path, i.message) for i in resp.issues] == [
        ("", f"the document is nested deeper than {MAX_DEPTH} levels (line 2); a policy needs about 6")]


def test_list_policies_shows_a_rejected_edit(folder_server):
    folder, engine, stub, _ = folder_server
    [info] = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies
    assert (info.file_invalid, info.file_error, info.file_digest) == (False, "", info.digest)
    write(folder, "p.yaml", BAD, version="2")
    engine.reload()
    [info] = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies
    assert (info.version, info.digest) == ("1", sha(POLICY))
    assert info.file_invalid and not info.last_good
    assert (info.file_digest, info.file_error) == (sha(BAD, version="2"), BAD_ERROR)


# ------------------------------------------------------------------------------ a real restart


def _start(folder: Path, state: Path, processes: int) -> tuple[subprocess.Popen, object]:
    """`reranker serve` on `folder` with `state` as its state dir (not yet waited for)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--processes", str(processes),
         "--address", "127.0.0.1:0", "--policies", str(folder), "--state-dir", str(state),
         "--metrics-port", "-1", "--watch-interval", "0.05", "--settle", "0.05"],
        stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    return proc, log_waiter(proc)


def _serve(folder: Path, state: Path) -> tuple[subprocess.Popen, object, int]:
    proc, wait_for = _start(folder, state, processes=1)
    port = wait_for("listening", timeout=120)["port"]
    wait_for("serving", timeout=120)
    return proc, wait_for, port


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _policies(port: int) -> list:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return list(pb_grpc.RerankerStub(channel).ListPolicies(pb.ListPoliciesRequest(), timeout=10).policies)


def test_a_full_restart_with_a_broken_file_keeps_serving_the_last_good_version(tmp_path):
    folder, state = tmp_path / "policies", tmp_path / "state"
    folder.mkdir()
    write(folder, "p.yaml", POLICY)
    proc, wait_for, port = _serve(folder, state)
    try:
        write(folder, "p.yaml", BAD, version="2")
        record = wait_for("policies reloaded", timeout=30)
        assert record["trigger"] == "watch" and record["invalid_files"] == [str(folder / "p.yaml")]
        # the record may be the heavy worker's (it reloads the same folder): wait for the
        # serving process's own reload, as ListPolicies reports it
        deadline = time.monotonic() + 30
        while True:
            [info] = _policies(port)
            if info.file_invalid or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (info.version, info.file_invalid, info.last_good) == ("1", True, False)
    finally:
        _stop(proc)
    assert proc.returncode == 0
    proc, wait_for, port = _serve(folder, state)  # the file is still broken
    try:
        [info] = _policies(port)
        assert (info.name, info.version, info.digest) == ("p", "1", sha(POLICY))
        assert info.file_invalid and info.last_good and info.file_error == BAD_ERROR
    finally:
        _stop(proc)


def test_check_folder_is_what_the_server_loads(tmp_path):
    write(tmp_path, "a.yaml", POLICY, name="feed")
    write(tmp_path, "B.YAML", POLICY, name="feed")
    write(tmp_path, "c.yml", BAD, name="c")
    (tmp_path / ".a.yaml.swp").write_text("not a policy")
    results = check_folder(tmp_path)
    assert [Path(f).name for f, _ in results] == ["B.YAML", "a.yaml", "c.yml"]
    store = PolicyStore.from_directory(tmp_path)
    assert sorted(str(e) for _, e in results if isinstance(e, PolicyInvalid)) == sorted(
        str(e) for e in store.errors)
    assert [lp.source for lp in store.list()] == [str(tmp_path / "B.YAML")]


def test_a_worker_restarted_after_a_crash_serves_the_last_good_version(tmp_path):
    """The reported case: `serve --processes 2`, an edit is rejected, one worker crashes; every
    new connection (to the survivor or to the replacement) must still find the policy."""
    from server.request_json import request_from_json
    from server.servicer import WORKER_PID_METADATA_KEY

    folder, state = tmp_path / "policies", tmp_path / "state"
    folder.mkdir()
    write(folder, "p.yaml", POLICY)
    proc, wait_for = _start(folder, state, processes=2)
    try:
        port = wait_for("listening", timeout=120)["port"]
        pids = set(wait_for("serving", timeout=120)["pids"])
        write(folder, "p.yaml", BAD, version="2")
        for _ in pids:  # each worker reloads and rejects the edit
            assert wait_for("policies reloaded", timeout=30)["invalid_files"] == [str(folder / "p.yaml")]
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        assert wait_for("worker died; restarting it", timeout=30)["pid"] == victim
        new_pid = wait_for("worker ready", timeout=120)["pid"]
        request = request_from_json({"policy": "p", "candidates": {
            "item_ids": ["a", "b", "c"], "scores": {"p_click": [0.1, 0.3, 0.2]}}})
        answered = []
        for i in range(24):  # new connections: the kernel spreads them over both workers
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                    ("grpc.use_local_subchannel_pool", 1), ("test.connection", i)]) as channel:
                resp, call = pb_grpc.RerankerStub(channel).Rerank.with_call(request, timeout=20)
                assert resp.policy_version == "1"
                answered.append(int(dict(call.trailing_metadata())[WORKER_PID_METADATA_KEY]))
        assert new_pid in answered  # all 24 on the survivor by chance: probability 2**-24
    finally:
        _stop(proc)
