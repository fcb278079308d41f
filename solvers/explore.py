"""Exploration sampling: a stochastic constrained greedy with exact propensities.

`sample_slate` keeps every hard rule the greedy keeps (the same feasibility test, pins,
relaxations) and draws the item of each free position instead of taking the argmax, by one of
two schemes (definitions in solvers._explore_kernels' module docstring):

* EXPLORE_EPSILON: with probability 1 - epsilon the greedy's pick, with probability epsilon a
  uniform draw among the top_m feasible candidates by the position's gain (ties to the lower
  index). Slot probability (1 - eps) [i = best] + eps [i in M] / |M|.
* EXPLORE_SOFTMAX (Plackett-Luce): exp((g_i - g_max) / T) / sum_j exp((g_j - g_max) / T) over
  the feasible candidates within SOFTMAX_CUT * T of the best gain (with top_m: only over the
  top_m feasible candidates by gain).

Each answer carries the probability of each draw given the positions before it (`slot_prob`),
their product (`joint`, `log_joint`) and running products (`cascade`). `marginals` gives, for a
slate, the probability that each of its items is at its position: exactly 1 / 0 when the sampling
is deterministic, else by Monte Carlo over seeded draws, with its standard error.

The scheme codes are in solvers.codes (EXPLORE_EPSILON = 1, EXPLORE_SOFTMAX = 2), re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from solvers import _explore_kernels as _x
from solvers import _greedy_kernels as _k
from solvers.codes import DIV_NONE, EXPLORE_EPSILON, EXPLORE_NAMES, EXPLORE_SOFTMAX, PIN, SOFTMAX_CUT  # noqa: F401
from solvers.greedy import check_extensions, kernel_embeddings
from solvers.problem import SlateProblem

SCHEME_NAMES = {EXPLORE_EPSILON: EXPLORE_NAMES[EXPLORE_EPSILON], EXPLORE_SOFTMAX: EXPLORE_NAMES[EXPLORE_SOFTMAX]}
_U64 = 1 << 64
_ALL = 1 << 62  # top_m None: every feasible candidate


@dataclass(frozen=True, slots=True)
class ExploreResult:
    """A sampled slate with its propensities.

    slate:          int64[L]   candidate index at each position
    slot_prob:      float64[L] probability of the item drawn at p given positions < p (pins: 1)
    support:        int64[L]   number of items that had a probability > 0 at p (pins: 1)
    joint:          float      prod_p slot_prob[p] (= cascade[-1])
    log_joint:      float      sum_p log slot_prob[p] (summed in position order, pins skipped)
    cascade:        float64[L] prod_{q <= p} slot_prob[q] (running products, in position order)
    relaxed, relax_reason, relax_position: as SolveResult
    status:         "feasible" | "relaxed"
    scheme, seed:   what drew it
    """

    slate: np.ndarray
    slot_prob: np.ndarray
    support: np.ndarray
    joint: float
    log_joint: float
    cascade: np.ndarray
    relaxed: np.ndarray
    relax_reason: np.ndarray
    relax_position: np.ndarray
    status: str
    scheme: int
    seed: int

    @property
    def deterministic(self) -> bool:
        """Whether every position had one possible item (so the sampling cannot give another
        slate: its probability is 1)."""
        return bool(np.all(self.support <= 1))


@dataclass(frozen=True, slots=True)
class Marginals:
    """P(item slate[p] at position p), per position.

    prob:       float64[L]  the probability (frequency over `samples` draws, or exact)
    stderr:     float64[L]  its standard error sqrt(q (1 - q) / S) (0 when exact)
    samples:    int         draws used (0 when exact)
    exact:      bool        the sampling is deterministic: prob is exactly 1 or 0
    items:      int64[I]    the items that occurred at some position in some draw (ascending)
    frequency:  float64[I, L] frequency of items[r] at position p over the draws
    """

    prob: np.ndarray
    stderr: np.ndarray
    samples: int
    exact: bool
    items: np.ndarray
    frequency: np.ndarray


def _check(scheme, epsilon, top_m, temperature, seed) -> tuple[int, float, int, float, int]:
    """Validated (scheme, epsilon, top_m, temperature, seed); top_m None -> 2**62 (all)."""
    if scheme not in SCHEME_NAMES:
        raise ValueError(f"scheme: must be {EXPLORE_EPSILON} (EXPLORE_EPSILON) or "
                         f"{EXPLORE_SOFTMAX} (EXPLORE_SOFTMAX), got {scheme!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < _U64:
        raise ValueError(f"seed: must be an integer in [0, 2**64), got {seed!r}")
    if top_m is None:
        top_m = _ALL
    elif isinstance(top_m, bool) or not isinstance(top_m, (int, np.integer)) or top_m < 1:
        raise ValueError(f"top_m: must be an integer >= 1 or None (all), got {top_m!r}")
    top_m = min(int(top_m), _ALL)
    if scheme == EXPLORE_EPSILON:
        if not (isinstance(epsilon, (int, float, np.floating, np.integer))
                and not isinstance(epsilon, bool) and 0.0 <= float(epsilon) <= 1.0):
            raise ValueError(f"epsilon: must be a number in [0, 1], got {epsilon!r}")
        return scheme, float(epsilon), top_m, 1.0, int(seed)
    if (temperature is None or isinstance(temperature, bool)
            or not isinstance(temperature, (int, float, np.floating, np.integer))
            or not (math.isfinite(float(temperature)) and float(temperature) > 0.0)):
        raise ValueError(f"temperature: must be a finite number > 0, got {temperature!r}")
    return scheme, 0.0, top_m, float(temperature), int(seed)


def _problem_args(problem: SlateProblem):
    t = problem.constraints
    if problem.div_mode != DIV_NONE or (t.n and max(t.kind.tolist()) > PIN):
        check_extensions(problem)
    return (problem.utility, problem.position_weight, problem.codes, problem.n_values,
            *_k.pack_table(t), kernel_embeddings(problem), int(problem.div_mode),
            float(problem.div_weight), int(problem.div_window))


def _bad_utility(problem: SlateProblem, code: int):
    j = -1 - code
    return ValueError(f"utility[{j}]: must be finite, got {problem.utility[j]}")


def sample_slate(problem: SlateProblem, *, scheme: int, epsilon: float = 0.0,
                 top_m: int | None = None, temperature: float | None = None, seed: int) -> ExploreResult:
    """Draw a slate that keeps every hard rule the greedy keeps, with its propensities.

    Parameters
    ----------
    problem : SlateProblem
        The compiled problem (as for solvers.greedy.solve_greedy).
    scheme : int
        EXPLORE_EPSILON or EXPLORE_SOFTMAX.
    epsilon : float
        EXPLORE_EPSILON: probability in [0, 1] of a uniform draw among the top_m instead of the
        greedy's pick (0 gives the greedy's slate).
    top_m : int or None
        Size >= 1 of the candidate set: the top_m feasible candidates by the position's gain,
        ties to the lower index (None: every feasible candidate). EXPLORE_EPSILON draws uniformly
        in it; EXPLORE_SOFTMAX restricts its support to it (a truncated Plackett-Luce, whose scan
        stops early: much faster when many candidates are feasible).
    temperature : float
        EXPLORE_SOFTMAX: finite T > 0 of exp((g_i - g_max) / T).
    seed : int
        In [0, 2**64): the splitmix64 state; the same seed gives the same slate everywhere.

    Returns
    -------
    ExploreResult
        The slate, slot probabilities, joint, log joint, cascade, support sizes, and the
        relaxations as SolveResult reports them.

    Raises
    ------
    ValueError
        Naming the argument and what was expected (scheme, epsilon, top_m, temperature, seed),
        for a non-finite utility, or as solvers.greedy.check_extensions.
    """
    scheme, epsilon, top_m, temperature, seed = _check(scheme, epsilon, top_m, temperature, seed)
    n_rules = problem.constraints.n
    L = problem.length
    slate = np.empty(L, dtype=np.int64)
    support = np.empty(L, dtype=np.int64)
    slot_prob = np.empty(L, dtype=np.float64)
    cascade = np.empty(L, dtype=np.float64)
    relax_pos = np.empty(n_rules, dtype=np.int64)
    relaxed = np.empty(n_rules, dtype=np.bool_)
    info = np.empty(1, dtype=np.float64)
    reason = problem.pre_reason.astype(np.int64)
    n_relaxed = _x.explore_slate(*_problem_args(problem), problem.active.astype(np.bool_), scheme,
                                 epsilon, top_m, temperature, np.array([seed], dtype=np.uint64),
                                 slate, slot_prob, support, cascade, reason, relax_pos, relaxed,
                                 info)
    if n_relaxed < 0:
        raise _bad_utility(problem, n_relaxed)
    return ExploreResult(slate, slot_prob, support, float(cascade[-1]) if L else 1.0,
                         float(info[0]), cascade, relaxed, reason, relax_pos,
                         "relaxed" if n_relaxed else "feasible", scheme, seed)


def marginals(problem: SlateProblem, slate: np.ndarray, *, scheme: int, epsilon: float = 0.0,
              top_m: int | None = None, temperature: float | None = None, samples: int,
              seed: int) -> Marginals:
    """P(slate[p] is at position p) under `sample_slate` with these settings, for each p.

    Exact (1 where the deterministic slate agrees, else 0; no draws) when the sampling cannot
    vary: epsilon = 0, top_m = 1, or a first draw (seeded with `seed`) that had one possible item
    at every position (e.g. a temperature so small that only the best gain has weight). Otherwise
    the frequency over `samples` draws, draw j seeded by the j-th splitmix64 output of `seed`.

    Parameters
    ----------
    problem : SlateProblem
    slate : ndarray of int64, shape (L,)
        Usually the slate of a `sample_slate` answer.
    scheme, epsilon, top_m, temperature : as for `sample_slate`
    samples : int
        Number of Monte Carlo draws, >= 1.
    seed : int
        In [0, 2**64).

    Returns
    -------
    Marginals
        prob and stderr per position, the sample count, whether exact, and the frequency matrix
        of the items that occurred (one draw: the deterministic slate, when exact).

    Raises
    ------
    ValueError
        As `sample_slate`, or when samples < 1 or the slate does not have length L.
    """
    scheme, epsilon, top_m, temperature, seed = _check(scheme, epsilon, top_m, temperature, seed)
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples: must be an integer >= 1, got {samples!r}")
    L = problem.length
    slate = np.asarray(slate, dtype=np.int64)
    if slate.shape != (L,):
        raise ValueError(f"slate: must have shape ({L},), got {slate.shape}")
    first = sample_slate(problem, scheme=scheme, epsilon=epsilon, top_m=top_m,
                         temperature=temperature, seed=seed)
    if first.deterministic:
        prob = (first.slate == slate).astype(np.float64)
        items = np.unique(first.slate)
        freq = (items[:, None] == first.slate[None, :]).astype(np.float64)
        return Marginals(prob, np.zeros(L), 0, True, items, freq)
    args = _problem_args(problem)
    counts = np.zeros((problem.n, L), dtype=np.int64)
    r = _x.explore_counts(*args, problem.active.astype(np.bool_), scheme, epsilon, top_m,
                          temperature, np.uint64(seed), int(samples), counts)
    if r < 0:
        raise _bad_utility(problem, r)
    S = int(samples)
    prob = counts[slate, np.arange(L)] / S
    stderr = np.sqrt(prob * (1.0 - prob) / S)
    items = np.flatnonzero(counts.any(axis=1)).astype(np.int64)
    return Marginals(prob, stderr, S, False, items, counts[items] / S)


def warmup() -> None:
    """Compile (or load from the Numba cache) the exploration kernels and run both schemes on a
    tiny problem with a cap, a soft minimum, a window and a pin, and once with each diversity
    method. Takes no arguments and returns None."""
    from dataclasses import replace

    from solvers.codes import DIV_DPP, DIV_MMR
    from solvers.greedy import warmup_problem

    problem = warmup_problem()
    emb = np.array([[1, 0], [0.6, 0.8], [0, 1], [0, 0]], dtype=np.float32)
    for p in (problem, replace(problem, embeddings=emb, div_mode=DIV_MMR, div_weight=0.5),
              replace(problem, embeddings=emb, div_mode=DIV_DPP, div_weight=0.5, div_window=1)):
        for kw in (dict(scheme=EXPLORE_EPSILON, epsilon=0.5, top_m=2),
                   dict(scheme=EXPLORE_SOFTMAX, temperature=1.0)):
            r = sample_slate(p, seed=1, **kw)
            marginals(p, r.slate, samples=2, seed=1, **kw)
