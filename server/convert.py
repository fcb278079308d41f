"""Protobuf <-> engine types. No gRPC here, no solving: columns in, columns out.

Decoding turns each repeated field into one numpy array without Python-level loops: packed
double / float columns are read straight from their wire bytes (`np.frombuffer`); dictionary codes
(varints), plain string columns (dictionary-encoded on the wire bytes) and item ids (checked for
repeats and empties there, after which the engine reads only the slate's ids from the request's
own field) by numba kernels over their wire bytes (`server._wire_kernels`). No Python object is
made per candidate unless a kernel cannot read the bytes (then the protobuf runtime's values are
used). Given the request's own bytes (`decode_request(msg, raw)`, as the server does for Rerank),
one kernel pass over the Candidates bytes reads the item ids, locates every column's map entry and
decodes the dictionary codes, so nothing is re-serialized; the parsed message still provides
everything small (keys' order, dictionaries, scalars) and every column the kernel cannot read.

Rerank's requests are not even parsed whole (`parse_rerank`, the server's parser for Rerank):
upb parses the top level of a message type whose `candidates` field is `bytes`, and the kernels
alone check the Candidates (as strictly as a parser: tags, lengths, UTF-8) and read them; a
request in a layout they do not read (embeddings, unknown fields, unpacked doubles, ...) is
parsed whole as before. Same engine request, same issues, same DecodeError either way
(tests/test_lite_parse.py).

Structural problems that only exist on the wire (dictionary codes out of range, both string
encodings set, an embedding matrix that is not N x dim, an unknown enum value) are reported here,
as `InvalidRequest` with the proto field path. Everything about the *content* of the columns
(lengths, NaN / inf, duplicate ids, unknown score columns, slate size and candidate-count limits)
is the engine's job: a column of the wrong length is passed on with its real length so that the
engine reports it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from engine.errors import FieldIssue, InvalidRequest
from engine.types import (
    Attribute,
    Candidates,
    ConstraintReport,
    IdCheck,
    PolicyInfo,
    RerankRequest,
    RerankResult,
)
from server import _wire_kernels as _wk
from server import wire_layout
from server._gen.reranker.v1 import reranker_pb2 as pb

log = logging.getLogger(__name__)

# SolverMode enum number -> engine solver mode (None = the policy's).
_SOLVER_MODES: dict[int, str | None] = {
    pb.SOLVER_MODE_UNSPECIFIED: None,
    pb.SOLVER_MODE_AUTO: "auto",
    pb.SOLVER_MODE_GREEDY: "greedy",
    pb.SOLVER_MODE_EXACT: "exact",
}
# Engine status -> SlateStatus enum number.
_STATUSES: dict[str, int] = {
    "optimal": pb.SLATE_STATUS_OPTIMAL,
    "feasible": pb.SLATE_STATUS_FEASIBLE,
    "relaxed": pb.SLATE_STATUS_RELAXED,
}


def key_path(prefix: str, key: str) -> str:
    """Path of a map entry, as the engine spells it: candidates.scores['p_click']."""
    return f"{prefix}['{key}']"


# --------------------------------------------------------------------------------------- decode


def decode_request(msg: pb.RerankRequest, raw: bytes | None = None, *,
                   deadline_ms: float | None = None) -> RerankRequest:
    """`reranker.v1.RerankRequest` -> `engine.types.RerankRequest`.

    `raw`, if given, must be the bytes `msg` was parsed from: the large columns are then read
    from them where they lie, instead of from re-serialized sub-messages. Same result either way.
    Raises `InvalidRequest` (every structural issue found, each with its proto field path).
    """
    if type(msg) is LiteRerankRequest:
        return _decode_lite(msg, deadline_ms)
    issues: list[FieldIssue] = []
    candidates = _decode_candidates(msg.candidates, issues, _candidates_wire(raw))
    return _request(msg, candidates, issues, deadline_ms)


def _request(msg, candidates: Candidates, issues: list[FieldIssue],
             deadline_ms: float | None) -> RerankRequest:
    """The engine request of `msg`'s top-level fields and `candidates`; InvalidRequest if
    `issues` (the candidates') or the solver mode's are any."""
    solver = _SOLVER_MODES.get(msg.solver, _INVALID)
    if solver is _INVALID:
        known = ", ".join(f"{pb.SolverMode.Name(v)} ({v})" for v in _SOLVER_MODES)
        issues.append(FieldIssue("solver", f"unknown SolverMode value {msg.solver}; expected one of {known}"))
    if issues:
        raise InvalidRequest(issues)
    return RerankRequest(
        policy=msg.policy,
        candidates=candidates,
        slate_size=msg.slate_size,
        budget_ms=msg.budget_ms,
        solver=solver,
        objective_weights=dict(msg.objective_weights),
        targets={name: dict(dist.shares) for name, dist in msg.targets.items()},
        explain=msg.explain,
        request_id=msg.request_id,
        user_id=msg.user_id,
        deadline_ms=deadline_ms,
    )


_INVALID = object()


class _Wire(NamedTuple):
    """The Candidates message's bytes within the request's."""

    raw: bytes  # the serialized RerankRequest
    offset: int  # where the Candidates message starts in it
    view: np.ndarray  # uint8 view of those bytes (no copy)


def _candidates_wire(raw: bytes | None) -> _Wire | None:
    """Where the candidates field of a serialized RerankRequest lies; None without `raw`, or if
    the field is absent, repeated or unreadable."""
    if raw is None:
        return None
    buf = np.frombuffer(raw, dtype=np.uint8)
    offset, length = _wk.submessage(buf, wire_layout.REQUEST_CANDIDATES)
    if offset < 0:
        return None
    return _Wire(raw, offset, buf[offset:offset + length])


def _floats(values, dtype=np.float64) -> np.ndarray:
    return np.fromiter(values, dtype=dtype, count=len(values))


def _packed_segment(buf: bytes, field_number: int) -> tuple[int, int] | None:
    """(offset, length) of length-delimited field `field_number` in a serialized message whose
    top-level fields are few; None if absent, repeated or malformed (the caller then falls back)."""
    end = len(buf)
    if end > 1 and buf[0] == (field_number << 3 | 2):  # the usual case: the field alone
        length, i = _varint(buf, 1)
        if i + length == end:
            return i, length
    found = None
    i = 0
    while i < end:
        tag, i = _varint(buf, i)
        wire = tag & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if tag >> 3 == field_number:
                if found is not None:
                    return None
                found = (i, length)
            i += length
        else:
            return None
    return found if i == end else None


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def _packed(msg, values, field_number: int, wire_dtype: str, dtype) -> np.ndarray:
    """A packed repeated fixed-width field as a native, writable numpy array.

    Iterating a protobuf repeated field costs ~40 ns per element; re-serializing the small
    sub-message that holds it is a memcpy, and the packed payload IS a little-endian array.
    Falls back to iteration if the bytes are not exactly what is expected.
    """
    n = len(values)
    if n == 0:
        return np.empty(0, dtype=dtype)
    buf = msg.SerializeToString()
    seg = _packed_segment(buf, field_number)
    itemsize = np.dtype(wire_dtype).itemsize
    if seg is None or seg[1] != n * itemsize:
        return _floats(values, dtype)
    return np.frombuffer(buf, dtype=wire_dtype, count=n, offset=seg[0]).astype(dtype)


def _uint32s(msg, values, field_number: int) -> np.ndarray:
    """A repeated uint32 field as int64, decoded from the message's wire bytes by a kernel
    (varints cannot be viewed like fixed-width values); iteration if the kernel cannot read them."""
    n = len(values)
    out = np.empty(n, dtype=np.int64)
    if n and _wk.uint32_field(np.frombuffer(msg.SerializeToString(), dtype=np.uint8),
                              field_number, out) != n:
        return np.fromiter(values, dtype=np.int64, count=n)
    return out


def warmup() -> None:
    """Compile (or load from the cache) the wire kernels, before the server reports SERVING."""
    _wk.warmup(wire_layout.KERNEL_FIELDS)


def _doubles(col: pb.DoubleColumn) -> np.ndarray:
    return _packed(col, col.values, wire_layout.DOUBLE_VALUES, "<f8", np.float64)


class ItemIds(Sequence):
    """`Candidates.item_ids` as the request's own repeated field: the engine reads a few ids (the
    slate's), so the other N are never turned into Python strings here."""

    __slots__ = ("_ids", "_list")

    def __init__(self, ids) -> None:
        self._ids = ids
        self._list: list[str] | None = None

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        return self._ids[i]

    def __iter__(self):
        return iter(self._ids)

    def index(self, value, *args) -> int:  # pins by item id
        if self._list is None:
            self._list = list(self._ids)
        return self._list.index(value, *args)

    def __contains__(self, value) -> bool:
        return value in self._ids

    def take(self, rows: np.ndarray) -> list[str]:
        """The ids at `rows` (int64), in order: the slate's ids in one call (engine.report)."""
        ids = self._ids
        return [ids[r] for r in rows.tolist()]


def _string_codes(msg, values, field_number: int, wire: np.ndarray | None = None):
    """(codes, first, first_empty) of repeated string field `field_number` (see
    `_wire_kernels.string_field_codes`), or None if the kernel cannot read the bytes. `wire`:
    the message's bytes if at hand (uint8), else it is re-serialized."""
    n = len(values)
    codes = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    empty_at = np.empty(1, dtype=np.int64)
    if wire is None:
        wire = np.frombuffer(msg.SerializeToString(), dtype=np.uint8)
    distinct = _wk.string_field_codes(wire, field_number, codes, first, empty_at)
    if distinct < 0:
        return None
    return codes, first[:distinct], int(empty_at[0])


def _item_ids(c: pb.Candidates, wire: np.ndarray | None = None) -> tuple[ItemIds | list[str], IdCheck | None]:
    found = _string_codes(c, c.item_ids, wire_layout.ITEM_IDS, wire) if len(c.item_ids) else None
    if found is None:
        return list(c.item_ids), None
    return ItemIds(c.item_ids), _id_check(*found)


def _id_check(codes: np.ndarray, first: np.ndarray, empty_at: int) -> IdCheck:
    """What the dictionary encoding of the item ids says about them."""
    duplicate = None
    if first.shape[0] != codes.shape[0]:  # a repeat: the first index whose code is not new
        j = int(np.argmax(codes != np.arange(codes.shape[0])))
        duplicate = (j, int(first[codes[j]]))
    return IdCheck(empty_at, duplicate)


class _Columns:
    """Where the map entries of a Candidates message lie in its bytes (`_wire_kernels.map_entries`):
    for each (field number, key) the entry a parser keeps (the last), and the codes of the
    StringColumns, already decoded (plain values dictionary-encoded, their distinct values joined
    in `text`)."""

    __slots__ = ("base", "codes", "raw", "text", "where")

    def __init__(self, raw: bytes, base: int, codes: np.ndarray, text: np.ndarray,
                 rows: list[list[int]]) -> None:
        self.raw = raw  # the request's bytes; the Candidates message starts at raw[base]
        self.base = base
        self.codes = codes
        self.text = text
        where: dict[tuple[int, str], list[int]] = {}
        for row in rows:
            key_at = row[1]
            key = raw[base + key_at:base + key_at + row[2]].decode() if key_at >= 0 else ""
            where[row[0], key] = row
        self.where = where

    @staticmethod
    def find(c: pb.Candidates, wire: _Wire | None, n: int) -> _Columns | None:
        """The map entries alone (`_wire_kernels.map_entries`); None if not readable."""
        if wire is None:
            return None
        entries, codes, text = _Columns.room(c, n, wire)
        count = _wk.map_entries(wire.view, wire_layout.KERNEL_FIELDS, entries, codes, text)
        if count < 0:
            return None
        return _Columns.of(wire, codes, text, entries[:count])

    @staticmethod
    def room(c: pb.Candidates, n: int, wire: _Wire) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        columns = len(c.scores) + len(c.numeric) + len(c.attributes)
        entries = np.empty((2 * columns + 8, _wk.E_WIDTH), dtype=np.int64)  # room for repeated keys
        # the distinct plain values, joined: never longer than the message that holds them
        text = np.empty(wire.view.shape[0], dtype=np.uint8)
        return entries, np.empty((len(c.attributes), n), dtype=np.int64), text

    @staticmethod
    def of(wire: _Wire, codes: np.ndarray, text: np.ndarray, entries: np.ndarray) -> _Columns | None:
        try:
            return _Columns(wire.raw, wire.offset, codes, text, entries.tolist())
        except UnicodeDecodeError:  # a parser would have refused it; decode without the bytes
            return None

    def doubles(self, field: int, name: str, col: pb.DoubleColumn) -> np.ndarray:
        row = self.where.get((field, name))
        if row is not None:
            at, size = row[5], row[6]
            n = len(col.values)
            if at >= 0 and size == 8 * n:
                return np.frombuffer(self.raw, dtype="<f8", count=n, offset=self.base + at).astype(np.float64)
            if at == -1 and n == 0:
                return np.empty(0, dtype=np.float64)
        return _doubles(col)

    def string_column(self, name: str) -> _StringWire | None:
        """What the kernel read of attribute column `name`, or None if it did not."""
        row = self.where.get((wire_layout.ATTRIBUTES, name))
        if row is None:
            return None
        code_row, count, top, distinct, text_at, text_len = row[5:11]
        if code_row == _wk.UNREAD:
            return None
        codes = self.codes[code_row, :count] if code_row >= 0 else np.empty(0, dtype=np.int64)
        values = None
        if distinct >= 0 and text_len >= 0:  # plain: its distinct values, in code order
            try:
                values = tuple(str(self.text[text_at:text_at + text_len], "utf-8").split("\x00"))
            except UnicodeDecodeError:  # a parser would have refused it: the runtime's values
                values = None
            if values is not None and len(values) != distinct:
                values = None
        return _StringWire(codes, top, distinct, values)


class _StringWire(NamedTuple):
    """An attribute column as read from the request's bytes (`_Columns.string_column`)."""

    codes: np.ndarray  # its codes; for plain values, the kernel's dictionary encoding of them
    top: int  # the largest code (-1: none)
    distinct: int  # plain values: how many distinct (-1: the column has no plain values)
    values: tuple[str, ...] | None  # plain values: the distinct ones in code order (None: not read)


def _scan(c: pb.Candidates, wire: _Wire):
    """(item ids, their IdCheck, _Columns) read from the Candidates' bytes in one kernel pass
    (`_wire_kernels.candidates_scan`); None if the kernel cannot read them."""
    ids = c.item_ids
    n = len(ids)
    codes = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    info = np.empty(2, dtype=np.int64)
    entries, column_codes, text = _Columns.room(c, n, wire)
    distinct = _wk.candidates_scan(wire.view, wire_layout.KERNEL_FIELDS, codes, first, info,
                                   entries, column_codes, text)
    if distinct < 0:
        return None
    empty_at, count = info.tolist()
    columns = _Columns.of(wire, column_codes, text, entries[:count])
    if not n:
        return list(ids), None, columns
    return ItemIds(ids), _id_check(codes, first[:distinct], empty_at), columns


def _decode_candidates(c: pb.Candidates, issues: list[FieldIssue],
                       wire: _Wire | None = None) -> Candidates:
    """`wire`: where the bytes `c` was parsed from are, if at hand."""
    scanned = _scan(c, wire) if wire is not None else None
    if scanned is None:
        item_ids, id_check = _item_ids(c)
        found = None
    else:
        item_ids, id_check, found = scanned
    n = len(item_ids)
    if found is None:
        scores = {name: _doubles(col) for name, col in c.scores.items()}
        numeric = {name: _doubles(col) for name, col in c.numeric.items()}
    else:
        scores = {name: found.doubles(wire_layout.SCORES, name, col) for name, col in c.scores.items()}
        numeric = {name: found.doubles(wire_layout.NUMERIC, name, col) for name, col in c.numeric.items()}
    attributes: dict[str, Attribute] = {}
    for name, col in c.attributes.items():
        attr = _decode_attribute(key_path("candidates.attributes", name), col, issues,
                                 found.string_column(name) if found is not None else None)
        if attr is not None:
            attributes[name] = attr
    embeddings = None
    if c.HasField("embeddings"):
        embeddings = _decode_embeddings(c.embeddings, n, issues)
    return Candidates(item_ids, scores, attributes, numeric, embeddings, id_check)


def attribute_from_values(values: list[str]) -> Attribute:
    """Dictionary-encode a list of strings (dictionary in order of first appearance).

    Same result as `Attribute.from_values`, about twice as fast on a list.
    """
    index = {v: i for i, v in enumerate(dict.fromkeys(values))}
    codes = np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values))
    return Attribute(codes, tuple(index))


def _decode_attribute(path: str, col: pb.StringColumn, issues: list[FieldIssue],
                      wire: _StringWire | None = None) -> Attribute | None:
    """`wire`: the column as read from the request's bytes (`_Columns.string_column`), if it was."""
    n_values, n_dict, n_codes = len(col.values), len(col.dictionary), len(col.codes)
    if n_values and (n_dict or n_codes):
        issues.append(FieldIssue(
            path,
            f"set either 'values' (plain) or 'dictionary' + 'codes' (dictionary-encoded), not both "
            f"(got {n_values} values, {n_dict} dictionary entries, {n_codes} codes)",
        ))
        return None
    if not (n_dict or n_codes):
        if not n_values:
            return attribute_from_values([])
        if wire is not None and wire.distinct >= 0 and wire.codes.shape[0] == n_values:
            values = wire.values
            if values is None:  # not joined (a value holds a 0 byte): the runtime's values
                codes = wire.codes
                new = np.empty(codes.shape[0], dtype=bool)  # first appearances: a code above all before
                new[0] = True
                np.greater(codes[1:], np.maximum.accumulate(codes)[:-1], out=new[1:])
                runtime = col.values
                values = tuple(runtime[i] for i in np.flatnonzero(new).tolist())
            return Attribute(wire.codes, values)
        found = _string_codes(col, col.values, wire_layout.STRING_VALUES)
        if found is None:
            return attribute_from_values(list(col.values))
        codes, first, _ = found
        values = col.values
        return Attribute(codes, tuple(values[i] for i in first.tolist()))

    dictionary = tuple(col.dictionary[:])  # a slice is a list: faster than iterating the field
    if wire is not None and wire.distinct < 0 and wire.codes.shape[0] == n_codes:
        codes, top = wire.codes, wire.top
    else:
        codes = _uint32s(col, col.codes, wire_layout.STRING_CODES)
        top = int(codes.max()) if n_codes else -1
    return _coded_attribute(path, dictionary, codes, top, issues)


def _coded_attribute(path: str, dictionary: tuple[str, ...], codes: np.ndarray, top: int,
                     issues: list[FieldIssue], distinct: bool | None = None) -> Attribute | None:
    """A dictionary-encoded column (`top`: its largest code, -1: none; `distinct`: whether the
    dictionary's values are, if known), or None with its issues (a repeated dictionary value,
    codes out of range)."""
    n_dict = len(dictionary)
    ok = True
    if not (len(set(dictionary)) == n_dict if distinct is None else distinct):
        seen: dict[str, int] = {}
        for j, v in enumerate(dictionary):
            if v in seen:
                issues.append(FieldIssue(
                    f"{path}.dictionary[{j}]",
                    f"duplicate value {v!r} (already at dictionary[{seen[v]}]); dictionary values must be distinct",
                ))
                break
            seen[v] = j
        ok = False
    bad = np.flatnonzero(codes >= n_dict) if top >= n_dict else ()
    if len(bad):
        first = int(bad[0])
        more = f" ({len(bad)} codes out of range in all)" if len(bad) > 1 else ""
        issues.append(FieldIssue(
            f"{path}.codes[{first}]",
            f"code {int(codes[first])} out of range: the dictionary has {n_dict} values, "
            f"so codes must be < {n_dict}{more}",
        ))
        ok = False
    return Attribute(codes, dictionary) if ok else None


def _decode_embeddings(e: pb.Embeddings, n: int, issues: list[FieldIssue]) -> np.ndarray | None:
    dim, got = e.dim, len(e.values)
    if dim == 0:
        if got:
            issues.append(FieldIssue(
                "candidates.embeddings.dim",
                f"must be > 0 when embeddings.values is set (got {got} values)",
            ))
        return None
    if got != n * dim:
        issues.append(FieldIssue(
            "candidates.embeddings.values",
            f"expected N*dim = {n * dim} floats (N={n}, dim={dim}), got {got}",
        ))
        return None
    return _packed(e, e.values, wire_layout.EMBEDDING_VALUES, "<f4", np.float32).reshape(n, dim)


# ----------------------------------------------------------------------------------- lite parse


def _lite_request_classes():
    """(RerankRequest, StringColumn, RerankBatchRequest) in a descriptor pool of their own, the
    request's `candidates` declared `bytes` (same field number), the column's `codes` left out
    and the batch's `requests` declared `repeated bytes`: upb parses (and checks) the request's
    small top-level fields and keeps the Candidates message as bytes, for the wire kernels,
    parses a column's dictionary without its codes (which the kernels have read), and splits a
    batch into its requests' bytes, each then parsed as a Rerank request is."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    proto.name = "reranker_lite.proto"  # its own file: the pool holds nothing else
    for message in proto.message_type:
        if message.name == "RerankRequest":
            for field in message.field:
                if field.name == "candidates":
                    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                    field.ClearField("type_name")
        if message.name == "StringColumn":
            keep = [f for f in message.field if f.number != wire_layout.STRING_CODES]
            del message.field[:]
            message.field.extend(keep)
        if message.name == "RerankBatchRequest":
            for field in message.field:
                if field.name == "requests":
                    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                    field.ClearField("type_name")
    del proto.service[:]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(m.DESCRIPTOR.full_name))
                 for m in (pb.RerankRequest, pb.StringColumn, pb.RerankBatchRequest))


_LITE_REQUEST, _LITE_STRING_COLUMN, _LITE_BATCH = _lite_request_classes()


class LiteRerankRequest:
    """A Rerank request as `parse_rerank` read it: its top-level fields parsed by upb (read as
    attributes, like a `reranker.v1.RerankRequest`'s), its Candidates checked and read by the
    wire kernels (`_wire_kernels.candidates_scan_at`), for `decode_request` to assemble.

    `candidates` parses them with the protobuf runtime when asked (a slow path: what the server
    reads on every call is `candidates_shape`)."""

    # the fields the servicer reads on every call, copied (a slot is read in ~20 ns; the others
    # go through __getattr__, ~600 ns)
    _COPIED = ("policy", "request_id", "slate_size", "explain", "solver")
    __slots__ = ("_msg", "raw", "offset", "length", "n", "rows", "distinct", "id_codes", "id_first",
                 "id_start", "id_stop", "first_empty", "column_codes", "doubles", "_candidates", *_COPIED)

    def __getattr__(self, name: str):
        return getattr(self._msg, name)

    @property
    def candidates(self) -> pb.Candidates:
        if self._candidates is None:
            self._candidates = pb.Candidates.FromString(self.raw[self.offset:self.offset + self.length])
        return self._candidates


def parse_rerank(raw: bytes) -> LiteRerankRequest | pb.RerankRequest:
    """The Rerank request in `raw`: a LiteRerankRequest when the wire kernels read its Candidates
    alone (`_wire_kernels.candidates_scan_at`, which reads every column and accepts nothing a
    parser refuses once the plain values' UTF-8 is checked, here), else the parsed
    `reranker.v1.RerankRequest` (DecodeError for bytes that are not one, as
    `RerankRequest.FromString`)."""
    lite = _parse_lite(raw)
    return lite if lite is not None else pb.RerankRequest.FromString(raw)


class LiteRerankBatch:
    """A RerankBatch request as `parse_rerank_batch` read it: `requests`, each as `parse_rerank`
    reads a Rerank request (a LiteRerankRequest, or the parsed message)."""

    __slots__ = ("requests",)

    def __init__(self, requests: list) -> None:
        self.requests = requests


def parse_rerank_batch(raw: bytes) -> LiteRerankBatch | pb.RerankBatchRequest:
    """The RerankBatch request in `raw`: its requests split by upb and each read by
    `parse_rerank` (the wire kernels read every Candidates they can); the parsed
    `reranker.v1.RerankBatchRequest` when the bytes do not split (DecodeError for bytes that are
    not one, with the message `RerankBatchRequest.FromString` gives, also when only one of the
    requests is not a valid RerankRequest)."""
    try:
        parts = _LITE_BATCH.FromString(raw).requests
    except DecodeError:
        return pb.RerankBatchRequest.FromString(raw)  # raises the batch's own error
    try:
        return LiteRerankBatch([parse_rerank(part) for part in parts])
    except DecodeError:  # one request is not valid: the batch's parser says so in its words
        return pb.RerankBatchRequest.FromString(raw)


#: Column of a map entry's row (server._wire_kernels.E_*) that `_parse_lite` appends: the plain
#: values of an attribute column, decoded (None: not a plain column).
_E_VALUES = _wk.E_WIDTH


def _parse_lite(raw: bytes) -> LiteRerankRequest | None:
    try:
        msg = _LITE_REQUEST.FromString(raw)
    except Exception:  # noqa: BLE001 - the full parse gives the parser's own message
        return None
    view = np.frombuffer(raw, dtype=np.uint8)
    offset, length = _wk.submessage(view, wire_layout.REQUEST_CANDIDATES)
    if offset < 0:  # absent, repeated (a parser merges them) or unreadable
        return None
    cands = view[offset:offset + length]
    counts = np.empty(3, dtype=np.int64)
    if _wk.candidates_count(cands, wire_layout.KERNEL_FIELDS, counts) < 0:
        return None
    n, n_entries, n_attributes = counts.tolist()
    ids = np.empty((4, n), dtype=np.int64)  # codes, first of each code, start, stop
    info = np.empty(2, dtype=np.int64)
    entries = np.empty((n_entries, _wk.E_WIDTH), dtype=np.int64)
    column_codes = np.empty((n_attributes, n), dtype=np.int64)
    text = np.empty(length, dtype=np.uint8)
    id_codes, id_first, id_start, id_stop = ids
    distinct = _wk.candidates_scan_at(cands, wire_layout.KERNEL_FIELDS, offset, id_codes, id_first, id_start,
                                      id_stop, info, entries, column_codes, text)
    if distinct < 0:
        return None
    doubles = np.empty(length // 8, dtype=np.float64)
    _wk.gather_doubles(cands, entries, n_entries, wire_layout.ATTRIBUTES, doubles.view(np.uint64))
    rows = entries.tolist()
    for row in rows:
        if row[_wk.E_DATA] == _wk.UNREAD:  # doubles in several segments, a value given twice
            return None
        values = None
        n_distinct = row[_wk.E_DISTINCT]
        if n_distinct >= 0 and row[_wk.E_FIELD] == wire_layout.ATTRIBUTES:
            at, size = row[_wk.E_TEXT_AT], row[_wk.E_TEXT_LEN]
            if size < 0:  # a value holds a 0 byte: not split here
                return None
            try:  # the kernel left plain values' UTF-8 to here: only the distinct ones are decoded
                values = tuple(str(text[at:at + size], "utf-8").split("\x00"))
            except UnicodeDecodeError:  # the full parse refuses the request
                return None
            if len(values) != n_distinct:
                return None
        row.append(values)
    req = LiteRerankRequest()
    req._msg, req.raw, req.offset, req.length, req.n = msg, raw, offset, length, n
    req.policy, req.request_id, req.slate_size, req.explain, req.solver = (
        msg.policy, msg.request_id, msg.slate_size, msg.explain, msg.solver)
    req.rows, req.distinct, req.first_empty, req.column_codes = rows, distinct, int(info[0]), column_codes
    req.doubles = doubles
    req.id_codes, req.id_first, req.id_start, req.id_stop = id_codes, id_first, id_start, id_stop
    req._candidates = None
    return req


def candidates_shape(request) -> tuple[int, int]:
    """(candidates, embedding dim) of a parsed Rerank request, either kind, without decoding it."""
    if type(request) is LiteRerankRequest:
        return request.n, 0  # embeddings are never lite
    c = request.candidates
    return len(c.item_ids), c.embeddings.dim


class WireIds(Sequence):
    """`Candidates.item_ids` where they lie in the request's bytes (checked UTF-8 by the lite
    parse): the engine reads a few ids (the slate's), decoded when read."""

    __slots__ = ("_raw", "_start", "_stop", "_arrays", "_n", "_list")

    def __init__(self, raw: bytes, start: np.ndarray, stop: np.ndarray) -> None:
        self._raw = raw
        self._start = memoryview(start)  # int64 offsets into raw; indexing a memoryview gives ints
        self._stop = memoryview(stop)
        self._arrays = start, stop
        self._n = start.shape[0]
        self._list: list[str] | None = None

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        try:  # an int (a memoryview's index gives an int, a slice of it a memoryview: TypeError)
            return self._raw[self._start[i]:self._stop[i]].decode()
        except TypeError:
            if type(i) is slice:
                return self._all()[i]
            raise

    def _all(self) -> list[str]:
        """Every id (iteration, index, `in`: the decision log, pins): joined by a kernel, decoded
        and split in C (~10 us for 1,000 ids, against ~100 us one by one)."""
        if self._list is None:
            start, stop = self._arrays
            text = np.empty(max(int(stop.sum() - start.sum()) + self._n - 1, 0), dtype=np.uint8)
            size = _wk.join_strings(np.frombuffer(self._raw, dtype=np.uint8), start, stop, text)
            if size >= 0 and self._n:
                self._list = str(text[:size], "utf-8").split("\x00")
            else:  # an id holds a 0 byte (or there are none): one by one
                raw = self._raw
                self._list = [raw[a:b].decode() for a, b in zip(start.tolist(), stop.tolist())]
        return self._list

    def __iter__(self):
        return iter(self._all())

    def index(self, value, *args) -> int:  # pins by item id
        return self._all().index(value, *args)

    def __contains__(self, value) -> bool:
        return value in self._all()

    def take(self, rows: np.ndarray) -> list[str]:
        """The ids at `rows` (int64), in order: the slate's ids in one call (engine.report),
        each decoded from its bytes (~3x cheaper than reading them one by one by index)."""
        if self._list is not None:
            ids = self._list
            return [ids[r] for r in rows.tolist()]
        raw = self._raw
        start, stop = self._arrays
        return [raw[a:b].decode() for a, b in zip(start[rows].tolist(), stop[rows].tolist())]


#: Dictionaries of attribute columns already seen, by their bytes (requests from one caller
#: mostly repeat them): (values, whether distinct). Bounded: cleared when full.
_DICTIONARIES: dict[bytes, tuple[tuple[str, ...], bool]] = {}
_DICTIONARIES_MAX = 256
_DICTIONARY_BYTES_MAX = 8192  # larger dictionaries are parsed every time, never kept


def _dictionary(raw: bytes, base: int, start: int, end: int) -> tuple[tuple[str, ...], bool]:
    """The dictionary of the StringColumn at raw[base + start:] whose last dictionary value ends
    at raw[base + end] (end < 0: none), parsed by upb without the codes, and whether its values
    are distinct."""
    if end < 0:
        return (), True
    data = raw[base + start:base + end]
    found = _DICTIONARIES.get(data)
    if found is None:
        values = tuple(_LITE_STRING_COLUMN.FromString(data).dictionary[:])
        found = values, len(set(values)) == len(values)
        if len(data) <= _DICTIONARY_BYTES_MAX:
            if len(_DICTIONARIES) >= _DICTIONARIES_MAX:
                _DICTIONARIES.clear()
            _DICTIONARIES[data] = found
    return found


def _decode_lite(req: LiteRerankRequest, deadline_ms: float | None) -> RerankRequest:
    """The engine request of a lite-parsed request, from what the kernels read: the same result,
    the same issues as decode_request on the parser's message (the issues of different columns
    in wire order: a parser's map order is its hash table's, which differs between processes)."""
    raw, base = req.raw, req.offset
    scores: dict[str, np.ndarray] = {}
    numeric: dict[str, np.ndarray] = {}
    strings: dict[str, list] = {}
    doubles = req.doubles  # every DoubleColumn's values, one after the other (gather_doubles)
    for row in req.rows:
        field, key_at, key_len, _, _, data, count, at = row[:8]
        key = raw[base + key_at:base + key_at + key_len].decode() if key_at >= 0 else ""
        if field == wire_layout.ATTRIBUTES:
            strings[key] = row  # a parser keeps a map's last entry of a key
        else:
            (scores if field == wire_layout.SCORES else numeric)[key] = (
                doubles[at:at + count // 8] if data >= 0 else np.empty(0, dtype=np.float64))
    issues: list[FieldIssue] = []
    attributes: dict[str, Attribute] = {}
    for key, row in strings.items():
        value_at, value_len, code_row, count, top = row[3:8]
        values = row[_E_VALUES]
        column = req.column_codes[code_row, :count] if code_row >= 0 else np.empty(0, dtype=np.int64)
        if values is not None:  # plain (candidates_scan_at: no dictionary, no codes)
            attributes[key] = Attribute(column, values)
            continue
        # dictionary and codes (or neither): the dictionary's strings parsed by upb, not the codes
        dictionary, distinct = _dictionary(raw, base, value_at, row[_wk.E_TEXT_AT])
        if not (dictionary or count):
            attr = attribute_from_values([])
        else:
            attr = _coded_attribute(key_path("candidates.attributes", key), dictionary, column, top, issues,
                                    distinct)
        if attr is not None:
            attributes[key] = attr
    if req.n:
        item_ids: WireIds | list[str] = WireIds(raw, req.id_start, req.id_stop)
        id_check = _id_check(req.id_codes, req.id_first[:req.distinct], req.first_empty)
    else:
        item_ids, id_check = [], None
    candidates = Candidates(item_ids, scores, attributes, numeric, None, id_check)
    return _request(req._msg, candidates, issues, deadline_ms)


# --------------------------------------------------------------------------------------- encode


def encode_result(result: RerankResult, items: bool = True) -> pb.RerankResponse:
    """`engine.types.RerankResult` -> `reranker.v1.RerankResponse`; `items` False: without the
    slate's items (server.encode writes them)."""
    resp = pb.RerankResponse(
        policy=result.policy,
        policy_version=result.policy_version,
        policy_digest=result.policy_digest,
        request_id=result.request_id,
        eligible=int(result.eligible),
    )
    if result.propensities is not None:
        pr = result.propensities
        resp.propensities.CopyFrom(pb.Propensities(
            seed=pr.seed, scheme=pr.scheme, joint=pr.joint, cascade=pr.cascade,
            marginal=pr.marginal or (), marginal_samples=pr.marginal_samples))
    if result.experiment is not None:
        e = result.experiment
        resp.experiment.CopyFrom(pb.ExperimentAssignment(
            experiment=e.experiment, variant=e.variant, bucket=e.bucket, holdout=e.holdout,
            layer=e.layer, layer_bucket=max(e.layer_bucket, 0), unit=e.unit))
    add_item = resp.items.add
    for it in result.items if items else ():  # the engine gives Python ints and floats (SlateItem)
        item = add_item(item_id=it.item_id, index=it.index, position=it.position, utility=it.utility)
        if it.contributions:
            item.contributions.update({k: float(v) for k, v in it.contributions.items()})
    d = resp.diagnostics
    d.solver = result.solver
    status = _STATUSES.get(result.status)
    if status is None:
        log.warning("engine returned an unknown slate status", extra={"status": result.status})
        status = pb.SLATE_STATUS_UNSPECIFIED
    d.status = status
    d.objective = float(result.objective)
    if result.bound is not None:
        d.bound = float(result.bound)
    if result.gap is not None:
        d.gap = float(result.gap)
    d.gap_kind = result.gap_kind
    d.bound_method = result.bound_method
    d.elapsed_us.update({k: float(v) for k, v in result.elapsed_us.items()})
    d.budget_ms = float(result.budget_ms)
    d.exact_status = result.exact_status
    for conflict in result.conflicts:
        d.conflicts.add(rules=conflict.rules, description=conflict.description)
    if result.boosts:
        d.boosts.update({k: float(v) for k, v in result.boosts.items()})
    if result.exposure_lp is not None:
        lp = result.exposure_lp
        d.exposure_lp.status = lp.status
        d.exposure_lp.objective = float(lp.objective)
        d.exposure_lp.expected_exposure.update(lp.expected_exposure)
        d.exposure_lp.solve_ms = float(lp.solve_ms)
    add_constraint = d.constraints.add
    for c in result.constraints:
        _encode_constraint(add_constraint(), c)
    return resp


def _encode_constraint(out: pb.ConstraintReport, c: ConstraintReport) -> None:
    out.name = c.name
    out.kind = c.kind
    out.hard = bool(c.hard)
    out.satisfied = bool(c.satisfied)
    out.slack = float(c.slack)
    out.violation = float(c.violation)
    out.penalty = float(c.penalty)
    out.relaxed = bool(c.relaxed)
    out.reason = c.reason
    if c.cost is not None:
        out.cost = float(c.cost)


def encode_policy_info(info: PolicyInfo) -> pb.PolicyInfo:
    return pb.PolicyInfo(
        name=info.name,
        version=info.version,
        source=info.source,
        digest=info.digest,
        slate_size=int(info.slate_size),
        solver_mode=info.solver_mode,
        budget_ms=float(info.budget_ms),
        constraints=list(info.constraints),
        description=info.description,
        file_digest=info.file_digest,
        file_invalid=info.file_invalid,
        file_error=info.file_error,
        last_good=info.last_good,
    )


def encode_issues(issues: list[FieldIssue]) -> list[pb.PolicyIssue]:
    return [pb.PolicyIssue(path=i.path, message=i.message) for i in issues]


# --------------------------------------------------------------------------------------- outcomes

#: Most outcomes in one ReportOutcomes call.
MAX_OUTCOMES = 10_000


def decode_outcomes(request: pb.ReportOutcomesRequest) -> list:
    """`reranker.v1.ReportOutcomesRequest` -> engine.decision_log.OutcomeRecord list; every bad
    entry is named (InvalidRequest, `outcomes[i].field: ...`)."""
    from engine.decision_log import OutcomeRecord

    n = len(request.outcomes)
    if n > MAX_OUTCOMES:
        raise InvalidRequest("outcomes", f"at most {MAX_OUTCOMES:,} per call, got {n:,}")
    issues, records = [], []
    for i, o in enumerate(request.outcomes):
        if not o.request_id:
            issues.append(FieldIssue(f"outcomes[{i}].request_id", "must name the answer's request id, got ''"))
        if o.position < 1:
            issues.append(FieldIssue(f"outcomes[{i}].position", f"must be a 1-based position >= 1, got {o.position}"))
        if not issues:
            records.append(OutcomeRecord(o.request_id, int(o.position), o.item_id, int(o.clicks),
                                         int(o.add_to_carts), int(o.purchases)))
    if issues:
        raise InvalidRequest(issues[:20])
    return records
