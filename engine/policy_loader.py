"""Load policy files: YAML text -> validated `Policy`, every problem reported in the author's terms.

Each problem becomes a `FieldIssue(path, message)`: the path is written like the YAML
(`constraints[2].max`) and the message says what was expected and what came, with the line.
The YAML -> model path itself is `engine.yaml_model`'s (experiment files share it); this module
gives it the policy's specifics, and reads, watches and keeps the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, TypeAdapter, ValidationError

from engine.errors import FieldIssue, PolicyInvalid, PolicyNotFound
from engine.policy import AttributeFilter, Constraint, Objective, Policy, policy_conflicts
from engine.yaml_model import MAX_DEPTH  # noqa: F401 - re-exported: the loader's callers import it from here
from engine.yaml_model import YamlIndex, json_schema, parse_yaml_model, peel, tag_of

logger = logging.getLogger(__name__)

SCHEMA_ID = "urn:slate-reranker:policy:v1"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "policies" / "policy.schema.json"
POLICY_SUFFIXES = (".yaml", ".yml")  # compared in lower case: home.YAML is a policy file too

_REQUIRED_KEYS = "name, version, slate_size and objective"


# --- policy specifics of the YAML -> model path (the path itself: engine.yaml_model) --------------

_MISSING_HINTS: dict[tuple[type[BaseModel], str], str] = {
    (AttributeFilter, "attribute"): "required: a filter needs 'attribute' (with 'in' or 'not_in') "
    "or 'numeric' (with 'min' and/or 'max')",
}


def _constraint_tags() -> tuple[str, ...]:
    union, _ = peel(Constraint)
    return tuple(t for t in (tag_of(m) for m in get_args(union)) if t)


# --- checks across fields, on whatever parts validated ---------------------------------------------

_CONSTRAINT = TypeAdapter(Constraint)


def _partial_conflicts(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Cross-constraint checks when the policy as a whole failed: run them on the valid parts."""
    size = data.get("slate_size")
    slate_size = size if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= 1000 else None
    try:
        objective: Objective | None = Objective.model_validate(data.get("objective"))
    except ValidationError:
        objective = None
    raw = data.get("constraints")
    raw = raw if isinstance(raw, list) else []
    valid = []
    for i, c in enumerate(raw):
        try:
            valid.append((i, _CONSTRAINT.validate_python(c)))
        except ValidationError:
            pass
    names = [(i, c["name"]) for i, c in enumerate(raw) if isinstance(c, dict) and isinstance(c.get("name"), str)]
    return policy_conflicts(slate_size, objective, valid, names)


# --- public API --------------------------------------------------------------------------------------


def parse_policy_text(text: str, source: str = "<text>") -> Policy:
    """Parse and validate one policy document; raise `PolicyInvalid` listing every issue found."""
    return parse_yaml_model(Policy, text, source, noun="a policy", required_keys=_REQUIRED_KEYS,
                            prepare=_version_as_written, partial_checks=_partial_conflicts,
                            missing_hints=_MISSING_HINTS, union_tags=_constraint_tags)


def _version_as_written(data: dict[str, Any], where: YamlIndex) -> None:
    if isinstance(data.get("version"), (int, float)) and where.plain.get("version"):
        data["version"] = where.plain["version"]  # keep `version: 1.10` as written, not 1.1


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy and where it came from."""

    policy: Policy
    source: str  # the path as given, or '<text>'
    digest: str  # sha256 hex of the file's bytes
    loaded_at: float  # time.time() at load
    last_good: bool = False  # restored from the state directory: the file itself is invalid now

    @property
    def name(self) -> str:
        return self.policy.name


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PolicyInvalid(source, [FieldIssue("", f"the file is not UTF-8 text (byte {err.start})")]) from None


def _read_policy_bytes(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise PolicyInvalid(source, [FieldIssue("", f"cannot read the file: {err.strerror or err}")]) from None
    return raw, _decode(raw, source)


def load_policy_bytes(raw: bytes, source: str) -> LoadedPolicy:
    """Parse and validate a policy file's bytes. Every failure, whatever raised it, becomes a
    `PolicyInvalid` naming `source`, so that one file can never abort a folder reload."""
    try:
        policy = parse_policy_text(_decode(raw, source), source)
    except PolicyInvalid:
        raise
    except Exception as exc:  # noqa: BLE001 - a validator bug must stay this file's error
        logger.exception("policy file could not be validated", extra={"source": source})
        raise PolicyInvalid(source, [FieldIssue("", f"cannot be loaded: {type(exc).__name__}: {exc}")]) from None
    return LoadedPolicy(policy, source, hashlib.sha256(raw).hexdigest(), time.time())


def load_policy_file(path: str | os.PathLike[str]) -> LoadedPolicy:
    """Read, parse and validate one policy file."""
    raw, _ = _read_policy_bytes(path)
    return load_policy_bytes(raw, os.fspath(path))


# --- which files are policies ------------------------------------------------------------------


def is_policy_file_name(name: str) -> bool:
    """True for a policy file: `*.yaml` / `*.yml` in any letter case (`home.YAML` too).

    Editors' temporary, swap and backup files are not: hidden files (vim `.home.yaml.swp`, emacs
    `.#home.yaml`, `.home.yaml.tmp` of a write-then-rename), `#home.yaml#` and `home.yaml~`
    (vim's `4913` probe has no policy suffix)."""
    if name.startswith((".", "#")) or name.endswith("~"):
        return False
    return os.path.splitext(name)[1].lower() in POLICY_SUFFIXES


def policy_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The policy files of `folder` (not of its subfolders), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_policy_file_name(p.name) and p.is_file())


# --- reading files that may be half written ----------------------------------------------------

#: Seconds a file's size, mtime, inode and bytes must stay the same before `serve` loads it.
DEFAULT_SETTLE_S = 0.5
#: A file modified longer ago than settle + this is read at once: the slack covers filesystems
#: that store mtimes in 1 s (ext3, HFS+, many network mounts) or 2 s (FAT) steps.
MTIME_SLACK_S = 2.0
#: A file still changing after this long is left for the next reload (its live version stays).
MAX_SETTLE_WAIT_S = 10.0

_StatKey = tuple[int, int, int, int]  # (device, inode, size, mtime_ns)


def _snapshot(file: Path) -> tuple[_StatKey, bytes, bool]:
    """(stat after reading, bytes, whether the stat stayed the same while reading). OSError if unreadable."""
    before = file.stat()
    raw = file.read_bytes()
    after = file.stat()
    key = (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns)
    return key, raw, key == (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)


def read_settled(files: list[Path], settle_s: float, *, max_wait_s: float = MAX_SETTLE_WAIT_S,
                 known: dict[Path, tuple[_StatKey, str]] | None = None,
                 ) -> tuple[dict[Path, tuple[_StatKey, bytes] | OSError], list[Path]]:
    """Read every file once it has stopped changing, so that a file an editor is still writing
    is never taken for the whole file.

    A file is settled when its inode, size, mtime and bytes are the same in two reads `settle_s`
    apart. One read is enough for a file modified more than settle_s + MTIME_SLACK_S ago, and
    for one whose stat and digest are in `known` (seen settled before), if unchanged while read.
    A file replaced by a rename (write a temporary file, then `mv` it over) is a new inode,
    complete at once: it settles like any other file.

    Returns (file -> (stat, bytes), or the OSError reading it raised; files still changing after
    `max_wait_s`). `settle_s` <= 0: every file is read once, as it is.
    """
    out: dict[Path, tuple[_StatKey, bytes] | OSError] = {}
    pending: dict[Path, tuple[_StatKey, bytes]] = {}
    now = time.time()
    for file in files:
        try:
            key, raw, steady = _snapshot(file)
        except OSError as err:
            out[file] = err
            continue
        if settle_s <= 0:
            out[file] = (key, raw)
            continue
        old = now - key[3] / 1e9 >= settle_s + MTIME_SLACK_S
        seen = known is not None and known.get(file) == (key, hashlib.sha256(raw).hexdigest())
        if steady and (old or seen):
            out[file] = (key, raw)
        else:
            pending[file] = (key, raw)
    end = time.monotonic() + max_wait_s
    while pending and time.monotonic() < end:
        time.sleep(settle_s)
        for file, before in list(pending.items()):
            try:
                key, raw, steady = _snapshot(file)
            except OSError as err:
                out[file] = err
                del pending[file]
                continue
            if steady and (key, raw) == before:
                out[file] = (key, raw)
                del pending[file]
            else:
                pending[file] = (key, raw)
    return out, sorted(pending)


# --- the last good version of every file, kept on disk -------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")


class LastGood:
    """The last valid versions of each policy file, on disk, so that a worker restarted after a
    crash, or a server restarted, serves them while the file itself is invalid.

    One file per (policy file name, digest): `<dir>/<file name>.<sha256 of its bytes>`, written
    atomically (a temporary file renamed into place), so that workers sharing the directory never
    read half a file; the newest (by mtime) is the last good one; the `KEEP` newest per name stay.
    Use one directory per policy folder (`default_state_dir` derives one from the folder's path).
    """

    KEEP = 3

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"LastGood({os.fspath(self.directory)!r})"

    def _entries(self, file_name: str) -> list[Path]:
        """This file's saved versions, newest first."""
        prefix = file_name + "."
        found = []
        with contextlib.suppress(OSError):
            for p in self.directory.iterdir():
                if p.name.startswith(prefix) and _HEX64.fullmatch(p.name[len(prefix):]):
                    with contextlib.suppress(OSError):
                        found.append((p.stat().st_mtime_ns, p))
        return [p for _, p in sorted(found, reverse=True)]

    def file_names(self) -> set[str]:
        """Names of the policy files that have a saved version."""
        try:
            names = [p.name for p in self.directory.iterdir()]
        except OSError:
            return set()
        return {n[:-65] for n in names if len(n) > 65 and n[-65] == "." and _HEX64.fullmatch(n[-64:])}

    def save(self, file_name: str, raw: bytes, digest: str) -> None:
        """Record `raw` (sha256 `digest`) as the last good version of `file_name`; failures are logged."""
        target = self.directory / f"{file_name}.{digest}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if target.exists():
                os.utime(target)  # the newest again (an edit went back to it)
            else:
                tmp = self.directory / f".{file_name}.{os.getpid()}.{threading.get_ident()}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(raw)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            for old in self._entries(file_name)[self.KEEP:]:
                old.unlink(missing_ok=True)
        except OSError as err:
            logger.warning("cannot save the last good version of %s in %s: %s", file_name, self.directory,
                           err.strerror or err, extra={"file": file_name, "state_dir": os.fspath(self.directory)})

    def versions(self, file_name: str) -> list[tuple[str, bytes]]:
        """(digest, bytes) of the saved versions of `file_name`, newest first; damaged copies skipped."""
        out = []
        for p in self._entries(file_name):
            with contextlib.suppress(OSError):
                raw = p.read_bytes()
                digest = p.name[-64:]
                if hashlib.sha256(raw).hexdigest() == digest:
                    out.append((digest, raw))
        return out

    def forget(self, file_name: str) -> None:
        """Drop every saved version of `file_name` (its file was deleted: it must not come back)."""
        for p in self._entries(file_name):
            with contextlib.suppress(OSError):
                p.unlink()


def default_state_dir(policies_dir: str | os.PathLike[str]) -> Path | None:
    """Where `serve` keeps the last good policy versions unless told (`--state-dir`):
    `$XDG_STATE_HOME/reranker/last-good/<folder name>-<hash of its path>` (XDG_STATE_HOME defaults
    to ~/.local/state); if that cannot be written, `<policies>/.reranker/last-good`; else None
    (no persistence; logged)."""
    real = os.path.realpath(policies_dir)
    tag = f"{Path(real).name or 'root'}-{hashlib.sha256(real.encode()).hexdigest()[:12]}"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    candidates = [Path(base) / "reranker" / "last-good" / tag, Path(real) / ".reranker" / "last-good"]
    for candidate in candidates:
        try:
            existed = candidate.exists()
            candidate.mkdir(parents=True, exist_ok=True)
            probe = candidate / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            if not existed:
                candidate.rmdir()  # made again by the first save: no empty folder per policy folder
            return candidate
        except OSError:
            continue
    logger.warning("no writable state directory: the last good version of a policy will not survive "
                   "a restart", extra={"tried": [os.fspath(c) for c in candidates]})
    return None


# --- one policy name, one file -------------------------------------------------------------------


def claim_names(claims: list[LoadedPolicy], taken: dict[str, LoadedPolicy] | None = None,
                keep_instead: Callable[[LoadedPolicy], LoadedPolicy | None] | None = None,
                ) -> tuple[dict[str, LoadedPolicy], list[PolicyInvalid]]:
    """Give every policy name to one file: the names in `taken` stay where they are, then each
    claim, in order, takes its name if it is free; a claim whose name is taken is an error that
    names the file holding it. `keep_instead(claim)`: what to keep for a refused claim (the
    server keeps that file's previous version). The server's reloads and `reranker validate DIR`
    both decide with this function. Returns (name -> winner, errors)."""
    wanted = dict(taken or {})
    errors = []
    for lp in claims:
        holder = wanted.get(lp.name)
        if holder is None:
            wanted[lp.name] = lp
            continue
        issue = FieldIssue("name", f"policy name {lp.name!r} is already used by {holder.source}"
                                   f"{_line_suffix(lp.source, 'name')}")
        errors.append(PolicyInvalid(lp.source, [issue]))
        old = keep_instead(lp) if keep_instead is not None else None
        if old is not None:
            wanted.setdefault(old.name, old)
    return wanted, errors


def check_folder(path: str | os.PathLike[str]) -> list[tuple[str, LoadedPolicy | PolicyInvalid]]:
    """Validate a policy folder as the server loads it at start-up: every policy file (see
    `is_policy_file_name`), then the one-name-one-file rule (`claim_names`, as the server).
    Returns (file, its policy or its errors) per file, in file order. Raises like `PolicyStore.reload_directory`
    for a missing folder."""
    folder = _check_dir(path)
    results: dict[str, LoadedPolicy | PolicyInvalid] = {}
    for file in policy_files(folder):
        try:
            results[os.fspath(file)] = load_policy_file(file)
        except PolicyInvalid as err:
            results[os.fspath(file)] = err
    _, duplicates = claim_names([r for r in results.values() if isinstance(r, LoadedPolicy)])
    for err in duplicates:
        results[err.source] = err
    return list(results.items())


def _check_dir(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"policy directory not found: {os.fspath(path)}")
    if not folder.is_dir():
        raise NotADirectoryError(f"policy path is not a directory: {os.fspath(path)}")
    return folder


# --- the store -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileStatus:
    """A policy file as the last reload found it."""

    source: str
    digest: str  # sha256 of its bytes ('' if unreadable)
    error: PolicyInvalid | None  # why it is not live as it is now, if it is not


@dataclass
class StoreStats:
    """Counters since the store was made (metrics read them at scrape time)."""

    reloads: int = 0  # folder reloads that ran (start-up, file watch and SIGHUP)
    rejected: int = 0  # rejections logged: a file content found invalid, counted once
    unloaded: int = 0  # policies removed because their file was deleted or renamed, or now names another policy
    restored: int = 0  # policies served from the last-good state directory


@dataclass
class ReloadReport:
    """What one reload did."""

    errors: list[PolicyInvalid] = field(default_factory=list)  # every file that is not live as it is
    new_errors: list[PolicyInvalid] = field(default_factory=list)  # those not reported before
    loaded: list[LoadedPolicy] = field(default_factory=list)  # versions that went live
    unloaded: list[LoadedPolicy] = field(default_factory=list)  # policies that are gone
    pending: list[str] = field(default_factory=list)  # files still being written: not read, retried next time


class PolicyStore:
    """Thread-safe registry of live policies by name; reloads never replace a valid policy with an invalid one.

    `state_dir`: keep the last good version of every file there (see `LastGood`) and, for a file
    that is invalid and has no live version (a new process), serve that version; None: off.
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self._lock = threading.RLock()
        self._reload_lock = threading.Lock()
        self._by_name: dict[str, LoadedPolicy] = {}
        self._version = 0
        self.errors: list[PolicyInvalid] = []
        self.last_good = LastGood(state_dir) if state_dir else None
        self.stats = StoreStats()
        self.last_report = ReloadReport()
        #: Called (outside the store's locks) with every version that goes live.
        self.listeners: list[Callable[[LoadedPolicy], None]] = []
        self._files: dict[str, FileStatus] = {}  # by file key
        self._reported: dict[str, tuple[str, str]] = {}  # file key -> (digest, message) last logged
        self._settled: dict[Path, tuple[_StatKey, str]] = {}
        self._saved: dict[str, str] = {}  # file name -> digest this store last saved as its last good

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str], *, settle_s: float = 0.0,
                       state_dir: str | os.PathLike[str] | None = None) -> PolicyStore:
        """Load every policy file in `path`; invalid files are skipped (or served from
        `state_dir`, see the class) and listed in `errors`."""
        store = cls(state_dir)
        store.reload_directory(path, settle_s=settle_s)
        return store

    @property
    def version(self) -> int:
        """Incremented on every change, so callers can invalidate caches."""
        with self._lock:
            return self._version

    def get(self, name: str) -> LoadedPolicy:
        with self._lock:
            try:
                return self._by_name[name]
            except KeyError:
                raise PolicyNotFound(name, list(self._by_name)) from None

    def list(self) -> list[LoadedPolicy]:
        with self._lock:
            return [self._by_name[n] for n in sorted(self._by_name)]

    def file_status(self, source: str) -> FileStatus | None:
        """The file `source` as the last reload found it (None: not a file of a reloaded folder)."""
        with self._lock:
            return self._files.get(_file_key(source)) if source != "<text>" else None

    def signature(self, folder: str | os.PathLike[str]) -> tuple:
        """`(file name, inode, size, mtime_ns)` of each file of `folder` as the last reload read it
        (the shape of server.watch.folder_signature): a watcher started later compares the folder
        with this, so that an edit made between the load and the watcher's start is not missed."""
        here = os.path.realpath(folder)
        out = []
        with self._lock:
            for key, status in self._files.items():
                seen = self._settled.get(Path(status.source))
                if os.path.dirname(key) == here and seen is not None:
                    _dev, ino, size, mtime_ns = seen[0]
                    out.append((Path(status.source).name, ino, size, mtime_ns))
        return tuple(sorted(out))

    def add(self, loaded: LoadedPolicy) -> None:
        """Register (or replace) a policy under its name."""
        with self._lock:
            self._by_name[loaded.name] = loaded
            self._version += 1

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._by_name

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_name)

    def reload_directory(self, path: str | os.PathLike[str], settle_s: float = 0.0) -> list[PolicyInvalid]:
        """Re-read a policy folder; return (and log) the errors of the files that are not live as they are.

        Valid files replace their previous version, an invalid file leaves its previous version
        live, and the policy of a deleted file is removed. A missing folder raises, changing nothing.
        `settle_s` > 0: read a file only once it has stopped changing (see `read_settled`); one
        still changing keeps its live version and is read again on the next reload.
        """
        return self.reload(path, settle_s).errors

    def reload(self, path: str | os.PathLike[str], settle_s: float = 0.0) -> ReloadReport:
        """`reload_directory`, returning the whole `ReloadReport` (also kept in `last_report`).

        Each rejection is logged (WARNING) once per file content, saying what is served instead;
        each policy unloaded is logged (WARNING) and counted."""
        folder = _check_dir(path)
        with self._reload_lock:
            files = policy_files(folder)
            with self._lock:
                live = self._live_files(folder)
            if settle_s > 0 and set(live) - {_file_key(f) for f in files}:
                # A file gone for a moment (an editor renaming it to a backup, then writing the new
                # one) is not a deletion: look again once the folder has settled.
                time.sleep(settle_s)
                files = policy_files(folder)
            contents, still_changing = read_settled(files, settle_s, known=self._settled)
            pending = {_file_key(f) for f in still_changing}
            results: dict[str, LoadedPolicy | PolicyInvalid] = {}
            digests: dict[str, str] = {}
            raws: dict[str, bytes] = {}
            for file in files:
                key = _file_key(file)
                if key in pending:
                    continue
                got = contents[file]
                if isinstance(got, OSError):
                    if file.exists():  # else it was deleted while we read: treat it as gone
                        results[key] = PolicyInvalid(os.fspath(file), [FieldIssue(
                            "", f"cannot read the file: {got.strerror or got}")])
                    continue
                stat_key, raw = got
                digest = hashlib.sha256(raw).hexdigest()
                digests[key], raws[key] = digest, raw
                self._settled[file] = (stat_key, digest)
                old = live.get(key)
                if old is not None and old.digest == digest and not old.last_good:
                    results[key] = old
                    continue
                try:
                    results[key] = load_policy_bytes(raw, os.fspath(file))
                except PolicyInvalid as err:
                    results[key] = err
            restored = self._restore(results, live)
            with self._lock:
                report = self._apply(folder, results, pending, restored)
                report.pending = [os.fspath(f) for f in still_changing]
                self._record_files(folder, results, digests, report.errors, pending)
                self.errors = report.errors
                self.stats.reloads += 1
                self.stats.unloaded += len(report.unloaded)
                self.stats.restored += sum(lp.last_good for lp in report.loaded)
                served = {_file_key(lp.source): lp for lp in self._by_name.values() if lp.source != "<text>"}
                report.new_errors = self._new_errors(folder, report.errors, digests, served)
                self.stats.rejected += len(report.new_errors)
            self._persist(folder, report.loaded, raws, {f.name for f in files} | {Path(k).name for k in pending})
            self.last_report = report
        self._log(report, served)
        for lp in report.loaded:
            for listener in self.listeners:
                listener(lp)
        return report

    # --- internals

    def _live_files(self, folder: Path) -> dict[str, LoadedPolicy]:
        """Live policies loaded from files in `folder`, by file. Call with the lock held."""
        here = os.path.realpath(folder)
        return {
            _file_key(lp.source): lp for lp in self._by_name.values()
            if lp.source != "<text>" and os.path.dirname(_file_key(lp.source)) == here
        }

    def _restore(self, results: dict[str, LoadedPolicy | PolicyInvalid],
                 live: dict[str, LoadedPolicy]) -> dict[str, LoadedPolicy]:
        """For each invalid file without a live version: its last good version, if one is saved."""
        out: dict[str, LoadedPolicy] = {}
        if self.last_good is None:
            return out
        for key, r in results.items():
            if not isinstance(r, PolicyInvalid) or key in live:
                continue
            for digest, raw in self.last_good.versions(Path(r.source).name):
                try:
                    lp = load_policy_bytes(raw, r.source)
                except PolicyInvalid:
                    continue  # valid once, not any more (the policy language changed): try an older one
                out[key] = LoadedPolicy(lp.policy, r.source, digest, lp.loaded_at, last_good=True)
                break
        return out

    def _apply(self, folder: Path, results: dict[str, LoadedPolicy | PolicyInvalid], pending: set[str],
               restored: dict[str, LoadedPolicy]) -> ReloadReport:
        """Make the folder's live policies match `results` (file -> outcome). Call with the lock held."""
        live = self._live_files(folder)
        errors = [r for r in results.values() if isinstance(r, PolicyInvalid)]
        # Files that failed, or are still being written, keep their previous version and its name.
        kept = {key: lp for key, lp in live.items()
                if key in pending or isinstance(results.get(key), PolicyInvalid)}
        taken: dict[str, LoadedPolicy] = {lp.name: lp for lp in kept.values()}

        # A name claimed twice stays with the file that holds it now, else goes to the first file.
        def holds_now(lp: LoadedPolicy) -> bool:
            current = self._by_name.get(lp.name)
            return current is not None and _file_key(current.source) == _file_key(lp.source)

        claims = [r for r in results.values() if isinstance(r, LoadedPolicy)]
        claims.sort(key=lambda lp: not holds_now(lp))  # stable: otherwise file order
        wanted, duplicates = claim_names(claims, taken, lambda lp: live.get(_file_key(lp.source)))
        errors += duplicates
        for lp in restored.values():  # last good versions come after every file valid now
            wanted.setdefault(lp.name, lp)
        report = ReloadReport()
        changed = False
        for lp in live.values():
            if wanted.get(lp.name) is not lp and self._by_name.get(lp.name) is lp:
                del self._by_name[lp.name]
                changed = True
                if lp.name not in wanted:
                    report.unloaded.append(lp)
        for name, lp in wanted.items():
            if self._by_name.get(name) is not lp:
                self._by_name[name] = lp
                report.loaded.append(lp)
                changed = True
        if changed:
            self._version += 1
        errors.sort(key=lambda e: e.source)
        report.errors = errors
        return report

    def _record_files(self, folder: Path, results: dict[str, LoadedPolicy | PolicyInvalid],
                      digests: dict[str, str], errors: list[PolicyInvalid], pending: set[str]) -> None:
        """Remember how each file of `folder` was found (for ListPolicies). Call with the lock held."""
        here = os.path.realpath(folder)
        first_error = {}
        for err in errors:
            first_error.setdefault(_file_key(err.source), err)
        for key in [k for k in self._files if os.path.dirname(k) == here]:
            if key not in results and key not in pending:  # gone (a pending file keeps its status)
                del self._files[key]
        for key, r in results.items():
            self._files[key] = FileStatus(r.source, digests.get(key, ""), first_error.get(key))

    def _new_errors(self, folder: Path, errors: list[PolicyInvalid], digests: dict[str, str],
                    served: dict[str, LoadedPolicy]) -> list[PolicyInvalid]:
        """The errors not logged before for the same file content. Call with the lock held."""
        here = os.path.realpath(folder)
        new = []
        now: dict[str, tuple[str, str]] = {}
        for err in errors:
            key = _file_key(err.source)
            mark = (digests.get(key, ""), f"{_served_text(served.get(key), self.last_good)}\n{err}")
            now[key] = mark
            if self._reported.get(key) != mark:
                new.append(err)
        # Files valid (or gone) now forget their last rejection: the same bad edit, made again
        # later, is logged again.
        self._reported = {k: v for k, v in self._reported.items() if os.path.dirname(k) != here} | now
        return new

    def _persist(self, folder: Path, loaded: list[LoadedPolicy], raws: dict[str, bytes],
                 present: set[str]) -> None:
        """Save each version that went live as its file's last good one; forget deleted files."""
        if self.last_good is None:
            return
        for lp in loaded:
            key = _file_key(lp.source)
            name = Path(lp.source).name
            if lp.last_good or key not in raws or self._saved.get(name) == lp.digest:
                continue
            self.last_good.save(name, raws[key], lp.digest)  # an older digest again: made the newest
            self._saved[name] = lp.digest
        for name in self.last_good.file_names() - present:
            self.last_good.forget(name)  # a deleted file must not come back at the next start
            self._saved.pop(name, None)

    def _log(self, report: ReloadReport, served: dict[str, LoadedPolicy]) -> None:
        for err in report.new_errors:
            lp = served.get(_file_key(err.source))
            text = _served_text(lp, self.last_good)
            logger.warning("policy file rejected (%s):\n%s", text, err, extra={
                "source": err.source, "served_version": lp.policy.version if lp else None,
                "served_digest": lp.digest if lp else None, "last_good": bool(lp and lp.last_good)})
        went_live = {_file_key(lp.source): lp for lp in report.loaded}
        for lp in report.unloaded:
            now = went_live.get(_file_key(lp.source))
            why = (f"its file now defines policy {now.name!r}" if now is not None
                   else "its file was deleted or renamed" if not Path(lp.source).exists()
                   else "its file no longer provides it")
            logger.warning("policy %r unloaded: %s (%s)", lp.name, why, lp.source, extra={
                "policy": lp.name, "version": lp.policy.version, "source": lp.source})


def _served_text(lp: LoadedPolicy | None, last_good: LastGood | None) -> str:
    """What is served for a rejected file, for its log line."""
    if lp is None:
        return "not loaded"
    if lp.last_good:
        where = os.fspath(last_good.directory) if last_good is not None else "the state directory"
        return (f"serving its last good version {lp.policy.version!r} (sha256 {lp.digest[:12]}), "
                f"saved in {where}")
    return f"its previous version stays live: version {lp.policy.version!r}, sha256 {lp.digest[:12]}"


def _file_key(source: str | os.PathLike[str]) -> str:
    return os.path.realpath(source)


def _line_suffix(source: str, key: str) -> str:
    """' (line N)' for a top-level `key:` in a file, or '' if it cannot be found."""
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    m = re.search(rf"^{re.escape(key)}\s*:", text, re.MULTILINE)
    return f" (line {text.count(chr(10), 0, m.start()) + 1})" if m else ""


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy language (for editors checking YAML as people type)."""
    schema = json_schema(Policy, SCHEMA_ID, "Slate re-ranking policy (v1)")
    schema["properties"]["version"]["type"] = ["string", "number"]
    return schema


def write_schema(path: str | os.PathLike[str] = SCHEMA_PATH) -> None:
    """Write `policy_json_schema()` to `path`, pretty-printed with a trailing newline."""
    Path(path).write_text(json.dumps(policy_json_schema(), indent=2) + "\n", encoding="utf-8")
