"""The fast Rerank encoder (server.encode) against its slow reference twin, convert.encode_result:
every result must give bytes that parse to the reference's message, and without contributions
the very bytes upb writes."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.types import (
    ConflictReport, ConstraintReport, ExperimentReport, Propensities, RerankResult, SlateItem, SlateItems,
)
from server import convert, encode
from server._gen.reranker.v1 import reranker_pb2 as pb

_ids = st.text(max_size=12)  # unicode (astral planes included) and empty ids
_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _result(items, **kw) -> RerankResult:
    base = dict(policy="p", policy_version="v1", solver="greedy", status="feasible", objective=1.5,
                bound=2.0, gap=0.25, gap_kind="relative", bound_method="sort", eligible=len(items),
                request_id="r",
                constraints=[ConstraintReport("cap", "max_count", True, True, 1.0, 0.0, 0.0, False),
                             ConstraintReport("soft", "min_count", False, False, 0.0, 2.0, 0.5, False,
                                              "short", cost=-0.25)],
                elapsed_us={"compile": 3.0, "solve": 4.5, "report": 1.0})
    base.update(kw)
    return RerankResult(items=items, **base)


def _canonical(data: bytes) -> bytes:
    """A message's bytes in upb's deterministic form (map entries sorted): NaN-proof equality."""
    return pb.RerankResponse.FromString(data).SerializeToString(deterministic=True)


def _check(result: RerankResult) -> None:
    reference = convert.encode_result(result)
    fast = encode.encode_result_bytes(result)
    assert _canonical(fast) == reference.SerializeToString(deterministic=True)
    if not any(math.isnan(it.utility) for it in result.items) and not any(
            math.isnan(v) for it in result.items for v in it.contributions.values()):
        assert pb.RerankResponse.FromString(fast) == reference
    if not any(it.contributions for it in result.items):  # same bytes as upb's
        assert fast == reference.SerializeToString()


@st.composite
def _slates(draw, explain: bool = False):
    k = draw(st.integers(0, 12))
    ids = draw(st.lists(_ids, min_size=k, max_size=k))
    index = draw(st.lists(st.integers(0, 2**32 - 1), min_size=k, max_size=k))
    utility = draw(st.lists(_floats, min_size=k, max_size=k))
    if draw(st.booleans()):  # any positions, 0 (a proto3 default) included
        position = draw(st.lists(st.integers(0, 2**32 - 1), min_size=k, max_size=k))
    else:
        position = list(range(1, k + 1))
    contributions = [{}] * k
    if explain:
        names = draw(st.lists(st.text(max_size=5), max_size=3, unique=True))
        contributions = [{n: draw(_floats) for n in names} for _ in range(k)]
    return [SlateItem(i, r, p, u, c) for i, r, p, u, c in zip(ids, index, position, utility, contributions)]


@settings(max_examples=300, deadline=None)
@given(_slates())
def test_items_as_upb_writes_them(items):
    _check(_result(items))


@settings(max_examples=100, deadline=None)
@given(_slates(explain=True))
def test_contributions_parse_to_the_reference(items):
    _check(_result(items))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_ids, st.integers(0, 10**6), _floats), max_size=15), st.booleans())
def test_columnar_slate_encodes_like_its_items(rows, explain):
    ids = [r[0] for r in rows]
    index = np.array([r[1] for r in rows], np.int64)
    utility = np.array([r[2] for r in rows], np.float64)
    contributions = {"p_click": utility * 0.5, "exposure_boost": -utility} if explain else None
    columnar = SlateItems(ids, index, utility, contributions)
    listed = list(columnar)
    assert [it.position for it in listed] == list(range(1, len(rows) + 1))
    assert all(type(it.index) is int and type(it.utility) is float for it in listed)
    a, b = _result(columnar), _result(listed)
    assert encode.encode_result_bytes(a) == encode.encode_result_bytes(b) or explain
    assert _canonical(encode.encode_result_bytes(a)) == _canonical(convert.encode_result(b).SerializeToString())


def test_every_part_of_the_rest():
    items = [SlateItem("é-1", 3, 1, -0.0), SlateItem("", 0, 2, math.inf), SlateItem("x", 7, 3, math.nan)]
    result = _result(
        items, bound=None, gap=None, gap_kind="", exact_status="skipped: similarity",
        conflicts=[ConflictReport(["a", "b"], "a conflicts with b")], boosts={"seller=new": 0.125},
        experiment=ExperimentReport("exp", "B", 42, layer="L", layer_bucket=-1, unit="user_id"),
        propensities=Propensities(7, "epsilon", 0.5, (1.0, 0.5), (0.9, 0.8), 100))
    _check(result)
    msg = pb.RerankResponse.FromString(encode.encode_result_bytes(result))
    assert [i.item_id for i in msg.items] == ["é-1", "", "x"]
    assert math.copysign(1.0, msg.items[0].utility) == -1.0 and math.isnan(msg.items[2].utility)
    assert msg.diagnostics.conflicts[0].rules == ["a", "b"] and msg.experiment.variant == "B"


def test_no_items():
    _check(_result([]))
    assert encode.encode_items([], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)) == b""


def test_out_of_range_index_is_named():
    with pytest.raises(ValueError, match=re.escape("items[1]: index and position must be in [0, 2**32)")):
        encode.encode_items(["a", "b"], np.array([0, 2**32]), np.array([1, 2]), np.zeros(2))
    with pytest.raises(ValueError, match=re.escape("items[0]: index and position must be in [0, 2**32)")):
        encode.encode_items(["a"], np.array([0]), np.array([-1]), np.zeros(1))
    with pytest.raises(ValueError, match="one entry per item, got 2, 1, 2, 2"):
        encode.encode_items(["a", "b"], np.array([0]), np.array([1, 2]), np.zeros(2))


def test_slate_items_behave_as_a_list():
    s = SlateItems(["a", "b"], np.array([4, 2]), np.array([0.5, 0.25]))
    expected = [SlateItem("a", 4, 1, 0.5), SlateItem("b", 2, 2, 0.25)]
    assert s == expected and expected == s and len(s) == 2 and s[-1] == expected[1]
    assert s[:1] == expected[:1] and s + [] == expected and [] + s == expected
    assert s != [SlateItem("a", 4, 1, 0.5)]
    assert s[0] is s[0]  # built once: a caller's edit of an item is kept
    import copy
    import pickle
    assert pickle.loads(pickle.dumps(s)) == expected and copy.deepcopy(s) == expected
    assert s.index(expected[1]) == 1 and s.count(expected[0]) == 1  # the list methods
    assert s.indices.tolist() == [4, 2] and s.columns()[2].tolist() == [1, 2]
    with pytest.raises(ValueError, match="one entry per position, got 2, 1, 2"):
        SlateItems(["a", "b"], np.array([1]), np.array([0.5, 0.25]))


def test_without_items_is_replace():
    import dataclasses

    result = _result([SlateItem("a", 1, 1, 0.5)], boosts={"x=y": 1.0})
    copy_ = encode.without_items(result)
    assert copy_ == dataclasses.replace(result, items=()) and copy_.items == () and result.items
    # a field added to RerankResult is copied too (the copy walks dataclasses.fields)
    assert {f.name for f in dataclasses.fields(RerankResult)} - {"items"} == set(encode._REST_FIELDS)


def test_slate_indices_reads_the_columns_without_building_items():
    from engine.types import SlateItem, SlateItems, slate_indices

    items = SlateItems(["a", "b", "c"], np.array([4, 0, 2]), np.array([0.3, 0.2, 0.1]))
    got = slate_indices(items, np.int32)
    assert got.dtype == np.int32 and got.tolist() == [4, 0, 2]
    assert items._items is None  # no SlateItem was made
    assert slate_indices(list(items)).tolist() == [4, 0, 2]  # a plain list of SlateItem
    assert slate_indices([SlateItem("x", 7, 1, 0.5)]).tolist() == [7]
    assert slate_indices([]).shape == (0,)
