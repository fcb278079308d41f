"""Similarity diversity: the lazy Numba greedy against numpy implementations of the published
algorithms, measured in the same run.

DPP: Chen, Zhang & Zhou (2018)'s fast greedy MAP, vectorised numpy as in their reference code: the
kernel L = diag(q) S diag(q) built with a matrix product (q_i = exp(u_i / (2 beta)), S the cosine
similarity of the embeddings), then the incremental Cholesky greedy. Where their loop would stop
(the span of the d-dimensional embeddings is full) it goes on with the engine's rule (residuals
floored at DPP_EPS, items at or below DPP_SPAN_EPS add nothing), so the two slates can be compared
to the end. MMR: the similarity matrix by matrix product, then the classic loop with
lambda = 1 / (1 + beta). Times include normalising the embeddings and building the matrices: the
engine gets raw embeddings per request.

The timed path of the engine is solve_greedy on a SlateProblem with no other rule. Utilities are
gamma(2, 1); embeddings normal (or around 20 cluster centres), float32. beta = 0.5 (Chen et al.'s
theta ~ 0.67) for the target rows; further rows sweep beta (the lazy greedy re-examines more
candidates as diversity weighs more, numpy's cost does not change), show the sliding window (no
numpy baseline) and add the hard rules of bench_greedy (max 3 per category, 3 'new' items in the
top 10, 1 per seller in any 3 positions) to show the combined cost.

    python -m benchmarks.bench_diversity [--quick]
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from benchmarks.bench_greedy import instance as rules_instance
from benchmarks.common import bench_main, time_calls
from solvers.evaluate import evaluate
from solvers.greedy import solve_greedy, warmup
from solvers.codes import DIV_DPP, DIV_MMR, DPP_EPS, DPP_SPAN_EPS
from testing.random_problems import make_problem

BETA = 0.5

COLUMNS = [("method", "method"), ("n", "N"), ("k", "K"), ("d", "d"), ("embeddings", "embeddings"),
           ("beta", "beta"), ("window", "window"), ("rules", "rules"), ("numpy_us", "numpy µs"),
           ("ours_us", "ours µs"), ("ours_p99_us", "ours p99 µs"), ("speedup", "numpy / ours"),
           ("target", "target"), ("same_slate", "same slate"),
           ("no_div_us", "same without diversity µs")]

# (method, N, K, d, embeddings, beta, window, with bench_greedy's rules, target speed-up)
CASES = [(m, n, k, 64, e, BETA, 0, False, t) for m in ("dpp", "mmr")
         for n, k, t in ((1000, 50, 15.0), (5000, 100, 50.0)) for e in ("normal", "clustered")]
CASES += [("dpp", 5000, 100, 64, "normal", 0.1, 0, False, None),
          ("dpp", 5000, 100, 64, "normal", 2.0, 0, False, None),
          ("mmr", 5000, 100, 64, "normal", 2.0, 0, False, None),
          ("dpp", 5000, 100, 64, "normal", BETA, 10, False, None),
          ("mmr", 5000, 100, 64, "normal", BETA, 10, False, None),
          ("dpp", 5000, 100, 64, "normal", BETA, 0, True, None),
          ("mmr", 5000, 100, 64, "normal", BETA, 0, True, None)]


def _unit(emb: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def numpy_dpp(emb: np.ndarray, u: np.ndarray, beta: float, k: int) -> list[int]:
    """Chen et al.'s greedy MAP on L = diag(q) S diag(q), continued past a full span."""
    V = _unit(emb)
    q = np.exp(u / (2.0 * beta))
    kernel = (V @ V.T) * q[:, None] * q[None, :]
    q2 = q * q
    N = u.shape[0]
    k = min(k, N)
    cis = np.zeros((k, N))
    di2 = q2.copy()  # diag(L): S_ii = 1
    floor = DPP_EPS * q2
    selected: list[int] = []
    members = 0
    for t in range(k):
        j = int(np.argmax(np.maximum(di2, floor)))
        selected.append(j)
        if t == k - 1:
            break
        if di2[j] > DPP_SPAN_EPS * q2[j]:
            eis = (kernel[j] - cis[:t, j] @ cis[:t]) / math.sqrt(di2[j])
            cis[t] = eis
            di2 -= eis * eis
            members += 1
            if members == emb.shape[1]:  # the span is full: every residual is 0
                di2[:] = 0.0
        di2[j] = -np.inf
        floor[j] = -np.inf
    return selected


def numpy_mmr(emb: np.ndarray, u: np.ndarray, beta: float, k: int) -> list[int]:
    """Classic MMR: argmax lambda * u - (1 - lambda) * max similarity (clipped at 0)."""
    V = _unit(emb)
    S = V @ V.T
    lam = 1.0 / (1.0 + beta)
    N = u.shape[0]
    mx = np.zeros(N)
    score_u = lam * u
    out: list[int] = []
    for _ in range(min(k, N)):
        score = score_u - (1.0 - lam) * mx
        score[out] = -np.inf
        j = int(np.argmax(score))
        out.append(j)
        np.maximum(mx, S[j], out=mx)
    return out


def embeddings(kind: str, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "clustered":
        centers = rng.normal(size=(20, d))
        emb = centers[rng.integers(0, 20, size=n)] + 0.5 * rng.normal(size=(n, d))
    else:
        emb = rng.normal(size=(n, d))
    return np.ascontiguousarray(emb, dtype=np.float32)


def _problem(u, emb, k, method, beta, window, rules: bool, seed: int):
    mode = DIV_DPP if method == "dpp" else DIV_MMR
    n = u.shape[0]
    if rules:
        base = rules_instance(n, k, seed)
        base = replace(base, utility=u)
    else:
        L = min(k, n)
        base = make_problem(u, 1.0 / np.log2(np.arange(2, L + 2)),
                            np.zeros((1, n), dtype=np.int64), [1], [])
    return base, replace(base, embeddings=emb, div_mode=mode, div_weight=beta, div_window=window)


def run(quick: bool = False) -> list[dict]:
    warmup()
    out = []
    for method, n, k, d, kind, beta, window, rules, target in CASES:
        rng = np.random.default_rng(n + k + d)
        u = rng.gamma(2.0, 1.0, size=n)
        emb = embeddings(kind, n, d, rng)
        plain, problem = _problem(u, emb, k, method, beta, window, rules, seed=0)
        baseline = numpy_dpp if method == "dpp" else numpy_mmr
        compare = window == 0  # the numpy baselines have no window
        big = n >= 5000
        reps_np = (2 if big else 5) if quick else (7 if big else 31)
        reps = (20 if big else 50) if quick else (200 if big else 500)
        ours = solve_greedy(problem)
        row = dict(method=method, n=n, k=k, d=d, embeddings=kind, beta=beta, window=window,
                   rules="bench_greedy" if rules else "none",
                   target=f">= {target:.0f}x" if target else None,
                   objective=evaluate(problem, ours.slate).objective,
                   relaxed=int(ours.relaxed.sum()))
        t_ours = time_calls(lambda: solve_greedy(problem), reps)
        row.update(ours_us=float(np.median(t_ours)), ours_p99_us=float(np.percentile(t_ours, 99)),
                   no_div_us=float(np.median(time_calls(lambda: solve_greedy(plain), reps))))
        if compare:
            t_np = time_calls(lambda: baseline(emb, u, beta, k), reps_np, warmup=1)
            row["numpy_us"] = float(np.median(t_np))
            row["speedup"] = row["numpy_us"] / row["ours_us"]
            # with other rules the slates differ by design (numpy knows no rules)
            row["same_slate"] = None if rules else ours.slate.tolist() == baseline(emb, u, beta, k)
        out.append(row)
    return out


def main() -> None:
    bench_main("diversity", "Similarity diversity (medians; numpy measured in the same run)", run, COLUMNS, __doc__)


if __name__ == "__main__":
    main()
