"""Similarity diversity (MMR, DPP), coverage and calibration: the greedy kernel against its slow
twin, the evaluation against the definitions, and the equivalences with Chen, Zhang & Zhou
(2018)'s greedy MAP and classic MMR written in numpy."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solvers.evaluate import diversity_terms, evaluate
from solvers.greedy import solve_greedy, warmup
from solvers.codes import (
    CALIBRATION, CALIBRATION_ALPHA, COVERAGE, DIV_DPP, DIV_MMR, DPP_EPS, KIND_NAMES, MAX_COUNT, PIN,
    WINDOW,
)
from tests import naive
from testing.random_problems import make_problem, random_embeddings, random_problem
from tests.test_greedy import _check_against_twin, _check_valid


# --- kernel vs twin ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0, DIV_MMR, DIV_DPP])
@pytest.mark.parametrize("seed", range(150))
def test_kernel_matches_twin(seed, mode):
    problem = random_problem(seed, ties=seed % 3 == 0, div_mode=mode, extras=1 + seed % 3)
    result = _check_against_twin(problem)
    _check_valid(problem, result)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 35), k=st.integers(1, 14),
       rules=st.integers(0, 7), ties=st.booleans(), mode=st.sampled_from([DIV_MMR, DIV_DPP]),
       extras=st.integers(0, 3))
def test_kernel_matches_twin_property(seed, n, k, rules, ties, mode, extras):
    problem = random_problem(seed, n=n, k=k, n_rules=rules, ties=ties, div_mode=mode, extras=extras)
    result = _check_against_twin(problem)
    _check_valid(problem, result)
    # same input, same slate
    assert solve_greedy(problem).slate.tolist() == result.slate.tolist()


@pytest.mark.parametrize("seed", range(100))
def test_evaluate_matches_definitions(seed):
    problem = random_problem(seed, div_mode=1 + seed % 2, extras=2)
    rng = np.random.default_rng(seed)
    slate = rng.permutation(problem.n)[: problem.length]
    ev = evaluate(problem, slate)
    violation, slack = naive.constraint_status(problem, slate.tolist())
    assert ev.violation.tolist() == pytest.approx(violation, abs=1e-12)
    assert ev.slack.tolist() == pytest.approx(slack, abs=1e-12)
    div = naive.diversity_terms(problem, slate.tolist())
    assert diversity_terms(problem, slate).tolist() == pytest.approx(div, abs=1e-9)
    pw = problem.position_weight[: len(slate)]
    assert ev.diversity_part == pytest.approx(float(pw @ div), abs=1e-9)
    assert ev.objective == pytest.approx(naive.objective(problem, slate.tolist()), abs=1e-9)
    assert ev.diversity_part <= 0.0


# --- equivalences with the published algorithms --------------------------------------------------

def _unit(emb):
    v = emb.astype(np.float64)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def chen_greedy_map(kernel: np.ndarray, k: int, eps: float = 1e-10) -> list[int]:
    """Chen, Zhang & Zhou (2018), Algorithm 1: fast greedy MAP inference with incremental
    Cholesky updates of the c-vectors and d_i^2 (vectorised numpy, as in their reference code)."""
    N = kernel.shape[0]
    cis = np.zeros((k, N))
    di2s = np.diag(kernel).copy()
    selected = [int(np.argmax(di2s))]
    while len(selected) < k:
        j = selected[-1]
        t = len(selected) - 1
        eis = (kernel[j] - cis[:t, j] @ cis[:t]) / math.sqrt(di2s[j])
        cis[t] = eis
        di2s -= eis ** 2
        di2s[selected] = -np.inf
        nxt = int(np.argmax(di2s))
        if di2s[nxt] < eps:
            break
        selected.append(nxt)
    return selected


def windowed_map(kernel: np.ndarray, k: int, w: int) -> list[int]:
    """Chen et al.'s sliding-window greedy, from its definition: the next item maximises
    det(L_{W + i}) / det(L_W) over the last w selected items W."""
    selected: list[int] = []
    for _ in range(k):
        W = selected[-w:]
        base = np.linalg.slogdet(kernel[np.ix_(W, W)])[1] if W else 0.0
        best, best_v = -1, -np.inf
        for i in range(kernel.shape[0]):
            if i in selected:
                continue
            idx = W + [i]
            v = np.linalg.slogdet(kernel[np.ix_(idx, idx)])[1] - base
            if v > best_v:
                best, best_v = i, v
        selected.append(best)
    return selected


def classic_mmr(u: np.ndarray, sim: np.ndarray, k: int, lam: float) -> list[int]:
    """MMR (Carbonell & Goldstein 1998): argmax lam * rel - (1 - lam) * max similarity to the
    selected items, the similarity clipped at 0."""
    N = u.shape[0]
    mx = np.zeros(N)
    used = np.zeros(N, dtype=bool)
    out = []
    for _ in range(k):
        score = lam * u - (1 - lam) * mx
        score[used] = -np.inf
        j = int(np.argmax(score))
        out.append(j)
        used[j] = True
        mx = np.maximum(mx, sim[j])
    return out


def _diversity_problem(u, emb, k, mode, beta, window=0):
    L = min(k, u.shape[0])
    pw = 1.0 / np.log2(np.arange(2, L + 2))
    return make_problem(u, pw, np.zeros((1, u.shape[0]), dtype=np.int64), [1], [],
                        embeddings=emb, div_mode=mode, div_weight=beta, div_window=window)


@pytest.mark.parametrize("seed", range(40))
def test_dpp_is_chen_greedy_map(seed):
    rng = np.random.default_rng(seed)
    N = int(rng.integers(5, 120))
    k = int(rng.integers(1, 16))
    d = int(rng.integers(k, 3 * k + 2))  # d >= k: Chen's algorithm never stops early
    u = rng.normal(size=N)
    emb = rng.normal(size=(N, d)).astype(np.float32)
    beta = float(rng.uniform(0.2, 2.0))
    ours = solve_greedy(_diversity_problem(u, emb, k, DIV_DPP, beta)).slate.tolist()
    S = _unit(emb) @ _unit(emb).T
    q = np.exp(u / (2 * beta))
    kernel = q[:, None] * S * q[None, :]
    assert ours == chen_greedy_map(kernel, min(k, N))


@pytest.mark.parametrize("seed", range(25))
def test_dpp_window_is_chens_sliding_window(seed):
    rng = np.random.default_rng(seed)
    N = int(rng.integers(5, 40))
    k = int(rng.integers(2, 12))
    w = int(rng.integers(1, 5))
    u = rng.normal(size=N)
    emb = rng.normal(size=(N, w + 3)).astype(np.float32)
    beta = float(rng.uniform(0.2, 2.0))
    ours = solve_greedy(_diversity_problem(u, emb, k, DIV_DPP, beta, w)).slate.tolist()
    S = _unit(emb) @ _unit(emb).T
    np.fill_diagonal(S, 1.0)
    q = np.exp(u / (2 * beta))
    assert ours == windowed_map(q[:, None] * S * q[None, :], min(k, N), w)


@pytest.mark.parametrize("seed", range(40))
def test_mmr_is_classic_mmr(seed):
    rng = np.random.default_rng(seed)
    N = int(rng.integers(2, 150))
    k = int(rng.integers(1, 20))
    u = rng.gamma(2.0, 1.0, size=N)
    emb = random_embeddings(rng, N) if seed % 2 else rng.normal(size=(N, 16)).astype(np.float32)
    beta = float(rng.uniform(0.1, 3.0))
    ours = solve_greedy(_diversity_problem(u, emb, k, DIV_MMR, beta)).slate.tolist()
    sim = np.maximum(_unit(emb) @ _unit(emb).T, 0.0)
    assert ours == classic_mmr(u, sim, min(k, N), 1.0 / (1.0 + beta))


# --- edge cases ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [DIV_MMR, DIV_DPP])
def test_zero_embeddings_change_nothing(mode):
    rng = np.random.default_rng(0)
    u = rng.normal(size=30)
    emb = np.zeros((30, 8), dtype=np.float32)
    problem = _diversity_problem(u, emb, 10, mode, 1.0)
    result = solve_greedy(problem)
    assert result.slate.tolist() == np.argsort(-u, kind="stable")[:10].tolist()
    ev = evaluate(problem, result.slate)
    assert ev.diversity_part == 0.0 and np.isfinite(ev.objective)


@pytest.mark.parametrize("window", [0, 2])
def test_dpp_goes_on_by_utility_once_the_span_is_full(window):
    # d = 2: after two picks every residual is ~0 (floored at DPP_EPS), so utility decides
    rng = np.random.default_rng(3)
    u = rng.normal(size=20)
    emb = rng.normal(size=(20, 2)).astype(np.float32)
    problem = _diversity_problem(u, emb, 12, DIV_DPP, 0.5, window)
    slate = solve_greedy(problem).slate.tolist()
    assert len(set(slate)) == 12
    div = diversity_terms(problem, np.array(slate))
    if window == 0:
        assert div[2:] == pytest.approx(0.5 * math.log(DPP_EPS))
        rest = [i for i in np.argsort(-u, kind="stable").tolist() if i not in slate[:2]]
        assert slate[2:] == rest[:10]
    assert np.all(np.isfinite(div))


def test_full_span_puts_zero_rows_first():
    # d = 2: once two items span the plane every other residual is 0 (floored), but a zero row
    # (no embedding) has residual 1 and div 0, so the two zero rows come next, then utility
    u = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 1.0, 0.5])
    emb = np.array([[1, 0], [0.6, 0.8], [0, 1], [1, 1], [2, 1], [0, 0], [0, 0]], dtype=np.float32)
    problem = _diversity_problem(u, emb, 6, DIV_DPP, 1.0)
    slate = solve_greedy(problem).slate.tolist()
    assert slate == [0, 1, 5, 6, 2, 3]
    assert _check_against_twin(problem).slate.tolist() == slate
    div = diversity_terms(problem, np.array(slate))
    assert div.tolist() == pytest.approx([0.0, math.log(0.64), 0.0, 0.0, math.log(DPP_EPS),
                                          math.log(DPP_EPS)])


def test_duplicates_are_pushed_down():
    u = np.array([3.0, 2.9, 1.0, 0.5])
    emb = np.array([[1, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    for mode in (DIV_MMR, DIV_DPP):
        slate = solve_greedy(_diversity_problem(u, emb, 3, mode, 2.0)).slate.tolist()
        assert slate[:2] == [0, 2], mode  # the copy of item 0 loses to the orthogonal item


def test_zero_weight_is_no_diversity():
    for seed in range(30):
        p = random_problem(seed, div_mode=DIV_DPP, extras=1)
        off = replace(p, div_weight=0.0)
        assert not off.diversity_on
        plain = replace(p, div_mode=0)
        assert solve_greedy(off).slate.tolist() == solve_greedy(plain).slate.tolist()
        assert evaluate(off, solve_greedy(off).slate).diversity_part == 0.0


def test_pinned_item_counts_above_the_next_positions():
    # item 1 (a copy of item 0's direction) is pinned first: item 0 then pays for the similarity
    u = np.array([3.0, 0.1, 2.5, 0.2])
    emb = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    rows = [dict(kind=PIN, attr=-1, value=-1, bound=0, top=3, size=0, hard=True, penalty=0.0,
                 priority=0, item=1, position=0)]
    pw = [1.0, 1.0, 1.0]
    problem = make_problem(u, pw, np.zeros((1, 4), dtype=np.int64), [1], rows,
                           embeddings=emb, div_mode=DIV_MMR, div_weight=1.0)
    assert solve_greedy(problem).slate.tolist() == [1, 2, 0]
    assert _check_against_twin(problem).slate.tolist() == [1, 2, 0]


def test_diversity_composes_with_hard_rules():
    rng = np.random.default_rng(7)
    n = 200
    u = rng.gamma(2.0, 1.0, size=n)
    cat = rng.integers(0, 5, size=n)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    rows = [dict(kind=MAX_COUNT, attr=0, value=-1, bound=2, top=10, size=0, hard=True, penalty=0.0,
                 priority=0, item=-1, position=-1),
            dict(kind=WINDOW, attr=0, value=-1, bound=1, top=10, size=2, hard=True, penalty=0.0,
                 priority=0, item=-1, position=-1)]
    for mode in (DIV_MMR, DIV_DPP):
        problem = make_problem(u, np.ones(10), cat[None, :], [5], rows, embeddings=emb,
                               div_mode=mode, div_weight=1.0)
        result = solve_greedy(problem)
        assert not result.relaxed.any()
        ev = evaluate(problem, result.slate)
        assert ev.violation.tolist() == [0.0, 0.0]


# --- coverage and calibration --------------------------------------------------------------------

def _soft(kind, **kw):
    return {**dict(kind=kind, attr=0, value=-1, bound=0, top=3, size=0, hard=False, penalty=1.5,
                   priority=0, item=-1, position=-1), **kw}


def test_coverage_rewards_new_values():
    u = np.array([5.0, 4.0, 3.0, 2.0])
    codes = np.array([[0, 0, 1, 2]])
    problem = make_problem(u, [1.0, 1.0, 1.0], codes, [3], [_soft(COVERAGE)])
    result = solve_greedy(problem)
    # 0 (5 + 1.5), then 2 (3 + 1.5 beats 4), then 1 (4 beats 2 + 1.5)
    assert result.slate.tolist() == [0, 2, 1]
    ev = evaluate(problem, result.slate)
    assert ev.violation.tolist() == [1.0]  # 2 of min(3, 3) values covered
    assert ev.objective == pytest.approx(12.0 - 1.5)


def test_coverage_cannot_exceed_what_the_candidates_hold():
    problem = make_problem(np.array([3.0, 2.0, 1.0]), [1.0, 1.0, 1.0], np.array([[0, 0, 1]]), [4],
                           [_soft(COVERAGE)])
    ev = evaluate(problem, solve_greedy(problem).slate)
    assert ev.violation.tolist() == [0.0]  # 2 values exist, both covered


def test_calibration_follows_the_target():
    u = np.array([5.0, 4.9, 4.8, 4.7, 1.0, 0.9])
    codes = np.array([[0, 0, 0, 0, 1, 1]])
    row = _soft(CALIBRATION, top=4, penalty=100.0, target=[0.5, 0.5])
    problem = make_problem(u, [1.0] * 4, codes, [2], [row])
    result = solve_greedy(problem)
    assert sorted(codes[0, result.slate].tolist()) == [0, 0, 1, 1]
    ev = evaluate(problem, result.slate)
    assert ev.violation[0] == pytest.approx(0.0, abs=1e-12)
    # without the rule: all four of value 0, q~ = (0.99 * 1 + 0.005, 0.005)
    plain = np.array([0, 1, 2, 3])
    q = np.array([(1 - CALIBRATION_ALPHA) * 1.0 + CALIBRATION_ALPHA * 0.5, CALIBRATION_ALPHA * 0.5])
    expected = 0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1])
    assert evaluate(problem, plain).violation[0] == pytest.approx(expected)


def test_calibration_zero_target_values_and_empty_prefix():
    codes = np.array([[0, 1, 2]])
    row = _soft(CALIBRATION, top=1, target=[1.0, 0.0, 0.0])
    problem = make_problem(np.array([1.0, 2.0, 3.0]), [1.0], codes, [3], [row])
    assert evaluate(problem, np.array([0])).violation[0] == pytest.approx(0.0)
    worst = -math.log(CALIBRATION_ALPHA)  # all of the target's mass on an absent value
    assert evaluate(problem, np.array([2])).violation[0] == pytest.approx(worst)
    empty = make_problem(np.zeros(0), [], np.zeros((1, 0), dtype=np.int64), [3], [row])
    assert evaluate(empty, np.zeros(0, dtype=np.int64)).violation[0] == pytest.approx(worst)


def test_kind_names_and_exact_unsupported():
    from solvers.exact import exact_unsupported

    assert KIND_NAMES[COVERAGE] == "coverage" and KIND_NAMES[CALIBRATION] == "calibration"
    assert not exact_unsupported(random_problem(1))
    # coverage has an exact model (one soft "at least one of value v" row per value); calibration's
    # KL divergence and similarity diversity do not, and say so
    assert exact_unsupported(random_problem(1, extras=1)) is None  # a coverage row
    assert "calibration" in exact_unsupported(random_problem(5, extras=1))
    assert "mmr" in exact_unsupported(random_problem(1, n=10, div_mode=DIV_MMR))


# --- input checks --------------------------------------------------------------------------------

def _base():
    return random_problem(5, n=10, k=4, n_rules=0, div_mode=DIV_DPP)


@pytest.mark.parametrize("change, message", [
    (dict(embeddings=None), "embeddings: required when div_mode is set, got None"),
    (dict(embeddings=np.zeros((3, 2), dtype=np.float32)),
     "embeddings: must have shape (N, d) with N = 10 candidates, got (3, 2)"),
    (dict(div_mode=7), "div_mode: must be 0 (none), 1 (mmr) or 2 (dpp), got 7"),
    (dict(div_weight=-1.0), "div_weight: must be a finite number >= 0, got -1.0"),
    (dict(div_window=-2), "div_window: must be an integer >= 0, got -2"),
])
def test_bad_diversity_settings(change, message):
    with pytest.raises(ValueError) as e:
        solve_greedy(replace(_base(), **change))
    assert str(e.value) == message


def test_evaluate_needs_the_embeddings():
    problem = replace(_base(), embeddings=None)
    with pytest.raises(ValueError) as e:
        evaluate(problem, np.arange(4))
    assert str(e.value) == "embeddings: required when div_mode is set, got None"


@pytest.mark.parametrize("row, message", [
    (_soft(COVERAGE, hard=True),
     "constraints[0] (coverage): must be soft (hard=False), got hard=True"),
    (_soft(COVERAGE, penalty=-1.0), "constraints[0] (coverage).penalty: must be >= 0, got -1.0"),
    (_soft(CALIBRATION, target=[0.5, 0.2]),
     "constraints[0] (calibration).target: must be shares >= 0 summing to 1, got [0.5, 0.2]"),
    (_soft(CALIBRATION, target=[1.0]),
     "constraints[0] (calibration).target: must have one share per value (2), got 1"),
])
def test_bad_soft_rows(row, message):
    problem = make_problem(np.array([1.0, 2.0]), [1.0], np.array([[0, 1]]), [2], [row])
    with pytest.raises(ValueError) as e:
        solve_greedy(problem)
    assert str(e.value) == message


def test_warmup_compiles_the_new_paths():
    warmup()  # must not raise; compiles (or loads) every kernel signature
