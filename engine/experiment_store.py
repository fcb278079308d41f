"""The live experiments of a folder, reloaded like the policies: an invalid file never replaces
the live configuration.

Each `*.yaml` / `*.yml` file of the folder holds one experiment (engine.experiments). A reload
reads every file; a file that is invalid on its own keeps its last valid version (or, when it
never had one, stays out); then the files are checked together against the policy names the
store knows (unknown policies, one experiment per policy name, layers that overlap, ...). If the
new set fails that check, the whole previous set stays live and every error is reported (with
the file, the path inside it and the line), so that no edit can leave the traffic split half
applied.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from engine.experiments import (
    Assignment, ExperimentInvalid, ExperimentSet, LoadedExperiment, check_experiments,
    load_experiment_file,
)
from engine.policy_loader import is_policy_file_name

log = logging.getLogger(__name__)


@dataclass
class ExperimentReload:
    """What one reload did."""

    loaded: list[str] = field(default_factory=list)  # experiment names live after it
    errors: list[ExperimentInvalid] = field(default_factory=list)  # files refused (the live set kept)
    kept_previous: bool = False  # the new set was refused as a whole


class ExperimentStore:
    """Experiments of one folder (None: no experiments). Thread-safe; `assign` takes no lock."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.live = ExperimentSet()
        self._files: dict[str, LoadedExperiment] = {}  # source -> last valid version
        self._lock = threading.Lock()
        self.last_report = ExperimentReload()

    def files(self) -> list[Path]:
        if self.folder is None:
            return []
        if not self.folder.is_dir():
            raise FileNotFoundError(f"experiment directory not found: {os.fspath(self.folder)}")
        return sorted(p for p in self.folder.iterdir() if p.is_file() and is_policy_file_name(p.name))

    def reload(self, known_policies: Collection[str]) -> ExperimentReload:
        """Re-read the folder against the policy names now live; see the module docstring."""
        report = ExperimentReload()
        with self._lock:
            files: dict[str, LoadedExperiment] = {}
            for path in self.files():
                source = os.fspath(path)
                try:
                    files[source] = load_experiment_file(path)
                except ExperimentInvalid as err:
                    report.errors.append(err)
                    if source in self._files:  # the last valid version of this file stays
                        files[source] = self._files[source]
            cross = check_experiments(files.values(), known_policies)
            if cross:
                report.errors += cross
                report.kept_previous = True
            else:
                self._files = files
                self.live = ExperimentSet(list(files.values()))
            report.loaded = [le.name for le in self.live.experiments]
            self.last_report = report
        for err in report.errors:
            log.error("experiment file rejected; the live experiments stay", extra={
                "source": err.source, "error": str(err), "kept_previous_set": report.kept_previous})
        return report

    def assign(self, policy_name: str, user_id: str = "", request_id: str = "") -> Assignment | None:
        return self.live.assign(policy_name, user_id, request_id)

    def __len__(self) -> int:
        return len(self.live)
