"""Load policy files: YAML text -> validated `Policy`, every problem reported in the author's terms.

Each problem becomes a `FieldIssue(path, message)`: the path is written like the YAML
(`constraints[2].max`) and the message says what was expected and what came, with the line.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import re
import threading
import time
import types
from dataclasses import dataclass
from inspect import isclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from engine.errors import FieldIssue, PolicyInvalid, PolicyNotFound
from engine.policy import (
    NAME_PATTERN,
    NAME_RULE,
    RULE_ERROR_TYPE,
    AttributeFilter,
    Constraint,
    Objective,
    Policy,
    policy_conflicts,
)

logger = logging.getLogger(__name__)

SCHEMA_ID = "urn:slate-reranker:policy:v1"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "policies" / "policy.schema.json"
POLICY_SUFFIXES = (".yaml", ".yml")

_REQUIRED_KEYS = "name, version, slate_size and objective"


# --- paths and line numbers ------------------------------------------------------------------------


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)


_LAST_PART = re.compile(r"^(.*?)(\.[^.\[\]]+|\[\d+\])$")


def _parent(path: str) -> str | None:
    if not path:
        return None
    m = _LAST_PART.match(path)
    return m.group(1) if m else ""


def _line_of(path: str, lines: dict[str, int]) -> int | None:
    """Line of `path` in the YAML, or of its nearest ancestor (e.g. for a missing key); not the root's."""
    p: str | None = path
    while p:
        if p in lines:
            return lines[p]
        p = _parent(p)
    return None


@dataclass
class _Yaml:
    """Where things are in the YAML text: line of each path, and unquoted scalars as written."""

    lines: dict[str, int]
    plain: dict[str, str]


def _index(node: yaml.Node, path: str, where: _Yaml, issues: list[FieldIssue]) -> None:
    """Record the line of every key / list item, and report keys given twice in one mapping."""
    where.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.ScalarNode) and node.style is None:
        where.plain[path] = node.value
    elif isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = str(key_node.value), key_node.start_mark.line + 1
            child = _join(path, key)
            if key in first_line:
                issues.append(FieldIssue(child, f"duplicate key {key!r}, first given at line {first_line[key]}"))
            else:
                first_line[key] = line
            where.lines[child] = line
            _index(value_node, child, where, issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, _join(path, i), where, issues)


def _yaml_error_message(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError):
        what = ", ".join(p for p in (err.context, err.problem) if p) or "syntax error"
        if "'\\t'" in what:
            what += "; indent with spaces, not tabs"
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"invalid YAML: {what}{where}"
    return f"invalid YAML: {err}"


#: Largest document, in nodes once every alias is expanded. Nested aliases multiply: a few hundred
#: bytes can expand to billions of nodes, and walking them would stall the server.
MAX_EXPANDED_NODES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document with every alias expanded, counted in time linear in the graph
    (each distinct node is visited once; aliases share node objects)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # guards against recursive aliases
    total = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, memo) + _expanded_size(v, memo)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_size(item, memo)
    memo[key] = total
    return total


def _load_yaml(text: str, source: str) -> tuple[Any, _Yaml, list[FieldIssue]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise PolicyInvalid(source, [FieldIssue(
                "", f"document too large: more than {MAX_EXPANDED_NODES:,} values once YAML aliases "
                    "are expanded (nested anchors multiply); write the values out instead")])
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise PolicyInvalid(source, [FieldIssue("", _yaml_error_message(err))]) from None
    finally:
        loader.dispose()
    where = _Yaml({}, {})
    issues: list[FieldIssue] = []
    if node is not None:
        _index(node, "", where, issues)
    return data, where, issues


# --- pydantic errors -> messages -----------------------------------------------------------------


@dataclass
class _Spot:
    """What the language expects at one pydantic `loc`: the YAML path and the declared type."""

    path: str
    annotation: Any = None
    metadata: tuple[Any, ...] = ()
    owner: type[BaseModel] | None = None  # the model whose key the loc ends on
    union_note: str = ""  # ' or a list of weights' when the value may also be a list (position_discount)


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _peel(tp: Any) -> tuple[Any, list[Any]]:
    """Strip `Annotated[...]` and `X | None`, collecting constraint metadata on the way."""
    meta: list[Any] = []
    while True:
        if get_origin(tp) is Annotated:
            tp, *extra = get_args(tp)
            for m in extra:
                meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
        elif _is_union(tp) and sum(a is not type(None) for a in get_args(tp)) == 1:
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp, meta


def _tag_of(member: Any) -> str | None:
    tp, meta = _peel(member)
    for m in meta:
        if type(m).__name__ == "Tag":
            return m.tag
    if isclass(tp) and issubclass(tp, BaseModel) and "type" in tp.model_fields:
        values = get_args(tp.model_fields["type"].annotation)
        return values[0] if values else None
    return None


def _field(model: type[BaseModel], key: Any) -> FieldInfo | None:
    for name, f in model.model_fields.items():
        if (f.alias or name) == key:
            return f
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _resolve(loc: tuple[Any, ...]) -> _Spot:
    """Walk the models along a pydantic `loc`, dropping union tags (e.g. 'max_count') from the path."""
    spot = _Spot(path="", annotation=Policy)
    tp, meta = Policy, []
    for part in loc:
        tp, more = _peel(tp)
        meta += more
        if part == "[key]":  # a mapping key itself is wrong
            return _Spot(spot.path, str)
        if isclass(tp) and issubclass(tp, BaseModel):
            spot.owner = tp
            spot.path = _join(spot.path, str(part))
            f = _field(tp, part)
            if f is None:
                return _Spot(spot.path, owner=tp)
            tp, meta = f.annotation, list(f.metadata)
        elif get_origin(tp) is list:
            spot.path, tp, meta = _join(spot.path, part), get_args(tp)[0], []
        elif get_origin(tp) is dict:
            spot.path, tp, meta = _join(spot.path, str(part)), get_args(tp)[1], []
        elif _is_union(tp):
            members = get_args(tp)
            chosen = next((m for m in members if _tag_of(m) == part), None)
            if chosen is None:
                return _Spot(spot.path)
            if any(get_origin(_peel(m)[0]) is list for m in members if m is not chosen):
                spot.union_note = " or a list of weights"
            tp = chosen
        else:
            return _Spot(spot.path)
    tp, more = _peel(tp)
    return _Spot(spot.path, tp, tuple(meta + more), spot.owner, spot.union_note)


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _bounds(meta: tuple[Any, ...]) -> str:
    b = {k: getattr(m, k) for m in meta for k in ("ge", "gt", "le", "lt") if getattr(m, k, None) is not None}
    if "ge" in b and "le" in b:
        return f" between {_num(b['ge'])} and {_num(b['le'])}"
    parts = [f"{op} {_num(b[k])}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if k in b]
    return (" " + " and ".join(parts)) if parts else ""


def _quoted(values: Any) -> str:
    return ", ".join(repr(v) for v in values)


def _expected(spot: _Spot) -> str:
    tp = spot.annotation
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + _bounds(spot.metadata)
    if tp is float:
        return "a number" + _bounds(spot.metadata)
    if tp is str:
        return "a string"
    if get_origin(tp) is Literal:
        return f"one of {_quoted(get_args(tp))}{spot.union_note}"
    if get_origin(tp) is list:
        return "a list"
    if get_origin(tp) is dict or (isclass(tp) and issubclass(tp, BaseModel)):
        return "a mapping (key: value lines)"
    if _is_union(tp):
        return "a mapping with a 'type' key"
    return "a valid value"


def _show(v: Any, written: str | None = None) -> str:
    """A value as the author wrote it in YAML (`written`: the unquoted scalar text, if known)."""
    if written and not isinstance(v, str):
        return written
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "an empty value"
    if isinstance(v, str):
        return repr(v if len(v) <= 60 else v[:57] + "...")
    if isinstance(v, (int, float)):
        return _num(v)
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


def _did_you_mean(word: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


_MISSING_HINTS: dict[tuple[type[BaseModel], str], str] = {
    (AttributeFilter, "attribute"): "required: a filter needs 'attribute' (with 'in' or 'not_in') "
    "or 'numeric' (with 'min' and/or 'max')",
}

_TYPE_ERRORS = {
    "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing", "finite_number",
    "bool_type", "bool_parsing", "string_type", "literal_error", "list_type", "dict_type",
    "model_type", "model_attributes_type", "greater_than", "greater_than_equal", "less_than",
    "less_than_equal",
}


def _translate(err: dict[str, Any], where: _Yaml) -> list[tuple[str, str, str]]:
    """One pydantic error -> `(path, line path, message)` triples (the line path may be deeper)."""
    kind, loc, value, ctx = err["type"], err["loc"], err.get("input"), err.get("ctx") or {}
    spot = _resolve(loc)
    written = where.plain.get(spot.path)
    if kind == RULE_ERROR_TYPE:
        paths = [_join_rel(spot.path, rel) for rel, _ in ctx["issues"]]
        return [(p, p, msg) for p, (_, msg) in zip(paths, ctx["issues"])]
    if kind == "missing":
        hint = _MISSING_HINTS.get((spot.owner, str(loc[-1]))) if spot.owner else None
        return [(spot.path, spot.path, hint or "required")]
    if loc and loc[-1] == "[key]":
        return [(spot.path, spot.path, f"key must be text, got {loc[-2]} "
                 f'(write it in quotes: "{loc[-2]}")')]
    if kind in ("extra_forbidden", "invalid_key"):
        parent, key = _parent(spot.path) or "", loc[-1]
        allowed = _keys(spot.owner) if spot.owner else []
        msg = f"unknown key {str(key)!r} (allowed: {', '.join(allowed)}){_did_you_mean(key, allowed)}"
        return [(parent, spot.path, msg)]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = _constraint_tags()
        path = _join(spot.path, "type")
        if kind == "union_tag_not_found":
            return [(path, spot.path, f"required: the kind of rule, one of {_quoted(tags)}")]
        return [(path, path, f"must be one of {_quoted(tags)}, got {_show(ctx.get('tag'))}"
                 f"{_did_you_mean(ctx.get('tag'), list(tags))}")]
    if kind in _TYPE_ERRORS:
        msg = f"must be {_expected(spot)}, got {_show(value, written)}"
        if kind == "string_type" and isinstance(value, (bool, int, float)) and written is not None:
            read_as = f"YAML reads it as {_show(value)}; " if isinstance(value, bool) else ""
            msg += f' ({read_as}write it in quotes: "{written}")'
        if kind == "literal_error" and isinstance(value, str) and get_origin(spot.annotation) is Literal:
            msg += _did_you_mean(value, [str(a) for a in get_args(spot.annotation)])
        return [(spot.path, spot.path, msg)]
    if kind == "string_pattern_mismatch":
        rule = NAME_RULE if ctx.get("pattern") == NAME_PATTERN else f"must match {ctx.get('pattern')}"
        return [(spot.path, spot.path, f"{rule}, got {_show(value, written)}")]
    if kind in ("too_short", "string_too_short"):
        n = ctx.get("min_length", 1)
        if kind == "string_too_short" or n == 1:
            return [(spot.path, spot.path, "must not be empty")]
        return [(spot.path, spot.path, f"must have at least {n} entries, got {ctx.get('actual_length')}")]
    if kind in ("value_error", "assertion_error"):
        return [(spot.path, spot.path, str(ctx.get("error", err["msg"])))]
    msg = err["msg"][:1].lower() + err["msg"][1:]
    return [(spot.path, spot.path, f"{msg}, got {_show(value, written)}")]


def _join_rel(base: str, rel: str) -> str:
    if not rel:
        return base
    if not base or rel.startswith("["):
        return base + rel
    return f"{base}.{rel}"


def _constraint_tags() -> tuple[str, ...]:
    union, _ = _peel(Constraint)
    return tuple(t for t in (_tag_of(m) for m in get_args(union)) if t)


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
    data, where, issues = _load_yaml(text, source)
    found: list[tuple[str, str, str]] = [(i.path, i.path, i.message) for i in issues]
    if data is None:
        raise PolicyInvalid(source, [FieldIssue("", f"the document is empty; a policy needs at least {_REQUIRED_KEYS}")])
    if not isinstance(data, dict):
        raise PolicyInvalid(source, [FieldIssue("", f"the document must be a mapping of keys ({_REQUIRED_KEYS}, "
                                                    f"...), got {_show(data)} (line {where.lines.get('', 1)})")])
    if isinstance(data.get("version"), (int, float)) and where.plain.get("version"):
        data["version"] = where.plain["version"]  # keep `version: 1.10` as written, not 1.1
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as err:
        for e in err.errors(include_url=False):
            found += _translate(e, where)
        # Cross-constraint checks ran only if every field validated; else run them on the valid parts.
        if not any(e["type"] == RULE_ERROR_TYPE and e["loc"] == () for e in err.errors()):
            found += [(p, p, m) for p, m in _partial_conflicts(data)]
    if not found and policy is not None:
        return policy
    unique = sorted(dict.fromkeys(found), key=lambda f: _line_of(f[1], where.lines) or 0)
    out = []
    for path, line_path, msg in unique:
        line = _line_of(line_path, where.lines)
        out.append(FieldIssue(path, f"{msg} (line {line})" if line else msg))
    raise PolicyInvalid(source, out)


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy and where it came from."""

    policy: Policy
    source: str  # the path as given, or '<text>'
    digest: str  # sha256 hex of the file's bytes
    loaded_at: float  # time.time() at load

    @property
    def name(self) -> str:
        return self.policy.name


def _read_policy_bytes(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise PolicyInvalid(source, [FieldIssue("", f"cannot read the file: {err.strerror or err}")]) from None
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PolicyInvalid(source, [FieldIssue("", f"the file is not UTF-8 text (byte {err.start})")]) from None


def load_policy_file(path: str | os.PathLike[str]) -> LoadedPolicy:
    """Read, parse and validate one policy file."""
    raw, text = _read_policy_bytes(path)
    policy = parse_policy_text(text, os.fspath(path))
    return LoadedPolicy(policy, os.fspath(path), hashlib.sha256(raw).hexdigest(), time.time())


class PolicyStore:
    """Thread-safe registry of live policies by name; reloads never replace a valid policy with an invalid one."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._reload_lock = threading.Lock()
        self._by_name: dict[str, LoadedPolicy] = {}
        self._version = 0
        self.errors: list[PolicyInvalid] = []

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> PolicyStore:
        """Load every *.yaml / *.yml in `path`; invalid files are skipped and listed in `errors`."""
        store = cls()
        store.reload_directory(path)
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

    def reload_directory(self, path: str | os.PathLike[str]) -> list[PolicyInvalid]:
        """Re-read a policy folder; return (and log) the errors of the files that were rejected.

        Valid files replace their previous version, an invalid file leaves its previous version
        live, and the policy of a deleted file is removed. A missing folder raises, changing nothing.
        """
        folder = Path(path)
        if not folder.exists():
            raise FileNotFoundError(f"policy directory not found: {os.fspath(path)}")
        if not folder.is_dir():
            raise NotADirectoryError(f"policy path is not a directory: {os.fspath(path)}")
        with self._reload_lock:
            files = sorted(
                p for p in folder.iterdir()
                if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".") and p.is_file()
            )
            with self._lock:
                live = self._live_files(folder)
            results: dict[str, LoadedPolicy | PolicyInvalid] = {}
            for file in files:
                key = _file_key(file)
                try:
                    results[key] = _load_if_changed(file, live.get(key))
                except PolicyInvalid as err:
                    if file.exists():  # else it was deleted while we read: treat it as gone
                        results[key] = err
            with self._lock:
                errors = self._apply(folder, results)
                self.errors = errors
        for err in errors:
            kept = "its previous version stays live" if _file_key(err.source) in live else "not loaded"
            logger.warning("policy file rejected (%s):\n%s", kept, err)
        return errors

    # --- internals

    def _live_files(self, folder: Path) -> dict[str, LoadedPolicy]:
        """Live policies loaded from files in `folder`, by file. Call with the lock held."""
        here = os.path.realpath(folder)
        return {
            _file_key(lp.source): lp for lp in self._by_name.values()
            if lp.source != "<text>" and os.path.dirname(_file_key(lp.source)) == here
        }

    def _apply(self, folder: Path, results: dict[str, LoadedPolicy | PolicyInvalid]) -> list[PolicyInvalid]:
        """Make the folder's live policies match `results` (file -> outcome). Call with the lock held."""
        live = self._live_files(folder)
        errors = [r for r in results.values() if isinstance(r, PolicyInvalid)]
        # Files that failed keep their previous version, which keeps its name.
        kept = {key: live[key] for key, r in results.items() if isinstance(r, PolicyInvalid) and key in live}
        wanted: dict[str, LoadedPolicy] = {lp.name: lp for lp in kept.values()}

        # A name claimed twice stays with the file that holds it now, else goes to the first file.
        def holds_now(lp: LoadedPolicy) -> bool:
            current = self._by_name.get(lp.name)
            return current is not None and _file_key(current.source) == _file_key(lp.source)

        claims = [r for r in results.values() if isinstance(r, LoadedPolicy)]
        claims.sort(key=lambda lp: not holds_now(lp))  # stable: otherwise file order
        for lp in claims:
            holder = wanted.get(lp.name)
            if holder is None:
                wanted[lp.name] = lp
                continue
            issue = FieldIssue("name", f"policy name {lp.name!r} is already used by {holder.source}"
                                       f"{_line_suffix(lp.source, 'name')}")
            errors.append(PolicyInvalid(lp.source, [issue]))
            if _file_key(lp.source) in live:  # this file's previous version stays live
                old = live[_file_key(lp.source)]
                wanted.setdefault(old.name, old)
        changed = False
        for lp in live.values():
            if wanted.get(lp.name) is not lp and self._by_name.get(lp.name) is lp:
                del self._by_name[lp.name]
                changed = True
        for name, lp in wanted.items():
            if self._by_name.get(name) is not lp:
                self._by_name[name] = lp
                changed = True
        if changed:
            self._version += 1
        errors.sort(key=lambda e: e.source)
        return errors


def _load_if_changed(file: Path, old: LoadedPolicy | None) -> LoadedPolicy:
    """The live `old` version if the file's bytes are unchanged, else a fresh load."""
    if old is not None:
        with contextlib.suppress(OSError):
            if hashlib.sha256(file.read_bytes()).hexdigest() == old.digest:
                return old
    return load_policy_file(file)


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
    schema = Policy.model_json_schema(by_alias=True)
    version = schema["properties"]["version"]
    version["type"] = ["string", "number"]
    head = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Slate re-ranking policy (v1)",
        "description": schema.get("description", ""),
    }
    return head | {k: v for k, v in schema.items() if k not in head}


def write_schema(path: str | os.PathLike[str] = SCHEMA_PATH) -> None:
    """Write `policy_json_schema()` to `path`, pretty-printed with a trailing newline."""
    Path(path).write_text(json.dumps(policy_json_schema(), indent=2) + "\n", encoding="utf-8")
