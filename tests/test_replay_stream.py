"""Replaying a decision log kept in a Redis stream (what `serve --decision-log redis://` writes)
gives the numbers the same log gives from Parquet files, in process and on local processes."""

from __future__ import annotations

import pyarrow as pa

from engine.decision_log import RedisStreamSink, read_log
from offline.policies import version_from_text
from offline.replay import log_chunks, replay
from testing.engines import engine_with, policy
from testing.logs import synthetic_log
from testing.redis_server import redis_server  # noqa: F401  (fixture)

TARGET = """name: target
version: "1"
slate_size: 5
objective: {weights: {p_click: 1.0, p_purchase: 3.0}}
constraints:
  - {name: cap_cat, type: max_count, attribute: category, max: 2}
"""


def test_a_stream_log_replays_like_the_same_log_in_files(tmp_path, redis_server):  # noqa: F811
    eng = engine_with(policy(name="logged", slate_size=5))
    synthetic_log(tmp_path, eng, "logged", 300, candidates_per_request=30, rows_per_group=64)
    table = read_log(tmp_path)
    url = f"{redis_server.url}/0"
    sink = RedisStreamSink(url)
    for batch in table.to_batches(max_chunksize=50):
        sink.write(pa.Table.from_batches([batch]))
    sink.close()
    assert read_log(url).num_rows == 300
    chunks = log_chunks(url, chunk_rows=64)
    assert [c.rows() for c in chunks] == [64, 64, 64, 64, 44]  # a stream is cut every chunk_rows records
    versions = [version_from_text(TARGET)]
    from_files = replay(tmp_path, versions)
    for kw in ({}, {"workers": 2}):
        from_stream = replay(url, versions, chunk_rows=64, **kw)
        assert from_stream.records == 300
        assert ([{**p.to_json(), "solve_us": None, "total_us": None} for p in from_stream.policies]
                == [{**p.to_json(), "solve_us": None, "total_us": None} for p in from_files.policies])
