"""Reading a decision log back: the Parquet folder (or a Redis stream) as one Arrow table, a
summary of it for `reranker log`, outcomes, and decisions joined to their outcomes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from engine.decision_log.schema import (
    DECISION_SCHEMA, OUTCOME_SCHEMA, OUTCOME_VERSION_KEY, VERSION_KEY, check_version,
)
from engine.decision_log.sinks import DEFAULT_STREAM, read_stream_table

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_stream_url(target: str | os.PathLike) -> bool:
    """Whether a log target names a Redis stream (`redis://`, `rediss://`, `unix://`) rather than
    a folder or file."""
    return isinstance(target, str) and target.startswith(_REDIS_SCHEMES)


def log_files(folder: str | os.PathLike, prefix: str = "decisions") -> list[Path]:
    """The finished files of a log folder (`<prefix>-*.parquet`, subfolders included), in name
    order, which is start-time order; `.tmp` files (being written) are never listed."""
    return sorted(p for p in Path(folder).rglob(f"{prefix}-*.parquet") if p.is_file())


def _read(source: str | os.PathLike, schema: pa.Schema, key: bytes, prefix: str,
          columns: list[str] | None) -> pa.Table:
    path = Path(source)
    files = [path] if path.is_file() else log_files(path, prefix) if path.is_dir() else None
    if files is None:
        raise FileNotFoundError(f"no such log file or folder: {source}")
    if not files:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet")
    for fragment in dataset.get_fragments():
        check_version(fragment.physical_schema, fragment.path, key)
    return dataset.to_table(columns=columns).replace_schema_metadata(schema.metadata)


def read_log(source: str | os.PathLike, *, columns: list[str] | None = None,
             stream: str = DEFAULT_STREAM) -> pa.Table:
    """A decision log as one table of DECISION_SCHEMA: a Parquet file, a folder of them (finished
    files only: see `log_files`) or a Redis URL (`redis://host:port/db`, the entries of `stream`).
    `columns`: read only these (the candidate columns are most of a log's bytes)."""
    if is_stream_url(source):
        table = read_stream_table(source, stream)
        return table.select(columns) if columns else table
    return _read(source, DECISION_SCHEMA, VERSION_KEY, "decisions", columns)


def read_outcomes(source: str | os.PathLike) -> pa.Table:
    """Outcomes as one table of OUTCOME_SCHEMA: a Parquet file or a folder of `outcomes-*.parquet`."""
    return _read(source, OUTCOME_SCHEMA, OUTCOME_VERSION_KEY, "outcomes", None)


SUMMARY_COLUMNS = ["ts", "policy", "policy_digest", "policy_version", "experiment", "variant",
                   "slate_item_ids", "diagnostics", "joint", "log_writer", "log_dropped"]


def _counts(table: pa.Table, keys: list[str]) -> list[dict]:
    if table.num_rows == 0:
        return []
    grouped = table.group_by(keys).aggregate([([], "count_all")]).to_pylist()
    rows = [{**{k: g[k] for k in keys}, "records": g["count_all"]} for g in grouped]
    return sorted(rows, key=lambda r: (-r["records"], *(str(r[k]) for k in keys)))


def summarise(table: pa.Table) -> dict:
    """What a log holds, for `reranker log`: records, time range, records per policy revision
    (name, digest, version), per experiment variant, mean slate length, statuses and solvers,
    relaxed rules, records with propensities, and a note when writers had dropped records."""
    n = table.num_rows
    out: dict = {"records": n}
    if n == 0:
        return out
    ts = table.column("ts")
    out["first_ts"] = pc.min(ts).as_py().isoformat()
    out["last_ts"] = pc.max(ts).as_py().isoformat()
    out["policies"] = _counts(table.select(["policy", "policy_digest", "policy_version"]),
                              ["policy", "policy_digest", "policy_version"])
    with_variant = table.filter(pc.is_valid(table.column("variant")))
    out["variants"] = _counts(with_variant.select(["experiment", "variant"]), ["experiment", "variant"])
    out["mean_slate_length"] = float(pc.mean(pc.list_value_length(table.column("slate_item_ids"))).as_py())
    diag = table.column("diagnostics")
    for name, key in (("statuses", "status"), ("solvers", "solver")):
        values = pc.struct_field(diag, key)
        out[name] = {r["values"]: r["counts"] for r in pc.value_counts(values).to_pylist()}
    relaxed = pc.list_flatten(pc.struct_field(diag, "relaxed"))
    out["relaxed"] = {r["values"]: r["counts"] for r in pc.value_counts(relaxed).to_pylist()} if len(relaxed) else {}
    out["with_propensities"] = int(pc.sum(pc.is_valid(table.column("joint"))).as_py() or 0)
    writers = table.select(["log_writer", "log_dropped"]).filter(pc.is_valid(table.column("log_writer")))
    if writers.num_rows:
        per_writer = writers.group_by("log_writer").aggregate([("log_dropped", "max")])
        dropped = int(pc.sum(per_writer.column("log_dropped_max")).as_py() or 0)
        out["writers"] = per_writer.num_rows
        if dropped:
            out["dropped"] = dropped
            out["dropped_note"] = (
                f"at least {dropped} record(s) were dropped by {per_writer.num_rows} writer(s) before "
                "their last batch here (queue full, sink failures, malformed records); drops after "
                "it are only in the writers' metrics (decision log dropped counter)")
    return out


# ------------------------------------------------------------------ outcomes joined to decisions
def _at_position(col: pa.ChunkedArray | pa.Array, parent: np.ndarray, k: np.ndarray, dtype) -> pa.Array:
    """Per exploded row (decision `parent`, 0-based position `k`): element k of the decision's
    list in `col`, null where the list is null or shorter."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy()
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    values = arr.values.to_numpy(zero_copy_only=False)
    idx = offsets[parent] + k
    ok = valid[parent] & (idx < offsets[parent + 1])
    out = np.zeros(len(parent), dtype=dtype)
    out[ok] = values[idx[ok]]
    return pa.array(out, mask=~ok)


def join_outcomes(decisions: pa.Table, outcomes: pa.Table) -> pa.Table:
    """One row per decision and slate position, in log order, with the outcomes reported for it
    (summed over every report of that request id and position; 0 where there are none).

    Joined on (request_id, position); an outcome's item_id is not matched (the logged slate
    says which item was there). A request id logged twice gets its outcomes on both decisions.
    Columns: request_id, ts, unit_id, policy, policy_digest, experiment, variant, bucket,
    position (1-based), item_id, candidate_index, joint, cascade (probability of the prefix
    ending here), marginal (of this item at this position), clicks, add_to_carts, purchases.
    """
    check_version(decisions.schema)
    check_version(outcomes.schema, key=OUTCOME_VERSION_KEY)
    ids = decisions.column("slate_item_ids").combine_chunks()
    parent = pc.list_parent_indices(ids).to_numpy().astype(np.int64)
    offsets = ids.offsets.to_numpy()
    k = np.arange(len(parent), dtype=np.int64) - offsets[parent] + offsets[0] if len(parent) else \
        np.zeros(0, dtype=np.int64)
    take = pa.array(parent)
    rows = {name: decisions.column(name).take(take) for name in (
        "request_id", "ts", "unit_id", "policy", "policy_digest", "experiment", "variant", "bucket")}
    exploded = pa.table({
        **rows,
        "position": pa.array((k + 1).astype(np.int32)),
        "item_id": pc.list_flatten(ids),
        "candidate_index": pc.list_flatten(decisions.column("slate_index").combine_chunks()),
        "joint": decisions.column("joint").take(take),
        "cascade": _at_position(decisions.column("cascade"), parent, k, np.float64),
        "marginal": _at_position(decisions.column("marginal"), parent, k, np.float64),
        "_row": pa.array(np.arange(len(parent), dtype=np.int64)),
    })
    counts = ["clicks", "add_to_carts", "purchases"]
    if outcomes.num_rows:
        summed = outcomes.group_by(["request_id", "position"]).aggregate([(c, "sum") for c in counts])
        summed = summed.rename_columns([n.removesuffix("_sum") for n in summed.column_names])
        joined = exploded.join(summed, keys=["request_id", "position"], join_type="left outer")
        joined = joined.sort_by("_row")
    else:
        joined = exploded
        for c in counts:
            joined = joined.append_column(c, pa.nulls(joined.num_rows, pa.int64()))
    for c in counts:
        i = joined.schema.get_field_index(c)
        joined = joined.set_column(i, c, pc.fill_null(joined.column(c), 0))
    return joined.drop_columns(["_row"])


__all__ = ["SUMMARY_COLUMNS", "join_outcomes", "log_files", "read_log", "read_outcomes", "summarise"]
