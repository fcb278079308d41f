"""A valid upper bound for every answer: the Lagrangian bound of the linear rules, with the
non-linear terms bounded so that it stays valid, and the sort bound to fall back on.

What is bounded. For an answer that relaxed the hard rules `relaxed`, the bound is an upper bound
on the objective (`solvers.evaluate.evaluate`) of every slate of length L that meets the other
active hard rules: the answer's own slate is one, so objective <= bound always, and the bound is
at least the optimum of the rules the answer kept.

How (solvers._bound_kernels.lagrangian_bound holds the relaxation and its argument):
- MAX_COUNT / MIN_COUNT / WINDOW rows, hard and soft, enter with Lagrange multipliers (soft ones
  capped at their penalty); pins are kept exactly (hard: the cell is fixed; soft: a bonus at the
  cell and the penalty as a constant). The assignment left is solved exactly, over a candidate
  set reduced by a safe dominance argument.
- Similarity diversity: with weights >= 0 each position's term w[p] * div_p is <= 0 (DPP: the
  residual of a unit vector is <= 1, so beta * log r <= 0; MMR: -beta * max(0, cos) <= 0) and is
  bounded by 0; a negative weight w[p] < 0 adds |w[p]| times the term's largest magnitude
  (beta * log(1 / DPP_EPS) for DPP, beta for MMR).
- Calibration: penalty * KL >= 0 is subtracted: bounded by 0.
- Coverage is linearised: covered = sum_v y_v with y_v <= 1, y_v <= (items of value v in the
  prefix), sum_v y_v <= max_coverable; the middle rows enter with multipliers in [0, penalty]
  (a bonus on the items of v in the prefix), the rest is maximised in closed form.
- Weights that are not non-increasing and >= 0 make the sort bound invalid; the Lagrangian bound
  does not need them (the candidate reduction is then switched off).

Fallback. If the kernel reports a non-finite value or an inconsistency (clashing hard pins), the
answer keeps the sort bound, and `SlateBound.method` says so ("sort (fallback: ...)").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from solvers import _bound_kernels as _k
from solvers._weights_kernels import monotone as _monotone
from solvers.codes import CALIBRATION, COVERAGE, DIV_DPP, DPP_EPS, PIN, WINDOW
from solvers.evaluate import objective_upper_bound_unconstrained
from solvers.problem import SlateProblem

#: Subgradient steps when the caller gives no budget (~0.5-3 us each at N=1000, L=20).
DEFAULT_STEPS = 60

_NO_MU = np.zeros(0, dtype=np.float64)
_FALLBACK = {_k.BOUND_NOT_FINITE: "a non-finite value", _k.BOUND_PIN_CLASH: "clashing hard pins"}


@dataclass(frozen=True, slots=True)
class SlateBound:
    """An upper bound on the objective and how it was obtained."""

    value: float  # the bound (min of the Lagrangian and, when valid, the sort bound)
    method: str  # "lagrangian" | "sort" | "sort (fallback: <why>)"
    sort_bound: float  # sum_p w[p] * (p-th largest utility); valid only for monotone weights
    lagrangian: float  # the Lagrangian bound with the non-linear constants, NaN when not computed
    steps: int = 0  # subgradient steps taken
    candidates: int = 0  # items the last assignment considered
    terms: tuple[str, ...] = ()  # non-linear terms bounded by a constant ("dpp", "coverage", ...)


def monotone_weights(w: np.ndarray) -> bool:
    """Whether the position weights are all >= 0 and non-increasing (the sort bound is then
    valid): `solvers._weights_kernels.monotone` on a float64 C-contiguous array, the same test
    in Python on anything else.

    Parameters
    ----------
    w : ndarray, shape (L,)

    Returns
    -------
    bool
    """
    if type(w) is np.ndarray and w.dtype == np.float64 and w.ndim == 1 and w.flags.c_contiguous:
        return bool(_monotone(w))
    wl = np.asarray(w).tolist()
    return all(x >= 0.0 for x in wl) and all(a >= b for a, b in zip(wl, wl[1:]))


def bounded_rows(problem: SlateProblem, relaxed: np.ndarray | None = None) -> np.ndarray:
    """The rows the bound honours: active hard rows not relaxed by the answer, and every soft
    MAX_COUNT / MIN_COUNT / WINDOW / PIN / COVERAGE row (calibration is bounded apart).

    Parameters
    ----------
    problem : SlateProblem
    relaxed : ndarray of bool, shape (C,), optional
        The hard rows the answer gave up.

    Returns
    -------
    ndarray of bool, shape (C,)
    """
    t = problem.constraints
    keep = t.hard & problem.active
    if relaxed is not None:
        keep &= ~relaxed
    keep |= ~t.hard
    keep &= (t.kind <= PIN) | (t.kind == COVERAGE)  # MAX_COUNT, MIN_COUNT, WINDOW, PIN (0..3)
    return keep


def multiplier_size(problem: SlateProblem, use: np.ndarray) -> int:
    """Length of the multiplier vector the kernel lays out for rows `use` (one per value of the
    row's attribute, times the number of windows for a WINDOW row)."""
    t = problem.constraints
    L = problem.length
    n = 0
    for c in np.flatnonzero(use & (((t.kind != PIN) & (t.kind <= WINDOW)) | (t.kind == COVERAGE))).tolist():
        nv = int(problem.n_values[t.attr[c]])
        n += nv * (max(1, L - int(t.size[c]) + 1) if t.kind[c] == WINDOW else 1)
    return n


def nonlinear_constant(problem: SlateProblem) -> tuple[float, tuple[str, ...]]:
    """An upper bound on the non-linear terms of the objective, and their names.

    Returns
    -------
    constant : float
        >= the sum over positions of w[p] * div_p, minus every coverage / calibration penalty
        (0 unless some weight is negative and diversity is on).
    terms : tuple of str
        The terms bounded ("dpp" or "mmr", "coverage", "calibration").
    """
    terms: list[str] = []
    const = 0.0
    if problem.diversity_on:
        mode = int(problem.div_mode)
        terms.append("dpp" if mode == DIV_DPP else "mmr")
        worst = problem.div_weight * (-math.log(DPP_EPS) if mode == DIV_DPP else 1.0)
        const += -sum(x for x in problem.position_weight.tolist() if x < 0) * worst
    kinds = set(problem.constraints.kind.tolist())
    if COVERAGE in kinds:
        terms.append("coverage")
    if CALIBRATION in kinds:
        terms.append("calibration")
    return const, tuple(terms)


def linear_objective(problem: SlateProblem, evaluation) -> float:
    """The part of a slate's objective the Lagrangian models: the utility part minus the
    penalties of its soft MAX_COUNT / MIN_COUNT / WINDOW / PIN rows (no diversity, coverage or
    calibration term). For a slate that meets the rules the bound honours, it is a lower bound
    on the relaxation's optimum, hence the best target for the subgradient steps (the full
    objective, lower by the non-linear terms, would leave them short of it).

    Parameters
    ----------
    problem : SlateProblem
    evaluation : solvers.problem.Evaluation
        `evaluate(problem, slate)`.

    Returns
    -------
    float
    """
    t = problem.constraints
    hard, kind = t.hard.tolist(), t.kind.tolist()
    soft = [c for c in range(len(kind)) if not hard[c] and kind[c] <= PIN]
    if not soft:  # the dot product of nothing is 0.0
        return float(evaluation.utility_part - 0.0)
    if len(soft) == 1:  # a dot product of one term is its product
        c = soft[0]
        return float(evaluation.utility_part - float(t.penalty[c]) * float(evaluation.violation[c]))
    return float(evaluation.utility_part - np.dot(t.penalty[soft], evaluation.violation[soft]))


def slate_bound(problem: SlateProblem, *, relaxed: np.ndarray | None = None,
                incumbent: float = -math.inf, steps: int = DEFAULT_STEPS,
                mu: np.ndarray | None = None, sort_bound: float | None = None) -> SlateBound:
    """An upper bound on every slate meeting the hard rules the answer kept.

    Parameters
    ----------
    problem : SlateProblem
        The compiled problem.
    relaxed : ndarray of bool, shape (C,), optional
        Hard rows the answer relaxed (not honoured by the bound).
    incumbent : float, default -inf
        A lower bound on the relaxation's optimum: `linear_objective` of a slate known to meet
        the honoured rows (the answer's), or its objective. The target of the subgradient
        steps, which stop when the bound meets it; it never makes the bound invalid.
    steps : int, default DEFAULT_STEPS
        Subgradient steps at most (0: the bound at the starting multipliers only).
    mu : ndarray of float64, optional
        Starting multipliers (length `multiplier_size`), updated in place: a warm start.
    sort_bound : float, optional
        The sort bound when the caller has it (the greedy computes it for free).

    Returns
    -------
    SlateBound
    """
    t = problem.constraints
    sb = objective_upper_bound_unconstrained(problem) if sort_bound is None else float(sort_bound)
    w = problem.position_weight
    sort_ok = monotone_weights(w) and math.isfinite(sb)
    const, terms = nonlinear_constant(problem)
    if problem.length == 0:
        return SlateBound(0.0, "lagrangian", sb, 0.0, terms=terms)
    use = bounded_rows(problem, relaxed)
    if mu is None:
        mu = _NO_MU  # the kernel starts from 0
    elif mu.dtype != np.float64 or not mu.flags.c_contiguous or mu.ndim != 1 \
            or mu.shape[0] != multiplier_size(problem, use):
        raise ValueError(f"mu: must be a C-contiguous float64 array of length "
                         f"{multiplier_size(problem, use)}, got {mu.dtype}{mu.shape}")
    out = np.empty(5, dtype=np.float64)
    _k.lagrangian_bound(np.ascontiguousarray(problem.utility, dtype=np.float64),
                        np.ascontiguousarray(w, dtype=np.float64), problem.codes,
                        problem.n_values, t.rules, np.ascontiguousarray(t.penalty, dtype=np.float64),
                        np.ascontiguousarray(t.hard, dtype=np.bool_), use,
                        float(incumbent), int(max(0, steps)), mu, out)
    status = int(out[3])
    value = float(out[0]) + const
    if status != _k.BOUND_OK or not math.isfinite(value):
        why = _FALLBACK.get(status, "a non-finite value")
        return SlateBound(sb if sort_ok else math.inf, f"sort (fallback: {why})", sb, math.nan,
                          int(out[1]), int(out[4]), terms)
    # a relative safety margin for the rounding of the assignment's sums
    value += 1e-11 * max(1.0, abs(value))
    if sort_ok and sb <= value:
        return SlateBound(sb, "sort", sb, value, int(out[1]), int(out[4]), terms)
    return SlateBound(value, "lagrangian", sb, value, int(out[1]), int(out[4]), terms)


def warmup() -> None:
    """Run the kernel (compiled, or loaded from the Numba cache, at import) once on a tiny
    problem with a cap, a soft minimum, a window and a hard and a soft pin."""
    from solvers.codes import MAX_COUNT, MIN_COUNT
    from solvers.problem import ConstraintTable

    table = ConstraintTable.from_rows([
        dict(kind=MAX_COUNT, attr=0, bound=1), dict(kind=MIN_COUNT, attr=0, value=1, bound=1,
                                                     hard=False, penalty=1.0),
        dict(kind=WINDOW, attr=0, bound=1, size=2), dict(kind=PIN, item=3, position=2),
        dict(kind=PIN, item=1, position=0, hard=False, penalty=0.5),
    ], length=3)
    problem = SlateProblem(
        utility=np.array([3.0, 2.0, 1.0, 0.5]), position_weight=np.array([1.0, 0.6, 0.5]),
        codes=np.array([[0, 1, 0, 1]], dtype=np.int64), n_values=np.array([2], dtype=np.int64),
        constraints=table, active=np.ones(5, dtype=np.bool_), pre_reason=np.zeros(5, dtype=np.int64))
    slate_bound(problem, steps=3)
