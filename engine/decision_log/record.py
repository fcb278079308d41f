"""What one served decision leaves behind (`DecisionRecord`), and what came of it (`OutcomeRecord`).

A record is built on the request path, so building one is cheap: it keeps references to the
request's arrays (requests are immutable once decoded) and copies only the slate's K indices and
ids. The Arrow conversion happens later, on the log's converter thread (`engine.decision_log.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np

from engine.types import Candidates, RerankRequest, RerankResult, slate_indices

#: attribute -> value -> additive utility boost, as `engine.decide.Decision.boosts` holds them.
Boosts = dict[str, dict[str, float]]


@dataclass(frozen=True, slots=True)
class Diagnostics:
    """How good the logged answer was, as the result said."""

    solver: str  # which solver produced the slate
    status: str  # optimal | feasible | relaxed
    objective: float
    bound: float | None
    gap: float | None
    exact_status: str  # "" when no exact solver ran; "skipped: <reason>" when it could not
    budget_ms: float  # the solve budget that applied (policy / request, capped by the deadline)
    eligible: int  # candidates left after filters
    relaxed: tuple[str, ...] = ()  # names of the hard rules given up, in policy order

    @staticmethod
    def of(result: RerankResult) -> "Diagnostics":
        return Diagnostics(result.solver, result.status, result.objective, result.bound, result.gap,
                           result.exact_status, result.budget_ms, result.eligible,
                           tuple(c.name for c in result.constraints if c.relaxed))


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One served decision: what the request held, what was decided with which policy revision,
    how likely the slate was, and how good it was.

    A replay is `decide(engine.version(rec.policy, rec.policy_digest), rec.request(),
    limits=engine.limits, boosts=rec.boosts)`: it reproduces the slate bit for bit (for the greedy
    and exposure-LP paths; an exact solve stopped by its time limit may differ, see engine.decide).

    Fields after `seed` up to `deadline_ms` are the request as received; `request()` rebuilds it.
    Experiment and exploration fields are None / -1 / False until those features fill them in.
    """

    ts: datetime  # UTC, microsecond resolution
    request_id: str
    unit_id: str  # the experiment unit: user_id, or request_id when that is empty
    policy: str  # the policy revision that answered (its name, digest and version string)
    policy_digest: str
    policy_version: str
    experiment: str | None
    variant: str | None
    bucket: int  # experiment bucket, -1: none
    holdout: bool
    seed: int | None  # exploration seed, in [0, 2**64)
    # ---- the request as received
    request_policy: str  # the name the caller asked for
    candidates: Candidates
    slate_size: int
    budget_ms: float
    solver: str | None
    objective_weights: dict[str, float]
    explain: bool
    targets: dict[str, dict[str, float]]
    user_id: str
    deadline_ms: float | None
    # ---- what was decided
    boosts: Boosts | None  # Decision.boosts (None: the policy has no amortized rule)
    slate_index: np.ndarray  # int32[K]: indices into candidates, in slate order
    slate_item_ids: tuple[str, ...]
    diagnostics: Diagnostics
    # ---- propensities (exploration): None when the slate was deterministic
    joint: float | None = None  # probability of the whole slate
    cascade: np.ndarray | None = None  # float64[K]: probability of each prefix (1..K items)
    marginal: np.ndarray | None = None  # float64[K]: P(this item at this position)
    marginal_samples: int = 0  # 0: the marginals are exact; else the Monte Carlo sample count

    @staticmethod
    def of(req: RerankRequest, decision_or_result, *, boosts: Boosts | None = None,
           ts: datetime | None = None, unit_id: str | None = None, experiment: str | None = None,
           variant: str | None = None, bucket: int = -1, holdout: bool = False,
           seed: int | None = None, joint: float | None = None, cascade=None, marginal=None,
           marginal_samples: int = 0) -> "DecisionRecord":
        """The record of one answer: `req` as received and the `engine.decide.Decision` (or its
        `RerankResult`) that answered it.

        Parameters
        ----------
        req : RerankRequest
            The request as received; its arrays are referenced, not copied.
        decision_or_result : Decision | RerankResult
            The answer. A Decision brings its boosts along.
        boosts : dict, optional
            The boosts the answer was computed with, when `decision_or_result` is a bare result
            (default: the Decision's; a bare result without them logs None).
        ts : datetime, optional
            When the decision was made (default: now, UTC).
        unit_id : str, optional
            Default: `req.user_id`, or `req.request_id` when that is empty (the issue's unit).
        experiment, variant, bucket, holdout, seed
            Experiment assignment and exploration seed, when there are any.
        joint, cascade, marginal, marginal_samples
            Propensities of a stochastic slate (see the fields).
        """
        result = getattr(decision_or_result, "result", decision_or_result)
        if boosts is None and result is not decision_or_result:
            boosts = decision_or_result.boosts
        items = result.items
        return DecisionRecord(
            ts=ts if ts is not None else datetime.now(timezone.utc),
            request_id=req.request_id,
            unit_id=unit_id if unit_id is not None else (req.user_id or req.request_id),
            policy=result.policy, policy_digest=result.policy_digest,
            policy_version=result.policy_version,
            experiment=experiment, variant=variant, bucket=bucket, holdout=holdout, seed=seed,
            request_policy=req.policy, candidates=req.candidates, slate_size=req.slate_size,
            budget_ms=req.budget_ms, solver=req.solver, objective_weights=req.objective_weights,
            explain=req.explain, targets=req.targets, user_id=req.user_id,
            deadline_ms=req.deadline_ms,
            boosts=boosts,
            slate_index=slate_indices(items, np.int32),
            slate_item_ids=tuple(it.item_id for it in items),
            diagnostics=Diagnostics.of(result),
            joint=joint,
            cascade=None if cascade is None else np.asarray(cascade, dtype=np.float64),
            marginal=None if marginal is None else np.asarray(marginal, dtype=np.float64),
            marginal_samples=marginal_samples,
        )

    def request(self) -> RerankRequest:
        """The request as received: same columns in the same order, float64 scores and numeric
        columns and float32 embeddings bit for bit, int64 attribute codes and their
        dictionaries. (`Candidates.id_check`, a decoder's hint, is not kept: the engine finds
        the same facts itself.)"""
        return RerankRequest(
            policy=self.request_policy, candidates=self.candidates, slate_size=self.slate_size,
            budget_ms=self.budget_ms, solver=self.solver,
            objective_weights=dict(self.objective_weights), explain=self.explain,
            targets={rule: dict(shares) for rule, shares in self.targets.items()},
            request_id=self.request_id, user_id=self.user_id, deadline_ms=self.deadline_ms)

    def approx_bytes(self) -> int:
        """About what the record holds onto, for the log's memory bound (see candidates_bytes)."""
        return candidates_bytes(self.candidates)

    def without_candidates(self) -> "DecisionRecord":
        """This record with no candidates (what a staged log record keeps of it, having copied
        the candidate columns: see engine.decision_log.schema.Staged)."""
        return replace(self, candidates=_NO_CANDIDATES)


_NO_CANDIDATES = Candidates(item_ids=())


def candidates_bytes(c: Candidates) -> int:
    """About the bytes a request's candidate columns hold (ids, 8 bytes per value of every score,
    numeric and attribute column, the embedding matrix), plus a constant for the rest: a few
    length lookups, no pass over the data."""
    n = len(c.item_ids)
    e = c.embeddings
    return (n * (24 + 8 * (len(c.scores) + len(c.numeric) + len(c.attributes)))
            + (e.nbytes if e is not None else 0) + 1024)


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """What the user did with one slate position, reported after the fact (the `ReportOutcomes`
    RPC or a file); joined to the decision by request id and position."""

    request_id: str
    position: int  # 1-based, as SlateItem.position
    item_id: str  # the item shown there ("" if the reporter does not say; not used by the join)
    clicks: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    ts: datetime | None = None  # when reported (default: now, UTC, when converted)

    def __post_init__(self) -> None:
        if not (isinstance(self.position, int) and self.position >= 1):
            raise ValueError(f"OutcomeRecord position: must be an integer >= 1, got {self.position!r}")
        for name in ("clicks", "add_to_carts", "purchases"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"OutcomeRecord {name}: must be an integer >= 0, got {v!r}")

    def approx_bytes(self) -> int:
        return 128 + len(self.request_id) + len(self.item_id)


__all__ = ["Boosts", "DecisionRecord", "Diagnostics", "OutcomeRecord", "candidates_bytes"]
