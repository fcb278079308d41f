"""Per-request fairness of exposure: an LP over ranking matrices, its Birkhoff-von Neumann
decomposition and seeded sampling.

Reference: A. Singh, T. Joachims, "Fairness of Exposure in Rankings", KDD 2018
(arXiv:1802.07281), Sections 3-4.

A stochastic ranking of M candidates into K <= M positions is a matrix P[M, K] >= 0 with every
position filled (sum_i P[i, j] = 1) and every item used at most once (sum_j P[i, j] <= 1); P[i, j]
is the probability that item i is shown at position j. With position weights v (the examination
probability of a position, e.g. 1 / log2(1 + j)), item i's expected exposure is (P v)_i and the
expected utility is u^T P v. The paper's LP maximises utility subject to a linear fairness
constraint on exposure. With groups G_g and
    Exposure(G_g) = (1 / |G_g|) sum_{i in G_g} (P v)_i        (mean exposure per member),
    Merit(G_g)    = (1 / |G_g|) sum_{i in G_g} u_i            (mean utility),
the two criteria built here are the paper's
    demographic_parity:   Exposure(G_a) = Exposure(G_b)                        for all groups,
    disparate_treatment:  Exposure(G_a) / Merit(G_a) = Exposure(G_b) / Merit(G_b),
relaxed to "max over groups - min over groups <= tolerance" (tolerance in units of mean exposure
for demographic parity, of exposure per unit of merit for disparate treatment). The paper states
them for two groups; for G groups we ask that all G quantities lie within `tolerance` of each
other, written with one free variable t as |quantity_g - t| <= tolerance / 2 (2G rows).
The paper's third criterion (disparate impact, on click-through rates) is not built.

CVXPY, compiled once per shape (Disciplined Parametrized Programming). u, v, the tolerance and a
group coefficient matrix C[G, M] are `cp.Parameter`s. The products u^T P v and C P v multiply two
parameters with a variable, which DPP forbids; an auxiliary variable e = P v (item exposure, one
row per item, linear in P with the parameter v) makes every product "parameter times variable":
the objective is u @ e and the fairness rows are C @ e - t. C carries the group membership and
the per-criterion normalisation: C[g, i] = 1 / |G_g| (demographic parity) or 1 / (|G_g| Merit_g)
(disparate treatment) for i in G_g, 0 elsewhere. So the problem is compiled once per
(M, K, G, criterion) and each `solve` only sets parameter values. A group with no member among
the M candidates gets a copy of a non-empty group's row (a duplicate constraint), not a zero row,
which would pin t to 0.

Solver, chosen by measurement (benchmarks/bench_exposure.py: every installed backend on the same
instances, interleaved; K = M, G = 2, demographic parity, tolerance 0.01; medians on a 2-CPU
machine under a load average of ~2.7 from concurrent work, so absolute numbers are inflated):

    re-solve ms   CLARABEL  HIGHS  GLOP  SCIPY  SCS   OSQP
    M = 20           4.2     4.8    5.1   7.3    8.2   82 (often stops at its iteration limit)
    M = 50            38      52     36    81     80   353

CLARABEL (interior point) is the fastest at M <= 20, where the latency target lies, and on par
with GLOP at M = 50; GLOP's first solve also pays ~90 ms of OR-Tools start-up. Nearly all the
time is inside the solver (2.6 of 4.2 ms at M = 20); the rest is CVXPY's parameter-to-matrix
product and this wrapper. Two formulations that did not help, measured: baking v in as a constant
(no e variable; denser rows, 3.3 vs 2.6 ms in CLARABEL at M = 20) and CLARABEL's in-place data
update between solves (warm_start with presolve off: no gain). An interior-point optimum sits
inside the optimal face, so CLARABEL's P mixes more rankings than a simplex vertex: a median of 7
Birkhoff-von Neumann components at M = K = 20 and 18 at M = K = 50, against 2 for HiGHS or GLOP
(one fairness row active: an edge between two rankings). Both are optimal; pass
solver="HIGHS" (or "GLOP") to get vertex solutions.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "CRITERIA",
    "DEFAULT_SOLVER_OPTIONS",
    "ExposureLP",
    "LPResult",
    "birkhoff_von_neumann",
    "expected_exposure",
    "sample_ranking",
]

CRITERIA = ("demographic_parity", "disparate_treatment")

# Time-limit option name per backend (seconds), used when solve(..., time_limit_ms=...) is given.
# Backends not listed here get no time limit (the option is ignored for them).
_TIME_LIMIT_OPTION = {"CLARABEL": "time_limit", "HIGHS": "time_limit", "SCS": "time_limit_secs",
                      "OSQP": "time_limit", "GLOP": "time_limit_sec"}
_SOLVED = ("optimal", "optimal_inaccurate")
# Default backend options. CLARABEL's default tolerances (1e-8) leave entries of ~1e-7 where the
# optimum has zeros; at 1e-10 (one more iteration, ~0.3 ms at M = 20) the matrix is cleaner and
# its Birkhoff-von Neumann decomposition has several times fewer components (median 7 vs 32 at
# M = K = 20) and a third of the reconstruction error (worst 1.5e-8 against 4.8e-8 up to M = 50).
DEFAULT_SOLVER_OPTIONS = {
    "CLARABEL": {"tol_feas": 1e-10, "tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10},
}

# CVXPY warns "Solution may be inaccurate" on optimal_inaccurate / user_limit; `status` carries
# that information to the caller, so the warning is only noise in a server log.
warnings.filterwarnings("ignore", message="Solution may be inaccurate", category=UserWarning)


@dataclass(frozen=True)
class LPResult:
    """Outcome of one ExposureLP.solve (frozen; made by `ExposureLP.solve`, not by callers).

    Read `status` first: P and the exposures are only present when status is "optimal" or
    "optimal_inaccurate"; otherwise P is None and objective, the exposures and disparity are
    nan. M, K and G are the shape of the ExposureLP that produced it.

    Parameters
    ----------
    P : ndarray of float64, shape (M, K), or None
        Ranking matrix, clipped to [0, 1] (solver round-off): P[i, j] is the probability that
        item i is shown at position j. None without a solution.
    objective : float
        Expected utility u^T P v (nan without a solution).
    status : str
        CVXPY's status ("optimal", "optimal_inaccurate", "infeasible", "user_limit",
        "solver_error", ...) or "nonpositive_merit" (disparate treatment with a group whose mean
        utility is <= 0: the ratio is undefined and nothing is solved).
    exposure_by_group : ndarray of float64, shape (G,)
        Total expected exposure sum_{i in g} (P v)_i of each group (nan without a solution).
    solve_ms : float
        Wall time of the whole solve call (parameter update, CVXPY, solver), in milliseconds.
    mean_exposure_by_group : ndarray of float64, shape (G,)
        The same per member (the paper's Exposure(G_g)); nan for groups without members (and
        for every group without a solution).
    unconstrained_objective : float
        The best utility without the fairness rows (top-K utilities against the sorted position
        weights), present whatever the status; objective / unconstrained_objective is the price
        of fairness.
    disparity : float
        max - min over non-empty groups of the constrained quantity (mean exposure, or mean
        exposure / merit), to compare with the tolerance (nan without a solution).
    """

    P: np.ndarray | None
    objective: float
    status: str
    exposure_by_group: np.ndarray
    solve_ms: float
    mean_exposure_by_group: np.ndarray
    unconstrained_objective: float
    disparity: float


class ExposureLP:
    """The fairness-of-exposure LP for one shape, compiled once and re-solved with new data.

    ExposureLP(M, K, G, criterion) builds the parametrised problem; the first `solve` compiles it
    (tens of ms), later solves only update parameters (a few ms at M = 20, see the module
    docstring).

    Parameters
    ----------
    M : int
        Number of candidates (items), an integer >= 1.
    K : int
        Number of positions, an integer in [1, M].
    G : int
        Number of groups, an integer >= 1; `solve` takes group indices in [0, G).
    criterion : {"demographic_parity", "disparate_treatment"}, default "demographic_parity"
        The fairness constraint (one of CRITERIA; definitions in the module docstring).
    solver : str, default "CLARABEL"
        Any installed CVXPY backend (one of cvxpy.installed_solvers()).
    solver_options : dict or None, default None
        Backend options passed to every solve; replaces DEFAULT_SOLVER_OPTIONS[solver] (None:
        use those defaults, {} for none). Copied.

    Attributes
    ----------
    M, K, G : int
        The shape, as given.
    criterion, solver : str
        As given.
    solver_options : dict
        The options passed to every solve.

    Raises
    ------
    ValueError
        If M, K or G is not an integer in its range, criterion is not in CRITERIA, or solver is
        not installed; the message names the argument.

    Notes
    -----
    Parameter values are shared state, so `solve` holds a lock: threads sharing an instance are
    serialised; give each worker thread its own instance for parallel solves.
    """

    def __init__(self, M: int, K: int, G: int, criterion: str = "demographic_parity",
                 solver: str = "CLARABEL", solver_options: dict | None = None) -> None:
        if int(M) != M or M < 1:
            raise ValueError(f"M: must be an integer >= 1, got {M!r}")
        if int(K) != K or not 1 <= K <= M:
            raise ValueError(f"K: must be an integer in [1, M={M}], got {K!r}")
        if int(G) != G or G < 1:
            raise ValueError(f"G: must be an integer >= 1, got {G!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion: must be one of {list(CRITERIA)}, got {criterion!r}")
        if solver not in cp.installed_solvers():
            raise ValueError(f"solver: must be one of the installed {cp.installed_solvers()}, "
                             f"got {solver!r}")
        self.M, self.K, self.G = int(M), int(K), int(G)
        self.criterion, self.solver = criterion, solver
        self.solver_options = dict(DEFAULT_SOLVER_OPTIONS.get(solver, {}) if solver_options is None
                                   else solver_options)
        self._lock = threading.Lock()

        # data
        self._u = cp.Parameter(self.M, name="utility")
        self._v = cp.Parameter(self.K, nonneg=True, name="position_weight")
        self._C = cp.Parameter((self.G, self.M), name="group_coefficients")
        self._tol = cp.Parameter(nonneg=True, name="tolerance")
        # variables
        self._P = cp.Variable((self.M, self.K), nonneg=True, name="P")
        e = cp.Variable(self.M, name="item_exposure")
        t = cp.Variable(name="common_level")
        # constraints
        fair = self._C @ e - t
        constraints = [
            cp.sum(self._P, axis=0) == 1,  # every position filled
            cp.sum(self._P, axis=1) <= 1,  # every item at most once
            e == self._P @ self._v,
            fair <= self._tol / 2,
            fair >= -self._tol / 2,
        ]
        # objective
        self._problem = cp.Problem(cp.Maximize(self._u @ e), constraints)
        assert self._problem.is_dcp(dpp=True)

    def solve(self, u: np.ndarray, groups: np.ndarray, v: np.ndarray, tolerance: float = 0.0,
              *, time_limit_ms: float | None = None) -> LPResult:
        """Maximise u^T P v subject to the criterion within `tolerance`.

        Malformed input raises; everything the solver can run into (infeasible tolerance, time
        limit, numerical failure) comes back as the result's `status`.

        Parameters
        ----------
        u : array_like of float, shape (M,)
            Utilities, finite; converted to float64. For disparate treatment, every non-empty
            group needs a positive mean (else the status is "nonpositive_merit", not an error).
        groups : array_like of int, shape (M,)
            Group index of each candidate, in [0, G). Must have an integer dtype.
        v : array_like of float, shape (K,)
            Non-negative, finite position weights (examination probabilities); converted to
            float64.
        tolerance : float, default 0.0
            Allowed max - min of the constrained quantity over groups, finite and >= 0 (units in
            the module docstring).
        time_limit_ms : float or None, default None
            Keyword-only. Passed to the backend's own time limit (CLARABEL, HIGHS, GLOP, SCS,
            OSQP; ignored for others; negative values count as 0); when it stops the solver the
            status is "user_limit" and P is None. CVXPY's own work (~1 ms at M = 20) is not
            covered by it. None: no time limit.

        Returns
        -------
        LPResult
            The status, P and its exposures, objective, unconstrained objective, disparity and
            wall time of this call.

        Raises
        ------
        ValueError
            On malformed input (shapes, NaN, out-of-range groups, negative tolerance), naming
            the argument.
        """
        t0 = time.perf_counter()
        u, groups, v = self._validate(u, groups, v, tolerance)
        counts = np.bincount(groups, minlength=self.G).astype(np.float64)
        unconstrained = _best_unconstrained(u, v)
        C = np.zeros((self.G, self.M))
        C[groups, np.arange(self.M)] = 1.0 / counts[groups]
        if self.criterion == "disparate_treatment":
            merit = np.bincount(groups, weights=u, minlength=self.G) / np.maximum(counts, 1)
            if np.any(merit[counts > 0] <= 0):
                return self._result(None, u, groups, v, "nonpositive_merit", t0, unconstrained)
            C[groups, np.arange(self.M)] /= merit[groups]
        empty = counts == 0
        if empty.any():
            C[empty] = C[np.argmax(~empty)]  # duplicate a non-empty group's row
        opts = dict(self.solver_options)
        if time_limit_ms is not None and self.solver in _TIME_LIMIT_OPTION:
            opts[_TIME_LIMIT_OPTION[self.solver]] = max(time_limit_ms, 0.0) / 1000.0
        with self._lock:
            self._u.value, self._v.value, self._C.value = u, v, C
            self._tol.value = float(tolerance)
            try:
                self._problem.solve(solver=self.solver, **opts)
                status = str(self._problem.status)
            except cp.error.SolverError:
                status = "solver_error"
            P = self._P.value if status in _SOLVED else None
        if P is not None:
            P = np.clip(P, 0.0, 1.0)
        return self._result(P, u, groups, v, status, t0, unconstrained)

    # -- helpers --------------------------------------------------------------------------------

    def _validate(self, u, groups, v, tolerance):
        u = np.ascontiguousarray(u, dtype=np.float64)
        v = np.ascontiguousarray(v, dtype=np.float64)
        groups = np.asarray(groups)
        if u.shape != (self.M,):
            raise ValueError(f"u: must have shape ({self.M},), got {u.shape}")
        if not np.all(np.isfinite(u)):
            raise ValueError("u: must be finite, got NaN or inf")
        if groups.shape != (self.M,) or not np.issubdtype(groups.dtype, np.integer):
            raise ValueError(f"groups: must be an integer array of shape ({self.M},), "
                             f"got {groups.dtype} {groups.shape}")
        groups = groups.astype(np.int64)
        if groups.size and (groups.min() < 0 or groups.max() >= self.G):
            raise ValueError(f"groups: values must be in [0, {self.G}), "
                             f"got [{groups.min()}, {groups.max()}]")
        if v.shape != (self.K,):
            raise ValueError(f"v: must have shape ({self.K},), got {v.shape}")
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError("v: must be finite and >= 0")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"tolerance: must be a finite number >= 0, got {tolerance!r}")
        return u, groups, v

    def _result(self, P, u, groups, v, status, t0, unconstrained) -> LPResult:
        nan = np.full(self.G, np.nan)
        if P is None:
            return LPResult(None, math.nan, status, nan, (time.perf_counter() - t0) * 1e3,
                            nan.copy(), unconstrained, math.nan)
        total = expected_exposure(P, v, groups, self.G)
        counts = np.bincount(groups, minlength=self.G)
        mean = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
        q = mean
        if self.criterion == "disparate_treatment":
            q = mean / (np.bincount(groups, weights=u, minlength=self.G) / np.maximum(counts, 1))
        qs = q[counts > 0]
        return LPResult(P, float(u @ P @ v), status, total, (time.perf_counter() - t0) * 1e3,
                        mean, unconstrained, float(qs.max() - qs.min()))


def _best_unconstrained(u: np.ndarray, v: np.ndarray) -> float:
    """max u^T P v over ranking matrices: the K best utilities against the sorted weights
    (rearrangement inequality; v >= 0 so every position is worth filling with the best left)."""
    K = v.shape[0]
    top = np.sort(u)[::-1][:K]
    return float(top @ np.sort(v)[::-1])


def expected_exposure(P: np.ndarray, v: np.ndarray, groups: np.ndarray, G: int,
                      per_member: bool = False) -> np.ndarray:
    """Expected exposure of each group under a ranking matrix.

    Group g's exposure is sum_{i in g} sum_j P[i, j] v[j]; divided by the group's size if
    `per_member` (nan for empty groups), which is the paper's Exposure(G_g).

    Parameters
    ----------
    P : array_like of float, shape (M, K)
        Ranking matrix: P[i, j] is the probability that item i is shown at position j.
    v : array_like of float, shape (K,)
        Position weights.
    groups : array_like of int, shape (M,)
        Group index of each item, in [0, G) (not checked); converted to int64.
    G : int
        Number of groups.
    per_member : bool, default False
        Divide each group's total by its number of members.

    Returns
    -------
    ndarray of float64, shape (G,)
        Total (or, with `per_member`, mean per member) expected exposure of each group.
    """
    groups = np.asarray(groups, dtype=np.int64)
    item = np.asarray(P) @ np.asarray(v, dtype=np.float64)
    total = np.bincount(groups, weights=item, minlength=G)
    if not per_member:
        return total
    counts = np.bincount(groups, minlength=G)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def _northwest_corner(row_sums: np.ndarray, n_cols: int) -> np.ndarray:
    """A sparse non-negative [len(row_sums), n_cols] matrix with the given row sums and unit
    column sums (sum(row_sums) must be n_cols): the transportation problem's north-west corner
    rule, at most rows + cols - 1 non-zeros."""
    D = np.zeros((row_sums.shape[0], n_cols))
    i, j = 0, 0
    r = row_sums.astype(np.float64).copy()
    c = np.ones(n_cols)
    while i < r.shape[0] and j < n_cols:
        x = min(r[i], c[j])
        D[i, j] = x
        r[i] -= x
        c[j] -= x
        if r[i] <= c[j]:
            i += 1
        else:
            j += 1
    return D


def birkhoff_von_neumann(P: np.ndarray, tol: float = 1e-9) -> list[tuple[float, np.ndarray]]:
    """Decompose a ranking matrix into a convex combination of rankings.

    sum_w w * X(ranking) over the result reconstructs P, X the 0/1 item-by-position matrix.

    Parameters
    ----------
    P : array_like of float, shape (M, K)
        Ranking matrix, K <= M, columns summing to 1 and rows to <= 1 (as LPResult.P).
        Converted to float64 with negative entries clipped to 0; P itself is not modified.
    tol : float, default 1e-9
        Entries of the residual above tol form the support searched for matchings; the loop
        stops once the weights reach 1 - tol.

    Returns
    -------
    list of tuple of (float, ndarray of int64, shape (K,))
        [(weight, ranking)], weights summing to 1, ranking[j] = the item at position j (K
        distinct items). Distinct rankings, in the order they were first found.

    Raises
    ------
    ValueError
        If P is not a 2-D [M, K] matrix with K <= M, or if its support has no perfect matching
        at all (not a ranking matrix).

    Notes
    -----
    Birkhoff-von Neumann (as used by Singh & Joachims, Sec. 4.2): if K < M, P is first made
    square and doubly stochastic with M - K dummy positions that absorb each item's slack
    1 - sum_j P[i, j] (filled by the north-west corner rule, so the padding adds at most
    2M - K - 1 non-zeros rather than a dense block). Then repeatedly: find a perfect matching
    inside the support (entries > tol) of the residual - by linear_sum_assignment on -log(entry),
    which prefers large entries and so large weights - take its smallest entry as the weight,
    subtract, and stop when the weights reach 1 - tol or no perfect matching is left in the
    support (round-off). Each step zeroes at least one entry, so there are at most nnz steps
    (Marcus-Ree: (M-1)^2 + 1). Components giving the same top-K ranking (they differ only in
    dummy positions) are merged. The weights are normalised to sum to 1.

    Accuracy: the result is exactly a convex combination of rankings, so its distance to P is
    at least P's own distance to the ranking polytope, i.e. the solver's feasibility error.
    Measured max |reconstruction - P| on CLARABEL solutions: 1e-8 to 5e-8 up to M = 50.
    (Rescaling P to exact double stochasticity first, Sinkhorn-Knopp, did not reduce it and cost
    several ms.)
    """
    A = np.clip(np.asarray(P, dtype=np.float64), 0.0, None)
    if A.ndim != 2 or A.shape[1] > A.shape[0]:
        raise ValueError(f"P: must be a 2-D [M, K] matrix with K <= M, got shape {A.shape}")
    M, K = A.shape
    if K < M:
        slack = np.clip(1.0 - A.sum(axis=1), 0.0, None)
        slack *= (M - K) / slack.sum() if slack.sum() > 0 else 0.0
        A = np.hstack([A, _northwest_corner(slack, M - K)])
    R = A
    big = 1e6  # any assignment through a non-support entry costs more than M * -log(tol)
    merged: dict[bytes, int] = {}
    weights: list[float] = []
    rankings: list[np.ndarray] = []
    total = 0.0
    for _ in range(M * M + 1):
        if total >= 1.0 - tol:
            break
        support = R > tol
        cost = np.where(support, -np.log(np.where(support, R, 1.0)), big)
        rows, cols = linear_sum_assignment(cost)
        if not support[rows, cols].all():
            break
        w = float(R[rows, cols].min())
        R[rows, cols] -= w
        total += w
        ranking = np.empty(M, dtype=np.int64)
        ranking[cols] = rows
        ranking = ranking[:K]
        key = ranking.tobytes()
        if key in merged:
            weights[merged[key]] += w
        else:
            merged[key] = len(weights)
            weights.append(w)
            rankings.append(ranking)
    if not weights:
        raise ValueError("P: has no perfect matching in its support (not a ranking matrix)")
    s = math.fsum(weights)
    return [(w / s, r) for w, r in zip(weights, rankings)]


def sample_ranking(decomposition: list[tuple[float, np.ndarray]],
                   rng: np.random.Generator) -> np.ndarray:
    """Draw one ranking (K item indices, a fresh copy) with probability equal to its weight.

    Uses exactly one rng.random() draw, so a seeded Generator gives a reproducible sequence.

    Parameters
    ----------
    decomposition : list of tuple of (float, ndarray of int, shape (K,))
        Non-empty list of (weight, ranking) pairs, as returned by `birkhoff_von_neumann`. Weights
        that do not sum to 1 act as relative weights (each is divided by their total).
    rng : numpy.random.Generator
        The source of the single uniform draw.

    Returns
    -------
    ndarray, shape (K,)
        A copy of the chosen ranking (int64 for `birkhoff_von_neumann`'s output): ranking[j] is
        the item at position j.

    Raises
    ------
    ValueError
        If `decomposition` is empty.
    """
    if not decomposition:
        raise ValueError("decomposition: must hold at least one (weight, ranking) pair")
    cum = np.cumsum([w for w, _ in decomposition])
    idx = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return decomposition[min(idx, len(decomposition) - 1)][1].copy()
