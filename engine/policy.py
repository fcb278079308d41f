"""The policy language, v1: typed, frozen models validated once at load.

A policy is a YAML document; `engine.policy_loader` parses and validates it into a `Policy`.
Field names here ARE the language: changing one is a breaking change for every policy file.

Rules that involve several fields are written as `_rule_issues()` methods returning
`(path, message)` pairs relative to the model, so that a loader can report each one at the field
it is about; `policy_conflicts()` holds the checks across constraints (names, pins, prefixes).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
NAME_RULE = "must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"

#: Error type of multi-field rule violations; `ctx["issues"]` holds `(path, message)` pairs.
RULE_ERROR_TYPE = "policy_rule"

# YAML gives native ints, floats and booleans: reject `max: true` or `hard: 1` instead of coercing.
# Every number in a policy is finite (YAML's .nan / .inf are refused) and within a range its field
# documents (the JSON Schema carries the ranges): a policy number can never make a request fail
# or give a NaN / infinite objective.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]

#: Largest magnitude of an objective weight, a position weight or a calibration share; with scores
#: bounded by what a double holds, the utility can still overflow (requests are checked for that).
MAX_WEIGHT = 1e6
#: Largest soft-rule penalty (per unit of violation).
MAX_PENALTY = 1e6
#: Largest diversity weight and amortized-exposure gain.
MAX_GAIN = 1e3
Bool = Annotated[bool, Strict()]

Issue = tuple[str, str]  # (path relative to the model, '' = the model itself; message)


def _rules_error(issues: Sequence[Issue]) -> PydanticCustomError:
    text = "; ".join(f"{path}: {msg}" if path else msg for path, msg in issues)
    return PydanticCustomError(RULE_ERROR_TYPE, "{message}", {"message": text, "issues": tuple(issues)})


class RuleModel(BaseModel):
    """A frozen model of a YAML language (unknown keys refused) whose rules across fields,
    `_rule_issues()` -> `(relative path, message)` pairs, are reported by
    `engine.yaml_model.parse_yaml_model` each at the field it names (as a RULE_ERROR_TYPE error
    carrying the pairs). The policy's models and the experiment's derive from it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    def _rule_issues(self) -> list[Issue]:
        """Violations of rules spanning several fields of this model (none by default)."""
        return []

    @model_validator(mode="after")
    def _check_rules(self):
        issues = self._rule_issues()
        if issues:
            raise _rules_error(issues)
        return self


_Model = RuleModel


def _discount_kind(v: Any) -> str:
    return "list" if isinstance(v, (list, tuple)) else "named"


class Objective(_Model):
    """What to maximise: a weighted sum of score columns, discounted by position."""

    weights: dict[str, Annotated[Float, Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT)]] = Field(
        min_length=1,
        description="Weight of each score column sent by the caller (e.g. p_click: 1.0).",
    )
    position_discount: Annotated[
        Union[
            Annotated[Literal["log2", "reciprocal", "none"], Tag("named")],
            Annotated[list[Annotated[Float, Field(ge=0, le=MAX_WEIGHT)]], Tag("list")],
        ],
        Discriminator(_discount_kind),
    ] = Field(
        default="log2",
        description="log2: 1/log2(1+p); reciprocal: 1/p; none: 1; or an explicit non-increasing list, "
        "one weight per position (at least slate_size long).",
    )

    def _rule_issues(self) -> list[Issue]:
        v = self.position_discount
        if not isinstance(v, list):
            return []
        if not v:
            return [("position_discount", "must be a non-empty list of weights, one per position")]
        for p, (a, b) in enumerate(zip(v, v[1:]), start=2):
            if b > a:
                return [(
                    "position_discount",
                    f"must be non-increasing (a later position cannot weigh more), "
                    f"got {b:g} at position {p} after {a:g} at position {p - 1}",
                )]
        return []


class AttributeFilter(_Model):
    """Keep only candidates whose attribute is (`in`) / is not (`not_in`) among the values."""

    attribute: str
    in_: list[str] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[str] | None = Field(default=None, min_length=1)

    def _rule_issues(self) -> list[Issue]:
        if self.in_ is not None and self.not_in is not None:
            return [("", "give exactly one of 'in' or 'not_in', got both")]
        if self.in_ is None and self.not_in is None:
            return [("", "give exactly one of 'in' or 'not_in', got neither")]
        return []


class NumericFilter(_Model):
    """Keep only candidates whose numeric feature lies in [min, max]."""

    numeric: str
    min: Float | None = None
    max: Float | None = None

    def _rule_issues(self) -> list[Issue]:
        if self.min is None and self.max is None:
            return [("", "give 'min', 'max' or both")]
        if self.min is not None and self.max is not None and self.min > self.max:
            return [("min", f"must be <= max ({self.max:g}), got {self.min:g}")]
        return []


def _filter_kind(v: Any) -> str:
    numeric = isinstance(v, NumericFilter) or (isinstance(v, dict) and "numeric" in v)
    return "numeric" if numeric else "attribute"


Filter = Annotated[
    Union[Annotated[AttributeFilter, Tag("attribute")], Annotated[NumericFilter, Tag("numeric")]],
    Discriminator(_filter_kind),
]


class _Constraint(_Model):
    name: str = Field(pattern=NAME_PATTERN, description="Unique name; used in reports.")
    hard: Bool = Field(default=True, description="Hard rules must hold (or are reported relaxed).")
    penalty: Float | None = Field(
        default=None, gt=0, le=MAX_PENALTY,
        description="Soft rules only: objective cost per unit of violation (at most 1e6)."
    )
    priority: Int = Field(
        default=0,
        description="When hard rules conflict, the one with the LOWEST priority gives way first.",
    )

    def _rule_issues(self) -> list[Issue]:
        if not self.hard and self.penalty is None:
            return [("penalty", "required when hard is false (a number > 0: the cost of each unit of violation)")]
        if self.hard and self.penalty is not None:
            return [("penalty", "only soft rules have a penalty; set hard: false, or remove penalty")]
        return []


class MaxCount(_Constraint):
    """At most `max` items per value of `attribute` (or of the one `value`), in the top `within_top`."""

    type: Literal["max_count"]
    attribute: str
    value: str | None = None
    max: Int = Field(ge=0, description="0 only with a `value` (no item of that value).")
    within_top: Int | None = Field(default=None, ge=1)

    def _rule_issues(self) -> list[Issue]:
        issues = super()._rule_issues()
        if self.max == 0 and self.value is None:
            where = f"the top {self.within_top}" if self.within_top else "the slate"
            issues.append(("max", f"0 without a `value` can never hold: every candidate has some "
                                  f"{self.attribute}, so no item could be in {where}; give a `value` "
                                  f"(at most 0 of that one), or use a filter"))
        return issues


class MinCount(_Constraint):
    """At least `min` items with `attribute == value`, in the top `within_top` (default: the slate)."""

    type: Literal["min_count"]
    attribute: str
    value: str
    min: Int = Field(ge=1)
    within_top: Int | None = Field(default=None, ge=1)

    def _rule_issues(self) -> list[Issue]:
        issues = super()._rule_issues()
        if self.within_top is not None and self.min > self.within_top:
            issues.append(
                ("min", f"must be <= within_top ({self.within_top}), got {self.min}: the rule can never hold")
            )
        return issues


class Window(_Constraint):
    """At most `max` items sharing a value of `attribute` in any `size` consecutive positions."""

    type: Literal["window"]
    attribute: str
    value: str | None = None
    size: Int = Field(ge=2)
    max: Int = Field(ge=1)

    def _rule_issues(self) -> list[Issue]:
        issues = super()._rule_issues()
        if self.max >= self.size:
            issues.append(("max", f"must be < size ({self.size}), got {self.max}: otherwise the rule never binds"))
        return issues


class Pin(_Constraint):
    """Put item `item` (or the best item with `attribute == value`) at 1-based `position`."""

    type: Literal["pin"]
    position: Int = Field(ge=1)
    item: str | None = None
    attribute: str | None = None
    value: str | None = None

    def _rule_issues(self) -> list[Issue]:
        issues = super()._rule_issues()
        by_attr = self.attribute is not None or self.value is not None
        if self.item is not None and by_attr:
            issues.append(("", "give either 'item', or 'attribute' and 'value', not both"))
        elif self.item is None and not by_attr:
            issues.append(("", "give either 'item', or both 'attribute' and 'value'"))
        elif self.item is None and self.value is None:
            issues.append(("value", "required when pinning by 'attribute'"))
        elif self.item is None and self.attribute is None:
            issues.append(("attribute", "required when pinning by 'value'"))
        return issues


class Coverage(_Constraint):
    """Reward each distinct value of `attribute` present in the top `within_top` (soft only):
    the objective pays `penalty` for every value that could have been covered and was not."""

    type: Literal["coverage"]
    attribute: str
    within_top: Int | None = Field(default=None, ge=1)
    hard: Bool = Field(default=False, description="Coverage is always soft.")

    def _rule_issues(self) -> list[Issue]:
        if self.hard:
            return [("hard", "coverage is a soft rule: set hard: false and a penalty (the reward per value)")]
        return super()._rule_issues()


class Calibration(_Constraint):
    """Keep the slate's distribution over `attribute` close to `target` (Steck 2018): the
    objective pays `penalty` times KL(target || slate distribution) (soft only). A request may
    send its own target under `targets['<rule name>']` (e.g. the user's taste profile), which
    replaces the policy's; without a `target` in the policy, every request must send one."""

    type: Literal["calibration"]
    attribute: str
    target: dict[str, Annotated[Float, Field(ge=0, le=MAX_WEIGHT)]] | None = None
    within_top: Int | None = Field(default=None, ge=1)
    hard: Bool = Field(default=False, description="Calibration is always soft.")

    def _rule_issues(self) -> list[Issue]:
        issues = []
        if self.hard:
            issues.append(("hard", "calibration is a soft rule: set hard: false and a penalty (the weight of the KL term)"))
        else:
            issues += super()._rule_issues()
        if self.target is not None and not sum(self.target.values()) > 0:
            issues.append(("target", "must give some value a share > 0"))
        return issues


class FairPrefix(_Constraint):
    """Ranked group fairness (FA*IR, Zehlike et al. 2017): every prefix of the slate holds at
    least the number of items with `attribute` in `protected` that a fair coin with success
    probability `p` would give, at significance `alpha` (adjusted for testing every prefix)."""

    type: Literal["fair_prefix"]
    attribute: str
    protected: list[str] = Field(min_length=1, description="Protected values; one minimum table each.")
    p: Float = Field(gt=0, lt=1, description="Target minimum share of each protected value.")
    alpha: Float = Field(default=0.1, gt=0, lt=1, description="Significance of the fairness test.")
    adjust: Bool = Field(default=True, description="Correct alpha for testing every prefix (the paper's adjustment).")
    correction: Literal["multinomial", "bonferroni"] = Field(
        default="multinomial",
        description="With several protected values: 'multinomial' (default) tests all of them "
        "at one level whose exact multinomial type I error is alpha (Zehlike et al. 2022); "
        "'bonferroni' tests each at alpha / (number of values), which asks for fewer protected "
        "items. One protected value: both are the same.")


Constraint = Annotated[Union[MaxCount, MinCount, Window, Pin, Coverage, Calibration, FairPrefix],
                       Field(discriminator="type")]


class Diversity(_Model):
    """Similarity diversity over the request's embeddings (candidates.embeddings).

    mmr: an item loses `weight` x (its largest cosine similarity to the items above it);
    dpp: an item gains `weight` x log(its residual variance given the items above it), the greedy
    MAP of a determinantal point process (Chen, Zhang & Zhou 2018). Both are scaled by the
    position weight, like the item's utility. `window` > 0 compares only with the last `window`
    items (sliding window)."""

    method: Literal["mmr", "dpp"]
    weight: Float = Field(gt=0, le=MAX_GAIN,
                          description="Strength of the diversity term relative to utility (at most 1000).")
    window: Int = Field(default=0, ge=0, description="0: all items above; w: only the last w.")


class Amortized(_Model):
    """Exposure across requests (FairCo-style controller): groups of `attribute` whose share of
    cumulative exposure is below target get a utility boost proportional to the shortfall."""

    name: str = Field(pattern=NAME_PATTERN)
    attribute: str
    target: dict[str, Annotated[Float, Field(gt=0, lt=1)]] | None = Field(
        default=None, description="Target share of exposure per value; omitted: proportional to merit.")
    gain: Float = Field(default=1.0, gt=0, le=MAX_GAIN,
                        description="Controller gain (boost per unit of shortfall; at most 1000).")


class ExposureLP(_Model):
    """Per-request fairness of exposure (Singh & Joachims 2018) over the top `top_m` candidates:
    an LP over doubly stochastic ranking matrices, sampled by Birkhoff-von Neumann decomposition."""

    name: str = Field(pattern=NAME_PATTERN)
    attribute: str
    top_m: Int = Field(default=20, ge=2, le=100)
    criterion: Literal["demographic_parity", "disparate_treatment"] = "demographic_parity"
    tolerance: Float = Field(default=0.05, ge=0, le=100,
                             description="Largest allowed exposure disparity, in units of mean "
                             "exposure (at most 100).")


class Exposure(_Model):
    amortized: list[Amortized] = Field(default_factory=list)
    lp: ExposureLP | None = None


class Exploration(_Model):
    """A stochastic slate that keeps every hard rule: at each free position the item is drawn
    among the candidates the greedy could place there, instead of taking the best. Seeded by
    (request id, policy digest), so a replayed request gets the same slate; every answer carries
    its propensities (README, "Exploration").

    epsilon: with probability `epsilon` the item is drawn uniformly among the `top_m` feasible
    candidates with the best gains at that position, else the greedy's pick;
    softmax: drawn with probability proportional to exp(gain / temperature) among the feasible
    candidates (the `top_m` best only, when given: a truncated Plackett-Luce, much faster)."""

    scheme: Literal["epsilon", "softmax"]
    epsilon: Float | None = Field(default=None, ge=0, le=1,
                                  description="epsilon scheme: probability of a random slot, in [0, 1].")
    temperature: Float | None = Field(default=None, gt=0, le=1e6,
                                      description="softmax scheme: > 0; small = close to the greedy.")
    top_m: Int | None = Field(default=None, ge=1, le=10_000,
                              description="Draw among the m best feasible candidates of each position "
                                          "(default: epsilon 10, softmax all).")
    marginal_samples: Int = Field(default=0, ge=0, le=100_000,
                                  description="Monte Carlo draws for the item-at-position marginals "
                                              "of each answer (0: not computed; each costs about one "
                                              "slate draw).")

    def _rule_issues(self) -> list[Issue]:
        if self.scheme == "epsilon" and self.epsilon is None:
            return [("epsilon", "required by scheme: epsilon (a probability in [0, 1])")]
        if self.scheme == "softmax" and self.temperature is None:
            return [("temperature", "required by scheme: softmax (a number > 0)")]
        if self.scheme == "epsilon" and self.temperature is not None:
            return [("temperature", "only the softmax scheme has a temperature")]
        if self.scheme == "softmax" and self.epsilon is not None:
            return [("epsilon", "only the epsilon scheme has an epsilon")]
        return []


class SolverSettings(_Model):
    mode: Literal["auto", "greedy", "exact"] = "auto"
    budget_ms: Float = Field(default=10.0, gt=0, le=60_000)
    # How the greedy answer's bound is computed: "lagrangian" (the rules relaxed by multipliers:
    # a tight certificate, up to ~0.2 ms at N=1000, K=20) or "sort" (the best items in the best
    # positions, every rule ignored: free, but the gap it certifies is loose).
    bound: Literal["lagrangian", "sort"] = "lagrangian"


class Policy(_Model):
    """A re-ranking policy: objective, filters, constraints and solver settings."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(min_length=1, description="Free text; reported with every answer.")
    description: str = ""
    slate_size: Int = Field(ge=1, le=1000)
    objective: Objective
    filters: list[Filter] = Field(default_factory=list)
    constraints: list[Constraint] = Field(default_factory=list)
    diversity: Diversity | None = None
    exposure: Exposure | None = None
    exploration: Exploration | None = None
    solver: SolverSettings = Field(default_factory=SolverSettings)

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    def _rule_issues(self) -> list[Issue]:
        return policy_conflicts(self.slate_size, self.objective, list(enumerate(self.constraints)))


# --- checks across constraints -------------------------------------------------------------------


def _ref(i: int, c: _Constraint) -> str:
    return f"{c.name!r} (constraints[{i}])"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def policy_conflicts(
    slate_size: int | None,
    objective: Objective | None,
    constraints: Sequence[tuple[int, MaxCount | MinCount | Window | Pin]],
    names: Sequence[tuple[int, str]] | None = None,
) -> list[Issue]:
    """Rules that are valid one by one but not together, as `(path, message)` pairs.

    `constraints` are `(index in the policy, constraint)` pairs, so a loader can pass only the
    constraints that validated; `slate_size` / `objective` may be None when they did not.
    `names` (default: those of `constraints`) are checked for duplicates.
    """
    issues: list[Issue] = []
    first_by_name: dict[str, int] = {}
    for i, name in names if names is not None else [(i, c.name) for i, c in constraints]:
        if name in first_by_name:
            issues.append((f"constraints[{i}].name", f"duplicate constraint name {name!r} "
                           f"(already used by constraints[{first_by_name[name]}])"))
        else:
            first_by_name[name] = i

    if slate_size is not None and objective is not None and isinstance(objective.position_discount, list):
        n = len(objective.position_discount)
        if 0 < n < slate_size:
            issues.append(("objective.position_discount",
                           f"needs at least slate_size ({slate_size}) weights, one per position, got {n}"))

    if slate_size is None:
        return issues
    for i, c in constraints:
        if isinstance(c, Pin) and c.position > slate_size:
            issues.append((f"constraints[{i}].position", f"must be <= slate_size ({slate_size}), got {c.position}"))
        if isinstance(c, (MaxCount, MinCount, Coverage, Calibration)) and c.within_top is not None and c.within_top > slate_size:
            issues.append((f"constraints[{i}].within_top",
                           f"must be <= slate_size ({slate_size}), got {c.within_top}"))
        if isinstance(c, MinCount) and c.within_top is None and c.min > slate_size:
            issues.append((f"constraints[{i}].min",
                           f"must be <= slate_size ({slate_size}), got {c.min}: the rule can never hold"))

    hard = [(i, c) for i, c in constraints if c.hard]
    issues += _pin_clashes([(i, c) for i, c in hard if isinstance(c, Pin)])
    mins = [(i, c) for i, c in hard if isinstance(c, MinCount)]
    issues += _minimums_overflow(mins, slate_size)
    issues += _minimums_over_caps(mins, [(i, c) for i, c in hard if isinstance(c, (MaxCount, Window))], slate_size)
    return issues


def _pin_clashes(pins: list[tuple[int, Pin]]) -> list[Issue]:
    issues: list[Issue] = []
    first_at: dict[int, tuple[int, Pin]] = {}
    for i, p in pins:
        if p.position in first_at:
            j, q = first_at[p.position]
            issues.append((f"constraints[{i}].position",
                           f"can never hold together: hard pins {_ref(j, q)} and {_ref(i, p)} "
                           f"both take position {p.position}"))
        else:
            first_at[p.position] = (i, p)
    return issues


def _minimums_overflow(mins: list[tuple[int, MinCount]], slate_size: int) -> list[Issue]:
    """Hard minimums on one attribute need distinct items: within each prefix they must fit."""
    issues: list[Issue] = []
    by_attribute: dict[str, list[tuple[int, MinCount]]] = defaultdict(list)
    for i, c in mins:
        by_attribute[c.attribute].append((i, c))
    for rules in by_attribute.values():
        if len({c.value for _, c in rules}) < 2:
            continue
        for m in sorted({min(c.within_top or slate_size, slate_size) for _, c in rules}):
            binding: dict[str, tuple[int, MinCount]] = {}  # per value, the largest minimum in the prefix
            for i, c in rules:
                if min(c.within_top or slate_size, slate_size) <= m:
                    if c.value not in binding or c.min > binding[c.value][1].min:
                        binding[c.value] = (i, c)
            total = sum(c.min for _, c in binding.values())
            if len(binding) >= 2 and total > m:
                parts = sorted(binding.values(), key=lambda ic: ic[0])
                needs = " and ".join(
                    f"{_ref(i, c)} needs {_plural(c.min, 'item')} with {c.attribute}={c.value} "
                    f"in the top {min(c.within_top or slate_size, slate_size)}"
                    for i, c in parts
                )
                last = parts[-1][0]
                issues.append((f"constraints[{last}].min",
                               f"can never hold together: {needs}; that is {total} items "
                               f"for {_plural(m, 'position')}"))
                break  # one finding per attribute: the smallest prefix that overflows
    return issues


def _minimums_over_caps(
    mins: list[tuple[int, MinCount]], caps: list[tuple[int, MaxCount | Window]], slate_size: int
) -> list[Issue]:
    """A hard minimum that a hard cap on the same attribute value can never let through."""
    issues: list[Issue] = []
    for i, lo in mins:
        top = min(lo.within_top or slate_size, slate_size)
        for j, cap in caps:
            if cap.attribute != lo.attribute or cap.value not in (None, lo.value):
                continue
            scope = f"with {cap.attribute}={cap.value}" if cap.value is not None else f"per {cap.attribute} value"
            if isinstance(cap, MaxCount):
                cap_top = min(cap.within_top or slate_size, slate_size)
                most = cap.max + max(0, top - cap_top)
                rule = f"allows at most {_plural(cap.max, 'item')} {scope} in the top {cap_top}"
            else:
                most = (top // cap.size) * cap.max + min(cap.max, top % cap.size)
                rule = (f"allows at most {_plural(cap.max, 'item')} {scope} in any {cap.size} "
                        f"consecutive positions")
            if lo.min > most:
                issues.append((f"constraints[{i}].min",
                               f"can never hold together: {_ref(i, lo)} needs {_plural(lo.min, 'item')} with "
                               f"{lo.attribute}={lo.value} in the top {top}, but {_ref(j, cap)} {rule}, "
                               f"so at most {most} there"))
    return issues
