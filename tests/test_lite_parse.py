"""The Rerank request's lite parse (`convert.parse_rerank`: upb for the top level, the wire
kernels alone for the Candidates) against the full parse (`RerankRequest.FromString` +
`decode_request`): the same engine request for every valid request, the same DecodeError or the
same issues for every invalid one, on random requests and random damage to them.

Issues of different columns are compared as sets: the full path lists them in upb's map order,
which is its hash table's and differs between processes."""

from __future__ import annotations

import random

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidRequest
from server import _wire_kernels as wk
from server import convert
from server._gen.reranker.v1 import reranker_pb2 as pb
from server.wire_layout import KERNEL_FIELDS as FIELDS
from tests.test_wire import _request_wire, _varint


def _outcome(raw: bytes, lite: bool):
    """What the server makes of `raw`: ("decode", message), ("invalid", issues) or the request."""
    try:
        msg = convert.parse_rerank(raw) if lite else pb.RerankRequest.FromString(raw)
    except DecodeError as exc:
        return "decode", str(exc)
    try:
        return convert.decode_request(msg, raw)
    except InvalidRequest as exc:
        return "invalid", sorted((i.path, i.message) for i in exc.issues)


def _assert_same(raw: bytes) -> bool:
    """Lite and full outcomes of `raw` are the same; returns whether the lite path read it alone."""
    full = _outcome(raw, lite=False)
    got = _outcome(raw, lite=True)
    if isinstance(full, tuple):
        assert got == full
        return False
    assert not isinstance(got, tuple), got
    for field in ("policy", "slate_size", "budget_ms", "solver", "objective_weights", "targets", "explain",
                  "request_id", "user_id", "deadline_ms"):
        assert getattr(got, field) == getattr(full, field), field
    a, b = got.candidates, full.candidates
    assert len(a.item_ids) == len(b.item_ids) and list(a.item_ids) == list(b.item_ids)
    assert [a.item_ids[j] for j in range(len(a.item_ids))] == list(b.item_ids)
    assert a.id_check == b.id_check
    for kind in ("scores", "numeric"):
        x, y = getattr(a, kind), getattr(b, kind)
        assert set(x) == set(y)
        for key in y:
            assert x[key].dtype == y[key].dtype == np.float64 and x[key].flags.writeable
            np.testing.assert_array_equal(x[key], y[key])
    assert set(a.attributes) == set(b.attributes)
    for key, attr in b.attributes.items():
        mine = a.attributes[key]
        assert mine.dictionary == attr.dictionary and mine.codes.dtype == attr.codes.dtype
        np.testing.assert_array_equal(mine.codes, attr.codes)
    assert (a.embeddings is None) == (b.embeddings is None)
    if b.embeddings is not None:
        np.testing.assert_array_equal(a.embeddings, b.embeddings)
    return type(convert.parse_rerank(raw)) is convert.LiteRerankRequest


# ------------------------------------------------------------------------- random requests


@settings(max_examples=600, deadline=None)
@given(_request_wire())
def test_lite_parse_equals_the_full_parse_on_random_wire_layouts(raw):
    _assert_same(raw)


MARK = "~~"  # two bytes in every string below, replaced on the wire by other two bytes
TWO_BYTES = [b"\xc3\x28", b"\xc0\x80", b"\x80\x80", b"\xe2\x82", b"\xed\xa0", b"\xf4\x90", b"\xff\xfe",
             b"\xc3\xa9", b"\x00\x00", b"\x00a", b"aa", b"\xc2\x80"]


def _random_request(rng: random.Random) -> pb.RerankRequest:
    """Dictionary and plain columns, missing and extra ones, repeats, codes out of range, empty
    candidates, embeddings now and then; every kind of string holds MARK somewhere."""
    n = rng.choice([0, 1, 2, 5, 17, 40])
    req = pb.RerankRequest(policy=rng.choice(["home_feed", "p" + MARK]), slate_size=rng.choice([0, 3, 9]),
                           request_id=rng.choice(["", "r" + MARK]), explain=rng.random() < 0.3,
                           solver=rng.choice([0, 1, 2, 3, 3, 9]))
    req.objective_weights["w" + rng.choice(["", MARK])] = 0.5
    c = req.candidates
    ids = [f"i{j}" + (MARK if rng.random() < 0.2 else "") for j in range(n)]
    if n and rng.random() < 0.2:
        ids[rng.randrange(n)] = ids[0]  # a repeat
    if n and rng.random() < 0.1:
        ids[rng.randrange(n)] = ""
    c.item_ids.extend(ids)
    for kind in ("scores", "numeric"):
        for k in range(rng.choice([0, 1, 2, 3])):
            m = rng.choice([n, n, n, max(n - 1, 0), n + 1])
            c.__getattribute__(kind)[rng.choice(["s", "t", "s" + MARK, ""]) + str(k)].values.extend(
                rng.uniform(-1, 1) for _ in range(m))
    for k in range(rng.choice([0, 1, 2, 3, 4])):
        col = c.attributes[rng.choice(["a", "b", "c" + MARK, ""]) + str(k % 3)]
        kind = rng.choice(["dictionary", "dictionary", "plain", "plain", "both", "dictionary_only", "empty"])
        values = [rng.choice(["x", "y", "zz" + MARK, "é", "long-value-" + MARK]) for _ in range(rng.choice([n, n, n + 1]))]
        if kind in ("plain", "both"):
            col.values.extend(values)
        if kind in ("dictionary", "both", "dictionary_only"):
            dictionary = list(dict.fromkeys(values)) or ["x"]
            if rng.random() < 0.15:
                dictionary.append(dictionary[0])  # a repeated dictionary value
            col.dictionary.extend(dictionary)
            if kind != "dictionary_only":
                top = len(dictionary) + rng.choice([0, 0, 0, 0, 1, 1000])
                col.codes.extend(rng.randrange(top) for _ in range(rng.choice([n, n, n + 2])))
    if rng.random() < 0.1:
        dim = rng.choice([0, 1, 2])
        c.embeddings.dim = dim
        c.embeddings.values.extend(float(v) for v in range(n * dim + rng.choice([0, 0, 1])))
    return req


def _damaged(raw: bytes, rng: random.Random) -> bytes:
    how = rng.random()
    if how < 0.45 and MARK.encode() in raw:  # one string's MARK replaced (valid or not UTF-8)
        places = [i for i in range(len(raw) - 1) if raw[i:i + 2] == MARK.encode()]
        at = rng.choice(places)
        return raw[:at] + rng.choice(TWO_BYTES) + raw[at + 2:]
    if how < 0.6:
        return raw[:rng.randrange(len(raw) + 1)]  # truncated
    if how < 0.8 and raw:
        at = rng.randrange(len(raw))
        return raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1:]  # one byte changed
    if how < 0.9:
        return raw + rng.choice([b"\x2a\x00", b"\x78\x01", b"\x0a\x00", b"\x80\x01\x00"])  # fields after
    return raw


def test_lite_parse_equals_the_full_parse_on_random_requests_and_damage():
    rng = random.Random(16)
    lite = 0
    for _ in range(3000):
        raw = _random_request(rng).SerializeToString()
        lite += _assert_same(raw if rng.random() < 0.3 else _damaged(raw, rng))
    assert lite > 300  # the lite path is taken, not only the fall-back


def test_damage_inside_the_candidates_message():
    """Every byte of a small request's Candidates set to a few values, one at a time."""
    rng = random.Random(5)
    req = _random_request(rng)
    while not (len(req.candidates.item_ids) == 5 and req.candidates.attributes and not req.candidates.HasField("embeddings")):
        req = _random_request(rng)
    raw = req.SerializeToString()
    for at in range(len(raw)):
        for byte in (0x00, 0x01, 0x0a, 0x7f, 0x80, 0xc3, 0xff, raw[at] ^ 0x08):
            _assert_same(raw[:at] + bytes([byte]) + raw[at + 1:])


def test_the_benchmark_requests_take_the_lite_path():
    from benchmarks.bench_grpc import make_request

    for encoding in ("dictionary", "plain"):
        for n in (0, 1, 200, 1000):
            raw = make_request(encoding, n=n).SerializeToString()
            assert _assert_same(raw), (encoding, n)


def test_what_the_servicer_reads_of_a_lite_request():
    from benchmarks.bench_grpc import make_request

    msg = make_request("plain", n=30)
    lite = convert.parse_rerank(msg.SerializeToString())
    assert type(lite) is convert.LiteRerankRequest
    assert (lite.policy, lite.slate_size, lite.request_id, lite.solver, lite.explain) == (
        msg.policy, msg.slate_size, msg.request_id, msg.solver, msg.explain)
    assert convert.candidates_shape(lite) == convert.candidates_shape(msg) == (30, 0)
    assert lite.candidates == msg.candidates  # parsed when asked
    ids = convert.decode_request(lite).candidates.item_ids
    assert ids[3:7] == list(msg.candidates.item_ids[3:7]) and ids[-1] == msg.candidates.item_ids[-1]
    assert ids.index(msg.candidates.item_ids[9]) == 9 and msg.candidates.item_ids[2] in ids
    with pytest.raises(IndexError):
        ids[30]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=40, unique=True), st.data())
def test_the_slates_ids_taken_at_once_are_the_ids_read_one_by_one(names, data):
    """WireIds.take / ItemIds.take (engine.report.slate_items reads the slate's ids through them)
    against indexing, before and after the whole list is decoded, and against the request."""
    msg = pb.RerankRequest(policy="p", slate_size=3)
    msg.candidates.item_ids.extend(names)
    msg.candidates.scores["s"].values.extend(range(len(names)))
    full = convert.decode_request(pb.RerankRequest.FromString(msg.SerializeToString())).candidates.item_ids
    lite_req = convert.parse_rerank(msg.SerializeToString())
    assert type(lite_req) is convert.LiteRerankRequest
    lite = convert.decode_request(lite_req).candidates.item_ids
    rows = np.asarray(data.draw(st.lists(st.integers(0, len(names) - 1), max_size=12)), dtype=np.int64)
    want = [names[r] for r in rows.tolist()]
    assert isinstance(full, convert.ItemIds) and isinstance(lite, convert.WireIds)
    assert full.take(rows) == lite.take(rows) == [lite[r] for r in rows.tolist()] == want
    list(lite)  # decodes every id: take reads the list from now on
    assert lite.take(rows) == want


# ------------------------------------------------------------------------- the kernels alone


def _utf8_reference(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_UTF8_PIECES = st.sampled_from([b"a", b"abcdefgh", b"\x00", b"\x7f", b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf",
                                b"\xc2\x80", b"\xdf\xbf", b"\xe0\x9f\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf",
                                b"\xed\xa0\x80", b"\xef\xbf\xbf", b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80\x80",
                                b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xe2\x82",
                                b"\xf0\x9f\x98"])


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.lists(_UTF8_PIECES, max_size=12).map(b"".join),
                 st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass"))),
       st.integers(min_value=0, max_value=3))
def test_utf8_kernel_equals_python(data, pad):
    buf = np.frombuffer(b"\x80" * pad + data + b"\x80" * pad, dtype=np.uint8)  # neighbours never read
    assert wk.utf8_valid(buf, pad, len(data)) == _utf8_reference(data)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.binary(max_size=80), _request_wire().map(lambda raw: pb.RerankRequest.FromString(raw)
                                                              .candidates.SerializeToString())),
       st.integers(min_value=0, max_value=79), st.integers(min_value=0, max_value=255))
def test_the_strict_scan_accepts_only_what_upb_accepts(buf, at, byte):
    """Arbitrary bytes, and real Candidates with one byte changed."""
    if buf and at < len(buf) and byte % 2:
        buf = buf[:at] + bytes([byte]) + buf[at + 1:]
    view = np.frombuffer(buf, dtype=np.uint8)
    counts = np.full(3, -7, dtype=np.int64)
    if wk.candidates_count(view, FIELDS, counts) < 0:
        return
    n, n_entries, n_attributes = counts.tolist()
    ids = np.empty((4, n), dtype=np.int64)
    entries = np.empty((n_entries, wk.E_WIDTH), dtype=np.int64)
    distinct = wk.candidates_scan_at(view, FIELDS, 0, ids[0], ids[1], ids[2], ids[3], np.empty(2, dtype=np.int64),
                                     entries, np.empty((n_attributes, n), dtype=np.int64),
                                     np.empty(len(buf), dtype=np.uint8))
    if distinct < 0:
        return
    raw = b"\x2a" + _varint(len(buf)) + buf  # a request of these Candidates
    try:
        c = pb.Candidates.FromString(buf)
    except DecodeError:  # the kernel leaves plain values' UTF-8 to the lite parse, which refuses it
        assert convert._parse_lite(raw) is None
        return
    assert n == len(c.item_ids) and not c.HasField("embeddings")
    assert [buf[a:b].decode() for a, b in zip(ids[2].tolist(), ids[3].tolist())] == list(c.item_ids)
    assert n_entries >= len(c.scores) + len(c.numeric) + len(c.attributes)  # keys may repeat


def test_a_dictionary_seen_before_decodes_as_the_first_time():
    """The lite decoder keeps the dictionaries it parsed, by their bytes: the same bytes give the
    same values, and a repeated value is reported every time."""
    convert._DICTIONARIES.clear()
    for _ in range(2):
        for dictionary in (["x", "y", "z"], ["x", "y", "x"]):
            for codes in ([0, 1, 2], [2, 2, 0], [0, 5, 1]):
                req = pb.RerankRequest(policy="p")
                req.candidates.item_ids.extend(["a", "b", "c"])
                req.candidates.attributes["cat"].dictionary.extend(dictionary)
                req.candidates.attributes["cat"].codes.extend(codes)
                raw = req.SerializeToString()
                _assert_same(raw)
                assert type(convert.parse_rerank(raw)) is convert.LiteRerankRequest
    assert len(convert._DICTIONARIES) == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12), max_size=20), st.binary(max_size=5))
def test_join_strings_equals_the_bytes_join(strings, gap):
    """The kernel against b"\\0".join, the strings lying anywhere in a buffer (gaps between)."""
    buf, start, stop = b"", [], []
    for s in strings:
        buf += gap
        start.append(len(buf))
        buf += s
        stop.append(len(buf))
    out = np.full(sum(map(len, strings)) + max(len(strings) - 1, 0), 0xEE, dtype=np.uint8)
    got = wk.join_strings(np.frombuffer(buf, dtype=np.uint8), np.asarray(start, dtype=np.int64),
                          np.asarray(stop, dtype=np.int64), out)
    if any(b"\x00" in s for s in strings):
        assert got == -1
    else:
        assert out[:got].tobytes() == b"\x00".join(strings) and got == len(out)


# ------------------------------------------------------------------------- RerankBatch


def _batch_outcome(raw: bytes, lite: bool):
    """What the server makes of a RerankBatch's bytes: ("decode", message), or per request its
    decoded request, ("invalid", issues) of its own."""
    try:
        batch = convert.parse_rerank_batch(raw) if lite else pb.RerankBatchRequest.FromString(raw)
    except DecodeError as exc:
        return "decode", str(exc)
    out = []
    for one in batch.requests:
        try:
            out.append(convert.decode_request(one))
        except InvalidRequest as exc:
            out.append(("invalid", sorted((i.path, i.message) for i in exc.issues)))
    return out


def _request_fields(r) -> tuple:
    c = r.candidates
    return (r.policy, r.slate_size, r.solver, dict(r.objective_weights), r.explain, r.request_id, list(c.item_ids),
            {k: v.tolist() for k, v in c.scores.items()}, {k: v.tolist() for k, v in c.numeric.items()},
            {k: (a.dictionary, a.codes.tolist()) for k, a in c.attributes.items()},
            None if c.embeddings is None else c.embeddings.tolist())


def test_a_batch_parses_as_its_requests_do_on_random_batches_and_damage():
    """parse_rerank_batch against RerankBatchRequest.FromString: the same requests (each read by
    the lite parse where it can), the same errors, the batch's own parse error when only one
    request is not valid, also after damage anywhere in the batch."""
    rng = random.Random(161)
    lite = decode_errors = 0
    for _ in range(600):
        batch = pb.RerankBatchRequest(requests=[_random_request(rng) for _ in range(rng.choice([0, 1, 2, 4]))])
        raw = batch.SerializeToString()
        if rng.random() < 0.6:
            raw = _damaged(raw, rng)
        full, got = _batch_outcome(raw, lite=False), _batch_outcome(raw, lite=True)
        if isinstance(full, tuple):  # ("decode", message)
            assert got == full
            decode_errors += 1
            continue
        assert len(got) == len(full)
        for a, b in zip(got, full, strict=True):
            if isinstance(b, tuple):
                assert a == b
            else:
                assert _request_fields(a) == _request_fields(b)
        parsed = convert.parse_rerank_batch(raw)
        lite += isinstance(parsed, convert.LiteRerankBatch) and any(
            type(one) is convert.LiteRerankRequest for one in parsed.requests)
    assert lite > 50 and decode_errors > 50  # both paths taken


def test_the_servicer_answers_a_lite_batch_as_the_parsed_one():
    """RerankBatch through the servicer, the batch parsed both ways: the same answers (clock-free)."""
    from benchmarks.bench_grpc import make_request
    from benchmarks.bench_glue import _Context, _servicer

    servicer = _servicer()
    requests = [make_request("dictionary", n=300, seed=1), make_request("plain", n=200, seed=2),
                make_request("plain", n=50, seed=3)]
    requests[2].candidates.scores["p_click"].values[3] = float("nan")  # an invalid one: its own error
    raw = pb.RerankBatchRequest(requests=requests).SerializeToString()
    lite = convert.parse_rerank_batch(raw)
    assert [type(one) for one in lite.requests] == [convert.LiteRerankRequest] * 3
    answers = []
    for batch in (lite, pb.RerankBatchRequest.FromString(raw)):
        out = servicer.RerankBatch(batch, _Context())
        for result in out.results:
            if result.HasField("response"):  # (reading .response of an error would set it)
                result.response.diagnostics.ClearField("elapsed_us")
        answers.append(out.SerializeToString(deterministic=True))
    assert answers[0] == answers[1]
    assert pb.RerankBatchResponse.FromString(answers[0]).results[2].error.message
