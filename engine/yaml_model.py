"""YAML text -> a validated, frozen pydantic model, every problem reported in the author's terms.

The policy loader and the experiment loader share this: each problem becomes a
`FieldIssue(path, message)` whose path is written like the YAML (`constraints[2].max`,
`variants[1].weight`) and whose message says what was expected and what came, with the line
(`must be an integer >= 1, got 0 (line 9)`). `parse_yaml_model` is the whole path; the smaller
pieces (`load_yaml`, `located`, `line_of`) serve checks across files, which need the lines too.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from inspect import isclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from engine.errors import FieldIssue, PolicyInvalid
from engine.policy import NAME_PATTERN, NAME_RULE, RULE_ERROR_TYPE, RuleModel  # noqa: F401 - RuleModel re-exported

ModelT = TypeVar("ModelT", bound=BaseModel)


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


def line_of(path: str, lines: Mapping[str, int]) -> int | None:
    """Line of `path` in the YAML, or of its nearest ancestor (e.g. for a missing key); not the root's."""
    p: str | None = path
    while p:
        if p in lines:
            return lines[p]
        p = _parent(p)
    return None


@dataclass
class YamlIndex:
    """Where things are in the YAML text: line of each path, and unquoted scalars as written."""

    lines: dict[str, int]
    plain: dict[str, str]


def _index(node: yaml.Node, path: str, where: YamlIndex, issues: list[FieldIssue]) -> None:
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
#: Deepest nesting of mappings / lists, aliases expanded. A policy needs about 6 levels; the YAML
#: composer and the walks below recurse once per level, and Python's stack ends near 1,000.
MAX_DEPTH = 64


def _too_deep(line: int | None, noun: str) -> PolicyInvalid:
    where = f" (line {line})" if line else ""
    return PolicyInvalid("", [FieldIssue("", f"the document is nested deeper than {MAX_DEPTH} levels"
                                              f"{where}; {noun} needs about 6")])


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader whose (recursive) composer refuses nesting deeper than MAX_DEPTH before it
    would exhaust the stack (5,000 levels of `[` raised RecursionError, an INTERNAL error)."""

    _depth = 0
    noun = "a policy"  # what the document is, for the message

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _too_deep(self.peek_event().start_mark.line + 1, self.noun)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(node: yaml.Node, memo: dict[int, tuple[int, int]], noun: str,
                   path: set[int] | None = None, depth: int = 1) -> tuple[int, int]:
    """(nodes, height) of the document with every alias expanded, counted in time linear in the
    graph (each distinct node is visited once; aliases share node objects). Raises PolicyInvalid
    for an alias inside the value it names (a cycle) and for nesting deeper than MAX_DEPTH."""
    path = set() if path is None else path
    key = id(node)
    if key in path:
        raise PolicyInvalid("", [FieldIssue("", "an alias (*name) refers to a value that contains it "
                                                f"(line {node.start_mark.line + 1}); write the values out")])
    if key in memo:
        size, height = memo[key]
        if depth + height - 1 > MAX_DEPTH:
            raise _too_deep(node.start_mark.line + 1, noun)
        return size, height
    if depth > MAX_DEPTH:
        raise _too_deep(node.start_mark.line + 1, noun)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    path.add(key)
    total, height = 1, 1
    for child in children:
        size, h = _expanded_size(child, memo, noun, path, depth + 1)
        total += size
        height = max(height, h + 1)
    path.discard(key)
    memo[key] = (total, height)
    return total, height


def load_yaml(text: str, source: str, noun: str = "a policy") -> tuple[Any, YamlIndex, list[FieldIssue]]:
    """(plain data, where each path is, duplicate-key issues) of one YAML document. Raises
    `PolicyInvalid` naming `source` for bad YAML, a document too large or nested too deep (`noun`
    says what the document is, in that message: 'a policy needs about 6')."""
    loader = _DepthLimitedLoader(text)
    loader.noun = noun
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node, {}, noun)[0] > MAX_EXPANDED_NODES:
            raise PolicyInvalid(source, [FieldIssue(
                "", f"document too large: more than {MAX_EXPANDED_NODES:,} values once YAML aliases "
                    "are expanded (nested anchors multiply); write the values out instead")])
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise PolicyInvalid(source, [FieldIssue("", _yaml_error_message(err))]) from None
    except PolicyInvalid as err:
        raise PolicyInvalid(source, err.issues) from None
    finally:
        loader.dispose()
    where = YamlIndex({}, {})
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


def peel(tp: Any) -> tuple[Any, list[Any]]:
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


def tag_of(member: Any) -> str | None:
    tp, meta = peel(member)
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


def _resolve(root: type[BaseModel], loc: tuple[Any, ...]) -> _Spot:
    """Walk the models along a pydantic `loc`, dropping union tags (e.g. 'max_count') from the path."""
    spot = _Spot(path="", annotation=root)
    tp, meta = root, []
    for part in loc:
        tp, more = peel(tp)
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
            chosen = next((m for m in members if tag_of(m) == part), None)
            if chosen is None:
                return _Spot(spot.path)
            if any(get_origin(peel(m)[0]) is list for m in members if m is not chosen):
                spot.union_note = " or a list of weights"
            tp = chosen
        else:
            return _Spot(spot.path)
    tp, more = peel(tp)
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
        return "a finite number" + _bounds(spot.metadata)
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


#: Messages for a missing key, instead of 'required': (model, key) -> message.
MissingHints = Mapping[tuple[type[BaseModel], str], str]

_TYPE_ERRORS = {
    "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing", "finite_number",
    "bool_type", "bool_parsing", "string_type", "literal_error", "list_type", "dict_type",
    "model_type", "model_attributes_type", "greater_than", "greater_than_equal", "less_than",
    "less_than_equal",
}


def _translate(err: dict[str, Any], where: YamlIndex, root: type[BaseModel], hints: MissingHints,
               union_tags: Callable[[], tuple[str, ...]]) -> list[tuple[str, str, str]]:
    """One pydantic error -> `(path, line path, message)` triples (the line path may be deeper)."""
    kind, loc, value, ctx = err["type"], err["loc"], err.get("input"), err.get("ctx") or {}
    spot = _resolve(root, loc)
    written = where.plain.get(spot.path)
    if kind == RULE_ERROR_TYPE:
        paths = [_join_rel(spot.path, rel) for rel, _ in ctx["issues"]]
        return [(p, p, msg) for p, (_, msg) in zip(paths, ctx["issues"])]
    if kind == "missing":
        hint = hints.get((spot.owner, str(loc[-1]))) if spot.owner else None
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
        tags = union_tags()
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


# --- models whose rules span several fields: RuleModel (engine.policy, re-exported here) ---------

Issue = tuple[str, str]  # (path relative to the model, '' = the model itself; message)


# --- the whole path ------------------------------------------------------------------------------

#: Makes the exception for `(source, issues, the YAML data or None)`: a PolicyInvalid or a subclass.
ErrorFactory = Callable[[str, list[FieldIssue], Any], PolicyInvalid]


def _policy_invalid(source: str, issues: list[FieldIssue], _data: Any) -> PolicyInvalid:
    return PolicyInvalid(source, issues)


def _no_tags() -> tuple[str, ...]:
    return ()


def located(found: list[tuple[str, str, str]], lines: Mapping[str, int]) -> list[FieldIssue]:
    """`(path, line path, message)` triples -> issues ending ' (line N)', in line order, each once."""
    unique = sorted(dict.fromkeys(found), key=lambda f: line_of(f[1], lines) or 0)
    out = []
    for path, line_path, msg in unique:
        line = line_of(line_path, lines)
        out.append(FieldIssue(path, f"{msg} (line {line})" if line else msg))
    return out


def parse_yaml_located(
    model_cls: type[ModelT],
    text: str,
    source: str,
    *,
    noun: str,
    required_keys: str,
    prepare: Callable[[dict[str, Any], YamlIndex], None] | None = None,
    partial_checks: Callable[[dict[str, Any]], list[tuple[str, str]]] | None = None,
    missing_hints: MissingHints | None = None,
    union_tags: Callable[[], tuple[str, ...]] = _no_tags,
    error: ErrorFactory = _policy_invalid,
) -> tuple[ModelT, YamlIndex]:
    """`parse_yaml_model`, returning also where each path is in the text (for checks across files).

    `noun`: what the document is, in messages ('a policy'); `required_keys`: the keys an empty
    document lacks ('name, version, slate_size and objective'); `prepare(data, index)`: adjusts
    the plain data before validation (e.g. keeps a version as written); `partial_checks(data)`:
    `(path, message)` checks across fields run on the valid parts when the model as a whole
    failed (unless its own root-level rules already reported); `missing_hints`: messages for a
    missing key instead of 'required'; `union_tags()`: the tags of the tagged union a bad 'type'
    key names; `error(source, issues, data)`: the exception raised (default `PolicyInvalid`).
    """
    try:
        data, where, issues = load_yaml(text, source, noun)
    except PolicyInvalid as err:
        raise error(err.source, err.issues, None) from None
    found: list[tuple[str, str, str]] = [(i.path, i.path, i.message) for i in issues]
    if data is None:
        raise error(source, [FieldIssue("", f"the document is empty; {noun} needs at least {required_keys}")], None)
    if not isinstance(data, dict):
        raise error(source, [FieldIssue("", f"the document must be a mapping of keys ({required_keys}, "
                                            f"...), got {_show(data)} (line {where.lines.get('', 1)})")], data)
    if prepare is not None:
        prepare(data, where)
    model: ModelT | None = None
    try:
        model = model_cls.model_validate(data)
    except ValidationError as err:
        for e in err.errors(include_url=False):
            found += _translate(e, where, model_cls, missing_hints or {}, union_tags)
        # Checks across fields ran only if every field validated; else run them on the valid parts.
        if partial_checks is not None and not any(e["type"] == RULE_ERROR_TYPE and e["loc"] == ()
                                                  for e in err.errors()):
            found += [(p, p, m) for p, m in partial_checks(data)]
    if not found and model is not None:
        return model, where
    raise error(source, located(found, where.lines), data)


def parse_yaml_model(model_cls: type[ModelT], text: str, source: str, **options: Any) -> ModelT:
    """Parse and validate one YAML document into `model_cls`; raise `PolicyInvalid` (or what
    `error` makes) listing every issue found, each with its path and line. Options: see
    `parse_yaml_located`."""
    return parse_yaml_located(model_cls, text, source, **options)[0]


def json_schema(model_cls: type[BaseModel], schema_id: str, title: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a YAML language's root model, for editors checking
    files as people type: `$schema`, `$id`, `title` and the model's description first."""
    schema = model_cls.model_json_schema(by_alias=True)
    head = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id,
        "title": title,
        "description": schema.get("description", ""),
    }
    return head | {k: v for k, v in schema.items() if k not in head}
