"""Policy hot reload: watch the policy folder and reload it when a file changes.

Polling (names, inodes, sizes and modification times, every `interval_s`) needs no extra
dependency and works on every filesystem, containers' bind mounts included. A changed file is
loaded only once it has stopped changing for `settle_s` (engine.policy_loader.read_settled), so a
file an editor is still writing never goes live half written; a file replaced by a rename (write
a temporary file, then `mv` it over the policy) is a new inode and is picked up like an edit.
Editors' temporary files (`.home.yaml.swp`, `.#home.yaml`, `home.yaml~`, `4913`) are ignored.

A valid edit goes live within about interval + settle; an invalid one never replaces the loaded
version (engine.reload guarantees it) and is logged once, with the validator's message, by the
policy store. Both the file watch and SIGHUP end in `reload_and_log`, so their log lines have one
shape.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from engine.policy_loader import DEFAULT_SETTLE_S, is_policy_file_name

log = logging.getLogger(__name__)


def folder_signature(path: str | os.PathLike[str]) -> tuple:
    """What changes when a policy file is added, removed, edited or replaced by a rename."""
    out = []
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return ()
    for entry in entries:
        try:
            if is_policy_file_name(entry.name) and entry.is_file():
                st = entry.stat()
                out.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:  # gone between the listing and the stat
            continue
    return tuple(out)


def reload_and_log(engine, trigger: str, settle_s: float = DEFAULT_SETTLE_S):
    """Reload the engine's policy folder and log one INFO line "policies reloaded" saying what
    changed (`trigger`: "watch" or "sighup"). Rejections and unloads are logged (WARNING) by the
    store, once each. Returns the store's ReloadReport. Raises what the reload raises."""
    engine.reload(settle_s=settle_s)
    report = engine.store.last_report
    log.info("policies reloaded", extra={
        "trigger": trigger,
        "policies": {p.name: p.version for p in engine.list_policies()},
        "loaded": [f"{lp.name} {lp.policy.version}" for lp in report.loaded],
        "unloaded": [lp.name for lp in report.unloaded],
        "invalid_files": [e.source for e in report.errors],
        "pending": report.pending,
    })
    return report


class PolicyWatcher:
    """Background thread reloading the engine's policies whenever the policy folder changes.

    Counters (read by server.metrics at scrape time) are the store's, so they count SIGHUP
    reloads as well: `reloads`, `rejected` (file contents refused, each once), `unloaded`
    (policies gone because their file was deleted or renamed)."""

    def __init__(self, engine, policies_dir: str | os.PathLike[str], interval_s: float = 1.0,
                 settle_s: float = DEFAULT_SETTLE_S):
        self.engine = engine
        self.policies_dir = Path(policies_dir)
        self.interval_s = interval_s
        self.settle_s = settle_s
        self._pending = False  # the last reload left files that were still being written
        self._stop = threading.Event()
        # The folder as the engine loaded it, not as it is now: an edit made since is reloaded.
        # The experiment folder (if any) is watched with it: its files are checked against the
        # policies, so both reload together.
        self.experiments_dir = engine.experiments.folder
        self._signature = (engine.store.signature(self.policies_dir), self._experiments_signature())
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)

    @property
    def reloads(self) -> int:
        return self.engine.store.stats.reloads

    @property
    def rejected(self) -> int:
        return self.engine.store.stats.rejected

    @property
    def unloaded(self) -> int:
        return self.engine.store.stats.unloaded

    def _experiments_signature(self) -> tuple:
        if self.experiments_dir is None or not self.experiments_dir.is_dir():
            return ()
        return folder_signature(self.experiments_dir)

    def start(self) -> "PolicyWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def check(self) -> bool:
        """Reload if the folder changed since the last check (or files were still being written
        then); True when a reload ran."""
        signature = (folder_signature(self.policies_dir), self._experiments_signature())
        if signature == self._signature and not self._pending:
            return False
        self._signature = signature
        report = reload_and_log(self.engine, "watch", self.settle_s)
        self._pending = bool(report.pending)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad moment on disk
                log.exception("policy reload failed; keeping the loaded policies",
                              extra={"trigger": "watch"})
