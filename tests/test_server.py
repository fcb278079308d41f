"""Server tests: conversion and error mapping units, then integration over a real channel.

The integration tests talk to a real server (real Engine over the repo's policies/) bound to a free
port; every bad input is checked for its status code AND for a message naming the field.
"""

from __future__ import annotations

import math
import os
import re
from urllib.parse import unquote
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.errors import FieldIssue, InvalidRequest, PolicyInvalid, PolicyNotFound
from engine.types import Attribute, ConstraintReport, RerankResult, SlateItem
from server import convert
from server._gen.reranker.v1 import reranker_pb2 as pb
from server._gen.reranker.v1 import reranker_pb2_grpc as pb_grpc
from server.app import create_server, set_serving
from server.errors import FIELD_METADATA_KEY, INTERNAL_MESSAGE, DeadlineExpired, to_status
from server.request_json import load_request
from server.servicer import RerankerServicer

from testing.policies import TWO_ERRORS_POLICY as INVALID_POLICY
from tests.conftest import EXAMPLES_DIR, POLICIES_DIR

EXAMPLE_REQUEST = EXAMPLES_DIR / "request_home_feed.json"
TIMEOUT_S = 20.0


def example_request() -> pb.RerankRequest:
    """The shipped home_feed example (50 candidates, every column the policy uses)."""
    return load_request(EXAMPLE_REQUEST)


def grown_request(n: int) -> pb.RerankRequest:
    """The example's columns tiled to n candidates (ids made unique)."""
    base = example_request()
    m = len(base.candidates.item_ids)
    idx = np.arange(n) % m
    req = pb.RerankRequest(policy=base.policy, request_id=f"grown-{n}", slate_size=base.slate_size)
    c = req.candidates
    c.item_ids.extend(f"{base.candidates.item_ids[i]}-{j}" for j, i in enumerate(idx.tolist()))
    for name, col in base.candidates.scores.items():
        c.scores[name].values.extend(np.asarray(col.values)[idx].tolist())
    for name, col in base.candidates.numeric.items():
        c.numeric[name].values.extend(np.asarray(col.values)[idx].tolist())
    for name, col in base.candidates.attributes.items():
        attr = convert.attribute_from_values(list(col.values))
        c.attributes[name].dictionary.extend(attr.dictionary)
        c.attributes[name].codes.extend(attr.codes[idx].tolist())
    return req


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=TIMEOUT_S, **kwargs)
    return info.value


def x_fields(err: grpc.RpcError) -> list[str]:
    return [v for k, v in (err.trailing_metadata() or ()) if k == FIELD_METADATA_KEY]


def assert_valid_slate(req: pb.RerankRequest, resp: pb.RerankResponse, k: int | None = None) -> None:
    """The DESIGN contract, checked from the response alone (k: the policy's slate size if the
    request leaves it to the policy)."""
    ids = [it.item_id for it in resp.items]
    k = req.slate_size or k
    assert k, "slate size unknown"
    assert len(ids) == len(set(ids)), "duplicate items in the slate"
    assert len(ids) == min(k, resp.eligible)
    assert [it.position for it in resp.items] == list(range(1, len(ids) + 1))
    for it in resp.items:
        assert req.candidates.item_ids[it.index] == it.item_id
        assert math.isfinite(it.utility)
    d = resp.diagnostics
    assert d.solver
    assert d.status in (pb.SLATE_STATUS_OPTIMAL, pb.SLATE_STATUS_FEASIBLE, pb.SLATE_STATUS_RELAXED)
    assert math.isfinite(d.objective)
    for c in d.constraints:
        if c.hard:
            assert c.satisfied or c.relaxed, f"hard constraint {c.name} neither satisfied nor relaxed"
        if c.relaxed:
            assert c.reason, f"relaxed constraint {c.name} gives no reason"
            assert d.status == pb.SLATE_STATUS_RELAXED
    for stage in ("decode", "compile", "solve", "report", "encode", "total"):
        assert d.elapsed_us[stage] >= 0
    assert d.elapsed_us["total"] >= d.elapsed_us["decode"]


# ------------------------------------------------------------------------ conversion (units)


def test_decode_example_request_columns():
    req = convert.decode_request(example_request(), deadline_ms=12.5)
    c = req.candidates
    assert c.n == 50 and req.policy == "home_feed" and req.explain and req.deadline_ms == 12.5
    assert set(c.scores) == {"p_click", "p_add_to_cart", "p_purchase"}
    assert all(v.dtype == np.float64 and v.shape == (50,) for v in c.scores.values())
    assert c.numeric["price"].shape == (50,)
    assert c.attributes["category"].codes.dtype == np.int64
    assert c.embeddings is None and req.solver is None


def test_dictionary_and_plain_strings_decode_alike():
    values = ["b", "a", "b", "c", "a"]
    plain = pb.StringColumn(values=values)
    coded = pb.StringColumn(dictionary=["b", "a", "c"], codes=[0, 1, 0, 2, 1])
    issues: list[FieldIssue] = []
    a = convert._decode_attribute("x", plain, issues)
    b = convert._decode_attribute("x", coded, issues)
    assert not issues
    assert a.values() == b.values() == values
    ref = Attribute.from_values(values)
    assert a.dictionary == ref.dictionary and a.codes.tolist() == ref.codes.tolist()


def _candidates(**columns) -> pb.RerankRequest:
    req = pb.RerankRequest(policy="home_feed")
    req.candidates.item_ids.extend(["a", "b", "c"])
    req.candidates.scores["p_click"].values.extend([0.1, 0.2, 0.3])
    for name, col in columns.items():
        req.candidates.attributes[name].CopyFrom(col)
    return req


@pytest.mark.parametrize(
    "column, path, words",
    [
        (pb.StringColumn(dictionary=["x", "y"], codes=[0, 2, 1]),
         "candidates.attributes['category'].codes[1]", "code 2 out of range: the dictionary has 2 values"),
        (pb.StringColumn(values=["x", "y", "x"], codes=[0, 1, 0]),
         "candidates.attributes['category']", "not both"),
        (pb.StringColumn(dictionary=["x", "y", "x"], codes=[0, 1, 0]),
         "candidates.attributes['category'].dictionary[2]", "duplicate value 'x'"),
        (pb.StringColumn(codes=[0, 0, 0]),
         "candidates.attributes['category'].codes[0]", "the dictionary has 0 values"),
    ],
    ids=["code-out-of-range", "both-encodings", "duplicate-dictionary", "codes-without-dictionary"],
)
def test_decode_rejects_bad_string_columns(column, path, words):
    with pytest.raises(InvalidRequest) as info:
        convert.decode_request(_candidates(category=column))
    assert info.value.field == path
    assert words in str(info.value)


def test_decode_embeddings():
    req = _candidates()
    req.candidates.embeddings.dim = 2
    req.candidates.embeddings.values.extend([1, 2, 3, 4, 5, 6])
    emb = convert.decode_request(req).candidates.embeddings
    assert emb.dtype == np.float32 and emb.tolist() == [[1, 2], [3, 4], [5, 6]]

    req.candidates.embeddings.values.append(7)
    with pytest.raises(InvalidRequest, match=re.escape(
            "candidates.embeddings.values: expected N*dim = 6 floats (N=3, dim=2), got 7")):
        convert.decode_request(req)

    req.candidates.embeddings.dim = 0
    with pytest.raises(InvalidRequest, match=re.escape("candidates.embeddings.dim: must be > 0")):
        convert.decode_request(req)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1000, 40_000])
def test_packed_columns_decode_exactly(n):
    v = np.random.default_rng(n).normal(size=n)
    got = convert._doubles(pb.DoubleColumn(values=v.tolist()))
    assert got.dtype == np.float64 and got.flags.writeable and got.flags.c_contiguous
    assert np.array_equal(got, v)
    e = pb.Embeddings(dim=1, values=v.astype(np.float32).tolist())
    assert np.array_equal(convert._packed(e, e.values, 2, "<f4", np.float32), v.astype(np.float32))


def test_packed_columns_with_unknown_fields_or_unpacked_wire_format():
    extra = bytes([7 << 3 | 0, 5, 9 << 3 | 2, 2, 1, 2])  # fields a newer client might send
    col = pb.DoubleColumn.FromString(pb.DoubleColumn(values=[1.5, 2.5]).SerializeToString() + extra)
    assert convert._doubles(col).tolist() == [1.5, 2.5]
    unpacked = b"".join(bytes([1 << 3 | 1]) + np.float64(x).tobytes() for x in (1.0, 2.0, 3.0))
    assert convert._doubles(pb.DoubleColumn.FromString(unpacked)).tolist() == [1.0, 2.0, 3.0]


def test_decode_unequal_column_reaches_engine_with_its_real_length():
    req = _candidates(category=pb.StringColumn(values=["x"]))
    req.candidates.scores["p_buy"].values.extend([0.5] * 4)
    c = convert.decode_request(req).candidates
    assert c.attributes["category"].codes.shape == (1,) and c.scores["p_buy"].shape == (4,)


def test_decode_unknown_solver_enum_value():
    req = _candidates()
    req.solver = 9  # proto3 enums are open: a newer client may send a value we do not know
    with pytest.raises(InvalidRequest, match=re.escape("solver: unknown SolverMode value 9")):
        convert.decode_request(req)


def test_encode_result_round_trip():
    result = RerankResult(
        items=[SlateItem("b", 1, 1, 0.5, {"p_click": 0.5}), SlateItem("a", 0, 2, 0.25)],
        policy="p", policy_version="3", solver="greedy", status="relaxed", objective=0.66,
        bound=None, gap=None, eligible=2, request_id="r",
        constraints=[ConstraintReport("cap", "max_count", True, False, -1.0, 1.0, 0.0, True,
                                      "not enough candidates", cost=0.1)],
        elapsed_us={"compile": 3.0, "solve": 4.0},
    )
    resp = convert.encode_result(result)
    assert [(i.item_id, i.index, i.position) for i in resp.items] == [("b", 1, 1), ("a", 0, 2)]
    assert dict(resp.items[0].contributions) == {"p_click": 0.5} and not resp.items[1].contributions
    d = resp.diagnostics
    assert d.status == pb.SLATE_STATUS_RELAXED and not d.HasField("bound") and not d.HasField("gap")
    assert d.gap_kind == "" and d.bound_method == ""
    c = d.constraints[0]
    assert (c.name, c.relaxed, c.reason, c.cost) == ("cap", True, "not enough candidates", 0.1)
    assert dict(d.elapsed_us) == {"compile": 3.0, "solve": 4.0}


# ------------------------------------------------------------------------ error table (units)


@pytest.mark.parametrize(
    "exc, code, field",
    [
        (InvalidRequest("slate_size", "too big"), grpc.StatusCode.INVALID_ARGUMENT, "slate_size"),
        (PolicyNotFound("nope", ["home_feed"]), grpc.StatusCode.NOT_FOUND, "policy"),
        (PolicyInvalid("x.yaml", [FieldIssue("constraints[0].max", "bad")]),
         grpc.StatusCode.INVALID_ARGUMENT, "constraints[0].max"),
        (DeadlineExpired(), grpc.StatusCode.DEADLINE_EXCEEDED, ""),
        (ZeroDivisionError("secret detail"), grpc.StatusCode.INTERNAL, ""),
    ],
)
def test_error_table(exc, code, field):
    status = to_status(exc, request_id="r1")
    assert status.code == code and status.field == field
    if code == grpc.StatusCode.INTERNAL:
        assert "secret" not in status.message and INTERNAL_MESSAGE in status.message
    elif field:
        assert field in status.message


class _FakeContext:
    def __init__(self, remaining: float | None):
        self.remaining, self.code, self.details, self.trailing = remaining, None, None, ()

    def time_remaining(self):
        return 9.2e18 if self.remaining is None else self.remaining

    def set_trailing_metadata(self, md):
        self.trailing = md

    def abort(self, code, details):
        self.code, self.details = code, details
        raise RuntimeError("aborted")


class _NeverCalledEngine:
    def rerank(self, req):  # pragma: no cover - the point is that it is not reached
        raise AssertionError("the engine must not be called once the deadline has passed")


def test_expired_deadline_aborts_without_solving():
    context = _FakeContext(remaining=0.0)
    with pytest.raises(RuntimeError, match="aborted"):
        RerankerServicer(_NeverCalledEngine()).Rerank(example_request(), context)
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline exceeded" in context.details


def test_deadline_is_passed_to_the_engine():
    seen = []
    fake = SimpleNamespace(rerank=lambda req: seen.append(req.deadline_ms) or _raise(PolicyNotFound("x")))
    context = _FakeContext(remaining=0.25)
    with pytest.raises(RuntimeError):
        RerankerServicer(fake).Rerank(example_request(), context)
    assert 0 < seen[0] <= 250.0
    assert context.code == grpc.StatusCode.NOT_FOUND
    # errors carry the worker's pid too, before the fields at fault
    assert context.trailing == (("x-worker-pid", str(os.getpid())), (FIELD_METADATA_KEY, "policy"))

    seen.clear()
    with pytest.raises(RuntimeError):
        RerankerServicer(fake).Rerank(example_request(), _FakeContext(remaining=None))
    assert seen == [None]


def _raise(exc):
    raise exc


# ------------------------------------------------------------------------ over a real channel


@pytest.fixture(scope="module")
def channel(live_server):
    with grpc.insecure_channel(live_server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel) -> pb_grpc.RerankerStub:
    return pb_grpc.RerankerStub(channel)


def test_first_rerank_returns_a_valid_slate(stub):
    req = example_request()
    resp = stub.Rerank(req, timeout=TIMEOUT_S)
    assert resp.policy == "home_feed" and resp.policy_version
    assert resp.request_id == req.request_id
    assert 0 < resp.eligible <= len(req.candidates.item_ids)
    assert_valid_slate(req, resp)
    assert len(resp.diagnostics.constraints) > 0
    assert any(it.contributions for it in resp.items), "explain=true must fill contributions"
    d = resp.diagnostics
    # the bound's meaning travels with it: how it was obtained, and which gap is reported
    assert d.HasField("bound") and d.bound >= d.objective - 1e-9
    assert d.bound_method in ("exact", "lagrangian", "sort") or d.bound_method.startswith("sort (")
    assert d.gap_kind in ("relative", "absolute")
    want = (d.bound - d.objective) / d.bound if d.gap_kind == "relative" else d.bound - d.objective
    assert d.gap == pytest.approx(max(want, 0.0), abs=1e-9)


def test_rerank_is_deterministic_and_dictionary_encoding_gives_the_same_slate(stub):
    # Determinism holds for the greedy always, and for the exact solver whenever it finishes in
    # its budget: give it a generous one so that machine load cannot cut it short.
    plain = example_request()
    plain.budget_ms = 20_000
    coded = example_request()
    coded.budget_ms = 20_000
    for name, col in plain.candidates.attributes.items():
        attr = convert.attribute_from_values(list(col.values))
        coded.candidates.attributes[name].CopyFrom(
            pb.StringColumn(dictionary=attr.dictionary, codes=attr.codes.tolist()))
    slates = [[i.item_id for i in stub.Rerank(r, timeout=TIMEOUT_S).items] for r in (plain, plain, coded)]
    assert slates[0] == slates[1] == slates[2]


def test_rerank_default_slate_size_and_greedy_override(stub):
    req = example_request()
    req.slate_size = 0
    req.solver = pb.SOLVER_MODE_GREEDY
    req.explain = False
    resp = stub.Rerank(req, timeout=TIMEOUT_S)
    policies = stub.ListPolicies(pb.ListPoliciesRequest(), timeout=TIMEOUT_S).policies
    assert_valid_slate(req, resp, k=next(p.slate_size for p in policies if p.name == req.policy))
    assert not any(it.contributions for it in resp.items)


def test_health_not_serving_until_ready(engine):
    servicer = health.HealthServicer()
    server, port = create_server("127.0.0.1:0", engine, max_workers=2, health_servicer=servicer)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            check = health_pb2_grpc.HealthStub(ch).Check
            for name in ("", "reranker.v1.Reranker"):
                got = check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S).status
                assert got == health_pb2.HealthCheckResponse.NOT_SERVING
            set_serving(servicer, True)
            for name in ("", "reranker.v1.Reranker"):
                got = check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S).status
                assert got == health_pb2.HealthCheckResponse.SERVING
            err = rpc_error(check, health_pb2.HealthCheckRequest(service="no.such.Service"))
            assert err.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(None)


def test_live_server_reports_serving(channel):
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="reranker.v1.Reranker"),
    ]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=TIMEOUT_S))
    names = {s.name for s in listed.list_services_response.service}
    assert {"reranker.v1.Reranker", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_list_policies(stub):
    policies = {p.name: p for p in stub.ListPolicies(pb.ListPoliciesRequest(), timeout=TIMEOUT_S).policies}
    assert "home_feed" in policies
    p = policies["home_feed"]
    assert p.version and p.slate_size > 0 and p.solver_mode in ("auto", "greedy", "exact")
    assert re.fullmatch(r"[0-9a-f]{64}", p.digest)
    assert p.source.endswith(".yaml") or p.source.endswith(".yml")
    assert p.budget_ms > 0 and len(p.constraints) > 0


def test_validate_policy_accepts_a_shipped_policy(stub):
    text = (POLICIES_DIR / "home_feed.yaml").read_text()
    resp = stub.ValidatePolicy(pb.ValidatePolicyRequest(yaml=text, filename="home_feed.yaml"), timeout=TIMEOUT_S)
    assert resp.valid and not resp.issues




def test_validate_policy_reports_path_and_message(stub):
    resp = stub.ValidatePolicy(pb.ValidatePolicyRequest(yaml=INVALID_POLICY, filename="broken.yaml"),
                               timeout=TIMEOUT_S)
    assert not resp.valid
    issues = {i.path: i.message for i in resp.issues}
    assert issues["constraints[0]"].startswith("unknown key 'colour' (allowed: attribute, ")
    assert issues["constraints[1].min"] == "must be an integer >= 1, got 0 (line 16)"


def test_validate_policy_reports_yaml_syntax_errors(stub):
    resp = stub.ValidatePolicy(pb.ValidatePolicyRequest(yaml="name: [unclosed\n"), timeout=TIMEOUT_S)
    assert not resp.valid and resp.issues
    assert "YAML" in resp.issues[0].message


def test_validate_policy_refuses_huge_documents(stub):
    err = rpc_error(stub.ValidatePolicy, pb.ValidatePolicyRequest(yaml="#" * (2 << 20)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("yaml: a policy document is at most 1048576 characters")


def test_rerank_batch_isolates_a_bad_request(stub):
    good = example_request()
    bad = example_request()
    bad.candidates.scores["p_click"].values[3] = math.nan
    unknown = example_request()
    unknown.policy = "no_such_policy"
    batch = pb.RerankBatchRequest(requests=[good, bad, unknown, good])
    resp = stub.RerankBatch(batch, timeout=TIMEOUT_S)
    assert [r.WhichOneof("result") for r in resp.results] == ["response", "error", "error", "response"]
    assert_valid_slate(good, resp.results[0].response)
    assert resp.results[0].response.items == resp.results[3].response.items
    err = resp.results[1].error
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert err.field == "candidates.scores['p_click'].values[3]"
    assert err.message.startswith(err.field + ": ") and "nan" in err.message
    err = resp.results[2].error
    assert err.code == grpc.StatusCode.NOT_FOUND.value[0] and err.field == "policy"
    assert "no_such_policy" in err.message


def test_rerank_batch_empty(stub):
    assert not stub.RerankBatch(pb.RerankBatchRequest(), timeout=TIMEOUT_S).results


# Every bad input: (id, how to break the example request, status code, field path named).
def _set(attr, value):
    def mutate(req):
        setattr(req, attr, value)
    return mutate


def _empty_candidates(req):
    req.ClearField("candidates")


def _short_column(req):
    del req.candidates.scores["p_add_to_cart"].values[-1]


def _short_attribute(req):
    del req.candidates.attributes["category"].values[-2:]


def _duplicate_id(req):
    req.candidates.item_ids[7] = req.candidates.item_ids[2]


def _score(value, at=17):
    def mutate(req):
        req.candidates.scores["p_click"].values[at] = value
    return mutate


def _weight(name, value=1.0):
    def mutate(req):
        req.objective_weights[name] = value
    return mutate


def _bad_embeddings(req):
    req.candidates.embeddings.dim = 3
    req.candidates.embeddings.values.extend([0.5] * (3 * len(req.candidates.item_ids) - 1))


def _code_out_of_range(req):
    col = req.candidates.attributes["category"]
    attr = convert.attribute_from_values(list(col.values))
    codes = attr.codes.tolist()
    codes[5] = len(attr.dictionary) + 10
    col.CopyFrom(pb.StringColumn(dictionary=attr.dictionary, codes=codes))


def _both_encodings(req):
    req.candidates.attributes["seller"].codes.extend([0] * len(req.candidates.item_ids))


def _nan_price(req):
    req.candidates.numeric["price"].values[0] = math.inf


BAD_INPUTS = [
    ("unknown-policy", _set("policy", "no_such_policy"), grpc.StatusCode.NOT_FOUND, "policy"),
    ("empty-policy-name", _set("policy", ""), grpc.StatusCode.INVALID_ARGUMENT, "policy"),
    ("empty-candidates", _empty_candidates, grpc.StatusCode.INVALID_ARGUMENT, "candidates.item_ids"),
    ("unequal-score-column", _short_column, grpc.StatusCode.INVALID_ARGUMENT,
     "candidates.scores['p_add_to_cart'].values"),
    ("unequal-attribute-column", _short_attribute, grpc.StatusCode.INVALID_ARGUMENT,
     "candidates.attributes['category']"),
    ("duplicate-item-id", _duplicate_id, grpc.StatusCode.INVALID_ARGUMENT, "candidates.item_ids[7]"),
    ("nan-score", _score(math.nan), grpc.StatusCode.INVALID_ARGUMENT, "candidates.scores['p_click'].values[17]"),
    ("inf-score", _score(math.inf, at=4), grpc.StatusCode.INVALID_ARGUMENT,
     "candidates.scores['p_click'].values[4]"),
    ("inf-numeric", _nan_price, grpc.StatusCode.INVALID_ARGUMENT, "candidates.numeric['price'].values[0]"),
    ("unknown-weight-column", _weight("p_dwell"), grpc.StatusCode.INVALID_ARGUMENT,
     "objective_weights['p_dwell']"),
    ("non-ascii-weight-column", _weight("p_clíck"), grpc.StatusCode.INVALID_ARGUMENT,
     "objective_weights['p_clíck']"),
    ("nan-weight", _weight("p_click", math.nan), grpc.StatusCode.INVALID_ARGUMENT,
     "objective_weights['p_click']"),
    ("slate-size-absurd", _set("slate_size", 4_000_000_000), grpc.StatusCode.INVALID_ARGUMENT, "slate_size"),
    ("negative-budget", _set("budget_ms", -1.0), grpc.StatusCode.INVALID_ARGUMENT, "budget_ms"),
    ("unknown-solver-mode", _set("solver", 42), grpc.StatusCode.INVALID_ARGUMENT, "solver"),
    ("embeddings-not-n-by-dim", _bad_embeddings, grpc.StatusCode.INVALID_ARGUMENT,
     "candidates.embeddings.values"),
    ("dictionary-code-out-of-range", _code_out_of_range, grpc.StatusCode.INVALID_ARGUMENT,
     "candidates.attributes['category'].codes[5]"),
    ("both-string-encodings", _both_encodings, grpc.StatusCode.INVALID_ARGUMENT,
     "candidates.attributes['seller']"),
]


@pytest.mark.parametrize("mutate, code, field", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_rejected_naming_the_field(stub, mutate, code, field):
    req = example_request()
    mutate(req)
    err = rpc_error(stub.Rerank, req)
    assert err.code() == code, err.details()
    assert err.details().startswith(field), err.details()
    assert unquote(x_fields(err)[0]) == field  # metadata is ASCII: anything else is %-encoded


def test_too_many_candidates(stub, engine):
    limit = engine.limits.max_candidates
    err = rpc_error(stub.Rerank, grown_request(limit + 1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("candidates.item_ids")
    assert str(limit) in err.details() and str(limit + 1) in err.details()


def test_message_over_the_size_limit(stub):
    req = example_request()
    req.candidates.numeric["padding"].values.extend(np.zeros(17 * 1024 * 1024 // 8 + 1).tolist())
    err = rpc_error(stub.Rerank, req)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_tiny_deadline_never_hangs(stub):
    req = grown_request(2000)
    for timeout in (1e-6, 1e-4, 2e-3):
        try:
            resp = stub.Rerank(req, timeout=timeout)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            assert_valid_slate(req, resp)


def test_large_request_is_served(stub):
    req = grown_request(2000)
    assert_valid_slate(req, stub.Rerank(req, timeout=TIMEOUT_S))


def test_still_serving_after_bad_inputs(stub, live_server):
    """A run of bad inputs, each refused with its own code and field, then a good call answers."""
    good = example_request()
    first_score = sorted(good.candidates.scores)[0]

    def variant(edit) -> pb.RerankRequest:
        req = pb.RerankRequest()
        req.CopyFrom(good)
        edit(req)
        return req

    bad = [
        (variant(lambda r: r.candidates.scores[first_score].values.__setitem__(3, math.nan)),
         grpc.StatusCode.INVALID_ARGUMENT, f"candidates.scores['{first_score}'].values[3]: must be a finite number"),
        (variant(lambda r: r.candidates.scores[first_score].values.pop()),
         grpc.StatusCode.INVALID_ARGUMENT, f"candidates.scores['{first_score}'].values: expected"),
        (variant(lambda r: r.candidates.item_ids.__setitem__(1, r.candidates.item_ids[0])),
         grpc.StatusCode.INVALID_ARGUMENT, "candidates.item_ids[1]: duplicate item id"),
        (variant(lambda r: setattr(r, "policy", "no_such_policy")),
         grpc.StatusCode.NOT_FOUND, "policy: no policy named 'no_such_policy'"),
        (variant(lambda r: setattr(r, "slate_size", 5000)),
         grpc.StatusCode.INVALID_ARGUMENT, "slate_size: must be between 1 and"),
        (variant(lambda r: r.candidates.ClearField("item_ids")),
         grpc.StatusCode.INVALID_ARGUMENT, "candidates.item_ids: must not be empty"),
    ]
    for req, code, message in bad:
        with pytest.raises(grpc.RpcError) as info:
            stub.Rerank(req, timeout=TIMEOUT_S)
        assert info.value.code() == code, (message, info.value.details())
        assert info.value.details().startswith(message), (message, info.value.details())
    with grpc.insecure_channel(live_server.address) as channel:  # raw bytes, no client-side checks
        call = channel.unary_unary("/reranker.v1.Reranker/Rerank", request_serializer=None,
                                   response_deserializer=None)
        # K <= 0: a client that sends slate_size as a signed -1 puts a 10-byte varint on the wire;
        # the uint32 field reads it as 2**32 - 1, refused like any K over the limit
        negative_k = good.SerializeToString() + b"\x20" + b"\xff" * 9 + b"\x01"
        assert pb.RerankRequest.FromString(negative_k).slate_size == 2**32 - 1
        with pytest.raises(grpc.RpcError) as info:
            call(negative_k, timeout=TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert info.value.details().startswith("slate_size: must be between 1 and"), info.value.details()
        # bytes that are no message at all (a length running past the end)
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x0a\xff\xff\xff\xff\x0f", timeout=TIMEOUT_S)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert info.value.details().startswith("request: not a valid reranker.v1.RerankRequest message"), \
            info.value.details()
    assert_valid_slate(good, stub.Rerank(good, timeout=TIMEOUT_S))


def test_unparseable_request_bytes_are_invalid_argument(live_server):
    with grpc.insecure_channel(live_server.address) as channel:
        call = channel.unary_unary("/reranker.v1.Reranker/Rerank", request_serializer=None,
                                   response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff\xff", timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request: not a valid reranker.v1.RerankRequest message")


def test_serve_closes_the_engine_after_the_drain(monkeypatch, tmp_path):
    """SIGTERM: drain, then Engine.close (a Redis ledger writes what it still holds), exit 0."""
    import os
    import shutil
    import signal

    from engine.engine import Engine
    from server import app
    from tests.conftest import POLICIES_DIR

    shutil.copy(POLICIES_DIR / "home_feed.yaml", tmp_path / "home_feed.yaml")
    closed = []
    monkeypatch.setattr(Engine, "close", lambda self: closed.append(self))
    code = app.serve("127.0.0.1:0", str(tmp_path), metrics_port=None, watch_interval_s=0,
                     grace_s=0.5, on_serving=lambda port: os.kill(os.getpid(), signal.SIGTERM))
    assert code == 0 and len(closed) == 1


def test_every_answer_names_the_digest_of_the_policy_file_that_served_it(stub):
    import hashlib

    resp = stub.Rerank(example_request(), timeout=TIMEOUT_S)
    served = (POLICIES_DIR / "home_feed.yaml").read_bytes()
    assert resp.policy == "home_feed"
    assert resp.policy_digest == hashlib.sha256(served).hexdigest()


@pytest.mark.parametrize("explain", [True, False])
def test_rerank_bytes_equal_the_message_path(engine, explain):
    """The servicer's bytes (server.encode) parse to the message RerankBatch's path builds
    (convert.encode_result), timings aside, with and without explain's contributions."""
    servicer = RerankerServicer(engine)
    request = example_request()
    request.explain = explain
    context = _FakeContext(remaining=None)
    fast = pb.RerankResponse.FromString(servicer._rerank(request, context, request.SerializeToString(),
                                                         as_bytes=True))
    reference = servicer._rerank(request, context)
    assert isinstance(reference, pb.RerankResponse) and len(fast.items) == len(reference.items) > 0
    assert any(it.contributions for it in fast.items) == explain
    for r in (fast, reference):
        assert {"decode", "compile", "solve", "report", "encode", "total"} <= set(r.diagnostics.elapsed_us)
        r.diagnostics.elapsed_us.clear()
    assert fast == reference
