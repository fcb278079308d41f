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
    if i < end and buf[i] < 0x80:  # one byte: tags, short lengths, small codes
        return np.uint64(buf[i]), i + 1
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
        field = np.uint64(field_number)
        if wire == 0:
            value, i = _varint(buf, i, end)
            if i < 0:
                return MALFORMED
            if number == field:
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
            if number == field:
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


@nb.njit(cache=True, nogil=True)
def _same(buf, a, b, length):
    for t in range(length):
        if buf[a + t] != buf[b + t]:
            return False
    return True


@nb.njit(cache=True, nogil=True)
def _hash(buf, at, length):
    """64-bit hash of buf[at:at + length], 8 bytes per multiply (a byte-wise FNV is bound by the
    multiply's latency: ~1 ns per byte)."""
    h = np.uint64(14695981039346656037) ^ np.uint64(length)
    p = at
    stop = at + length
    while p < stop:
        if stop - p >= 8:  # written out so that LLVM makes it one 8-byte load
            w = (np.uint64(buf[p]) | np.uint64(buf[p + 1]) << np.uint64(8)
                 | np.uint64(buf[p + 2]) << np.uint64(16) | np.uint64(buf[p + 3]) << np.uint64(24)
                 | np.uint64(buf[p + 4]) << np.uint64(32) | np.uint64(buf[p + 5]) << np.uint64(40)
                 | np.uint64(buf[p + 6]) << np.uint64(48) | np.uint64(buf[p + 7]) << np.uint64(56))
        else:
            w = np.uint64(0)
            for t in range(stop - p):
                w |= np.uint64(buf[p + t]) << np.uint64(8 * t)
        h = (h ^ w) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
        p += 8
    return h


@nb.njit(cache=True, nogil=True)
def string_field_codes(buf, field_number, codes, first, empty_at):
    """Dictionary-encode repeated string field `field_number` of the message in `buf` (uint8):
    codes[i] = the code of its i-th value, codes numbered in order of first appearance, and
    first[k] = the index of the first value with code k. `codes` and `first` must hold exactly
    the field's count of values. empty_at[0] = index of the first empty value (-1: none).
    Returns the number of distinct values, or MALFORMED (bytes unreadable, or a count other
    than len(codes)). Strings are compared as bytes: equal UTF-8 bytes are equal strings.
    """
    cap = codes.shape[0]
    start = np.empty(cap, dtype=np.int64)
    size = np.empty(cap, dtype=np.int64)
    n = 0
    i = 0
    end = buf.shape[0]
    empty_at[0] = -1
    while i < end:
        tag, i = _varint(buf, i, end)
        if i < 0:
            return MALFORMED
        wire = tag & np.uint64(7)
        if wire == 0:
            _, i = _varint(buf, i, end)
            if i < 0:
                return MALFORMED
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i, end)
            if i < 0 or length > np.uint64(end - i):
                return MALFORMED
            if (tag >> np.uint64(3)) == np.uint64(field_number):
                if n >= cap:
                    return MALFORMED
                start[n] = i
                size[n] = np.int64(length)
                if length == 0 and empty_at[0] < 0:
                    empty_at[0] = n
                n += 1
            i += np.int64(length)
        else:
            return MALFORMED
        if i > end:
            return MALFORMED
    if n != cap:
        return MALFORMED
    # open addressing on FNV-1a hashes; a slot holds the code of the value stored there
    slots = 16
    while slots < 2 * n:
        slots *= 2
    table = np.full(slots, -1, dtype=np.int64)
    hashes = np.empty(n, dtype=np.uint64)
    distinct = 0
    for j in range(n):
        h = _hash(buf, start[j], size[j])
        hashes[j] = h
        s = np.int64(h & np.uint64(slots - 1))
        while True:
            code = table[s]
            if code < 0:
                table[s] = distinct
                first[distinct] = j
                codes[j] = distinct
                distinct += 1
                break
            f = first[code]
            if hashes[f] == h and size[f] == size[j] and _same(buf, start[f], start[j], size[j]):
                codes[j] = code
                break
            s = (s + 1) & (slots - 1)
    return distinct


@nb.njit(cache=True, nogil=True)
def submessage(buf, field_number):
    """(offset, length) of length-delimited field `field_number` of the message in `buf` (uint8):
    offset >= 0 when the field occurs exactly once; (-1, 0) when absent; (MALFORMED, 0) when the
    bytes are unreadable or the field occurs more than once (a parser merges the occurrences)."""
    i = 0
    end = buf.shape[0]
    found = -1
    found_len = 0
    field = np.uint64(field_number)
    while i < end:
        tag, i = _varint(buf, i, end)
        if i < 0:
            return MALFORMED, 0
        wire = tag & np.uint64(7)
        if wire == 0:
            _, i = _varint(buf, i, end)
            if i < 0:
                return MALFORMED, 0
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i, end)
            if i < 0 or length > np.uint64(end - i):
                return MALFORMED, 0
            if (tag >> np.uint64(3)) == field:
                if found >= 0:
                    return MALFORMED, 0
                found = i
                found_len = np.int64(length)
            i += np.int64(length)
        else:
            return MALFORMED, 0
        if i > end:
            return MALFORMED, 0
    if found < 0:
        return -1, 0
    return found, found_len


def warmup() -> None:
    """Compile (or load from the cache) every kernel."""
    submessage(np.frombuffer(b"\x08\x01\x2a\x01a", dtype=np.uint8), 5)
    out = np.empty(4, dtype=np.int64)
    uint32_field(np.frombuffer(b"\x1a\x02\x01\x02\x18\x03", dtype=np.uint8), 3, out)
    codes, first, empty = (np.empty(3, dtype=np.int64) for _ in range(3))
    string_field_codes(np.frombuffer(b"\x0a\x01a\x0a\x00\x0a\x01a", dtype=np.uint8), 1, codes,
                       first, empty)
