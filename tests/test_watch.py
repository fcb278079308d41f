"""Policy hot reload: a valid edit goes live, an invalid one never replaces the live version, a
half-written file never goes live, renames are picked up, and every change is visible."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from prometheus_client import generate_latest

from engine.engine import Engine
from server.app import _reload
from server.metrics import ServerMetrics
from server.watch import PolicyWatcher

POLICY = """name: p
version: "{version}"
slate_size: 5
objective:
  weights: {{p_click: 1.0}}
"""

# Every cut of this file after its objective is itself a valid policy, with fewer rules.
WITH_RULES = POLICY + """constraints:
  - name: cap_category
    type: max_count
    attribute: category
    max: 2
  - name: cap_seller
    type: max_count
    attribute: seller
    max: 1
  - name: spread_brands
    type: window
    attribute: brand
    size: 3
    max: 1
"""


def _write(path: Path, text: str, bump: int) -> None:
    path.write_text(text)
    st = path.stat()  # make the edit visible even on coarse-mtime filesystems
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def _version(engine: Engine) -> str:
    return {p.name: p.version for p in engine.list_policies()}["p"]


def _rejections(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("policy file rejected")]


def test_valid_edit_goes_live_and_invalid_edit_is_rejected(tmp_path, caplog):
    policy = tmp_path / "p.yaml"
    _write(policy, POLICY.format(version="1"), 0)
    engine = Engine.from_directory(str(tmp_path))
    watcher = PolicyWatcher(engine, tmp_path, interval_s=3600, settle_s=0)  # driven by check() here
    assert not watcher.check()  # nothing changed yet

    _write(policy, POLICY.format(version="2"), 1)
    assert watcher.check() and _version(engine) == "2"

    _write(policy, POLICY.format(version="3").replace("slate_size: 5", "slate_size: 0"), 2)
    assert watcher.check()
    assert _version(engine) == "2" and watcher.rejected == 1
    # logged once, by the store, with the validator's message and what stays live
    assert _rejections(caplog) == [
        "policy file rejected (its previous version stays live: version '2', sha256 "
        f"{hashlib.sha256(POLICY.format(version='2').encode()).hexdigest()[:12]}):\n"
        f"{policy}: slate_size: must be an integer between 1 and 1000, got 0 (line 3)"]

    (tmp_path / "q.yaml").write_text(POLICY.format(version="1").replace("name: p", "name: q"))
    assert watcher.check()
    assert {p.name for p in engine.list_policies()} == {"p", "q"}


def test_background_thread_picks_up_an_edit(tmp_path):
    policy = tmp_path / "p.yaml"
    _write(policy, POLICY.format(version="1"), 0)
    engine = Engine.from_directory(str(tmp_path))
    watcher = PolicyWatcher(engine, tmp_path, interval_s=0.02, settle_s=0.05).start()
    try:
        _write(policy, POLICY.format(version="2"), 1)
        deadline = time.monotonic() + 10.0  # a bound against hanging, not a latency assertion
        while _version(engine) != "2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _version(engine) == "2"
    finally:
        watcher.stop()


def test_a_file_written_slowly_in_pieces_never_goes_live_half_written(tmp_path):
    """The writer pauses between lines (longest after the objective, where every cut is a valid
    policy with no rules); the watcher polls every 20 ms. Every version the store ever held must be
    the old file or the whole new one."""
    policy = tmp_path / "p.yaml"
    old, new = POLICY.format(version="1"), WITH_RULES.format(version="2")
    _write(policy, old, -10)
    engine = Engine.from_directory(str(tmp_path))
    held: list[str] = []
    engine.store.listeners.append(lambda lp: held.append(lp.digest))
    # settle 1 s: a margin over the writer's pauses on a busy machine
    watcher = PolicyWatcher(engine, tmp_path, interval_s=0.02, settle_s=1.0).start()
    try:
        def write_slowly() -> None:
            with open(policy, "w", encoding="utf-8") as fh:
                for i, line in enumerate(new.splitlines(keepends=True)):
                    fh.write(line)
                    fh.flush()
                    time.sleep(0.2 if i == 4 else 0.03)

        writer = threading.Thread(target=write_slowly)
        writer.start()
        writer.join()
        deadline = time.monotonic() + 20.0  # a bound against hanging, not a latency assertion
        while _version(engine) != "2" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop()
    digest = {hashlib.sha256(t.encode()).hexdigest(): v for t, v in ((old, "old"), (new, "new"))}
    assert [digest.get(d, f"a cut: {d[:12]}") for d in held] == ["new"]
    live = engine.store.get("p")
    assert live.policy.version == "2" and [c.name for c in live.policy.constraints] == [
        "cap_category", "cap_seller", "spread_brands"]


def test_sighup_reload_waits_for_a_file_being_written(tmp_path):
    policy = tmp_path / "p.yaml"
    _write(policy, POLICY.format(version="1"), -10)
    engine = Engine.from_directory(str(tmp_path))
    new = WITH_RULES.format(version="2")
    cut = new.index("constraints:")
    started = threading.Event()

    def write_in_two_pieces() -> None:
        with open(policy, "w", encoding="utf-8") as fh:
            fh.write(new[:cut])  # a valid policy with no rules, carrying the new version string
            fh.flush()
            started.set()
            time.sleep(0.2)
            fh.write(new[cut:])

    writer = threading.Thread(target=write_in_two_pieces)
    writer.start()
    started.wait()
    _reload(engine, settle_s=1.0)  # what SIGHUP runs
    writer.join()
    assert len(engine.store.get("p").policy.constraints) == 3


def test_a_rename_over_the_file_is_picked_up_and_editor_files_are_ignored(tmp_path, caplog):
    policy = tmp_path / "p.yaml"
    _write(policy, POLICY.format(version="1"), -10)
    engine = Engine.from_directory(str(tmp_path))
    watcher = PolicyWatcher(engine, tmp_path, interval_s=3600, settle_s=0.05)
    broken = "name: [unclosed\n"
    for name in (".p.yaml.swp", ".p.yaml.swx", ".#p.yaml", "#p.yaml#", "p.yaml~", "4913", ".p.yaml.tmp"):
        (tmp_path / name).write_text(broken)
    assert not watcher.check()  # editors' files are no policy files: nothing to reload

    # write a temporary file, then rename it over the policy: same size and mtime as the old
    # file, only the inode tells
    tmp = tmp_path / ".p.yaml.tmp"
    tmp.write_text(POLICY.format(version="2"))
    st = policy.stat()
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, policy)
    assert watcher.check() and _version(engine) == "2"
    assert engine.store.errors == [] and _rejections(caplog) == []


def test_upper_case_suffixes_are_policy_files(tmp_path):
    (tmp_path / "p.YAML").write_text(POLICY.format(version="1"))
    (tmp_path / "q.Yml").write_text(POLICY.format(version="1").replace("name: p", "name: q"))
    engine = Engine.from_directory(str(tmp_path))
    assert sorted(p.name for p in engine.list_policies()) == ["p", "q"]
    watcher = PolicyWatcher(engine, tmp_path, interval_s=3600, settle_s=0)
    _write(tmp_path / "p.YAML", POLICY.format(version="2"), 1)
    assert watcher.check() and _version(engine) == "2"


def test_deleting_a_file_warns_and_counts_an_unload(tmp_path, caplog):
    _write(tmp_path / "p.yaml", POLICY.format(version="1"), 0)
    _write(tmp_path / "q.yaml", POLICY.format(version="1").replace("name: p", "name: q"), 0)
    engine = Engine.from_directory(str(tmp_path))
    watcher = PolicyWatcher(engine, tmp_path, interval_s=3600, settle_s=0)
    metrics = ServerMetrics()
    metrics.watch_reloads(watcher)
    (tmp_path / "q.yaml").unlink()
    with caplog.at_level(logging.INFO):
        assert watcher.check()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"policy 'q' unloaded: its file was deleted or renamed ({tmp_path / 'q.yaml'})"]
    assert watcher.unloaded == 1
    assert "reranker_policies_unloaded_total 1.0" in generate_latest(metrics.registry).decode()
    # a policy renamed inside its file: the old name is unloaded too, saying why
    _write(tmp_path / "p.yaml", POLICY.format(version="1").replace("name: p", "name: p2"), 1)
    caplog.clear()
    assert watcher.check()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"policy 'p' unloaded: its file now defines policy 'p2' ({tmp_path / 'p.yaml'})"]
    assert watcher.unloaded == 2


def test_a_rejection_is_logged_once_and_both_reload_paths_log_one_shape(tmp_path, caplog):
    policy = tmp_path / "p.yaml"
    _write(policy, POLICY.format(version="1"), 0)
    _write(tmp_path / "q.yaml", POLICY.format(version="1").replace("name: p", "name: q"), 0)
    engine = Engine.from_directory(str(tmp_path))
    watcher = PolicyWatcher(engine, tmp_path, interval_s=3600, settle_s=0)
    bad = POLICY.format(version="2").replace("slate_size: 5", "slate_size: 0")
    _write(policy, bad, 1)
    with caplog.at_level(logging.INFO):
        assert watcher.check()
        _write(tmp_path / "q.yaml", POLICY.format(version="2").replace("name: p", "name: q"), 1)
        assert watcher.check()  # an unrelated edit
        _write(policy, bad, 2)  # the same bad bytes again, a new mtime
        assert watcher.check()
        _reload(engine, settle_s=0)  # SIGHUP
    assert len(_rejections(caplog)) == 1 and watcher.rejected == 1
    lines = [r for r in caplog.records if r.getMessage() == "policies reloaded"]
    assert [r.trigger for r in lines] == ["watch", "watch", "watch", "sighup"]
    keys = {"trigger", "policies", "loaded", "unloaded", "invalid_files", "pending"}
    assert all(keys <= set(vars(r)) for r in lines)
    assert lines[-1].policies == {"p": "1", "q": "2"} and lines[-1].invalid_files == [str(policy)]
    assert lines[1].loaded == ["q 2"]
    # fixed, then broken the same way again: logged again
    _write(policy, POLICY.format(version="3"), 3)
    assert watcher.check()
    _write(policy, bad, 4)
    assert watcher.check()
    assert len(_rejections(caplog)) == 2 and watcher.rejected == 2


def test_an_edit_between_the_load_and_the_watchers_start_is_not_missed(tmp_path):
    policy = tmp_path / "p.yaml"
    _write(policy, POLICY.format(version="1"), 0)
    engine = Engine.from_directory(str(tmp_path))
    _write(policy, POLICY.format(version="2"), 1)  # serve warms up between the two
    watcher = PolicyWatcher(engine, tmp_path, interval_s=3600, settle_s=0)
    assert watcher.check() and _version(engine) == "2"
