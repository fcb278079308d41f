"""Compilation: a policy plus a request become a SlateProblem (flat arrays).

Policy-only work (which attributes and scores are needed, constraint kinds, bounds, priorities)
is done once per policy version in `compile_policy` and cached by the engine; `compile_request`
builds only the request-dependent arrays: utility, eligibility, value codes, pins, prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.errors import FieldIssue, InvalidRequest
from engine.policy import AttributeFilter, MaxCount, MinCount, NumericFilter, Pin, Policy, Window
from engine.types import Candidates, RerankRequest
from solvers.problem import (
    ALL_VALUES, MAX_COUNT, MIN_COUNT, NO_MATCH, PIN, RELAX_NONE, RELAX_PIN_INVALID, RELAX_SHORTAGE,
    WINDOW, ConstraintTable, SlateProblem,
)

_KIND = {MaxCount: MAX_COUNT, MinCount: MIN_COUNT, Window: WINDOW, Pin: PIN}


@dataclass(frozen=True)
class CompiledPolicy:
    """The request-independent part of a policy, as arrays."""

    policy: Policy
    attributes: tuple[str, ...]  # rows of SlateProblem.codes, in first-use order
    needs_attribute: dict[str, str]  # attribute -> where the policy uses it (for error messages)
    kind: np.ndarray
    attr: np.ndarray
    bound: np.ndarray
    top: np.ndarray  # 0 = the whole slate
    size: np.ndarray
    hard: np.ndarray
    penalty: np.ndarray
    priority: np.ndarray

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.policy.constraints]


def compile_policy(policy: Policy) -> CompiledPolicy:
    attributes: list[str] = []
    needs: dict[str, str] = {}
    rows = []
    for j, c in enumerate(policy.constraints):
        a = -1
        attr_name = getattr(c, "attribute", None)
        if attr_name is not None:
            if attr_name not in attributes:
                attributes.append(attr_name)
                needs[attr_name] = f"constraints[{j}] '{c.name}'"
            a = attributes.index(attr_name) if not isinstance(c, Pin) else -1
        bound = c.max if isinstance(c, (MaxCount, Window)) else c.min if isinstance(c, MinCount) else 0
        top = getattr(c, "within_top", None) or 0
        rows.append((_KIND[type(c)], a, bound, top, getattr(c, "size", 0), c.hard,
                     c.penalty or 0.0, c.priority))
    for j, f in enumerate(policy.filters):
        if isinstance(f, AttributeFilter):
            needs.setdefault(f.attribute, f"filters[{j}]")

    def col(k, dtype):
        return np.array([r[k] for r in rows], dtype=dtype)

    return CompiledPolicy(policy, tuple(attributes), needs, col(0, np.int64), col(1, np.int64),
                          col(2, np.int64), col(3, np.int64), col(4, np.int64), col(5, np.bool_),
                          col(6, np.float64), col(7, np.int64))


def position_weights(discount, length: int) -> np.ndarray:
    p = np.arange(1, length + 1, dtype=np.float64)
    if discount == "log2":
        return 1.0 / np.log2(1.0 + p)
    if discount == "reciprocal":
        return 1.0 / p
    if discount == "none":
        return np.ones(length, dtype=np.float64)
    return np.array(discount[:length], dtype=np.float64)


@dataclass
class Compiled:
    """A request compiled against a policy."""

    problem: SlateProblem
    index: np.ndarray  # int64[N_eligible]: eligible candidate -> index in the request
    weights: dict[str, float]
    slate_size: int
    reasons: dict[int, str] = field(default_factory=dict)  # constraint row -> why pre-relaxed


def _weights(policy: Policy, req: RerankRequest) -> dict[str, float]:
    scores = req.candidates.scores
    weights = dict(policy.objective.weights)
    issues = []
    for name, w in req.objective_weights.items():
        if name not in scores:
            issues.append(FieldIssue(f"objective_weights['{name}']",
                                     f"no score column {name!r} in candidates.scores (sent: {', '.join(sorted(scores)) or 'none'})"))
        weights[name] = float(w)
    for name in policy.objective.weights:
        if name not in scores and name not in req.objective_weights:
            issues.append(FieldIssue(f"candidates.scores['{name}']",
                                     f"required by policy '{policy.name}' (objective.weights) but not sent"))
    if issues:
        raise InvalidRequest(issues)
    return weights


def _eligible(policy: Policy, c: Candidates) -> np.ndarray:
    mask = np.ones(c.n, dtype=np.bool_)
    for j, f in enumerate(policy.filters):
        if isinstance(f, AttributeFilter):
            attr = c.attributes.get(f.attribute)
            if attr is None:
                raise InvalidRequest(f"candidates.attributes['{f.attribute}']",
                                     f"required by policy '{policy.name}' (filters[{j}]) but not sent")
            listed = f.in_ if f.in_ is not None else f.not_in
            lookup = {v: k for k, v in enumerate(attr.dictionary)}
            hit_codes = np.zeros(len(attr.dictionary) + 1, dtype=np.bool_)
            for v in listed:
                if v in lookup:
                    hit_codes[lookup[v]] = True
            hit = hit_codes[attr.codes]
            mask &= hit if f.in_ is not None else ~hit
        elif isinstance(f, NumericFilter):
            x = c.numeric.get(f.numeric)
            if x is None:
                raise InvalidRequest(f"candidates.numeric['{f.numeric}']",
                                     f"required by policy '{policy.name}' (filters[{j}]) but not sent")
            if f.min is not None:
                mask &= x >= f.min
            if f.max is not None:
                mask &= x <= f.max
    return mask


def compile_request(cp: CompiledPolicy, req: RerankRequest) -> Compiled:
    policy = cp.policy
    cands = req.candidates
    weights = _weights(policy, req)

    missing = [a for a in cp.attributes if a not in cands.attributes]
    if missing:
        raise InvalidRequest([FieldIssue(f"candidates.attributes['{a}']",
                                         f"required by policy '{policy.name}' ({cp.needs_attribute[a]}) but not sent")
                              for a in missing])

    # utility over every candidate (pins by attribute need it before filtering)
    utility_all = np.zeros(cands.n, dtype=np.float64)
    for name, w in weights.items():
        if w != 0.0:
            utility_all += w * cands.scores[name]
    mask = _eligible(policy, cands) if policy.filters else None
    index = np.flatnonzero(mask) if mask is not None else np.arange(cands.n, dtype=np.int64)
    utility = np.ascontiguousarray(utility_all[index])
    n = index.shape[0]

    K = req.slate_size or policy.slate_size
    L = min(K, n)
    discount = policy.objective.position_discount
    if isinstance(discount, list) and len(discount) < K:
        raise InvalidRequest("slate_size", f"policy '{policy.name}' gives {len(discount)} position "
                                           f"weights (objective.position_discount), so at most {len(discount)}, got {K}")
    pw = position_weights(discount, L)

    A = len(cp.attributes)
    codes = np.empty((A, n), dtype=np.int64)
    n_values = np.empty(A, dtype=np.int64)
    lookups = []
    for a, name in enumerate(cp.attributes):
        attr = cands.attributes[name]
        codes[a] = attr.codes[index]
        n_values[a] = max(len(attr.dictionary), 1)
        lookups.append({v: k for k, v in enumerate(attr.dictionary)})

    C = len(policy.constraints)
    value = np.full(C, -1, dtype=np.int64)
    top = np.where(cp.top > 0, np.minimum(cp.top, L), L).astype(np.int64)
    item = np.full(C, -1, dtype=np.int64)
    position = np.full(C, -1, dtype=np.int64)
    active = np.ones(C, dtype=np.bool_)
    pre_reason = np.zeros(C, dtype=np.int64)
    reasons: dict[int, str] = {}

    def pre_relax(j: int, code: int, why: str) -> None:
        if cp.hard[j]:
            active[j] = False
            pre_reason[j] = code
        reasons[j] = why

    pins: list[int] = []
    for j, c in enumerate(policy.constraints):
        if isinstance(c, Pin):
            pins.append(j)
        elif c.value is not None:
            value[j] = lookups[cp.attr[j]].get(c.value, NO_MATCH)
        else:
            value[j] = ALL_VALUES

    for j, c in enumerate(policy.constraints):
        if isinstance(c, MinCount):
            have = int(np.count_nonzero(codes[cp.attr[j]] == value[j])) if value[j] >= 0 else 0
            prefix = int(top[j])
            if have < c.min:
                pre_relax(j, RELAX_SHORTAGE, f"only {have} eligible candidate{'s' if have != 1 else ''} "
                                             f"{'has' if have == 1 else 'have'} {c.attribute} = {c.value!r}; {c.min} required")
            elif prefix < c.min:
                pre_relax(j, RELAX_SHORTAGE, f"the slate has only {prefix} position{'s' if prefix != 1 else ''} "
                                             f"for the {c.min} items required")

    _resolve_pins(policy, cp, cands, index, utility, codes, lookups, L, pins, item, position,
                  pre_relax)

    table = ConstraintTable(cp.kind, cp.attr, value, cp.bound, top, cp.size, cp.hard, cp.penalty,
                            cp.priority, item, position)
    problem = SlateProblem(utility, pw, codes, n_values, table, active, pre_reason)
    return Compiled(problem, index, weights, K, reasons)


def _resolve_pins(policy, cp, cands, index, utility, codes, lookups, L, pins, item, position,
                  pre_relax) -> None:
    """Pins by item id or by attribute value -> eligible candidate indices; clashes relaxed by rank."""
    if not pins:
        return
    from solvers.greedy import constraint_ranks

    rank = constraint_ranks(cp.priority)
    taken_pos: dict[int, int] = {}
    taken_item: dict[int, int] = {}
    # most important pins choose first
    for j in sorted(pins, key=lambda j: -rank[j]):
        c: Pin = policy.constraints[j]
        position[j] = c.position - 1
        if c.item is not None:
            try:
                r = cands.item_ids.index(c.item)
            except ValueError:
                pre_relax(j, RELAX_PIN_INVALID, f"item {c.item!r} is not among the candidates")
                continue
            k = int(np.searchsorted(index, r))  # index is sorted: position of r if eligible
            if k >= index.shape[0] or index[k] != r:
                pre_relax(j, RELAX_PIN_INVALID, f"item {c.item!r} was removed by the policy's filters")
                continue
        else:
            name = c.attribute
            if name not in lookups and name not in cands.attributes:
                pre_relax(j, RELAX_PIN_INVALID, f"candidates carry no attribute {name!r}")
                continue
            attr = cands.attributes[name]
            code = {v: q for q, v in enumerate(attr.dictionary)}.get(c.value, NO_MATCH)
            match = attr.codes[index] == code
            if cp.hard[j]:
                for other in taken_item:
                    match[other] = False
            if not match.any():
                pre_relax(j, RELAX_PIN_INVALID, f"no eligible candidate has {name} = {c.value!r}")
                continue
            cand = np.flatnonzero(match)
            k = int(cand[np.argmax(utility[cand])])  # argmax: first (lowest index) among ties
        if c.position > L:
            item[j] = k
            pre_relax(j, RELAX_PIN_INVALID, f"position {c.position} is beyond the slate ({L} items)")
            continue
        item[j] = k
        if not cp.hard[j]:
            continue
        if position[j] in taken_pos:
            pre_relax(j, RELAX_PIN_INVALID,
                      f"position {c.position} is already pinned by '{policy.constraints[taken_pos[position[j]]].name}'")
            continue
        if k in taken_item:
            pre_relax(j, RELAX_PIN_INVALID,
                      f"the same item is already pinned by '{policy.constraints[taken_item[k]].name}'")
            continue
        taken_pos[int(position[j])] = j
        taken_item[k] = j
