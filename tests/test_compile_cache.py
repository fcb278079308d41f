"""The per-(policy, slate length) row arrays that compile_request shares between requests
(engine.compile._row_arrays): solving, explaining and relaxing never write them, and a cached
table is the one a fresh compile would build."""

from __future__ import annotations

import numpy as np
import pytest

from engine import compile as C
from engine.types import RerankRequest
from testing.engines import candidates

FIELDS = ("kind", "attr", "value", "bound", "top", "size", "hard", "penalty", "priority")
SHARED = FIELDS + ("position_weight", "no_item", "all_active", "no_reason", "rules")


def _snapshot(cp) -> dict:
    return {L: {f: getattr(arrays, f).copy() for f in SHARED} for L, arrays in cp.row_cache.items()}


@pytest.mark.parametrize("name", ["home_feed", "search", "marketplace", "discovery"])
def test_shared_row_arrays_are_never_written(engine, name):
    loaded = engine.store.get(name)
    cp = engine._compiled_policy(loaded)
    for seed, (n, k, solver, explain) in enumerate([(300, 0, None, False), (300, 5, "exact", True),
                                                    (40, 0, "greedy", True), (3, 0, None, True)]):
        engine.rerank(RerankRequest(name, candidates(n, seed=seed, rare=0.01), slate_size=k,
                                    solver=solver, explain=explain))
    before = _snapshot(cp)
    assert before, "requests fill the cache"
    for seed in range(4, 10):
        engine.rerank(RerankRequest(name, candidates(200, seed=seed, rare=0.02), solver="exact",
                                    explain=True))
    after = _snapshot(cp)
    for L, arrays in before.items():
        for f in SHARED:
            np.testing.assert_array_equal(after[L][f], arrays[f], err_msg=f"{name} L={L} {f}")


@pytest.mark.parametrize("name", ["home_feed", "search", "marketplace", "discovery"])
def test_cached_table_equals_a_fresh_compile(engine, name):
    cp = engine._compiled_policy(engine.store.get(name))
    req = RerankRequest(name, candidates(500, seed=3))
    first = C.compile_request(cp, req).problem.constraints
    fresh = C.compile_request(C.compile_policy(cp.policy), req).problem.constraints
    second = C.compile_request(cp, req).problem.constraints
    for f in FIELDS + ("item", "position", "target", "target_offset"):
        np.testing.assert_array_equal(getattr(first, f), getattr(fresh, f), err_msg=f)
        np.testing.assert_array_equal(getattr(second, f), getattr(fresh, f), err_msg=f)
    np.testing.assert_array_equal(C.compile_request(cp, req).problem.position_weight,
                                  C.position_weights(cp.policy.objective.position_discount,
                                                     C.compile_request(cp, req).problem.length))
