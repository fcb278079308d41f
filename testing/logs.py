"""Synthetic decision logs: requests with random candidates, answered by a real engine under a
policy, logged as the server logs them (engine.decision_log.DecisionRecord)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from engine.decide import decide
from engine.decision_log.record import DecisionRecord
from engine.engine import Engine
from engine.types import RerankRequest
from offline.logfile import write_log
from testing.engines import candidates


def logged_records(engine: Engine, policy: str, n: int, *, candidates_per_request: int = 100,
                   slate_size: int = 0, seed: int = 0) -> Iterator[DecisionRecord]:
    """`n` records of `policy` served by `engine` (its ledger fed in order), request ids
    `req-<seed>-<i>`, users `user-<i % 97>`."""
    version = engine.version(policy)
    for i in range(n):
        req = RerankRequest(policy=policy, candidates=candidates(candidates_per_request, seed * 1_000_003 + i),
                            slate_size=slate_size, request_id=f"req-{seed}-{i}", user_id=f"user-{i % 97}")
        snapshots = {ns: engine.ledger.snapshot(ns) for ns in version.ledger_namespaces()}
        decision = decide(version, req, limits=engine.limits, snapshots=snapshots)
        for ns, deltas in decision.deltas.items():
            engine.ledger.record(ns, deltas)
        p = decision.result.propensities
        options = {} if p is None else dict(seed=p.seed, joint=p.joint, cascade=p.cascade,
                                           marginal=p.marginal, marginal_samples=p.marginal_samples)
        yield DecisionRecord.of(req, decision, **options)


def synthetic_log(folder: str | Path, engine: Engine, policy: str, n: int, *, rows_per_group: int = 256,
                  **kw) -> Path:
    """Write `logged_records(...)` to a log folder; returns the file."""
    return write_log(logged_records(engine, policy, n, **kw), folder, rows_per_group=rows_per_group)


def simulate_clicks(log_folder: str | Path, *, seed: int = 0, examination=None) -> Path:
    """Clicks for every logged slate from a known click model, written as the log's outcomes
    (`<log>/outcomes/outcomes-0000.parquet`): the item at position k (0-based) is clicked with
    probability examination[k] x its p_click score (default examination 1 / log2(k + 2), so the
    true expected clicks of any slate are its log2-weighted p_click sum)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.decision_log import from_table, outcomes_to_batch, read_log
    from engine.decision_log.record import OutcomeRecord

    rng = np.random.default_rng(seed)
    out = []
    for rec in from_table(read_log(log_folder)):
        slate = np.asarray(rec.slate_index, dtype=np.int64)
        k = len(slate)
        exam = (1.0 / np.log2(np.arange(k) + 2.0)) if examination is None else np.asarray(examination)[:k]
        p = rec.candidates.scores["p_click"][slate] * exam
        clicks = rng.random(k) < p
        out += [OutcomeRecord(rec.request_id, pos + 1, rec.slate_item_ids[pos], clicks=1)
                for pos in np.flatnonzero(clicks).tolist()]
    folder = Path(log_folder) / "outcomes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "outcomes-0000.parquet"
    pq.write_table(pa.Table.from_batches([outcomes_to_batch(out)]), path)
    return path
