"""Random SlateProblems for kernel-vs-twin and property tests (seeded, so failures reproduce)."""

from __future__ import annotations

import numpy as np

from solvers.problem import (
    ALL_VALUES, MAX_COUNT, MIN_COUNT, NO_MATCH, PIN, WINDOW, ConstraintTable, SlateProblem,
)


def random_problem(seed: int, *, n: int | None = None, k: int | None = None,
                   n_rules: int | None = None, ties: bool = False) -> SlateProblem:
    rng = np.random.default_rng(seed)
    n = int(n if n is not None else rng.integers(0, 25))
    k = int(k if k is not None else rng.integers(1, 12))
    L = min(n, k)
    A = int(rng.integers(1, 4))
    n_values = rng.integers(1, 5, size=A).astype(np.int64)
    codes = np.stack([rng.integers(0, n_values[a], size=n) for a in range(A)]).astype(np.int64)
    codes = np.ascontiguousarray(codes.reshape(A, n))
    if ties:
        utility = rng.integers(0, 4, size=n).astype(np.float64)
    else:
        utility = rng.normal(size=n)
    pw = np.sort(rng.uniform(0.0, 1.0, size=L))[::-1].copy()
    if L and rng.random() < 0.3:
        pw = 1.0 / np.log2(np.arange(2, L + 2))

    C = int(n_rules if n_rules is not None else rng.integers(0, 6))
    rows: list[dict] = []
    pin_pos: set[int] = set()
    pin_items: set[int] = set()
    for _ in range(C):
        kind = int(rng.choice([MAX_COUNT, MIN_COUNT, WINDOW, PIN], p=[0.3, 0.3, 0.25, 0.15]))
        a = int(rng.integers(0, A))
        hard = bool(rng.random() < 0.7)
        row = dict(kind=kind, attr=a, value=ALL_VALUES, bound=0, top=max(L, 1), size=0, hard=hard,
                   penalty=0.0 if hard else float(rng.uniform(0.05, 2.0)),
                   priority=int(rng.integers(0, 3)), item=-1, position=-1)
        if kind == MAX_COUNT:
            row["bound"] = int(rng.integers(0, 4))
            row["value"] = int(rng.choice([ALL_VALUES, rng.integers(0, n_values[a])]))
            row["top"] = int(rng.integers(1, max(L, 1) + 1))
        elif kind == MIN_COUNT:
            row["value"] = int(rng.integers(0, n_values[a])) if rng.random() < 0.95 else NO_MATCH
            row["top"] = int(rng.integers(1, max(L, 1) + 1))
            row["bound"] = int(rng.integers(1, row["top"] + 1))
        elif kind == WINDOW:
            row["size"] = int(rng.integers(2, 5))
            row["bound"] = int(rng.integers(1, row["size"]))
            row["value"] = int(rng.choice([ALL_VALUES, rng.integers(0, n_values[a])]))
        else:
            row["attr"] = -1
            if n == 0:
                continue
            row["item"] = int(rng.integers(0, n))
            row["position"] = int(rng.integers(0, max(L, 1)))
            if hard and (row["position"] in pin_pos or row["item"] in pin_items or row["position"] >= L):
                continue  # compile relaxes clashing hard pins before solving
            if hard:
                pin_pos.add(row["position"])
                pin_items.add(row["item"])
        rows.append(row)
    return make_problem(utility, pw, codes, n_values, rows)


def make_problem(utility, pw, codes, n_values, rows: list[dict]) -> SlateProblem:
    def col(key, dtype):
        return np.array([r[key] for r in rows], dtype=dtype)

    table = ConstraintTable(
        kind=col("kind", np.int64), attr=col("attr", np.int64), value=col("value", np.int64),
        bound=col("bound", np.int64), top=col("top", np.int64), size=col("size", np.int64),
        hard=col("hard", np.bool_), penalty=col("penalty", np.float64),
        priority=col("priority", np.int64), item=col("item", np.int64),
        position=col("position", np.int64),
    )
    C = len(rows)
    return SlateProblem(
        utility=np.ascontiguousarray(utility, dtype=np.float64),
        position_weight=np.ascontiguousarray(pw, dtype=np.float64),
        codes=np.ascontiguousarray(codes, dtype=np.int64),
        n_values=np.ascontiguousarray(n_values, dtype=np.int64),
        constraints=table, active=np.ones(C, dtype=np.bool_), pre_reason=np.zeros(C, dtype=np.int64),
    )
