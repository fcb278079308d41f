"""Off-policy estimates of a replayed policy's online metrics, from the log's propensities and
outcomes (offline.estimators).

For each replayed (target) policy, what it gives the logged slates: it is deterministic, so the
probability that it puts the logged item at position k is 1 when its own slate has that item
there and 0 otherwise (`PolicyReplay.target_match`); of the logged prefix 1..k, 1 when its slate
starts with that prefix; of the whole slate, 1 when the slates are equal. The logging policy's
probabilities are the logged propensities (`marginal`, `cascade`, `joint`); a record without
them was served deterministically and counts with probability 1.

The reward at position k is the outcome count reported for it (clicks by default), and a slate's
value is their sum (`position_weight` all ones): the expected clicks per slate. The reward model
of "dm" and "dr" is the logged score `score` (p_click by default) scaled per position to the
log's click rate: q_k(item) = score(item) x sum_i r_ik / sum_i score(logged item_ik), fitted on
the whole log (a model of the position effect; the score carries the item's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.decision_log import join_outcomes, read_log, read_outcomes
from offline.estimators import ESTIMATORS, Estimate, SlateLog, estimate_all
from offline.replay import LOGGED, PolicyReplay, ReplayReport

#: the log columns the estimates read
COLUMNS = ["request_id", "ts", "unit_id", "policy", "policy_digest", "experiment", "variant", "bucket",
           "slate_index", "slate_item_ids", "joint", "cascade", "marginal"]
OUTCOMES = ("clicks", "add_to_carts", "purchases")
#: the estimators that read the item-position marginals
MARGINAL_ESTIMATORS = ("iips", "sniips", "pi")


@dataclass
class LoggedOutcomes:
    """The logged slates' rewards and logging propensities, [n, K] in log order."""

    request_ids: list[str]
    reward: np.ndarray  # float64[n, K]
    mask: np.ndarray  # bool[n, K]
    behavior_marginal: np.ndarray
    behavior_cascade: np.ndarray
    behavior_joint: np.ndarray  # float64[n]
    logged_scores: np.ndarray  # float64[n, K]: the reward model's score of the logged items
    stochastic: int  # records with propensities
    marginal_missing: int  # stochastic records logged without item-position marginals
    unmatched_outcomes: int  # outcome rows whose request id is not in the log
    outcome_rows: int


def check_propensities(source) -> None:
    """Refuse a log whose propensities are outside (0, 1] (or NaN), naming the file, the row (0-based,
    in that file) and the column."""
    from offline.replay import log_sources

    for name, table in log_sources(source, ["joint", "cascade", "marginal"]):
        for col in ("joint", "cascade", "marginal"):
            arr = table.column(col).combine_chunks()
            if isinstance(arr.type, pa.ListType):
                rows = pc.list_parent_indices(arr).to_numpy()
                values = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float64)
            else:
                rows = np.flatnonzero(arr.is_valid().to_numpy(zero_copy_only=False))
                values = arr.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
            bad = ~((values > 0.0) & (values <= 1.0))
            if bad.any():
                j = int(np.argmax(bad))
                raise ValueError(f"{name}: row {int(rows[j])}: column '{col}': a propensity must be in "
                                 f"(0, 1], got {float(values[j])!r}")


def logged_outcomes(source, outcomes_source, logged: PolicyReplay, *, outcome: str = "clicks") -> LoggedOutcomes:
    """Read the log's propensities and join its outcomes (`outcomes_source`: a file or folder of
    outcomes, e.g. `<log>/outcomes`). `logged`: the replay's LOGGED entry (its scores)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome: expected one of {', '.join(OUTCOMES)}, got {outcome!r}")
    check_propensities(source)
    decisions = read_log(source, columns=COLUMNS)
    outcomes = read_outcomes(outcomes_source)
    joined = join_outcomes(decisions, outcomes)
    known = pa.array(sorted(set(decisions.column("request_id").to_pylist())))
    unmatched = int(pc.sum(pc.invert(pc.is_in(outcomes.column("request_id"), known))).as_py() or 0) \
        if outcomes.num_rows else 0
    lengths = np.asarray(pc.list_value_length(decisions.column("slate_index")).to_numpy(zero_copy_only=False),
                         dtype=np.int64)
    n = decisions.num_rows
    K = int(lengths.max()) if n else 0
    mask = np.arange(K)[None, :] < lengths[:, None]
    parent = np.repeat(np.arange(n), lengths)
    k = np.concatenate([np.arange(m) for m in lengths]) if n else np.zeros(0, np.int64)

    def grid(values, fill: float) -> np.ndarray:
        out = np.full((n, K), fill, dtype=np.float64)
        out[parent, k] = values
        return out

    reward = grid(joined.column(outcome).to_numpy().astype(np.float64), 0.0)
    marg = joined.column("marginal").to_numpy(zero_copy_only=False)
    casc = joined.column("cascade").to_numpy(zero_copy_only=False)
    bm = grid(np.where(np.isnan(marg.astype(np.float64)), 1.0, marg), 1.0)
    bc = grid(np.where(np.isnan(casc.astype(np.float64)), 1.0, casc), 1.0)
    joint = decisions.column("joint").to_numpy(zero_copy_only=False).astype(np.float64)
    stochastic = int(np.count_nonzero(~np.isnan(joint)))
    no_marginal = decisions.column("marginal").is_null().to_numpy(zero_copy_only=False)
    marginal_missing = int(np.count_nonzero(no_marginal & ~np.isnan(joint)))
    bj = np.where(np.isnan(joint), 1.0, joint)
    scores = _fit(logged.target_scores, n, K)
    return LoggedOutcomes(decisions.column("request_id").to_pylist(), reward, mask, bm, bc, bj, scores,
                          stochastic, marginal_missing, unmatched, outcomes.num_rows)


def _fit(m: np.ndarray | None, n: int, K: int) -> np.ndarray:
    """[n, k] -> [n, K] float64 (cut or padded with zeros)."""
    out = np.zeros((n, K))
    if m is not None and m.size:
        k = min(K, m.shape[1])
        out[:, :k] = m[:, :k]
    return out


def _target_grids(p: PolicyReplay, n: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    return _fit(p.target_match, n, K), _fit(p.target_scores, n, K)


def slate_log(lo: LoggedOutcomes, p: PolicyReplay) -> SlateLog:
    """The estimators' input for target policy `p`."""
    n, K = lo.reward.shape
    if p.request_ids != lo.request_ids:
        raise ValueError("the replay and the log disagree on the records (read from different logs?)")
    match, own = _target_grids(p, n, K)
    if p.label == LOGGED:  # the logging policy itself: its probabilities are the logged ones
        target_m, target_c, target_j = lo.behavior_marginal, lo.behavior_cascade, lo.behavior_joint
    else:
        target_m = np.where(lo.mask, match, 1.0)
        target_c = np.cumprod(target_m, axis=1)
        target_j = target_c[:, -1] if K else np.ones(n)
    logged_sum = (lo.logged_scores * lo.mask).sum(axis=0)
    rate = np.divide((lo.reward * lo.mask).sum(axis=0), logged_sum, out=np.zeros(K), where=logged_sum > 0)
    return SlateLog(
        reward=lo.reward, behavior_marginal=lo.behavior_marginal, target_marginal=target_m,
        behavior_cascade=lo.behavior_cascade, target_cascade=target_c,
        behavior_joint=lo.behavior_joint, target_joint=target_j,
        q_logged=lo.logged_scores * rate, q_target=own * rate, mask=lo.mask)


@dataclass
class OffPolicy:
    """Estimates per policy label, and what the reader should know about them."""

    outcome: str
    estimates: dict[str, dict[str, Estimate]]  # label -> estimator -> Estimate
    on_policy: float  # the log's own mean reward per slate (what "logged" should come out as)
    stochastic: int
    n: int
    unmatched_outcomes: int
    outcome_rows: int
    notes: list[str]

    def to_json(self) -> dict:
        return {"outcome": self.outcome, "on_policy": self.on_policy, "stochastic_records": self.stochastic,
                "records": self.n, "outcome_rows": self.outcome_rows,
                "unmatched_outcomes": self.unmatched_outcomes, "notes": self.notes,
                "estimates": {label: {k: asdict(e) for k, e in by.items()}
                              for label, by in self.estimates.items()}}


def off_policy(report: ReplayReport, outcomes_source, *, outcome: str = "clicks",
               estimators: tuple[str, ...] | None = None, n_bootstrap: int = 1000, seed: int = 0) -> OffPolicy:
    """Off-policy estimates of every replayed policy (and of the logged one, a check: its
    estimates must agree with the on-policy mean)."""
    by = report.by_label()
    lo = logged_outcomes(report.source, outcomes_source, by[LOGGED], outcome=outcome)
    n = len(lo.request_ids)
    notes = []
    if lo.stochastic == 0:
        notes.append("the log's slates were deterministic (no propensities): the estimates only count "
                     "the slates a policy shares with the log, and carry its bias where they differ")
    elif lo.stochastic < n:
        notes.append(f"{n - lo.stochastic} of {n} records have no propensities (served deterministically): "
                     f"counted with probability 1")
    if lo.unmatched_outcomes:
        notes.append(f"{lo.unmatched_outcomes} of {lo.outcome_rows} outcome rows match no logged request "
                     f"(ignored)")
    names = list(estimators) if estimators else None  # None: every estimator the inputs allow
    if lo.marginal_missing:
        notes.append(f"{lo.marginal_missing} stochastic records were logged without item-position "
                     f"marginals (the policy's exploration.marginal_samples is 0): the estimators that "
                     f"need them ({', '.join(MARGINAL_ESTIMATORS)}) are left out")
        names = [e for e in (names or ESTIMATORS) if e not in MARGINAL_ESTIMATORS]
    out: dict[str, dict[str, Estimate]] = {}
    for p in report.policies:
        out[p.label] = estimate_all(slate_log(lo, p), names, n_bootstrap=n_bootstrap, seed=seed)
    on_policy = float((lo.reward * lo.mask).sum() / max(n, 1))
    return OffPolicy(outcome, out, on_policy, lo.stochastic, n, lo.unmatched_outcomes, lo.outcome_rows, notes)
