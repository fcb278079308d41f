"""Numba kernel of the fast Rerank encoder (server.encode): the response's repeated `items`
field (reranker.v1.SlateItem, field 1 of RerankResponse) written straight from arrays.

Imports only numpy and numba; the kernel assumes valid input (server.encode checks and coerces).
Fields are written as upb writes them (field-number order, proto3 defaults left out: an empty
id, index 0, position 0 and a utility whose bits are all zero; -0.0 and NaN are written), so
that the bytes equal upb's serialization of the same items without contributions.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

# id bytes come from np.frombuffer over a bytes object: a read-only array
_RO_BYTES = types.Array(types.uint8, 1, "C", readonly=True)

_ITEM_TAG = 0x0A  # RerankResponse.items: field 1, length-delimited
_ID_TAG = 0x0A  # SlateItem.item_id: field 1, length-delimited
_INDEX_TAG = 0x10  # SlateItem.index: field 2, varint
_POSITION_TAG = 0x18  # SlateItem.position: field 3, varint
_UTILITY_TAG = 0x21  # SlateItem.utility: field 4, fixed64
# uint64 constants: numba turns uint64-with-int64 arithmetic into float64
_U7, _U127, _U128, _U255 = np.uint64(7), np.uint64(0x7F), np.uint64(0x80), np.uint64(0xFF)
_UINT32_END = 1 << 32


@njit("int64(uint64)", cache=True, nogil=True)
def _varint_size(v):
    n = 1
    while v >= _U128:
        v >>= _U7
        n += 1
    return n


@njit("int64(uint8[::1], int64, uint64)", cache=True, nogil=True)
def _put_varint(out, at, v):
    while v >= _U128:
        out[at] = np.uint8((v & _U127) | _U128)
        v >>= _U7
        at += 1
    out[at] = np.uint8(v)
    return at + 1


@njit(types.int64(types.uint8[::1], types.int64, _RO_BYTES, types.int64[::1], types.int64[::1],
                  types.int64[::1], types.uint64[::1]), cache=True, nogil=True)
def write_items(out, at, id_bytes, id_lengths, index, position, utility_bits):
    """Write one `items` entry per slate position into `out` from `at`; returns the end, or
    -(p + 1) when item p's index or position is outside [0, 2**32) (uint32 fields).
    id_bytes: the items' UTF-8 ids one after the other, id_lengths[p] bytes each; utility_bits:
    the utilities' float64 bits. `out` must hold items_bound(K, len(id_bytes)) bytes from `at`."""
    start = 0
    for p in range(index.shape[0]):
        if index[p] < 0 or index[p] >= _UINT32_END or position[p] < 0 or position[p] >= _UINT32_END:
            return -(p + 1)
        id_len = id_lengths[p]
        idx = np.uint64(index[p])
        pos = np.uint64(position[p])
        bits = utility_bits[p]
        body = 0
        if id_len > 0:
            body += 1 + _varint_size(np.uint64(id_len)) + id_len
        if idx != 0:
            body += 1 + _varint_size(idx)
        if pos != 0:
            body += 1 + _varint_size(pos)
        if bits != 0:
            body += 9
        out[at] = _ITEM_TAG
        at = _put_varint(out, at + 1, np.uint64(body))
        if id_len > 0:
            out[at] = _ID_TAG
            at = _put_varint(out, at + 1, np.uint64(id_len))
            for j in range(id_len):
                out[at + j] = id_bytes[start + j]
            at += id_len
            start += id_len
        if idx != 0:
            out[at] = _INDEX_TAG
            at = _put_varint(out, at + 1, idx)
        if pos != 0:
            out[at] = _POSITION_TAG
            at = _put_varint(out, at + 1, pos)
        if bits != 0:
            out[at] = _UTILITY_TAG
            for j in range(8):  # little-endian fixed64
                out[at + 1 + j] = np.uint8((bits >> np.uint64(8 * j)) & _U255)
            at += 9
    return at


def items_bound(k: int, id_bytes: int) -> int:
    """An upper bound on the bytes write_items writes for k items with id_bytes bytes of ids."""
    # per item: tag + length (<= 5) + id tag + id length (<= 5) + index (<= 11) + position (<= 11) + 9
    return 42 * k + id_bytes


def warmup() -> None:
    """Run the kernel once (its signature compiled it on import; cache=True keeps it on disk)."""
    out = np.zeros(items_bound(1, 1), np.uint8)
    write_items(out, 0, np.frombuffer(b"a", np.uint8), np.array([1], np.int64),
                np.array([1], np.int64), np.array([1], np.int64), np.array([1], np.uint64))
