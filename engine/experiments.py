"""Experiment files: split the traffic of one policy name across variants, deterministically.

An experiment is a YAML document, validated like a policy (typed, frozen models; every problem
named by file, path inside it and line)::

    name: home_feed_ranking_v2     # unique among experiments
    policy: home_feed              # the policy name callers send: its traffic is split
    layer: home                    # optional; default: the experiment's own name
    layer_buckets: [0, 10000]      # optional; default all: the share of the layer it takes
    salt: hf-2026-12               # optional; default: the name
    unit: user_id                  # user_id (request_id when empty; default) | request_id
    variants:
      - {name: control, policy: home_feed, weight: 50}
      - {name: diverse, policy: home_feed_diverse, weight: 45}
      - {name: holdout, weight: 5, holdout: true}

How a request is assigned (`ExperimentSet.assign`, see `engine.bucketing` for the hash):

1. the experiment splitting the policy name called (at most one per name, over all layers);
2. the unit id: `user_id`, or `request_id` when it is empty (unit: request_id: always
   `request_id`); no id at all: no assignment;
3. the layer bucket `bucket("layer:" + layer, unit)`: outside `layer_buckets`, no assignment
   (the policy called serves). Experiments of one layer take disjoint shares, so a unit is in
   at most one of them; experiments of different layers are independent draws;
4. the variant bucket `bucket(salt, unit)`, and the variant whose ranges hold it: by default
   contiguous ranges in file order (`ranges_from_weights`), or the explicit `buckets` ranges the
   file carries (written by `experiment_with_weights` so that a weight change moves only the
   units that must move).

A holdout variant is served by the experiment's policy (the control) and reported as itself,
with `holdout` set, so that metrics and logs can tell it apart.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Field, ValidationError

from engine import bucketing
from engine.bucketing import BUCKETS, Ranges
from engine.errors import FieldIssue, PolicyInvalid
from engine.policy import NAME_PATTERN, Bool, Float, Int
from engine.yaml_model import Issue, RuleModel, json_schema, located, parse_yaml_located

SCHEMA_ID = "urn:slate-reranker:experiment:v1"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "examples" / "experiments" / "experiment.schema.json"

_REQUIRED_KEYS = "name, policy and variants"
_RANGE_RULE = f"must be [start, end) with 0 <= start < end <= {BUCKETS}"

class ExperimentInvalid(PolicyInvalid):
    """An experiment file failed validation (alone, or with the other experiments / the known
    policies). A `PolicyInvalid`, so that the server maps it the same way; its lines read
    `<file>: experiment 'x', variants[1].weight: must be ..., got ... (line 7)`."""

    def __init__(self, source: str, issues: list[FieldIssue], experiment: str | None = None):
        super().__init__(source, issues)
        self.experiment = experiment  # its name, if the file gives a usable one
        if experiment:
            Exception.__init__(self, "\n".join(f"{source}: experiment {experiment!r}, {i}" for i in issues))


# --- the language ------------------------------------------------------------------------------


def _is_range(v: Sequence[int]) -> bool:
    """Whether `[start, end]` is a range of buckets: 0 <= start < end <= 10,000."""
    return len(v) == 2 and 0 <= v[0] < v[1] <= BUCKETS


def _show_list(v: Sequence[int]) -> str:
    return "[" + ", ".join(str(x) for x in v) + "]"


def _weight_text(w: float) -> str:
    return f"{w:g}"


_PAIR_SCHEMA = {"minItems": 2, "maxItems": 2}
#: A bucket bound: a range is [start, end) with 0 <= start < end <= 10,000.
Bound = Annotated[Int, Field(ge=0, le=BUCKETS)]


class Variant(RuleModel):
    """One arm of an experiment: the policy that serves its share of the units."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique within the experiment; reported with every answer.")
    policy: str | None = Field(
        default=None, pattern=NAME_PATTERN,
        description="The policy (a policy file's name:) serving this variant; default: the experiment's policy.",
    )
    weight: Float = Field(ge=0, le=100, description="Percent of the experiment's units, in steps of 0.01.")
    holdout: Bool = Field(
        default=False,
        description="Served by the experiment's policy (the control), reported as a holdout.",
    )
    buckets: list[Annotated[list[Bound], Field(json_schema_extra=_PAIR_SCHEMA)]] | None = Field(
        default=None,
        description=f"Explicit [start, end) ranges of the variant hash (0 to {BUCKETS}), as a rebalance "
        "wrote them; every variant or none. Default: contiguous ranges in file order.",
    )

    def _rule_issues(self) -> list[Issue]:
        out: list[Issue] = []
        try:
            bucketing.quota(self.weight)
        except ValueError:
            out.append(("weight", f"must be a multiple of 0.01 (a bucket is 0.01 %), got {_weight_text(self.weight)}"))
        for k, r in enumerate(self.buckets or []):
            if not _is_range(r):
                out.append((f"buckets[{k}]", f"{_RANGE_RULE}, got {_show_list(r)}"))
        return out

    def ranges(self) -> Ranges | None:
        """The explicit ranges, if given."""
        return None if self.buckets is None else tuple((r[0], r[1]) for r in self.buckets)


class Experiment(RuleModel):
    """An A/B/n experiment on one policy name."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique among experiments; reported with every answer.")
    description: str = ""
    policy: str = Field(
        pattern=NAME_PATTERN,
        description="The policy name callers send: its traffic is split. Also the control, which serves holdouts.",
    )
    layer: str | None = Field(
        default=None, pattern=NAME_PATTERN,
        description="Experiments of one layer never share a unit. Default: the experiment's own name.",
    )
    layer_buckets: Annotated[list[Bound], Field(json_schema_extra=_PAIR_SCHEMA)] | None = Field(
        default=None,
        description=f"[start, end): the share of the layer's hash (0 to {BUCKETS}) this experiment takes. "
        f"Default: all of it, [0, {BUCKETS}].",
    )
    salt: str | None = Field(
        default=None, pattern=NAME_PATTERN,
        description="Salt of the variant hash (change it to reshuffle units). Default: the name.",
    )
    unit: Literal["user_id", "request_id"] = Field(
        default="user_id",
        description="The id hashed: user_id (request_id when it is empty) or request_id.",
    )
    variants: list[Variant] = Field(min_length=1)

    def _rule_issues(self) -> list[Issue]:
        out = _layer_issues(self.layer_buckets)
        out += variant_list_issues(self.policy, list(enumerate(self.variants)), complete=True)
        return out

    @property
    def layer_name(self) -> str:
        return self.layer or self.name

    @property
    def salt_value(self) -> str:
        return self.salt or self.name

    @property
    def layer_range(self) -> bucketing.Range:
        return (self.layer_buckets[0], self.layer_buckets[1]) if self.layer_buckets else (0, BUCKETS)

    def variant_ranges(self) -> tuple[Ranges, ...]:
        """Each variant's ranges of the variant hash: the explicit ones, or contiguous in file order."""
        if any(v.buckets is not None for v in self.variants):
            return tuple(v.ranges() or () for v in self.variants)
        return bucketing.ranges_from_weights([v.weight for v in self.variants])

    def variant_policy(self, v: Variant) -> str:
        """The policy that serves variant `v`."""
        return v.policy or self.policy


def _layer_issues(layer_buckets: list[int] | None) -> list[Issue]:
    if layer_buckets is not None and not _is_range(layer_buckets):
        return [("layer_buckets", f"{_RANGE_RULE}, got {_show_list(layer_buckets)}")]
    return []


def variant_list_issues(policy: str | None, variants: list[tuple[int, Variant]], complete: bool) -> list[Issue]:
    """Checks across the variants (those that validated, with their index): names unique,
    holdouts served by the control, weights summing to 100 and explicit ranges partitioning the
    buckets in the weights' proportions. `complete`: every variant validated (else the sums are
    not checked)."""
    out: list[Issue] = []
    seen: dict[str, int] = {}
    for i, v in variants:
        if v.name in seen:
            out.append((f"variants[{i}].name", f"variant name {v.name!r} is already used by variants[{seen[v.name]}]"))
        seen.setdefault(v.name, i)
        if v.holdout and policy and v.policy not in (None, policy):
            out.append((f"variants[{i}].policy", f"a holdout is served by the experiment's policy {policy!r} "
                                                 f"(the control), got {v.policy!r}; drop 'policy' or name {policy!r}"))
    if not complete:
        return out
    try:
        quotas = [bucketing.quota(v.weight) for _, v in variants]
    except ValueError:
        return out  # a weight is already reported
    if sum(quotas) != BUCKETS:
        terms = " + ".join(f"{v.name} {_weight_text(v.weight)}" for _, v in variants)
        out.append(("variants", f"the weights must sum to 100, got {sum(quotas) / 100:g} ({terms})"))
        return out
    return out + _explicit_range_issues(variants, quotas)


def _explicit_range_issues(variants: list[tuple[int, Variant]], quotas: list[int]) -> list[Issue]:
    given = [(i, v) for i, v in variants if v.buckets is not None]
    if not given:
        return []
    out: list[Issue] = []
    first = given[0][0]
    for (i, v), q in zip(variants, quotas):
        if v.buckets is None and q:
            out.append((f"variants[{i}]", f"has no 'buckets' while variants[{first}] has: give the ranges of "
                                          "every variant, or of none (then they are contiguous in file order)"))
    if out:
        return out
    by_index = dict(variants)
    owner: dict[int, tuple[int, int]] = {}  # bucket -> (variant, range index) holding it first
    for i, v in variants:
        for k, (start, end) in enumerate(v.ranges() or ()):
            clash = next((owner[b] for b in range(start, end) if b in owner), None)
            if clash is not None:
                j, m = clash
                s2, e2 = by_index[j].buckets[m]
                out.append((f"variants[{i}].buckets[{k}]", f"[{start}, {end}) overlaps [{s2}, {e2}) of "
                                                          f"variants[{j}].buckets[{m}]"))
                continue
            owner.update({b: (i, k) for b in range(start, end)})
    if out:
        return out
    for (i, v), q in zip(variants, quotas):
        n = bucketing.size(v.ranges() or ())
        if n != q:
            out.append((f"variants[{i}].buckets", f"holds {n} buckets but weight {_weight_text(v.weight)} needs {q} "
                                                  f"(a bucket is 0.01 %); or drop 'buckets' from every variant"))
    gaps = bucketing.to_ranges([b for b in range(BUCKETS) if b not in owner])
    if gaps:
        shown = ", ".join(f"[{s}, {e})" for s, e in gaps[:3]) + (", ..." if len(gaps) > 3 else "")
        out.append(("variants", f"buckets {shown} belong to no variant: the ranges must cover [0, {BUCKETS})"))
    return out


def _partial_issues(data: dict[str, Any]) -> list[Issue]:
    """Checks across fields when the experiment as a whole failed: run them on the valid parts."""
    raw = data.get("variants")
    raw = raw if isinstance(raw, list) else []
    valid = []
    for i, v in enumerate(raw):
        try:
            valid.append((i, Variant.model_validate(v)))
        except ValidationError:
            pass
    policy = data.get("policy") if isinstance(data.get("policy"), str) else None
    out = variant_list_issues(policy, valid, complete=len(valid) == len(raw) and bool(raw))
    lb = data.get("layer_buckets")
    if isinstance(lb, list) and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= BUCKETS
                                   for x in lb):
        out = _layer_issues(lb) + out
    return out


# --- reading -----------------------------------------------------------------------------------


def _error(source: str, issues: list[FieldIssue], data: Any) -> ExperimentInvalid:
    name = data.get("name") if isinstance(data, dict) else None
    return ExperimentInvalid(source, issues, name if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) else None)


@dataclass(frozen=True)
class LoadedExperiment:
    """A validated experiment and where it came from (the lines serve checks across files)."""

    experiment: Experiment
    source: str  # the path as given, or '<text>'
    digest: str  # sha256 hex of the text's UTF-8 bytes
    lines: Mapping[str, int]  # YAML path -> line

    @property
    def name(self) -> str:
        return self.experiment.name


def load_experiment_text(text: str, source: str = "<text>") -> LoadedExperiment:
    """Parse and validate one experiment document; raise `ExperimentInvalid` listing every issue."""
    exp, where = parse_yaml_located(Experiment, text, source, noun="an experiment", required_keys=_REQUIRED_KEYS,
                                    partial_checks=_partial_issues, error=_error)
    return LoadedExperiment(exp, source, hashlib.sha256(text.encode("utf-8")).hexdigest(), where.lines)


def parse_experiment_text(text: str, source: str = "<text>") -> Experiment:
    """Parse and validate one experiment document; raise `ExperimentInvalid` listing every issue."""
    return load_experiment_text(text, source).experiment


def load_experiment_file(path: str | os.PathLike[str]) -> LoadedExperiment:
    """Read, parse and validate one experiment file (UTF-8)."""
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ExperimentInvalid(source, [FieldIssue("", f"cannot read the file: {err.strerror or err}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ExperimentInvalid(source, [FieldIssue("", f"the file is not UTF-8 text (byte {err.start})")]) from None
    return load_experiment_text(text, source)


# --- the set of live experiments ---------------------------------------------------------------


class Assignment(NamedTuple):
    """Which experiment and variant serve one request, and why (the buckets)."""

    experiment: str
    variant: str
    policy: str  # the policy that serves it (the control for a holdout)
    bucket: int  # the variant hash's bucket, in [0, 10000)
    layer: str
    layer_bucket: int  # the layer hash's bucket, in [0, 10000)
    holdout: bool
    unit: str  # which id was hashed: 'user_id' or 'request_id'


@dataclass(frozen=True)
class _Split:
    """One experiment ready for `assign`: its salts as bytes, its layer share, bucket -> variant."""

    experiment: str
    layer: str
    by_user: bool  # unit: user_id (falling back to request_id)
    layer_prefix: bytes
    lo: int
    hi: int
    salt_prefix: bytes
    owner: tuple[int, ...]  # bucket -> variant index
    variants: tuple[tuple[str, str, bool], ...]  # (name, serving policy, holdout)


def _prefix(salt: str) -> bytes:
    return (salt + bucketing.SEPARATOR).encode("utf-8")


def _split(exp: Experiment) -> _Split:
    lo, hi = exp.layer_range
    variants = tuple((v.name, exp.variant_policy(v), v.holdout) for v in exp.variants)
    return _Split(exp.name, exp.layer_name, exp.unit == "user_id", _prefix(bucketing.layer_salt(exp.layer_name)),
                  lo, hi, _prefix(exp.salt_value), bucketing.owners(exp.variant_ranges()), variants)


def _as_loaded(e: LoadedExperiment | Experiment) -> LoadedExperiment:
    return e if isinstance(e, LoadedExperiment) else LoadedExperiment(e, "<text>", "", {})


def _unknown(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = f"loaded policies: {', '.join(sorted(known))}" if known else "no policy is loaded"
    return f"no policy named {name!r} ({listed}){hint}"


def _cross_issues(le: LoadedExperiment, earlier: list[LoadedExperiment], known: Collection[str]) -> list[Issue]:
    """What is wrong with `le` given the experiments before it and the policies known."""
    exp, out = le.experiment, []
    for other in earlier:
        o = other.experiment
        where = f"experiment {o.name!r} ({other.source})"
        if o.name == exp.name:
            out.append(("name", f"experiment name {exp.name!r} is already used by {other.source}"))
            continue
        if o.policy == exp.policy:
            out.append(("policy", f"policy {exp.policy!r} is already split by {where}: one experiment per "
                                  "policy name, over all layers"))
        if o.layer_name == exp.layer_name:
            (a, b), (c, d) = exp.layer_range, o.layer_range
            if a < d and c < b:
                path = "layer_buckets" if exp.layer_buckets is not None else ("layer" if exp.layer else "name")
                own = "" if o.layer else " (without 'layer', an experiment has the layer named like it)"
                out.append((path, f"layer {exp.layer_name!r}: [{a}, {b}) overlaps [{c}, {d}) of {where}{own}; "
                                  "the experiments of one layer take disjoint shares of it"))
        if o.salt_value == exp.salt_value:
            out.append(("salt" if exp.salt else "name", f"salt {exp.salt_value!r} is already the salt of {where}: "
                                                        "their variant splits would be the same draw; give another "
                                                        "'salt'"))
    if exp.policy not in known:
        out.append(("policy", _unknown(exp.policy, known)))
    for i, v in enumerate(exp.variants):
        if v.policy is not None and v.policy not in known:
            out.append((f"variants[{i}].policy", _unknown(v.policy, known)))
    return out


def check_experiments(experiments: Iterable[LoadedExperiment | Experiment],
                      known_policies: Collection[str]) -> list[ExperimentInvalid]:
    """Every problem across experiment files, one error per file with problems: unknown policy
    names, two experiments with one name, on one policy name, with one salt, or overlapping in
    one layer. A problem between two files is reported on the later one (in the order given),
    naming the earlier."""
    seen: list[LoadedExperiment] = []
    errors = []
    for le in map(_as_loaded, experiments):
        issues = _cross_issues(le, seen, known_policies)
        if issues:
            found = [(p, p, m) for p, m in issues]
            errors.append(ExperimentInvalid(le.source, located(found, le.lines), le.name))
        seen.append(le)
    return errors


class ExperimentSet:
    """The live experiments, by the policy name they split; `assign` is a dict lookup and two hashes."""

    def __init__(self, experiments: Sequence[LoadedExperiment] = ()) -> None:
        self.experiments: tuple[LoadedExperiment, ...] = tuple(experiments)
        self._by_policy = {le.experiment.policy: _split(le.experiment) for le in self.experiments}

    @classmethod
    def build(cls, experiments: Iterable[LoadedExperiment | Experiment],
              known_policies: Collection[str]) -> ExperimentSet:
        """The set of `experiments`, checked together against `known_policies` (names). Raises the
        first file's `ExperimentInvalid` (`check_experiments` lists every file's)."""
        loaded = [_as_loaded(e) for e in experiments]
        errors = check_experiments(loaded, known_policies)
        if errors:
            raise errors[0]
        return cls(loaded)

    def __len__(self) -> int:
        return len(self.experiments)

    def experiment_for(self, policy_name: str) -> str | None:
        """The experiment splitting `policy_name`, if any."""
        s = self._by_policy.get(policy_name)
        return s.experiment if s is not None else None

    def assign(self, policy_name: str, user_id: str = "", request_id: str = "") -> Assignment | None:
        """The variant serving a call of `policy_name` by this unit; None when no experiment splits
        that name, the unit has no id, or its layer bucket is outside the experiment's share (the
        policy called serves). Pure: same arguments, same answer, in every process."""
        s = self._by_policy.get(policy_name)
        if s is None:
            return None
        if s.by_user and user_id:
            unit, kind = user_id, "user_id"
        elif request_id:
            unit, kind = request_id, "request_id"
        else:
            return None
        raw = unit.encode("utf-8", "surrogatepass")
        lb = int.from_bytes(hashlib.sha256(s.layer_prefix + raw).digest()[:8], "big") % BUCKETS
        if not s.lo <= lb < s.hi:
            return None
        b = int.from_bytes(hashlib.sha256(s.salt_prefix + raw).digest()[:8], "big") % BUCKETS
        name, policy, holdout = s.variants[s.owner[b]]
        return Assignment(s.experiment, name, policy, b, s.layer, lb, holdout, kind)


# --- changing the weights ------------------------------------------------------------------------


def experiment_with_weights(exp: Experiment, new_weights: Mapping[str, float]) -> dict[str, Any]:
    """The experiment with new weights (variant name -> percent, every variant), as a YAML-ready
    mapping whose variants carry explicit `buckets`: `bucketing.rebalance` of the current ranges,
    so that only the units that must change variant do. Keys the file did not set stay unset.
    ValueError for missing or unknown variant names or weights that do not sum to 100."""
    names = [v.name for v in exp.variants]
    if set(new_weights) != set(names):
        missing, extra = sorted(set(names) - set(new_weights)), sorted(set(new_weights) - set(names))
        raise ValueError("give a weight for every variant and no other"
                         + (f"; missing: {', '.join(missing)}" if missing else "")
                         + (f"; unknown: {', '.join(extra)}" if extra else ""))
    weights = [new_weights[n] for n in names]
    ranges = bucketing.rebalance(exp.variant_ranges(), weights)
    out = exp.model_dump(mode="json", exclude_unset=True)
    for v, w, rs in zip(out["variants"], weights, ranges):
        v["weight"] = w
        v["buckets"] = [[start, end] for start, end in rs]
    Experiment.model_validate(out)  # the result is a valid experiment (else a bug here: raise)
    return out


# --- schema --------------------------------------------------------------------------------------


def experiment_json_schema() -> dict[str, Any]:
    """The JSON Schema of experiment files (for editors checking YAML as people type)."""
    return json_schema(Experiment, SCHEMA_ID, "Slate re-ranking experiment (v1)")


def write_experiment_schema(path: str | os.PathLike[str] = SCHEMA_PATH) -> None:
    """Write `experiment_json_schema()` to `path`, pretty-printed with a trailing newline."""
    Path(path).write_text(json.dumps(experiment_json_schema(), indent=2) + "\n", encoding="utf-8")
