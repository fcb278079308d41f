"""The fast Rerank encoder: `engine.types.RerankResult` -> the bytes of a `reranker.v1.RerankResponse`.

`server.convert.encode_result` builds one protobuf SlateItem per slate position (K Python-level
`items.add` calls, then upb serializes them). Here the repeated `items` field is written by one
numba kernel (server._encode_kernels) straight from the slate's columns (ids, indices,
positions, utilities), and the rest of the message (diagnostics, constraints, ...) is built by
`encode_result` without the items and serialized by upb; the two are concatenated. The items
come first, as upb writes them (field 1 before the rest): without contributions the bytes equal
`encode_result(result).SerializeToString()`; with them (explain) the items go through protobuf
(`encode_result`'s own loop), since map entries are rare and upb orders them its own way.

The result parses to a message equal to `encode_result(result)` (tests/test_encode.py checks it
against that reference over random results).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from engine.types import RerankResult
from server import _encode_kernels as _ek
from server import convert
from server._gen.reranker.v1 import reranker_pb2 as pb

_NO_ITEMS: tuple = ()
_REST_FIELDS = tuple(f.name for f in dataclasses.fields(RerankResult) if f.name != "items")
_set = object.__setattr__
_EMPTY = np.frombuffer(b"\0", np.uint8)  # read-only, as the kernel's id bytes are


def warmup() -> None:
    """Run the kernel once, before the server reports SERVING."""
    _ek.warmup()


def without_items(result: RerankResult) -> RerankResult:
    """A copy of `result` whose items are empty: dataclasses.replace without its __init__ (half
    its ~7 us; RerankResult has no __post_init__ to skip)."""
    out = object.__new__(RerankResult)
    for name in _REST_FIELDS:
        _set(out, name, getattr(result, name))
    _set(out, "items", _NO_ITEMS)
    return out


def encode_rest(result: RerankResult) -> pb.RerankResponse:
    """Every field of the response but `items` (convert.encode_result without them: the same
    message as encode_result(without_items(result)), without the copy's ~2.5 us)."""
    return convert.encode_result(result, items=False)


def slate_columns(items) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray] | None:
    """(ids, index int64, position int64, utility float64) of a slate's items; None when some item
    has contributions (explain: encoded through protobuf). A columnar slate
    (`engine.types.SlateItems`) gives its columns without building an item."""
    columns = getattr(items, "columns", None)
    if columns is not None:
        return columns()
    if any(it.contributions for it in items):
        return None
    k = len(items)
    ids = [it.item_id for it in items]
    index = np.fromiter([it.index for it in items], np.int64, k)
    position = np.fromiter([it.position for it in items], np.int64, k)
    utility = np.fromiter([it.utility for it in items], np.float64, k)
    return ids, index, position, utility


def encode_items(ids: list[str], index: np.ndarray, position: np.ndarray, utility: np.ndarray) -> bytes:
    """The `items` field (field 1, repeated SlateItem) of K items, as bytes. Arrays of K entries:
    indices and positions in [0, 2**32) (uint32 on the wire), utilities float64."""
    k = len(ids)
    if not k:
        return b""
    if not (len(index) == len(position) == len(utility) == k):
        raise ValueError(f"encode_items: ids, index, position and utility must have one entry per "
                         f"item, got {k}, {len(index)}, {len(position)}, {len(utility)}")
    joined = "".join(ids)
    if joined.isascii():  # one byte per character: the lengths are the strings'
        id_bytes = joined.encode("ascii")
        lengths = np.fromiter(map(len, ids), np.int64, k)
    else:
        encoded = [s.encode("utf-8") for s in ids]
        id_bytes = b"".join(encoded)
        lengths = np.fromiter(map(len, encoded), np.int64, k)
    if index.dtype != np.int64 or not index.flags.c_contiguous:
        index = np.ascontiguousarray(index, np.int64)
    if position.dtype != np.int64 or not position.flags.c_contiguous:
        position = np.ascontiguousarray(position, np.int64)
    if utility.dtype != np.float64 or not utility.flags.c_contiguous:
        utility = np.ascontiguousarray(utility, np.float64)
    out = np.empty(_ek.items_bound(k, len(id_bytes)), np.uint8)
    end = _ek.write_items(out, 0, np.frombuffer(id_bytes, np.uint8) if id_bytes else _EMPTY, lengths,
                          index, position, utility.view(np.uint64))
    if end < 0:
        p = -end - 1
        raise ValueError(f"encode_items: items[{p}]: index and position must be in [0, 2**32) (uint32 "
                         f"fields), got index {index[p]}, position {position[p]}")
    return out[:end].tobytes()


def encode_parts(result: RerankResult) -> tuple[pb.RerankResponse, bytes]:
    """(the response without items, the items' bytes; b"" when they are in the message: explain)."""
    columns = slate_columns(result.items)
    if columns is None:
        return convert.encode_result(result), b""
    return encode_rest(result), encode_items(*columns)


def join(rest: pb.RerankResponse, items: bytes) -> bytes:
    """The response's bytes: the items field, then the rest (protobuf merges fields in any order)."""
    return items + rest.SerializeToString() if items else rest.SerializeToString()


def encode_result_bytes(result: RerankResult) -> bytes:
    """`RerankResult` -> the bytes of its `reranker.v1.RerankResponse` (see the module's doc)."""
    return join(*encode_parts(result))
