"""The reduced exact model: an assignment model of the slate, shrunk by safe reductions.

The exact solvers work on an assignment model: a 0/1 variable per (candidate j, position p)
"column", one item per position, each item at most once, and every counting rule written as a
*count row*: the number of columns (j, p) with codes[attr, j] == value and lo <= p < hi is
<= rhs (max_count, window) or >= rhs (min_count). This module builds that model from a
SlateProblem and shrinks it, each step safe in the sense stated next to it.

COVERAGE rows (soft, reward `penalty` per value) are count rows too. With m = min(top, L),
evaluate's term is -penalty * (min(top, n_distinct) - covered), covered = sum over values v of
y_v, y_v = 1 when some item of value v sits at a position < m. In the linear model y_v <= count_v
(y_v in [0, 1]; at integral x the optimum takes y_v = min(1, count_v)); writing y_v = 1 - e_v, that
is the soft minimum row count_v + e_v >= 1 over [0, m) with violation e_v priced `penalty`, and
penalty per such row moves to the constant. So one soft min_count row (rhs 1) per value that a
universe column at a position < m can cover, and constant += penalty * (those values + values
the hard pins in the top m already cover, whose rows are dropped) - penalty * min(top,
n_distinct), n_distinct counted over all N candidates as evaluate counts it. A value no column
can reach adds nothing (its y_v is 0 in every slate). The LP dual of such a row is a price in
[-penalty, 0] in the >= convention of solvers.exact.pricing, i.e. a reward >= 0 on the columns
that cover v: the rules of every other soft minimum row, so pricing, reduced-cost fixing, HiGHS
and CP-SAT take coverage without a special case.

1. `class_ranks` / universe (safe for optimality and for feasibility): candidates that no rule
   can tell apart form a class; only the top L of a class by utility can ever be needed, and
   (non-increasing weights) a class's k-th best can be assumed at a position >= k.
2. Hard pins are fixed (positions and items removed, row right-hand sides shifted): exact.
3. Rows that can never bind are dropped (fewer matching items or free positions than the bound).
   Only <= rows: a >= row (minimum, coverage value) goes only when the hard pins meet it.

The fourth reduction, LP pricing and reduced-cost fixing, is `solvers.exact.pricing`.
`exact_unsupported` says which problems the model cannot represent (and why): similarity
diversity (MMR, DPP) and CALIBRATION rows, which are not linear in the assignment (greedy
only). Nothing here knows about policies or about a solver; `solvers.exact.highs_mip` and
`solvers.exact.cpsat` solve the reduced model and map columns back to candidate indices.
Light on purpose: numpy only, so that `import solvers.exact` (which exports
`exact_unsupported`) loads no solver.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from solvers.codes import (
    ALL_VALUES, CALIBRATION, COVERAGE, DIV_NAMES, MAX_COUNT, MIN_COUNT, PIN, WINDOW,
)
from solvers.evaluate import evaluate
from solvers.problem import SlateProblem

# --------------------------------------------------------------------------------------------
# Which rows the model holds, and classes of interchangeable candidates
# --------------------------------------------------------------------------------------------

def model_rows(problem: SlateProblem, *, objective: bool = True) -> np.ndarray:
    """The constraint rows an exact model must honour.

    Active hard rows always; soft rows too when `objective` (they are priced in the objective
    exactly as `evaluate` prices them, whatever `active` says). Inactive hard rows are ignored:
    `evaluate` never counts a hard row in the objective.

    Parameters
    ----------
    problem : SlateProblem
        The problem.
    objective : bool, default True
        Include the soft rows (False: a feasibility question, hard rows only).

    Returns
    -------
    numpy.ndarray
        bool[C], True for the rows the model holds.
    """
    t = problem.constraints
    rows = t.hard & np.asarray(problem.active, dtype=np.bool_)
    if objective:
        rows = rows | ~t.hard
    return rows


def exact_unsupported(problem: SlateProblem) -> str | None:
    """Whether the exact solvers can take `problem`, and if not, why.

    The one answer to that question: the portfolio skips the exact solve when it is not None
    (and reports ``"skipped: <reason>"`` as the exact status), and `solve_mip` / `solve_cpsat`
    refuse the problem with the reason in their error. The exact model holds the utility and
    the MAX_COUNT / MIN_COUNT / WINDOW / PIN rows, hard or soft, and the (soft) COVERAGE rows
    (linearised, see the module docstring). Similarity diversity (MMR, DPP) and CALIBRATION rows
    (a KL divergence) are not linear in the assignment: only the greedy and `evaluate` model them.

    Parameters
    ----------
    problem : SlateProblem
        The compiled problem. Rows are read as `model_rows` reads them (active hard rows and
        every soft row); diversity counts when `SlateProblem.diversity_on` (a method and a
        weight > 0).

    Returns
    -------
    str or None
        None when the exact solvers can take the problem; else a short reason a policy editor
        can read, e.g. ``"similarity diversity (mmr) is not linear: greedy only"`` or
        ``"calibration (KL divergence) is not linear: greedy only"``. Also refused, by the first
        such row of the constraint table: a COVERAGE row marked hard or with a negative reward
        (solvers.problem defines coverage as soft with a reward >= 0) and a rule kind the model
        does not know.
    """
    if problem.diversity_on:
        mode = int(problem.div_mode)
        name = DIV_NAMES[mode] if 0 <= mode < len(DIV_NAMES) else f"method {mode}"
        return f"similarity diversity ({name}) is not linear: greedy only"
    t = problem.constraints
    rows = model_rows(problem)
    kind = t.kind
    if np.any(rows & (kind == CALIBRATION)):
        return "calibration (KL divergence) is not linear: greedy only"
    bad = np.flatnonzero(rows & ((kind < MAX_COUNT) | (kind > COVERAGE)))
    if bad.shape[0]:
        c = int(bad[0])
        return f"rule kind {int(kind[c])} (row {c}) has no exact model: greedy only"
    cov = np.flatnonzero(rows & (kind == COVERAGE) & (t.hard | (t.penalty < 0.0)))
    if cov.shape[0]:
        c = int(cov[0])
        what = "is marked hard" if t.hard[c] else f"has a negative reward {float(t.penalty[c])}"
        return f"coverage row {c} {what} (coverage is soft with a reward >= 0): greedy only"
    return None


def hard_rules_view(problem: SlateProblem) -> SlateProblem:
    """The same candidates and active hard rows with every soft term removed: feasibility
    questions only need this.

    Parameters
    ----------
    problem : SlateProblem
        The problem whose soft rows and diversity are dropped.

    Returns
    -------
    SlateProblem
        `problem` itself when it has no soft term; else a copy whose soft rows are inactive hard
        rows and whose diversity weight is 0 (so `exact_unsupported` accepts it).
    """
    t = problem.constraints
    soft = ~t.hard
    if not soft.any() and not problem.diversity_on:
        return problem
    view = dataclasses.replace(problem, constraints=dataclasses.replace(t, hard=t.hard | soft),
                               active=np.asarray(problem.active, dtype=np.bool_) & ~soft)
    return dataclasses.replace(view, div_weight=0.0)


def weights_monotone(problem: SlateProblem) -> bool:
    """Whether the position weights are >= 0 and non-increasing (every real discount curve).

    Parameters
    ----------
    problem : SlateProblem
        Its `position_weight` is read.

    Returns
    -------
    bool
        True when the class-order (canonical) reductions of `build_model` apply to the objective.
    """
    w = problem.position_weight
    return bool(np.all(w >= 0.0) and np.all(np.diff(w) <= 0.0))


def constraint_classes(problem: SlateProblem, rows: np.ndarray) -> np.ndarray:
    """Classes of candidates that the rules `rows` cannot tell apart.

    Two candidates are in one class when, for every attribute a counting rule in `rows` reads,
    they match exactly the same rule values (the full code when some rule on `a` applies to
    ALL_VALUES or when a COVERAGE rule reads `a`, otherwise only which of the rules' named values
    the code equals), and neither is named by a PIN row in `rows` (pinned candidates are
    singletons). Swapping two members of a class at a position therefore leaves every count of
    every rule unchanged, and which values sit in any prefix.

    Parameters
    ----------
    problem : SlateProblem
        The problem.
    rows : numpy.ndarray
        bool[C], the rows that must not be able to tell two members of a class apart (usually
        `model_rows(problem)`).

    Returns
    -------
    numpy.ndarray
        int64[N], the class label of each candidate (equal labels: indistinguishable).
    """
    t = problem.constraints
    N = problem.n
    cols: list[np.ndarray] = []
    counting = rows & (t.kind != PIN)
    for a in np.unique(t.attr[counting]).tolist():
        on_a = counting & (t.attr == a)
        code = problem.codes[a]
        # min_count never reads ALL_VALUES (its count is 0, see evaluate); coverage reads every
        # value (which values sit in its prefix)
        kinds, values = t.kind[on_a], t.value[on_a]
        if np.any((kinds == COVERAGE) | ((kinds != MIN_COUNT) & (values == ALL_VALUES))):
            cols.append(code)
        else:
            named = np.unique(values[values >= 0])
            named = named[named < problem.n_values[a]]
            lut = np.full(int(problem.n_values[a]) + 1, -1, dtype=np.int64)
            lut[named] = np.arange(named.shape[0])
            cols.append(lut[code])
    pinned = rows & (t.kind == PIN) & (t.item >= 0) & (t.item < N)
    single = np.full(N, -1, dtype=np.int64)
    single[t.item[pinned]] = t.item[pinned]
    cols.append(single)  # -1 for unpinned, own index for pinned: a singleton class
    if len(cols) == 1 and not pinned.any():
        return np.zeros(N, dtype=np.int64)
    sig = np.stack(cols, axis=1)
    _, klass = np.unique(sig, axis=0, return_inverse=True)
    return klass.reshape(N).astype(np.int64)


def class_ranks(utility: np.ndarray, klass: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank of each candidate inside its class by utility.

    Parameters
    ----------
    utility : numpy.ndarray
        float64[N] utilities.
    klass : numpy.ndarray
        int64[N] class labels (`constraint_classes`).

    Returns
    -------
    rank : numpy.ndarray
        int64[N], 0 for the best of its class; ties by lower index.
    size : numpy.ndarray
        int64[N], the size of each candidate's class.
    order : numpy.ndarray
        int64[N], all candidates sorted by (class, rank).
    """
    N = utility.shape[0]
    order = np.lexsort((np.arange(N), -utility, klass))
    sk = klass[order]
    start = np.ones(N, dtype=np.bool_)
    start[1:] = sk[1:] != sk[:-1]
    first = np.maximum.accumulate(np.where(start, np.arange(N), 0))
    rank = np.empty(N, dtype=np.int64)
    rank[order] = np.arange(N) - first
    counts = np.bincount(klass, minlength=int(klass.max()) + 1 if N else 0)
    return rank, counts[klass], order


# --------------------------------------------------------------------------------------------
# The count-row model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CountRows:
    """Linear rows over columns: count of (j, p) with codes[attr, j] == value, lo <= p < hi.

    upper: count <= rhs (max_count, window); else count >= rhs (min_count). Soft rows carry a
    violation variable e >= 0 (count - e <= rhs, or count + e >= rhs) priced `penalty` per unit,
    which is exactly `evaluate`'s per-value / per-window violation. A COVERAGE row becomes one
    soft >= row with rhs 1 per coverable value over [0, m) (the module docstring).
    """

    constraint: np.ndarray  # int64[R] ConstraintTable row this count row comes from
    attr: np.ndarray  # int64[R]
    value: np.ndarray  # int64[R] >= 0
    lo: np.ndarray  # int64[R]
    hi: np.ndarray  # int64[R]
    rhs: np.ndarray  # int64[R], after removing items fixed by hard pins
    upper: np.ndarray  # bool[R]
    soft: np.ndarray  # bool[R]
    penalty: np.ndarray  # float64[R], 0 for hard rows

    @property
    def n(self) -> int:
        return int(self.constraint.shape[0])


@dataclass(frozen=True, slots=True)
class PinRows:
    """Pins kept as rows (feasibility models only): x[item, position] == 1 when enforced."""

    constraint: np.ndarray  # int64
    item: np.ndarray  # int64, -1 when the pin names no eligible candidate
    position: np.ndarray  # int64


@dataclass(frozen=True, slots=True)
class ExactModel:
    """The reduced assignment model. Columns are ordered by (item, position), items ascending."""

    problem: SlateProblem
    fixed: np.ndarray  # int64[L]: candidate hard-pinned at each position, -1 when free
    free_pos: np.ndarray  # int64[P]: positions not fixed
    items: np.ndarray  # int64[M]: free candidates of the universe, ascending
    klass: np.ndarray  # int64[N]: class label of every candidate
    rank: np.ndarray  # int64[N]: rank of every candidate inside its class
    class_order: np.ndarray  # int64[N]: candidates sorted by (class, rank)
    class_start: np.ndarray  # int64[n_classes]: offset of each class in class_order
    col_item: np.ndarray  # int64[n]: index into items
    col_pos: np.ndarray  # int64[n]: slate position
    col_cost: np.ndarray  # float64[n]: objective coefficient of the column
    rows: CountRows
    pins: PinRows  # empty unless built with fix_pins=False
    constant: float  # objective part that no column decides
    canonical: bool  # class order / rank-position restriction applied (monotone weights)
    conflict: tuple[int, ...]  # a hard row that provably cannot hold (alone, or with the hard
    # pins when fix_pins: bad or clashing pins, impossible minimums, caps the pins exceed)

    @property
    def length(self) -> int:
        return int(self.fixed.shape[0])

    @property
    def n_cols(self) -> int:
        return int(self.col_item.shape[0])

    def col_keys(self) -> np.ndarray:
        """Sorted int64 key candidate * L + position of every column (for lookups)."""
        return self.items[self.col_item] * max(self.length, 1) + self.col_pos

    def columns_of(self, slate: np.ndarray) -> np.ndarray | None:
        """Column index of every free position of `slate`, or None if one is not a column."""
        L = max(self.length, 1)
        p = self.free_pos
        keys = slate[p] * L + p
        ck = self.col_keys()
        idx = np.searchsorted(ck, keys)
        idx = np.minimum(idx, max(ck.shape[0] - 1, 0))
        if ck.shape[0] == 0 or np.any(ck[idx] != keys):
            return None if p.shape[0] else np.zeros(0, dtype=np.int64)
        return idx

    def slate_from_columns(self, cols: np.ndarray) -> np.ndarray:
        """Slate of a set of chosen columns (one per free position) plus the fixed positions."""
        slate = self.fixed.copy()
        slate[self.col_pos[cols]] = self.items[self.col_item[cols]]
        return slate

    def row_counts(self, cols: np.ndarray) -> np.ndarray:
        """int64[R]: count of every row over a set of chosen columns."""
        r = self.rows
        codes = self.problem.codes
        j = self.items[self.col_item[cols]]
        p = self.col_pos[cols]
        out = np.zeros(r.n, dtype=np.int64)
        for k in range(cols.shape[0]):
            hit = (codes[r.attr, j[k]] == r.value) & (r.lo <= p[k]) & (p[k] < r.hi)
            out += hit
        return out

    def violations(self, cols: np.ndarray) -> np.ndarray:
        """int64[R]: violation units of every row over a set of chosen columns."""
        cnt = self.row_counts(cols)
        r = self.rows
        return np.where(r.upper, np.maximum(0, cnt - r.rhs), np.maximum(0, r.rhs - cnt))


def _pin_rows(problem: SlateProblem, rows: np.ndarray) -> np.ndarray:
    t = problem.constraints
    return np.flatnonzero(rows & (t.kind == PIN))


def build_model(problem: SlateProblem, *, objective: bool = True,
                fix_pins: bool = True) -> ExactModel:
    """The reduced assignment model of `problem` (the reductions of the module docstring).

    Parameters
    ----------
    problem : SlateProblem
        The problem; only MAX_COUNT, MIN_COUNT, WINDOW, PIN and (soft) COVERAGE rows may be among
        the modelled rows (`exact_unsupported` says so beforehand).
    objective : bool, default True
        True: active hard rows + soft rows, costs = weight * utility (+ soft pins). False: active
        hard rows only (a feasibility model, for conflict search).
    fix_pins : bool, default True
        True: hard pins fix their position (exact). False: pins stay as `pins` rows so that each
        can be switched off (conflict search).

    Returns
    -------
    ExactModel
        The model; its `conflict` names a hard row that provably cannot hold (empty otherwise).

    Raises
    ------
    ValueError
        When a modelled row has a kind the model cannot represent (calibration) or is a hard
        coverage row.
    """
    t = problem.constraints
    N, L = problem.n, problem.length
    u = problem.utility
    w = problem.position_weight
    rows_on = model_rows(problem, objective=objective)
    if np.any(t.kind[rows_on] > COVERAGE) or np.any(t.kind[rows_on] < MAX_COUNT):
        raise ValueError("build_model: only max_count, min_count, window, pin and coverage rows "
                         "can be modelled exactly, got kinds "
                         f"{sorted(set(t.kind[rows_on].tolist()))}")
    if np.any(rows_on & (t.kind == COVERAGE) & t.hard):
        raise ValueError("build_model: coverage rows are soft only, got a hard one (row "
                         f"{int(np.flatnonzero(rows_on & (t.kind == COVERAGE) & t.hard)[0])})")
    conflict: list[int] = []

    # ---- classes: the universe of candidates that can appear in some optimal slate ---------
    # Safety (w >= 0): in any slate, replace a used candidate j of class K that is not among the
    # top L of K by an unused one of the top L of K (one exists: at most L - 1 other members of K
    # are used). Same class = same match with every rule value and not pinned, so every count,
    # violation and pin is unchanged (coverage too: its attribute is read by the full code, so
    # the same values sit in every prefix), and w[p] * u_top >= w[p] * u_j. Hence some optimal (and,
    # with no objective, some feasible) slate uses only top-L members. With a negative weight a
    # position may prefer the worst members, so the bottom L are kept too.
    klass = constraint_classes(problem, rows_on)
    rank, size, order = class_ranks(u, klass)
    keep = rank < L
    if objective and np.any(w < 0.0):
        keep |= (size - 1 - rank) < L
    class_start = np.flatnonzero(np.r_[True, klass[order][1:] != klass[order][:-1]]) if N else \
        np.zeros(0, dtype=np.int64)
    # Within a class and non-increasing weights, sorting the used members by utility along their
    # positions cannot lower the objective ((w_p - w_q)(u_hi - u_lo) >= 0 for p < q) and keeps
    # every count (same codes at the same positions). With the top-L swap above, some optimal
    # slate uses each class's members 0..m-1 in rank order, so member k sits at position >= k.
    # (Coverage depends only on which codes sit at positions < top: unchanged by both swaps.)
    # For feasibility alone (no objective) the same swaps hold for any weights.
    canonical = weights_monotone(problem) or not objective

    # ---- pins --------------------------------------------------------------------------------
    fixed = np.full(L, -1, dtype=np.int64)
    constant = 0.0
    pin_idx = _pin_rows(problem, rows_on)
    hard_pin = pin_idx[t.hard[pin_idx]]
    soft_pin = pin_idx[~t.hard[pin_idx]]
    pin_bonus: list[tuple[int, int, float]] = []
    kept_pins: list[int] = []
    if fix_pins:
        owner_pos: dict[int, int] = {}
        owner_item: dict[int, int] = {}
        for c in hard_pin.tolist():
            i, p = int(t.item[c]), int(t.position[c])
            if i < 0 or i >= N or p < 0 or p >= L:
                conflict = [c]
                break
            if p in owner_pos and fixed[p] != i:
                conflict = [owner_pos[p], c]
                break
            if i in owner_item and int(t.position[owner_item[i]]) != p:
                conflict = [owner_item[i], c]
                break
            fixed[p] = i
            owner_pos.setdefault(p, c)
            owner_item.setdefault(i, c)
        fixed_items = set(fixed[fixed >= 0].tolist())
        for c in soft_pin.tolist():
            i, p, pen = int(t.item[c]), int(t.position[c]), float(t.penalty[c])
            constant -= pen  # violation 1 unless the pin holds
            if i < 0 or i >= N or p < 0 or p >= L:
                continue
            if fixed[p] >= 0:
                if fixed[p] == i:
                    constant += pen
            elif i not in fixed_items:
                pin_bonus.append((i, p, pen))  # + pen * x[i, p]
    else:
        for c in hard_pin.tolist():
            i, p = int(t.item[c]), int(t.position[c])
            if i < 0 or i >= N or p < 0 or p >= L:
                conflict = [c]
            kept_pins.append(c)
    free = fixed < 0
    free_pos = np.flatnonzero(free).astype(np.int64)
    keep[fixed[~free]] = False
    items = np.flatnonzero(keep).astype(np.int64)

    # ---- columns: (item, position) pairs, item-major ------------------------------------------
    P = free_pos.shape[0]
    col_item = np.repeat(np.arange(items.shape[0], dtype=np.int64), P)
    col_pos = np.tile(free_pos, items.shape[0])
    if canonical:
        ok = rank[items[col_item]] <= col_pos
        col_item, col_pos = col_item[ok], col_pos[ok]
    col_cost = w[col_pos] * u[items[col_item]] if objective else np.zeros(col_pos.shape[0])
    if pin_bonus:
        keys = items[col_item] * max(L, 1) + col_pos
        for i, p, pen in pin_bonus:
            k = int(np.searchsorted(keys, i * L + p))
            col_cost[k] += pen  # pinned items are singletons: rank 0, every free position
    if objective and fix_pins:
        constant += float(w[~free] @ u[fixed[~free]])

    # ---- count rows -----------------------------------------------------------------------
    free_cum = np.r_[0, np.cumsum(free)]
    codes = problem.codes
    chunks: list[tuple] = []
    counting = np.flatnonzero(rows_on & (t.kind != PIN))
    for c in counting.tolist():
        k, a, v, b = int(t.kind[c]), int(t.attr[c]), int(t.value[c]), int(t.bound[c])
        soft = not bool(t.hard[c])
        pen = float(t.penalty[c]) if soft else 0.0
        m = min(int(t.top[c]), L)
        if k == COVERAGE:
            # Linearised as soft "count_v + e_v >= 1" rows over [0, m) (module docstring).
            n_distinct = int(np.unique(codes[a]).shape[0]) if N else 0
            reach = np.zeros(int(problem.n_values[a]), dtype=np.bool_)
            reach[codes[a, items[col_item[col_pos < m]]]] = True  # a column can cover it
            if fix_pins:
                top_fixed = fixed[:m][fixed[:m] >= 0]
                reach[codes[a, top_fixed]] = True  # covered by a hard pin: row dropped below
            vals = np.flatnonzero(reach).astype(np.int64)
            constant += pen * (vals.shape[0] - min(int(t.top[c]), n_distinct))
            if vals.shape[0]:
                chunks.append((c, a, vals, np.array([0]), np.array([m]), 1, False, True, pen))
            continue
        if k == MIN_COUNT:
            if b <= 0:
                continue
            if v < 0:  # NO_MATCH (or a value nobody has): count is always 0
                if soft:
                    constant -= pen * b
                else:
                    conflict = conflict or [c]  # cannot hold whatever the slate
                continue
            if not soft and b > m:
                conflict = conflict or [c]
            chunks.append((c, a, np.array([v]), np.array([0]), np.array([m]), b, False, soft, pen))
            continue
        if v == ALL_VALUES:
            vals = np.arange(int(problem.n_values[a]), dtype=np.int64)
        elif v >= 0:
            vals = np.array([v], dtype=np.int64)
        else:
            continue  # NO_MATCH: nothing is counted, never violated
        if k == MAX_COUNT:
            chunks.append((c, a, vals, np.array([0]), np.array([m]), b, True, soft, pen))
        elif k == WINDOW:
            span = min(int(t.size[c]), L)
            n_win = L - span + 1
            q = np.arange(n_win, dtype=np.int64)
            chunks.append((c, a, vals, q, q + span, b, True, soft, pen))
    parts = {k: [] for k in ("constraint", "attr", "value", "lo", "hi", "rhs", "upper", "soft",
                             "penalty")}
    for c, a, vals, lo, hi, b, upper, soft, pen in chunks:
        V, W = vals.shape[0], lo.shape[0]
        vv = np.repeat(vals, W)
        ll = np.tile(lo, V)
        hh = np.tile(hi, V)
        rhs = np.full(V * W, b, dtype=np.int64)
        if fix_pins:
            for p in np.flatnonzero(~free).tolist():
                # A fixed item counts in every row covering its position: move it to the rhs.
                rhs -= (codes[a, fixed[p]] == vv) & (ll <= p) & (p < hh)
        if upper:
            # Safe drop: a row whose count can never exceed its rhs never binds (hard) and never
            # costs (soft): count <= min(free positions in range, universe items with the value).
            n_match = np.bincount(codes[a, items], minlength=int(problem.n_values[a]))
            cap = np.minimum(free_cum[hh] - free_cum[ll], n_match[vv])
            live = cap > rhs
        else:
            live = rhs > 0  # satisfied by the fixed items alone
        n_live = int(live.sum())
        if not n_live:
            continue
        parts["constraint"].append(np.full(n_live, c, dtype=np.int64))
        parts["attr"].append(np.full(n_live, a, dtype=np.int64))
        parts["value"].append(vv[live])
        parts["lo"].append(ll[live])
        parts["hi"].append(hh[live])
        parts["rhs"].append(rhs[live])
        parts["upper"].append(np.full(n_live, upper, dtype=np.bool_))
        parts["soft"].append(np.full(n_live, soft, dtype=np.bool_))
        parts["penalty"].append(np.full(n_live, pen, dtype=np.float64))
    dtypes = dict(constraint=np.int64, attr=np.int64, value=np.int64, lo=np.int64, hi=np.int64,
                  rhs=np.int64, upper=np.bool_, soft=np.bool_, penalty=np.float64)
    rows = CountRows(**{k: (np.concatenate(v) if v else np.zeros(0, dtype=dtypes[k]))
                        for k, v in parts.items()})
    broken = np.flatnonzero(rows.upper & ~rows.soft & (rows.rhs < 0))
    if broken.shape[0] and not conflict:
        # the hard-pinned items alone exceed this cap: no slate keeps both (the only way the
        # LP relaxation of solvers.exact.pricing, with its artificial columns, is infeasible)
        conflict = [int(rows.constraint[broken[0]])]
    kp = np.array(kept_pins, dtype=np.int64)
    pins = PinRows(kp, t.item[kp].astype(np.int64), t.position[kp].astype(np.int64))
    return ExactModel(problem, fixed, free_pos, items, klass, rank, order, class_start, col_item,
                      col_pos, col_cost.astype(np.float64), rows, pins, constant, canonical,
                      tuple(conflict))


# --------------------------------------------------------------------------------------------
# Row incidence: which columns each count row holds
# --------------------------------------------------------------------------------------------

def row_incidence(model: ExactModel, cols: np.ndarray,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every nonzero of the count rows over the columns `cols`.

    Column k of `cols` is in row r when its item matches (attr_r, value_r) and lo_r <= p < hi_r.
    Vectorised: per attribute, sort columns by (code, position); each row is one slice.

    Parameters
    ----------
    model : ExactModel
        The model whose count rows are read.
    cols : numpy.ndarray
        int64 model columns (any order).
    rows : numpy.ndarray, optional
        int64 count rows to look at (default: all).

    Returns
    -------
    row : numpy.ndarray
        int64, the count row of each nonzero.
    col : numpy.ndarray
        int64, the position in `cols` of each nonzero.
    """
    r = model.rows
    sel = np.arange(r.n) if rows is None else rows
    L1 = model.length + 1
    codes = model.problem.codes
    j = model.items[model.col_item[cols]]
    p = model.col_pos[cols]
    out_r: list[np.ndarray] = []
    out_c: list[np.ndarray] = []
    attrs = r.attr[sel]
    for a in np.unique(attrs).tolist():
        rs = sel[attrs == a]
        key = codes[a, j] * L1 + p
        order = np.argsort(key, kind="stable")
        skey = key[order]
        s = np.searchsorted(skey, r.value[rs] * L1 + r.lo[rs])
        e = np.searchsorted(skey, r.value[rs] * L1 + r.hi[rs])
        lens = e - s
        total = int(lens.sum())
        if not total:
            continue
        out_r.append(np.repeat(rs, lens))
        base = np.repeat(s - (np.cumsum(lens) - lens), lens)
        out_c.append(order[base + np.arange(total)])
    if not out_r:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(out_r), np.concatenate(out_c)


def row_members(model: ExactModel, cols: np.ndarray,
                live_only: bool = False) -> dict[int, list[int]]:
    """The columns of each count row, as positions in `cols`.

    Parameters
    ----------
    model, cols
        As in `row_incidence`.
    live_only : bool, default False
        Leave out <= rows with at most rhs entries (they can neither bind nor cost); otherwise
        every row, empty ones included.

    Returns
    -------
    dict of int to list of int
        Count row -> positions in `cols` of its columns.
    """
    rr, cc = row_incidence(model, cols)
    order = np.argsort(rr, kind="stable")
    rr, cc = rr[order], cc[order]
    cuts = np.searchsorted(rr, np.arange(model.rows.n + 1))
    r = model.rows
    rows = np.arange(r.n)
    if live_only:
        rows = np.flatnonzero(~r.upper | (np.diff(cuts) > r.rhs))
    return {k: cc[cuts[k]:cuts[k + 1]].tolist() for k in rows.tolist()}


# --------------------------------------------------------------------------------------------
# Hints: validity and canonical form
# --------------------------------------------------------------------------------------------

def hard_feasible(problem: SlateProblem, slate: np.ndarray) -> bool:
    """Whether `slate` is a valid slate meeting every active hard rule.

    Parameters
    ----------
    problem : SlateProblem
        The problem.
    slate : numpy.ndarray
        Candidate indices, one per position.

    Returns
    -------
    bool
        True when the slate is distinct, of length `problem.length`, in range, and `evaluate`
        finds no violation of an active hard rule.
    """
    slate = np.asarray(slate)
    L, N = problem.length, problem.n
    if slate.shape != (L,) or (L and (slate.min() < 0 or slate.max() >= N)):
        return False
    if np.unique(slate).shape[0] != L:
        return False
    ev = evaluate(problem, slate.astype(np.int64))
    hard = problem.constraints.hard & np.asarray(problem.active, dtype=np.bool_)
    return bool(np.all(ev.violation[hard] == 0.0))


def canonical_slate(model: ExactModel, slate: np.ndarray) -> np.ndarray | None:
    """A slate at least as good as `slate` that uses only model columns.

    With model.canonical: per class, the members used at the free positions are replaced by the
    class's best ones in rank order along those positions (the swaps justified in build_model:
    counts unchanged, objective not lower). Otherwise the slate is kept as it is.

    Parameters
    ----------
    model : ExactModel
        The model (built with the slate's hard pins fixed).
    slate : numpy.ndarray
        A slate of the model's problem.

    Returns
    -------
    numpy.ndarray or None
        The canonical slate, or None when some position of it is not a model column.
    """
    slate = np.asarray(slate, dtype=np.int64).copy()
    if model.canonical:
        p = model.free_pos
        k = model.klass[slate[p]]
        order = np.lexsort((p, k))  # free positions grouped by class, ascending
        ks = k[order]
        first = np.r_[True, ks[1:] != ks[:-1]]
        start_in_group = np.maximum.accumulate(np.where(first, np.arange(ks.shape[0]), 0))
        nth = np.arange(ks.shape[0]) - start_in_group
        cls_start = model.class_start[ks]
        slate[p[order]] = model.class_order[cls_start + nth]
    if model.columns_of(slate) is None:
        return None
    return slate


