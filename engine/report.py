"""Reporting: turn a SolveResult into the caller's answer, in the policy's own words."""

from __future__ import annotations

import math

import numpy as np

from engine.compile import Compiled, CompiledPolicy
from engine.policy import MaxCount, MinCount, Pin, Window
from engine.types import ConstraintReport, SlateItem
from solvers.evaluate import Evaluation
from solvers.problem import KIND_NAMES, RELAX_CONFLICT, RELAX_INFEASIBLE, RELAX_SHORTAGE, SolveResult


def describe(c) -> str:
    """A constraint in a few words, for reasons and conflict reports."""
    if isinstance(c, MaxCount):
        what = f"{c.attribute} = {c.value!r}" if c.value is not None else f"one {c.attribute}"
        where = f" in the top {c.within_top}" if c.within_top else ""
        return f"at most {c.max} of {what}{where}"
    if isinstance(c, MinCount):
        where = f" in the top {c.within_top}" if c.within_top else ""
        return f"at least {c.min} of {c.attribute} = {c.value!r}{where}"
    if isinstance(c, Window):
        what = f"{c.attribute} = {c.value!r}" if c.value is not None else f"one {c.attribute}"
        return f"at most {c.max} of {what} in any {c.size} consecutive positions"
    if isinstance(c, Pin):
        target = f"item {c.item!r}" if c.item is not None else f"the best {c.attribute} = {c.value!r}"
        return f"{target} at position {c.position}"
    return type(c).__name__


def conflict_text(cp: CompiledPolicy, core: list[int], gave_way: int | None = None) -> str:
    """A minimal conflict in the policy's words."""
    rules = cp.policy.constraints
    parts = [f"'{rules[k].name}' ({describe(rules[k])})" for k in core]
    if len(parts) == 1:
        text = f"{parts[0]} cannot hold for these candidates"
    else:
        text = f"{', '.join(parts[:-1])} conflicts with {parts[-1]} given these candidates"
    if gave_way is not None and len(core) > 1:
        text += f"; '{rules[gave_way].name}' has the lowest priority and gave way"
    return text


def relax_reason(cp: CompiledPolicy, compiled: Compiled, result: SolveResult, j: int,
                 rank: np.ndarray, conflicts: list[list[int]]) -> str:
    c = cp.policy.constraints[j]
    code = int(result.relax_reason[j])
    if j in compiled.reasons and not compiled.problem.active[j]:
        return f"'{c.name}' ({describe(c)}) relaxed: {compiled.reasons[j]}"
    for core in conflicts:
        if j in core:
            return f"relaxed: {conflict_text(cp, core, j)}"
    pos = int(result.relax_position[j])
    if code == RELAX_SHORTAGE:
        return (f"'{c.name}' ({describe(c)}) relaxed: ran out of eligible candidates that satisfy it"
                f" together with the other rules")
    if code == RELAX_INFEASIBLE:
        return f"'{c.name}' ({describe(c)}) relaxed: the hard rules cannot all hold for these candidates"
    if code == RELAX_CONFLICT:
        t = compiled.problem.constraints
        stronger = [cp.policy.constraints[k].name for k in range(t.n)
                    if t.hard[k] and not result.relaxed[k] and rank[k] > rank[j]]
        others = f" together with {', '.join(repr(s) for s in stronger)}" if stronger else ""
        return (f"'{c.name}' ({describe(c)}) gave way at position {pos + 1}: no remaining candidate "
                f"could satisfy it{others}")
    return f"'{c.name}' ({describe(c)}) relaxed"


def constraint_reports(cp: CompiledPolicy, compiled: Compiled, result: SolveResult,
                       ev: Evaluation, costs: dict[int, float] | None,
                       conflicts: list[list[int]] = ()) -> list[ConstraintReport]:
    from solvers.greedy import constraint_ranks

    t = compiled.problem.constraints
    rank = constraint_ranks(t.priority)
    out = []
    for j, c in enumerate(cp.policy.constraints):
        relaxed = bool(result.relaxed[j])
        violation = float(ev.violation[j])
        hard = bool(t.hard[j])
        reason = relax_reason(cp, compiled, result, j, rank, list(conflicts)) if relaxed else ""
        if not relaxed and not hard and violation > 0 and j in compiled.reasons:
            reason = compiled.reasons[j]
        out.append(ConstraintReport(
            name=c.name, kind=KIND_NAMES[int(t.kind[j])], hard=hard, satisfied=violation == 0.0,
            slack=float(ev.slack[j]), violation=violation,
            penalty=0.0 if hard else float(t.penalty[j]) * violation, relaxed=relaxed,
            reason=reason, cost=None if costs is None else costs.get(j),
        ))
    return out


def slate_items(compiled: Compiled, slate: np.ndarray, item_ids: list[str], scores,
                explain: bool) -> list[SlateItem]:
    idx = compiled.index[slate]
    util = compiled.problem.utility[slate]
    items = []
    for p, (r, u) in enumerate(zip(idx.tolist(), util.tolist())):
        contrib = {}
        if explain:
            contrib = {name: w * float(scores[name][r]) for name, w in compiled.weights.items()}
        items.append(SlateItem(item_ids[r], r, p + 1, u, contrib))
    return items


def gap(objective: float, bound: float) -> float | None:
    if math.isnan(bound):
        return None
    return max(0.0, bound - objective) / max(abs(bound), 1e-12)
