"""LP pricing of the reduced model: bounds, reduced-cost fixing and infeasibility proofs.

The fourth reduction of the exact model (`solvers.exact.model` holds the other three):
`prepare` prices every column with the duals of the LP relaxation (column generation over a
small restricted set, then weak duality over the whole universe) and drops columns whose LP
bound is below a known feasible objective (reduced-cost fixing): no slate using them can beat
the incumbent. `lp_infeasible` / `prove_infeasible` turn a phase-1 LP into a proof that no
slate meets the hard rules. `assignment_lp` writes the assignment model over a column subset
as HiGHS arrays; the LP here and the MIP of `solvers.exact.highs_mip` both start from it.

Coverage rows are soft >= rows (count_v + e_v >= 1, e_v priced by the reward; solvers.exact.model),
so the LP holds the relaxation y_v = 1 - e_v <= count_v of every coverable value and is still a
relaxation of the MIP. Their duals are clipped to [-reward, 0] like every soft minimum's: in
`row_prices` that is a price >= 0 added to the reduced cost of each column covering v (a
column's share of the coverage reward), and weak duality (`lp_upper_bound`) holds for any such
multiplier, so reduced-cost fixing stays safe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import highspy
import numpy as np
from scipy.sparse import csc_matrix

from solvers._highs import new_highs
from solvers.codes import COVERAGE
from solvers.evaluate import evaluate
from solvers.exact.model import (
    ExactModel, build_model, canonical_slate, hard_feasible, row_incidence,
)
from solvers.problem import SlateProblem

# Reduced-cost fixing keeps a column unless its bound is below the incumbent by more than this
# (relative to max(1, |incumbent|)): floating error in LP duals can never prune a useful column.
PRUNE_TOL = 1e-7

# Rough cost of building and solving the restricted LP per column (benchmarks/bench_exact.py
# models; with / without a starting basis from the incumbent): an LP that cannot finish in the
# time left is not started.
LP_SECONDS_PER_COLUMN = (4e-6, 1e-5)


def row_prices(model: ExactModel, mu: np.ndarray) -> np.ndarray:
    """Sum of the row duals mu over the count rows containing each universe column.

    Per attribute a table D[value, position] accumulates mu over each row's [lo, hi) by a
    difference array; a column reads D[code of its item, its position].

    Parameters
    ----------
    model : ExactModel
        The model whose universe columns are priced.
    mu : numpy.ndarray
        float64[R]: the price of each count row.

    Returns
    -------
    numpy.ndarray
        float64[n_cols], the price of each universe column.
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
# The assignment model as HiGHS arrays (the LP relaxation below and the MIP share it)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AssignmentLp:
    """The assignment model over a column subset as a HiGHS model without costs.

    Columns, in this order: x[k] for each of the n given model columns; e[r] for each live soft
    row (its violation); with `artificial`, one column per live hard minimum row and one per
    free position (always-feasible LPs). Rows, in this order: one per free position (== 1), one
    per item of the columns (<= 1), one per live count row (<= rhs or >= rhs; e enters with
    -1 in a <= row, +1 in a >= row). Every column is >= 0 with no upper bound and costs 0: the
    caller sets `lp.col_cost_` (and, for a MIP, x <= 1, integrality, sense and offset).
    """

    lp: highspy.HighsLp
    items: np.ndarray  # int64[I]: model item index of each item row
    live: np.ndarray  # int64[R]: the model count rows kept, in row order
    viol_rows: np.ndarray  # int64[n_e]: positions in `live` of the rows with a violation column
    n_art: int  # artificial columns after the violation columns (0 without `artificial`)


def assignment_lp(model: ExactModel, cols: np.ndarray, *, hard_only: bool = False,
                  artificial: bool = False) -> AssignmentLp:
    """The rows and columns of the assignment model over `cols`, as a HiGHS LP.

    A <= row with at most rhs entries on `cols` can neither bind nor cost: it is left out (its
    dual is 0, which weak duality allows).

    Parameters
    ----------
    model : ExactModel
        The reduced model.
    cols : numpy.ndarray
        int64 model columns to include (ascending).
    hard_only : bool, default False
        Leave the soft rows out (a feasibility question: their violation would be free).
    artificial : bool, default False
        Add one artificial column per live hard minimum row and per free position, so that
        the LP is always feasible (pricing's restricted LPs).

    Returns
    -------
    AssignmentLp
        The HiGHS model (zero costs) and what maps its rows and columns back to the model.
    """
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
    if hard_only:
        live_mask &= ~r.soft
    live = np.flatnonzero(live_mask)
    R = live.shape[0]
    row_of = np.full(r.n, -1, dtype=np.int64)
    row_of[live] = np.arange(R)
    keep = row_of[rr] >= 0
    rr, cc = row_of[rr[keep]], cc[keep]
    upper, rhs = r.upper[live], r.rhs[live].astype(np.float64)
    soft = np.flatnonzero(r.soft[live])
    art = np.flatnonzero(~r.soft[live] & ~upper) if artificial else np.zeros(0, dtype=np.int64)
    n_e, n_p = soft.shape[0], P if artificial else 0
    n_a = art.shape[0] + n_p
    row_idx = np.concatenate([pos_index[model.col_pos[cols]], P + item_of_col, P + I + rr,
                              P + I + soft, P + I + art, np.arange(n_p)])
    col_idx = np.concatenate([np.arange(n), np.arange(n), cc, n + np.arange(n_e + n_a)])
    vals = np.concatenate([np.ones(2 * n + rr.shape[0]), np.where(upper[soft], -1.0, 1.0),
                           np.ones(n_a)])
    n_col = n + n_e + n_a
    A = csc_matrix((vals, (row_idx, col_idx)), shape=(P + I + R, n_col))
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    lp.num_col_ = n_col
    lp.num_row_ = P + I + R
    lp.col_cost_ = np.zeros(n_col)
    lp.col_lower_ = np.zeros(n_col)
    lp.col_upper_ = np.full(n_col, inf)  # x <= 1 is implied by the position rows
    lp.row_lower_ = np.concatenate([np.ones(P), np.full(I, -inf), np.where(upper, -inf, rhs)])
    lp.row_upper_ = np.concatenate([np.ones(P), np.ones(I), np.where(upper, rhs, inf)])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data
    return AssignmentLp(lp, it, live, soft, n_a)


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
    alp = assignment_lp(model, cols, hard_only=phase1, artificial=True)
    lp, it, live, e_rows = alp.lp, alp.items, alp.live, alp.viol_rows
    I, R, n_e = it.shape[0], live.shape[0], e_rows.shape[0]
    lv_upper = r.upper[live]
    big_m = 10.0 * (np.abs(model.col_cost).max(initial=0.0) * P + r.penalty.sum() + 1.0)
    if phase1:
        lp.col_cost_ = np.concatenate([np.zeros(n), np.zeros(n_e), np.ones(alp.n_art)])
    else:
        lp.col_cost_ = np.concatenate([-model.col_cost[cols], r.penalty[live][e_rows],
                                       np.full(alp.n_art, big_m)])
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
        col_status = [B.kLower] * lp.num_col_
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
    """A valid upper bound on every slate of the universe, from any LP multipliers.

    Weak LP duality with any pi (free), mu (clipped) and sigma_j = max(0, max_p red[j, p]) where
    red = cost - pi[p] - sum of mu over rows of the column: for every 0/1 slate x and its
    violations e, objective = c.x - pen.e <= sum(pi) + sum(sigma) + mu.rhs + constant
    + sum_k (red_k - sigma_item(k)) x_k, and every bracket is <= 0. Exact for any multipliers,
    so inexact LP duals can only weaken the bound, never invalidate it.

    Parameters
    ----------
    model : ExactModel
        The model bounded (all its universe columns).
    pi : numpy.ndarray
        float64[P], one multiplier per free position.
    mu : numpy.ndarray
        float64[R], one multiplier per count row (clipped to the signs weak duality needs).

    Returns
    -------
    ub : float
        Upper bound on the objective of every slate of the universe.
    d : numpy.ndarray
        float64[n_cols], each <= 0: every slate using column k has objective <= ub + d[k].
    """
    mu = _clip_duals(model, mu)
    red = model.col_cost - pi[np.searchsorted(model.free_pos, model.col_pos)] - row_prices(model, mu)
    sigma = np.zeros(model.items.shape[0], dtype=np.float64)
    np.maximum.at(sigma, model.col_item, red)
    ub = float(pi.sum() + sigma.sum() + mu @ model.rows.rhs + model.constant)
    return ub, red - sigma[model.col_item]


def lp_infeasible(model: ExactModel, items_in: np.ndarray, deadline: float,
                  max_rounds: int = 8) -> bool:
    """Whether weak LP duality proves that no slate meets the hard rows.

    Phase-1 column generation: the hard rows' LP over a restricted item set with artificial
    columns; price the universe with its duals (zero column costs). For any multipliers pi
    (free), mu (>= 0 on <= rows, <= 0 on >= rows, 0 on soft rows) and sigma_j = max(0, max_p
    red[j, p]) with red = -pi[p] - sum of mu over the column's rows, every 0/1 slate x meeting
    the hard rows satisfies 0 <= sum(pi) + sum(sigma) + mu.rhs + sum_k (red_k - sigma) x_k
    <= sum(pi) + sum(sigma) + mu.rhs. So a negative right-hand side is a proof of infeasibility,
    valid whatever the accuracy of the duals.

    Parameters
    ----------
    model : ExactModel
        The model.
    items_in : numpy.ndarray
        bool[M], the model items of the first restricted LP.
    deadline : float
        `time.perf_counter()` instant after which no LP is started.
    max_rounds : int, default 8
        Column-generation rounds at most.

    Returns
    -------
    bool
        True: proven infeasible. False: not proven (LP feasible, out of rounds or of time).
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
    every minimum row but the coverage ones the best 2 * rhs matching items (so the first LP
    rarely needs artificials; a coverage row is soft, it never needs one, and seeding two items
    per value of a 20-value attribute would double the first LP)."""
    u = model.problem.utility[model.items]
    L = model.length
    pick = np.zeros(model.items.shape[0], dtype=np.bool_)
    order = np.argsort(-u, kind="stable")
    pick[order[:int(np.ceil(factor * L))]] = True
    r = model.rows
    codes = model.problem.codes
    kind = model.problem.constraints.kind[r.constraint]
    for k in np.flatnonzero(~r.upper & (kind != COVERAGE)).tolist():
        match = order[codes[r.attr[k], model.items[order]] == r.value[k]]
        pick[match[:2 * int(r.rhs[k])]] = True
    if hint_slate is not None:
        pick[np.isin(model.items, hint_slate)] = True
    return np.flatnonzero(pick)


def prepare(problem: SlateProblem, *, hint: np.ndarray | None, deadline: float,
            price: bool = True, max_rounds: int = 8, seed_factor: float = 1.0) -> Prepared:
    """Build the reduced model and, with `price`, bound it by LP column generation and drop every
    column that cannot be in a slate better than the (canonical, feasible) hint.

    Reduced-cost fixing (safe): with (UB, d) from lp_upper_bound, a slate using column k has
    objective <= UB + d[k]. An optimal slate is at least as good as the incumbent, so a column
    with UB + d[k] < incumbent - tol is in no optimal slate. Columns of the canonical incumbent
    always survive (their own slate reaches the incumbent), so the incumbent stays a solution.

    Parameters
    ----------
    problem : SlateProblem
        The problem (`exact_unsupported(problem)` is None).
    hint : numpy.ndarray or None
        Any slate; its canonical form is the incumbent when it meets the active hard rules.
    deadline : float
        `time.perf_counter()` instant by which pricing stops (an LP that cannot finish in the
        time left, by LP_SECONDS_PER_COLUMN, is not started).
    price : bool, default True
        False: no LP, every universe column is kept.
    max_rounds : int, default 8
        Column-generation rounds at most.
    seed_factor : float, default 1.0
        The first restricted LP holds the top seed_factor * L items by utility (plus the hint and
        items for every minimum row).

    Returns
    -------
    Prepared
        The model, the surviving columns, the LP's column set, the bound, reduced costs,
        incumbent and statistics; `infeasible` when the LP proved the hard rules infeasible.
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
    """Reduced-cost fixing against a lower bound.

    Parameters
    ----------
    ub : float
        The LP bound of `lp_upper_bound`.
    d : numpy.ndarray
        float64[n_cols], its per-column terms.
    lower_bound : float
        The objective of a known feasible slate.

    Returns
    -------
    numpy.ndarray
        int64 columns whose bound ub + d reaches lower_bound (minus PRUNE_TOL, relative).
    """
    tol = PRUNE_TOL * max(1.0, abs(lower_bound))
    return np.flatnonzero(ub + d >= lower_bound - tol).astype(np.int64)


def kept_candidates(problem: SlateProblem, *, hint: np.ndarray | None = None,
                    time_limit_s: float = 1.0) -> np.ndarray:
    """The candidates that survive every reduction: some optimal slate uses only these.

    Parameters
    ----------
    problem : SlateProblem
        The problem.
    hint : numpy.ndarray, optional
        A slate; when feasible, LP pricing prunes against it.
    time_limit_s : float, default 1.0
        Time for the reductions and the LP.

    Returns
    -------
    numpy.ndarray
        Sorted int64 candidate indices, hard-pinned ones included.
    """
    prep = prepare(problem, hint=hint, deadline=time.perf_counter() + time_limit_s)
    m = prep.model
    used = m.items[np.unique(m.col_item[prep.cols])]
    return np.union1d(used, m.fixed[m.fixed >= 0]).astype(np.int64)


def prove_infeasible(problem: SlateProblem, *, deadline: float) -> bool:
    """Whether the active hard rules provably admit no slate.

    Parameters
    ----------
    problem : SlateProblem
        The problem.
    deadline : float
        `time.perf_counter()` instant after which no LP is started.

    Returns
    -------
    bool
        True for a trivial conflict of the model (bad or clashing pins, impossible minimums, caps
        the pins exceed) or the LP certificate of `lp_infeasible`; False means "not proven".
    """
    model = build_model(problem, objective=False, fix_pins=True)
    if model.conflict:
        return True
    if model.free_pos.shape[0] == 0 or model.n_cols == 0:
        return False
    items_in = np.zeros(model.items.shape[0], dtype=np.bool_)
    items_in[_initial_items(model, None)] = True
    return lp_infeasible(model, items_in, deadline)
