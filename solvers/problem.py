"""The solver-facing problem: flat arrays only, no policies, no protobuf.

`engine.compile` turns a policy plus a request into a `SlateProblem`; every solver (greedy kernels,
exact MIP / CP-SAT, LP relaxations) takes one and returns slate index arrays. `evaluate` is the one
definition of objective, violation and slack that every solver and the report share.

Objective of a slate s (s[p] = candidate index at 0-based position p, L = len(s)):

    sum_p position_weight[p] * (utility[s[p]] + div_p)  -  sum_{soft c} penalty[c] * violation[c]

(div_p, the similarity-diversity term below, is 0 unless SlateProblem.div_mode is set.)

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
- COVERAGE (soft only; penalty = reward per value, >= 0): covered = distinct values of the
  attribute at positions < top; violation = max_coverable - covered with
  max_coverable = min(top, distinct values of the attribute among the N candidates);
  slack = -violation.
- CALIBRATION (soft only; penalty = weight of the KL term, >= 0; target distribution t over the
  attribute's value codes 0..n_values-1, stored in ConstraintTable.target, sums to 1): with
  q = distribution of the attribute over positions < top (q = 0 when that prefix is empty) and
  q~ = (1 - CALIBRATION_ALPHA) * q + CALIBRATION_ALPHA * t (Steck 2018's smoothing, alpha = 0.01,
  which keeps KL finite), violation = KL(t || q~) = sum_{v: t_v > 0} t_v * log(t_v / q~_v);
  slack = -violation. (An empty prefix scores log(1 / alpha); only slates with L = 0 have one.)

Similarity diversity (SlateProblem.div_mode, div_weight = beta >= 0, div_window = w >= 0) adds
sum_p position_weight[p] * div_p to the objective, div_p <= 0 being the term of the item s[p]
given P_p = the items at positions < p (only the last w of them when w > 0):

- cos(i, j) = <e_i, e_j> / sqrt(|e_i|^2 |e_j|^2) over the float32 embedding rows, in float64
  (the kernels normalise; identical rows have cosine exactly 1; a zero row has cosine 0 with
  every item, and similarity 1 with itself).
- MMR (DIV_MMR): div_p = -beta * max(0, max_{j in P_p} cos(s[p], j)); 0 when P_p is empty.
- DPP (DIV_DPP): div_p = beta * log(max(r_p, DPP_EPS)), r_p = the residual variance of s[p]'s unit
  vector given P_p: r = 1 - x^T S_BB^{-1} x, S the cosine-similarity matrix (S_ii = 1), x = S_Bi,
  and B = the items of P_p that extend the span, taken in slate order: j in P_p belongs to B when
  its own residual given the earlier members of B exceeds DPP_SPAN_EPS = 1e-6 (so a selected item
  already in the span adds nothing; once d members that are not zero rows span the space, every
  residual is 0, or 1 for a zero row). This is the d_i^2 of Chen, Zhang & Zhou (2018)'s
  incremental Cholesky on the kernel S; see solvers._greedy_kernels. Why 1e-6 and not 1e-10: a
  member with a residual of 1e-8 divides the later updates by 1e-4, and the rounding noise of
  residuals that should be 0 (a full span) then reaches the 1e-10 floor, so which items count as
  "in the span" would depend on rounding.

Every extra term is <= 0 (div, -penalty * violation), so `objective_upper_bound_unconstrained`
stays a valid bound. `solvers.exact.exact_unsupported` tells whether a problem uses any of them
(the exact solvers model the plain utility, the MAX_COUNT / MIN_COUNT / WINDOW / PIN rows and
COVERAGE rows, not calibration or similarity diversity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from solvers.codes import CALIBRATION, DIV_NONE, RULE_COLUMNS, RULE_HARD


@dataclass(frozen=True, slots=True)
class ConstraintTable:
    """One row per policy constraint, in policy order. All arrays but `target` and
    `target_offset` have length C."""

    kind: np.ndarray  # int64: MAX_COUNT | MIN_COUNT | WINDOW | PIN | COVERAGE | CALIBRATION
    attr: np.ndarray  # int64: row of SlateProblem.codes; -1 for PIN
    value: np.ndarray  # int64: value code, ALL_VALUES or NO_MATCH; -1 for PIN (unused by
    #                    COVERAGE / CALIBRATION, which look at every value)
    bound: np.ndarray  # int64: max (MAX_COUNT, WINDOW) or min (MIN_COUNT); else 0
    top: np.ndarray  # int64: prefix length covered, 1..L (L when the rule covers the slate)
    size: np.ndarray  # int64: window size (WINDOW), else 0
    hard: np.ndarray  # bool (always False for COVERAGE / CALIBRATION)
    penalty: np.ndarray  # float64: cost per violation unit (soft rules), 0 for hard
    priority: np.ndarray  # int64: higher = more important; the lowest gives way first
    item: np.ndarray  # int64: PIN: pinned candidate index or -1; else -1
    position: np.ndarray  # int64: PIN: 0-based position; else -1
    # CALIBRATION targets, flat: row c's distribution over its attribute's value codes is
    # target[target_offset[c]:target_offset[c + 1]] (n_values[attr[c]] entries summing to 1;
    # empty for other rows). None (the default) means no calibration rows: empty / zero arrays.
    target: np.ndarray | None = None  # float64[sum of widths]
    target_offset: np.ndarray | None = None  # int64[C + 1]
    # The integer columns as one C-contiguous int64[RULE_COLS, C] block, row RULE_X = column
    # RULE_COLUMNS[RULE_X] (solvers.codes), as the kernels take it: built once, when the table is
    # made (also by dataclasses.replace), and the int columns above are then views of its rows,
    # so writing a column writes the block. `hard` stays a bool array of its own; the block's
    # RULE_HARD row is its 0 / 1 copy, taken when the table is made.
    rules: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules = np.array([getattr(self, name) for name in RULE_COLUMNS], dtype=np.int64)
        self._adopt(rules.reshape(len(RULE_COLUMNS), -1))  # C = 0: shape (RULE_COLS, 0)

    def _adopt(self, rules: np.ndarray) -> None:
        object.__setattr__(self, "rules", rules)
        for r, name in enumerate(RULE_COLUMNS):
            if r != RULE_HARD:
                object.__setattr__(self, name, rules[r])
        if self.target is None:
            object.__setattr__(self, "target", np.zeros(0, dtype=np.float64))
        if self.target_offset is None:
            object.__setattr__(self, "target_offset", np.zeros(self.n + 1, dtype=np.int64))

    @property
    def n(self) -> int:
        return int(self.kind.shape[0])

    def target_of(self, c: int) -> np.ndarray:
        """Target distribution of calibration row c (empty for other rows)."""
        return self.target[self.target_offset[c]:self.target_offset[c + 1]]

    @classmethod
    def from_block(cls, rules: np.ndarray, hard: np.ndarray, penalty: np.ndarray,
                   target: np.ndarray | None = None,
                   target_offset: np.ndarray | None = None) -> "ConstraintTable":
        """A table over an already packed block, without copying it (the request path builds
        its block from a cached one).

        Parameters
        ----------
        rules : ndarray of int64, shape (RULE_COLS, C), C-contiguous
            Row RULE_X is column RULE_COLUMNS[RULE_X]; the table's int columns become views of
            it. Its RULE_HARD row must equal `hard` (0 / 1).
        hard : ndarray of bool, shape (C,)
        penalty : ndarray of float64, shape (C,)
        target, target_offset : ndarray, optional
            The calibration targets, as for the constructor.

        Returns
        -------
        ConstraintTable
        """
        table = object.__new__(cls)
        for name in RULE_COLUMNS:
            object.__setattr__(table, name, None)
        object.__setattr__(table, "hard", hard)
        object.__setattr__(table, "penalty", penalty)
        object.__setattr__(table, "target", target)
        object.__setattr__(table, "target_offset", target_offset)
        table._adopt(rules)
        return table

    @staticmethod
    def from_rows(rows, *, length: int | None = None) -> "ConstraintTable":
        """A table from one mapping per rule, in rule order.

        Parameters
        ----------
        rows : iterable of mapping
            Each has ``kind`` (a code of `solvers.codes`) and any of the other column names;
            missing keys take the defaults ``attr=-1, value=-1, bound=0, top=length, size=0,
            hard=True, penalty=0.0, priority=0, item=-1, position=-1``. A CALIBRATION row has
            ``target``, its distribution over the attribute's value codes.
        length : int, optional
            The slate length: what ``top=None`` (or a missing ``top``) stands for. Required
            when some row leaves ``top`` unset.

        Returns
        -------
        ConstraintTable
            C-contiguous int64 / bool / float64 columns of length C = len(rows), and the flat
            calibration targets.
        """
        rows = list(rows)
        defaults = dict(attr=-1, value=-1, bound=0, top=None, size=0, hard=True, penalty=0.0,
                        priority=0, item=-1, position=-1)
        unknown = {k for r in rows for k in r} - set(defaults) - {"kind", "target"}
        if unknown:
            raise ValueError(f"ConstraintTable.from_rows: unknown keys {sorted(unknown)}")

        def col(key, dtype):
            values = [r.get(key, defaults[key]) for r in rows]
            if key == "top":
                if length is None and any(v is None for v in values):
                    raise ValueError("ConstraintTable.from_rows: a row leaves top unset: pass length")
                values = [length if v is None else v for v in values]
            return np.array(values, dtype=dtype)

        widths = [len(r["target"]) if r["kind"] == CALIBRATION else 0 for r in rows]
        targets = [np.asarray(r["target"], dtype=np.float64) for r in rows if r["kind"] == CALIBRATION]
        return ConstraintTable(
            kind=np.array([r["kind"] for r in rows], dtype=np.int64), attr=col("attr", np.int64),
            value=col("value", np.int64), bound=col("bound", np.int64), top=col("top", np.int64),
            size=col("size", np.int64), hard=col("hard", np.bool_), penalty=col("penalty", np.float64),
            priority=col("priority", np.int64), item=col("item", np.int64),
            position=col("position", np.int64),
            target=np.concatenate(targets) if targets else None,
            target_offset=np.concatenate([[0], np.cumsum(widths)]).astype(np.int64) if targets else None,
        )

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
    embeddings:       float32[N, d] or None; rows need not be normalised (the kernels divide by
                                    the norms; zero rows are similar to nothing)
    div_mode:         DIV_NONE | DIV_MMR | DIV_DPP
    div_weight:       beta >= 0 (0 switches diversity off)
    div_window:       0 = compare with every item above; w > 0 = only with the last w
    """

    utility: np.ndarray
    position_weight: np.ndarray
    codes: np.ndarray
    n_values: np.ndarray
    constraints: ConstraintTable
    active: np.ndarray
    pre_reason: np.ndarray
    embeddings: np.ndarray | None = None
    div_mode: int = DIV_NONE
    div_weight: float = 0.0
    div_window: int = 0

    @property
    def n(self) -> int:
        return int(self.utility.shape[0])

    @property
    def diversity_on(self) -> bool:
        return self.div_mode != DIV_NONE and self.div_weight > 0.0

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
    diversity_part: float = 0.0  # sum_p position_weight[p] * div_p (<= 0); included in objective
