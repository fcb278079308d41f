"""Slate off-policy estimators with their bootstrap (1000 resamples) per 1M log rows, against a
straightforward numpy implementation of the same formula and bootstrap (issue 12 target).

The log is synthetic and valid: n = 1,000,000 rounds, K = 3 and 10, continuous propensities (so
no two rounds repeat), Bernoulli rewards at each position with rate 0.2 (dense) and 0.01 (clicks
as logs have them: there the ips/iips/rips/pi bootstrap draws only rewarded rounds one by one;
only those four and estimate_all are re-timed), random reward model values. Per estimator, in
one process, alternating:

* ours: `offline.estimators.estimate(log, name, n_bootstrap=1000)` (the Numba round bootstrap),
  timed whole, `repeat` times; median.
* baseline: the formula in numpy (per-round terms, or per-position numerators and denominators
  for the self-normalised forms), then the bootstrap by `idx = rng.choice(n, n)` and the
  estimate recomputed on the resampled rows. Its resamples are identical work, so it is timed
  per resample over `baseline_resamples` of them and charged median x 1000 (plus the formula):
  a full 1000-resample baseline run takes minutes per estimator on this box.

Also: `estimate_all` (all nine estimators from one bootstrap pass) against the sum of the nine
baselines, and the SlateLog validation time. Both implementations' values must agree to 1e-9
(same formula) and their bootstrap standard errors within 4 standard errors of an SE estimated
from the baseline's resamples (different resamples: 28 % for 100).

    flock /tmp/bench.lock .venv/bin/python -m benchmarks.bench_estimators [--quick]
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import bench_main
from offline.estimators import ESTIMATORS, SPARSE, SlateLog, estimate, estimate_all, warmup

COLUMNS = [("k", "K"), ("click_rate", "click rate"), ("estimator", "estimator"), ("ours_s", "ours s"),
           ("baseline_s", "numpy baseline s"), ("speedup", "baseline / ours"),
           ("value", "estimate"), ("se_ratio", "SE ours / baseline")]
B = 1000


def synthetic_log(n: int, k: int, click_rate: float, seed: int = 0) -> SlateLog:
    rng = np.random.default_rng(seed)
    bm = rng.uniform(0.05, 1.0, (n, k))
    tm = rng.uniform(0.0, 1.0, (n, k))
    bc = np.cumprod(rng.uniform(0.3, 1.0, (n, k)), axis=1)
    tc = np.cumprod(rng.uniform(0.2, 1.0, (n, k)), axis=1)
    return SlateLog(reward=(rng.random((n, k)) < click_rate).astype(np.float64), behavior_marginal=bm,
                    target_marginal=tm, behavior_cascade=bc, target_cascade=tc,
                    behavior_joint=bc[:, -1].copy(), target_joint=tc[:, -1].copy(),
                    q_logged=rng.uniform(0, 0.4, (n, k)), q_target=rng.uniform(0, 0.4, (n, k)),
                    position_weight=1.0 / np.log2(np.arange(k) + 2.0))


# --------------------------------------------------------------------------- the baseline

def baseline_parts(log: SlateLog, name: str):
    """The straightforward numpy formula: (arrays to resample by row, estimate from them)."""
    r, pw = log.reward, log.position_weight
    if name in ("ips", "snips"):
        w = log.target_joint / log.behavior_joint
        wr = w * (r @ pw)
        if name == "ips":
            return (wr,), lambda a: a.mean()
        return (wr, w), lambda a, b: a.sum() / b.sum()
    if name in ("iips", "sniips", "rips", "snrips"):
        if name in ("iips", "sniips"):
            rho = log.target_marginal / log.behavior_marginal
        else:
            rho = log.target_cascade / log.behavior_cascade
        num = rho * r
        if name in ("iips", "rips"):
            t = num @ pw
            return (t,), lambda a: a.mean()
        return (num, rho), lambda a, b: (a.sum(axis=0) / b.sum(axis=0)) @ pw
    if name == "pi":
        w = (log.target_marginal / log.behavior_marginal).sum(axis=1) - log.k + 1
        t = w * (r @ pw)
        return (t,), lambda a: a.mean()
    if name == "dm":
        t = log.q_target @ pw
        return (t,), lambda a: a.mean()
    c = log.target_cascade / log.behavior_cascade
    c_prev = np.hstack([np.ones((log.n, 1)), c[:, :-1]])
    t = (c * (r - log.q_logged) + c_prev * log.q_target) @ pw
    return (t,), lambda a: a.mean()


def baseline(log: SlateLog, name: str, resamples: int, seed: int = 0) -> dict:
    """Formula time, per-resample times, the value and the bootstrap SE of the numpy baseline."""
    t0 = time.perf_counter()
    arrays, fn = baseline_parts(log, name)
    value = float(fn(*arrays))
    formula_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    n = log.n
    per, boot = [], []
    for _ in range(resamples):
        t0 = time.perf_counter()
        idx = rng.choice(n, n)
        boot.append(float(fn(*(a[idx] for a in arrays))))
        per.append(time.perf_counter() - t0)
    return dict(formula_s=formula_s, per_resample_s=float(np.median(per)), value=value,
                se=float(np.std(boot, ddof=1)))


def run(quick: bool = False) -> list[dict]:
    warmup()
    n = 100_000 if quick else 1_000_000
    repeat = 1 if quick else 3
    resamples = 20 if quick else 100
    scale = 1_000_000 / n  # report per 1M rows
    rows = []
    for k, click_rate in ((3, 0.2), (10, 0.2), (3, 0.01), (10, 0.01)):
        t0 = time.perf_counter()
        log = synthetic_log(n, k, click_rate)
        validate_s = time.perf_counter() - t0  # generation + validation
        # at 1 % clicks only the SPARSE estimators change; the others are the 20 % rows' work
        names = ESTIMATORS if click_rate > 0.1 else SPARSE
        base_total = 0.0
        for name in ESTIMATORS:
            base = baseline(log, name, resamples)
            base_s = base["formula_s"] + B * base["per_resample_s"]
            base_total += base_s
            if name not in names:
                continue
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                est = estimate(log, name, n_bootstrap=B)
                times.append(time.perf_counter() - t0)
            ours = float(np.median(times))
            if abs(est.value - base["value"]) > 1e-9 * max(1.0, abs(base["value"])):
                raise AssertionError(f"{name}, K={k}: ours {est.value!r} != baseline "
                                     f"{base['value']!r}")
            se_ratio = est.se / base["se"]
            if abs(se_ratio - 1) > 4 / np.sqrt(2 * (resamples - 1)):  # 4 SE of an SE estimate
                raise AssertionError(f"{name}, K={k}: bootstrap SE ours {est.se} vs baseline "
                                     f"{base['se']}")
            rows.append(dict(k=k, click_rate=click_rate, estimator=name, n=n,
                             ours_s=ours * scale, baseline_s=base_s * scale,
                             speedup=base_s / ours, value=est.value, se_ratio=se_ratio,
                             ours_runs_s=[t * scale for t in times],
                             baseline_formula_s=base["formula_s"] * scale,
                             baseline_per_resample_ms=base["per_resample_s"] * 1e3 * scale,
                             baseline_resamples_timed=resamples, ess=est.ess,
                             warning=est.warning))
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            estimate_all(log, n_bootstrap=B)
            times.append(time.perf_counter() - t0)
        ours = float(np.median(times))
        rows.append(dict(k=k, click_rate=click_rate, estimator="estimate_all (9)", n=n,
                         ours_s=ours * scale, baseline_s=base_total * scale,
                         speedup=base_total / ours, ours_runs_s=[t * scale for t in times],
                         log_build_and_validate_s=validate_s * scale))
    return rows


def main() -> None:
    bench_main("estimators", "Slate estimators + 1000-resample bootstrap per 1M rows (medians)",
               run, COLUMNS, __doc__)


if __name__ == "__main__":
    main()
