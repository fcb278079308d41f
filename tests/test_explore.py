"""Exploration sampling: the kernel against its slow twin, validity, the greedy as the limit,
the propensities against exact enumeration and against 20,000 seeded draws, seeds across
processes, and argument checks."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from solvers import _explore_kernels
from solvers.codes import ALL_VALUES, MAX_COUNT, MIN_COUNT, PIN, WINDOW
from solvers.evaluate import evaluate
from solvers.explore import (
    EXPLORE_EPSILON, EXPLORE_SOFTMAX, marginals, sample_slate,
)
from solvers.greedy import solve_greedy
from tests import naive_explore
from testing.random_problems import make_problem, random_problem

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [dict(scheme=EXPLORE_EPSILON, epsilon=0.3, top_m=3),
            dict(scheme=EXPLORE_EPSILON, epsilon=1.0, top_m=100),
            dict(scheme=EXPLORE_SOFTMAX, temperature=0.5),
            dict(scheme=EXPLORE_SOFTMAX, temperature=0.01),
            dict(scheme=EXPLORE_SOFTMAX, temperature=0.5, top_m=3),
            dict(scheme=EXPLORE_EPSILON, epsilon=0.5)]


def _check_against_twin(problem, seed, kw):
    r = sample_slate(problem, seed=seed, **kw)
    tw = naive_explore.sample(problem, seed=seed, **kw)
    assert r.slate.tolist() == tw["slate"]
    np.testing.assert_allclose(r.slot_prob, tw["slot_prob"], rtol=1e-9, atol=0)
    assert r.support.tolist() == tw["support"]
    assert r.relaxed.tolist() == tw["relaxed"]
    assert r.relax_reason.tolist() == tw["reason"]
    assert r.relax_position[r.relaxed].tolist() == [
        q for q, x in zip(tw["relax_pos"], tw["relaxed"]) if x]
    return r


def _check_valid(problem, r):
    slate = r.slate.tolist()
    assert len(slate) == problem.length and len(set(slate)) == len(slate)
    assert all(0 <= i < problem.n for i in slate)
    ev = evaluate(problem, r.slate)
    t = problem.constraints
    for c in range(t.n):
        if t.hard[c] and not r.relaxed[c]:
            assert ev.violation[c] == 0, f"hard rule {c} (kind {t.kind[c]}) broken, not reported"
    assert np.all((r.slot_prob > 0) & (r.slot_prob <= 1))
    assert r.cascade.tolist() == np.cumprod(r.slot_prob).tolist()
    assert r.joint == pytest.approx(float(np.exp(r.log_joint)), rel=1e-12)


@pytest.mark.parametrize("seed", range(300))
def test_kernel_matches_twin_random(seed):
    problem = random_problem(seed, ties=seed % 3 == 0)
    for k, kw in enumerate(SETTINGS):
        _check_valid(problem, _check_against_twin(problem, 7 * seed + k, kw))


@pytest.mark.parametrize("seed", range(120))
def test_kernel_matches_twin_with_diversity_and_soft_extras(seed):
    # small N: the twin's DPP residuals are linear solves per candidate and position
    n = int(np.random.default_rng(seed).integers(0, 11))
    problem = random_problem(seed, n=n, div_mode=1 + seed % 2, extras=seed % 3)
    for k, kw in enumerate(SETTINGS[:1] + SETTINGS[2:3] + SETTINGS[4:5]):
        _check_valid(problem, _check_against_twin(problem, seed + k, kw))


@pytest.mark.parametrize("seed", range(200))
def test_no_exploration_is_the_greedy(seed):
    problem = random_problem(seed, ties=seed % 2 == 0, div_mode=(0, 0, 1, 2)[seed % 4],
                             extras=seed % 2)
    g = solve_greedy(problem)
    for kw in (dict(scheme=EXPLORE_EPSILON, epsilon=0.0, top_m=5),
               dict(scheme=EXPLORE_EPSILON, epsilon=0.7, top_m=1)):
        r = sample_slate(problem, seed=seed, **kw)
        assert r.slate.tolist() == g.slate.tolist()
        assert r.relaxed.tolist() == g.relaxed.tolist()
        assert r.relax_reason.tolist() == g.relax_reason.tolist()
        assert r.relax_position[r.relaxed].tolist() == g.relax_position[g.relaxed].tolist()
        assert r.slot_prob.tolist() == [1.0] * problem.length and r.joint == 1.0
        assert r.deterministic
    if seed % 2:  # no exact ties among the utilities: a tiny temperature is the argmax
        r = sample_slate(problem, scheme=EXPLORE_SOFTMAX, temperature=1e-9, seed=seed)
        assert r.slate.tolist() == g.slate.tolist()
        assert r.relaxed.tolist() == g.relaxed.tolist()


def _lookahead_problem(seed):
    """N = 40, K = 8: two hard prefix minimums on different attributes whose matches overlap (an
    item can serve both), a category cap, a seller window, sometimes a pin and a soft minimum:
    the look-ahead soon admits only the matches of the rules with a need left."""
    rng = np.random.default_rng(seed)
    n, k = 40, 8
    u = np.round(rng.gamma(2.0, 1.0, size=n), 2 if seed % 2 else 6)  # ties when rounded
    codes = np.stack([rng.integers(0, 5, n), (rng.random(n) < 0.15).astype(np.int64),
                      (rng.random(n) < 0.2).astype(np.int64), rng.integers(0, 6, n)])
    pw = 1.0 / np.log2(np.arange(2, k + 2))
    rows = [dict(kind=MAX_COUNT, attr=0, value=ALL_VALUES, bound=2, top=k),
            dict(kind=MIN_COUNT, attr=1, value=1, bound=2, top=5),
            dict(kind=MIN_COUNT, attr=2, value=1, bound=3, top=7, priority=1),
            dict(kind=WINDOW, attr=3, value=ALL_VALUES, bound=1, size=2)]
    if seed % 3 == 0:
        rows.append(dict(kind=PIN, item=int(np.argmin(u)), position=2))
    if seed % 4 == 1:
        rows.append(dict(kind=MIN_COUNT, attr=0, value=3, bound=2, top=6, hard=False, penalty=0.4))
    return make_problem(u, pw, codes, [5, 2, 2, 6], rows)


@pytest.mark.parametrize("seed", range(40))
def test_kernel_matches_twin_where_the_lookahead_binds(seed):
    # the look-ahead's short cut (only the matches of rules with a need left are examined, an
    # item matching two such rules once), for every scheme, against the twin's full scan
    problem = _lookahead_problem(seed)
    for k, kw in enumerate(SETTINGS + [dict(scheme=EXPLORE_SOFTMAX, temperature=2.0)]):
        _check_valid(problem, _check_against_twin(problem, 11 * seed + k, kw))


def test_splitmix64_vectors():
    # the first outputs of Vigna's splitmix64.c seeded with 1234567
    expected = [6457827717110365317, 3203168211198807973, 9817491932198370423,
                4593380528125082431, 16408922859458223821]
    state = np.array([1234567], dtype=np.uint64)
    assert [int(_explore_kernels.splitmix64(state)) for _ in range(5)] == expected
    twin = naive_explore.SplitMix64(1234567)
    assert [twin.next() for _ in range(5)] == expected


def test_exp_nonpos_is_within_one_ulp_of_exp():
    rng = np.random.default_rng(3)
    x = np.concatenate([-rng.random(100_000) * 60.0, -rng.random(1000) * 700.0,
                        [0.0, -0.0, -1e-300, -5e-324, -np.log(2) / 2, -np.log(2) * 3 / 2, -50.0,
                         -700.0]])
    y = x.copy()
    bits = np.empty(x.size, dtype=np.int64)
    _explore_kernels.exp_nonpos(y, x.size, bits, bits.view(np.float64))
    ref = np.array([math.exp(v) for v in x])
    assert y[-8:-4].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert np.max(np.abs(y - ref) / np.spacing(ref)) <= 1.0
    y = np.array([-750.0, -1e6, -np.inf])  # below -700: as at -700 (never in a softmax support)
    bits = np.empty(3, dtype=np.int64)
    _explore_kernels.exp_nonpos(y, 3, bits, bits.view(np.float64))
    assert y.tolist() == [math.exp(-700.0)] * 3


def _tiny_problem():
    """N = 12, K = 4: at most one per category (4 categories) in the slate, and no two adjacent
    items of one seller (3 sellers)."""
    rng = np.random.default_rng(11)
    n, k = 12, 4
    u = np.round(rng.normal(size=n), 3)
    codes = np.stack([np.arange(n) % 4, (np.arange(n) // 2) % 3]).astype(np.int64)
    pw = 1.0 / np.log2(np.arange(2, k + 2))
    rows = [dict(kind=MAX_COUNT, attr=0, value=ALL_VALUES, bound=1, top=k),
            dict(kind=WINDOW, attr=1, value=ALL_VALUES, bound=1, size=2)]
    return make_problem(u, pw, codes, [4, 3], rows)


def _z(freq, q, S):
    with np.errstate(divide="ignore", invalid="ignore"):  # q = 0 entries are masked out
        return (freq - q) / np.sqrt(q * (1.0 - q) / S)


def _judge(zs, what):
    """Every comparison with an expected count >= 10: at most 1 % beyond 3 SE (0.27 % expected
    by chance over hundreds of comparisons), none beyond 5 SE."""
    zs = np.asarray(zs)
    beyond = float(np.mean(np.abs(zs) > 3)) if zs.size else 0.0
    print(f"{what}: {zs.size} compared, max |z| {np.abs(zs).max():.2f}, beyond 3 SE {beyond:.2%}")
    assert zs.size > 0
    assert beyond <= 0.01, what
    assert np.abs(zs).max() < 5, what


@pytest.mark.parametrize("kw", [dict(scheme=EXPLORE_EPSILON, epsilon=0.4, top_m=4),
                                dict(scheme=EXPLORE_SOFTMAX, temperature=0.7),
                                dict(scheme=EXPLORE_SOFTMAX, temperature=0.7, top_m=3)],
                         ids=["epsilon", "softmax", "softmax-top3"])
def test_propensities_agree_with_20000_draws_and_exact_enumeration(kw):
    problem = _tiny_problem()
    K, S = problem.length, 20_000
    law = naive_explore.exact_law(problem, **kw)  # every slate with its exact probability
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-12)
    exact_prefix = Counter()
    exact_marg = np.zeros((problem.n, K))
    for slate, q in law.items():
        for k in range(1, K + 1):
            exact_prefix[slate[:k]] += q
        for p, i in enumerate(slate):
            exact_marg[i, p] += q

    prefixes = Counter()
    reported: dict[tuple, float] = {}
    freq = np.zeros((problem.n, K))
    for s in range(S):
        r = sample_slate(problem, seed=s, **kw)
        assert not r.relaxed.any()
        slate = tuple(r.slate.tolist())
        for k in range(1, K + 1):
            prefixes[slate[:k]] += 1
            # the reported cascade is the exact probability of the prefix, the same every time
            assert reported.setdefault(slate[:k], r.cascade[k - 1]) == r.cascade[k - 1]
            assert r.cascade[k - 1] == pytest.approx(exact_prefix[slate[:k]], rel=1e-12)
        freq[r.slate, np.arange(K)] += 1
    assert set(prefixes) <= set(exact_prefix)
    _judge([_z(n / S, reported[pre], S) for pre, n in prefixes.items() if reported[pre] * S >= 10],
           f"{kw['scheme']} prefixes vs reported cascade")
    mask = exact_marg * S >= 10
    _judge(_z(freq / S, exact_marg, S)[mask], f"{kw['scheme']} item at position vs exact")

    # the Monte Carlo marginals of one drawn slate, against the enumeration
    r = sample_slate(problem, seed=123, **kw)
    m = marginals(problem, r.slate, samples=S, seed=99, **kw)
    assert not m.exact and m.samples == S
    q = exact_marg[r.slate, np.arange(K)]
    assert np.all(np.abs(m.prob - q) <= 3 * np.sqrt(q * (1 - q) / S) + 1e-12), (m.prob, q)
    np.testing.assert_allclose(m.stderr, np.sqrt(m.prob * (1 - m.prob) / S))
    assert m.frequency.sum(axis=0).tolist() == pytest.approx([1.0] * K)
    assert set(m.items.tolist()) <= set(np.flatnonzero(exact_marg.any(axis=1)).tolist())


def test_marginals_are_exact_when_nothing_varies():
    problem = _tiny_problem()
    g = solve_greedy(problem).slate
    for kw in (dict(scheme=EXPLORE_EPSILON, epsilon=0.0, top_m=3),
               dict(scheme=EXPLORE_EPSILON, epsilon=0.5, top_m=1),
               dict(scheme=EXPLORE_SOFTMAX, temperature=1e-6)):
        m = marginals(problem, g, samples=1000, seed=5, **kw)
        assert m.exact and m.samples == 0
        assert m.prob.tolist() == [1.0] * problem.length and m.stderr.tolist() == [0.0] * 4
        other = g.copy()
        other[0] = next(i for i in range(problem.n) if i not in g)
        assert marginals(problem, other, samples=10, seed=5, **kw).prob[0] == 0.0


_SUBPROCESS = """
import json, sys
from testing.random_problems import random_problem
from solvers.explore import sample_slate
out = []
for seed in range(20):
    p = random_problem(seed)
    for kw in ({"scheme": 1, "epsilon": 0.5, "top_m": 4}, {"scheme": 2, "temperature": 0.4}):
        r = sample_slate(p, seed=2**63 + seed, **kw)
        out.append([r.slate.tolist(), r.slot_prob.tolist()])
print(json.dumps(out))
"""


def test_same_seed_same_slate_also_in_another_process():
    import json

    here = []
    for seed in range(20):
        p = random_problem(seed)
        for kw in (dict(scheme=EXPLORE_EPSILON, epsilon=0.5, top_m=4),
                   dict(scheme=EXPLORE_SOFTMAX, temperature=0.4)):
            a = sample_slate(p, seed=2**63 + seed, **kw)
            b = sample_slate(p, seed=2**63 + seed, **kw)
            assert a.slate.tolist() == b.slate.tolist() and a.slot_prob.tolist() == b.slot_prob.tolist()
            here.append([a.slate.tolist(), a.slot_prob.tolist()])
    out = subprocess.run([sys.executable, "-c", _SUBPROCESS], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert json.loads(out.stdout) == here
    # and different seeds do differ somewhere
    p = _tiny_problem()
    slates = {tuple(sample_slate(p, scheme=EXPLORE_SOFTMAX, temperature=0.7, seed=s).slate.tolist())
              for s in range(50)}
    assert len(slates) > 5


@pytest.mark.parametrize("kw, message", [
    (dict(scheme=3), "scheme: must be 1 (EXPLORE_EPSILON) or 2 (EXPLORE_SOFTMAX), got 3"),
    (dict(scheme=EXPLORE_EPSILON, epsilon=-0.1, top_m=2), "epsilon: must be a number in [0, 1], got -0.1"),
    (dict(scheme=EXPLORE_EPSILON, epsilon=1.5, top_m=2), "epsilon: must be a number in [0, 1], got 1.5"),
    (dict(scheme=EXPLORE_EPSILON, epsilon=float("nan"), top_m=2), "epsilon: must be a number in [0, 1], got nan"),
    (dict(scheme=EXPLORE_EPSILON, epsilon=0.1, top_m=0), "top_m: must be an integer >= 1 or None (all), got 0"),
    (dict(scheme=EXPLORE_SOFTMAX, temperature=0.0), "temperature: must be a finite number > 0, got 0.0"),
    (dict(scheme=EXPLORE_SOFTMAX, temperature=-1.0), "temperature: must be a finite number > 0, got -1.0"),
    (dict(scheme=EXPLORE_SOFTMAX, temperature=float("inf")), "temperature: must be a finite number > 0, got inf"),
    (dict(scheme=EXPLORE_SOFTMAX), "temperature: must be a finite number > 0, got None"),
])
def test_bad_arguments_are_refused_with_their_name(kw, message):
    problem = _tiny_problem()
    with pytest.raises(ValueError) as err:
        sample_slate(problem, seed=1, **kw)
    assert str(err.value) == message


def test_bad_seed_samples_and_utility_are_refused():
    problem = _tiny_problem()
    kw = dict(scheme=EXPLORE_SOFTMAX, temperature=1.0)
    for seed in (-1, 2**64, 1.5):
        with pytest.raises(ValueError, match=r"^seed: must be an integer in \[0, 2\*\*64\), got"):
            sample_slate(problem, seed=seed, **kw)
    with pytest.raises(ValueError, match=r"^samples: must be an integer >= 1, got 0$"):
        marginals(problem, solve_greedy(problem).slate, samples=0, seed=1, **kw)
    u = problem.utility.copy()
    u[3] = np.nan
    from dataclasses import replace
    with pytest.raises(ValueError, match=r"^utility\[3\]: must be finite, got nan$"):
        sample_slate(replace(problem, utility=u), seed=1, **kw)
