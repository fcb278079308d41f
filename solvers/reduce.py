"""Safe reductions before an exact solve, and the count-row model shared by MIP and CP-SAT.

The exact solvers work on an assignment model: a 0/1 variable per (candidate j, position p)
"column", one item per position, each item at most once, and every counting rule written as a
*count row*: the number of columns (j, p) with codes[attr, j] == value and lo <= p < hi is
<= rhs (max_count, window) or >= rhs (min_count). This module builds that model from a
SlateProblem and shrinks it, each step safe in the sense stated next to it:

1. `class_ranks` / universe (safe for optimality and for feasibility): candidates that no rule
   can tell apart form a class; only the top L of a class by utility can ever be needed, and
   (non-increasing weights) a class's k-th best can be assumed at a position >= k.
2. Hard pins are fixed (positions and items removed, row right-hand sides shifted): exact.
3. Rows that can never bind are dropped (fewer matching items or free positions than the bound).
4. `prepare` prices every remaining column with the duals of the LP relaxation (column generation
   over a small restricted set, then weak duality over the whole universe) and drops columns
   whose LP bound is below a known feasible objective (reduced-cost fixing): no slate using them
   can beat the incumbent.

Nothing here knows about policies; `solvers.mip` and `solvers.cpsat` solve the reduced model and
map columns back to candidate indices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import highspy
import numpy as np
from scipy.sparse import csc_matrix

from solvers._highs import new_highs
from solvers.evaluate import evaluate
from solvers.codes import ALL_VALUES, MAX_COUNT, MIN_COUNT, PIN, WINDOW
from solvers.problem import SlateProblem

# Reduced-cost fixing keeps a column unless its bound is below the incumbent by more than this
# (relative to max(1, |incumbent|)): floating error in LP duals can never prune a useful column.
PRUNE_TOL = 1e-7

# Rough cost of building and solving the restricted LP per column (benchmarks/bench_exact.py
# models; with / without a starting basis from the incumbent): an LP that cannot finish in the
# time left is not started.
LP_SECONDS_PER_COLUMN = (4e-6, 1e-5)


# --------------------------------------------------------------------------------------------
# Which rows the model holds, and classes of interchangeable candidates
# --------------------------------------------------------------------------------------------

def model_rows(problem: SlateProblem, *, objective: bool = True) -> np.ndarray:
    """bool[C]: the constraint rows an exact model must honour.

    Active hard rows always; soft rows too when `objective` (they are priced in the objective
    exactly as `evaluate` prices them, whatever `active` says). Inactive hard rows are ignored:
    `evaluate` never counts a hard row in the objective.
    """
    t = problem.constraints
    rows = t.hard & np.asarray(problem.active, dtype=np.bool_)
    if objective:
        rows = rows | ~t.hard
    return rows


def unsupported_terms(problem: SlateProblem) -> str | None:
    """Why the exact model cannot represent `problem`'s objective, or None. The exact solvers
    model the utility and the MAX_COUNT / MIN_COUNT / WINDOW / PIN rows; similarity diversity,
    COVERAGE and CALIBRATION are the greedy's (SlateProblem.greedy_only)."""
    kinds = problem.constraints.kind[model_rows(problem)]
    if np.any((kinds < MAX_COUNT) | (kinds > PIN)):
        return "coverage / calibration rows"
    if getattr(problem, "diversity_on", False):
        return "similarity diversity (MMR / DPP)"
    return None


def hard_rules_view(problem: SlateProblem) -> SlateProblem:
    """The same candidates and active hard rows with every soft term removed (soft rows become
    inactive hard rows, diversity off): feasibility questions only need this."""
    import dataclasses

    t = problem.constraints
    soft = ~t.hard
    if not soft.any() and not getattr(problem, "diversity_on", False):
        return problem
    view = dataclasses.replace(problem, constraints=dataclasses.replace(t, hard=t.hard | soft),
                               active=np.asarray(problem.active, dtype=np.bool_) & ~soft)
    if hasattr(problem, "div_weight"):
        view = dataclasses.replace(view, div_weight=0.0)
    return view


def weights_monotone(problem: SlateProblem) -> bool:
    """True when position weights are >= 0 and non-increasing (every real discount curve)."""
    w = problem.position_weight
    return bool(np.all(w >= 0.0) and np.all(np.diff(w) <= 0.0))


def constraint_classes(problem: SlateProblem, rows: np.ndarray) -> np.ndarray:
    """int64[N]: class label of each candidate; equal labels = indistinguishable to `rows`.

    Two candidates are in one class when, for every attribute a counting rule in `rows` reads,
    they match exactly the same rule values (the full code when some rule on `a` applies to
    ALL_VALUES, otherwise only which of the rules' named values the code equals), and neither is
    named by a PIN row in `rows` (pinned candidates are singletons). Swapping two members of a
    class at a position therefore leaves every count of every rule unchanged.
    """
    t = problem.constraints
    N = problem.n
    cols: list[np.ndarray] = []
    counting = rows & (t.kind != PIN)
    for a in np.unique(t.attr[counting]).tolist():
        on_a = counting & (t.attr == a)
        code = problem.codes[a]
        # min_count never reads ALL_VALUES (its count is 0, see evaluate)
        if np.any((t.kind[on_a] != MIN_COUNT) & (t.value[on_a] == ALL_VALUES)):
            cols.append(code)
        else:
            named = np.unique(t.value[on_a][t.value[on_a] >= 0])
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
    """(rank, size, order): rank of each candidate inside its class by utility (0 = best; ties
    by lower index), its class size, and all candidates sorted by (class, rank)."""
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
    which is exactly `evaluate`'s per-value / per-window violation.
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
    """The reduced assignment model of `problem`.

    objective=True: active hard rows + soft rows, costs = weight * utility (+ soft pins).
    objective=False: active hard rows only (a feasibility model, for conflict search).
    fix_pins=True: hard pins fix their position (exact); False: pins stay as `pins` rows so that
    each can be switched off (conflict search).
    """
    t = problem.constraints
    N, L = problem.n, problem.length
    u = problem.utility
    w = problem.position_weight
    rows_on = model_rows(problem, objective=objective)
    if np.any(t.kind[rows_on] > PIN) or np.any(t.kind[rows_on] < MAX_COUNT):
        raise ValueError("build_model: only max_count, min_count, window and pin rows can be "
                         f"modelled exactly, got kinds {sorted(set(t.kind[rows_on].tolist()))}")
    conflict: list[int] = []

    # ---- classes: the universe of candidates that can appear in some optimal slate ---------
    # Safety (w >= 0): in any slate, replace a used candidate j of class K that is not among the
    # top L of K by an unused one of the top L of K (one exists: at most L - 1 other members of K
    # are used). Same class = same match with every rule value and not pinned, so every count,
    # violation and pin is unchanged, and w[p] * u_top >= w[p] * u_j. Hence some optimal (and,
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
    chunks: list[tuple] = []
    counting = np.flatnonzero(rows_on & (t.kind != PIN))
    for c in counting.tolist():
        k, a, v, b = int(t.kind[c]), int(t.attr[c]), int(t.value[c]), int(t.bound[c])
        soft = not bool(t.hard[c])
        pen = float(t.penalty[c]) if soft else 0.0
        m = min(int(t.top[c]), L)
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
    codes = problem.codes
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
        # LP relaxation of solvers.reduce._lp_solve, with its artificial columns, is infeasible)
        conflict = [int(rows.constraint[broken[0]])]
    kp = np.array(kept_pins, dtype=np.int64)
    pins = PinRows(kp, t.item[kp].astype(np.int64), t.position[kp].astype(np.int64))
    return ExactModel(problem, fixed, free_pos, items, klass, rank, order, class_start, col_item,
                      col_pos, col_cost.astype(np.float64), rows, pins, constant, canonical,
                      tuple(conflict))


# --------------------------------------------------------------------------------------------
# Row incidence and pricing
# --------------------------------------------------------------------------------------------

def row_incidence(model: ExactModel, cols: np.ndarray,
                  rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row_of_entry, position_in_cols) of every nonzero of the count rows over `cols`.

    Column k of `cols` is in row r when its item matches (attr_r, value_r) and lo_r <= p < hi_r.
    Vectorised: per attribute, sort columns by (code, position); each row is one slice.
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


def row_prices(model: ExactModel, mu: np.ndarray) -> np.ndarray:
    """float64[n]: sum of mu[r] over the count rows containing each universe column.

    Per attribute a table D[value, position] accumulates mu over each row's [lo, hi) by a
    difference array; a column reads D[code of its item, its position].
    """
    r = model.rows
    n = model.n_cols
    out = np.zeros(n, dtype=np.float64)
    if not r.n:
        return out
    L1 = model.length + 1
    codes = model.problem.codes
    j = model.items[model.col_item]
    for a in np.unique(r.attr).tolist():
        m = r.attr == a
        nv = int(model.problem.n_values[a])
        D = np.zeros((nv, L1), dtype=np.float64)
        np.add.at(D, (r.value[m], r.lo[m]), mu[m])
        np.add.at(D, (r.value[m], r.hi[m]), -mu[m])
        D = np.cumsum(D, axis=1)
        out += D[codes[a, j], model.col_pos]
    return out


# --------------------------------------------------------------------------------------------
# Hints: validity and canonical form
# --------------------------------------------------------------------------------------------

def hard_feasible(problem: SlateProblem, slate: np.ndarray) -> bool:
    """True when `slate` is a valid slate (distinct, right length, in range) meeting every
    active hard rule by `evaluate`."""
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
    """A slate at least as good as `slate` that uses only model columns, or None.

    With model.canonical: per class, the members used at the free positions are replaced by the
    class's best ones in rank order along those positions (the swaps justified in build_model:
    counts unchanged, objective not lower). Otherwise the slate is kept as it is.
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


# --------------------------------------------------------------------------------------------
# LP pricing and reduced-cost fixing
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Prepared:
    """What an exact backend needs: the model, the columns it may use, bounds, an incumbent."""

    model: ExactModel
    cols: np.ndarray  # int64: universe columns that can be in a slate better than the incumbent
    seed_cols: np.ndarray  # int64: the LP's restricted column set (a good small MIP to try first)
    upper_bound: float  # LP bound on the objective (inf when not computed)
    reduced: np.ndarray | None  # float64[n]: d of lp_upper_bound per universe column, or None
    incumbent: np.ndarray | None  # canonical feasible slate, or None
    incumbent_objective: float  # its objective, -inf when none
    stats: dict
    infeasible: bool = False  # proven by lp_infeasible: no slate meets the hard rules


def _lp_solve(model: ExactModel, cols: np.ndarray, time_limit: float,
              start: np.ndarray | None = None, phase1: bool = False):
    """LP relaxation over `cols`, made always feasible by big-M artificial columns (one per free
    position, one per hard minimum row; they exist only in this restricted LP).

    Count rows that cannot bind on `cols` (upper rows with at most rhs entries) are left out:
    their dual is 0, which weak duality allows (lp_upper_bound stays valid for any duals); if a
    priced-in column makes one bind, the next round includes it.
    Minimises -objective so HiGHS's sign conventions are the textbook ones; returns the
    max-form duals (pi per free position, items, sigma per item row, mu per count row) or None.
    `start` (positions in `cols` of a feasible slate's columns) becomes the starting basis:
    those columns basic (one per position row), every other row's slack basic, except soft rows
    the slate violates, whose violation column is basic instead. That basis is nonsingular
    (block triangular: each position row holds exactly one basic column, each other row one
    basic slack or violation column) and primal feasible, so primal simplex starts at the
    incumbent instead of from scratch.
    phase1: feasibility of the hard rows only (zero column costs, soft rows left out, the
    artificial columns cost 1 each): the duals then price a Farkas-type certificate.
    Also returns the total value of the artificial columns.
    """
    t_enter = time.perf_counter()
    r = model.rows
    P = model.free_pos.shape[0]
    n = cols.shape[0]
    pos_index = np.full(model.length, -1, dtype=np.int64)
    pos_index[model.free_pos] = np.arange(P)
    it, item_of_col = np.unique(model.col_item[cols], return_inverse=True)
    I = it.shape[0]
    rr, cc = row_incidence(model, cols)
    nnz = np.bincount(rr, minlength=r.n)
    live_mask = ~r.upper | (nnz > r.rhs)
    if phase1:
        live_mask &= ~r.soft  # soft rows always hold (their violation is free here)
    live = np.flatnonzero(live_mask)
    R = live.shape[0]
    row_of = np.full(r.n, -1, dtype=np.int64)
    row_of[live] = np.arange(R)
    keep = row_of[rr] >= 0
    rr, cc = row_of[rr[keep]], cc[keep]
    lv_soft = r.soft[live]
    lv_upper = r.upper[live]
    e_rows = np.flatnonzero(lv_soft)  # violation columns (soft rows)
    a_rows = np.flatnonzero(~lv_soft & ~lv_upper)  # artificial columns (hard minimum rows)
    n_e, n_a = e_rows.shape[0], a_rows.shape[0]
    big_m = 10.0 * (np.abs(model.col_cost).max(initial=0.0) * P + r.penalty.sum() + 1.0)
    row_idx = np.concatenate([pos_index[model.col_pos[cols]], P + item_of_col, P + I + rr,
                              P + I + e_rows, P + I + a_rows, np.arange(P)])
    col_idx = np.concatenate([np.arange(n), np.arange(n), cc, n + np.arange(n_e),
                              n + n_e + np.arange(n_a), n + n_e + n_a + np.arange(P)])
    vals = np.concatenate([np.ones(2 * n + rr.shape[0]), np.where(lv_upper[e_rows], -1.0, 1.0),
                           np.ones(n_a + P)])
    n_col = n + n_e + n_a + P
    A = csc_matrix((vals, (row_idx, col_idx)), shape=(P + I + R, n_col))
    inf = highspy.kHighsInf
    rhs = r.rhs[live].astype(np.float64)
    if phase1:
        cost = np.concatenate([np.zeros(n), np.zeros(n_e), np.ones(n_a + P)])
    else:
        cost = np.concatenate([-model.col_cost[cols], r.penalty[live][e_rows],
                               np.full(n_a + P, big_m)])
    lp = highspy.HighsLp()
    lp.num_col_ = n_col
    lp.num_row_ = A.shape[0]
    lp.col_cost_ = cost
    lp.col_lower_ = np.zeros(n_col)
    lp.col_upper_ = np.full(n_col, inf)  # x <= 1 is implied; no bound duals to track
    lp.row_lower_ = np.concatenate([np.ones(P), np.full(I, -inf), np.where(lv_upper, -inf, rhs)])
    lp.row_upper_ = np.concatenate([np.ones(P), np.ones(I), np.where(lv_upper, rhs, inf)])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data
    h = new_highs()
    h.setOptionValue("time_limit", max(time_limit - (time.perf_counter() - t_enter), 1e-3))
    h.setOptionValue("threads", 1)
    # measured on N=1000, K=20 mixed: primal simplex without presolve 6 ms, default 17 ms
    h.setOptionValue("presolve", "off")
    h.setOptionValue("simplex_strategy", 4)
    h.passModel(lp)
    if start is not None:
        B = highspy.HighsBasisStatus
        basis = highspy.HighsBasis()
        col_status = [B.kLower] * n_col
        row_status = [B.kLower] * P + [B.kBasic] * (I + R)
        for k in start.tolist():
            col_status[k] = B.kBasic
        # a soft row the incumbent violates: its violation column is basic, the row at its bound
        viol = model.violations(cols[start])[live][e_rows]
        for k in np.flatnonzero(viol > 0).tolist():
            col_status[n + k] = B.kBasic
            row_status[P + I + int(e_rows[k])] = B.kUpper if lv_upper[e_rows[k]] else B.kLower
        basis.col_status = col_status
        basis.row_status = row_status
        basis.valid = True
        h.setBasis(basis)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    sol = h.getSolution()
    y = -np.asarray(sol.row_dual)
    pi = y[:P]
    sigma_rows = np.maximum(y[P:P + I], 0.0)
    mu = np.zeros(r.n)
    mu[live] = y[P + I:]
    art = float(np.asarray(sol.col_value)[n + n_e:].sum())
    return pi, it, sigma_rows, mu, art


def _clip_duals(model: ExactModel, mu: np.ndarray) -> np.ndarray:
    """Project row duals onto the set where weak duality holds: mu >= 0 on <= rows, <= 0 on >=
    rows, |mu| <= penalty on soft rows (the violation column's reduced cost must be <= 0)."""
    r = model.rows
    cap = np.where(r.soft, r.penalty, np.inf)
    return np.where(r.upper, np.clip(mu, 0.0, cap), np.clip(mu, -cap, 0.0))


def lp_upper_bound(model: ExactModel, pi: np.ndarray, mu: np.ndarray) -> tuple[float, np.ndarray]:
    """(UB, d): a valid upper bound on every slate of the universe, and each column's d <= 0
    such that every slate using column k has objective <= UB + d[k].

    Weak LP duality with any pi (free), mu (clipped) and sigma_j = max(0, max_p red[j, p]) where
    red = cost - pi[p] - sum of mu over rows of the column: for every 0/1 slate x and its
    violations e, objective = c.x - pen.e <= sum(pi) + sum(sigma) + mu.rhs + constant
    + sum_k (red_k - sigma_item(k)) x_k, and every bracket is <= 0. Exact for any multipliers,
    so inexact LP duals can only weaken the bound, never invalidate it.
    """
    mu = _clip_duals(model, mu)
    red = model.col_cost - pi[np.searchsorted(model.free_pos, model.col_pos)] - row_prices(model, mu)
    sigma = np.zeros(model.items.shape[0], dtype=np.float64)
    np.maximum.at(sigma, model.col_item, red)
    ub = float(pi.sum() + sigma.sum() + mu @ model.rows.rhs + model.constant)
    return ub, red - sigma[model.col_item]


def lp_infeasible(model: ExactModel, items_in: np.ndarray, deadline: float,
                  max_rounds: int = 8) -> bool:
    """True when weak LP duality proves that no slate meets the hard rows.

    Phase-1 column generation: the hard rows' LP over a restricted item set with artificial
    columns; price the universe with its duals (zero column costs). For any multipliers pi
    (free), mu (>= 0 on <= rows, <= 0 on >= rows, 0 on soft rows) and sigma_j = max(0, max_p
    red[j, p]) with red = -pi[p] - sum of mu over the column's rows, every 0/1 slate x meeting
    the hard rows satisfies 0 <= sum(pi) + sum(sigma) + mu.rhs + sum_k (red_k - sigma) x_k
    <= sum(pi) + sum(sigma) + mu.rhs. So a negative right-hand side is a proof of infeasibility,
    valid whatever the accuracy of the duals. False means "not proven" (LP feasible, out of
    rounds or of time).
    """
    r = model.rows
    cap = np.where(r.soft, 0.0, np.inf)
    items_in = items_in.copy()
    for _ in range(max_rounds):
        in_R = items_in[model.col_item]
        R = np.flatnonzero(in_R)
        left = deadline - time.perf_counter()
        if left <= 0 or R.shape[0] * LP_SECONDS_PER_COLUMN[1] > left:
            return False
        res = _lp_solve(model, R, left, None, phase1=True)
        if res is None:
            return False
        pi, it, sigma_rows, mu, art = res
        if art <= 1e-9:
            return False  # the restricted LP is feasible, so is the whole one
        mu = np.where(r.upper, np.clip(mu, 0.0, cap), np.clip(mu, -cap, 0.0))
        red = -pi[np.searchsorted(model.free_pos, model.col_pos)] - row_prices(model, mu)
        sig = np.zeros(model.items.shape[0])
        sig[it] = sigma_rows
        enter = (~in_R) & (red - sig[model.col_item] > 1e-9)
        if enter.any():
            score = np.full(model.items.shape[0], -np.inf)
            np.maximum.at(score, model.col_item[enter], red[enter])
            cand = np.flatnonzero(score > -np.inf)
            items_in[cand[np.argsort(-score[cand], kind="stable")[:max(10, model.length)]]] = True
            continue
        sigma = np.zeros(model.items.shape[0])
        np.maximum.at(sigma, model.col_item, red)
        value = float(pi.sum() + sigma.sum() + mu @ r.rhs)
        return value < -1e-7
    return False


def _initial_items(model: ExactModel, hint_slate: np.ndarray | None,
                   factor: float = 1.0) -> np.ndarray:
    """A small item set to start pricing from: the hint, the top factor * L by utility, and for
    every minimum row the best 2 * rhs matching items (so the first LP rarely needs artificials)."""
    u = model.problem.utility[model.items]
    L = model.length
    pick = np.zeros(model.items.shape[0], dtype=np.bool_)
    order = np.argsort(-u, kind="stable")
    pick[order[:int(np.ceil(factor * L))]] = True
    r = model.rows
    codes = model.problem.codes
    for k in np.flatnonzero(~r.upper).tolist():
        match = order[codes[r.attr[k], model.items[order]] == r.value[k]]
        pick[match[:2 * int(r.rhs[k])]] = True
    if hint_slate is not None:
        pick[np.isin(model.items, hint_slate)] = True
    return np.flatnonzero(pick)


def prepare(problem: SlateProblem, *, hint: np.ndarray | None, deadline: float,
            price: bool = True, max_rounds: int = 8, seed_factor: float = 1.0) -> Prepared:
    """Build the reduced model; with `price`, bound it by LP column generation and drop every
    column that cannot be in a slate better than the (canonical, feasible) hint.

    Reduced-cost fixing (safe): with (UB, d) from lp_upper_bound, a slate using column k has
    objective <= UB + d[k]. An optimal slate is at least as good as the incumbent, so a column
    with UB + d[k] < incumbent - tol is in no optimal slate. Columns of the canonical incumbent
    always survive (their own slate reaches the incumbent), so the incumbent stays a solution.
    """
    t0 = time.perf_counter()
    model = build_model(problem)
    stats = {"n_universe_items": int(model.items.shape[0]), "n_universe_cols": model.n_cols,
             "n_rows": model.rows.n}
    all_cols = np.arange(model.n_cols, dtype=np.int64)
    incumbent, inc_obj = None, -np.inf
    if hint is not None and not model.conflict and hard_feasible(problem, hint):
        c = canonical_slate(model, hint)
        if c is not None and hard_feasible(problem, c):
            incumbent, inc_obj = c, evaluate(problem, c).objective
    if model.conflict or not price or model.n_cols == 0 or model.free_pos.shape[0] == 0:
        return Prepared(model, all_cols, all_cols, np.inf, None, incumbent, inc_obj, stats)

    # ---- column generation over the LP relaxation --------------------------------------
    items_in = np.zeros(model.items.shape[0], dtype=np.bool_)
    items_in[_initial_items(model, incumbent, seed_factor)] = True
    enter_items = max(10, model.length)
    in_R = items_in[model.col_item]
    inc_cols = model.columns_of(incumbent) if incumbent is not None else None
    ub, d = np.inf, None
    rounds = 0
    last_art = 0.0
    for rounds in range(1, max_rounds + 1):
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        R = np.flatnonzero(in_R)
        if R.shape[0] * LP_SECONDS_PER_COLUMN[inc_cols is None] > left:
            break  # this LP would not finish in time; without its duals nothing is pruned
        start = None
        if inc_cols is not None:
            start = np.searchsorted(R, inc_cols)  # incumbent items are always in R
        res = _lp_solve(model, R, left, start)
        if res is None:
            break
        pi, it, sigma_rows, mu, last_art = res
        mu = _clip_duals(model, mu)
        red = model.col_cost - pi[np.searchsorted(model.free_pos, model.col_pos)] \
            - row_prices(model, mu)
        sig = np.zeros(model.items.shape[0])
        sig[it] = sigma_rows
        tol = 1e-9 * (1.0 + np.abs(model.col_cost).max(initial=0.0))
        enter = (~in_R) & (red - sig[model.col_item] > tol)
        ub_k, d_k = lp_upper_bound(model, pi, mu)
        if ub_k < ub:
            ub, d = ub_k, d_k
        if not enter.any():
            break
        # add whole items (all their columns), the `enter_items` most attractive ones per round
        score = np.full(model.items.shape[0], -np.inf)
        np.maximum.at(score, model.col_item[enter], red[enter])
        cand = np.flatnonzero(score > -np.inf)
        if cand.shape[0] > enter_items:
            cand = cand[np.argsort(-score[cand], kind="stable")[:enter_items]]
        items_in[cand] = True
        in_R = items_in[model.col_item]
    stats.update(lp_rounds=rounds, lp_bound=ub, n_seed_items=int(items_in.sum()))
    seed = np.flatnonzero(in_R)
    if incumbent is None and last_art > 1e-7 and lp_infeasible(model, items_in, deadline):
        # the big-M LP still needs its artificial columns: try to prove the hard rows infeasible
        stats["prepare_s"] = time.perf_counter() - t0
        return Prepared(model, all_cols, seed, -np.inf, None, None, -np.inf, stats, True)
    if d is None or not np.isfinite(inc_obj):
        stats["prepare_s"] = time.perf_counter() - t0
        return Prepared(model, all_cols, seed, ub, d, incumbent, inc_obj, stats)
    cols = prune_columns(ub, d, inc_obj)
    stats.update(n_cols=int(cols.shape[0]), prepare_s=time.perf_counter() - t0)
    return Prepared(model, cols, seed, ub, d, incumbent, inc_obj, stats)


def prune_columns(ub: float, d: np.ndarray, lower_bound: float) -> np.ndarray:
    """Columns whose LP bound UB + d reaches lower_bound (minus a relative tolerance)."""
    tol = PRUNE_TOL * max(1.0, abs(lower_bound))
    return np.flatnonzero(ub + d >= lower_bound - tol).astype(np.int64)


def kept_candidates(problem: SlateProblem, *, hint: np.ndarray | None = None,
                    time_limit_s: float = 1.0) -> np.ndarray:
    """Sorted candidate indices that survive every reduction above (hard-pinned ones included):
    some optimal slate uses only these. With a feasible `hint`, LP pricing prunes against it."""
    prep = prepare(problem, hint=hint, deadline=time.perf_counter() + time_limit_s)
    m = prep.model
    used = m.items[np.unique(m.col_item[prep.cols])]
    return np.union1d(used, m.fixed[m.fixed >= 0]).astype(np.int64)


def prove_infeasible(problem: SlateProblem, *, deadline: float) -> bool:
    """True when the active hard rules provably admit no slate: a trivial conflict of the model
    (bad or clashing pins, impossible minimums, caps the pins exceed) or the LP certificate of
    lp_infeasible. False means "not proven"."""
    model = build_model(problem, objective=False, fix_pins=True)
    if model.conflict:
        return True
    if model.free_pos.shape[0] == 0 or model.n_cols == 0:
        return False
    items_in = np.zeros(model.items.shape[0], dtype=np.bool_)
    items_in[_initial_items(model, None)] = True
    return lp_infeasible(model, items_in, deadline)
