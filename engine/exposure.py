"""Per-request fairness of exposure (Singh & Joachims 2018) as a stage of the engine.

Over the top M candidates by utility, an LP (solvers.exposure_lp) finds the best ranking matrix
whose expected exposure meets the policy's criterion; a Birkhoff-von Neumann decomposition turns
it into rankings, one of which is sampled with a seed derived from the request (so the same
request gets the same slate). The slate then follows the sampled ranking wherever the policy's
hard rules allow: the sampled items get a utility above every other candidate, in sampled order,
and the constrained greedy does the rest. The reported objective is still the policy's.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from engine.policy import ExposureLP as ExposureRule
from solvers.problem import SlateProblem

log = logging.getLogger(__name__)

#: An LP solve is not started with less time than this left (the first build of a shape costs
#: 15-40 ms; re-solves 2-5 ms at M=20).
MIN_LP_S = 0.003

_local = threading.local()  # one compiled LP per shape and thread (an ExposureLP is not shared)


@dataclass
class LPOutcome:
    status: str  # LP status, or "skipped: <why>"
    objective: float = float("nan")
    expected_exposure: dict[str, float] = field(default_factory=dict)  # group -> expected exposure
    solve_ms: float = 0.0
    problem: SlateProblem | None = None  # the problem to solve greedily (sampled order on top)


def _lp(M: int, K: int, G: int, criterion: str):
    from solvers.exposure_lp import ExposureLP

    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    key = (M, K, G, criterion)
    if key not in cache:
        cache[key] = ExposureLP(M, K, G, criterion)
    return cache[key]


def warmup(M: int, K: int, criterion: str) -> None:
    """Build and solve the LP of the most common shape (two groups) once in this thread."""
    lp = _lp(M, K, 2, criterion)
    u = np.linspace(1.0, 0.5, M)
    lp.solve(u, np.arange(M) % 2, 1.0 / np.log2(np.arange(2, K + 2)), 0.05)


def apply(rule: ExposureRule, problem: SlateProblem, group_codes: np.ndarray,
          dictionary: tuple[str, ...], seed_text: str, deadline: float) -> LPOutcome:
    from solvers.exposure_lp import birkhoff_von_neumann, sample_ranking

    n, L = problem.n, problem.length
    M = min(rule.top_m, n)
    K = min(L, M)
    if K == 0:
        return LPOutcome("skipped: no candidates")
    u = problem.utility
    top = np.argpartition(-u, M - 1)[:M] if M < n else np.arange(n)
    top = top[np.lexsort((top, -u[top]))]  # utility desc, index asc
    present, groups = np.unique(group_codes[top], return_inverse=True)
    if present.shape[0] < 2:
        return LPOutcome("skipped: fewer than two groups among the top candidates")
    left = deadline - time.perf_counter()
    if left < MIN_LP_S:
        return LPOutcome("skipped: budget")
    lp = _lp(M, K, int(present.shape[0]), rule.criterion)
    res = lp.solve(u[top], groups, problem.position_weight[:K], rule.tolerance, time_limit_ms=left * 1000.0)
    names = [dictionary[c] for c in present.tolist()]
    out = LPOutcome(res.status, float(res.objective), solve_ms=float(res.solve_ms))
    if res.P is None:
        return out
    out.expected_exposure = {g: float(e) for g, e in zip(names, res.exposure_by_group)}
    seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "little")
    ranking = sample_ranking(birkhoff_von_neumann(res.P), np.random.default_rng(seed))
    order = top[np.asarray(ranking, dtype=np.int64)]
    steered = u.copy()
    lift = float(u.max()) + 1.0
    steered[order] = lift + np.arange(order.shape[0], 0, -1, dtype=np.float64)
    out.problem = replace(problem, utility=steered)
    return out
