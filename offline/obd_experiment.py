"""The Open Bandit Dataset paper's standard experiment on the sample (Saito et al. 2021, "Open
Bandit Dataset and Pipeline", section 5; obp's docs/evaluation_ope.rst): estimate the CTR of the
Bernoulli TS policy from the uniform-random logs, compare it with the on-policy CTR of the BTS
logs, and report each estimator's relative estimation error, for the all / men / women campaigns.

    python -m offline.obd_experiment                 # writes benchmarks/results/obd.json, prints a table
    python -m offline.obd_experiment --quick         # fewer Monte Carlo draws and resamples

Protocol (the paper's "in-sample" case):
1. Target policy: Bernoulli TS with the ZOZOTOWN production prior (prior_bts.yaml) and no
   updates; its action distribution P(item at position) by seeded Monte Carlo
   (offline.obd.bts_action_dist, `n_sim` draws; context-free, so one table per campaign).
2. Logs: every row of random/<campaign> is a slate of one (K = 1) with its position as context
   (the rows of an impression cannot be regrouped: offline.obd's docstring). Behaviour marginal =
   the logged propensity (1/n_items); target marginal = BTS's P(logged item at logged position).
3. Reward model (dm, dr): offline.reward_model's logistic click model (user features, item
   features, position, user-item affinity) with `folds`-fold cross-fitting over the random log
   (rows in time order, contiguous folds): each row's q comes from a model that did not see it.
   Its L2 penalty is chosen from L2_GRID by that cross-fitted log loss (the truth is never
   looked at). q_target = sum_a BTS(a | position) q(x, a, position).
4. Estimates: offline.estimators dm, ips (IPW), snips (SNIPW), dr, each with its bootstrap 95 % CI
   and ESS; truth V_on = mean click of bts/<campaign> (with its own 95 % CI).
5. Relative estimation error |V_hat - V_on| / V_on, with two bootstrap intervals (reward model
   kept fixed): resampling the random log only, V_on fixed (the paper's protocol; also mean and
   std over the resamples, as obp reports), and resampling both logs (the sample's V_on rests
   on ~40 clicks: its own error is most of the spread).

Published figures we compare with (PUBLISHED): the first author's full-data run of this
protocol (usaito/obp-demo, behind the ZOZO Tech Blog post of 2020-08-31 for arXiv 2008.07146)
and obp's own run on this very sample (st-tech/zr-obp examples/obd/README.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from offline import obd
from offline.estimators import SlateLog, estimate_all
from offline.reward_model import log_loss

ESTIMATORS = ("dm", "ips", "snips", "dr")
LABELS = {"dm": "DM", "ips": "IPW", "snips": "SNIPW", "dr": "DR"}
DEFAULT_OUTPUT = Path("benchmarks/results/obd.json")
L2_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)

# Relative estimation errors of OPE estimators for Bernoulli TS estimated from the Random logs.
PUBLISHED = {
    "full_data_saito": {
        "source": "Yuta Saito (first author), usaito/obp-demo README.md, 'Results' "
                  "(https://github.com/usaito/obp-demo): the experiment of the ZOZO Tech Blog post "
                  "https://techblog.zozo.com/entry/openbanditproject (2020-08-31) accompanying "
                  "arXiv:2008.07146v1",
        "data": "full Open Bandit Dataset (~26M rows in all; random/all alone ~1.37M)",
        "protocol": "in-sample; reward model CalibratedClassifierCV(LogisticRegression); BTS with "
                    "the production prior and batch updates replayed over each bootstrap sample; "
                    "10 bootstrap samples; mean and 95 % CI of the mean relative-ee",
        "values": {  # campaign -> estimator -> [mean, ci_low, ci_high]
            "all": {"dm": [0.23193, 0.23017, 0.23359], "ips": [0.11473, 0.06933, 0.16282],
                    "dr": [0.11813, 0.07153, 0.16774]},
            "men": {"dm": [0.21503, 0.21406, 0.21599], "ips": [0.13472, 0.09492, 0.17173],
                    "dr": [0.12001, 0.07989, 0.15751]},
            "women": {"dm": [0.22614, 0.22519, 0.22731], "ips": [0.07881, 0.04603, 0.11242],
                      "dr": [0.07861, 0.04533, 0.11327]},
        },
    },
    "sample_obp": {
        "source": "st-tech/zr-obp examples/obd/README.md (obp 0.5.x; "
                  "https://github.com/st-tech/zr-obp/tree/master/examples/obd)",
        "data": "this 10,000-row sample, all campaign only",
        "protocol": "in-sample; logistic regression reward model; BTS with the production prior; "
                    "n_runs=30 bootstrap samples; mean and std of the relative-ee",
        "values": {  # campaign -> estimator -> [mean, std]
            "all": {"dm": [0.156876, 0.109898], "ips": [0.311082, 0.311170],
                    "snips": [0.311795, 0.334736], "dr": [0.292464, 0.315485]},
        },
    },
    "not_found": "The NeurIPS 2021 Datasets & Benchmarks version (arXiv:2008.07146v5) tabulates "
                 "more estimators and settings; its table was not retrievable here, so it is not "
                 "quoted.",
}


def cross_fit_rewards(data: obd.ObdData, folds: int, l2: float) -> tuple[np.ndarray, list[dict]]:
    """float64[n, n_items, 3]: each row's predicted click probabilities from a model fitted on
    the other folds (contiguous blocks of rows in time order); and per-fold fit facts."""
    if not (isinstance(folds, int) and folds >= 2):
        raise ValueError(f"folds: must be an integer >= 2, got {folds!r}")
    q = np.empty((data.n, data.n_items, obd.N_POSITIONS))
    edges = np.linspace(0, data.n, folds + 1).astype(int)
    facts = []
    for f in range(folds):
        held = np.arange(edges[f], edges[f + 1])
        train = np.setdiff1d(np.arange(data.n), held)
        model = obd.fit_reward_model(data, train, l2=l2)
        q[held] = obd.predict_rewards(model, data.take(held))
        facts.append({"fold": f, "train_rows": int(train.size), "held_rows": int(held.size),
                      "converged": model.logistic.converged})
    return q, facts


def slate_log(data: obd.ObdData, dist: np.ndarray, q: np.ndarray | None) -> SlateLog:
    """The random log as a K = 1 SlateLog for the target with action distribution `dist`."""
    rows = np.arange(data.n)
    pos = data.position - 1
    target = dist[data.item, pos]
    behavior = data.propensity
    kw = {}
    if q is not None:
        kw["q_logged"] = q[rows, data.item, pos][:, None]
        kw["q_target"] = np.einsum("ra,ra->r", q[rows, :, pos], dist[:, pos].T)[:, None]
    return SlateLog(reward=data.click.astype(np.float64)[:, None],
                    behavior_marginal=behavior[:, None], target_marginal=target[:, None],
                    behavior_cascade=behavior[:, None], target_cascade=target[:, None],
                    behavior_joint=behavior, target_joint=target, **kw)


def _subset(log: SlateLog, idx: np.ndarray) -> SlateLog:
    fields = ("reward", "behavior_marginal", "target_marginal", "behavior_cascade", "target_cascade",
              "behavior_joint", "target_joint", "q_logged", "q_target")
    return SlateLog(**{f: getattr(log, f)[idx] for f in fields if getattr(log, f) is not None})


def _interval(x: np.ndarray, alpha: float = 0.05) -> list[float]:
    return [float(np.quantile(x, alpha / 2)), float(np.quantile(x, 1 - alpha / 2))]


def choose_l2(data: obd.ObdData, folds: int, grid=L2_GRID) -> tuple[float, np.ndarray, list, dict]:
    """The grid's L2 penalty with the smallest cross-fitted log loss on `data`: (l2, its
    predictions, its fold facts, the log loss of every grid value)."""
    best = None
    losses = {}
    for l2 in grid:
        q, facts = cross_fit_rewards(data, folds, float(l2))
        loss = log_loss(q[np.arange(data.n), data.item, data.position - 1], data.click)
        losses[str(l2)] = loss
        if best is None or loss < best[0]:
            best = (loss, float(l2), q, facts)
    return best[1], best[2], best[3], losses


def run_campaign(campaign: str, root: Path, *, n_sim: int, n_bootstrap: int, seed: int,
                 folds: int, l2: float | None) -> dict:
    """The experiment for one campaign (see the module docstring); a JSON-ready dict.
    l2=None: chosen by choose_l2."""
    t0 = time.perf_counter()
    random_log = obd.load(campaign, "random", root)
    bts_log = obd.load(campaign, "bts", root)
    alpha, beta = obd.bts_prior(campaign, root)
    dist = obd.bts_action_dist(alpha, beta, n_sim=n_sim, seed=seed)
    if l2 is None:
        l2, q, fold_facts, l2_losses = choose_l2(random_log, folds)
    else:
        (q, fold_facts), l2_losses = cross_fit_rewards(random_log, folds, l2), {}
    log = slate_log(random_log, dist, q)
    est = estimate_all(log, list(ESTIMATORS), n_bootstrap=n_bootstrap, seed=seed)
    truth = bts_log.ctr()
    rng = np.random.default_rng(seed + 1)
    truth_boot = bts_log.click[rng.integers(0, bts_log.n, size=(n_bootstrap, bts_log.n))].mean(axis=1)
    # relative errors on resamples of the random log (the same resamples for every estimator)
    boot_values = {e: np.empty(n_bootstrap) for e in ESTIMATORS}
    idx_rng = np.random.default_rng(seed + 2)
    for b in range(n_bootstrap):
        sub = _subset(log, idx_rng.integers(0, log.n, size=log.n))
        for e, v in estimate_all(sub, list(ESTIMATORS), n_bootstrap=0).items():
            boot_values[e][b] = v.value
    logged_q = q[np.arange(random_log.n), random_log.item, random_log.position - 1]
    # the prior's BTS against what the BTS log actually showed (its action frequencies)
    shown = np.zeros_like(dist)
    np.add.at(shown, (bts_log.item, bts_log.position - 1), 1.0)
    shown /= shown.sum(axis=0, keepdims=True)
    out = {
        "campaign": campaign, "n_items": random_log.n_items,
        "random_rows": random_log.n, "random_clicks": int(random_log.click.sum()),
        "random_ctr": random_log.ctr(),
        "bts_rows": bts_log.n, "bts_clicks": int(bts_log.click.sum()),
        "truth_on_policy_ctr": truth, "truth_ci95": _interval(truth_boot),
        "impressions_random": obd.impression_stats(random_log),
        "bts_target": {
            "n_sim": n_sim, "seed": seed,
            "tv_distance_to_bts_log_actions_per_position":
                [float(v) for v in 0.5 * np.abs(dist - shown).sum(axis=0)],
            "max_weight": float((dist[random_log.item, random_log.position - 1]
                                 / random_log.propensity).max()),
        },
        "reward_model": {"folds": folds, "l2": l2, "l2_cross_fit_log_loss": l2_losses,
                         "fits": fold_facts,
                         "cross_fit_log_loss": log_loss(logged_q, random_log.click),
                         "base_rate_log_loss": log_loss(np.full(random_log.n, random_log.ctr()),
                                                        random_log.click)},
        "estimators": {},
    }
    for e in ESTIMATORS:
        r = est[e]
        rel_fixed = np.abs(boot_values[e] - truth) / truth
        rel_both = np.abs(boot_values[e] - truth_boot) / truth_boot
        out["estimators"][e] = {
            "label": LABELS[e], "estimate": r.value, "estimate_ci95": [r.ci_low, r.ci_high],
            "ess": r.ess, "warning": r.warning,
            "relative_error": abs(r.value - truth) / truth,
            "relative_error_ci95_truth_fixed": _interval(rel_fixed),
            "relative_error_mean_truth_fixed": float(rel_fixed.mean()),
            "relative_error_std_truth_fixed": float(rel_fixed.std(ddof=1)),
            "relative_error_ci95_both_resampled": _interval(rel_both),
        }
    out["seconds"] = time.perf_counter() - t0
    return out


def run(root: Path = obd.DEFAULT_ROOT, campaigns=obd.CAMPAIGNS, *, n_sim: int = 1_000_000,
        n_bootstrap: int = 1000, seed: int = 0, folds: int = 3, l2: float | None = None) -> dict:
    """The whole experiment: one run_campaign per campaign plus settings and PUBLISHED."""
    obd.verify(root)
    results = [run_campaign(c, Path(root), n_sim=n_sim, n_bootstrap=n_bootstrap, seed=seed,
                            folds=folds, l2=l2) for c in campaigns]
    return {
        "benchmark": "obd", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "machine": platform.machine()},
        "settings": {"n_sim": n_sim, "n_bootstrap": n_bootstrap, "seed": seed, "folds": folds,
                     "l2": l2 if l2 is not None else f"chosen from {list(L2_GRID)} by cross-fitted log loss",
                     "data": f"OBD sample from obp {obd.OBP_VERSION} "
                                       f"(sha256 {obd.OBP_SDIST_SHA256})",
                     "protocol": "in-sample, K=1 per row with position as context (module docstring)"},
        "campaigns": results,
        "published": PUBLISHED,
    }


def _fmt_ci(v, lo, hi) -> str:
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def print_table(result: dict, file=None) -> None:
    """The relative errors, ours next to the published ones (rich)."""
    from rich.console import Console
    from rich.table import Table

    full = PUBLISHED["full_data_saito"]["values"]
    sample = PUBLISHED["sample_obp"]["values"]
    t = Table(title="OBD: relative error of BTS's CTR estimated from the random logs "
                    "(ours: 95 % CI, random log resampled; \\[both]: both logs resampled)")
    for col in ("campaign", "estimator", "estimate [95% CI]", "ESS", "ours: rel. error [95% CI]",
                "ours \\[both]", "obp sample: mean ± std", "paper full data: mean [95% CI]"):
        t.add_column(col)
    for c in result["campaigns"]:
        name = c["campaign"]
        for e, r in c["estimators"].items():
            pub_s = sample.get(name, {}).get(e)
            pub_f = full.get(name, {}).get(e)
            t.add_row(name if e == "dm" else "", r["label"],
                      _fmt_ci(r["estimate"] * 100, r["estimate_ci95"][0] * 100,
                              r["estimate_ci95"][1] * 100) + " %",
                      f"{r['ess']:,.0f}",
                      _fmt_ci(r["relative_error"], *r["relative_error_ci95_truth_fixed"]),
                      "[{:.3f}, {:.3f}]".format(*r["relative_error_ci95_both_resampled"]),
                      f"{pub_s[0]:.3f} ± {pub_s[1]:.3f}" if pub_s else "-",
                      _fmt_ci(*pub_f) if pub_f else "-")
        t.add_row("", f"truth: {c['truth_on_policy_ctr'] * 100:.3f} % "
                      f"[{c['truth_ci95'][0] * 100:.3f}, {c['truth_ci95'][1] * 100:.3f}] "
                      f"({c['bts_clicks']} clicks)", "", "", "", "", "", "", end_section=True)
    Console(file=file, width=200).print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m offline.obd_experiment", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(obd.DEFAULT_ROOT), help="the unpacked sample (make data)")
    ap.add_argument("--campaigns", nargs="+", default=list(obd.CAMPAIGNS), choices=obd.CAMPAIGNS)
    ap.add_argument("--n-sim", type=int, default=1_000_000, help="Monte Carlo draws of the BTS policy")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=3, help="cross-fitting folds of the reward model")
    ap.add_argument("--l2", type=float, default=None,
                    help="reward model's L2 penalty (default: chosen by cross-fitted log loss)")
    ap.add_argument("--quick", action="store_true", help="--n-sim 100000 --n-bootstrap 200")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON results ('-': none)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_sim, args.n_bootstrap = 100_000, 200
    try:
        result = run(Path(args.root), args.campaigns, n_sim=args.n_sim, n_bootstrap=args.n_bootstrap,
                     seed=args.seed, folds=args.folds, l2=args.l2)
    except obd.ObdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(result)
    write_result(result, args.output)
    return 0


def write_result(result: dict, output: str) -> None:
    """Write a command's JSON result to `output` ("-": nowhere) and say so."""
    if output != "-":
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
