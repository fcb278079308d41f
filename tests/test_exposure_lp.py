"""Fairness-of-exposure LP, Birkhoff-von Neumann decomposition and sampling
(solvers/exposure_lp.py): hand-solved cases, an independent scipy LP, re-solve consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest

from testing.exposure_reference import reference_lp
from solvers.exposure_lp import (CRITERIA, ExposureLP, birkhoff_von_neumann, expected_exposure,
                                 sample_ranking)


def dcg_weights(K: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, K + 2))


def instance(M: int, K: int, G: int, seed: int):
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.1, 1.0, M)
    groups = rng.integers(0, G, M)
    groups[:G] = np.arange(G)  # every group non-empty
    return u, groups, dcg_weights(K)


def as_matrix(ranking: np.ndarray, M: int) -> np.ndarray:
    X = np.zeros((M, ranking.shape[0]))
    X[ranking, np.arange(ranking.shape[0])] = 1.0
    return X


# --- hand-solved cases ----------------------------------------------------------------------

def test_two_items_demographic_parity_by_hand():
    # u = [1, .5], one item per group, v = [1, .5]. P = [[a, 1-a], [1-a, a]].
    # Exposures: e0 = a + .5(1-a) = .5 + .5a, e1 = (1-a) + .5a = 1 - .5a; e0 - e1 = a - .5.
    # Utility u^T P v = e0 + .5 e1 = 1 + .25a grows with a.
    #   tolerance 0:  a = .5, utility 1.125, P all .5;  tolerance .2: a = .7, utility 1.175.
    # Unconstrained: the sorted ranking, 1 * 1 + .5 * .5 = 1.25.
    lp = ExposureLP(2, 2, 2, "demographic_parity")
    u, g, v = np.array([1.0, 0.5]), np.array([0, 1]), np.array([1.0, 0.5])
    r = lp.solve(u, g, v, 0.0)
    assert r.status == "optimal"
    assert r.objective == pytest.approx(1.125, abs=1e-7)
    np.testing.assert_allclose(r.P, [[0.5, 0.5], [0.5, 0.5]], atol=1e-7)
    np.testing.assert_allclose(r.exposure_by_group, [0.75, 0.75], atol=1e-7)
    assert r.unconstrained_objective == 1.25
    r = lp.solve(u, g, v, 0.2)
    assert r.objective == pytest.approx(1.175, abs=1e-7)
    np.testing.assert_allclose(r.P, [[0.7, 0.3], [0.3, 0.7]], atol=1e-6)
    assert r.disparity == pytest.approx(0.2, abs=1e-7)


def test_two_items_disparate_treatment_by_hand():
    # Same data, merits 1 and .5: e0 / 1 = e1 / .5 <=> .5 + .5a = 2 - a <=> a = 1: the sorted
    # ranking already treats both groups in proportion to merit (exposures 1 and .5).
    lp = ExposureLP(2, 2, 2, "disparate_treatment")
    r = lp.solve(np.array([1.0, 0.5]), np.array([0, 1]), np.array([1.0, 0.5]), 0.0)
    assert r.status == "optimal"
    assert r.objective == pytest.approx(1.25, abs=1e-7)
    np.testing.assert_allclose(r.P, np.eye(2), atol=1e-6)


def test_one_position_three_items_by_hand():
    # K = 1, v = [1]: P is a distribution over which item is shown. Items 0, 1 in group 0,
    # item 2 in group 1, u = [3, 2, 1]. Let x = P00 + P10, y = P20, x + y = 1.
    # Demographic parity: x / 2 = y -> y = 1/3; all of x on item 0: utility 3 * 2/3 + 1/3 = 7/3.
    # Disparate treatment: merits 2.5 and 1: (x / 2) / 2.5 = y -> y = 1/6: utility 8/3.
    u, g, v = np.array([3.0, 2.0, 1.0]), np.array([0, 0, 1]), np.array([1.0])
    dp = ExposureLP(3, 1, 2, "demographic_parity").solve(u, g, v, 0.0)
    assert dp.objective == pytest.approx(7 / 3, abs=1e-7)
    np.testing.assert_allclose(dp.P[:, 0], [2 / 3, 0, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(dp.mean_exposure_by_group, [1 / 3, 1 / 3], atol=1e-7)
    dt = ExposureLP(3, 1, 2, "disparate_treatment").solve(u, g, v, 0.0)
    assert dt.objective == pytest.approx(8 / 3, abs=1e-7)
    np.testing.assert_allclose(dt.P[:, 0], [5 / 6, 0, 1 / 6], atol=1e-6)
    assert dt.unconstrained_objective == 3.0


def test_infeasible_tolerance_is_a_status():
    # v = [1, 1]: both items always get exposure 1, so e0 / 1 - e1 / .5 = -1 whatever P is.
    lp = ExposureLP(2, 2, 2, "disparate_treatment")
    u, g, v = np.array([1.0, 0.5]), np.array([0, 1]), np.array([1.0, 1.0])
    r = lp.solve(u, g, v, 0.5)
    assert r.status == "infeasible"
    assert r.P is None and math.isnan(r.objective) and np.isnan(r.exposure_by_group).all()
    r = lp.solve(u, g, v, 1.1)
    assert r.status == "optimal" and r.objective == pytest.approx(1.5, abs=1e-7)


def test_nonpositive_merit_is_a_status():
    lp = ExposureLP(3, 2, 2, "disparate_treatment")
    r = lp.solve(np.array([1.0, -1.0, 0.5]), np.array([0, 1, 1]), dcg_weights(2), 0.1)
    assert r.status == "nonpositive_merit" and r.P is None


def test_empty_group_does_not_constrain_the_others():
    u, g, v = instance(8, 4, 2, seed=3)
    two = ExposureLP(8, 4, 2).solve(u, g, v, 0.01)
    three = ExposureLP(8, 4, 3).solve(u, g, v, 0.01)  # group 2 has no member
    assert three.status == "optimal"
    assert three.objective == pytest.approx(two.objective, abs=1e-7)
    assert three.exposure_by_group[2] == 0.0 and math.isnan(three.mean_exposure_by_group[2])


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_time_limit_is_a_status():
    u, g, v = instance(20, 20, 2, seed=0)
    r = ExposureLP(20, 20, 2).solve(u, g, v, 0.0, time_limit_ms=0.0)
    assert r.status == "user_limit" and r.P is None


def test_invalid_arguments_name_the_field():
    with pytest.raises(ValueError, match=r"K: must be an integer in \[1, M=3\], got 4"):
        ExposureLP(3, 4, 2)
    with pytest.raises(ValueError, match=r"criterion: must be one of \['demographic_parity', 'disparate_treatment'\], got 'equal'"):
        ExposureLP(3, 2, 2, "equal")
    lp = ExposureLP(3, 2, 2)
    with pytest.raises(ValueError, match=r"u: must have shape \(3,\), got \(2,\)"):
        lp.solve(np.ones(2), np.zeros(3, dtype=int), np.ones(2))
    with pytest.raises(ValueError, match=r"groups: values must be in \[0, 2\), got \[0, 2\]"):
        lp.solve(np.ones(3), np.array([0, 1, 2]), np.ones(2))
    with pytest.raises(ValueError, match=r"tolerance: must be a finite number >= 0, got -0\.1"):
        lp.solve(np.ones(3), np.array([0, 1, 1]), np.ones(2), -0.1)


# --- against an independent formulation, and re-solves -----------------------------------------

@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("M, K, G", [(6, 6, 2), (10, 4, 3), (12, 12, 2)])
def test_matches_independent_scipy_lp(criterion, M, K, G):
    lp = ExposureLP(M, K, G, criterion)
    for seed in range(3):
        u, g, v = instance(M, K, G, seed)
        tol = 0.02 * seed
        r = lp.solve(u, g, v, tol)
        assert r.status == "optimal"
        assert r.objective == pytest.approx(reference_lp(u, g, v, G, criterion, tol), abs=1e-6)
        assert r.objective <= r.unconstrained_objective + 1e-9
        assert r.disparity <= tol + 1e-6
        np.testing.assert_allclose(r.P.sum(axis=0), 1.0, atol=1e-7)
        assert np.all(r.P.sum(axis=1) <= 1 + 1e-7)
        np.testing.assert_allclose(r.exposure_by_group, expected_exposure(r.P, v, g, G))


@pytest.mark.parametrize("solver, atol", [("CLARABEL", 1e-7), ("HIGHS", 1e-7), ("GLOP", 1e-7),
                                           ("SCS", 1e-3)])
def test_every_backend_on_the_same_instances(solver, atol):
    import cvxpy as cp

    if solver not in cp.installed_solvers():
        pytest.skip(f"{solver} not installed")
    for criterion in CRITERIA:
        lp = ExposureLP(10, 5, 2, criterion, solver=solver)
        for seed in range(2):
            u, g, v = instance(10, 5, 2, seed)
            r = lp.solve(u, g, v, 0.01)
            assert r.status == "optimal"
            assert r.objective == pytest.approx(reference_lp(u, g, v, 2, criterion, 0.01), abs=atol)
            if atol < 1e-6:
                check_decomposition(r.P, birkhoff_von_neumann(r.P))


@pytest.mark.parametrize("criterion", CRITERIA)
def test_resolve_with_new_parameters_equals_a_fresh_build(criterion):
    M, K, G = 15, 8, 2
    reused = ExposureLP(M, K, G, criterion)
    reused.solve(*instance(M, K, G, seed=0), 0.05)
    for seed in (1, 2):
        u, g, v = instance(M, K, G, seed)
        v = v * (1 + 0.1 * seed)  # new position weights too
        a = reused.solve(u, g, v, 0.01 * seed)
        b = ExposureLP(M, K, G, criterion).solve(u, g, v, 0.01 * seed)
        assert a.status == b.status == "optimal"
        # Same optimum; P agrees to the interior-point solver's accuracy (not bit for bit: the
        # re-solve's problem data comes from the cached parameter tensor, not a fresh compile).
        assert a.objective == pytest.approx(b.objective, abs=1e-9)
        np.testing.assert_allclose(a.P, b.P, atol=1e-6)


# --- Birkhoff-von Neumann and sampling -----------------------------------------------------------

def check_decomposition(P: np.ndarray, dec) -> None:
    M, K = P.shape
    weights = np.array([w for w, _ in dec])
    assert np.all(weights > 0)
    assert math.fsum(weights) == pytest.approx(1.0, abs=1e-12)
    X = np.zeros((M, K))
    for w, ranking in dec:
        assert ranking.shape == (K,) and ranking.dtype == np.int64
        assert len(set(ranking.tolist())) == K and ranking.min() >= 0 and ranking.max() < M
        X += w * as_matrix(ranking, M)
    assert np.abs(X - P).max() < 1e-7


def test_bvn_hand_made_matrices():
    # Half identity, half swap: exactly two rankings with weight 1/2.
    dec = birkhoff_von_neumann(np.array([[0.5, 0.5], [0.5, 0.5]]))
    assert sorted((round(w, 12), r.tolist()) for w, r in dec) == [(0.5, [0, 1]), (0.5, [1, 0])]
    P = np.array([[0.2, 0.3, 0.5], [0.8, 0.0, 0.2], [0.0, 0.7, 0.3]])
    check_decomposition(P, birkhoff_von_neumann(P))
    # K < M: 3 items, 1 position; item 2 never shown.
    dec = birkhoff_von_neumann(np.array([[0.25], [0.75], [0.0]]))
    assert sorted((w, r.tolist()) for w, r in dec) == [(0.25, [0]), (0.75, [1])]
    # A permutation matrix is its own decomposition (column j holds a 1 in row perm[j]).
    dec = birkhoff_von_neumann(np.eye(4)[:, [2, 0, 3, 1]])
    assert len(dec) == 1 and dec[0][0] == 1.0 and dec[0][1].tolist() == [2, 0, 3, 1]


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("M, K", [(20, 20), (20, 10), (50, 10)])
def test_bvn_reconstructs_lp_solutions(criterion, M, K):
    u, g, v = instance(M, K, 2, seed=5)
    r = ExposureLP(M, K, 2, criterion).solve(u, g, v, 0.01)
    assert r.status == "optimal"
    check_decomposition(r.P, birkhoff_von_neumann(r.P))


def test_sampling_is_reproducible_and_matches_expected_exposure():
    M, K, G = 12, 6, 3
    u, g, v = instance(M, K, G, seed=11)
    r = ExposureLP(M, K, G).solve(u, g, v, 0.0)
    dec = birkhoff_von_neumann(r.P)
    assert len(dec) > 1  # a genuinely stochastic ranking
    draws = []
    for _ in range(2):
        rng = np.random.default_rng(42)
        draws.append([sample_ranking(dec, rng).tolist() for _ in range(50)])
    assert draws[0] == draws[1]
    assert len({tuple(x) for x in draws[0]}) > 1
    # Empirical exposure of many samples -> expected exposure (per group, in total).
    n = 20_000
    rng = np.random.default_rng(0)
    exposure = np.zeros(G)
    for _ in range(n):
        ranking = sample_ranking(dec, rng)
        np.add.at(exposure, g[ranking], v)
    exposure /= n
    expected = expected_exposure(r.P, v, g, G)
    # Per-sample group exposure lies in [0, sum(v)]; 4 standard errors of that range / sqrt(n).
    assert np.abs(exposure - expected).max() < 4 * v.sum() / 2 / math.sqrt(n)
    np.testing.assert_allclose(expected / np.bincount(g, minlength=G),
                               r.mean_exposure_by_group, atol=1e-12)
    assert r.disparity == pytest.approx(0.0, abs=1e-7)


def test_bvn_rejects_a_wide_matrix():
    with pytest.raises(ValueError, match=r"P: must be a 2-D \[M, K\] matrix with K <= M, got shape \(2, 3\)"):
        birkhoff_von_neumann(np.full((2, 3), 0.5))


def test_sample_ranking_returns_a_copy_and_rejects_empty():
    dec = [(1.0, np.array([2, 0]))]
    x = sample_ranking(dec, np.random.default_rng(0))
    x[0] = 9
    assert dec[0][1].tolist() == [2, 0]
    with pytest.raises(ValueError, match="decomposition: must hold at least one"):
        sample_ranking([], np.random.default_rng(0))
