"""Reporting: turn a SolveResult into the caller's answer, in the policy's own words."""

from __future__ import annotations

import math

import numpy as np

from engine.compile import Compiled, CompiledPolicy
from engine.policy import Calibration, Coverage, FairPrefix, MaxCount, MinCount, Pin, Window
from engine.types import ConstraintReport, SlateItems
from solvers.evaluate import Evaluation
from solvers.greedy import constraint_ranks
from solvers.codes import RELAX_CONFLICT, RELAX_INFEASIBLE, RELAX_SHORTAGE
from solvers.problem import SolveResult


def _top(c, word: str = "in") -> str:
    return f" {word} the top {c.within_top}" if c.within_top else ""


def _of_what(c) -> str:
    return f"{c.attribute} = {c.value!r}" if c.value is not None else f"one {c.attribute}"


def _fair_prefix(c) -> str:
    groups = ", ".join(repr(v) for v in c.protected)
    return f"every prefix holds enough {c.attribute} = {groups} (FA*IR, p={c.p:g}, alpha={c.alpha:g})"


_DESCRIBE = {
    MaxCount: lambda c: f"at most {c.max} of {_of_what(c)}{_top(c)}",
    MinCount: lambda c: f"at least {c.min} of {c.attribute} = {c.value!r}{_top(c)}",
    Window: lambda c: f"at most {c.max} of {_of_what(c)} in any {c.size} consecutive positions",
    Pin: lambda c: (f"item {c.item!r}" if c.item is not None
                    else f"the best {c.attribute} = {c.value!r}") + f" at position {c.position}",
    Coverage: lambda c: f"as many distinct {c.attribute} values as possible{_top(c)}",
    Calibration: lambda c: f"{c.attribute} distribution{_top(c, 'of')} close to its target",
    FairPrefix: _fair_prefix,
}


def describe(c) -> str:
    """A constraint in a few words, for reasons and conflict reports."""
    words = _DESCRIBE.get(type(c))
    return words(c) if words is not None else type(c).__name__


def row_text(cp: CompiledPolicy, compiled: Compiled, r: int) -> str:
    """`'name' (what the row asks)` for one constraint-table row."""
    row = compiled.rows[r]
    c = cp.policy.constraints[row.owner]
    return f"'{c.name}' ({row.label or describe(c)})"


def conflict_text(cp: CompiledPolicy, compiled: Compiled, core: list[int], gave_way: int | None = None) -> str:
    """A minimal conflict (constraint-table rows) in the policy's words."""
    parts = [row_text(cp, compiled, r) for r in core]
    if len(parts) == 1:
        text = f"{parts[0]} cannot hold for these candidates"
    else:
        text = f"{', '.join(parts[:-1])} conflicts with {parts[-1]} given these candidates"
    if gave_way is not None and len(core) > 1:
        text += f"; '{cp.policy.constraints[compiled.rows[gave_way].owner].name}' has the lowest priority and gave way"
    return text


def unsettled_note(why: str) -> str:
    """What a conflict relaxation's reason adds when the conflict search asked for by `explain`
    did not settle it (`why`: engine.portfolio.search_conflicts' text): the answer then depends
    on the time the search had, and says so."""
    return f" (whether the rules truly conflict is not settled: {why}; a larger budget_ms may settle it)"


def relax_reason(cp: CompiledPolicy, compiled: Compiled, result: SolveResult, r: int,
                 rank: np.ndarray, conflicts: list[list[int]], unsettled: str = "") -> str:
    """Why row r was relaxed, in the policy's words; `unsettled`: why the conflict search did
    not settle the greedy's conflict relaxations ("" when it did or was not asked for)."""
    head = row_text(cp, compiled, r)
    if r in compiled.reasons and not compiled.problem.active[r]:
        return f"{head} relaxed: {compiled.reasons[r]}"
    for core in conflicts:
        if r in core:
            return f"relaxed: {conflict_text(cp, compiled, core, r)}"
    code = int(result.relax_reason[r])
    pos = int(result.relax_position[r])
    if code == RELAX_SHORTAGE:
        return f"{head} relaxed: ran out of eligible candidates that satisfy it together with the other rules"
    if code == RELAX_INFEASIBLE:
        return f"{head} relaxed: the hard rules cannot all hold for these candidates"
    if code == RELAX_CONFLICT:
        t = compiled.problem.constraints
        stronger = []
        for k in range(t.n):
            name = cp.policy.constraints[compiled.rows[k].owner].name
            if t.hard[k] and not result.relaxed[k] and rank[k] > rank[r] and name not in stronger:
                stronger.append(name)
        others = f" together with {', '.join(repr(s) for s in stronger)}" if stronger else ""
        note = unsettled_note(unsettled) if unsettled else ""
        return f"{head} gave way at position {pos + 1}: no remaining candidate could satisfy it{others}{note}"
    return f"{head} relaxed"


def constraint_reports(cp: CompiledPolicy, compiled: Compiled, result: SolveResult,
                       ev: Evaluation, costs: dict[int, float] | None,
                       conflicts: list[list[int]] = (), unsettled: str = "") -> list[ConstraintReport]:
    """One report per policy rule (a rule expanded into several rows is summed over them);
    `unsettled` as `relax_reason`'s."""
    t = compiled.problem.constraints
    rank = None
    violations, slacks = ev.violation.tolist(), ev.slack.tolist()
    relaxed, penalties = result.relaxed.tolist(), t.penalty.tolist()
    out = []
    for j, (c, rows) in enumerate(zip(cp.policy.constraints, compiled.rule_rows)):
        if len(rows) == 1:  # most rules: one row (the sums below, of one term: 0 + x)
            r = rows[0]
            violation = float(0 + violations[r])
            slack = float(slacks[r])
            relaxed_rows = [r] if relaxed[r] else []
            reason = ""
            if relaxed_rows:
                if rank is None:
                    rank = constraint_ranks(t.priority)
                reason = relax_reason(cp, compiled, result, r, rank, list(conflicts), unsettled)
            elif not c.hard and violation > 0:
                reason = compiled.reasons.get(r, "")
            out.append(ConstraintReport(
                c.name, c.type, bool(c.hard), violation == 0.0, slack, violation,
                0.0 if c.hard else float(0 + penalties[r] * violations[r]), bool(relaxed_rows),
                reason, None if costs is None else costs.get(j)))
            continue
        violation = float(sum(violations[r] for r in rows))
        slack = float(min(slacks[r] for r in rows)) if rows else 0.0
        relaxed_rows = [r for r in rows if relaxed[r]]
        reason = ""
        if relaxed_rows:
            if rank is None:
                rank = constraint_ranks(t.priority)
            reason = relax_reason(cp, compiled, result, relaxed_rows[0], rank, list(conflicts),
                                  unsettled)
        elif not c.hard and violation > 0:
            reason = next((compiled.reasons[r] for r in rows if r in compiled.reasons), "")
        penalty = 0.0 if c.hard else float(sum(penalties[r] * violations[r] for r in rows))
        out.append(ConstraintReport(
            name=c.name, kind=c.type, hard=bool(c.hard), satisfied=violation == 0.0, slack=slack,
            violation=violation, penalty=penalty, relaxed=bool(relaxed_rows), reason=reason,
            cost=None if costs is None else costs.get(j),
        ))
    return out


def slate_items(compiled: Compiled, slate: np.ndarray, item_ids: list[str], scores,
                explain: bool) -> SlateItems:
    """The slate's items as columns (engine.types.SlateItems: SlateItem objects only if read).
    `item_ids`: a sequence; one with `take(rows) -> list[str]` (server.convert's) is read through it."""
    idx = compiled.index[slate]
    util = compiled.problem.utility[slate]
    contributions = None
    if explain:
        contributions = {name: w * scores[name][idx] for name, w in compiled.weights.items()}
        if compiled.boost is not None:
            contributions["exposure_boost"] = np.asarray(compiled.boost[slate], dtype=np.float64)
    take = getattr(item_ids, "take", None)  # the server's id sequences read the slate's ids at once
    ids = take(idx) if take is not None else [item_ids[r] for r in idx.tolist()]
    return SlateItems(ids, idx, util, contributions)


def gap_kind(objective: float, bound: float) -> str:
    """Which gap `gap` reports: "relative" when the bound is > 0 and the objective >= 0,
    "absolute" when no relative gap makes sense (bound <= 0, or objective < 0 < bound: a ratio
    there would read as a meaningless 250 %), "" when the bound is unknown (NaN or infinite)."""
    if not math.isfinite(bound):
        return ""
    return "relative" if bound > 0.0 and objective >= 0.0 else "absolute"


def gap(objective: float, bound: float) -> float | None:
    """How far the objective may be from the optimum: (bound - objective) / bound when
    `gap_kind` is "relative", bound - objective (in objective units) when "absolute", None when
    the bound is unknown. Never negative (bound >= objective up to rounding)."""
    kind = gap_kind(objective, bound)
    if not kind:
        return None
    diff = max(0.0, bound - objective)
    return diff / bound if kind == "relative" else diff
