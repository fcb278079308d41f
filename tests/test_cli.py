"""The `reranker` CLI, run in-process through main(argv)."""

from __future__ import annotations

import json

import pytest

from server.cli import main
from server.request_json import load_request, request_from_json

from testing.policies import BROKEN_POLICY
from tests.conftest import EXAMPLES_DIR, POLICIES_DIR
from tests.serve_process import log_waiter

EXAMPLE_REQUEST = EXAMPLES_DIR / "request_home_feed.json"



def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------ validate


def test_validate_good_files(capsys):
    files = sorted(str(p) for p in POLICIES_DIR.glob("*.yaml"))
    assert files, "the repo ships example policies"
    code, out, _ = run(capsys, "validate", *files)
    assert code == 0, out
    for f in files:
        assert f"{f}: OK" in out


def test_validate_bad_file_prints_file_path_message(capsys, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text(BROKEN_POLICY)
    good = str(POLICIES_DIR / "home_feed.yaml")
    code, out, _ = run(capsys, "validate", good, str(bad))
    assert code == 1
    lines = out.splitlines()
    assert any(line.startswith(f"{bad}: constraints[0]: unknown key 'colour'") for line in lines), out
    assert f"{good}: OK" in out


def test_validate_unreadable_file(capsys, tmp_path):
    missing = tmp_path / "missing.yaml"
    code, out, _ = run(capsys, "validate", str(missing))
    assert code == 1
    assert f"{missing}: cannot read" in out


def test_validate_a_folder_checks_every_file_and_duplicate_names(capsys, tmp_path):
    policy = "name: {name}\nversion: 1\nslate_size: 5\nobjective:\n  weights: {{p_click: 1.0}}\n"
    (tmp_path / "a.yaml").write_text(policy.format(name="feed"))
    (tmp_path / "B.YAML").write_text(policy.format(name="feed"))  # upper case: a policy file too
    (tmp_path / "c.yml").write_text(policy.format(name="other"))
    (tmp_path / "broken.yaml").write_text(BROKEN_POLICY)
    (tmp_path / ".a.yaml.swp").write_text("an editor's swap file")
    code, out, _ = run(capsys, "validate", str(tmp_path))
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[2].startswith(f"{tmp_path / 'broken.yaml'}: constraints[0]: unknown key 'colour'")
    assert lines[:2] + lines[3:] == [
        f"{tmp_path / 'B.YAML'}: OK (policy feed, version 1)",
        f"{tmp_path / 'a.yaml'}: name: policy name 'feed' is already used by {tmp_path / 'B.YAML'} (line 1)",
        f"{tmp_path / 'c.yml'}: OK (policy other, version 1)",
    ]


def test_validate_the_shipped_folder_and_an_empty_one(capsys, tmp_path):
    code, out, _ = run(capsys, "validate", str(POLICIES_DIR))
    assert code == 0, out
    assert f"{POLICIES_DIR / 'home_feed.yaml'}: OK" in out
    code, out, _ = run(capsys, "validate", str(tmp_path))
    assert code == 1
    assert out.strip() == f"{tmp_path}: no policy files (*.yaml, *.yml) in this folder"


# -------------------------------------------------------------------------------------- schema


def test_schema_writes_valid_json(capsys, tmp_path):
    target = tmp_path / "policy.schema.json"
    code, out, _ = run(capsys, "schema", "--output", str(target))
    assert code == 0 and str(target) in out
    schema = json.loads(target.read_text())
    assert schema["type"] == "object"
    assert {"name", "version", "slate_size", "objective", "constraints"} <= set(schema["properties"])


def test_schema_to_stdout(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0
    assert json.loads(out)["type"] == "object"


# ---------------------------------------------------------------------------- call / policies


def test_call_prints_slate_and_diagnostics(capsys, live_server):
    code, out, err = run(capsys, "call", "--address", live_server.address, str(EXAMPLE_REQUEST))
    assert code == 0, err
    assert "slate: policy home_feed" in out
    assert "position" in out and "item_id" in out and "utility" in out
    assert "solver:" in out and "status:" in out and "objective:" in out
    assert "elapsed_us:" in out and "total=" in out
    assert "constraints" in out
    ids = load_request(EXAMPLE_REQUEST).candidates.item_ids
    assert sum(item in out for item in ids) == 10  # the example asks for a slate of 10


def test_call_reads_the_address_from_RERANKER_ADDRESS(capsys, live_server, monkeypatch):
    monkeypatch.setenv("RERANKER_ADDRESS", live_server.address)
    code, out, err = run(capsys, "call", "--json", str(EXAMPLE_REQUEST))
    assert code == 0, err
    assert json.loads(out)["policy"] == "home_feed"
    # an address nobody listens on, from the variable: the error names it
    monkeypatch.setenv("RERANKER_ADDRESS", "127.0.0.1:1")
    code, _, err = run(capsys, "call", "--timeout", "2", str(EXAMPLE_REQUEST))
    assert code == 1 and "127.0.0.1:1" in err, err
    # --address wins over the variable
    code, _, err = run(capsys, "call", "--json", "--address", live_server.address, str(EXAMPLE_REQUEST))
    assert code == 0, err


def test_call_json_output(capsys, live_server):
    code, out, _ = run(capsys, "call", "--json", "--address", live_server.address, str(EXAMPLE_REQUEST))
    assert code == 0
    resp = json.loads(out)
    assert len(resp["items"]) == 10 and resp["policy"] == "home_feed"


def test_call_reports_rpc_errors_with_the_field(capsys, live_server, tmp_path):
    obj = json.loads(EXAMPLE_REQUEST.read_text())
    obj["candidates"]["scores"]["p_click"][3] = "NaN"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(obj))
    code, _, err = run(capsys, "call", "--address", live_server.address, str(bad))
    assert code == 1
    assert "INVALID_ARGUMENT" in err and "candidates.scores['p_click'].values[3]" in err


def test_call_rejects_a_malformed_file(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"policy": "home_feed", "candidates": {"item_ids": ["a"], "colour": 1}}')
    code, _, err = run(capsys, "call", "--address", "127.0.0.1:1", str(bad))
    assert code == 2
    assert str(bad) in err and "colour" in err


def test_policies_lists_loaded_policies(capsys, live_server):
    code, out, _ = run(capsys, "policies", "--address", live_server.address)
    assert code == 0
    assert "home_feed" in out


def test_policies_shows_a_file_whose_edit_was_rejected(capsys, tmp_path):
    from engine.engine import Engine
    from server.app import create_server

    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nversion: 1\nslate_size: 5\nobjective:\n  weights: {p_click: 1.0}\n")
    engine = Engine.from_directory(str(tmp_path))
    policy.write_text("name: p\nversion: 2\nslate_size: 0\nobjective:\n  weights: {p_click: 1.0}\n")
    engine.reload()
    server, port = create_server("127.0.0.1:0", engine)
    server.start()
    try:
        code, out, _ = run(capsys, "policies", "--address", f"127.0.0.1:{port}")
    finally:
        server.stop(None)
    assert code == 0
    file_digest = engine.store.file_status(str(policy)).digest
    assert "INVALID" in out
    assert out.splitlines()[-1] == (
        f"p: {policy} is invalid on disk (sha256 {file_digest[:12]}); the version above stays live: "
        "slate_size: must be an integer between 1 and 1000, got 0 (line 3)")


def test_request_json_accepts_both_spellings():
    compact = request_from_json({
        "policy": "p", "solver": "greedy", "slate_size": 2,
        "candidates": {"item_ids": ["a", "b"], "scores": {"s": [1, 2]},
                       "attributes": {"c": ["x", "y"], "d": {"dictionary": ["u"], "codes": [0, 0]}},
                       "embeddings": [[1, 2], [3, 4]]},
    })
    canonical = request_from_json({
        "policy": "p", "solver": "SOLVER_MODE_GREEDY", "slateSize": 2,
        "candidates": {"itemIds": ["a", "b"], "scores": {"s": {"values": [1, 2]}},
                       "attributes": {"c": {"values": ["x", "y"]}, "d": {"dictionary": ["u"], "codes": [0, 0]}},
                       "embeddings": {"dim": 2, "values": [1, 2, 3, 4]}},
    })
    assert compact == canonical
    with pytest.raises(ValueError, match="colour"):
        request_from_json({"policy": "p", "colour": 1})


# ------------------------------------------------------------------------------------- serve


def test_serve_starts_reports_serving_and_exits_0_on_sigterm():
    """`reranker serve` as a real process: JSON logs, health SERVING, graceful SIGTERM -> exit 0."""
    import signal
    import subprocess
    import sys

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--address", "127.0.0.1:0",
         "--policies", str(POLICIES_DIR), "--grace", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=POLICIES_DIR.parent,
    )
    wait_for = log_waiter(proc)

    try:
        port = wait_for("listening")["port"]
        wait_for("serving")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="reranker.v1.Reranker"), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert wait_for("shutting down")["signal"] == "SIGTERM"
        wait_for("stopped")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_experiment_check_names_each_refused_file_and_rebalance_moves_only_what_must_move(capsys, tmp_path):
    import yaml

    from engine import bucketing
    from engine.experiments import load_experiment_file

    examples = EXAMPLES_DIR / "experiments"
    code, out, _ = run(capsys, "experiment", "check", str(examples), "--policies", str(POLICIES_DIR))
    assert code == 0, out  # the example experiments' variant policies ship in policies/
    assert "experiment search_fewer_ads on search: control 40 %, fewer_ads 45 %, holdout 15 %" in out
    without = tmp_path / "policies"
    without.mkdir()
    for f in POLICIES_DIR.glob("*.yaml"):
        if f.name != "search_fewer_ads.yaml":
            (without / f.name).write_text(f.read_text())
    code, out, _ = run(capsys, "experiment", "check", str(examples), "--policies", str(without))
    assert code == 1
    assert (f"{examples / 'search_fewer_ads.yaml'}: variants[1].policy: no policy named "
            f"'search_fewer_ads'") in out and "(line 26)" in out

    source = examples / "search_fewer_ads.yaml"
    target = tmp_path / "rebalanced.yaml"
    code, out, _ = run(capsys, "experiment", "rebalance", str(source), "control=30",
                       "fewer_ads=50", "holdout=20", "-o", str(target))
    assert code == 0, out
    old = load_experiment_file(source).experiment.variant_ranges()
    new = load_experiment_file(target).experiment
    assert [v.weight for v in new.variants] == [30, 50, 20]
    assert bucketing.moved(old, new.variant_ranges()) == 1000  # 10 % of the buckets: control's
    assert yaml.safe_load(target.read_text())["name"] == "search_fewer_ads"
    code, _, err = run(capsys, "experiment", "rebalance", str(source), "control=30")
    assert code == 2 and "missing: fewer_ads, holdout" in err


@pytest.mark.parametrize("kind, gap, shown", [("relative", 0.0123, "gap: 1.230%"),
                                              ("absolute", 2.5, "gap: 2.5 (absolute)")])
def test_call_prints_the_gap_the_way_its_kind_means_it(kind, gap, shown):
    """An absolute gap (bound <= 0, or a negative objective under a positive bound) is printed
    in objective units, never as a percentage (a newcomer once read 'gap 250 %')."""
    import io

    from rich.console import Console

    from server._gen.reranker.v1 import reranker_pb2 as pb
    from server.cli import _print_response

    resp = pb.RerankResponse(policy="p")
    d = resp.diagnostics
    d.objective, d.bound, d.gap, d.gap_kind, d.bound_method = -1.0, 1.5, gap, kind, "lagrangian"
    buf = io.StringIO()
    _print_response(Console(file=buf, width=200), resp)
    text = buf.getvalue()
    assert shown in text and "(lagrangian)" in text
    assert ("%" in text.split("gap:")[1].split()[0]) == (kind == "relative")
