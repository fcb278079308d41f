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

#: Indices of the `fields` array the Candidates kernels take: the field numbers of the proto,
#: which `server.wire_layout` reads from the generated descriptors (this module imports no
#: protobuf code and hard-codes no field number).
(F_ITEM_IDS, F_SCORES, F_ATTRIBUTES, F_NUMERIC, F_MAP_KEY, F_MAP_VALUE, F_DOUBLE_VALUES,
 F_STRING_CODES, F_STRING_VALUES, F_STRING_DICTIONARY, F_COUNT) = range(11)


@nb.njit(cache=True, nogil=True, inline="always")
def _varint(buf, i, end):
    """(value, next index); next index -1 when the varint is truncated or longer than 10 bytes
    (or i < 0). Bytes are read at unsigned indices: numba then adds no wraparound code."""
    if i < 0:
        return np.uint64(0), -1
    if i < end:
        byte = buf[np.uint64(i)]
        if byte < 0x80:  # one byte: tags, short lengths, small codes
            return np.uint64(byte), i + 1
    value = np.uint64(0)
    shift = 0
    while i < end and shift < 70:
        byte = buf[np.uint64(i)]
        value |= np.uint64(byte & 0x7F) << np.uint64(shift)
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7
    return value, -1


@nb.njit(cache=True, nogil=True, inline="always")
def _next_field(buf, i, stop):
    """The field at buf[i] (i < stop) of the message that ends at `stop`: (number, wire type,
    value, payload start, next index). The payload is buf[payload start:next index] for every
    wire type: a varint (0), 8 or 4 bytes (1, 5), the bytes after the length (2); value is the
    varint (0), the length (2) or 0. Next index < 0 when the field is malformed: truncated,
    running past `stop`, or of wire type 3, 4, 6 or 7 (groups are not read).
    Early returns, wire type 2 first: with one exit and a shared `> stop` check, the field loops
    took ~10-20% longer (map_entries on the benchmark's Candidates)."""
    tag, at = _varint(buf, i, stop)
    number = tag >> np.uint64(3)
    wire = tag & np.uint64(7)
    if at < 0:
        return number, wire, tag, at, -1
    if wire == 2:
        length, at = _varint(buf, at, stop)
        if at < 0 or length > np.uint64(stop - at):
            return number, wire, length, at, -1
        return number, wire, length, at, at + np.int64(length)
    if wire == 0:
        value, i = _varint(buf, at, stop)
        return number, wire, value, at, i
    if wire == 1:
        i = at + 8
    elif wire == 5:
        i = at + 4
    else:
        i = -1
    if i > stop:
        i = -1
    return number, wire, np.uint64(0), at, i


@nb.njit(cache=True, nogil=True)
def _uint32_values(buf, i, stop, field, out):
    """Every value of repeated uint32 field `field` (uint64) of the message in buf[i:stop], in
    order, into `out`: (count, largest value (-1: none)), or (MALFORMED, 0) when the bytes are
    unreadable or `out` too short. Accepts what any conforming parser accepts: packed segments
    (wire type 2), one or several, and unpacked values (wire type 0), mixed; values are truncated
    to 32 bits as for uint32."""
    n = 0
    top = np.int64(-1)
    cap = out.shape[0]
    mask = np.uint64(0xFFFFFFFF)
    while i < stop:
        number, wire, _, p, i = _next_field(buf, i, stop)
        if i < 0:
            return MALFORMED, 0
        if number == field and (wire == 0 or wire == 2):
            while p < i:  # the one value (wire type 0) or the packed segment (2)
                value, p = _varint(buf, p, i)
                if p < 0 or n >= cap:
                    return MALFORMED, 0
                v = np.int64(value & mask)
                out[n] = v
                top = max(top, v)
                n += 1
    return n, top


@nb.njit(cache=True, nogil=True)
def uint32_field(buf, field_number, out):
    """Every value of repeated uint32 field `field_number` of the message in `buf` (uint8), in
    order, into `out` (int64, at least as long as the field); returns how many, or MALFORMED.
    Read as by `_uint32_values`."""
    n, _ = _uint32_values(buf, 0, buf.shape[0], np.uint64(field_number), out)
    return n


@nb.njit(cache=True, nogil=True, inline="always")
def _load8(buf, p):
    """buf[p:p + 8] as a little-endian uint64. Written out so that LLVM makes it one load, with
    unsigned indices so that numba adds no negative-index wraparound to each byte (which kept
    the loads apart: the hash took ~8 ns per 11-byte id instead of ~5)."""
    q = np.uint64(p)
    return (np.uint64(buf[q]) | np.uint64(buf[q + np.uint64(1)]) << np.uint64(8)
            | np.uint64(buf[q + np.uint64(2)]) << np.uint64(16)
            | np.uint64(buf[q + np.uint64(3)]) << np.uint64(24)
            | np.uint64(buf[q + np.uint64(4)]) << np.uint64(32)
            | np.uint64(buf[q + np.uint64(5)]) << np.uint64(40)
            | np.uint64(buf[q + np.uint64(6)]) << np.uint64(48)
            | np.uint64(buf[q + np.uint64(7)]) << np.uint64(56))


@nb.njit(cache=True, nogil=True, inline="always")
def _load4(buf, p):
    q = np.uint64(p)
    return (np.uint64(buf[q]) | np.uint64(buf[q + np.uint64(1)]) << np.uint64(8)
            | np.uint64(buf[q + np.uint64(2)]) << np.uint64(16)
            | np.uint64(buf[q + np.uint64(3)]) << np.uint64(24))


@nb.njit(cache=True, nogil=True, inline="always")
def _same(buf, a, b, length):
    """buf[a:a + length] == buf[b:b + length], 8 (or 4) bytes per comparison: the last word
    overlaps the one before it instead of a byte loop over the tail. Byte by byte, comparing
    a repeated value cost about half of the dictionary encoding of a plain string column (N=1000,
    10-byte values: 22 -> 10 us)."""
    if length >= 8:
        p = 0
        while length - p > 8:
            if _load8(buf, a + p) != _load8(buf, b + p):
                return False
            p += 8
        return _load8(buf, a + length - 8) == _load8(buf, b + length - 8)
    if length >= 4:
        return (_load4(buf, a) == _load4(buf, b)) & (_load4(buf, a + length - 4) == _load4(buf, b + length - 4))
    for t in range(length):
        if buf[a + t] != buf[b + t]:
            return False
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def _hash(buf, at, length):
    """64-bit hash of buf[at:at + length] (at >= 0), 8 bytes per multiply (a byte-wise FNV is
    bound by the multiply's latency: ~1 ns per byte). The last 1-7 bytes are read without a loop
    (overlapping 4-byte loads, or first / middle / last byte), and a final mix brings every
    input bit down to the low bits that pick the hash table slot (ids differing only in a
    word's top byte would otherwise all collide).
    One-to-one on strings of a given length up to 8 bytes, which `_dictionary_encode` relies on
    (it then skips the byte comparison): those bytes are read whole into one word (8: the one
    loop word; 4-7: two overlapping 4-byte loads; 1-3: first, middle and last byte), and every
    step after is invertible (xor with a constant, a multiply by an odd constant, x ^ x >> 32)."""
    k = np.uint64(0x9E3779B97F4A7C15)
    h = np.uint64(14695981039346656037) ^ np.uint64(length)
    p = at
    stop = at + length
    while stop - p >= 8:
        h = (h ^ _load8(buf, p)) * k
        h ^= h >> np.uint64(32)
        p += 8
    rem = stop - p
    if rem >= 4:
        w = _load4(buf, p) | _load4(buf, stop - 4) << np.uint64(32)
    elif rem > 0:
        w = (np.uint64(buf[np.uint64(p)]) | np.uint64(buf[np.uint64(p + (rem >> 1))]) << np.uint64(8)
             | np.uint64(buf[np.uint64(stop - 1)]) << np.uint64(16))
    else:
        w = np.uint64(0)
    h = (h ^ w) * k
    h ^= h >> np.uint64(32)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(32)
    return h


@nb.njit(cache=True, nogil=True)
def _dictionary_encode(buf, start, size, n, codes, first, slots):
    """codes[j] = code of the string buf[start[j]:start[j] + size[j]] (j < n), numbered in order
    of first appearance; first[k] = index of the first string with code k. Returns how many
    distinct. Open addressing on `_hash`, the table kept at load <= 1/4 (few probes, few
    mispredicted branches): it starts with `slots` slots (a power of two) and doubles as distinct
    values arrive, so a column of few distinct values works in a small table (item ids, expected
    distinct, start at 4 n). Each code's hash, offset and length are kept by code (small and hot
    for few values; one indirection less than through `first`: ~8% on a 1000-value column);
    equal hashes are confirmed byte by byte. Every hash is computed first, in a loop of its own:
    ~10% faster than hashing inside the probe loop (and hashing while reading the fields, in the
    same loop, took twice as long)."""
    hashes = np.empty(max(n, 1), dtype=np.uint64)
    for j in range(n):
        hashes[j] = _hash(buf, start[j], size[j])
    mask = slots - 1
    table = np.full(slots, -1, dtype=np.int64)
    code_hash = np.empty(max(n, 1), dtype=np.uint64)
    code_at = np.empty(max(n, 1), dtype=np.int64)
    code_len = np.empty(max(n, 1), dtype=np.int64)
    distinct = 0
    for j in range(n):
        at = start[j]
        length = size[j]
        h = hashes[j]
        s = np.int64(h & np.uint64(mask))
        while True:
            code = table[s]
            if code < 0:
                table[s] = distinct
                first[distinct] = j
                code_hash[distinct] = h
                code_at[distinct] = at
                code_len[distinct] = length
                codes[j] = distinct
                distinct += 1
                if 4 * distinct > slots:  # grow: re-insert the codes so far by their hashes
                    slots *= 2
                    mask = slots - 1
                    table = np.full(slots, -1, dtype=np.int64)
                    for k in range(distinct):
                        s = np.int64(code_hash[k] & np.uint64(mask))
                        while table[s] >= 0:
                            s = (s + 1) & mask
                        table[s] = k
                break
            # up to 8 bytes `_hash` is one-to-one for a given length: equal hashes, equal bytes
            if code_hash[code] == h and code_len[code] == length and (
                    length <= 8 or _same(buf, code_at[code], at, length)):
                codes[j] = code
                break
            s = (s + 1) & mask
    return distinct


@nb.njit(cache=True, nogil=True)
def _table_slots(n):
    """A hash table for n strings expected distinct: the smallest power of two >= 4 n (>= 16)."""
    slots = 16
    while slots < 4 * n:
        slots *= 2
    return slots


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
    field = np.uint64(field_number)
    while i < end:
        number, wire, length, at, i = _next_field(buf, i, end)
        if i < 0:
            return MALFORMED
        if wire == 2 and number == field:
            if n >= cap:
                return MALFORMED
            start[n] = at
            size[n] = np.int64(length)
            if length == 0 and empty_at[0] < 0:
                empty_at[0] = n
            n += 1
    if n != cap:
        return MALFORMED
    return _dictionary_encode(buf, start, size, n, codes, first, _table_slots(n))


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
        number, wire, length, at, i = _next_field(buf, i, end)
        if i < 0:
            return MALFORMED, 0
        if wire == 2 and number == field:
            if found >= 0:
                return MALFORMED, 0
            found = at
            found_len = np.int64(length)
    if found < 0:
        return -1, 0
    return found, found_len

#: Columns of `map_entries`' rows (E_WIDTH of them).
(E_FIELD, E_KEY_AT, E_KEY_LEN, E_VALUE_AT, E_VALUE_LEN, E_DATA, E_COUNT, E_MAX, E_DISTINCT,
 E_TEXT_AT, E_TEXT_LEN, E_WIDTH) = range(12)
#: E_DATA of a column the kernel could not read (the caller decodes it from the parsed message).
UNREAD = -2
#: Initial hash table size for an attribute column's plain values (few distinct, usually).
_VALUE_SLOTS = 64


#: `_double_column`'s offset when `strict` refuses the column (the caller refuses the message).
_REFUSED = -3


@nb.njit(cache=True, nogil=True)
def _double_column(buf, i, stop, values, strict):
    """Packed field `values` (uint64; DoubleColumn.values) of the DoubleColumn in buf[i:stop]: its
    one segment's offset and length, or UNREAD if the values are unpacked or in several segments.
    `strict`: _REFUSED unless every field is a packed segment of `values` of whole doubles, with
    a one-byte tag and a length of at most 5 bytes (see `_strict_field`)."""
    at = -1
    size = 0
    while i < stop:
        if strict and not _strict_tag(buf, i):
            return _REFUSED, 0
        tag_at = i
        number, wire, length, p, i = _next_field(buf, i, stop)
        if strict and (i < 0 or number != values or wire != 2 or p - tag_at > 6
                       or length % np.uint64(8) != np.uint64(0)):
            return _REFUSED, 0
        if i < 0 or number == values and wire == 1:
            return UNREAD, 0
        if number == values and wire == 2:
            if at >= 0:
                return UNREAD, 0
            at = p
            size = np.int64(length)
    return at, size


@nb.njit(cache=True, nogil=True)
def _string_column(buf, i, stop, f_codes, f_values, out, start, size, strict, f_dictionary):
    """The StringColumn in buf[i:stop] in one pass: its codes (read as by `_uint32_values`) into
    `out`, and where its plain values lie (start, size; at most len(out) of them). Returns (codes,
    largest code (-1: none), values, see below), or (MALFORMED, 0, 0, 0) when the bytes are
    unreadable or there are more codes or values than `out` holds.
    `strict`: also MALFORMED unless every field is a value, a dictionary value (its UTF-8 checked;
    the values' is left to the caller) or codes, of their wire types, with one-byte tags and
    lengths of at most 5 bytes, and the column has values or dictionary + codes, not both. The
    4th value returned: where its last dictionary value ends (-1: none; always -1 unless
    `strict`)."""
    n = 0
    nv = 0
    nd = 0
    dictionary_end = -1
    top = np.int64(-1)
    cap = out.shape[0]
    mask = np.uint64(0xFFFFFFFF)
    while i < stop:
        if strict and not _strict_tag(buf, i):
            return MALFORMED, 0, 0, 0
        tag_at = i
        number, wire, length, p, i = _next_field(buf, i, stop)
        if i < 0:
            return MALFORMED, 0, 0, 0
        if strict:
            if wire == 2 and p - tag_at > 6:
                return MALFORMED, 0, 0, 0
            if number == f_dictionary and wire == 2:
                if not _utf8(buf, p, np.int64(length)):
                    return MALFORMED, 0, 0, 0
                nd += 1
                dictionary_end = i
                continue
            if not ((number == f_values and wire == 2) or (number == f_codes and (wire == 0 or wire == 2))):
                return MALFORMED, 0, 0, 0
        if number == f_values and wire == 2:
            if nv >= cap:
                return MALFORMED, 0, 0, 0
            start[nv] = p
            size[nv] = np.int64(length)
            nv += 1
        elif number == f_codes and (wire == 0 or wire == 2):
            while p < i:
                value, p = _varint(buf, p, i)
                if p < 0 or n >= cap:
                    return MALFORMED, 0, 0, 0
                v = np.int64(value & mask)
                out[n] = v
                top = max(top, v)
                n += 1
    if strict and nv > 0 and (n > 0 or nd > 0):
        return MALFORMED, 0, 0, 0
    return n, top, nv, dictionary_end


@nb.njit(cache=True, nogil=True)
def _join(buf, start, size, first, distinct, text, pos):
    """The distinct values buf[start[first[k]]:...] (k < distinct), in code order, copied into
    text[pos:] with a 0 byte between each two: returns the joined length, or -1 when a value holds
    a 0 byte itself (then the caller cannot split them apart) or `text` has no room."""
    p = pos
    room = text.shape[0]
    for k in range(distinct):
        f = first[k]
        if p + size[f] + 1 > room:
            return -1
        p = _copy_joined(buf, start[f], size[f], text, p, k + 1 < distinct)
        if p < 0:
            return -1
    return p - pos


@nb.njit(cache=True, nogil=True, inline="always")
def _copy_joined(buf, a, m, out, p, more):
    """buf[a:a+m] copied to out[p:], then a 0 byte if `more`: the next free index, or -1 when the
    string holds a 0 byte itself."""
    for t in range(m):
        b = buf[np.uint64(a + t)]
        if b == 0:
            return -1
        out[np.uint64(p + t)] = b
    p += m
    if more:
        out[np.uint64(p)] = 0
        p += 1
    return p


@nb.njit(cache=True, nogil=True)
def _candidates(buf, fields, id_start, id_size, entries, codes, text, strict):
    """(item ids, map entries, first empty item id) of the Candidates message in `buf`; see
    `candidates_scan`. Item ids are located (id_start, id_size) only if `id_start` has room
    (more ids than that: MALFORMED); item ids = MALFORMED when the bytes are unreadable.
    `strict`: see `candidates_scan_at`."""
    f_ids = np.uint64(fields[F_ITEM_IDS])
    f_scores = np.uint64(fields[F_SCORES])
    f_attributes = np.uint64(fields[F_ATTRIBUTES])
    f_numeric = np.uint64(fields[F_NUMERIC])
    f_key = np.uint64(fields[F_MAP_KEY])
    f_value = np.uint64(fields[F_MAP_VALUE])
    f_doubles = np.uint64(fields[F_DOUBLE_VALUES])
    f_codes = np.uint64(fields[F_STRING_CODES])
    f_values = np.uint64(fields[F_STRING_VALUES])
    f_dictionary = np.uint64(fields[F_STRING_DICTIONARY])
    i = 0
    end = buf.shape[0]
    n = 0
    rows = 0
    ids = 0
    first_empty = -1
    want_ids = id_start.shape[0]
    cap = codes.shape[1]
    # scratch for one column's plain values (where each lies, the first of each code)
    v_start = np.empty(max(cap, 1), dtype=np.int64)
    v_size = np.empty(max(cap, 1), dtype=np.int64)
    v_first = np.empty(max(cap, 1), dtype=np.int64)
    text_at = 0
    while i < end:
        if strict and not _strict_tag(buf, i):
            return MALFORMED, 0, -1
        tag_at = i
        number, wire, length, at, i = _next_field(buf, i, end)
        if i < 0:
            return MALFORMED, 0, -1
        if wire != 2:
            if strict:
                return MALFORMED, 0, -1
            continue
        if strict and at - tag_at > 6:
            return MALFORMED, 0, -1
        if number == f_ids and want_ids:
            if ids >= want_ids or strict and not _utf8(buf, at, np.int64(length)):
                return MALFORMED, 0, -1
            id_start[ids] = at
            id_size[ids] = np.int64(length)
            if length == 0 and first_empty < 0:
                first_empty = ids
            ids += 1
        elif number == f_scores or number == f_attributes or number == f_numeric:
            if n >= entries.shape[0]:
                return MALFORMED, 0, -1
            key_at = np.int64(-1)
            key_len = np.int64(0)
            value_at = np.int64(-1)
            value_len = np.int64(0)
            twice = False
            p = at
            while p < i:  # the entry in buf[at:i]: its key and its value
                if strict and not _strict_tag(buf, p):
                    return MALFORMED, 0, -1
                tag_at = p
                enumber, ewire, elen, eat, p = _next_field(buf, p, i)
                # Anything but one key and values (wire type 2) is left to the parser: an
                # entry with unknown fields is not even stored by upb (it goes to the
                # Candidates' unknown fields), so which entry wins would be a guess.
                if p < 0 or ewire != np.uint64(2) or (enumber != f_key and enumber != f_value):
                    return MALFORMED, 0, -1
                if strict and eat - tag_at > 6:
                    return MALFORMED, 0, -1
                if enumber == f_key:
                    if key_at >= 0 or strict and not _utf8(buf, eat, np.int64(elen)):
                        return MALFORMED, 0, -1
                    key_at = eat
                    key_len = np.int64(elen)
                else:  # a parser merges values given twice: not read here
                    twice = value_at >= 0
                    value_at = eat
                    value_len = np.int64(elen)
            e = entries[n]
            e[E_FIELD] = np.int64(number)
            e[E_KEY_AT] = key_at
            e[E_KEY_LEN] = key_len
            e[E_VALUE_AT] = value_at
            e[E_VALUE_LEN] = value_len
            e[E_DATA] = -1
            e[E_COUNT] = 0
            e[E_MAX] = -1
            e[E_DISTINCT] = -1
            e[E_TEXT_AT] = -1
            e[E_TEXT_LEN] = -1
            if twice:
                e[E_DATA] = UNREAD
            elif value_at >= 0 and number == f_attributes:
                if rows < codes.shape[0]:
                    count, top, plain, dictionary_end = _string_column(
                        buf, value_at, value_at + value_len, f_codes, f_values, codes[rows], v_start,
                        v_size, strict, f_dictionary)
                    if strict and plain == 0:  # see candidates_scan_at
                        e[E_TEXT_AT] = dictionary_end
                    if count < 0 or count > 0 and plain > 0:  # unreadable, or both encodings
                        if strict:
                            return MALFORMED, 0, -1
                        e[E_DATA] = UNREAD
                    elif count > 0:  # dictionary codes: the row is used
                        e[E_DATA] = rows
                        e[E_COUNT] = count
                        e[E_MAX] = top
                        rows += 1
                    elif plain > 0:  # plain values, dictionary-encoded here
                        distinct = _dictionary_encode(buf, v_start, v_size, plain, codes[rows],
                                                      v_first, _VALUE_SLOTS)
                        e[E_DATA] = rows
                        e[E_COUNT] = plain
                        e[E_MAX] = distinct - 1
                        e[E_DISTINCT] = distinct
                        joined = _join(buf, v_start, v_size, v_first, distinct, text, text_at)
                        if joined >= 0:
                            e[E_TEXT_AT] = text_at
                            e[E_TEXT_LEN] = joined
                            text_at += joined
                        rows += 1
                    # neither: no codes, no values; E_DATA stays -1
                else:
                    e[E_DATA] = UNREAD
            elif value_at >= 0:
                at, size = _double_column(buf, value_at, value_at + value_len, f_doubles, strict)
                if at == _REFUSED:
                    return MALFORMED, 0, -1
                e[E_DATA] = at
                e[E_COUNT] = size
            n += 1
        elif strict:  # embeddings, unknown fields: left to the parser
            return MALFORMED, 0, -1
    return ids, n, first_empty


@nb.njit(cache=True, nogil=True)
def map_entries(buf, fields, entries, codes, text):
    """Every map entry of `scores`, `attributes` and `numeric` of the Candidates message in `buf`
    (uint8), in wire order, one row of `entries` (int64, rows x E_WIDTH) each (`fields`: the field
    numbers, indexed by F_*):
    E_FIELD; the key's offset and length (-1, 0: no key, i.e. ""); the value message's offset and
    length (-1, 0: none); then for a DoubleColumn E_DATA / E_COUNT = offset / length in bytes of
    its packed values (-1: none); for a StringColumn E_DATA = the row of `codes` (int64,
    columns x cap) that holds its codes (-1: neither codes nor values), E_COUNT how many, E_MAX the
    largest, and if the column has plain values instead of codes, they are dictionary-encoded
    there (codes in order of first appearance, as by `string_field_codes`): E_DISTINCT = how
    many distinct (-1: a dictionary-encoded column), and the distinct values, in code order, are
    copied into `text` (uint8; its length bounds the room: len(buf) always suffices) joined by
    0 bytes at text[E_TEXT_AT:E_TEXT_AT + E_TEXT_LEN] (E_TEXT_LEN -1: not copied, as a value
    holds a 0 byte or `text` is too short).
    E_DATA = UNREAD when the kernel cannot read the column (values unpacked or split, a value
    message given twice, more codes or values than `codes` holds, both codes and values, no row
    left). Repeated keys: a parser keeps the last entry (the caller does the same).
    Returns the number of entries, or MALFORMED (bytes unreadable, an entry with a field other
    than key and value, a key given twice in an entry, a key or value of the wrong wire type,
    more entries than `entries` holds)."""
    none = np.empty(0, dtype=np.int64)
    ids, n, _ = _candidates(buf, fields, none, none, entries, codes, text, False)
    return MALFORMED if ids < 0 else n


@nb.njit(cache=True, nogil=True)
def candidates_scan(buf, fields, id_codes, id_first, info, entries, codes, text):
    """One pass over the Candidates message in `buf` (uint8): its item ids dictionary-encoded as
    by `string_field_codes` (into `id_codes` / `id_first`, which must hold exactly the number of
    ids) and its map entries located as by `map_entries` (into `entries` / `codes` / `text`).
    info[0] = index of the first empty id (-1: none), info[1] = number of map entries.
    Returns the number of distinct ids, or MALFORMED (as either kernel)."""
    cap = id_codes.shape[0]
    start = np.empty(max(cap, 1), dtype=np.int64)
    size = np.empty(max(cap, 1), dtype=np.int64)
    return _scan(buf, fields, id_codes, id_first, start, size, info, entries, codes, text, False)


@nb.njit(cache=True, nogil=True)
def candidates_scan_at(buf, fields, base, id_codes, id_first, id_start, id_stop, info, entries, codes,
                       text):
    """`candidates_scan` for the lite parse, also giving where each item id lies: at
    [id_start[j] - base, id_stop[j] - base) of `buf` (`id_start` / `id_stop` int64, as long as
    `id_codes`; `base`: where `buf` starts in the bytes the caller slices). `codes` must have a
    row per attribute entry (`candidates_count`).

    Strict: MALFORMED unless the message is in the layout it reads alone, checked as strictly as
    a parser checks it: every tag one byte (field numbers 1-15), every length at most 5 bytes;
    item ids and map entries only (no embeddings, no unknown field); entries of one key and
    values (wire type 2); DoubleColumns of packed values only, whole doubles; StringColumns of
    plain values, or of dictionary and codes, not both, nothing else, and whole varints; every
    item id, key and dictionary value valid UTF-8. Not checked: the plain values' UTF-8, which
    the caller checks on their distinct ones (E_TEXT_*). A StringColumn without plain values gets
    E_TEXT_AT = where its last dictionary value ends (-1: none), so that buf[E_VALUE_AT:E_TEXT_AT]
    holds its whole dictionary. With that check, it accepts no message a
    parser refuses. Left UNREAD as by `map_entries` (the caller then parses): doubles in several
    segments, a map value given twice, more codes or values than ids."""
    ids = _scan(buf, fields, id_codes, id_first, id_start, id_stop, info, entries, codes, text, True)
    if ids >= 0:
        for j in range(id_codes.shape[0]):
            id_start[j] += base
            id_stop[j] += id_start[j]
    return ids


@nb.njit(cache=True, nogil=True)
def _scan(buf, fields, id_codes, id_first, start, size, info, entries, codes, text, strict):
    cap = id_codes.shape[0]
    ids, n, first_empty = _candidates(buf, fields, start, size, entries, codes, text, strict)
    if ids != cap:
        return MALFORMED
    info[0] = first_empty
    info[1] = n
    return _dictionary_encode(buf, start, size, cap, id_codes, id_first, _table_slots(cap))


@nb.njit(cache=True, nogil=True)
def gather_doubles(buf, entries, count, f_attributes, out):
    """The packed values of every DoubleColumn among the first `count` rows of `entries` (as
    `map_entries` gives them: E_DATA / E_COUNT = offset / length in bytes in `buf`), copied one
    after the other into `out` (uint64: the bits of little-endian doubles; room for len(buf) / 8);
    each such row's E_MAX is set to where its values start in `out`. Rows of field `f_attributes`
    and rows without values (E_DATA < 0) are skipped. Returns how many values were copied. One
    call instead of a numpy array per column (~1.2 us each)."""
    k = 0
    for e in range(count):
        row = entries[e]
        at = row[E_DATA]
        if row[E_FIELD] == f_attributes or at < 0:
            continue
        m = row[E_COUNT] // 8
        for j in range(m):
            out[k + j] = _load8(buf, at + 8 * j)
        row[E_MAX] = k
        k += m
    return k


@nb.njit(cache=True, nogil=True)
def join_strings(buf, start, stop, out):
    """The strings buf[start[j]:stop[j]] (j < len(start)) copied into `out` (uint8, room for all
    of them and a byte between each two) with a 0 byte between each two: returns the joined
    length, or -1 when a string holds a 0 byte itself (the caller cannot split them apart)."""
    p = 0
    n = start.shape[0]
    for j in range(n):
        p = _copy_joined(buf, start[j], stop[j] - start[j], out, p, j + 1 < n)
        if p < 0:
            return -1
    return p


# ------------------------------------------------------------------ what a parser would accept

@nb.njit(cache=True, nogil=True, inline="always")
def _continuation(buf, p):
    b = buf[np.uint64(p)]
    return b >= 0x80 and b < 0xC0


@nb.njit(cache=True, nogil=True)
def utf8_valid(buf, at, length):
    """buf[at:at + length] is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates,
    nothing above U+10FFFF), as protobuf parsers require of `string` fields."""
    return _utf8(buf, at, length)


@nb.njit(cache=True, nogil=True, inline="always")
def _utf8(buf, at, length):
    """`utf8_valid`, inlined in the field loops. ASCII (the usual ids and values) is found with a
    few word loads, as `_hash` reads the bytes (the last 1-7 by overlapping loads, no byte loop):
    byte by byte, checking the benchmark's plain request cost ~25 us instead of ~N."""
    stop = at + length
    high = np.uint64(0x8080808080808080)
    if length >= 8:
        bits = _load8(buf, stop - 8)
        p = at
        while stop - p > 8:
            bits |= _load8(buf, p)
            p += 8
    elif length >= 4:
        bits = _load4(buf, at) | _load4(buf, stop - 4)
    elif length > 0:
        bits = (np.uint64(buf[np.uint64(at)]) | np.uint64(buf[np.uint64(at + (length >> 1))])
                | np.uint64(buf[np.uint64(stop - 1)]))
    else:
        return True
    if (bits & high) == np.uint64(0):
        return True
    p = at
    while p < stop:
        b = buf[np.uint64(p)]
        if b < 0x80:
            p += 1
            continue
        if b < 0xC2:  # a continuation byte first, or an overlong 2-byte form
            return False
        if b < 0xE0:
            if p + 1 >= stop or not _continuation(buf, p + 1):
                return False
            p += 2
            continue
        if b < 0xF0:
            if p + 2 >= stop or not (_continuation(buf, p + 1) and _continuation(buf, p + 2)):
                return False
            b1 = buf[np.uint64(p + 1)]
            if (b == 0xE0 and b1 < 0xA0) or (b == 0xED and b1 >= 0xA0):  # overlong, surrogate
                return False
            p += 3
            continue
        if b < 0xF5:
            if p + 3 >= stop or not (_continuation(buf, p + 1) and _continuation(buf, p + 2)
                                     and _continuation(buf, p + 3)):
                return False
            b1 = buf[np.uint64(p + 1)]
            if (b == 0xF0 and b1 < 0x90) or (b == 0xF4 and b1 >= 0x90):  # overlong, > U+10FFFF
                return False
            p += 4
            continue
        return False
    return True


@nb.njit(cache=True, nogil=True, inline="always")
def _strict_tag(buf, i):
    """The tag at buf[i] is one byte: field numbers 1-15 (a parser refuses tags of more than 5
    bytes, which `_next_field` reads; no field the kernels read needs more than one)."""
    return buf[np.uint64(i)] < 0x80


@nb.njit(cache=True, nogil=True)
def candidates_count(buf, fields, counts):
    """counts = (item ids, map entries, attribute entries) of the Candidates message in `buf`
    (uint8), from its top-level fields alone (the room `candidates_scan_at` needs). Returns 0,
    or MALFORMED when those fields are unreadable."""
    f_ids = np.uint64(fields[F_ITEM_IDS])
    f_scores = np.uint64(fields[F_SCORES])
    f_attributes = np.uint64(fields[F_ATTRIBUTES])
    f_numeric = np.uint64(fields[F_NUMERIC])
    ids = 0
    entries = 0
    attributes = 0
    i = 0
    end = buf.shape[0]
    while i < end:
        number, wire, _, _, i = _next_field(buf, i, end)
        if i < 0:
            return MALFORMED
        if wire != 2:
            continue
        if number == f_ids:
            ids += 1
        elif number == f_attributes:
            entries += 1
            attributes += 1
        elif number == f_scores or number == f_numeric:
            entries += 1
    counts[0] = ids
    counts[1] = entries
    counts[2] = attributes
    return 0


def warmup(fields) -> None:
    """Compile (or load from the cache) every kernel; `fields` as for `candidates_scan` (the
    bytes below are only typed inputs: what the kernels find in them does not matter)."""
    submessage(np.frombuffer(b"\x08\x01\x2a\x01a", dtype=np.uint8), 5)
    entries = np.frombuffer(b"\x1a\x08\x0a\x01a\x12\x03\x1a\x01\x01", dtype=np.uint8)
    text = np.empty(16, dtype=np.uint8)
    map_entries(entries, fields, np.empty((2, E_WIDTH), dtype=np.int64),
                np.empty((1, 2), dtype=np.int64), text)
    out = np.empty(4, dtype=np.int64)
    uint32_field(np.frombuffer(b"\x1a\x02\x01\x02\x18\x03", dtype=np.uint8), 3, out)
    codes, first, empty = (np.empty(3, dtype=np.int64) for _ in range(3))
    string_field_codes(np.frombuffer(b"\x0a\x01a\x0a\x00\x0a\x01a", dtype=np.uint8), 1, codes,
                       first, empty)
    cands = np.frombuffer(b"\x0a\x01a" + entries.tobytes(), dtype=np.uint8)
    candidates_scan(cands, fields, codes[:1], first[:1], np.empty(2, dtype=np.int64),
                    np.empty((2, E_WIDTH), dtype=np.int64), np.empty((1, 1), dtype=np.int64), text)
    candidates_scan_at(cands, fields, 0, codes[:1], first[:1], empty[:1], out[:1], np.empty(2, dtype=np.int64),
                       np.empty((2, E_WIDTH), dtype=np.int64), np.empty((1, 1), dtype=np.int64), text)
    candidates_count(cands, fields, out[:3])
    join_strings(cands, out[:1] * 0, out[:1] * 0 + 1, text)
    gather_doubles(cands, np.zeros((1, E_WIDTH), dtype=np.int64), 1, 3, np.empty(4, dtype=np.uint64))
    utf8_valid(cands, 0, 3)
