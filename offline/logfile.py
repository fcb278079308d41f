"""Write decision records straight to a Parquet log file (no queue, no threads): for logs made
offline (converted data sets, synthetic logs, benchmarks). What the serving writer writes and
what this writes read back alike with `engine.decision_log.read_log`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from engine.decision_log import DECISION_SCHEMA, to_batch
from engine.decision_log.record import DecisionRecord

#: records per row group: a replay's chunk (offline.replay)
ROWS_PER_GROUP = 1024


def write_log(records: Iterable[DecisionRecord], folder: str | os.PathLike, *, name: str = "decisions-0000",
              rows_per_group: int = ROWS_PER_GROUP, writer: str = "offline") -> Path:
    """Write `records` to `folder/<name>.parquet`, one row group per `rows_per_group` records, in
    order; returns the file. `name` must start with "decisions-" for read_log to find it."""
    if not name.startswith("decisions-"):
        raise ValueError(f"write_log name: must start with 'decisions-' (read_log looks for those), got {name!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    group: list[DecisionRecord] = []
    with pq.ParquetWriter(tmp, DECISION_SCHEMA) as out:
        for rec in records:
            group.append(rec)
            if len(group) == rows_per_group:
                out.write_batch(to_batch(group, writer=writer), row_group_size=rows_per_group)
                group = []
        if group:
            out.write_batch(to_batch(group, writer=writer), row_group_size=rows_per_group)
    os.replace(tmp, path)
    return path
