"""The policy and experiment files the workbench shows and writes.

Everything here reads the folders as the servers do (engine.policy_loader.check_folder: every
policy file validated, one policy name per file), so what the page calls valid is what a server
would load. A promote is race-safe and atomic:

- the editor carries the sha256 of the file it started from (`base_digest`); under one lock the
  file on disk is read again, and if its digest is no longer the base the promote is refused
  (`Conflict`, HTTP 409), never merged;
- the new text is validated like a policy file (an invalid proposal is never written);
- it is written to a hidden temporary file in the same folder (the servers' watch ignores hidden
  files), flushed and fsynced, then `os.replace`d over the policy file, so that a server never
  reads half a file (README: "write, then rename").
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import re
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from engine.decide import PolicyVersion
from engine.errors import FieldIssue, PolicyInvalid
from engine.experiments import ExperimentInvalid, check_experiments, load_experiment_file
from engine.policy_loader import LoadedPolicy, check_folder, is_policy_file_name, policy_files
from offline.pareto import Vary, apply, numeric_paths
from offline.policies import version_from_text

_LINE = re.compile(r"\s*\(line (\d+)(?:, column (\d+))?\)")


class WorkbenchError(ValueError):
    """A request the workbench refuses; `status` is the HTTP status it maps to."""

    status = 400

    def __init__(self, message: str, issues: list[dict] | None = None):
        super().__init__(message)
        self.issues = issues or []


class NotFound(WorkbenchError):
    status = 404


class Invalid(WorkbenchError):
    """An invalid proposed policy (never previewed, never promoted)."""

    status = 422


class Conflict(WorkbenchError):
    """The file changed on disk since the editor loaded it."""

    status = 409


@dataclass(frozen=True)
class Issue:
    """One validation problem, as the page shows it: the YAML path, the line (0: unknown)."""

    path: str
    message: str
    line: int = 0
    column: int = 0

    @property
    def text(self) -> str:
        """e.g. "line 15, slate_size: must be an integer between 1 and 1000, got 'x'"."""
        if not self.line:
            return f"{self.path + ': ' if self.path else ''}{self.message}"
        column = f", column {self.column}" if self.column else ""
        message = _LINE.sub("", self.message, count=1)
        return f"line {self.line}{column}{', ' + self.path if self.path else ''}: {message}"

    def to_json(self) -> dict:
        return {**asdict(self), "text": self.text}


def issue_of(fi: FieldIssue) -> Issue:
    m = _LINE.search(fi.message)
    return Issue(fi.path, fi.message, int(m.group(1)) if m else 0, int(m.group(2) or 0) if m else 0)


def digest_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class Folders:
    """The policies folder (and optionally the experiments folder) of one workbench."""

    def __init__(self, policies: str | os.PathLike, experiments: str | os.PathLike | None = None):
        self.policies = Path(policies)
        self.experiments = Path(experiments) if experiments is not None else None
        if not self.policies.is_dir():
            raise FileNotFoundError(f"--policies: no such folder: {os.fspath(self.policies)}")
        if self.experiments is not None and not self.experiments.is_dir():
            raise FileNotFoundError(f"--experiments: no such folder: {os.fspath(self.experiments)}")
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ listing
    def list_policies(self) -> list[dict]:
        """Every policy file: name, version, sha256 of its bytes, and its first error if invalid."""
        out = []
        for source, r in check_folder(self.policies):
            path = Path(source)
            row = {"file": path.name, "digest": digest_of(path.read_bytes()) if path.exists() else ""}
            if isinstance(r, LoadedPolicy):
                row.update(valid=True, name=r.name, version=r.policy.version, error=None,
                           slate_size=r.policy.slate_size)
            else:
                first = issue_of(r.issues[0]) if r.issues else Issue("", str(r))
                row.update(valid=False, name=_name_in(path), version="", error=first.text,
                           errors=[issue_of(i).to_json() for i in r.issues])
            out.append(row)
        return out

    def list_experiments(self) -> list[dict]:
        """Every experiment file, validated alone and then against the valid policies' names."""
        if self.experiments is None:
            return []
        known = [p["name"] for p in self.list_policies() if p["valid"]]
        rows, loaded = [], []
        for path in sorted(p for p in self.experiments.iterdir() if p.is_file() and is_policy_file_name(p.name)):
            row = {"file": path.name, "digest": digest_of(path.read_bytes())}
            try:
                le = load_experiment_file(path)
            except ExperimentInvalid as e:
                first = issue_of(e.issues[0]) if e.issues else Issue("", str(e))
                row.update(valid=False, name=_name_in(path), policy="", variants="", error=first.text)
            else:
                loaded.append(le)
                row.update(valid=True, name=le.name, policy=le.experiment.policy, error=None,
                           variants=", ".join(f"{v.name} {v.weight:g}" for v in le.experiment.variants))
            rows.append(row)
        for err in check_experiments(loaded, known):
            for row in rows:
                if Path(err.source).name == row["file"]:
                    first = issue_of(err.issues[0]) if err.issues else Issue("", str(err))
                    row.update(valid=False, error=first.text)
        return rows

    # ------------------------------------------------------------------ one file
    def path_of(self, file: str) -> Path:
        """The policy file `file` of the folder (a bare file name; NotFound otherwise)."""
        if not isinstance(file, str) or not file or os.path.basename(file) != file or not is_policy_file_name(file):
            raise NotFound(f"file: expected the name of a policy file in {self.policies} (NAME.yaml), got {file!r}")
        path = self.policies / file
        if not path.is_file():
            names = ", ".join(p.name for p in policy_files(self.policies)) or "none"
            raise NotFound(f"file: no policy file {file!r} in {self.policies} (it has: {names})")
        return path

    def read(self, file: str) -> tuple[str, str]:
        """(text, sha256 of the bytes) of a policy file."""
        raw = self.path_of(file).read_bytes()
        return raw.decode("utf-8", errors="replace"), digest_of(raw)

    # ------------------------------------------------------------------ validation
    def validate(self, text: str, file: str | None = None) -> tuple[PolicyVersion | None, list[Issue]]:
        """The proposed text as a runnable version, or its issues (each with the line): the
        policy language's own checks, then that its name is not another file's policy."""
        if not isinstance(text, str):
            return None, [Issue("", f"text: expected the policy's YAML text, got {type(text).__name__}")]
        source = file or "<edited>"
        try:
            version = version_from_text(text, source)
        except PolicyInvalid as e:
            return None, [issue_of(i) for i in e.issues] or [Issue("", str(e))]
        except Exception as e:  # noqa: BLE001 - a compile bug must still reach the page as an error
            return None, [Issue("", f"cannot be compiled: {type(e).__name__}: {e}")]
        for row in self.list_policies():
            if row["valid"] and row["name"] == version.name and row["file"] != file:
                line = _key_line(text, "name")
                return None, [Issue("name", f"policy name {version.name!r} is already used by {row['file']}"
                                            f"{f' (line {line})' if line else ''}", line)]
        return version, []

    def require_valid(self, text: str, file: str | None = None) -> PolicyVersion:
        version, issues = self.validate(text, file)
        if version is None:
            raise Invalid("the proposed policy is invalid: " + "; ".join(i.text for i in issues),
                          [i.to_json() for i in issues])
        return version

    # ------------------------------------------------------------------ diff and promote
    def diff(self, file: str, text: str) -> str:
        live, digest = self.read(file)
        return unified_diff(live, text, file, digest)

    def promote(self, file: str, text: str, base_digest: str) -> dict:
        """Write `text` over the policy file, atomically, if the file is still the one the editor
        started from (module docstring). Returns {file, digest, previous}."""
        if not isinstance(base_digest, str) or not re.fullmatch(r"[0-9a-f]{64}", base_digest or ""):
            raise WorkbenchError(f"base_digest: expected the sha256 (64 hex digits) of the file the edit "
                                 f"started from, got {base_digest!r}")
        path = self.path_of(file)
        self.require_valid(text, file)
        raw = text.encode("utf-8")
        with self._lock:
            now = digest_of(path.read_bytes())
            if now != base_digest:
                raise Conflict(f"{file} changed on disk since this edit started (it started from "
                               f"{base_digest[:12]}, the file is now {now[:12]}): nothing was written. "
                               f"Reload the file and apply your change again.")
            if digest_of(raw) == now:
                raise WorkbenchError(f"{file}: the proposed text is the live file: nothing to promote")
            write_atomic(path, raw)
        return {"file": file, "digest": digest_of(raw), "previous": now}


def write_atomic(path: Path, raw: bytes) -> None:
    """`raw` into `path`: a hidden temporary file in the same folder, fsynced, then os.replace
    (the file keeps its mode)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".workbench.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def unified_diff(old: str, new: str, file: str, digest: str) -> str:
    out = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                               fromfile=f"{file} (live, {digest[:12]})", tofile=f"{file} (proposed)")
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)


def _name_in(path: Path) -> str:
    """The `name:` of a file that does not validate, if a plain one can be read."""
    try:
        m = re.search(r"^name:\s*['\"]?([A-Za-z0-9_.-]+)", path.read_text(encoding="utf-8", errors="replace"), re.M)
    except OSError:
        return ""
    return m.group(1) if m else ""


def _key_line(text: str, key: str) -> int:
    m = re.search(rf"^{re.escape(key)}\s*:", text, re.M)
    return text.count("\n", 0, m.start()) + 1 if m else 0


# ------------------------------------------------------------------ numbers in a policy's text
def numbers_of(text: str) -> list[str]:
    """The dotted paths of every number of a policy (offline.pareto.numeric_paths)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    return numeric_paths(doc) if isinstance(doc, dict) else []


def _node_at(node: yaml.Node, path: tuple[str, ...]) -> yaml.ScalarNode | None:
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
        elif isinstance(node, yaml.SequenceNode):
            idx = None
            for j, item in enumerate(node.value):
                if isinstance(item, yaml.MappingNode) and any(
                        isinstance(k, yaml.ScalarNode) and k.value == "name" and isinstance(v, yaml.ScalarNode)
                        and v.value == part for k, v in item.value):
                    idx = j
                    break
            if idx is None and part.isdigit() and int(part) < len(node.value):
                idx = int(part)
            node = node.value[idx] if idx is not None else None
        else:
            return None
        if node is None:
            return None
    return node if isinstance(node, yaml.ScalarNode) else None


def with_numbers(text: str, paths: list[tuple[str, ...]], values: list[float]) -> str | None:
    """`text` with the number at each path replaced by its value, the rest of the file (comments,
    order, quoting) kept as written; None when a path is not a number written in the text or the
    result does not read back as offline.pareto.apply's document."""
    try:
        root = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if root is None:
        return None
    edits = []
    for path, value in zip(paths, values):
        node = _node_at(root, path)
        if node is None or node.start_mark.index == node.end_mark.index:
            return None
        old = yaml.safe_load(node.value) if node.style is None else None
        if isinstance(old, bool) or not isinstance(old, (int, float)):
            return None
        new = str(int(round(value))) if isinstance(old, int) else _float_text(value)
        edits.append((node.start_mark.index, node.end_mark.index, new))
    out = text
    for start, end, new in sorted(edits, reverse=True):
        out = out[:start] + new + out[end:]
    try:
        expected = apply(doc, [Vary(p, (v,)) for p, v in zip(paths, values)], tuple(values))
        return out if yaml.safe_load(out) == expected else None
    except yaml.YAMLError:
        return None


def _float_text(x: float) -> str:
    s = repr(float(x))
    return s if ("." in s or "e" in s or "inf" in s or "nan" in s) else s + ".0"
