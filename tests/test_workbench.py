"""The workbench's application over its HTTP API (FastAPI's test client, a real app on real
folders and a real synthetic decision log): listing with digests and first errors, validation
errors naming the line and the path, previews that match offline.preview, Pareto sweeps whose
points keep the file's formatting, the race-safe atomic promote, the token and read-only mode."""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from offline.policies import version_from_text
from offline.preview import preview
from server.cli import main
from tests.conftest import EXAMPLES_DIR, POLICIES_DIR
from workbench.app import TOKEN_HEADER, Config, create_app, is_local
from workbench.folder import Folders, WorkbenchError, with_numbers
from testing.workbench import copy_policies, make_log

FILE = "home_feed.yaml"


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    """300 requests of 40 candidates served by home_feed (greedy), with simulated clicks."""
    src = copy_policies(POLICIES_DIR, tmp_path_factory.mktemp("src"), solver_mode="greedy")
    return make_log(str(src), str(tmp_path_factory.mktemp("log") / "log"), records=300, candidates=40)


@pytest.fixture()
def folder(tmp_path) -> Path:
    return copy_policies(POLICIES_DIR, tmp_path / "policies", solver_mode="greedy")


BASE_URL = "http://127.0.0.1:8750"  # the page bound to the loopback answers loopback host names only


def client(folder, log=None, **kw) -> TestClient:
    return TestClient(create_app(Config(policies=str(folder), log=str(log) if log else None, warmup=False, **kw)),
                      base_url=BASE_URL)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finish(c: TestClient, job: dict, timeout: float = 120) -> dict:
    end = time.monotonic() + timeout
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < end, job
        time.sleep(0.05)
        job = c.get(f"/api/jobs/{job['id']}").json()
    return job


def test_the_state_lists_every_file_with_its_digest_and_an_invalid_file_with_its_first_error(folder):
    (folder / "broken.yaml").write_text('name: broken\nversion: "1"\nslate_size: -3\nobjective: {weights: {p_click: 1}}\n')
    c = TestClient(create_app(Config(policies=str(folder), experiments=str(EXAMPLES_DIR / "experiments"),
                                     warmup=False)), base_url=BASE_URL)
    state = c.get("/api/state").json()
    rows = {r["file"]: r for r in state["policies"]}
    assert set(rows) == {p.name for p in folder.glob("*.yaml")}
    assert rows[FILE]["valid"] and rows[FILE]["name"] == "home_feed" and rows[FILE]["version"] == "2026-11-01"
    assert rows[FILE]["digest"] == sha(folder / FILE)
    bad = rows["broken.yaml"]
    assert not bad["valid"] and bad["name"] == "broken"
    assert bad["error"].startswith("line 3, slate_size: must be an integer between 1 and 1000, got -3")
    exps = {r["file"]: r for r in state["experiments"]}
    assert exps["search_fewer_ads.yaml"]["valid"] and exps["search_fewer_ads.yaml"]["policy"] == "search"
    assert exps["search_fewer_ads.yaml"]["digest"] == sha(EXAMPLES_DIR / "experiments" / "search_fewer_ads.yaml")
    page = c.get("/").text
    assert "Policy workbench" in page and 'id="promote"' in page
    js = c.get("/vendor/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000 and b"plotly" in js.content[:2000].lower()


def test_validation_names_the_line_and_the_field_path(folder):
    c = client(folder)
    text = (folder / FILE).read_text()
    r = c.post("/api/validate", json={"file": FILE, "text": text.replace("    max: 3\n", "    max: zero\n")}).json()
    assert not r["valid"]
    [issue] = r["issues"]
    assert issue["line"] == 32 and issue["path"] == "constraints[0].max"
    assert issue["text"].startswith("line 32, constraints[0].max: ")
    r = c.post("/api/validate", json={"file": FILE, "text": text + "\n  oops: [\n"}).json()
    assert not r["valid"] and r["issues"][0]["line"] == 54 and "invalid YAML" in r["issues"][0]["text"]
    r = c.post("/api/validate", json={"file": FILE, "text": text.replace("name: home_feed", "name: search")}).json()
    assert not r["valid"] and r["issues"][0]["path"] == "name" and "already used by search.yaml" in r["issues"][0]["text"]
    r = c.post("/api/validate", json={"file": FILE, "text": text}).json()
    assert r["valid"] and r["issues"] == [] and r["name"] == "home_feed"
    assert "constraints.max_3_per_category.max" in r["numbers"]


def test_an_invalid_proposal_is_never_previewed(folder, log):
    c = client(folder, log)
    text = (folder / FILE).read_text().replace("slate_size: 20", "slate_size: 0")
    r = c.post("/api/preview", json={"file": FILE, "text": text, "sample": 100})
    assert r.status_code == 422
    assert r.json()["error"].startswith("the proposed policy is invalid: line 15, slate_size: must be")
    assert r.json()["issues"][0]["line"] == 15
    assert c.app.state.jobs.get("preview-1") is None  # nothing was queued
    r = c.post("/api/preview", json={"file": FILE, "text": (folder / FILE).read_text(), "sample": 0})
    assert r.status_code == 400 and "sample: expected an integer from 1" in r.json()["error"]


def test_a_policy_the_log_cannot_run_is_named_before_work_starts(folder, log):
    c = client(folder, log)
    text = (folder / FILE).read_text().replace("attribute: category\n", "attribute: colour\n", 1)
    r = c.post("/api/preview", json={"file": FILE, "text": text, "sample": 100})
    assert r.status_code == 422
    assert "needs candidates.attributes['colour']" in r.json()["error"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_preview_job_reports_what_offline_preview_reports_on_the_same_first_records(folder, log, workers):
    c = client(folder, log, workers=workers)
    live_text = (folder / FILE).read_text()
    text = live_text.replace("p_purchase: 10.0", "p_purchase: 2.0")
    job = c.post("/api/preview", json={"file": FILE, "text": text, "sample": 120})
    assert job.status_code == 202 and job.json()["state"] in ("queued", "running")
    done = finish(c, job.json())
    assert done["state"] == "done", done
    res = done["result"]
    direct = preview(log, version_from_text(live_text, str(folder / FILE)), version_from_text(text, FILE),
                     sample=120, outcomes=log / "outcomes")
    assert res["records"] == 120 and res["sample"] == "the first 120 of 300 records"
    assert res["lines"] == direct.lines
    assert res["lines"][0].startswith(f"{100 * direct.changed.delta:.1f} % of 120 slates change")
    by = {d["name"]: d for d in res["deltas"]}
    purchase = next(d for d in direct.metrics if d.name == "expected_p_purchase")
    assert by["expected_p_purchase"]["relative"] == pytest.approx(purchase.relative)
    assert by["expected_p_purchase"]["relative"] < 0  # a smaller purchase weight buys fewer purchases
    cat = {r["value"]: r for r in res["exposure"]["category"]}
    for change in direct.exposure["category"]:
        assert math.isclose(cat[change.value]["proposed"], change.change.proposed)
    titles = [t["title"] for t in res["tables"]]
    assert titles[0].startswith("direct metrics") and any(t.startswith("off-policy estimates") for t in titles)


def test_a_pareto_sweep_keeps_the_file_as_written_and_serves_every_point(folder, log):
    c = client(folder, log)
    text = (folder / FILE).read_text()
    body = {"file": FILE, "text": text, "sample": 100, "refine": 1,
            "vary": [{"path": "objective.weights.p_purchase", "lo": 0, "hi": 20, "n": 3}],
            "metrics": ["expected_p_click", "expected_p_purchase"]}
    done = finish(c, c.post("/api/pareto", json=body).json())
    assert done["state"] == "done", done
    points = done["result"]["points"]
    assert [p["values"]["objective.weights.p_purchase"] for p in points[:3]] == [0.0, 10.0, 20.0]
    assert any(p["round"] == 1 for p in points) and any(p["frontier"] for p in points)
    zero = points[0]
    assert "-    p_purchase: 10.0\n+    p_purchase: 0.0\n" in zero["diff"]
    assert points[1]["diff"] == ""  # 10.0 is the live value: the same file
    got = c.get(f"/api/pareto/{done['id']}/0").json()
    assert got["text"] == text.replace("p_purchase: 10.0", "p_purchase: 0.0")  # comments and order kept
    assert version_from_text(got["text"]).loaded.policy.objective.weights["p_purchase"] == 0.0
    # the point with no purchase weight has the most clicks and the fewest purchases
    clicks = [p["metrics"]["expected_p_click"] for p in points[:3]]
    assert clicks[0] == max(clicks)
    assert c.get(f"/api/pareto/{done['id']}/99").status_code == 404
    choices = c.get("/api/metrics", params={"file": FILE}).json()["metrics"]
    assert {"expected_p_click", "expected_p_purchase", "coverage", "relaxed:max_3_per_category",
            "share:seller_tier="} <= set(choices)
    bad = dict(body, vary=[{"path": "objective.weights.nope.x", "lo": 0, "hi": 1, "n": 2}])
    r = c.post("/api/pareto", json=bad)
    assert r.status_code == 422 and "the policy has no number at 'objective.weights.nope.x'" in r.json()["error"]
    assert "constraints.max_3_per_category.max" in r.json()["error"]
    r = c.post("/api/pareto", json=dict(body, metrics=["expected_p_click"]))
    assert r.status_code == 422 and r.json()["error"] == "--metric: give 2 or 3 metrics, got 1"
    r = c.post("/api/pareto", json=dict(body, vary=[{"path": "slate_size", "lo": 1, "hi": 20, "n": 20},
                                                    {"path": "objective.weights.p_click", "lo": 0, "hi": 1, "n": 11}]))
    assert r.status_code == 422 and "the grid has 220 points; the workbench sweeps at most 200" in r.json()["error"]


def test_with_numbers_edits_only_the_numbers_and_refuses_what_it_cannot_place():
    text = (POLICIES_DIR / FILE).read_text()
    out = with_numbers(text, [("constraints", "max_3_per_category", "max"), ("objective", "weights", "p_click")],
                       [2.4, 0.5])
    assert out == text.replace("    max: 3\n", "    max: 2\n", 1).replace("p_click: 1.0", "p_click: 0.5")
    assert with_numbers(text, [("objective", "weights", "relevance")], [1.0]) is None  # not in the file
    assert with_numbers("a: [1, 2]\n", [("a", "1")], [5.0]) == "a: [1, 5]\n"


def test_promote_writes_atomically_and_a_stale_base_is_refused_never_merged(folder, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="workbench.app")
    c = client(folder)
    path = folder / FILE
    text, base = path.read_text(), sha(path)
    before = sorted(p.name for p in folder.iterdir())
    new = text.replace("p_purchase: 10.0", "p_purchase: 8.0")
    r = c.post("/api/promote", json={"file": FILE, "text": new, "base_digest": base})
    assert r.status_code == 200, r.json()
    assert path.read_text() == new and r.json() == {"file": FILE, "digest": sha(path), "previous": base}
    # no temp file left (compared with the folder itself: the shipped policies/ may hold a
    # server's .reranker state folder when another test served it)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert f"promoted {folder}/{FILE} for testclient: sha256 {base[:12]} -> {sha(path)[:12]}" in caplog.messages
    # another edit that started from the old file loses the race: refused, the file stays
    other = text.replace("p_click: 1.0", "p_click: 2.0")
    r = c.post("/api/promote", json={"file": FILE, "text": other, "base_digest": base})
    assert r.status_code == 409
    assert any(m.startswith("promote refused (HTTP 409) for testclient: ") for m in caplog.messages)
    assert r.json()["error"].startswith(f"{FILE} changed on disk since this edit started (it started from {base[:12]}, "
                                        f"the file is now {sha(path)[:12]}): nothing was written")
    assert path.read_text() == new
    # an edit made outside the workbench counts too
    path.write_text(new + "\n# edited by hand\n")
    r = c.post("/api/promote", json={"file": FILE, "text": other, "base_digest": hashlib.sha256(new.encode()).hexdigest()})
    assert r.status_code == 409 and path.read_text().endswith("# edited by hand\n")
    # invalid: never written
    now = sha(path)
    r = c.post("/api/promote", json={"file": FILE, "text": new.replace("slate_size: 20", "slate_size: -1"),
                                     "base_digest": now})
    assert r.status_code == 422 and "line 15, slate_size" in r.json()["error"] and sha(path) == now
    r = c.post("/api/promote", json={"file": "../etc/passwd", "text": new, "base_digest": now})
    assert r.status_code == 404 and "expected the name of a policy file" in r.json()["error"]
    r = c.post("/api/promote", json={"file": FILE, "text": new, "base_digest": "abc"})
    assert r.status_code == 400 and "base_digest: expected the sha256" in r.json()["error"]


def test_a_token_guards_promote_and_beyond_localhost_one_is_required(folder):
    assert is_local("127.0.0.1") and is_local("::1") and is_local("localhost") and not is_local("0.0.0.0")
    with pytest.raises(WorkbenchError, match=r"--host 0\.0\.0\.0: the page would be reachable beyond this machine "
                                             r"with no token; give --token"):
        create_app(Config(policies=str(folder), host="0.0.0.0", warmup=False))
    create_app(Config(policies=str(folder), host="0.0.0.0", read_only=True, warmup=False))  # read-only: allowed
    c = client(folder, host="0.0.0.0", token="s3cret-token")
    path = folder / FILE
    text, base = path.read_text(), sha(path)
    body = {"file": FILE, "text": text.replace("p_click: 1.0", "p_click: 1.5"), "base_digest": base}
    r = c.post("/api/promote", json=body)
    assert r.status_code == 401 and r.json()["error"].startswith(f"promote needs the workbench token (header {TOKEN_HEADER})")
    r = c.post("/api/promote", json=body, headers={TOKEN_HEADER: "wrong-token"})
    assert r.status_code == 403 and "token is wrong" in r.json()["error"] and sha(path) == base
    r = c.post("/api/promote", json=body, headers={TOKEN_HEADER: "s3cret-token"})
    assert r.status_code == 200 and sha(path) != base
    assert 'id="token"' in c.get("/").text


def test_a_cross_site_post_is_refused(folder):
    c = client(folder)
    path = folder / FILE
    body = {"file": FILE, "text": path.read_text() + "# x\n", "base_digest": sha(path)}
    import json

    r = c.post("/api/promote", content=json.dumps(body), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "must be JSON" in r.json()["error"]
    r = c.post("/api/promote", json=body, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin request refused" in r.json()["error"]
    assert sha(path) == body["base_digest"]
    r = TestClient(c.app, base_url="http://evil.example:8750").get("/api/state")  # DNS rebinding
    assert r.status_code == 403 and "open it as http://127.0.0.1:PORT/" in r.json()["error"]
    r = c.post("/api/promote", json=body, headers={"Origin": BASE_URL})
    assert r.status_code == 200


def test_read_only_refuses_and_hides_promote(folder):
    c = client(folder, read_only=True)
    path = folder / FILE
    base = sha(path)
    r = c.post("/api/promote", json={"file": FILE, "text": path.read_text() + "# x\n", "base_digest": base})
    assert r.status_code == 403 and "read-only" in r.json()["error"] and sha(path) == base
    page = c.get("/").text
    assert 'id="promote"' not in page and "read-only" in page


def test_the_cli_refuses_to_expose_writes_without_a_token(folder, capsys, monkeypatch):
    monkeypatch.delenv("RERANKER_WORKBENCH_TOKEN", raising=False)
    code = main(["workbench", "--policies", str(folder), "--host", "0.0.0.0", "--port", "0"])
    assert code == 2
    assert "the page would be reachable beyond this machine with no token" in capsys.readouterr().err
    code = main(["workbench", "--policies", str(folder), "--log", str(folder / "nope")])
    assert code == 2 and "--log: no such file or folder" in capsys.readouterr().err


def test_folders_refuse_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="--policies: no such folder"):
        Folders(tmp_path / "nope")
    shutil.copy(POLICIES_DIR / FILE, tmp_path / FILE)
    f = Folders(tmp_path)
    assert f.diff(FILE, (tmp_path / FILE).read_text()) == ""
    assert yaml.safe_load(f.read(FILE)[0])["name"] == "home_feed"


def test_the_token_can_come_from_the_environment_and_opens_the_page_beyond_localhost(folder):
    """`reranker workbench --host 0.0.0.0` as a process, the token from RERANKER_WORKBENCH_TOKEN:
    it starts, and a promote without the token is refused over real HTTP (sent to 127.0.0.1)."""
    import os
    import subprocess
    import sys

    import httpx

    from tests.conftest import REPO

    env = dict(os.environ, RERANKER_WORKBENCH_TOKEN="from-the-env-123")
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "workbench", "--policies", str(folder),
                             "--host", "0.0.0.0", "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("workbench listening on http://0.0.0.0:") and "(promote needs the token)" in line
        port = int(line.split()[3].rsplit(":", 1)[1].strip("/"))
        path = folder / FILE
        body = {"file": FILE, "text": path.read_text() + "# x\n", "base_digest": sha(path)}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert c.post("/api/promote", json=body).status_code == 401
            r = c.post("/api/promote", json=body, headers={TOKEN_HEADER: "from-the-env-123"})
            assert r.status_code == 200 and path.read_text().endswith("# x\n")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_jobs_report_their_phase_while_running_then_the_result_or_the_error():
    import threading

    from workbench.folder import Invalid
    from workbench.jobs import Jobs

    jobs = Jobs()
    go, started = threading.Event(), threading.Event()

    def work(job):
        job.set_phase("replaying 10 records")
        started.set()
        go.wait(30)
        return {"answer": 42}

    try:
        job = jobs.submit("preview", 20, work)
        queued = jobs.submit("preview", 20, lambda job: {"second": True})
        assert started.wait(30)
        now = job.to_json()
        assert now["state"] == "running" and now["phase"] == "replaying 10 records"
        assert 0.0 <= now["fraction"] <= 0.95 and "result" not in now
        assert queued.to_json()["state"] == "queued"  # one job at a time
        go.set()
        assert job.ended.wait(30) and queued.ended.wait(30)
        done = job.to_json()
        assert done["state"] == "done" and done["fraction"] == 1.0 and done["result"] == {"answer": 42}
        assert queued.to_json()["result"] == {"second": True}

        def fail(job):
            raise Invalid("the proposed policy is invalid: line 3, slate_size: bad", [{"line": 3}])

        bad = jobs.submit("preview", 1, fail)
        assert bad.ended.wait(30)
        out = bad.to_json()
        assert out["state"] == "failed" and out["error"].startswith("the proposed policy is invalid: line 3")
        assert out["issues"] == [{"line": 3}] and "result" not in out
        assert jobs.get(job.id) is job and jobs.get("nope") is None
    finally:
        go.set()
        jobs.shutdown()
