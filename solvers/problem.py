"""The solver-facing problem: flat arrays only, no policies, no protobuf.

`engine.compile` turns a policy plus a request into a `SlateProblem`; every solver (greedy kernels,
exact MIP / CP-SAT, LP relaxations) takes one and returns slate index arrays. `evaluate` is the one
definition of objective, violation and slack that every solver and the report share.

Objective of a slate s (s[p] = candidate index at 0-based position p, L = len(s)):

    sum_p position_weight[p] * utility[s[p]]  -  sum_{soft c} penalty[c] * violation[c]

Hard constraints never enter the objective: they hold, or they are reported relaxed.

Violation units per constraint kind (positions counted 0-based; `top` = prefix length covered):
- MAX_COUNT: per value v (every value when value == ALL_VALUES), count_v = items with code v at
  positions < top; violation = sum_v max(0, count_v - bound); slack = bound - max_v count_v.
- MIN_COUNT: count = items with code == value at positions < top; violation = max(0, bound - count);
  slack = count - bound. (value == NO_MATCH: no candidate has the value, count is 0.)
- WINDOW: windows are the L - size + 1 full runs of `size` consecutive positions (one window
  [0, L) when L < size); violation = sum over windows and values of max(0, count_v(W) - bound);
  slack = bound - max over windows and values of count_v(W).
- PIN: violation = 0 if s[position] == item else 1 (item == -1, or position >= L: violated);
  slack = -violation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Constraint kinds (ConstraintTable.kind).
MAX_COUNT = 0
MIN_COUNT = 1
WINDOW = 2
PIN = 3
KIND_NAMES = ("max_count", "min_count", "window", "pin")

# Special ConstraintTable.value codes.
ALL_VALUES = -1  # the rule applies to every value of the attribute separately
NO_MATCH = -2  # the rule's value does not occur among the candidates: nothing matches

# Reasons a solver relaxed a hard constraint (SolveResult.relax_reason).
RELAX_NONE = 0
RELAX_CONFLICT = 1  # no candidate could be placed at some position without breaking it
RELAX_SHORTAGE = 2  # fewer matching candidates than the rule needs
RELAX_PIN_INVALID = 3  # pinned item not eligible, position beyond the slate, or clashing pin
RELAX_INFEASIBLE = 4  # an exact solver proved the rules cannot all hold together


@dataclass(frozen=True, slots=True)
class ConstraintTable:
    """One row per policy constraint, in policy order. All arrays have length C."""

    kind: np.ndarray  # int64: MAX_COUNT | MIN_COUNT | WINDOW | PIN
    attr: np.ndarray  # int64: row of SlateProblem.codes; -1 for PIN
    value: np.ndarray  # int64: value code, ALL_VALUES or NO_MATCH; -1 for PIN
    bound: np.ndarray  # int64: max (MAX_COUNT, WINDOW) or min (MIN_COUNT); 0 for PIN
    top: np.ndarray  # int64: prefix length covered, 1..L (L when the rule covers the slate)
    size: np.ndarray  # int64: window size (WINDOW), else 0
    hard: np.ndarray  # bool
    penalty: np.ndarray  # float64: cost per violation unit (soft rules), 0 for hard
    priority: np.ndarray  # int64: higher = more important; the lowest gives way first
    item: np.ndarray  # int64: PIN: pinned candidate index or -1; else -1
    position: np.ndarray  # int64: PIN: 0-based position; else -1

    @property
    def n(self) -> int:
        return int(self.kind.shape[0])

    @staticmethod
    def empty() -> "ConstraintTable":
        i = np.zeros(0, dtype=np.int64)
        return ConstraintTable(i, i, i, i, i, i, np.zeros(0, dtype=np.bool_),
                               np.zeros(0, dtype=np.float64), i, i, i)


@dataclass(frozen=True, slots=True)
class SlateProblem:
    """A compiled re-ranking problem over the N eligible candidates.

    utility:          float64[N]    combined objective score of each candidate
    position_weight:  float64[L]    discount of each slate position; L = min(K, N) is the slate length
    codes:            int64[A, N]   integer-coded attribute values (0..n_values[a]-1)
    n_values:         int64[A]      number of distinct values of each attribute
    constraints:      ConstraintTable
    active:           bool[C]       False for hard rules relaxed before solving (see pre_reason)
    pre_reason:       int64[C]      RELAX_* code of rules relaxed before solving, else RELAX_NONE
    """

    utility: np.ndarray
    position_weight: np.ndarray
    codes: np.ndarray
    n_values: np.ndarray
    constraints: ConstraintTable
    active: np.ndarray
    pre_reason: np.ndarray

    @property
    def n(self) -> int:
        return int(self.utility.shape[0])

    @property
    def length(self) -> int:
        return int(self.position_weight.shape[0])


@dataclass(frozen=True, slots=True)
class SolveResult:
    """What every solver returns. `slate` indexes SlateProblem.utility."""

    slate: np.ndarray  # int64[L]
    relaxed: np.ndarray  # bool[C]: hard rules this solver gave up (includes problem.active == False)
    relax_reason: np.ndarray  # int64[C]: RELAX_* code
    relax_position: np.ndarray  # int64[C]: 0-based position where the rule gave way, or -1
    solver: str  # "greedy", "mip", "cpsat", ...
    status: str  # "optimal" | "feasible" | "relaxed" | "timeout" | "infeasible"
    bound: float = float("nan")  # proven upper bound on the objective, NaN when unknown
    # minimal sets of hard rules found to conflict (row indices), in the order they were relaxed
    conflicts: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class Evaluation:
    objective: float
    utility_part: float
    penalty_part: float
    violation: np.ndarray  # float64[C]
    slack: np.ndarray  # float64[C]
