"""Check a re-ranking answer from the response alone (plus the request and the policy).

Independent of the engine's arrays: it re-reads attributes by item id and re-derives every rule
from the policy text, so a bug in compilation or in the solver's own report cannot hide.
"""

from __future__ import annotations

from engine.policy import (
    AttributeFilter, Calibration, Coverage, FairPrefix, MaxCount, MinCount, NumericFilter, Pin,
    Policy, Window,
)
from engine.types import Candidates, RerankResult


def eligible_rows(policy: Policy, c: Candidates) -> list[int]:
    rows = []
    for r in range(c.n):
        ok = True
        for f in policy.filters:
            if isinstance(f, AttributeFilter):
                v = c.attributes[f.attribute].dictionary[c.attributes[f.attribute].codes[r]]
                ok &= (v in f.in_) if f.in_ is not None else (v not in f.not_in)
            elif isinstance(f, NumericFilter):
                x = c.numeric[f.numeric][r]
                ok &= (f.min is None or x >= f.min) and (f.max is None or x <= f.max)
        if ok:
            rows.append(r)
    return rows


def check_answer(policy: Policy, c: Candidates, result: RerankResult, slate_size: int = 0) -> None:
    K = slate_size or policy.slate_size
    rows = eligible_rows(policy, c)
    ids = [it.item_id for it in result.items]
    assert len(ids) == len(set(ids)), "duplicate items in the slate"
    assert len(ids) == min(K, len(rows)), f"slate length {len(ids)}, expected {min(K, len(rows))}"
    assert result.eligible == len(rows)
    assert [it.position for it in result.items] == list(range(1, len(ids) + 1))
    eligible = set(rows)
    for it in result.items:
        assert c.item_ids[it.index] == it.item_id
        assert it.index in eligible, f"{it.item_id} was filtered out but is in the slate"
    reports = {r.name: r for r in result.constraints}
    assert list(reports) == [k.name for k in policy.constraints]

    def value(attr: str, row: int) -> str:
        a = c.attributes[attr]
        return a.dictionary[a.codes[row]]

    L = len(ids)
    for rule in policy.constraints:
        rep = reports[rule.name]
        if isinstance(rule, (Coverage, Calibration)):
            assert not rep.relaxed and (rep.satisfied == (rep.violation == 0))
            continue
        holds = _holds(rule, [it.index for it in result.items], value, c, L)
        if rule.hard:
            assert holds or rep.relaxed, f"hard rule {rule.name!r} broken and not reported relaxed"
            if rep.relaxed:
                assert rep.reason, f"relaxed rule {rule.name!r} has no reason"
        if isinstance(rule, Pin) and rule.item is None:
            # the engine pins one specific best item; another item of the value may sit there
            assert holds or not rep.satisfied, f"pin {rule.name!r} reported satisfied but is not"
        else:
            assert rep.satisfied == holds, f"rule {rule.name!r}: reported satisfied={rep.satisfied}, is {holds}"


def _holds(rule, slate_rows: list[int], value, c: Candidates, L: int) -> bool:
    if isinstance(rule, FairPrefix):
        from solvers.fair import multi_mtables

        tables = multi_mtables(L, [rule.p] * len(rule.protected), rule.alpha, adjust=rule.adjust,
                               correction=rule.correction) if L else []
        for v, table in zip(rule.protected, tables):
            have = 0
            for i, r in enumerate(slate_rows):
                have += value(rule.attribute, r) == v
                if have < table[i]:
                    return False
        return True
    if isinstance(rule, Pin):
        p = rule.position - 1
        if p >= L:
            return False
        row = slate_rows[p]
        if rule.item is not None:
            return c.item_ids[row] == rule.item
        return value(rule.attribute, row) == rule.value
    if isinstance(rule, MinCount):
        top = min(rule.within_top or L, L)
        return sum(value(rule.attribute, r) == rule.value for r in slate_rows[:top]) >= rule.min
    if isinstance(rule, MaxCount):
        top = min(rule.within_top or L, L)
        counts: dict[str, int] = {}
        for r in slate_rows[:top]:
            v = value(rule.attribute, r)
            if rule.value is None or v == rule.value:
                counts[v] = counts.get(v, 0) + 1
        return all(n <= rule.max for n in counts.values())
    if isinstance(rule, Window):
        w = min(rule.size, L)
        for q in range(max(L - w + 1, 1)):
            counts = {}
            for r in slate_rows[q:q + w]:
                v = value(rule.attribute, r)
                if rule.value is None or v == rule.value:
                    counts[v] = counts.get(v, 0) + 1
            if any(n > rule.max for n in counts.values()):
                return False
        return True
    raise AssertionError(f"unknown rule {rule!r}")
