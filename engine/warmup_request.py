"""Synthetic requests that reach every code path of one policy, for `Engine.warmup`.

The request has every column the policy reads (score columns of its objective, the attributes of
its filters, rules and exposure controls, the numeric features of its filters, embeddings when it
has a diversity term), with the values its rules name (pinned items, the values of minimums,
protected groups, target shares) mixed with others, so that caps bind, minimums look ahead,
pins resolve and calibration has a target. Deterministic (seeded).
"""

from __future__ import annotations

import numpy as np

from engine.policy import AttributeFilter, Calibration, NumericFilter, Pin, Policy
from engine.types import Attribute, Candidates, RerankRequest

N_CANDIDATES = 64
EMBEDDING_DIM = 8


def _attribute_values(policy: Policy) -> dict[str, list[str]]:
    """attribute -> the values the policy names for it (in order, no repeats)."""
    values: dict[str, dict[str, None]] = {}

    def add(attr: str | None, *vs) -> None:
        if attr is not None:
            bucket = values.setdefault(attr, {})
            for v in vs:
                if v is not None:
                    bucket[str(v)] = None

    for f in policy.filters:
        if isinstance(f, AttributeFilter):
            add(f.attribute, *(f.in_ or []))  # not_in values are dropped by the filter: skip them
    for c in policy.constraints:
        attr = getattr(c, "attribute", None)
        add(attr, getattr(c, "value", None), *getattr(c, "protected", []) or [])
        if isinstance(c, Calibration) and c.target:
            add(attr, *c.target)
    if policy.exposure is not None:
        for rule in policy.exposure.amortized:
            add(rule.attribute, *(rule.target or {}))
        if policy.exposure.lp is not None:
            add(policy.exposure.lp.attribute)
    return {a: list(v) for a, v in values.items()}


def warmup_request(policy: Policy, solver: str, explain: bool, n: int = N_CANDIDATES) -> RerankRequest:
    rng = np.random.default_rng(0)
    ids = [f"warmup-{j}" for j in range(n)]
    for c in policy.constraints:
        if isinstance(c, Pin) and c.item is not None:
            ids[c.position % n] = c.item
    scores = {name: rng.random(n) for name in policy.objective.weights}
    attributes = {}
    for attr, named in _attribute_values(policy).items():
        pool = named + [f"warmup-{attr}-{k}" for k in range(4)]
        attributes[attr] = Attribute.from_values([pool[j % len(pool)] for j in range(n)])
    numeric = {}
    for f in policy.filters:
        if isinstance(f, NumericFilter):
            lo = f.min if f.min is not None else (f.max - 1.0 if f.max is not None else 0.0)
            hi = f.max if f.max is not None else lo + 1.0
            numeric[f.numeric] = np.linspace(lo, hi, n)
    embeddings = (rng.standard_normal((n, EMBEDDING_DIM)).astype(np.float32)
                  if policy.diversity is not None else None)
    targets = {}
    for c in policy.constraints:
        if isinstance(c, Calibration) and c.target is None:
            named = _attribute_values(policy).get(c.attribute) or [f"warmup-{c.attribute}-0"]
            targets[c.name] = {v: 1.0 for v in named[:3]} or {f"warmup-{c.attribute}-0": 1.0}
    return RerankRequest(policy.name, Candidates(ids, scores, attributes, numeric, embeddings),
                         solver=solver, explain=explain, targets=targets, request_id="warmup",
                         budget_ms=min(policy.solver.budget_ms, 200.0))
