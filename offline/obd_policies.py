"""Re-ranking policies evaluated on the Open Bandit Dataset's uniform-random logs (ZOZOTOWN;
Saito et al. 2021; CC BY 4.0): a greedy re-ranker, a diverse one and a FA*IR-fair one, each
answering every logged context through the pure request path (engine.decide.decide), estimated
off-policy with ips / snips / dr (and dm), with bootstrap CIs and ESS, next to the logging
policy itself.

    python -m offline.obd_policies                    # all three campaigns -> benchmarks/results/obd_policies.json
    python -m offline.obd_policies --campaign men --n-bootstrap 200 --output -

**Rows, not impressions.** The sample keeps ~1 row in 140 of the full log, so a row is one
(context x, position p, logged item a, click r, propensity 1/n_items) observation (offline.obd's
docstring). Each policy makes a whole 3-slot slate for a row's context; only its item at p can be
checked against the row: the target's probability of the logged item at p is 1 if the slate has
a at p, else 0 (the policies are deterministic).

**Candidates of a row** (what decide sees): the campaign's items (ids "0".."n-1"); attributes
item_feature_1..3 (the hashed categories), numeric item_feature_0; one score, `p_click` = the
reward model's click probability of each item at position 1 for the row's user. The model is
obd_experiment's: offline.reward_model's logistic click model, 3-fold cross-fitted over the
random log in time order with its L2 penalty chosen by the cross-fitted log loss
(obd_experiment.choose_l2), so a row's scores come from a model that never saw that row and a
policy's slate for a row does not depend on the row's click. The model is additive in the
logit, so the order of the items is the same at every position; position 1's probability is
the natural "how good is this item for this user" score.

**Policies** (YAML texts below, written to `<policy dir>/<campaign>/<name>.yaml` when absent and
read back from there, so an edited file is what gets evaluated; `--reset-policies` writes the
defaults back):
- `obd_greedy`: the top 3 by p_click (log2 position discount);
- `obd_diverse`: the same with at most 1 item per value of DIVERSITY_ATTRIBUTE (item_feature_3:
  7 / 4 / 7 values in all / men / women; it is the feature on which the greedy is least diverse
  - its slates hold 1.7 / 2.0 / 1.3 distinct item_feature_3 values on average, against 1.7 / 2.0 /
  3.0 of item_feature_1, so the rule binds in every campaign; `data_checks` in the JSON has the
  counts for every feature);
- `obd_fair`: a FA*IR fair_prefix rule on FAIR_ATTRIBUTE (item_feature_3) with p = 0.5 and
  alpha = 0.2, whose m-table for 3 slots is (0, 0, 1): at least one protected item in the slate.
  The protected value is the one the greedy under-exposes most (`choose_protected`): the largest
  shortfall of its log2-weighted exposure share under the greedy against its share under the
  random policy (= its share of the catalogue);
- `obd_random`: the logging policy itself (each position uniform over the items), not a decide()
  policy: its target propensity is the logged one, so its ips and snips are the on-policy mean
  click per position exactly (a check of the whole path).

**Estimates.** Per position p, the rows at p form a K = 1 SlateLog (reward = click, behaviour =
the logged propensity, target = the policy's probability of the logged item at p, q_logged =
the model's p_click of the logged item at p, q_target = the model's p_click of the policy's item
at p, or its mean over the items for the random policy); estimate_all gives the per-position
values, ESS and warnings. Expected clicks per slate = the sum over positions. Intervals: a joint
bootstrap of the rows (`joint_bootstrap`): each of B resamples draws n rows with replacement from
all rows (estimators.bootstrap_sums), and every position's estimate is recomputed on the rows of
that resample that sit at p (their count varies), so the per-position and the slate intervals
come from the same resamples and the slate's interval carries the (small) covariance between
positions. (The alternative the brief names, one SlateLog over all rows with weights 1/share of
the row's position, gives the same ips / dr / dm point estimates, which tests/test_obd_policies.py
checks; it would self-normalise snips over all rows at once rather than per position.) The
slate's ESS is that of the weights W = target / behaviour over all rows (what estimate_all
reports for the one-SlateLog view).

With 80 items and ~3,300 rows per position, a deterministic policy matches the logged item in
~1 row in 80 (~40 rows per position), and the random log has ~0.4 % clicks: each position's
estimate rests on ~40 rows and a fraction of a click. Every deterministic policy's ESS is below
estimators.ESS_MIN, and the report says so.

**Also reported** per policy: the exposure share of every value of item_feature_1..3 in the
policy's own 3-slot slates (log2 position weights, 1 / log2(k + 1) at position k), against the
random policy's (its expectation: the value's share of the catalogue); the mean number of
distinct DIVERSITY_ATTRIBUTE values per slate; the share of slates meeting the FA*IR m-table
(checked from the slates, not from the engine's report); and the share of rows where a rule was
relaxed (hard) or violated (soft), from decide's constraint reports.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.decide import PolicyVersion, decide
from engine.errors import PolicyInvalid, RerankError
from engine.types import Attribute, Candidates, RerankRequest
from engine.validate import Limits
from offline import obd
from offline.estimators import (
    SlateLog, bootstrap_sums, effective_sample_size, ess_warning, estimate_all,
)
from offline.policies import LogFields, load_version, missing
from solvers.fair import fair_mtable

POLICIES = ("obd_greedy", "obd_diverse", "obd_fair")
RANDOM = "obd_random"
ESTIMATORS = ("ips", "snips", "dr", "dm")
SHOWN = ("ips", "snips", "dr")  # the table's estimators (dm is in the JSON)
SLATE_SIZE = 3
SCORE = "p_click"
DIVERSITY_ATTRIBUTE = "item_feature_3"
FAIR_ATTRIBUTE = "item_feature_3"
FAIR_P = 0.5
FAIR_ALPHA = 0.2
DEFAULT_OUTPUT = Path("benchmarks/results/obd_policies.json")
DEFAULT_POLICY_DIR = Path("data/obd_policies")


class PolicyError(ValueError):
    """A policy cannot be evaluated on the OBD candidates (names the policy and what it needs)."""


def position_weights(k: int = SLATE_SIZE) -> np.ndarray:
    """log2 examination weights 1 / log2(k + 1) of positions 1..k (offline.replay's "log2")."""
    return 1.0 / np.log2(np.arange(k) + 2.0)


# ------------------------------------------------------------------ the policies as YAML
def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a YAML double-quoted scalar (hex hashes stay strings)


def policy_texts(campaign: str, protected: str | None, *, diversity_attribute: str = DIVERSITY_ATTRIBUTE,
                 fair_attribute: str = FAIR_ATTRIBUTE, p: float = FAIR_P, alpha: float = FAIR_ALPHA,
                 names=POLICIES) -> dict[str, str]:
    """name -> the default YAML text of each policy in `names` for one campaign; obd_fair needs
    `protected` (the value of `fair_attribute` to protect)."""
    head = (f"# {{name}}: a re-ranking policy for the Open Bandit Dataset's '{campaign}' campaign\n"
            f"# (ZOZOTOWN, CC BY 4.0), written by `python -m offline.obd_policies`. Edit it and run the\n"
            f"# command again to evaluate the edit (it reads this file; --reset-policies writes the\n"
            f"# default back). Candidates: the campaign's items; attributes item_feature_1..3, numeric\n"
            f"# item_feature_0, score p_click (the cross-fitted reward model's click probability).\n#\n")
    common = ("slate_size: 3\n"
              "objective:\n"
              "  weights: {p_click: 1.0}\n"
              "  position_discount: log2\n")
    solver = "solver:\n  mode: greedy\n  budget_ms: 10\n"
    out = {}
    for name in names:
        if name == "obd_greedy":
            body = ("# The baseline re-ranker: the 3 items with the highest p_click, in that order.\n"
                    "name: obd_greedy\nversion: \"1\"\n"
                    "description: Top 3 by predicted click probability.\n" + common + solver)
        elif name == "obd_diverse":
            body = (f"# The greedy with at most 1 item per value of {diversity_attribute} in the 3 slots.\n"
                    "name: obd_diverse\nversion: \"1\"\n"
                    f"description: Top 3 by p_click, at most 1 per {diversity_attribute}.\n" + common +
                    "constraints:\n"
                    f"  - name: one_per_{diversity_attribute}\n"
                    "    type: max_count\n"
                    f"    attribute: {diversity_attribute}\n"
                    "    max: 1\n" + solver)
        elif name == "obd_fair":
            if protected is None:
                raise ValueError("protected: obd_fair needs the protected value of "
                                 f"{fair_attribute}, got None")
            table = fair_mtable(SLATE_SIZE, p, alpha).tolist()
            body = (f"# Ranked group fairness (FA*IR) for items with {fair_attribute} = {protected}, the\n"
                    f"# value the greedy under-exposes most in this campaign. p = {p:g}, alpha = {alpha:g}:\n"
                    f"# the m-table for 3 slots is {tuple(table)} (protected items required in the top\n"
                    "# 1, 2, 3).\n"
                    "name: obd_fair\nversion: \"1\"\n"
                    f"description: Top 3 by p_click with FA*IR for {fair_attribute} = {protected[:8]}.\n"
                    + common +
                    "constraints:\n"
                    f"  - name: fair_{fair_attribute}\n"
                    "    type: fair_prefix\n"
                    f"    attribute: {fair_attribute}\n"
                    f"    protected: [{_yaml_str(protected)}]\n"
                    f"    p: {p!r}\n"
                    f"    alpha: {alpha!r}\n" + solver)
        else:
            raise ValueError(f"names: unknown policy {name!r}, expected one of {', '.join(POLICIES)}")
        out[name] = head.replace("{name}", name) + body
    return out


def policy_version(folder: Path, name: str, default_text: str, *, reset: bool = False
                   ) -> tuple[PolicyVersion, dict]:
    """The policy `name` from `folder/<name>.yaml`, written there first from `default_text`
    when absent (or when `reset`); and facts: the file, whether it differs from the default."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    if reset or not path.is_file():
        path.write_text(default_text)
    version = load_version(path)  # PolicyInvalid names the file, path and line
    if version.name != name:
        raise PolicyError(f"{path}: policy name must be {name!r} (the file's name), got {version.name!r}")
    return version, {"file": str(path), "digest": version.digest,
                     "edited": path.read_text() != default_text}


# ------------------------------------------------------------------ running a policy on the rows
def item_attributes(data: obd.ObdData) -> dict[str, Attribute]:
    return {name: Attribute(codes, data.item_dictionaries[name]) for name, codes in data.item_codes.items()}


def check_runs(version: PolicyVersion, data: obd.ObdData) -> None:
    """PolicyError naming what `version` needs that the OBD candidates do not have."""
    fields = LogFields(frozenset({SCORE}), frozenset(data.item_codes), frozenset(data.item_numeric), False)
    problems = missing(version, fields)
    if problems:
        raise PolicyError("; ".join(problems))


@dataclass
class PolicyRun:
    """One policy's answers for every row: slates int64[n, 3] (candidate indices, -1 where the
    slate is shorter), rows where each rule was relaxed / violated, and the answers' statuses."""

    name: str
    slates: np.ndarray
    relaxed: Counter
    violated: Counter
    status: Counter
    rules: tuple[str, ...]
    seconds: float


def run_policy(version: PolicyVersion, data: obd.ObdData, scores: np.ndarray, *,
               limits: Limits | None = None) -> PolicyRun:
    """decide() with slate_size 3 for every row's candidates (`scores`: float64[n, n_items], the
    p_click of every item for the row's user)."""
    check_runs(version, data)
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    if scores.shape != (data.n, data.n_items):
        raise ValueError(f"scores: must have shape (rows, items) = {(data.n, data.n_items)}, got {scores.shape}")
    limits = limits or Limits()
    attrs = item_attributes(data)
    numeric = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in data.item_numeric.items()}
    ids = list(data.item_ids)
    slates = np.full((data.n, SLATE_SIZE), -1, dtype=np.int64)
    relaxed, violated, status = Counter(), Counter(), Counter()
    t0 = time.perf_counter()
    for r in range(data.n):
        req = RerankRequest(policy=version.name, slate_size=SLATE_SIZE,
                            request_id=obd.request_id(data, r),
                            candidates=Candidates(item_ids=ids, scores={SCORE: scores[r]},
                                                  attributes=attrs, numeric=numeric))
        try:
            result = decide(version, req, limits=limits).result
        except RerankError as exc:
            raise PolicyError(f"{version.compiled.where()}: row {r} ({req.request_id}): {exc}") from None
        slate = [it.index for it in result.items]
        slates[r, :len(slate)] = slate
        status[result.status] += 1
        for c in result.constraints:
            if c.relaxed:
                relaxed[c.name] += 1
            elif not c.satisfied and not c.hard:
                violated[c.name] += 1
    rules = tuple(c.name for c in version.loaded.policy.constraints)
    return PolicyRun(version.name, slates, relaxed, violated, status, rules, time.perf_counter() - t0)


# ------------------------------------------------------------------ estimates
def target_of_slates(data: obd.ObdData, slates: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(target propensity of each row's logged item at its position: 1 if the slate has it
    there, else 0; q_target: the model's click probability of the slate's item at that position,
    0 where the slate is too short)."""
    rows = np.arange(data.n)
    pos = data.position - 1
    chosen = slates[rows, pos]
    target = (chosen == data.item).astype(np.float64)
    q_target = np.where(chosen >= 0, q[rows, np.maximum(chosen, 0), pos], 0.0)
    return target, q_target


def target_of_random(data: obd.ObdData, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The logging policy as the target: its own propensity, and q averaged over the items
    (each position uniform over the catalogue)."""
    rows = np.arange(data.n)
    return data.propensity.astype(np.float64), q[rows, :, data.position - 1].mean(axis=1)


def _log(click, behavior, target, q_logged, q_target) -> SlateLog:
    return SlateLog(reward=click[:, None], behavior_marginal=behavior[:, None],
                    target_marginal=target[:, None], behavior_cascade=behavior[:, None],
                    target_cascade=target[:, None], behavior_joint=behavior, target_joint=target,
                    q_logged=q_logged[:, None], q_target=q_target[:, None])


def _interval(draws: np.ndarray, alpha: float) -> list[float]:
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def joint_bootstrap(position: np.ndarray, click: np.ndarray, weight: np.ndarray, q_logged: np.ndarray,
                    q_target: np.ndarray, *, n_bootstrap: int, seed: int, n_positions: int = SLATE_SIZE
                    ) -> dict[str, np.ndarray]:
    """estimator -> float64[B, n_positions]: each estimator's per-position estimate on each of
    B resamples of all the rows (n draws with replacement; the rows at p of a resample give
    position p's estimate). weight = target / behaviour propensity of the logged item."""
    cols = []
    for p in range(1, n_positions + 1):
        at = (position == p).astype(np.float64)
        cols += [at, at * weight * click, at * weight,
                 at * (weight * (click - q_logged) + q_target), at * q_target]
    stats = np.column_stack(cols)
    sums = bootstrap_sums(stats, n_bootstrap, seed).reshape(n_bootstrap, n_positions, 5)
    count, wr, w, dr, dm = (sums[:, :, j] for j in range(5))

    def div(a, b):
        out = np.zeros_like(a)
        np.divide(a, b, out=out, where=b != 0)
        return out

    return {"ips": div(wr, count), "snips": div(wr, w), "dr": div(dr, count), "dm": div(dm, count)}


def estimate_policy(data: obd.ObdData, target: np.ndarray, q: np.ndarray, q_target: np.ndarray, *,
                    n_bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Per estimator: the policy's CTR at each position (value, CI, ESS, warning) and its
    expected clicks per slate (their sum; CI from the same joint resamples; ESS of W over all rows).
    `target`: float64[n], the target's probability of each row's logged item at its position;
    `q`: float64[n, n_items, 3], the reward model; `q_target`: float64[n] (module docstring)."""
    rows = np.arange(data.n)
    pos = data.position
    click = data.click.astype(np.float64)
    behavior = data.propensity.astype(np.float64)
    q_logged = q[rows, data.item, pos - 1]
    per_position = []
    for p in range(1, SLATE_SIZE + 1):
        at = np.flatnonzero(pos == p)
        if at.size == 0:
            raise ValueError(f"{data.path}: no row at position {p}: the CTR there cannot be estimated")
        per_position.append(estimate_all(_log(click[at], behavior[at], target[at], q_logged[at], q_target[at]),
                                         list(ESTIMATORS), n_bootstrap=0))
    draws = (joint_bootstrap(pos, click, target / behavior, q_logged, q_target,
                             n_bootstrap=n_bootstrap, seed=seed) if n_bootstrap else None)
    slate_weight = target / behavior
    out = {}
    for e in ESTIMATORS:
        positions = []
        for p, est in enumerate(per_position):
            r = est[e]
            positions.append({"value": r.value, "ci95": _interval(draws[e][:, p], alpha) if draws else None,
                              "ess": r.ess, "n": r.n, "warning": r.warning})
        ess = float(data.n) if e == "dm" else effective_sample_size(slate_weight)
        out[e] = {"positions": positions,
                  "slate": {"value": float(sum(x["value"] for x in positions)),
                            "ci95": _interval(draws[e].sum(axis=1), alpha) if draws else None,
                            "ess": ess, "n": data.n, "warning": ess_warning(e, ess, data.n)}}
    return out


# ------------------------------------------------------------------ exposure and rules
def exposure_shares(slates: np.ndarray, data: obd.ObdData) -> dict[str, dict[str, float]]:
    """attribute -> value -> share of the log2-weighted exposure of the slates (-1: absent)."""
    w = np.broadcast_to(position_weights(slates.shape[1]), slates.shape)
    shown = slates >= 0
    out = {}
    for name, codes in data.item_codes.items():
        d = data.item_dictionaries[name]
        e = np.bincount(codes[slates[shown]], weights=w[shown], minlength=len(d))
        total = e.sum()
        out[name] = {v: float(x / total) if total > 0 else 0.0 for v, x in zip(d, e)}
    return out


def random_exposure_shares(data: obd.ObdData) -> dict[str, dict[str, float]]:
    """The uniform random policy's expected exposure shares: every position is uniform over the
    items, so a value's share is its share of the catalogue whatever the position weights."""
    return {name: {v: float(c / data.n_items) for v, c in
                   zip(data.item_dictionaries[name], np.bincount(codes, minlength=len(data.item_dictionaries[name])))}
            for name, codes in data.item_codes.items()}


def choose_protected(greedy_slates: np.ndarray, data: obd.ObdData, attribute: str = FAIR_ATTRIBUTE
                     ) -> tuple[str, dict[str, float]]:
    """The value of `attribute` the greedy under-exposes most: the largest (random share -
    greedy share) of log2-weighted exposure (ties: the larger catalogue share, then the first in
    dictionary order); and every value's shortfall."""
    if attribute not in data.item_codes:
        raise PolicyError(f"attribute: {attribute!r} is not an item feature of {data.path} "
                          f"(it has: {', '.join(data.item_codes)})")
    greedy = exposure_shares(greedy_slates, data)[attribute]
    rand = random_exposure_shares(data)[attribute]
    shortfall = {v: rand[v] - greedy[v] for v in data.item_dictionaries[attribute]}
    best = max(shortfall, key=lambda v: (round(shortfall[v], 12), rand[v], -data.item_dictionaries[attribute].index(v)))
    return best, shortfall


def slate_facts(run: PolicyRun, data: obd.ObdData, fair_attribute: str, protected: str | None,
                p: float, alpha: float) -> dict:
    """Checks made from the slates themselves: distinct values of each feature per slate, the
    most items of one DIVERSITY_ATTRIBUTE value, protected items per slate and the share of
    slates meeting the FA*IR m-table."""
    s = run.slates
    shown = s >= 0
    out = {"slate_length_mean": float(shown.sum(axis=1).mean()), "distinct_per_slate": {}}
    for name, codes in data.item_codes.items():
        c = np.where(shown, codes[np.maximum(s, 0)], -1)
        distinct = [len(set(row) - {-1}) for row in c.tolist()]
        out["distinct_per_slate"][name] = float(np.mean(distinct))
        if name == DIVERSITY_ATTRIBUTE:
            most = [max(Counter(x for x in row if x >= 0).values(), default=0) for row in c.tolist()]
            out[f"max_per_{name}_value"] = int(max(most))
    if protected is not None and protected in data.item_dictionaries.get(fair_attribute, ()):
        code = data.item_dictionaries[fair_attribute].index(protected)
        prot = shown & (data.item_codes[fair_attribute][np.maximum(s, 0)] == code)
        table = fair_mtable(SLATE_SIZE, p, alpha)
        meets = (np.cumsum(prot, axis=1) >= table[None, :]).all(axis=1)
        out["protected_per_slate"] = float(prot.sum(axis=1).mean())
        out["fair_mtable"] = table.tolist()
        out["meets_fair_mtable"] = float(meets.mean())
    out["distinct_slates"] = int(len({tuple(r) for r in s.tolist()}))
    return out


# ------------------------------------------------------------------ one campaign
def reward_model(data: obd.ObdData, folds: int, l2: float | None):
    """obd_experiment's cross-fitted reward model: (q float64[n, n_items, 3], facts)."""
    from offline.obd_experiment import choose_l2, cross_fit_rewards
    from offline.reward_model import log_loss

    if l2 is None:
        l2, q, fits, losses = choose_l2(data, folds)
    else:
        (q, fits), losses = cross_fit_rewards(data, folds, l2), {}
    logged = q[np.arange(data.n), data.item, data.position - 1]
    return q, {"kind": "offline.reward_model logistic click model, cross-fitted as offline.obd_experiment",
               "folds": folds, "l2": l2, "l2_cross_fit_log_loss": losses, "fits": fits,
               "cross_fit_log_loss": log_loss(logged, data.click),
               "base_rate_log_loss": log_loss(np.full(data.n, data.ctr()), data.click)}


def evaluate_runs(data: obd.ObdData, q: np.ndarray, runs: dict[str, PolicyRun], *, fair_attribute: str,
                  protected: str | None, p: float, alpha: float, n_bootstrap: int, seed: int) -> dict:
    """Estimates, exposure and rule rates of every run, plus the random policy; JSON-ready."""
    rand_exposure = random_exposure_shares(data)
    target, q_target = target_of_random(data, q)
    on_policy = [float(data.click[data.position == k].mean()) for k in range(1, SLATE_SIZE + 1)]
    rand_est = estimate_policy(data, target, q, q_target, n_bootstrap=n_bootstrap, seed=seed)
    out = {RANDOM: {"estimates": rand_est, "exposure_share": rand_exposure,
                    "check": {"on_policy_ctr_per_position": on_policy,
                              "ips_equals_on_policy_mean": [rand_est["ips"]["positions"][k]["value"] == on_policy[k]
                                                            for k in range(SLATE_SIZE)],
                              "snips_equals_on_policy_mean": [rand_est["snips"]["positions"][k]["value"] == on_policy[k]
                                                              for k in range(SLATE_SIZE)]}}}
    for name, run in runs.items():
        target, q_target = target_of_slates(data, run.slates, q)
        share = exposure_shares(run.slates, data)
        at = [data.position == k for k in range(1, SLATE_SIZE + 1)]
        matched = [int(target[a].sum()) for a in at]
        clicks = [int((target * data.click)[a].sum()) for a in at]
        out[name] = {
            "estimates": estimate_policy(data, target, q, q_target, n_bootstrap=n_bootstrap, seed=seed),
            "matched_rows_per_position": matched,
            "matched_clicks_per_position": clicks,
            # with no click among the m matched rows the bootstrap interval collapses to [0, 0];
            # the exact (Clopper-Pearson) one-sided 95 % upper bound on the CTR there is 1 - 0.05^(1/m)
            "zero_click_upper95_ctr": [None if c or not m else 1.0 - 0.05 ** (1.0 / m)
                                       for m, c in zip(matched, clicks)],
            "exposure_share": share,
            "exposure_share_minus_random": {a: {v: x - rand_exposure[a][v] for v, x in vals.items()}
                                            for a, vals in share.items()},
            "relaxation_rate": {r: run.relaxed[r] / data.n for r in run.rules},
            "violation_rate": {r: run.violated[r] / data.n for r in run.rules},
            "status": dict(run.status),
            "slates": slate_facts(run, data, fair_attribute, protected, p, alpha),
            "decide_seconds": run.seconds,
        }
    return out


def run_campaign(campaign: str, root: Path = obd.DEFAULT_ROOT, *, policy_dir: Path = DEFAULT_POLICY_DIR,
                 reset_policies: bool = False, n_bootstrap: int = 1000, seed: int = 0, folds: int = 3,
                 l2: float | None = None, rows: int | None = None) -> dict:
    """Every policy on one campaign's random log (module docstring); a JSON-ready dict.
    `rows`: only the first `rows` rows (tests); the reward model is still cross-fitted on them."""
    t0 = time.perf_counter()
    data = obd.load(campaign, "random", root)
    if rows is not None:
        data = data.take(np.arange(min(rows, data.n)))
    q, model_facts = reward_model(data, folds, l2)
    scores = np.ascontiguousarray(q[:, :, 0])
    folder = Path(policy_dir) / campaign
    defaults = policy_texts(campaign, None, names=("obd_greedy", "obd_diverse"))
    versions, files = {}, {}
    for name in ("obd_greedy", "obd_diverse"):
        versions[name], files[name] = policy_version(folder, name, defaults[name], reset=reset_policies)
    runs = {name: run_policy(versions[name], data, scores) for name in ("obd_greedy", "obd_diverse")}
    protected, shortfall = choose_protected(runs["obd_greedy"].slates, data, FAIR_ATTRIBUTE)
    fair_text = policy_texts(campaign, protected, names=("obd_fair",))["obd_fair"]
    versions["obd_fair"], files["obd_fair"] = policy_version(folder, "obd_fair", fair_text, reset=reset_policies)
    runs["obd_fair"] = run_policy(versions["obd_fair"], data, scores)
    fair_rule = next((c for c in versions["obd_fair"].loaded.policy.constraints if c.type == "fair_prefix"), None)
    f_attr, f_prot = ((fair_rule.attribute, fair_rule.protected[0]) if fair_rule is not None
                      else (FAIR_ATTRIBUTE, protected))
    f_p, f_alpha = (fair_rule.p, fair_rule.alpha) if fair_rule is not None else (FAIR_P, FAIR_ALPHA)
    greedy_distinct = slate_facts(runs["obd_greedy"], data, f_attr, f_prot, f_p, f_alpha)["distinct_per_slate"]
    result = {
        "campaign": campaign, "rows": data.n, "n_items": data.n_items, "clicks": int(data.click.sum()),
        "rows_per_position": [int((data.position == k).sum()) for k in range(1, SLATE_SIZE + 1)],
        "reward_model": model_facts,
        "policies": files,
        "data_checks": {
            "values_per_feature": {k: len(v) for k, v in data.item_dictionaries.items()},
            "greedy_distinct_values_per_slate": greedy_distinct,
            "diversity_attribute": DIVERSITY_ATTRIBUTE,
            "fair_attribute": f_attr,
            "protected_value": f_prot,
            "protected_chosen_by_data": protected,
            "protected_items": int((data.item_codes[f_attr] == data.item_dictionaries[f_attr].index(f_prot)).sum())
            if f_prot in data.item_dictionaries.get(f_attr, ()) else 0,
            "greedy_shortfall_vs_random": shortfall,
            "fair_p": f_p, "fair_alpha": f_alpha, "fair_mtable": fair_mtable(SLATE_SIZE, f_p, f_alpha).tolist(),
        },
        "results": evaluate_runs(data, q, runs, fair_attribute=f_attr, protected=f_prot, p=f_p, alpha=f_alpha,
                                 n_bootstrap=n_bootstrap, seed=seed),
    }
    result["seconds"] = time.perf_counter() - t0
    return result


def run(root: Path = obd.DEFAULT_ROOT, campaigns=obd.CAMPAIGNS, **kw) -> dict:
    obd.verify(root)
    results = [run_campaign(c, Path(root), **kw) for c in campaigns]
    return {
        "benchmark": "obd_policies", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "machine": platform.machine()},
        "settings": {"n_bootstrap": kw.get("n_bootstrap", 1000), "seed": kw.get("seed", 0),
                     "folds": kw.get("folds", 3), "l2": kw.get("l2") or "chosen by cross-fitted log loss",
                     "slate_size": SLATE_SIZE, "position_weights": "log2: 1 / log2(k + 1)",
                     "data": f"OBD sample from obp {obd.OBP_VERSION} (sha256 {obd.OBP_SDIST_SHA256}), random logs",
                     "bootstrap": "joint: rows resampled together, per-position estimates recomputed "
                                  "on each resample's rows at that position (module docstring)"},
        "campaigns": results,
    }


# ------------------------------------------------------------------ report
def _fmt(e: dict, scale: float = 100.0) -> str:
    if e["ci95"] is None:
        return f"{e['value'] * scale:.3f}"
    return f"{e['value'] * scale:.3f} [{e['ci95'][0] * scale:.3f}, {e['ci95'][1] * scale:.3f}]"


def print_table(result: dict, file=None) -> None:
    """Two rich tables: estimates per policy, then exposure and rules."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, width=220)
    t = Table(title="OBD random logs: re-ranking policies' CTR per position and expected clicks per "
                    "slate (both in %, i.e. per 100 slates) with 95 % bootstrap CIs; ESS (! = warning)")
    for col in ("campaign", "policy", "est.", "position 1", "position 2", "position 3",
                "slate: clicks/100", "ESS p1/p2/p3 | slate"):
        t.add_column(col)
    for c in result["campaigns"]:
        first = True
        for name in (RANDOM, *POLICIES):
            r = c["results"][name]["estimates"]
            for e in SHOWN:
                x = r[e]
                ess = "/".join(f"{p['ess']:.0f}{'!' if p['warning'] else ''}" for p in x["positions"])
                ess += f" | {x['slate']['ess']:.0f}{'!' if x['slate']['warning'] else ''}"
                t.add_row(c["campaign"] if first else "", name if e == SHOWN[0] else "", e,
                          *[_fmt(p) for p in x["positions"]], _fmt(x["slate"]), ess,
                          end_section=(name == POLICIES[-1] and e == SHOWN[-1]))
                first = False
    console.print(t)
    bounds = [(m, u) for c in result["campaigns"] for name in POLICIES
              for m, u in zip(c["results"][name]["matched_rows_per_position"],
                              c["results"][name]["zero_click_upper95_ctr"]) if u is not None]
    if bounds:
        m, u = min(bounds)
        console.print(f"ips/snips [0.000, 0.000]: no click in the rows where the policy matches the log "
                      f"(column 'matched rows' below): the bootstrap cannot see past them; the exact "
                      f"one-sided 95 % upper bound on that position's CTR is 1 - 0.05^(1/m), "
                      f"e.g. {u:.1%} at m = {m}.")
    t = Table(title=f"Exposure (log2 weights) and rules: protected = the {FAIR_ATTRIBUTE} value the greedy "
                    "under-exposes most; shares against the random policy's (= catalogue share)")
    for col in ("campaign", "policy", "protected share (random)", f"distinct {DIVERSITY_ATTRIBUTE}/slate",
                "max per value", "meets FA*IR", "relaxed", "distinct slates", "matched rows (clicks)"):
        t.add_column(col)
    for c in result["campaigns"]:
        dc = c["data_checks"]
        attr, prot = dc["fair_attribute"], dc["protected_value"]
        rand = c["results"][RANDOM]["exposure_share"][attr][prot]
        for i, name in enumerate(POLICIES):
            r = c["results"][name]
            s = r["slates"]
            relaxed = ", ".join(f"{k} {v:.1%}" for k, v in r["relaxation_rate"].items()) or "-"
            t.add_row(f"{c['campaign']} ({prot[:8]}: {dc['protected_items']} of {c['n_items']} items)" if i == 0 else "",
                      name, f"{r['exposure_share'][attr][prot]:.3f} ({rand:.3f})",
                      f"{s['distinct_per_slate'][DIVERSITY_ATTRIBUTE]:.2f}",
                      str(s.get(f"max_per_{DIVERSITY_ATTRIBUTE}_value", "-")),
                      f"{s['meets_fair_mtable']:.1%}" if "meets_fair_mtable" in s else "-",
                      relaxed, str(s["distinct_slates"]),
                      "/".join(f"{m} ({k})" for m, k in zip(r["matched_rows_per_position"],
                                                          r["matched_clicks_per_position"])),
                      end_section=(i == len(POLICIES) - 1))
    console.print(t)
    warned = sorted({w for c in result["campaigns"] for name in POLICIES
                     for e in SHOWN for w in [c["results"][name]["estimates"][e]["slate"]["warning"]] if w})
    if warned:
        console.print(f"[yellow]{len(warned)} ESS warnings on the slate estimates, e.g.: {warned[0]}")


def main(argv: list[str] | None = None) -> int:
    from offline.obd_experiment import write_result

    ap = argparse.ArgumentParser(prog="python -m offline.obd_policies", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(obd.DEFAULT_ROOT), help="the unpacked sample (make data)")
    ap.add_argument("--campaign", nargs="+", default=list(obd.CAMPAIGNS), choices=obd.CAMPAIGNS,
                    help="campaigns to run (default: all three; 'all' is the OBD campaign of that name)")
    ap.add_argument("--policy-dir", default=str(DEFAULT_POLICY_DIR),
                    help="where the policy files are written (when absent) and read")
    ap.add_argument("--reset-policies", action="store_true", help="write the default policy files back")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=3, help="cross-fitting folds of the reward model")
    ap.add_argument("--l2", type=float, default=None, help="reward model's L2 (default: chosen by cross-fitted log loss)")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON results ('-': none)")
    args = ap.parse_args(argv)
    campaigns = tuple(dict.fromkeys(args.campaign))
    try:
        result = run(Path(args.root), campaigns, policy_dir=Path(args.policy_dir),
                     reset_policies=args.reset_policies, n_bootstrap=args.n_bootstrap, seed=args.seed,
                     folds=args.folds, l2=args.l2)
    except (obd.ObdError, PolicyError, PolicyInvalid) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(result)
    write_result(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
