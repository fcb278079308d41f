"""The decision log: one record per served decision, written off the request path, read back
for replay, off-policy evaluation and `reranker log`.

    log = DecisionLog(ParquetSink("logs/decisions"))       # or RedisStreamSink("redis://...")
    if log.should_log(req.request_id, exploration=False):   # on the request path
        log.offer_decision(req, decision)                    # never blocks, never raises
        # (or log.offer(DecisionRecord.of(req, decision, experiment=..., seed=...)))
    ...
    log.close(timeout_s=10)                                  # SIGTERM: write what is queued

    table = read_log("logs/decisions")                       # finished files, one Arrow table
    for rec in from_table(table):                            # replay: the same slate, bit for bit
        decide(engine.version(rec.policy, rec.policy_digest), rec.request(),
               limits=engine.limits, boosts=rec.boosts)

Parts: `record` (DecisionRecord, OutcomeRecord), `schema` (the Arrow schema, version 1, and the
record <-> batch conversions), `sinks` (Parquet files, Redis Streams), `writer` (DecisionLog:
queue, converter and writer threads, retries, sampling), `read` (read_log, summarise, outcomes and their join).
What is lost, and when, is in DecisionLog's docstring (and ParquetSink's for files).
"""

from engine.decision_log.read import (
    is_stream_url, join_outcomes, log_files, read_log, read_outcomes, summarise,
)
from engine.decision_log.record import Boosts, DecisionRecord, Diagnostics, OutcomeRecord
from engine.decision_log.schema import (
    DECISION_SCHEMA, OUTCOME_SCHEMA, SCHEMA_VERSION, VERSION_KEY, from_table, outcomes_from_table,
    outcomes_to_batch, to_batch,
)
from engine.decision_log.sinks import (
    DEFAULT_STREAM, OutcomeSink, ParquetSink, RedisStreamSink, Sink, read_stream, read_stream_table,
)
from engine.decision_log.writer import DecisionLog, LogStats, outcome_log, sampled, sampling_hash

__all__ = [
    "Boosts", "is_stream_url", "DECISION_SCHEMA", "DEFAULT_STREAM", "DecisionLog", "DecisionRecord", "Diagnostics",
    "LogStats", "OUTCOME_SCHEMA", "OutcomeRecord", "OutcomeSink", "ParquetSink", "RedisStreamSink",
    "SCHEMA_VERSION", "Sink", "VERSION_KEY", "from_table", "join_outcomes", "log_files",
    "outcome_log", "outcomes_from_table", "outcomes_to_batch", "read_log", "read_outcomes",
    "read_stream", "read_stream_table", "sampled", "sampling_hash", "summarise", "to_batch",
]
