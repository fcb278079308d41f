"""Replay: re-run every logged request under each policy through the pure request path.

    report = replay("logs/decisions", [load_version("A.yaml"), load_version("B.yaml")])

Each logged record's request (the candidates as received) is answered by `engine.decide.decide`
under every policy, with nothing written to any live ledger: a policy with amortized exposure
rules gets a ledger of its own (`engine.ledger.InProcessLedger`), fed in log order, as if it had
served the log's traffic alone. The log's own slates are summarised alongside ("logged").

Per policy (`PolicyReplay`):
- direct metrics from the logged scores: for every score column s, `expected_s`, the mean over
  records of sum_k w_k s(item at position k), with examination weights w (`position_weights`,
  default log2: w_k = 1 / log2(k + 2), k = 0..K-1);
- exposure: the share of the position-weighted exposure that each value of each attribute gets,
  exposure per item, the catalogue coverage (the share of the distinct candidate items that
  were shown at least once) and the exposure Gini over the distinct candidate items;
- per rule: the share of records where it was relaxed (hard rules) or violated (soft rules);
- the share of slates that differ from the logged one, and the mean rank displacement: over the
  logged slate's items, |position in the replayed slate - logged position|, an item the replay
  left out counting as displaced to position K + 1;
- the solve time distribution (decide's elapsed_us["solve"], and the whole of decide).
- for off-policy estimates (offline.estimators): what the policy would have put where the log put
  each item (`target_match`, bool[n, K]) and the scores of its own items (`target_scores`).

Determinism: every number but the timings is the same whichever way the replay runs (in
process, `workers` processes, Ray). The log is cut into the same chunks (Parquet row groups, or
`chunk_rows` records of a stream) in every mode; per-record values are kept in log order and
summed once at the end; exposure is kept as integer counts per position and weighted at the end.
A policy with amortized rules is replayed by one task, over the whole log in order (its ledger
is sequential); the others are replayed chunk by chunk in parallel.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.decide import Decision, PolicyVersion, decide
from engine.decision_log import DECISION_SCHEMA, from_table, is_stream_url, log_files, read_log
from engine.decision_log.schema import check_version
from engine.errors import RerankError
from engine.ledger import InProcessLedger
from engine.types import slate_indices
from engine.validate import Limits
from offline.policies import LogFields, missing

#: examination weights of the direct metrics, by name: K -> float64[K]
POSITION_WEIGHTS: dict[str, Callable[[int], np.ndarray]] = {
    "log2": lambda k: 1.0 / np.log2(np.arange(k) + 2.0),
    "reciprocal": lambda k: 1.0 / (np.arange(k) + 1.0),
    "none": lambda k: np.ones(k),
}
#: records per chunk of a Redis stream log (a Parquet log is chunked by its row groups)
CHUNK_ROWS = 1024
#: the label of the log's own slates in a report
LOGGED = "logged"
#: the most distinct error messages a policy's replay keeps (the rest are counted)
MAX_ERROR_KINDS = 20


class ReplayError(ValueError):
    """The replay cannot start: a policy needs what the log lacks, or the log cannot be read."""


# ------------------------------------------------------------------ chunks of a log
@dataclass(frozen=True)
class Chunk:
    """One piece of a log, in log order: a Parquet file's row group, or rows of an Arrow table."""

    index: int
    file: str | None = None
    row_group: int = -1
    table: pa.Table | None = None  # stream logs: the rows themselves
    n_rows: int = 0  # records in the chunk (from the file's metadata, read once by log_chunks)

    def read(self) -> pa.Table:
        if self.table is not None:
            return self.table
        return pq.ParquetFile(self.file).read_row_group(self.row_group)

    def rows(self) -> int:
        return self.table.num_rows if self.table is not None else self.n_rows


def _check_file(path: str) -> None:
    """A log file must be of this schema version and have every column of the decision log, with
    its type: else an error naming the file (and the column)."""
    schema = pq.read_schema(path)
    check_version(schema, path)
    for f in DECISION_SCHEMA:
        if f.name not in schema.names:
            raise ReplayError(f"{path}: column '{f.name}' is missing (a decision log has: "
                              f"{', '.join(DECISION_SCHEMA.names)})")
        got = schema.field(f.name).type
        if got != f.type:
            raise ReplayError(f"{path}: column '{f.name}': expected type {f.type}, got {got}")


def _files(source: str | os.PathLike) -> list[str]:
    path = os.fspath(source)
    if os.path.isfile(path):
        files = [path]
    elif os.path.isdir(path):
        files = [str(f) for f in log_files(path)]
    else:
        raise ReplayError(f"no such log file or folder: {path}")
    for f in files:
        _check_file(f)
    return files


def log_sources(source: str | os.PathLike, columns: list[str]) -> Iterable[tuple[str, pa.Table]]:
    """(name, table of `columns`) per file of a log (one entry, the URL, for a stream)."""
    if is_stream_url(source):
        yield os.fspath(source), read_log(source, columns=columns)
        return
    for f in _files(source):
        yield f, pq.read_table(f, columns=columns)


def log_chunks(source: str | os.PathLike, chunk_rows: int = CHUNK_ROWS) -> list[Chunk]:
    """The chunks of a log (a Parquet file, a folder of them, or a Redis stream URL), in order."""
    if is_stream_url(source):
        table = read_log(source)
        return [Chunk(i, table=table.slice(start, chunk_rows))
                for i, start in enumerate(range(0, table.num_rows, chunk_rows))]
    chunks = []
    for f in _files(source):  # each file's schema version, columns and types checked
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            chunks.append(Chunk(len(chunks), file=f, row_group=g, n_rows=meta.row_group(g).num_rows))
    return chunks


def log_fields(source: str | os.PathLike) -> LogFields:
    """The candidate columns a log's records carry (their union over the records). From Parquet
    files only the names are read (nested column paths), not the values."""
    scores, attributes, numeric = set(), set(), set()
    embeddings = False

    def add(into: set, col) -> None:
        for chunk in (col.chunks if isinstance(col, pa.ChunkedArray) else [col]):
            into.update(x for x in chunk.flatten().field("name").unique().to_pylist() if x is not None)

    if is_stream_url(source):
        table = read_log(source, columns=["scores", "attributes", "numeric", "embedding_dim"])
        tables = [table]
    else:
        tables = [pq.ParquetFile(f).read(columns=["scores.list.element.name", "attributes.list.element.name",
                                                  "numeric.list.element.name", "embedding_dim"])
                  for f in _files(source)]
    for t in tables:
        add(scores, t.column("scores"))
        add(attributes, t.column("attributes"))
        add(numeric, t.column("numeric"))
        embeddings = embeddings or t.column("embedding_dim").null_count < len(t)
    return LogFields(frozenset(scores), frozenset(attributes), frozenset(numeric), embeddings)


# ------------------------------------------------------------------ per-policy accumulation
@dataclass
class PolicyPart:
    """What replaying some chunks under one policy gave, mergeable in chunk order.

    While a chunk is replayed, each record adds its slate (candidate indices) and a few scalars;
    `seal(table)` then reads the slates' scores, attribute values and item ids straight from the
    chunk's Arrow columns (no Python step per item) into one block: [n, K] score matrices and
    integer exposure counts per (value, position). Merged parts keep a list of blocks, combined
    once at the end."""

    label: str
    chunks: list[int] = field(default_factory=list)
    n: int = 0
    K: int = 0  # the longest slate seen
    # per record, log order
    request_ids: list[str] = field(default_factory=list)
    slates: list = field(default_factory=list)  # int64[k] candidate indices (empty: failed); cleared by seal
    slate_len: list[int] = field(default_factory=list)
    differs: list[bool] = field(default_factory=list)
    displacement: list[float] = field(default_factory=list)
    solve_us: list[float] = field(default_factory=list)
    total_us: list[float] = field(default_factory=list)
    target_match: list = field(default_factory=list)  # per record: bool[len logged]; cleared by seal
    blocks: list = field(default_factory=list)  # sealed: one Block per chunk
    sealed: bool = False
    candidates: list[pa.Array] = field(default_factory=list)  # distinct candidate ids, per chunk
    relaxed: Counter = field(default_factory=Counter)  # rule -> records where a hard rule was relaxed
    violated: Counter = field(default_factory=Counter)  # rule -> records where a soft rule was violated
    cost_sum: Counter = field(default_factory=Counter)  # rule -> sum of its explain cost (explain replays)
    cost_n: Counter = field(default_factory=Counter)  # rule -> records with a cost
    errors: Counter = field(default_factory=Counter)  # message -> records
    failed: int = 0

    def seal(self, table: pa.Table | None = None) -> None:
        """Turn this chunk's per-record slates into a Block, reading `table` (the chunk)."""
        if self.sealed:
            return
        K = self.K
        if table is not None and self.slates:
            self.blocks = [_block(table, self.slates, _stack(self.target_match, K, np.bool_), K)]
        self.slates, self.target_match = [], []
        self.sealed = True

    def combine(self) -> "Block":
        """Every block in order, as one."""
        self.seal()
        K = self.K
        if not self.blocks:
            no_keys = pa.array([], pa.string())
            return Block(np.zeros((0, K), np.bool_), {}, {}, (no_keys, np.zeros((0, K), np.int64)),
                         np.full((0, K), -1, np.int64), {}, (no_keys, np.full((0, K), -1, np.int64)))
        match = np.concatenate([_pad(b.match, K) for b in self.blocks])
        names = sorted({s for b in self.blocks for s in b.scores})
        scores = {s: np.concatenate([_pad(b.scores[s], K) if s in b.scores else np.zeros((len(b.match), K))
                                     for b in self.blocks]) for s in names}
        attrs = sorted({a for b in self.blocks for a in b.exposure})
        exposure = {a: _sum_counts([b.exposure[a] for b in self.blocks if a in b.exposure], K) for a in attrs}
        items = _sum_counts([b.items for b in self.blocks], K)
        slate = np.concatenate([_pad_codes(b.slate, K) for b in self.blocks])
        values = {a: _join_codes([b.values.get(a) for b in self.blocks], [len(b.match) for b in self.blocks], K)
                  for a in attrs}
        item_codes = _join_codes([b.item_codes for b in self.blocks], [len(b.match) for b in self.blocks], K)
        return Block(match, scores, exposure, items, slate, values, item_codes)

    def merge(self, other: "PolicyPart") -> None:
        """Append `other`, whose chunks come after this part's."""
        self.seal()
        other.seal()
        self.chunks += other.chunks
        self.n += other.n
        self.K = max(self.K, other.K)
        for name in ("request_ids", "slate_len", "differs", "displacement", "solve_us", "total_us"):
            getattr(self, name).extend(getattr(other, name))
        self.blocks += other.blocks
        self.candidates += other.candidates
        self.relaxed.update(other.relaxed)
        self.violated.update(other.violated)
        self.cost_sum.update(other.cost_sum)
        self.cost_n.update(other.cost_n)
        self.errors.update(other.errors)
        self.failed += other.failed


Counts = tuple  # (keys: pa.StringArray, counts: int64[len(keys), K]) - slates per (key, position)
Codes = tuple  # (keys: pa.StringArray, codes: int64[n, K]) - the key index per (record, position), -1: none


@dataclass
class Block:
    """The slates of some records, read from their log columns."""

    match: np.ndarray  # bool[n, K]: the policy's item at k is the logged one
    scores: dict[str, np.ndarray]  # score -> float64[n, K]: the scores of the slate's items (0: absent)
    exposure: dict[str, Counts]  # attribute -> counts per (value, position)
    items: Counts  # counts per (item id, position)
    # per record (offline.preview: paired resampling of records): -1 where a slate has no position k
    slate: np.ndarray | None = None  # int64[n, K]: the candidate index at each position
    values: dict[str, Codes] = field(default_factory=dict)  # attribute -> value code per (record, position)
    item_codes: Codes | None = None  # item id code per (record, position)


def _pad(m: np.ndarray, K: int) -> np.ndarray:
    """A [n, k] array widened to [n, K] with zeros (False)."""
    if m.shape[1] == K:
        return m
    out = np.zeros((m.shape[0], K), dtype=m.dtype)
    out[:, :m.shape[1]] = m
    return out


def _stack(rows: list[np.ndarray], K: int, dtype) -> np.ndarray:
    out = np.zeros((len(rows), K), dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r[:K]
    return out


def _pad_codes(m: np.ndarray, K: int) -> np.ndarray:
    """A [n, k] code matrix widened to [n, K] with -1."""
    if m.shape[1] == K:
        return m
    out = np.full((m.shape[0], K), -1, dtype=np.int64)
    out[:, :m.shape[1]] = m
    return out


def _codes(keys: pa.Array, rows: np.ndarray, pos: np.ndarray, n: int, K: int) -> Codes:
    """The key of each (record, position) of parallel arrays of keys, rows and positions."""
    encoded = keys.dictionary_encode()
    out = np.full((n, K), -1, np.int64)
    out[rows, pos] = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return encoded.dictionary.cast(pa.string()), out


def _join_codes(parts: list, sizes: list[int], K: int) -> Codes:
    """The codes of several blocks (None: a block without the attribute) on one dictionary."""
    present = [p for p in parts if p is not None]
    keys = (pa.concat_arrays([k for k, _ in present]) if present else pa.array([], pa.string()))
    encoded = keys.dictionary_encode()
    index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    out, start = [], 0
    for part, n in zip(parts, sizes):
        if part is None:
            out.append(np.full((n, K), -1, np.int64))
            continue
        local = index[start:start + len(part[0])]
        start += len(part[0])
        c = _pad_codes(part[1], K)
        out.append(np.where(c >= 0, local[np.maximum(c, 0)] if len(local) else -1, -1))
    matrix = np.concatenate(out) if out else np.full((0, K), -1, np.int64)
    return encoded.dictionary.cast(pa.string()), matrix.astype(np.int64)


def _counts(keys: pa.Array, pos: np.ndarray, K: int) -> Counts:
    """Slates per (key, position) of parallel arrays of keys and positions."""
    encoded = keys.dictionary_encode()
    index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    D = len(encoded.dictionary)
    c = np.bincount(index * K + pos, minlength=D * K).reshape(D, K) if D else np.zeros((0, K), np.int64)
    return encoded.dictionary, c.astype(np.int64)


def _sum_counts(parts: list[Counts], K: int) -> Counts:
    """The counts of several blocks added up by key (exact integers: order does not matter)."""
    if not parts:
        return pa.array([], pa.string()), np.zeros((0, K), np.int64)
    keys = pa.concat_arrays([k.cast(pa.string()) for k, _ in parts])
    counts = np.concatenate([_pad(c, K) for _, c in parts])
    encoded = keys.dictionary_encode()
    index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.zeros((len(encoded.dictionary), K), np.int64)
    np.add.at(out, index, counts)
    return encoded.dictionary, out


def _list_parts(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(offsets int64[n + 1] into values, values) of a list column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.offsets.to_numpy().astype(np.int64), arr.values


def _named(col: pa.ChunkedArray, n: int) -> tuple[dict[str, np.ndarray], pa.StructArray, np.ndarray]:
    """For a list<struct<name, ...>> column: name -> int64[n] index of that struct per record
    (-1: absent), the structs, and their offsets."""
    offsets, structs = _list_parts(col)
    names = structs.field("name").to_numpy(zero_copy_only=False)
    counts = np.diff(offsets)
    parent = np.repeat(np.arange(n, dtype=np.int64), counts)
    first = offsets[0]
    out = {}
    for name in np.unique(names[first:offsets[-1]]):
        where = np.full(n, -1, np.int64)
        sel = np.flatnonzero(names[first:offsets[-1]] == name) + first
        where[parent[sel - first]] = sel
        out[str(name)] = where
    return out, structs, offsets


def _block(table: pa.Table, slates: list[np.ndarray], match: np.ndarray, K: int) -> Block:
    n = len(slates)
    lens = np.fromiter((len(x) for x in slates), np.int64, n)
    rows = np.repeat(np.arange(n, dtype=np.int64), lens)
    pos = (np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)) if len(rows) else rows
    local = np.concatenate(slates).astype(np.int64) if len(rows) else rows
    # item ids
    id_off, ids = _list_parts(table.column("candidate_ids"))
    shown = ids.take(pa.array(id_off[rows] + local))
    items = _counts(shown, pos, K)
    item_codes = _codes(shown, rows, pos, n, K)
    slate = np.full((n, K), -1, np.int64)
    slate[rows, pos] = local
    # scores
    scores = {}
    where, structs, _ = _named(table.column("scores"), n)
    v_off, v_vals = _list_parts(structs.field("values"))
    values = v_vals.to_numpy(zero_copy_only=False)
    for name, idx in where.items():
        s_idx = idx[rows]
        ok = s_idx >= 0
        m = np.zeros((n, K))
        m[rows[ok], pos[ok]] = values[v_off[s_idx[ok]] + local[ok]]
        scores[name] = m
    # attribute values
    exposure = {}
    value_codes = {}
    where, structs, _ = _named(table.column("attributes"), n)
    c_off, c_vals = _list_parts(structs.field("codes"))
    d_off, d_vals = _list_parts(structs.field("dictionary"))
    codes_all = c_vals.to_numpy(zero_copy_only=False).astype(np.int64)
    for name, idx in where.items():
        a_idx = idx[rows]
        ok = a_idx >= 0
        code = codes_all[c_off[a_idx[ok]] + local[ok]]
        size = d_off[a_idx[ok] + 1] - d_off[a_idx[ok]]
        known = (code >= 0) & (code < size)
        flat = np.where(known, d_off[a_idx[ok]] + np.where(known, code, 0), 0)
        vals = d_vals.take(pa.array(flat))
        vals = pc.if_else(pa.array(known), vals, pa.scalar("", pa.string()))
        exposure[name] = _counts(vals, pos[ok], K)
        value_codes[name] = _codes(vals, rows[ok], pos[ok], n, K)
    return Block(match, scores, exposure, items, slate, value_codes, item_codes)


def _candidates_of(table: pa.Table) -> list[pa.Array]:
    """The distinct candidate ids of a chunk (an Arrow array: no Python strings)."""
    col = table.column("candidate_ids")
    if col.num_chunks == 0:
        return []
    return [pa.concat_arrays([c.flatten() for c in col.chunks]).unique()]


def replay_chunk(chunk_table: pa.Table, chunk_index: int, versions: Sequence[tuple[str, PolicyVersion]],
                 ledgers: dict[str, InProcessLedger] | None, limits: Limits, *,
                 include_logged: bool = True, explain: bool = False) -> dict[str, PolicyPart]:
    """Replay one chunk under each (label, version); `ledgers`: label -> the ledger of a policy
    with amortized rules (fed in order; None: a fresh ledger per chunk is never right, so the
    caller passes the policy's ledger across chunks). Returns label -> PolicyPart."""
    gc_was = gc.isenabled()
    gc.disable()  # the records and reports are acyclic: collecting during the chunk is wasted work
    try:
        return _replay_chunk(chunk_table, chunk_index, versions, ledgers, limits, include_logged, explain)
    finally:
        if gc_was:
            gc.enable()


def _replay_chunk(chunk_table, chunk_index, versions, ledgers, limits, include_logged,
                  explain: bool = False) -> dict[str, PolicyPart]:
    records = from_table(chunk_table)
    candidates = _candidates_of(chunk_table)
    parts = {label: PolicyPart(label, [chunk_index], candidates=list(candidates)) for label, _ in versions}
    if include_logged:
        logged = parts[LOGGED] = PolicyPart(LOGGED, [chunk_index], candidates=list(candidates))
        for rec in records:
            slate = np.asarray(rec.slate_index, dtype=np.int64)
            logged.n += 1
            logged.request_ids.append(rec.request_id)
            _add_slate(logged, slate)
            logged.differs.append(False)
            logged.displacement.append(0.0)
            logged.target_match.append(np.ones(len(slate), dtype=np.bool_))
            for name in rec.diagnostics.relaxed:
                logged.relaxed[name] += 1
    for label, version in versions:
        part = parts[label]
        ledger = (ledgers or {}).get(label)
        namespaces = version.ledger_namespaces()
        for rec in records:
            part.n += 1
            part.request_ids.append(rec.request_id)
            logged_slate = np.asarray(rec.slate_index, dtype=np.int64)
            try:
                if namespaces:
                    if ledger is None:
                        raise RuntimeError(f"policy {label!r} has amortized rules: its replay needs its ledger")
                    snapshots = {ns: ledger.snapshot(ns) for ns in namespaces}
                    decision = decide(version, _request(rec, explain), limits=limits, snapshots=snapshots)
                    for ns, deltas in decision.deltas.items():
                        ledger.record(ns, deltas)
                else:
                    decision = decide(version, _request(rec, explain), limits=limits)
            except RerankError as e:
                part.failed += 1
                key = str(e)
                if key in part.errors or len(part.errors) < MAX_ERROR_KINDS:
                    part.errors[key] += 1
                else:
                    part.errors["(other errors)"] += 1
                _add_failed(part, len(logged_slate))
                continue
            _add_decision(part, decision, logged_slate)
    for part in parts.values():
        part.seal(chunk_table)
    return parts


def _request(rec, explain: bool):
    """The logged request; with `explain`, asking for each rule's cost (engine.decide's explain:
    the objective gained if the rule were dropped, a greedy estimate; slower)."""
    req = rec.request()
    return dataclasses.replace(req, explain=True) if explain and not req.explain else req


def _add_slate(part: PolicyPart, slate: np.ndarray) -> None:
    part.K = max(part.K, len(slate))
    part.slates.append(slate)
    part.slate_len.append(len(slate))


def _add_failed(part: PolicyPart, k: int) -> None:
    part.slates.append(np.zeros(0, np.int64))
    part.slate_len.append(0)
    part.differs.append(True)
    part.displacement.append(float("nan"))
    part.solve_us.append(float("nan"))
    part.total_us.append(float("nan"))
    part.target_match.append(np.zeros(k, dtype=np.bool_))


def _add_decision(part: PolicyPart, decision: Decision, logged: np.ndarray) -> None:
    result = decision.result
    slate = slate_indices(result.items)
    _add_slate(part, slate)
    k_log, k_new = len(logged), len(slate)
    same = k_log == k_new and bool(np.array_equal(slate, logged))
    part.differs.append(not same)
    match = np.zeros(k_log, dtype=np.bool_)
    m = min(k_log, k_new)
    match[:m] = slate[:m] == logged[:m]
    part.target_match.append(match)
    if same:
        part.displacement.append(0.0)
    else:
        where = {int(i): p for p, i in enumerate(slate.tolist())}
        absent = max(k_log, k_new)
        part.displacement.append(float(np.mean([abs(where.get(int(i), absent) - p)
                                                for p, i in enumerate(logged.tolist())])) if k_log else 0.0)
    part.solve_us.append(result.elapsed_us.get("solve", float("nan")))
    part.total_us.append(result.elapsed_us.get("engine_total", float("nan")))
    for c in result.constraints:
        if c.relaxed:
            part.relaxed[c.name] += 1
        elif not c.satisfied and not c.hard:
            part.violated[c.name] += 1
        if c.cost is not None:
            part.cost_sum[c.name] += c.cost
            part.cost_n[c.name] += 1


# ------------------------------------------------------------------ the report of one policy
def gini(x: np.ndarray) -> float:
    """The Gini coefficient of non-negative values (0: equal, -> 1: concentrated); 0 for none."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n, total = len(x), float(x.sum())
    if n == 0 or total <= 0.0:
        return 0.0
    return float((2.0 * np.arange(1, n + 1) - n - 1.0) @ x / (n * total))


@dataclass
class PolicyReplay:
    """One policy's replay over a whole log (see the module docstring)."""

    label: str
    policy: str  # name
    digest: str
    n: int
    failed: int
    errors: dict[str, int]
    metrics: dict[str, float]  # expected_<score>, differs_share, mean_displacement, coverage, exposure_gini
    exposure_share: dict[str, dict[str, float]]  # attribute -> value -> share of exposure
    relaxation_rate: dict[str, float]  # rule -> share of records where a hard rule was relaxed
    violation_rate: dict[str, float]  # rule -> share of records where a soft rule was violated
    solve_us: dict[str, float]  # p50 / p90 / p99 / max of decide's solve stage
    total_us: dict[str, float]  # the same, of the whole of decide
    # rule -> mean objective cost over the requests (replay(explain=True) only; empty otherwise)
    rule_cost: dict[str, float] = field(default_factory=dict)
    # per record, log order (for offline.estimators)
    request_ids: list[str] = field(repr=False, default_factory=list)
    target_match: np.ndarray | None = field(repr=False, default=None)  # bool[n, K]
    target_scores: np.ndarray | None = field(repr=False, default=None)  # float64[n, K]
    item_exposure: dict[str, float] = field(repr=False, default_factory=dict)
    # per record, log order, for paired comparisons of two policies (offline.preview)
    position_weights: np.ndarray | None = field(repr=False, default=None)  # float64[K]
    record_scores: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # score -> float64[n, K]
    slate_index: np.ndarray | None = field(repr=False, default=None)  # int64[n, K], -1: no item
    slate_values: dict[str, Codes] = field(repr=False, default_factory=dict)  # attribute -> codes [n, K]
    slate_items: Codes | None = field(repr=False, default=None)  # item id codes [n, K]
    record_differs: np.ndarray | None = field(repr=False, default=None)  # bool[n]: differs from the log
    record_displacement: np.ndarray | None = field(repr=False, default=None)  # float64[n] (NaN: failed)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("label", "policy", "digest", "n", "failed", "errors",
                                             "metrics", "exposure_share", "relaxation_rate",
                                             "violation_rate", "rule_cost", "solve_us", "total_us")}


def _percentiles(values: list[float]) -> dict[str, float]:
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(x.max())}


def _weighted(counts: Counts, w: np.ndarray) -> dict[str, float]:
    """key -> sum over positions p of w[p] x (slates with key at p): exact integer counts,
    weighted once at the end, so the result does not depend on how the counts were merged."""
    keys, c = counts
    if not len(keys):
        return {}
    return dict(zip(keys.to_pylist(), (_pad(c, len(w))[:, :len(w)].astype(np.float64) @ w).tolist()))


def finish(part: PolicyPart, policy: str, digest: str, position_weights: str = "log2",
           reward: str = "p_click") -> PolicyReplay:
    """The report of a policy from its merged part."""
    K = max(part.K, 1)
    w = POSITION_WEIGHTS[position_weights](K)
    n = max(part.n, 1)
    metrics: dict[str, float] = {}
    block = part.combine()
    for s, m in sorted(block.scores.items()):
        metrics[f"expected_{s}"] = float((m @ w[:m.shape[1]]).sum()) / n
    metrics["differs_share"] = float(np.sum(part.differs)) / n
    disp = np.asarray(part.displacement, dtype=np.float64)
    metrics["mean_displacement"] = float(np.nanmean(disp)) if np.isfinite(disp).any() else float("nan")
    item_exposure = _weighted(block.items, w)
    shown_ids = pa.array(list(item_exposure), pa.string())
    ids = pa.concat_arrays(part.candidates).unique() if part.candidates else pa.array([], pa.string())
    never = int(pc.sum(pc.invert(pc.is_in(ids, shown_ids))).as_py() or 0) if len(ids) else 0
    universe = len(item_exposure) + never
    metrics["coverage"] = len(item_exposure) / universe if universe else 0.0
    shown = np.fromiter(item_exposure.values(), np.float64, len(item_exposure))
    # Gini over every candidate item, the never-shown ones at 0 (order does not matter: sorted)
    metrics["exposure_gini"] = gini(np.concatenate([shown, np.zeros(never)]))
    shares = {}
    for attr, counts in sorted(block.exposure.items()):
        e = _weighted(counts, w)
        total = sum(sorted(e.values()))
        shares[attr] = {v: (x / total if total else 0.0) for v, x in sorted(e.items(), key=lambda kv: (-kv[1], kv[0]))}
    return PolicyReplay(
        label=part.label, policy=policy, digest=digest, n=part.n, failed=part.failed,
        errors=dict(part.errors), metrics=metrics, exposure_share=shares,
        relaxation_rate={r: c / n for r, c in sorted(part.relaxed.items())},
        violation_rate={r: c / n for r, c in sorted(part.violated.items())},
        rule_cost={r: part.cost_sum[r] / c for r, c in sorted(part.cost_n.items())},
        solve_us=_percentiles(part.solve_us), total_us=_percentiles(part.total_us),
        request_ids=part.request_ids, target_match=block.match,
        target_scores=block.scores.get(reward, np.zeros(block.match.shape)), item_exposure=item_exposure,
        position_weights=w, record_scores=block.scores, slate_index=_pad_codes(block.slate, K),
        slate_values={a: (k, _pad_codes(c, K)) for a, (k, c) in block.values.items()},
        slate_items=(block.item_codes[0], _pad_codes(block.item_codes[1], K)),
        record_differs=np.asarray(part.differs, dtype=np.bool_),
        record_displacement=np.asarray(part.displacement, dtype=np.float64))


# ------------------------------------------------------------------ the driver
@dataclass
class ReplayReport:
    source: str
    records: int
    policies: list[PolicyReplay]  # the log's own slates first ("logged"), then each policy
    mode: str  # "in process" | "N workers" | "ray"
    seconds: float = 0.0

    def by_label(self) -> dict[str, PolicyReplay]:
        return {p.label: p for p in self.policies}

    def to_json(self) -> dict:
        return {"source": self.source, "records": self.records, "mode": self.mode,
                "seconds": self.seconds, "policies": [p.to_json() for p in self.policies]}


def labels_of(versions: Sequence[PolicyVersion]) -> list[str]:
    """A distinct label per version: its name, with ` #2`... when two share one."""
    seen: Counter = Counter()
    out = []
    for v in versions:
        seen[v.name] += 1
        out.append(v.name if seen[v.name] == 1 else f"{v.name} #{seen[v.name]}")
    if LOGGED in out:
        raise ReplayError(f"a policy may not be called {LOGGED!r} in a replay (the log's own slates are)")
    return out


def check_policies(source, versions: Sequence[PolicyVersion]) -> None:
    """Raise ReplayError naming every column a policy needs that the log does not carry."""
    fields = log_fields(source)
    problems = [m for v in versions for m in missing(v, fields)]
    if problems:
        raise ReplayError("cannot replay this log:\n  " + "\n  ".join(problems))


def run_chunks(chunks: Iterable[Chunk], versions: Sequence[tuple[str, PolicyVersion]], limits: Limits,
               *, include_logged: bool, explain: bool = False,
               progress: Callable[[int], None] | None = None) -> dict[str, PolicyPart]:
    """Replay chunks in order in this process (amortized policies keep one ledger across them)."""
    ledgers = {label: InProcessLedger() for label, v in versions if v.ledger_namespaces()}
    merged: dict[str, PolicyPart] = {}
    for chunk in chunks:
        table = chunk.read()
        parts = replay_chunk(table, chunk.index, versions, ledgers, limits, include_logged=include_logged,
                             explain=explain)
        for label, part in parts.items():
            if label in merged:
                merged[label].merge(part)
            else:
                merged[label] = part
        if progress is not None:
            progress(table.num_rows)
    return merged


@dataclass
class ChunkTask:
    """Replays one chunk under the chunked policies (picklable: local processes and Ray run it).
    `pairs_blob`: the pickled (label, PolicyVersion) pairs, unpickled once per process."""

    pairs_blob: bytes
    limits: Limits
    explain: bool = False

    def __call__(self, chunk: Chunk) -> tuple[int, int, dict[str, PolicyPart]]:
        table = chunk.read()
        parts = replay_chunk(table, chunk.index, _pairs(self.pairs_blob), None, self.limits,
                             include_logged=True, explain=self.explain)
        return chunk.index, table.num_rows, parts


@dataclass
class SequentialTask:
    """Replays the whole log, in order, under policies with amortized rules (one ledger each)."""

    chunks: list[Chunk]
    pairs_blob: bytes
    limits: Limits
    explain: bool = False

    def __call__(self) -> dict[str, PolicyPart]:
        return run_chunks(self.chunks, _pairs(self.pairs_blob), self.limits, include_logged=False,
                          explain=self.explain)


_PAIRS: dict[bytes, list] = {}


def _pairs(blob: bytes) -> list:
    pairs = _PAIRS.get(blob)
    if pairs is None:
        _PAIRS.clear()
        pairs = _PAIRS[blob] = pickle.loads(blob)
    return pairs


def merge_in_order(chunk_parts: dict[int, dict[str, PolicyPart]],
                   whole: Iterable[dict[str, PolicyPart]] = ()) -> dict[str, PolicyPart]:
    """Merge chunk results in log order, then add the whole-log results of sequential tasks."""
    merged: dict[str, PolicyPart] = {}
    for index in sorted(chunk_parts):
        for label, part in chunk_parts[index].items():
            if label in merged:
                merged[label].merge(part)
            else:
                merged[label] = part
    for parts in whole:
        merged.update(parts)
    return merged


def replay(source: str | os.PathLike, versions: Sequence[PolicyVersion], *, limits: Limits | None = None,
           workers: int = 0, use_ray: bool = False, ray_address: str | None = None,
           reward: str = "p_click", position_weights: str = "log2", chunk_rows: int = CHUNK_ROWS,
           progress: bool = False, explain: bool = False) -> ReplayReport:
    """Replay a log under each policy (see the module docstring). `explain`: ask every decision for
    its rules' costs (`PolicyReplay.rule_cost`; slower). `workers` > 1: that many local
    processes; `use_ray`: on Ray (a local one started when `ray_address` is None)."""
    from offline import runner

    if position_weights not in POSITION_WEIGHTS:
        raise ReplayError(f"position_weights: expected one of {', '.join(POSITION_WEIGHTS)}, "
                          f"got {position_weights!r}")
    limits = limits or Limits()
    labels = labels_of(versions)
    check_policies(source, versions)
    chunks = log_chunks(source, chunk_rows)
    total = sum(c.rows() for c in chunks)
    pairs = list(zip(labels, versions))
    sequential = [p for p in pairs if p[1].ledger_namespaces()]
    chunked = [p for p in pairs if not p[1].ledger_namespaces()]
    t0 = time.perf_counter()
    with runner.progress_bar(total, progress, "replay") as advance:
        if use_ray or (workers and workers > 1):
            task = ChunkTask(pickle.dumps(chunked), limits, explain)
            seq = [SequentialTask(chunks, pickle.dumps([p]), limits, explain) for p in sequential]
            if use_ray:
                chunk_parts, whole = runner.run_ray(task, chunks, seq, address=ray_address, advance=advance)
                mode = "ray"
            else:
                chunk_parts, whole = runner.run_processes(task, chunks, seq, workers=workers, advance=advance)
                mode = f"{workers} workers"
            merged = merge_in_order(chunk_parts, whole)
        else:
            merged = run_chunks(chunks, pairs, limits, include_logged=True, progress=advance, explain=explain)
            mode = "in process"
    seconds = time.perf_counter() - t0
    logged = merged.get(LOGGED) or PolicyPart(LOGGED)
    out = [finish(logged, LOGGED, "", position_weights, reward)]
    for label, v in pairs:
        out.append(finish(merged.get(label) or PolicyPart(label), v.name, v.digest, position_weights, reward))
    return ReplayReport(os.fspath(source), logged.n, out, mode, seconds)
