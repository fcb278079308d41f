"""Random SlateProblems for kernel-vs-twin and property tests (seeded, so failures reproduce)."""

from __future__ import annotations

import numpy as np

from solvers.codes import (
    ALL_VALUES, CALIBRATION, COVERAGE, MAX_COUNT, MIN_COUNT, NO_MATCH, PIN, WINDOW,
)
from solvers.problem import ConstraintTable, SlateProblem


def random_problem(seed: int, *, n: int | None = None, k: int | None = None,
                   n_rules: int | None = None, ties: bool = False, div_mode: int = 0,
                   extras: int = 0) -> SlateProblem:
    """A seeded random problem. div_mode (1 MMR, 2 DPP) adds random embeddings (zero rows,
    duplicates of row 0, low dimensions, clusters), weight and window; extras adds that many
    coverage / calibration rows at random places. Both draw from a second generator, so the
    problem of a seed without them is unchanged."""
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
    if not (div_mode or extras):
        return make_problem(utility, pw, codes, n_values, rows)

    ext = np.random.default_rng([seed, 2024])
    for _ in range(extras):
        a = int(ext.integers(0, A))
        kind = COVERAGE if ext.random() < 0.5 else CALIBRATION
        row = dict(kind=kind, attr=a, value=ALL_VALUES, bound=0,
                   top=int(ext.integers(1, max(L, 1) + 1)), size=0, hard=False,
                   penalty=float(ext.uniform(0.05, 2.0)), priority=int(ext.integers(0, 3)),
                   item=-1, position=-1)
        if kind == CALIBRATION:
            width = int(n_values[a])
            if ext.random() < 0.3:
                target = np.full(width, 1.0 / width)  # symmetric: exact ties between values
            else:
                target = ext.dirichlet(np.ones(width)) * (ext.random(width) < 0.8)
                target = target / target.sum() if target.sum() > 0 else np.full(width, 1.0 / width)
            row["target"] = target
        rows.insert(int(ext.integers(0, len(rows) + 1)), row)
    diversity = {}
    if div_mode:
        diversity = dict(embeddings=random_embeddings(ext, n), div_mode=div_mode,
                         div_weight=float(ext.choice([0.05, 0.3, 1.0, 3.0])),
                         div_window=int(ext.choice([0, 0, 0, 1, 2, 3])))
    return make_problem(utility, pw, codes, n_values, rows, **diversity)


def random_embeddings(rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 [n, d], d small (so the span runs out), sometimes clustered, with some zero rows
    and some exact copies of row 0."""
    d = int(rng.choice([1, 2, 3, 4, 8]))
    emb = rng.normal(size=(n, d))
    if rng.random() < 0.3:
        centers = rng.normal(size=(3, d))
        emb = centers[rng.integers(0, 3, size=n)] + 0.2 * emb
    emb[rng.random(n) < 0.1] = 0.0
    if n > 2 and rng.random() < 0.5:
        emb[rng.choice(np.arange(1, n), size=min(2, n - 1), replace=False)] = emb[0]
    return np.ascontiguousarray(emb, dtype=np.float32)


def make_problem(utility, pw, codes, n_values, rows: list[dict], **diversity) -> SlateProblem:
    """A SlateProblem from rule dicts (keys of ConstraintTable; calibration rows add `target`).
    `diversity`: embeddings, div_mode, div_weight, div_window."""
    table = ConstraintTable.from_rows(rows, length=len(pw))
    C = len(rows)
    return SlateProblem(
        utility=np.ascontiguousarray(utility, dtype=np.float64),
        position_weight=np.ascontiguousarray(pw, dtype=np.float64),
        codes=np.ascontiguousarray(codes, dtype=np.int64),
        n_values=np.ascontiguousarray(n_values, dtype=np.int64),
        constraints=table, active=np.ones(C, dtype=np.bool_), pre_reason=np.zeros(C, dtype=np.int64),
        **diversity,
    )
