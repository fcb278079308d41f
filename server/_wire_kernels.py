"""Numba kernels that read protobuf wire bytes directly, for the columns where the protobuf
runtime's per-element Python objects dominate decoding (~30 ns per element and per column).

Self-contained: numpy and numba only. Every kernel validates the bytes it reads and reports
malformed input with a negative return value; the caller then falls back to the protobuf
runtime, which has already parsed (and so accepted) the same bytes.
"""

from __future__ import annotations

import numba as nb
import numpy as np

#: Returned when the bytes are not what the kernel can read (the caller falls back).
MALFORMED = -1


@nb.njit(cache=True, nogil=True)
def _varint(buf, i, end):
    """(value, next index); next index -1 when the varint is truncated or longer than 10 bytes."""
    value = np.uint64(0)
    shift = 0
    while i < end and shift < 70:
        byte = buf[i]
        value |= np.uint64(byte & 0x7F) << np.uint64(shift)
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7
    return value, -1


@nb.njit(cache=True, nogil=True)
def uint32_field(buf, field_number, out):
    """Every value of repeated uint32 field `field_number` of the message in `buf` (uint8), in
    order, into `out` (int64, at least as long as the field); returns how many, or MALFORMED.

    Accepts what any conforming parser accepts: packed segments (wire type 2), one or several,
    and unpacked values (wire type 0), mixed; values are truncated to 32 bits as for uint32.
    """
    n = 0
    i = 0
    end = buf.shape[0]
    cap = out.shape[0]
    mask = np.uint64(0xFFFFFFFF)
    while i < end:
        tag, i = _varint(buf, i, end)
        if i < 0:
            return MALFORMED
        wire = tag & np.uint64(7)
        number = tag >> np.uint64(3)
        if wire == 0:
            value, i = _varint(buf, i, end)
            if i < 0:
                return MALFORMED
            if number == field_number:
                if n >= cap:
                    return MALFORMED
                out[n] = np.int64(value & mask)
                n += 1
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i, end)
            if i < 0 or length > np.uint64(end - i):
                return MALFORMED
            stop = i + np.int64(length)
            if number == field_number:
                while i < stop:
                    value, i = _varint(buf, i, stop)
                    if i < 0 or n >= cap:
                        return MALFORMED
                    out[n] = np.int64(value & mask)
                    n += 1
            i = stop
        else:
            return MALFORMED
        if i > end:
            return MALFORMED
    return n


def warmup() -> None:
    """Compile (or load from the cache) every kernel."""
    out = np.empty(4, dtype=np.int64)
    uint32_field(np.frombuffer(b"\x1a\x02\x01\x02\x18\x03", dtype=np.uint8), 3, out)
