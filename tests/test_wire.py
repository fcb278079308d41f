"""The wire kernels (server._wire_kernels) against the protobuf runtime, their reference twin:
whatever the runtime parses, the kernel either reads the same values or reports MALFORMED."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from google.protobuf.message import DecodeError

from server import _wire_kernels as wk
from server import convert
from server._gen.reranker.v1 import reranker_pb2 as pb

U32 = st.integers(min_value=0, max_value=2**32 - 1)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _packed(field: int, values: list[int]) -> bytes:
    body = b"".join(_varint(v) for v in values)
    return _varint(field << 3 | 2) + _varint(len(body)) + body


def _unpacked(field: int, values: list[int]) -> bytes:
    return b"".join(_varint(field << 3) + _varint(v) for v in values)


def _string(field: int, text: str) -> bytes:
    raw = text.encode()
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def _kernel(buf: bytes, cap: int) -> tuple[int, list[int]]:
    out = np.full(cap, -7, dtype=np.int64)
    n = wk.uint32_field(np.frombuffer(buf, dtype=np.uint8), 3, out)
    return n, out[: max(n, 0)].tolist()


# one segment of a StringColumn: packed or unpacked codes, or a dictionary / values string
_SEGMENT = st.one_of(
    st.lists(U32, max_size=20).map(lambda v: ("codes", v, _packed(3, v))),
    st.lists(U32, min_size=1, max_size=5).map(lambda v: ("codes", v, _unpacked(3, v))),
    st.text(max_size=8).map(lambda t: ("other", [], _string(2, t))),
    st.text(max_size=8).map(lambda t: ("other", [], _string(1, t))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_SEGMENT, max_size=6))
def test_codes_match_the_protobuf_runtime_in_every_encoding(segments):
    buf = b"".join(seg for _, _, seg in segments)
    expected = [v for kind, values, _ in segments if kind == "codes" for v in values]
    assert list(pb.StringColumn.FromString(buf).codes) == expected
    n, got = _kernel(buf, len(expected))
    assert n == len(expected) and got == expected


def test_values_wider_than_32_bits_are_truncated_like_the_runtime():
    buf = _unpacked(3, [2**40 + 5]) + _packed(3, [2**33 + 1, 7])
    parsed = list(pb.StringColumn.FromString(buf).codes)
    assert _kernel(buf, 3) == (3, parsed)


def test_too_many_values_for_the_output_is_malformed_not_an_overrun():
    assert _kernel(_packed(3, [1, 2, 3]), 2)[0] == wk.MALFORMED


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=40))
def test_arbitrary_bytes_never_crash_and_never_disagree_with_the_runtime(buf, cap):
    n, got = _kernel(buf, cap)
    try:
        parsed = list(pb.StringColumn.FromString(buf).codes)
    except DecodeError:
        return  # the server never gets here: the request failed to parse
    if n == len(parsed):  # the decoder uses the kernel's answer only when the count agrees
        assert got == parsed


def test_truncated_bytes_are_malformed():
    full = _packed(3, [300, 5])
    for cut in range(1, len(full)):
        n, _ = _kernel(full[:cut], 4)
        assert n == wk.MALFORMED or n < 2


def test_decode_uses_the_kernel_result_for_dictionary_columns():
    col = pb.StringColumn(dictionary=["a", "b", "c"], codes=[2, 0, 1, 1, 300])
    got = convert._uint32s(col, col.codes, 3)
    assert got.dtype == np.int64 and got.tolist() == [2, 0, 1, 1, 300]
    assert convert._uint32s(pb.StringColumn(), pb.StringColumn().codes, 3).shape == (0,)


def _strings_kernel(buf: bytes, field: int, n: int):
    codes, first = np.full(n, -7, dtype=np.int64), np.full(n, -7, dtype=np.int64)
    empty_at = np.empty(1, dtype=np.int64)
    d = wk.string_field_codes(np.frombuffer(buf, dtype=np.uint8), field, codes, first, empty_at)
    return d, codes.tolist(), first[: max(d, 0)].tolist(), int(empty_at[0])


def _twin(values: list[str]):
    """The reference: dictionary in order of first appearance, by plain Python."""
    index: dict[str, int] = {}
    first: list[int] = []
    codes = []
    for j, v in enumerate(values):
        if v not in index:
            index[v] = len(index)
            first.append(j)
        codes.append(index[v])
    empty = values.index("") if "" in values else -1
    return len(index), codes, first, empty


# few distinct characters, so that values repeat; long ones cross the 8-byte hashing blocks
_VALUES = st.lists(st.text(alphabet="ab\u00e9\U0001f600", max_size=20), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_VALUES, st.lists(U32, max_size=5))
def test_string_codes_match_a_python_dictionary_encoding(values, other):
    col = pb.StringColumn(values=values)
    buf = _packed(3, other) + col.SerializeToString() + _string(2, "not a value")
    assert _strings_kernel(buf, 1, len(values)) == _twin(values)


def test_string_codes_need_the_exact_count():
    buf = pb.StringColumn(values=["a", "b"]).SerializeToString()
    assert _strings_kernel(buf, 1, 3)[0] == wk.MALFORMED
    assert _strings_kernel(buf, 1, 1)[0] == wk.MALFORMED


def test_ids_that_collide_in_a_weak_hash_are_still_told_apart():
    # same length, same first and last 8 bytes: only the middle differs
    values = [f"prefix-x{j:06d}y-suffix" for j in range(2000)] + ["prefix-x000007y-suffix"]
    buf = pb.StringColumn(values=values).SerializeToString()
    assert _strings_kernel(buf, 1, len(values)) == _twin(values)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=10))
def test_string_codes_on_arbitrary_bytes_never_crash_or_disagree(buf, n):
    d, codes, first, empty = _strings_kernel(buf, 1, n)
    try:
        values = list(pb.StringColumn.FromString(buf).values)
    except DecodeError:
        return
    if d >= 0:
        assert len(values) == n and (d, codes, first, empty) == _twin(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab", max_size=3), min_size=1, max_size=30))
def test_decoded_candidates_agree_with_the_plain_path(ids):
    from engine.validate import check_item_ids

    msg = pb.Candidates(item_ids=ids)
    msg.attributes["a"].values.extend(ids)
    c = convert._decode_candidates(msg, [])
    assert list(c.item_ids) == ids and len(c.item_ids) == len(ids)
    assert c.id_check == check_item_ids(ids)
    assert c.attributes["a"].values() == ids
    assert c.attributes["a"].dictionary == tuple(dict.fromkeys(ids))
    if ids[-1] in ids:
        assert c.item_ids.index(ids[-1]) == ids.index(ids[-1])
