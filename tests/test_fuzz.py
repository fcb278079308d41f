"""Fuzz the decode path through the real server: malformed and extreme requests over a real channel.

Every example goes through gRPC to a server bound to a free port (the `live_server` fixture), so
protobuf parsing, decoding, validation, compilation, solving and encoding all run as in
production. The properties, for every request however bad:

- the server never crashes and never answers INTERNAL / UNKNOWN (the one exception: bytes the
  protobuf parser itself refuses, which grpc rejects before our code runs; see
  `test_raw_bytes`);
- a rejection is INVALID_ARGUMENT (NOT_FOUND for an unknown policy), with a message that starts
  with the path of a real top-level request field, and the same path(s) in `x-field`;
- an OK answer is a valid slate: distinct ids, positions 1..L, L = min(K, eligible), each item's
  index pointing at its id, finite utilities and objective;
- after the run the server still answers a good request and reports SERVING.

Requests start from a valid request for a (random) policy and then receive 0-4 random
mutations, so that both the accept and the reject paths are exercised in the same run. Also:
batches of such requests, arbitrary and damaged wire bytes through a generic call with identity
serializers, a request over the size limit, a tiny deadline.

Scores and weights range up to the largest double in the main fuzz: weight * score overflow (which
used to crash the greedy kernel) must be refused naming the field; it also has its own cases in
`test_overflowing_utility_is_rejected`, run in a child process. `FUZZ_EXAMPLES=N` runs a longer hunt.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from urllib.parse import unquote

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.errors import FIELD_METADATA_KEY
from tests.conftest import REPO

TIMEOUT_S = 20.0
RERANK = "/reranker.v1.Reranker/Rerank"

# Every top-level field of RerankRequest a rejection may name.
TOP_LEVEL_FIELDS = ("candidates", "policy", "slate_size", "budget_ms", "solver", "objective_weights",
                    "targets", "request_id", "user_id", "explain")
FIELD_PATH = re.compile(rf"^({'|'.join(TOP_LEVEL_FIELDS)})(\b|\[|\.|:)")
REJECTION_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                   grpc.StatusCode.RESOURCE_EXHAUSTED}

# The columns the repo's policies read (union over policies/*.yaml).
SCORES = ("p_click", "p_add_to_cart", "p_purchase", "relevance", "predicted_value")
ATTRIBUTES = {
    "availability": ("in_stock", "out_of_stock", "discontinued"),
    "category": ("shoes", "apparel", "home", "beauty", "sports", "toys"),
    "seller": tuple(f"seller-{i}" for i in range(8)),
    "content_type": ("video", "image"),
    "seller_tier": ("new", "established"),
    "brand": tuple(f"brand-{i}" for i in range(6)),
    "sponsored": ("yes", "no"),
}
NUMERIC = ("price",)
EMBEDDING_DIM = 4
CALIBRATION_RULES = ("taste",)

# Scores and weights: non-finite, signed zeros, subnormals, tiny, negative and huge values, up to
# the largest double: weight * score, or K of them summed, may overflow, and such requests must be
# refused naming the score (INVALID_ARGUMENT; see test_overflowing_utility_is_rejected), never
# answered with an infinite objective, bound or gap.
HUGE = float(np.finfo(np.float64).max)
SPECIAL_FLOATS = (math.nan, -math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, -5e-324,
                  2.2250738585072014e-308, 1e-300, -1.0, 1e150, 1e307, -1e307, 1e308, HUGE, -HUGE)
# Target shares may be as large as a double goes (their sum overflowing was a bug, now rejected).
SHARE_FLOATS = SPECIAL_FLOATS + (1e308, 1.7976931348623157e308, 0.5, 1.0)
weight_floats = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(-HUGE, HUGE), st.floats(-10, 10))
# Text of any code point a proto string may carry (no surrogates: proto3 strings are UTF-8).
odd_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
odd_names = st.one_of(odd_text, st.sampled_from(["", " ", "\x00", "\u200b", "\ufeff", "\U0010ffff",
                                                 "p_click ", "P_CLICK", "'", "']", "é", "e\u0301"]))


# ------------------------------------------------------------------------------- requests


def _values(rng: np.random.Generator, pool: tuple[str, ...], n: int) -> list[str]:
    return [pool[i] for i in rng.integers(0, len(pool), size=n)]


def _set_strings(col: pb.StringColumn, values: list[str], dictionary_encoded: bool) -> None:
    col.Clear()
    if dictionary_encoded:
        index = {v: i for i, v in enumerate(dict.fromkeys(values))}
        col.dictionary.extend(index)
        col.codes.extend(index[v] for v in values)
    else:
        col.values.extend(values)


def base_request(policy: str, n: int, seed: int, dictionary_encoded: bool) -> pb.RerankRequest:
    """A valid request for every repo policy: all the columns any policy reads, n candidates."""
    rng = np.random.default_rng(seed)
    req = pb.RerankRequest(policy=policy, request_id=f"fuzz-{seed}")
    c = req.candidates
    c.item_ids.extend(f"item-{j}" for j in range(n))
    for name in SCORES:
        c.scores[name].values.extend(rng.random(n).tolist())
    for name, pool in ATTRIBUTES.items():
        _set_strings(c.attributes[name], _values(rng, pool, n), dictionary_encoded)
    c.numeric["price"].values.extend(rng.uniform(1.0, 300.0, n).round(2).tolist())
    c.embeddings.dim = EMBEDDING_DIM
    c.embeddings.values.extend(rng.normal(size=n * EMBEDDING_DIM).astype(np.float32).tolist())
    return req


def _column(draw, c: pb.Candidates):
    """Some existing column of the request: (kind, name, message)."""
    choices = [("scores", k) for k in c.scores] + [("numeric", k) for k in c.numeric] + \
              [("attributes", k) for k in c.attributes]
    if not choices:
        return None
    kind, name = draw(st.sampled_from(sorted(choices)))
    return kind, name, getattr(c, kind)[name]


def m_item_ids(draw, req):
    ids = req.candidates.item_ids
    if not ids:
        ids.append(draw(odd_text))
        return
    j = draw(st.integers(0, len(ids) - 1))
    ids[j] = draw(st.one_of(st.just(""), odd_text, st.sampled_from(list(ids))))


def m_drop_column(draw, req):
    c = req.candidates
    what = draw(st.sampled_from(["column", "embeddings", "all_scores", "item_ids"]))
    if what == "embeddings":
        c.ClearField("embeddings")
    elif what == "all_scores":
        c.ClearField("scores")
    elif what == "item_ids":
        c.ClearField("item_ids")
    elif (col := _column(draw, c)) is not None:
        del getattr(c, col[0])[col[1]]


def m_column_length(draw, req):
    """One column longer or shorter than item_ids (either string encoding)."""
    col = _column(draw, req.candidates)
    if col is None:
        return
    kind, _, msg = col
    grow = draw(st.booleans())
    if kind == "attributes":
        seq = msg.codes if len(msg.codes) else msg.values
        if grow:
            seq.append(0 if seq is msg.codes else "extra")
        elif len(seq):
            del seq[draw(st.integers(0, len(seq) - 1))]
    elif grow:
        msg.values.extend([0.5] * draw(st.integers(1, 3)))
    elif len(msg.values):
        del msg.values[draw(st.integers(0, len(msg.values) - 1)):]


def m_special_floats(draw, req):
    c = req.candidates
    columns = [c.scores[k] for k in sorted(c.scores)] + [c.numeric[k] for k in sorted(c.numeric)]
    columns = [col for col in columns if len(col.values)]
    if not columns:
        return
    col = draw(st.sampled_from(columns))
    for _ in range(draw(st.integers(1, 3))):
        col.values[draw(st.integers(0, len(col.values) - 1))] = draw(st.sampled_from(SPECIAL_FLOATS))


def m_odd_strings(draw, req):
    """Unicode / empty strings as attribute values (plain or in the dictionary)."""
    c = req.candidates
    if not c.attributes:
        return
    col = c.attributes[draw(st.sampled_from(sorted(c.attributes)))]
    if len(col.values):
        col.values[draw(st.integers(0, len(col.values) - 1))] = draw(odd_names)
    elif len(col.dictionary):
        new = draw(odd_names)
        if new not in col.dictionary:
            col.dictionary[draw(st.integers(0, len(col.dictionary) - 1))] = new


def m_odd_keys(draw, req):
    """Columns (or weights, targets) under odd map keys, of right or wrong length."""
    c = req.candidates
    n = len(c.item_ids)
    key = draw(odd_names)
    where = draw(st.sampled_from(["scores", "numeric", "attributes", "objective_weights", "targets"]))
    length = draw(st.sampled_from([n, n, 0, n + 1]))
    if where == "attributes":
        c.attributes[key].values.extend([draw(odd_names)] * length)
    elif where in ("scores", "numeric"):
        getattr(c, where)[key].values.extend([0.25] * length)
    elif where == "objective_weights":
        req.objective_weights[key] = draw(weight_floats)
    else:
        req.targets[key].shares[draw(odd_names)] = draw(st.one_of(st.sampled_from(SHARE_FLOATS), st.floats()))


def m_dictionary(draw, req):
    """Dictionary-encoded columns: codes out of range, duplicate values, both forms, half forms."""
    c = req.candidates
    if not c.attributes:
        return
    col = c.attributes[draw(st.sampled_from(sorted(c.attributes)))]
    kind = draw(st.sampled_from(["out_of_range", "duplicate", "both", "codes_only", "dictionary_only",
                                 "huge_code", "unused_entries"]))
    values = list(col.values) or [col.dictionary[k] for k in col.codes if k < len(col.dictionary)]
    if len(col.values):
        _set_strings(col, values, True)
    if kind == "out_of_range" and len(col.codes):
        col.codes[draw(st.integers(0, len(col.codes) - 1))] = len(col.dictionary) + draw(st.integers(0, 3))
    elif kind == "huge_code" and len(col.codes):
        col.codes[draw(st.integers(0, len(col.codes) - 1))] = 2**32 - 1
    elif kind == "duplicate" and len(col.dictionary):
        col.dictionary.append(col.dictionary[draw(st.integers(0, len(col.dictionary) - 1))])
    elif kind == "both":
        col.values.extend(values or ["x"])
    elif kind == "codes_only":
        col.ClearField("dictionary")
    elif kind == "dictionary_only":
        col.ClearField("codes")
    elif kind == "unused_entries":
        col.dictionary.extend(v for v in (draw(odd_names), "never-used") if v not in col.dictionary)


def m_embeddings(draw, req):
    e = req.candidates.embeddings
    n = len(req.candidates.item_ids)
    kind = draw(st.sampled_from(["short", "long", "dim0_values", "dim0_empty", "huge_dim", "nonfinite",
                                 "other_dim"]))
    if kind == "short" and len(e.values):
        del e.values[-1]
    elif kind == "long":
        e.values.append(1.0)
    elif kind == "dim0_values":
        e.dim = 0
    elif kind == "dim0_empty":
        e.dim = 0
        e.ClearField("values")
    elif kind == "huge_dim":
        e.dim = draw(st.sampled_from([2**32 - 1, 2**31, 10**6]))
    elif kind == "nonfinite" and len(e.values):
        e.values[draw(st.integers(0, len(e.values) - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif kind == "other_dim":
        dim = draw(st.integers(1, 3))
        e.dim = dim
        e.ClearField("values")
        e.values.extend([0.5] * (n * dim))


def m_slate_size(draw, req):
    req.slate_size = draw(st.sampled_from([0, 1, 2, 999, 1000, 1001, 2**31, 2**32 - 1]))


def m_budget(draw, req):
    # Valid budgets stay small so that the run stays fast; the rest are out of range.
    req.budget_ms = draw(st.sampled_from([0.0, -0.0, 5e-324, 0.001, 1.0, 5.0, -1.0, -5e-324, math.nan,
                                          -math.nan, math.inf, -math.inf, 60_000.001, 1e308]))


def m_solver(draw, req):
    req.solver = draw(st.one_of(st.integers(-3, 7), st.sampled_from([-(2**31), 2**31 - 1])))


def m_objective_weights(draw, req):
    keys = st.one_of(st.sampled_from(SCORES), odd_names)
    for _ in range(draw(st.integers(1, 3))):
        req.objective_weights[draw(keys)] = draw(weight_floats)


def m_targets(draw, req):
    rule = draw(st.one_of(st.sampled_from(CALIBRATION_RULES), odd_names))
    shares = req.targets[rule].shares
    values = st.one_of(st.sampled_from(SHARE_FLOATS), st.floats(0, 1), st.floats())
    keys = st.one_of(st.sampled_from(ATTRIBUTES["category"]), odd_names)
    for _ in range(draw(st.integers(0, 4))):
        shares[draw(keys)] = draw(values)


def m_scalars(draw, req):
    req.explain = draw(st.booleans())
    req.user_id = draw(odd_text)
    req.request_id = draw(odd_text)


MUTATIONS = (m_item_ids, m_drop_column, m_column_length, m_special_floats, m_odd_strings, m_odd_keys,
             m_dictionary, m_embeddings, m_slate_size, m_budget, m_solver, m_objective_weights, m_targets,
             m_scalars)

# Candidate counts: mostly small; 0; a few large ones (still fast with greedy); one over the limit.
sizes = st.one_of(st.integers(1, 40), st.sampled_from([0, 1, 2, 300, 2000, 10_001]))
# Mostly real policies (so that requests get past the policy lookup), sometimes not.
REAL_POLICIES = ("home_feed", "discovery", "marketplace", "search")
policies = st.integers(0, 9).flatmap(
    lambda i: st.sampled_from(REAL_POLICIES) if i < 8 else
    st.one_of(st.sampled_from(["", "no_such_policy", "HOME_FEED", "home_feed "]), odd_text))


@st.composite
def fuzz_requests(draw) -> pb.RerankRequest:
    n = draw(sizes)
    req = base_request(draw(policies), n, draw(st.integers(0, 2**32 - 1)), draw(st.booleans()))
    if n > 300:
        # Big requests: keep them cheap to solve (greedy, small slate); the decode path is the point.
        req.solver = pb.SOLVER_MODE_GREEDY
        req.slate_size = 10
    for mutate in draw(st.lists(st.sampled_from(MUTATIONS), max_size=4)):
        mutate(draw, req)
    return req


# ------------------------------------------------------------------------------- checks


def check_rejection(code: grpc.StatusCode, message: str, fields: list[str]) -> None:
    """A rejection as the API promises: the right code, the message led by the path of a real
    request field, the same path first in `x-field` (or the batch entry's `field`)."""
    assert code in REJECTION_CODES, f"{code.name}: {message}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return  # grpc's own message-size refusal: no field to name
    assert FIELD_PATH.match(message), f"message names no request field: {message!r}"
    if code == grpc.StatusCode.NOT_FOUND:
        assert message.startswith("policy: "), message
    assert fields, f"no field path sent with {code.name}: {message!r}"
    for f in fields:
        assert FIELD_PATH.match(unquote(f)), f"x-field names no request field: {f!r}"
    assert message.startswith(unquote(fields[0]) + ": "), (message, fields)


def check_slate(req: pb.RerankRequest, resp: pb.RerankResponse, slate_sizes: dict[str, int]) -> None:
    ids = [it.item_id for it in resp.items]
    k = req.slate_size or slate_sizes[req.policy]
    n = len(req.candidates.item_ids)
    assert resp.eligible <= n
    assert len(ids) == len(set(ids)), "duplicate items in the slate"
    assert len(ids) == min(k, resp.eligible), (len(ids), k, resp.eligible)
    assert [it.position for it in resp.items] == list(range(1, len(ids) + 1))
    for it in resp.items:
        assert it.index < n and req.candidates.item_ids[it.index] == it.item_id
        assert math.isfinite(it.utility), f"utility of {it.item_id!r} is {it.utility}"
    d = resp.diagnostics
    assert d.status in (pb.SLATE_STATUS_OPTIMAL, pb.SLATE_STATUS_FEASIBLE, pb.SLATE_STATUS_RELAXED)
    assert math.isfinite(d.objective), f"objective is {d.objective}"
    assert not d.HasField("bound") or math.isfinite(d.bound), f"bound is {d.bound}"
    assert not d.HasField("gap") or math.isfinite(d.gap), f"gap is {d.gap}"
    assert resp.policy == req.policy and resp.request_id == req.request_id


def call_and_check(stub, req: pb.RerankRequest, slate_sizes: dict[str, int]) -> grpc.StatusCode:
    if os.environ.get("FUZZ_DUMP"):  # the last request sent, for a crash that kills this process
        with open(os.environ["FUZZ_DUMP"], "wb") as f:
            f.write(req.SerializeToString())
    try:
        resp = stub.Rerank(req, timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        fields = [v for k, v in (err.trailing_metadata() or ()) if k == FIELD_METADATA_KEY]
        check_rejection(err.code(), err.details() or "", fields)
        return err.code()
    check_slate(req, resp, slate_sizes)
    return grpc.StatusCode.OK


# ------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def channel(live_server):
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.RerankerStub(channel)


@pytest.fixture(scope="module")
def slate_sizes(stub) -> dict[str, int]:
    return {p.name: p.slate_size for p in stub.ListPolicies(pb.ListPoliciesRequest(), timeout=TIMEOUT_S).policies}


# FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps this file well under a minute on 2 cores.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OUTCOMES: dict[str, int] = {}


@FUZZ
@given(req=fuzz_requests())
def test_rerank_fuzz(stub, slate_sizes, req):
    code = call_and_check(stub, req, slate_sizes)
    OUTCOMES[code.name] = OUTCOMES.get(code.name, 0) + 1


@settings(FUZZ, max_examples=EXAMPLES // 6)
@given(reqs=st.lists(fuzz_requests(), min_size=1, max_size=4))
def test_rerank_batch_fuzz(stub, slate_sizes, reqs):
    """A batch answers every entry: a valid slate or an error entry of the same shape as Rerank's,
    unless admission control refuses the whole batch: for asking too much work (its entries' work
    summed), or because it is heavy while an earlier heavy call still holds this process's heavy
    lane (one whose client gave up waiting may still run: see server.admission)."""
    try:
        out = stub.RerankBatch(pb.RerankBatchRequest(requests=reqs), timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
        assert ("work units" in err.details() and "--max-work" in err.details()) \
            or err.details().startswith("heavy lane busy: "), err.details()
        return
    assert len(out.results) == len(reqs)
    for req, result in zip(reqs, out.results):
        if result.HasField("response"):
            check_slate(req, result.response, slate_sizes)
        else:
            code = next(c for c in grpc.StatusCode if c.value[0] == result.error.code)
            check_rejection(code, result.error.message, [result.error.field] if result.error.field else [])


def _flip(draw, data: bytes) -> bytes:
    """A valid request's wire bytes, damaged: bytes overwritten, cut, inserted or appended."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "cut", "insert", "append"]))
        at = draw(st.integers(0, max(len(buf) - 1, 0)))
        if kind == "set" and buf:
            buf[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            buf += draw(st.binary(min_size=1, max_size=16))
    return bytes(buf)


@st.composite
def raw_requests(draw) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    base = base_request("home_feed", draw(st.integers(0, 12)), draw(st.integers(0, 1000)), draw(st.booleans()))
    return _flip(draw, base.SerializeToString())


PARSER_REFUSED = "request: not a valid reranker.v1.RerankRequest message"  # start of the message


@settings(FUZZ, max_examples=EXAMPLES * 3 // 4)
@given(data=raw_requests())
def test_raw_bytes(channel, slate_sizes, data):
    """Arbitrary bytes as a serialized RerankRequest (identity serializers: no client-side parsing).

    Bytes the protobuf parser refuses get INVALID_ARGUMENT naming the message type (the server
    parses requests itself; grpc's own answer would be INTERNAL). Everything that parses must
    follow the usual contract.
    """
    call = channel.unary_unary(RERANK, request_serializer=None, response_deserializer=None)
    try:
        parsed = pb.RerankRequest.FromString(data)
    except Exception:  # noqa: BLE001 - the parser's refusal; what the server says is checked below
        parsed = None
    try:
        raw = call(data, timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        if parsed is None:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(PARSER_REFUSED), \
                (err.code(), err.details())
            return
        fields = [v for k, v in (err.trailing_metadata() or ()) if k == FIELD_METADATA_KEY]
        check_rejection(err.code(), err.details() or "", fields)
        return
    assert parsed is not None, "the server accepted bytes the protobuf parser refuses"
    check_slate(parsed, pb.RerankResponse.FromString(raw), slate_sizes)


def test_oversized_request_is_resource_exhausted(channel):
    """17 MiB (one long request_id) is over the server's 16 MiB default: refused by grpc itself."""
    size = 17 << 20
    length = bytearray()
    while True:  # protobuf varint
        length.append((size >> 7 * len(length) & 0x7F) | (0x80 if size >> 7 * (len(length) + 1) else 0))
        if not length[-1] & 0x80:
            break
    data = b"\x12" + bytes(length) + b"x" * size  # field 2 (request_id), length-delimited
    assert pb.RerankRequest.FromString(data).request_id == "x" * size
    call = channel.unary_unary(RERANK, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        call(data, timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()


def test_tiny_deadline_is_deadline_exceeded_or_ok(stub, slate_sizes):
    req = base_request("marketplace", 200, 7, True)
    for timeout in (1e-6, 1e-4, 1e-3):
        try:
            check_slate(req, stub.Rerank(req, timeout=timeout), slate_sizes)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())


# Finite numbers over the whole double range, huge ones often (no cap: overflow is refused now).
finite_floats = st.one_of(st.sampled_from([x for x in SPECIAL_FLOATS if math.isfinite(x)]),
                          st.floats(-HUGE, HUGE), st.floats(-1e3, 1e3))


@st.composite
def huge_value_requests(draw) -> pb.RerankRequest:
    """A valid request whose only change is finite scores and request weights up to the largest
    double: nothing in it is wrong except that weight x score, or a slate's sum, may overflow."""
    n = draw(st.integers(1, 30))
    req = base_request(draw(st.sampled_from(REAL_POLICIES)), n, draw(st.integers(0, 2**32 - 1)),
                       draw(st.booleans()))
    c = req.candidates
    for _ in range(draw(st.integers(1, 4))):
        col = c.scores[draw(st.sampled_from(SCORES))]
        col.values[draw(st.integers(0, n - 1))] = draw(finite_floats)
    for name in draw(st.lists(st.sampled_from(SCORES), max_size=2, unique=True)):
        req.objective_weights[name] = draw(finite_floats)
    return req


@settings(FUZZ, max_examples=max(EXAMPLES // 5, 50))
@given(req=huge_value_requests())
def test_huge_finite_values_are_answered_or_refused_as_overflow(stub, slate_sizes, req):
    """With every number finite, the one refusal a request may get is the overflow one
    (INVALID_ARGUMENT naming the score or weight, saying it overflows); anything else fails,
    and an answer must be a valid slate with a finite objective, bound and gap."""
    try:
        resp = stub.Rerank(req, timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        message = err.details() or ""
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), message)
        assert "overflow" in message, message
        assert message.startswith(("candidates.scores", "objective_weights")), message
        fields = [v for k, v in (err.trailing_metadata() or ()) if k == FIELD_METADATA_KEY]
        check_rejection(err.code(), message, fields)
        OUTCOMES["HUGE_REFUSED"] = OUTCOMES.get("HUGE_REFUSED", 0) + 1
        return
    check_slate(req, resp, slate_sizes)
    OUTCOMES["HUGE_OK"] = OUTCOMES.get("HUGE_OK", 0) + 1


# ------------------------------------------------------------------- bugs the fuzz found


def test_target_shares_whose_sum_overflows_are_rejected(stub):
    """Found by the fuzz: shares that are finite one by one but sum to inf were normalised to all
    zeros and the greedy solver's own check raised ValueError: INTERNAL. Now INVALID_ARGUMENT."""
    req = base_request("discovery", 30, 1, False)
    req.targets["taste"].shares.update({"shoes": 1e308, "home": 1e308})
    with pytest.raises(grpc.RpcError) as info:
        stub.Rerank(req, timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("targets['taste']: shares must sum to a finite number"), \
        info.value.details()


_OVERFLOW_SCRIPT = """
import sys
from engine.engine import Engine
from engine.errors import InvalidRequest
from server import convert
from tests.test_fuzz import base_request
policy, column, value, weight = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
req = base_request(policy, 3, 0, False)
req.candidates.attributes["availability"].ClearField("values")
req.candidates.attributes["availability"].values.extend(["in_stock"] * 3)
req.candidates.scores[column].values[0] = value
if weight != "-":
    req.objective_weights[column] = float(weight)
engine = Engine.from_directory("policies")
try:
    result = engine.rerank(convert.decode_request(req))
except InvalidRequest as exc:
    print("REJECTED", exc)
else:
    print("ANSWERED", [it.utility for it in result.items], result.objective)
"""


@pytest.mark.parametrize("policy, column, value, weight", [
    ("home_feed", "p_purchase", 1e308, "-"),    # policy weight 10 -> +inf: the process dies
    ("marketplace", "p_purchase", 1e308, "-"),  # policy weight 2 -> +inf: the process dies
    ("search", "relevance", 10.0, "1e308"),      # a request weight of 1e308 on a score of 10 -> +inf
    ("marketplace", "p_purchase", -1e308, "-"),  # -inf utility and objective in an OK answer
], ids=["home_feed-score", "marketplace-score", "request-weight", "negative-overflow"])
def test_overflowing_utility_is_rejected(policy, column, value, weight):
    """Run in a child process: before the fix, an infinite utility crashed the greedy kernel
    (SIGSEGV) and took the solving process down, which must never be pytest itself.

    Reproducer: policy home_feed, one in-stock candidate whose p_purchase is 1e308 (the policy's
    weight 10 makes its utility inf). Expected: INVALID_ARGUMENT naming the score column (or
    objective_weights) whose weighted value is not finite.
    """
    out = subprocess.run([sys.executable, "-c", _OVERFLOW_SCRIPT, policy, column, repr(value), weight],
                         check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"solver process died with {out.returncode}: {out.stderr[-500:]}"
    assert out.stdout.startswith("REJECTED "), out.stdout
    assert "candidates.scores" in out.stdout or "objective_weights" in out.stdout, out.stdout


def test_server_still_serves_after_the_fuzz(live_server, channel, stub, slate_sizes):
    """Runs last in this module (pytest keeps file order): a good request still gets a slate."""
    for policy in sorted(slate_sizes):
        req = base_request(policy, 50, 1, False)
        assert call_and_check(stub, req, slate_sizes) == grpc.StatusCode.OK
    check = health_pb2_grpc.HealthStub(channel).Check
    got = check(health_pb2.HealthCheckRequest(service="reranker.v1.Reranker"), timeout=TIMEOUT_S).status
    assert got == health_pb2.HealthCheckResponse.SERVING
    print("rerank fuzz outcomes:", OUTCOMES)
