"""The decision log's Arrow schema (one row per decision, candidates as list columns) and the
conversions between records and Arrow batches.

Schema version 1 (`SCHEMA_VERSION`, in the schema metadata under `VERSION_KEY`, so in every
Parquet file's key-value metadata and every Redis entry's IPC schema):

    ts                 timestamp[us, UTC]   when the decision was made
    request_id         string
    unit_id            string               experiment unit (user_id, or request_id)
    policy             string               the revision that answered: name,
    policy_digest      string                 sha256 of its file,
    policy_version     string                 its version string
    experiment         string (null)        experiment, variant and bucket (-1: none),
    variant            string (null)          holdout flag
    bucket             int32
    holdout            bool
    seed               uint64 (null)        exploration seed
    request_policy     string               the request as received: the policy asked for,
    candidate_ids      list<string>           item ids,
    scores             list<struct<name: string, values: list<double>>>
    numeric            list<struct<name: string, values: list<double>>>
    attributes         list<struct<name: string, dictionary: list<string>, codes: list<int32>>>
    embedding_dim      int32 (null)           null: no embeddings
    embeddings         list<float> (null)     row-major N x embedding_dim
    slate_size         int32
    budget_ms          double
    solver             string (null)
    objective_weights  list<struct<name: string, weight: double>>
    explain            bool
    targets            list<struct<rule: string, shares: list<struct<value: string, share: double>>>>
    user_id            string
    deadline_ms        double (null)
    boosts             list<struct<attribute: string, values: list<struct<value: string, boost: double>>>> (null)
    slate_index        list<int32>          the slate: candidate indices,
    slate_item_ids     list<string>           and their ids
    joint              double (null)        propensities: whole slate,
    cascade            list<double> (null)    each prefix,
    marginal           list<double> (null)    item at position,
    marginal_samples   int64                  0: exact marginals, else Monte Carlo samples
    diagnostics        struct<solver, status, objective, bound (null), gap (null), exact_status,
                              budget_ms, eligible: int32, relaxed: list<string>>
    log_writer         string (null)        which DecisionLog wrote the row (host/pid/instance)
    log_dropped        int64 (null)         records that writer had dropped before this row

Maps are lists of (name, value) structs so that column order is kept (the engine sums score
columns in request order: order matters for bit-exact replays).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from engine.decision_log.record import DecisionRecord, Diagnostics, OutcomeRecord
from engine.types import Attribute, Candidates

SCHEMA_VERSION = "1"
VERSION_KEY = b"reranker.decision_log.schema_version"
OUTCOME_VERSION_KEY = b"reranker.outcome_log.schema_version"

_STR = pa.string()
_F64 = pa.float64()
NAMED_VALUES = pa.list_(pa.struct([("name", _STR), ("values", pa.list_(_F64))]))
ATTRIBUTES = pa.list_(pa.struct([("name", _STR), ("dictionary", pa.list_(_STR)),
                                 ("codes", pa.list_(pa.int32()))]))
WEIGHTS = pa.list_(pa.struct([("name", _STR), ("weight", _F64)]))
TARGETS = pa.list_(pa.struct([("rule", _STR),
                              ("shares", pa.list_(pa.struct([("value", _STR), ("share", _F64)])))]))
BOOSTS = pa.list_(pa.struct([("attribute", _STR),
                             ("values", pa.list_(pa.struct([("value", _STR), ("boost", _F64)])))]))
DIAGNOSTICS = pa.struct([("solver", _STR), ("status", _STR), ("objective", _F64), ("bound", _F64),
                         ("gap", _F64), ("exact_status", _STR), ("budget_ms", _F64),
                         ("eligible", pa.int32()), ("relaxed", pa.list_(_STR))])
TS = pa.timestamp("us", tz="UTC")

DECISION_SCHEMA = pa.schema([
    ("ts", TS), ("request_id", _STR), ("unit_id", _STR),
    ("policy", _STR), ("policy_digest", _STR), ("policy_version", _STR),
    ("experiment", _STR), ("variant", _STR), ("bucket", pa.int32()), ("holdout", pa.bool_()),
    ("seed", pa.uint64()),
    ("request_policy", _STR), ("candidate_ids", pa.list_(_STR)),
    ("scores", NAMED_VALUES), ("numeric", NAMED_VALUES), ("attributes", ATTRIBUTES),
    ("embedding_dim", pa.int32()), ("embeddings", pa.list_(pa.float32())),
    ("slate_size", pa.int32()), ("budget_ms", _F64), ("solver", _STR),
    ("objective_weights", WEIGHTS), ("explain", pa.bool_()), ("targets", TARGETS),
    ("user_id", _STR), ("deadline_ms", _F64),
    ("boosts", BOOSTS),
    ("slate_index", pa.list_(pa.int32())), ("slate_item_ids", pa.list_(_STR)),
    ("joint", _F64), ("cascade", pa.list_(_F64)), ("marginal", pa.list_(_F64)),
    ("marginal_samples", pa.int64()),
    ("diagnostics", DIAGNOSTICS),
    ("log_writer", _STR), ("log_dropped", pa.int64()),
], metadata={VERSION_KEY: SCHEMA_VERSION.encode()})

OUTCOME_SCHEMA = pa.schema([
    ("request_id", _STR), ("position", pa.int32()), ("item_id", _STR),
    ("clicks", pa.int64()), ("add_to_carts", pa.int64()), ("purchases", pa.int64()), ("ts", TS),
], metadata={OUTCOME_VERSION_KEY: SCHEMA_VERSION.encode()})

_INT32_MAX = 2**31 - 1


# ------------------------------------------------------------------ building Arrow columns
#: What the log's converter passes to `to_batch` as `pause`: called between pieces of work of
#: at most a few tens of µs (one record's ids, one record's part of a column), so that a
#: converter thread can let request threads have the interpreter lock (writer._Pacer).
Pause = Callable[[], None]


def _no_pause() -> None:
    pass


def _offsets(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    if out[-1] > _INT32_MAX:
        raise ValueError(f"decision log batch too large: {out[-1]} list values in one column "
                         f"(at most {_INT32_MAX}); write fewer records per batch")
    return out.astype(np.int32)


def _list(lengths, values: pa.Array, type_: pa.DataType, valid: Sequence[bool] | None = None) -> pa.Array:
    mask = None if valid is None or all(valid) else pa.array([not v for v in valid], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(_offsets(lengths)), values, type=type_, mask=mask)


def _concat(parts: Sequence[np.ndarray], dtype, pause: Pause = _no_pause) -> np.ndarray:
    """The parts (any shape: flattened, row-major) end to end in one new `dtype` array, copied
    one part at a time with `pause()` after each. (One np.concatenate of many parts would hold
    the interpreter lock for the whole copy, bar releases too short for a waiting thread.)"""
    sizes = [p.size for p in parts]
    out = np.empty(sum(sizes), dtype=dtype)
    at = 0
    for p, size in zip(parts, sizes):
        out[at:at + size] = p.reshape(-1)
        at += size
        pause()
    return out


def _utf8(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as (their UTF-8 bytes end to end: uint8, each one's length in bytes: int64), from
    one join and one encode in C and a few numpy passes: no Python step per string. (A value
    that holds NUL, the separator, takes the slow way: one encode per value.)"""
    n = len(values)
    if n == 0:
        return np.empty(0, np.uint8), np.empty(0, np.int64)
    joined = "\x00".join(values)  # TypeError for a value that is not a string
    raw = np.frombuffer(joined.encode("utf-8"), np.uint8)
    cuts = np.flatnonzero(raw == 0)
    if cuts.size != n - 1:
        encoded = [v.encode("utf-8") for v in values]
        return (np.frombuffer(b"".join(encoded), np.uint8),
                np.fromiter(map(len, encoded), np.int64, n))
    bounds = np.empty(n + 1, np.int64)
    bounds[0], bounds[1:n], bounds[n] = -1, cuts, raw.size
    return (raw[raw != 0] if n > 1 else raw), np.diff(bounds) - 1


def _string_values(encoded: Sequence[tuple[np.ndarray, np.ndarray]], pause: Pause) -> pa.Array:
    """A string array from `_utf8` results (concatenated in order)."""
    data = _concat([d for d, _ in encoded], np.uint8, pause)
    lengths = _concat([n for _, n in encoded], np.int64)
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(_offsets(lengths)), pa.py_buffer(data))


class Staged:
    """One record ready to be assembled into a batch: its scalar fields (the record, with its
    candidates dropped) and copies of its candidate columns, one flat array per column kind.

    Staging copies what the record references out of the request, so that the request's
    arrays (and, for a gRPC request, its protobuf message, which its item ids reference) can be
    freed soon after the call: a log that held every queued request until its batch was
    written kept the request threads' memory cold (in bench_grpc, holding the last 256
    requests cost 10-16 % of the server time, the last 4 about 3 %)."""

    __slots__ = ("rec", "ids", "n_ids", "score_names", "score_lens", "scores", "numeric_names",
                 "numeric_lens", "numeric",
                 "attr_names", "attr_words", "codes", "n_codes", "emb_dim", "emb", "nbytes")

    def __init__(self, rec: DecisionRecord, pause: Pause = _no_pause) -> None:
        c = rec.candidates
        self.ids, lengths = _utf8(c.item_ids)
        self.n_ids = lengths
        pause()
        self.score_names, self.score_lens = tuple(c.scores), [len(v) for v in c.scores.values()]
        self.scores = _concat(list(c.scores.values()), np.float64)
        self.numeric_names, self.numeric_lens = tuple(c.numeric), [len(v) for v in c.numeric.values()]
        self.numeric = _concat(list(c.numeric.values()), np.float64)
        attrs = c.attributes
        self.attr_names = tuple(attrs)
        self.attr_words = tuple(a.dictionary for a in attrs.values())
        codes = [a.codes for a in attrs.values()]
        for k in codes:
            if k.size and (k.min() < -_INT32_MAX or k.max() > _INT32_MAX):
                raise ValueError("attribute codes out of the int32 range")
        self.codes = _concat(codes, np.int32)
        self.n_codes = [k.size for k in codes]
        pause()
        e = c.embeddings
        self.emb_dim = None if e is None else int(e.shape[1])
        self.emb = None if e is None else _concat([e], np.float32)
        self.rec = rec.without_candidates()
        self.nbytes = (self.ids.nbytes + self.n_ids.nbytes + self.scores.nbytes + self.numeric.nbytes
                       + self.codes.nbytes + (0 if self.emb is None else self.emb.nbytes) + 1024)
        pause()


def _named_values(names: list[tuple[str, ...]], lengths: list[list[int]], parts: list[np.ndarray],
                  pause: Pause) -> pa.Array:
    """Per row: column names, their lengths and their values end to end."""
    flat_names = [name for row in names for name in row]
    flat_lengths = [n for row in lengths for n in row]
    values = _list(flat_lengths, pa.array(_concat(parts, np.float64, pause)), pa.list_(_F64))
    inner = pa.StructArray.from_arrays([pa.array(flat_names, _STR), values], fields=list(NAMED_VALUES.value_type))
    return _list([len(row) for row in names], inner, NAMED_VALUES)


def _attributes(staged: list[Staged], pause: Pause) -> pa.Array:
    names: list[str] = []
    words: list[str] = []
    n_words: list[int] = []
    n_codes: list[int] = []
    for s in staged:
        names.extend(s.attr_names)
        for w in s.attr_words:
            words.extend(w)
            n_words.append(len(w))
        n_codes.extend(s.n_codes)
    inner = pa.StructArray.from_arrays(
        [pa.array(names, _STR), _list(n_words, pa.array(words, _STR), pa.list_(_STR)),
         _list(n_codes, pa.array(_concat([s.codes for s in staged], np.int32, pause)), pa.list_(pa.int32()))],
        fields=list(ATTRIBUTES.value_type))
    return _list([len(s.attr_names) for s in staged], inner, ATTRIBUTES)


def _pairs(maps: list[dict[str, float] | None], type_: pa.DataType) -> pa.Array:
    keys: list[str] = []
    vals: list[float] = []
    for m in maps:
        if m:
            keys.extend(m)
            vals.extend(m.values())
    inner = pa.StructArray.from_arrays([pa.array(keys, _STR), pa.array(vals, _F64)],
                                       fields=list(type_.value_type))
    return _list([len(m) if m else 0 for m in maps], inner, type_, [m is not None for m in maps])


def _nested_pairs(maps: list[dict[str, dict[str, float]] | None], type_: pa.DataType) -> pa.Array:
    """dict[str, dict[str, float]] per row -> list<struct<key, list<struct<key, value>>>>."""
    inner_type = type_.value_type.field(1).type
    outer_keys: list[str] = []
    inner_maps: list[dict[str, float]] = []
    for m in maps:
        if m:
            outer_keys.extend(m)
            inner_maps.extend(m.values())
    inner = pa.StructArray.from_arrays([pa.array(outer_keys, _STR), _pairs(inner_maps, inner_type)],
                                       fields=list(type_.value_type))
    return _list([len(m) if m else 0 for m in maps], inner, type_, [m is not None for m in maps])


def _optional_floats(arrays: list[np.ndarray | None]) -> pa.Array:
    parts = [a for a in arrays if a is not None]
    return _list([0 if a is None else len(a) for a in arrays], pa.array(_concat(parts, np.float64)),
                 pa.list_(_F64), [a is not None for a in arrays])


def _short_strings(lists: Iterable[Sequence[str]]) -> pa.Array:
    """A list<string> column of short lists (slate ids, relaxed rule names): one pa.array."""
    lengths: list[int] = []
    flat: list[str] = []
    for values in lists:
        lengths.append(len(values))
        flat.extend(values)
    return _list(lengths, pa.array(flat, _STR), pa.list_(_STR))


def to_batch(records: Sequence[DecisionRecord], *, writer: str | None = None,
             dropped: int | None = None, pause: Pause | None = None) -> pa.RecordBatch:
    """Records as one Arrow batch of `DECISION_SCHEMA` (its metadata carries the schema version).

    `writer` / `dropped` fill `log_writer` / `log_dropped` (the DecisionLog passes its identity
    and how many records it had dropped so far; `summarise` reports them). `pause`: see
    `assemble`."""
    pause = pause or _no_pause
    return assemble([Staged(r, pause) for r in records], writer=writer, dropped=dropped, pause=pause)


def assemble(staged: Sequence[Staged], *, writer: str | None = None, dropped: int | None = None,
             pause: Pause | None = None) -> pa.RecordBatch:
    """Staged records (see `Staged`) as one Arrow batch of `DECISION_SCHEMA`.

    Columnar: the candidate columns of all records are copied into one array per column; no
    Python step per candidate (a record's ids were joined, encoded and split in C and numpy
    when it was staged, see `_utf8`); Python loops run per record and column only. `pause` is
    called between pieces of work (one record's part of a candidate column, a column): the
    DecisionLog's converter waits there so as not to hold the interpreter lock for long (see
    `Pause`)."""
    pause = pause or _no_pause
    st = list(staged)
    rs = [s.rec for s in st]
    n = len(rs)
    diag = [r.diagnostics for r in rs]

    def ids():
        return _list([len(s.n_ids) for s in st], _string_values([(s.ids, s.n_ids) for s in st], pause),
                     pa.list_(_STR))

    def embeddings():
        parts = [s.emb for s in st if s.emb is not None]
        return _list([0 if s.emb is None else s.emb.size for s in st], pa.array(_concat(parts, np.float32, pause)),
                     pa.list_(pa.float32()), [s.emb is not None for s in st])

    def diagnostics():
        yield pa.StructArray.from_arrays([
            pa.array([d.solver for d in diag], _STR), pa.array([d.status for d in diag], _STR),
            pa.array([d.objective for d in diag], _F64), pa.array([d.bound for d in diag], _F64),
            pa.array([d.gap for d in diag], _F64), pa.array([d.exact_status for d in diag], _STR),
            pa.array([d.budget_ms for d in diag], _F64), pa.array([d.eligible for d in diag], pa.int32()),
            _short_strings(d.relaxed for d in diag)], fields=list(DIAGNOSTICS))

    def head():  # the scalar columns up to request_policy, one at a time (a pause after each)
        yield pa.array([r.ts for r in rs], TS)
        for name in ("request_id", "unit_id", "policy", "policy_digest", "policy_version",
                     "experiment", "variant"):
            yield pa.array([getattr(r, name) for r in rs], _STR)
        yield pa.array([r.bucket for r in rs], pa.int32())
        yield pa.array([bool(r.holdout) for r in rs], pa.bool_())
        yield pa.array([r.seed for r in rs], pa.uint64())
        yield pa.array([r.request_policy for r in rs], _STR)

    def candidate_columns():
        yield ids()
        yield _named_values([s.score_names for s in st], [s.score_lens for s in st], [s.scores for s in st], pause)
        yield _named_values([s.numeric_names for s in st], [s.numeric_lens for s in st],
                            [s.numeric for s in st], pause)
        yield _attributes(st, pause)
        yield pa.array([s.emb_dim for s in st], pa.int32())
        yield embeddings()

    def request_tail():  # slate_size .. deadline_ms
        yield pa.array([r.slate_size for r in rs], pa.int32())
        yield pa.array([r.budget_ms for r in rs], _F64)
        yield pa.array([r.solver for r in rs], _STR)
        yield _pairs([r.objective_weights for r in rs], WEIGHTS)
        yield pa.array([bool(r.explain) for r in rs], pa.bool_())
        yield _nested_pairs([r.targets for r in rs], TARGETS)
        yield pa.array([r.user_id for r in rs], _STR)
        yield pa.array([r.deadline_ms for r in rs], _F64)

    def decided():  # boosts .. marginal_samples
        yield _nested_pairs([r.boosts for r in rs], BOOSTS)
        yield _list([len(r.slate_index) for r in rs], pa.array(_concat([r.slate_index for r in rs], np.int32)),
                    pa.list_(pa.int32()))
        yield _short_strings(r.slate_item_ids for r in rs)
        yield pa.array([r.joint for r in rs], _F64)
        yield _optional_floats([r.cascade for r in rs])
        yield _optional_floats([r.marginal for r in rs])
        yield pa.array([r.marginal_samples for r in rs], pa.int64())

    def writer_columns():
        yield pa.array([writer] * n, _STR)
        yield pa.array([dropped] * n, pa.int64())

    arrays = []
    for step in (head, candidate_columns, request_tail, decided, diagnostics, writer_columns):
        for array in step():
            arrays.append(array)
            pause()
    return pa.RecordBatch.from_arrays(arrays, schema=DECISION_SCHEMA)


# ------------------------------------------------------------------ reading Arrow columns back
def check_version(schema: pa.Schema, where: str = "table", key: bytes = VERSION_KEY) -> None:
    """Refuse a schema whose metadata names another schema version (no metadata: taken as
    current, e.g. a table a user built with to_batch and sliced)."""
    version = (schema.metadata or {}).get(key)
    if version is not None and version.decode() != SCHEMA_VERSION:
        raise ValueError(f"{where}: decision log schema version {version.decode()!r}, this reader "
                         f"reads version {SCHEMA_VERSION!r}")


class _Lists:
    """A list column as (offsets, values): row i is values[offsets[i]:offsets[i+1]]."""

    def __init__(self, arr: pa.Array, numpy: bool = False):
        self.offsets = arr.offsets.to_numpy()
        self.valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        values = arr.values
        self.values = values.to_numpy(zero_copy_only=False) if numpy else values

    def at(self, i: int):
        return self.values[self.offsets[i]:self.offsets[i + 1]]


def _py(arr: pa.Array) -> list:
    return arr.to_pylist()


def _struct_fields(arr: pa.Array) -> list[pa.Array]:
    return arr.flatten()


def _maps_of_doubles(col: pa.Array) -> list[dict[str, np.ndarray]]:
    outer = _Lists(col)
    names, values = _struct_fields(outer.values)
    names = _py(names)
    inner = _Lists(values, numpy=True)
    out = []
    for i in range(len(col)):
        out.append({names[j]: inner.at(j).copy() for j in range(outer.offsets[i], outer.offsets[i + 1])})
    return out


def _maps_of_attributes(col: pa.Array) -> list[dict[str, Attribute]]:
    outer = _Lists(col)
    names, dictionary, codes = _struct_fields(outer.values)
    names = _py(names)
    words = _Lists(dictionary)
    words_py = _py(words.values)
    code_lists = _Lists(codes, numpy=True)
    out = []
    for i in range(len(col)):
        out.append({names[j]: Attribute(code_lists.at(j).astype(np.int64),
                                        tuple(words_py[words.offsets[j]:words.offsets[j + 1]]))
                    for j in range(outer.offsets[i], outer.offsets[i + 1])})
    return out


def _maps_of_pairs(col: pa.Array) -> list[dict[str, float] | None]:
    outer = _Lists(col)
    keys, vals = (_py(a) for a in _struct_fields(outer.values))
    return [dict(zip(keys[outer.offsets[i]:outer.offsets[i + 1]], vals[outer.offsets[i]:outer.offsets[i + 1]]))
            if outer.valid[i] else None for i in range(len(col))]


def _maps_of_maps(col: pa.Array) -> list[dict[str, dict[str, float]] | None]:
    outer = _Lists(col)
    keys, inner = _struct_fields(outer.values)
    keys = _py(keys)
    inner_maps = _maps_of_pairs(inner)
    return [{keys[j]: inner_maps[j] or {} for j in range(outer.offsets[i], outer.offsets[i + 1])}
            if outer.valid[i] else None for i in range(len(col))]


def _string_lists(col: pa.Array) -> list[list[str]]:
    lists = _Lists(col)
    flat = _py(lists.values)
    return [flat[lists.offsets[i]:lists.offsets[i + 1]] for i in range(len(col))]


def _array_lists(col: pa.Array, dtype) -> list[np.ndarray | None]:
    lists = _Lists(col, numpy=True)
    return [np.array(lists.at(i), dtype=dtype) if lists.valid[i] else None for i in range(len(col))]


def _utc(ts: datetime | None) -> datetime | None:
    return ts if ts is None or ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


def _records(batch: pa.RecordBatch) -> list[DecisionRecord]:
    c = {name: batch.column(name) for name in batch.schema.names}
    py = {name: _py(c[name]) for name in (
        "ts", "request_id", "unit_id", "policy", "policy_digest", "policy_version", "experiment",
        "variant", "bucket", "holdout", "seed", "request_policy", "embedding_dim", "slate_size",
        "budget_ms", "solver", "explain", "user_id", "deadline_ms", "joint", "marginal_samples")}
    ids = _string_lists(c["candidate_ids"])
    scores = _maps_of_doubles(c["scores"])
    numeric = _maps_of_doubles(c["numeric"])
    attributes = _maps_of_attributes(c["attributes"])
    embeddings = _array_lists(c["embeddings"], np.float32)
    weights = _maps_of_pairs(c["objective_weights"])
    targets = _maps_of_maps(c["targets"])
    boosts = _maps_of_maps(c["boosts"])
    slate_index = _array_lists(c["slate_index"], np.int32)
    slate_ids = _string_lists(c["slate_item_ids"])
    cascade = _array_lists(c["cascade"], np.float64)
    marginal = _array_lists(c["marginal"], np.float64)
    d_solver, d_status, d_objective, d_bound, d_gap, d_exact, d_budget, d_eligible, d_relaxed = (
        _struct_fields(c["diagnostics"]))
    diag = [_py(a) for a in (d_solver, d_status, d_objective, d_bound, d_gap, d_exact, d_budget, d_eligible)]
    relaxed = _string_lists(d_relaxed)
    out = []
    for i in range(batch.num_rows):
        dim = py["embedding_dim"][i]
        e = embeddings[i]
        out.append(DecisionRecord(
            ts=_utc(py["ts"][i]), request_id=py["request_id"][i], unit_id=py["unit_id"][i],
            policy=py["policy"][i], policy_digest=py["policy_digest"][i],
            policy_version=py["policy_version"][i], experiment=py["experiment"][i],
            variant=py["variant"][i], bucket=py["bucket"][i], holdout=py["holdout"][i],
            seed=py["seed"][i], request_policy=py["request_policy"][i],
            candidates=Candidates(
                item_ids=ids[i], scores=scores[i], attributes=attributes[i], numeric=numeric[i],
                embeddings=None if dim is None or e is None else e.reshape(len(ids[i]), dim)),
            slate_size=py["slate_size"][i], budget_ms=py["budget_ms"][i], solver=py["solver"][i],
            objective_weights=weights[i] or {}, explain=py["explain"][i], targets=targets[i] or {},
            user_id=py["user_id"][i], deadline_ms=py["deadline_ms"][i], boosts=boosts[i],
            slate_index=slate_index[i], slate_item_ids=tuple(slate_ids[i]),
            diagnostics=Diagnostics(*(col[i] for col in diag), relaxed=tuple(relaxed[i])),
            joint=py["joint"][i], cascade=cascade[i], marginal=marginal[i],
            marginal_samples=py["marginal_samples"][i]))
    return out


def from_table(table: pa.Table | pa.RecordBatch) -> list[DecisionRecord]:
    """The records of a decision-log table (or batch), in row order. Arrays are copies: the
    records do not keep the table's buffers alive."""
    check_version(table.schema)
    batches = [table] if isinstance(table, pa.RecordBatch) else table.to_batches()
    return [r for batch in batches for r in _records(batch)]


# ------------------------------------------------------------------ outcomes
def outcomes_to_batch(records: Sequence[OutcomeRecord]) -> pa.RecordBatch:
    now = datetime.now(timezone.utc)
    rs = list(records)
    return pa.RecordBatch.from_arrays([
        pa.array([r.request_id for r in rs], _STR), pa.array([r.position for r in rs], pa.int32()),
        pa.array([r.item_id for r in rs], _STR), pa.array([r.clicks for r in rs], pa.int64()),
        pa.array([r.add_to_carts for r in rs], pa.int64()), pa.array([r.purchases for r in rs], pa.int64()),
        pa.array([r.ts if r.ts is not None else now for r in rs], TS)], schema=OUTCOME_SCHEMA)


def outcomes_from_table(table: pa.Table) -> list[OutcomeRecord]:
    check_version(table.schema, key=OUTCOME_VERSION_KEY)
    cols = [table.column(name).to_pylist() for name in OUTCOME_SCHEMA.names]
    return [OutcomeRecord(rid, pos, item, c, a, p, _utc(ts)) for rid, pos, item, c, a, p, ts in zip(*cols)]


__all__ = ["DECISION_SCHEMA", "OUTCOME_SCHEMA", "SCHEMA_VERSION", "VERSION_KEY", "check_version",
           "from_table", "outcomes_from_table", "outcomes_to_batch", "to_batch"]
