"""Request validation: every bad input becomes an InvalidRequest naming the field (proto paths)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine import _request_kernels as _rk
from engine.errors import FieldIssue, InvalidRequest
from engine.types import Candidates, IdCheck, RerankRequest


@dataclass(frozen=True)
class Limits:
    max_candidates: int = 10_000
    max_slate_size: int = 1_000
    max_columns: int = 256  # per map (scores, attributes, numeric)
    max_budget_ms: float = 60_000.0


def _column_issues(kind: str, name: str, values: np.ndarray, n: int, finite: bool) -> list[FieldIssue]:
    path = f"candidates.{kind}['{name}'].values"
    if values.ndim != 1 or values.shape[0] != n:
        got = values.shape[0] if values.ndim == 1 else f"shape {values.shape}"
        return [FieldIssue(path, f"expected {n} values (one per item_id), got {got}")]
    if finite:
        bad = ~np.isfinite(values)
        if bad.any():
            j = int(np.argmax(bad))
            return [FieldIssue(f"{path}[{j}]", f"must be a finite number, got {values[j]}"
                               + (f" ({int(bad.sum())} non-finite values in this column)" if bad.sum() > 1 else ""))]
    return []


def check_item_ids(ids) -> IdCheck:
    """The first empty id and the first repeated id (with its original) of a list of ids."""
    duplicate = None
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for j, item in enumerate(ids):
            if item in seen:
                duplicate = (j, seen[item])
                break
            seen[item] = j
    return IdCheck(ids.index("") if "" in ids else -1, duplicate)


def validate_candidates(c: Candidates, limits: Limits) -> None:
    """Structural checks of the candidate columns; raises InvalidRequest with every issue found."""
    issues: list[FieldIssue] = []
    n = c.n
    if n == 0:
        raise InvalidRequest("candidates.item_ids", "must not be empty: send at least one candidate")
    if n > limits.max_candidates:
        raise InvalidRequest(
            "candidates.item_ids", f"at most {limits.max_candidates} candidates per request, got {n}"
        )
    check = c.id_check if c.id_check is not None else check_item_ids(c.item_ids)
    if check.duplicate is not None:
        j, first = check.duplicate
        issues.append(FieldIssue(f"candidates.item_ids[{j}]",
                                 f"duplicate item id {c.item_ids[j]!r} (first at index {first})"))
    if check.first_empty >= 0:
        issues.append(FieldIssue(f"candidates.item_ids[{check.first_empty}]", "must be a non-empty string"))
    for kind, columns in (("scores", c.scores), ("numeric", c.numeric)):
        if len(columns) > limits.max_columns:
            issues.append(FieldIssue(f"candidates.{kind}", f"at most {limits.max_columns} columns, got {len(columns)}"))
        for name, values in columns.items():
            # the common case in one pass (engine._request_kernels), else the full check
            if (values.ndim == 1 and values.shape[0] == n and values.dtype == np.float64
                    and values.flags.c_contiguous and _rk.first_non_finite(values) < 0):
                continue
            issues += _column_issues(kind, name, values, n, finite=True)
    if len(c.attributes) > limits.max_columns:
        issues.append(FieldIssue("candidates.attributes", f"at most {limits.max_columns} columns, got {len(c.attributes)}"))
    for name, attr in c.attributes.items():
        if attr.codes.shape[0] != n:
            issues.append(FieldIssue(f"candidates.attributes['{name}']",
                                     f"expected {n} values (one per item_id), got {attr.codes.shape[0]}"))
    if c.embeddings is not None and c.embeddings.shape[0] != n:
        issues.append(FieldIssue("candidates.embeddings.values",
                                 f"expected {n} rows (one per item_id), got {c.embeddings.shape[0]}"))
    elif c.embeddings is not None and not np.isfinite(c.embeddings).all():
        issues.append(FieldIssue("candidates.embeddings.values", "must be finite numbers"))
    if issues:
        raise InvalidRequest(issues)


def validate_request_scalars(req: RerankRequest, limits: Limits) -> None:
    issues: list[FieldIssue] = []
    if not req.policy:
        issues.append(FieldIssue("policy", "required: the name of a loaded policy"))
    if req.slate_size < 0 or req.slate_size > limits.max_slate_size:
        issues.append(FieldIssue("slate_size",
                                 f"must be between 1 and {limits.max_slate_size} (0 = the policy's), got {req.slate_size}"))
    if not math.isfinite(req.budget_ms) or req.budget_ms < 0 or req.budget_ms > limits.max_budget_ms:
        issues.append(FieldIssue("budget_ms",
                                 f"must be between 0 and {limits.max_budget_ms:g} (0 = the policy's), got {req.budget_ms}"))
    for name, w in req.objective_weights.items():
        if not math.isfinite(w):
            issues.append(FieldIssue(f"objective_weights['{name}']", f"must be a finite number, got {w}"))
    for rule, shares in req.targets.items():
        # each share finite and >= 0 is checked where the rule is known (compile); the sum must not
        # overflow either, or normalising would turn every share into 0
        total = sum(s for s in shares.values() if math.isfinite(s) and s > 0)
        if not math.isfinite(total):
            issues.append(FieldIssue(f"targets['{rule}']",
                                     f"shares must sum to a finite number (they are normalised to sum to 1), got {total}"))
    if issues:
        raise InvalidRequest(issues)


def work_units(policy, n: int, slate_size: int = 0, explain: bool = False, dim: int = 0) -> int:
    """An estimate of the solving work a request asks for, for admission control: candidates x
    slate positions, times the greedy runs (`explain` runs one more per rule), times a diversity
    factor (each pick compares with the items above it: slate length x embedding dimension / 2048,
    at least 1). `slate_size` 0 = the policy's. On the 2-core machine one unit costs 30-100 ns of
    greedy time (benchmarks/bench_admission.py): a normal N=1000, K=50 request is 5e4 units;
    N=10,000, K=1,000 with explain is 4e7 (about 1.5 s), and with DPP over d=64 embeddings and no
    explain 3e8 (about 21 s). The server counts a request in exact or auto mode twice (the exact
    model's build time and memory are not bounded by the budget: server.servicer._exact_work)."""
    k = slate_size or policy.slate_size
    L = max(min(k, n), 1)
    runs = 1 + (len(policy.constraints) if explain else 0)
    factor = max(1.0, L * max(dim, 1) / 2048.0) if policy.diversity is not None else 1.0
    return int(max(n, 0) * L * runs * factor)
