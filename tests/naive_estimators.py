"""Slow, obviously-correct twin of offline.estimators and offline._estimator_kernels (loops).

Every estimator is written from its formula in offline.estimators' module docstring, round by
round and position by position, reading only the present positions. The bootstrap repeats the
stated scheme literally: the same numpy draws of the chunk totals and splitmix64 states, a
pure-Python splitmix64 and Lemire draw, the list of rounds each resample takes, and the
estimator recomputed from scratch on the resampled rounds.
"""

from __future__ import annotations

import math

import numpy as np

from tests import naive_explore



def _present(log, i: int) -> list[int]:
    return [k for k in range(log.k) if log.mask[i, k]]


def _slate_reward(log, i: int) -> float:
    return sum(log.position_weight[k] * log.reward[i, k] for k in _present(log, i))


def _ratio(num, den, i, k) -> float:
    return num[i, k] / den[i, k]


def _div(a: float, b: float) -> float:
    return 0.0 if b == 0 else a / b


def value(log, estimator: str, rows: list[int] | None = None) -> float:
    """The estimate computed over the given rounds (all of them by default, repeats allowed)."""
    rows = list(range(log.n)) if rows is None else rows
    n = len(rows)
    w = log.position_weight
    if estimator in ("ips", "snips"):
        num = den = 0.0
        for i in rows:
            weight = log.target_joint[i] / log.behavior_joint[i]
            num += weight * _slate_reward(log, i)
            den += weight
        return num / n if estimator == "ips" else _div(num, den)
    if estimator in ("iips", "sniips", "rips", "snrips"):
        if estimator in ("iips", "sniips"):
            tp, bp = log.target_marginal, log.behavior_marginal
        else:
            tp, bp = log.target_cascade, log.behavior_cascade
        total = 0.0
        for k in range(log.k):
            num = den = 0.0
            for i in rows:
                if log.mask[i, k]:
                    rho = _ratio(tp, bp, i, k)
                    num += rho * log.reward[i, k]
                    den += rho
                else:
                    den += 1.0  # an absent position: reward 0, ratio 1
            total += w[k] * (num / n if estimator in ("iips", "rips") else _div(num, den))
        return total
    if estimator == "pi":
        total = 0.0
        for i in rows:
            present = _present(log, i)
            if log.pi_weight is not None:
                weight = log.pi_weight[i]
            else:
                weight = sum(_ratio(log.target_marginal, log.behavior_marginal, i, k)
                             for k in present) - len(present) + 1
            total += weight * _slate_reward(log, i)
        return total / n
    if estimator == "dm":
        return sum(w[k] * log.q_target[i, k] for i in rows for k in _present(log, i)) / n
    if estimator == "dr":
        total = 0.0
        for i in rows:
            prev = 1.0
            for k in _present(log, i):
                c = _ratio(log.target_cascade, log.behavior_cascade, i, k)
                total += w[k] * (c * (log.reward[i, k] - log.q_logged[i, k])
                                 + prev * log.q_target[i, k])
                prev = c
        return total / n
    raise ValueError(estimator)


def ess(log, estimator: str) -> float:
    def one(ws):
        s, sq = sum(ws), sum(x * x for x in ws)
        return s * s / sq if sq > 0 else 0.0

    if estimator == "dm":
        return float(log.n)
    if estimator in ("ips", "snips"):
        return one([log.target_joint[i] / log.behavior_joint[i] for i in range(log.n)])
    if estimator == "pi":
        ws = []
        for i in range(log.n):
            present = _present(log, i)
            ws.append(log.pi_weight[i] if log.pi_weight is not None else
                      sum(log.target_marginal[i, k] / log.behavior_marginal[i, k]
                          for k in present) - len(present) + 1)
        return one(ws)
    tp, bp = ((log.target_marginal, log.behavior_marginal) if estimator in ("iips", "sniips")
              else (log.target_cascade, log.behavior_cascade))
    per_k = [one([tp[i, k] / bp[i, k] for i in range(log.n) if log.mask[i, k]])
             for k in range(log.k) if log.mask[:, k].any()]
    return min(per_k) if per_k else 0.0


class SplitMix64(naive_explore.SplitMix64):
    """The exploration twin's pure-Python splitmix64, with Lemire's bounded draw."""

    def __init__(self, state: int):
        super().__init__(int(state))

    def below(self, s: int) -> int:
        """Uniform in [0, s): Lemire's multiply-shift on 32 bits with rejection."""
        threshold = ((1 << 32) - s) % s
        while True:
            prod = (self.next() >> 32) * s
            if (prod & 0xFFFFFFFF) >= threshold:
                return prod >> 32


def draws(n: int, n_bootstrap: int, seed: int, chunk: int,
          live: list[int] | None = None) -> list[list[int]]:
    """The rounds each resample takes: the drawn rounds in draw order (chunk by chunk). With
    `live` (the rounds that can contribute; the others must contribute nothing), only draws on
    live rounds are made one by one, and the resample is completed with n - hits copies of a
    round that is not live."""
    rng = np.random.default_rng(seed)
    rounds = list(range(n)) if live is None else list(live)
    n_live = len(rounds)
    n_chunks = max(1, -(-n_live // chunk))
    sizes = [chunk] * (n_chunks - 1) + [n_live - chunk * (n_chunks - 1)]
    pvals = np.array(sizes, dtype=float) / max(n_live, 1)
    if n_live == n:
        hits = [n] * n_bootstrap
        totals = rng.multinomial(n, pvals, size=n_bootstrap)
    elif n_live == 0:
        hits = [0] * n_bootstrap
        totals = np.zeros((n_bootstrap, 1), dtype=int)
    else:
        hits = rng.binomial(n, n_live / n, size=n_bootstrap)
        totals = rng.multinomial(hits, pvals)
    states = rng.integers(0, np.iinfo(np.uint64).max, size=n_bootstrap, dtype=np.uint64,
                          endpoint=True)
    gens = [SplitMix64(int(s)) for s in states]
    dead = next((i for i in range(n) if i not in set(rounds)), None)
    rows: list[list[int]] = [[] for _ in range(n_bootstrap)]
    for j in range(n_chunks):
        for b in range(n_bootstrap):
            for _ in range(int(totals[b, j])):
                rows[b].append(rounds[j * chunk + gens[b].below(sizes[j])])
    for b in range(n_bootstrap):
        rows[b].extend([dead] * (n - int(hits[b])))
    return rows


SPARSE = ("ips", "iips", "rips", "pi")  # their per-round term is 0 when no reward is


def rewarded(log) -> list[int]:
    return [i for i in range(log.n) if any(log.reward[i, k] != 0 for k in _present(log, i))]


def bootstrap(log, estimator: str, n_bootstrap: int, seed: int, chunk: int) -> list[float]:
    """The estimate recomputed on each resample (SPARSE estimators: draws on rewarded rounds)."""
    live = rewarded(log) if estimator in SPARSE else None
    return [value(log, estimator, rows) for rows in draws(log.n, n_bootstrap, seed, chunk, live)]


def interval(boot: list[float], alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(np.array(boot), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def std(boot: list[float]) -> float:
    mean = sum(boot) / len(boot)
    return math.sqrt(sum((x - mean) ** 2 for x in boot) / (len(boot) - 1))
