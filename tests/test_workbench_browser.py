"""The workbench in a real headless chromium (Debian's chromium + chromium-driver, Selenium),
against `reranker workbench` running as a subprocess on a temporary copy of policies/ and a
synthetic decision log: what a person sees when they edit (a line-numbered error appears, then
goes), preview (plain-language lines, plots whose bars have the expected colours on screen),
sweep a Pareto frontier and click a point, promote (the diff in the confirmation, the file and
its digest change on disk, a running `reranker serve` reloads it), lose a race (refused), and use
the read-only mode.

Skipped when chromium or chromedriver is missing, except under CI (then a failure): `make test`
installs them (the Makefile's `chromium` target). WORKBENCH_SCREENSHOT=PATH keeps the preview
screenshot (docs/workbench.png is taken that way).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import POLICIES_DIR, REPO
from tests.serve_process import log_waiter
from testing.processes import stop
from testing.require import missing
from testing.workbench import copy_policies, make_log

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FILE = "home_feed.yaml"
WAIT_S = 180  # a first preview on a cold Numba cache compiles the kernels
LIVE_RGB, PROPOSED_RGB, FRONTIER_RGB = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0xD6, 0x27, 0x28)


def _require_chromium() -> None:
    absent = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if absent:
        msg = (f"{' and '.join(absent)} not found: install Debian's chromium and chromium-driver "
               f"(`make chromium`, or apt-get install chromium chromium-driver)")
        missing(msg, "; CI is set, so the browser tests must run")


@pytest.fixture(scope="module")
def driver():
    _require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1800",
                "--no-proxy-server", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    src = copy_policies(POLICIES_DIR, tmp_path_factory.mktemp("src"), solver_mode="greedy")
    return make_log(str(src), str(tmp_path_factory.mktemp("log") / "log"), records=400, candidates=40)


@pytest.fixture()
def folder(tmp_path) -> Path:
    return copy_policies(POLICIES_DIR, tmp_path / "policies", solver_mode="greedy")


@contextlib.contextmanager
def workbench(folder: Path, log: Path | None, *extra: str):
    """`reranker workbench` as a subprocess on a free port; yields its URL."""
    args = [sys.executable, "-m", "server.cli", "workbench", "--policies", str(folder), "--port", "0", *extra]
    if log is not None:
        args += ["--log", str(log)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines: queue.Queue[str] = queue.Queue()
    errors: list[str] = []  # its log (stderr), drained so that the pipe never fills
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    threading.Thread(target=lambda: [errors.append(line) for line in proc.stderr], daemon=True).start()
    try:
        try:
            first = lines.get(timeout=120)
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"the workbench did not start: {''.join(errors)}") from None
        assert first.startswith("workbench listening on http://"), first
        port = first.split()[3].rstrip("/").rsplit(":", 1)[1]
        yield f"http://127.0.0.1:{port}/"  # bound to 0.0.0.0 too, the browser asks the loopback
    finally:
        stop(proc, timeout=20)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait(d, cond, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=0.1).until(cond)


def text_of(d, css: str) -> str:
    from selenium.webdriver.common.by import By

    els = d.find_elements(By.CSS_SELECTOR, css)
    return els[0].text if els else ""


def open_page(d, url: str, file: str = FILE) -> None:
    d.get(f"{url}?file={file}")
    wait(d, lambda d: text_of(d, "#validation").startswith("valid: policy"))


def set_editor(d, text: str) -> None:
    """Replace the editor's text as a paste would (one input event)."""
    from selenium.webdriver.common.by import By

    ed = d.find_element(By.ID, "editor")
    d.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));", ed, text)


def editor_text(d) -> str:
    from selenium.webdriver.common.by import By

    return d.find_element(By.ID, "editor").get_attribute("value")


def colour_pixels(png: bytes, rgb: tuple[int, int, int], tol: int = 12) -> int:
    """How many pixels of a screenshot are within `tol` of the colour."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(a - np.array(rgb)).max(axis=2) <= tol).sum())


# ------------------------------------------------------------------ edit and preview
def test_edit_shows_a_line_numbered_error_then_a_fix_previews_with_plots(driver, folder, log, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = driver
    with workbench(folder, log) as url:
        open_page(d, url)
        assert text_of(d, "#base-digest") == sha(folder / FILE)[:12]
        ed = d.find_element(By.ID, "editor")
        lines = editor_text(d).count("\n")
        ed.click()
        ed.send_keys(Keys.CONTROL, Keys.END)
        ed.send_keys("colour: blue")  # typed: an unknown top-level key
        wait(d, lambda d: "error" in text_of(d, "#validation"))
        issue = text_of(d, "#issues li")
        assert issue.startswith(f"line {lines + 1}: unknown key 'colour' (allowed: constraints, "), issue
        assert d.find_element(By.CSS_SELECTOR, "#gutter .err").text == str(lines + 1)
        assert not d.find_element(By.ID, "preview").is_enabled()
        assert not d.find_element(By.ID, "promote").is_enabled()
        ed.send_keys(Keys.BACKSPACE * len("colour: blue"))  # fixed
        wait(d, lambda d: text_of(d, "#validation").endswith("(as live)"))
        live = editor_text(d)
        set_editor(d, live.replace("    max: 3\n", "    max: three\n", 1))  # a nested field: its path too
        wait(d, lambda d: "error" in text_of(d, "#validation"))
        assert text_of(d, "#issues li").startswith("line 32, constraints[0].max: ")
        assert d.find_element(By.CSS_SELECTOR, "#gutter .err").text == "32"
        set_editor(d, live)
        wait(d, lambda d: text_of(d, "#validation").endswith("(as live)"))
        assert d.find_elements(By.CSS_SELECTOR, "#issues li") == []
        assert d.find_elements(By.CSS_SELECTOR, "#gutter .err") == []

        set_editor(d, editor_text(d).replace("p_purchase: 10.0", "p_purchase: 3.0"))
        wait(d, lambda d: text_of(d, "#validation").endswith("(edited)"))
        sample = d.find_element(By.ID, "sample")
        assert sample.get_attribute("value") == "1000"
        sample.clear()
        sample.send_keys("300")
        d.find_element(By.ID, "preview").click()
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#preview-lines li"))
        lines_shown = [li.text for li in d.find_elements(By.CSS_SELECTOR, "#preview-lines li")]
        assert lines_shown[0].endswith("of 300 slates change") or " of 300 slates change (" in lines_shown[0]
        purchase = next(x for x in lines_shown if x.startswith("expected p_purchase"))
        assert purchase.startswith("expected p_purchase -")  # a third of the weight: fewer purchases
        assert "the first 300 of 400 records" in text_of(d, "#preview-header")
        assert text_of(d, "#preview-progress .label").startswith("done in ")
        assert d.find_elements(By.CSS_SELECTOR, "#plot-exposure .bars path")
        assert d.find_elements(By.CSS_SELECTOR, "#plot-deltas .bars path")
        assert "direct metrics" in text_of(d, "#preview-tables")

        # what a person sees: both plots drawn, with live and proposed bars in their colours
        exposure = d.find_element(By.ID, "plot-exposure").screenshot_as_png
        deltas = d.find_element(By.ID, "plot-deltas").screenshot_as_png
        assert colour_pixels(exposure, LIVE_RGB) > 500 and colour_pixels(exposure, PROPOSED_RGB) > 500
        assert colour_pixels(deltas, LIVE_RGB) + colour_pixels(deltas, PROPOSED_RGB) > 200
        d.find_element(By.ID, "preview-box").location_once_scrolled_into_view
        d.execute_script("window.scrollTo(0, 0)")
        page = tmp_path / "workbench.png"
        d.save_screenshot(str(page))
        assert page.stat().st_size > 50_000
        keep = os.environ.get("WORKBENCH_SCREENSHOT")
        if keep:
            shutil.copy(page, keep)


# ------------------------------------------------------------------ pareto
def test_a_pareto_sweep_plots_points_and_a_clicked_point_loads_into_the_editor(driver, folder, log):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = driver
    with workbench(folder, log) as url:
        open_page(d, url)
        row = d.find_element(By.CSS_SELECTOR, "#vary-rows .row")
        Select(row.find_element(By.CSS_SELECTOR, "select")).select_by_value("objective.weights.p_purchase")
        for css, value in ((".vary-lo", "0"), (".vary-hi", "20"), (".vary-n", "3")):
            box = row.find_element(By.CSS_SELECTOR, css)
            box.clear()
            box.send_keys(value)
        metrics = d.find_elements(By.CSS_SELECTOR, "input.metric")
        for box, value in zip(metrics, ("expected_p_click", "expected_p_purchase", "")):
            box.clear()
            if value:
                box.send_keys(value)
        refine = d.find_element(By.ID, "refine")
        refine.clear()
        refine.send_keys("0")
        sample = d.find_element(By.ID, "sample")
        sample.clear()
        sample.send_keys("200")
        d.find_element(By.ID, "pareto").click()
        wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#plot-pareto .scatterlayer .points path")) >= 3)
        assert "3 of 3 points on the frontier" in text_of(d, "#plot-pareto .gtitle")  # purchases vs clicks trade off
        shot = d.find_element(By.ID, "plot-pareto").screenshot_as_png
        assert colour_pixels(shot, FRONTIER_RGB) > 100

        # click the point with no purchase weight (the most clicks: the rightmost)
        points = d.find_elements(By.CSS_SELECTOR, "#plot-pareto .scatterlayer .trace:last-child .points path")
        right = max(points, key=lambda p: p.location["x"])
        ActionChains(d).move_to_element(right).click().perform()
        wait(d, lambda d: d.find_element(By.ID, "point").is_displayed())
        assert "objective.weights.p_purchase = 0" in text_of(d, "#point-title")
        assert "on the frontier" in text_of(d, "#point-title")
        diff = text_of(d, "#point-diff")
        assert "-    p_purchase: 10.0" in diff and "+    p_purchase: 0.0" in diff
        assert "expected_p_click" in text_of(d, "#point-metrics")
        live = editor_text(d)
        d.find_element(By.ID, "edit-point").click()
        wait(d, lambda d: "p_purchase: 0.0" in editor_text(d))
        assert editor_text(d) == live.replace("p_purchase: 10.0", "p_purchase: 0.0")
        wait(d, lambda d: text_of(d, "#validation").endswith("(edited)"))

        # three metrics: the third is the frontier points' colour, with its scale
        d.find_elements(By.CSS_SELECTOR, "input.metric")[2].send_keys("coverage")
        d.find_element(By.ID, "pareto").click()
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#plot-pareto .colorbar"))
        assert "coverage" in text_of(d, "#plot-pareto .colorbar")


# ------------------------------------------------------------------ promote
def _serve(folder: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--address", "127.0.0.1:0", "--policies", str(folder),
         "--processes", "1", "--metrics-port", "-1", "--watch-interval", "0.2", "--settle", "0.2", "--grace", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO)
    return proc


def _digest_served(port: int, name: str) -> str:
    import grpc

    from server._gen.reranker.v1 import reranker_pb2 as pb
    from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = pb_grpc.RerankerStub(channel).ListPolicies(pb.ListPoliciesRequest(), timeout=10)
    return next(p.digest for p in resp.policies if p.name == name)


def _promote_in_page(d) -> None:
    from selenium.webdriver.common.by import By

    d.find_element(By.ID, "promote").click()
    wait(d, lambda d: d.find_element(By.ID, "confirm").is_displayed())


def test_promote_shows_the_diff_writes_the_file_and_a_running_server_reloads_it(driver, folder, log):
    from selenium.webdriver.common.by import By

    d = driver
    path = folder / FILE
    before = sha(path)
    serve = _serve(folder)
    wait_for = log_waiter(serve)
    try:
        port = wait_for("listening", timeout=240)["port"]
        wait_for("serving", timeout=240)
        assert _digest_served(port, "home_feed") == before
        with workbench(folder, log) as url:
            open_page(d, url)
            new = editor_text(d).replace("p_click: 1.0", "p_click: 1.25")
            set_editor(d, new)
            wait(d, lambda d: text_of(d, "#validation").endswith("(edited)"))
            _promote_in_page(d)
            diff = text_of(d, "#confirm-diff")
            assert f"--- {FILE} (live, {before[:12]})" in diff
            assert "-    p_click: 1.0" in diff and "+    p_click: 1.25" in diff
            assert path.read_text() != new  # nothing written before the confirmation
            d.find_element(By.ID, "confirm-ok").click()
            wait(d, lambda d: text_of(d, "#promote-result").startswith("promoted"))
            after = sha(path)
            assert path.read_text() == new and after != before
            assert text_of(d, "#promote-result") == (f"promoted {FILE}: sha256 {before[:12]} -> {after[:12]}; "
                                                     f"the running servers reload it.")
            wait(d, lambda d: after[:12] in text_of(d, f"#policies tr[data-file='{FILE}']"))
            assert text_of(d, "#base-digest") == after[:12]
            assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
        end = time.monotonic() + 60
        while _digest_served(port, "home_feed") != after:
            assert time.monotonic() < end, "the running server did not reload the promoted policy"
            time.sleep(0.2)
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()


def test_a_promote_that_lost_a_race_is_refused_and_the_file_kept(driver, folder, log):
    from selenium.webdriver.common.by import By

    d = driver
    path = folder / FILE
    with workbench(folder, None) as url:
        open_page(d, url)
        base = text_of(d, "#base-digest")
        # someone else changes the file after this editor loaded it
        theirs = path.read_text().replace("budget_ms: 10", "budget_ms: 12")
        path.write_text(theirs)
        set_editor(d, editor_text(d).replace("p_click: 1.0", "p_click: 0.75"))
        wait(d, lambda d: text_of(d, "#validation").endswith("(edited)"))
        _promote_in_page(d)
        d.find_element(By.ID, "confirm-ok").click()
        wait(d, lambda d: text_of(d, "#promote-result").startswith("not promoted"))
        msg = text_of(d, "#promote-result")
        assert msg.startswith(f"not promoted (HTTP 409): {FILE} changed on disk since this edit started "
                              f"(it started from {base}, the file is now {sha(path)[:12]}): nothing was written")
        assert path.read_text() == theirs  # never merged, never overwritten


def test_beyond_localhost_the_promote_dialog_asks_for_the_token(driver, folder):
    from selenium.webdriver.common.by import By

    d = driver
    path = folder / FILE
    before = sha(path)
    with workbench(folder, None, "--host", "0.0.0.0", "--token", "t0ken-for-the-test") as url:
        open_page(d, url)
        assert text_of(d, "#mode") == "promote needs the token"
        new = editor_text(d).replace("p_click: 1.0", "p_click: 1.5")
        set_editor(d, new)
        wait(d, lambda d: text_of(d, "#validation").endswith("(edited)"))
        _promote_in_page(d)
        d.find_element(By.ID, "token").send_keys("not-the-token")
        d.find_element(By.ID, "confirm-ok").click()
        wait(d, lambda d: text_of(d, "#confirm-error"))
        assert text_of(d, "#confirm-error") == "the workbench token is wrong: nothing was written"
        assert d.find_element(By.ID, "confirm").is_displayed() and sha(path) == before
        box = d.find_element(By.ID, "token")
        box.clear()
        box.send_keys("t0ken-for-the-test")
        d.find_element(By.ID, "confirm-ok").click()
        wait(d, lambda d: text_of(d, "#promote-result").startswith("promoted"))
        assert path.read_text() == new and sha(path) != before


def test_read_only_mode_shows_no_promote_and_refuses_one(driver, folder, log):
    from selenium.webdriver.common.by import By

    d = driver
    before = sha(folder / FILE)
    with workbench(folder, log, "--read-only") as url:
        open_page(d, url)
        assert text_of(d, "#mode") == "read-only"
        assert d.find_elements(By.ID, "promote") == []
        assert d.find_element(By.ID, "preview").is_enabled()  # previews still work
        status = d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/promote', {method: 'POST', headers: {'Content-Type': 'application/json'},"
            " body: JSON.stringify({file: arguments[0], text: 'x', base_digest: arguments[1]})})"
            ".then(r => r.json().then(j => done([r.status, j.error])));", FILE, before)
        assert status == [403, "the workbench runs --read-only: promote is turned off"]
    assert sha(folder / FILE) == before


# ------------------------------------------------------------------ the README's screenshot
def screenshot(out: str) -> None:
    """docs/workbench.png: `make workbench`'s setup (policies/, the sample log in
    data/workbench-log), home_feed's purchase weight edited 10 -> 6, previewed on 1,000 requests.
    Nothing is promoted. Run: python -m tests.test_workbench_browser docs/workbench.png"""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    subprocess.run([sys.executable, "-m", "testing.workbench", "--out", "data/workbench-log"], cwd=REPO, check=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,2300",
                "--no-proxy-server", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        with workbench(Path("policies"), Path("data/workbench-log"), "--experiments", "examples/experiments") as url:
            open_page(d, url)
            set_editor(d, editor_text(d).replace("p_purchase: 10.0", "p_purchase: 6.0"))
            wait(d, lambda d: text_of(d, "#validation").endswith("(edited)"))
            d.find_element(By.ID, "preview").click()
            wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#plot-deltas .bars path"), timeout=300)
            d.execute_script("const box = document.querySelector('#editor').parentElement;"
                             "box.style.maxHeight = '260px'; box.scrollTop = 13 * 18;"  # the edited weight in view
                             "window.scrollTo(0, 0)")
            time.sleep(0.5)
            d.save_screenshot(out)
    finally:
        d.quit()


if __name__ == "__main__":
    screenshot(sys.argv[1] if len(sys.argv) > 1 else "docs/workbench.png")
