"""offline.estimators: hand-worked cases, exact unbiasedness by enumeration, Monte Carlo bias and
CI coverage on synthetic logs with a known truth, the loop twin (tests/naive_estimators.py),
the bootstrap's law, the ESS warning, and bad inputs named."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offline import estimators as E
from offline.estimators import ESTIMATORS, SlateLog, estimate, estimate_all, per_round
from tests import naive_estimators as naive

# --------------------------------------------------------------------------- worked by hand

# Two rounds, K = 2, position weights (1, 0.5).
HAND = dict(
    reward=[[1.0, 0.0], [0.0, 1.0]],
    behavior_marginal=[[0.5, 0.25], [0.5, 0.5]],
    target_marginal=[[0.25, 0.5], [1.0, 0.25]],
    behavior_cascade=[[0.5, 0.1], [0.5, 0.2]],
    target_cascade=[[0.25, 0.2], [1.0, 0.25]],
    behavior_joint=[0.1, 0.2],
    target_joint=[0.2, 0.25],
    q_logged=[[0.6, 0.2], [0.5, 0.5]],
    q_target=[[0.4, 0.3], [0.8, 0.1]],
    position_weight=[1.0, 0.5],
)
# Slate rewards R = (1, 0.5); W = (2, 1.25); rho = (0.5, 2), (2, 0.5); c = (0.5, 2), (2, 1.25).
HAND_VALUES = {
    "ips": (2 * 1 + 1.25 * 0.5) / 2,                     # 1.3125
    "snips": (2 * 1 + 1.25 * 0.5) / (2 + 1.25),          # 21/26
    "iips": (0.5 * 1 + 0.5 * 0.5 * 1) / 2,               # round terms 0.5, 0.25
    "sniips": 0.5 / 2.5 + 0.5 * (0.5 / 2.5),              # 0.2 + 0.5 * 0.2
    "rips": (0.5 + 0.5 * 1.25) / 2,                      # round terms 0.5, 0.625
    "snrips": 0.5 / 2.5 + 0.5 * (1.25 / 3.25),
    "pi": (1.5 * 1 + 1.5 * 0.5) / 2,                     # weights 0.5+2-1, 2+0.5-1
    "dm": ((0.4 + 0.5 * 0.3) + (0.8 + 0.5 * 0.1)) / 2,   # 0.55, 0.85
    # round 0: 0.5(1-0.6) + 0.4 = 0.6; 0.5 * [2(0-0.2) + 0.5 * 0.3] = -0.125
    # round 1: 2(0-0.5) + 0.8 = -0.2;   0.5 * [1.25(1-0.5) + 2 * 0.1] = 0.4125
    "dr": (0.6 - 0.125 - 0.2 + 0.4125) / 2,              # 0.34375
}
HAND_ESS = {"ips": 3.25**2 / (4 + 1.5625), "snips": 3.25**2 / (4 + 1.5625),
            "iips": 2.5**2 / 4.25, "sniips": 2.5**2 / 4.25,       # both positions: (0.5, 2)
            "rips": 2.5**2 / 4.25, "snrips": 2.5**2 / 4.25,       # min of 25/17 and 169/89
            "pi": 2.0, "dm": 2.0, "dr": 2.5**2 / 4.25}

# A third round of length 1 (its position 2 absent: NaN there must be ignored).
NAN = math.nan
HAND3 = {key: (value + [[1.0, NAN]] if key == "reward" else
               value + [[0.5, NAN]] if isinstance(value[0], list) else
               value + [0.5] if key in ("behavior_joint", "target_joint") else value)
         for key, value in HAND.items()}
HAND3["mask"] = [[True, True], [True, True], [True, False]]
# Round 2: R = 1, every ratio 1, pi weight 1 - 1 + 1 = 1, q 0.5 -> dr term 1 (1 - 0.5) + 0.5 = 1.
HAND3_VALUES = {
    "ips": (2 + 0.625 + 1) / 3,
    "snips": (2 + 0.625 + 1) / (2 + 1.25 + 1),
    "iips": (0.5 + 0.25 + 1) / 3,
    "sniips": 1.5 / 3.5 + 0.5 * (0.5 / 3.5),         # the absent position counts ratio 1
    "rips": (0.5 + 0.625 + 1) / 3,
    "snrips": 1.5 / 3.5 + 0.5 * (1.25 / 4.25),
    "pi": (1.5 + 0.75 + 1) / 3,
    "dm": (0.55 + 0.85 + 0.5) / 3,
    "dr": (0.6 - 0.125 - 0.2 + 0.4125 + 1) / 3,
}


def test_hand_values_and_ess():
    log = SlateLog(**{k: np.array(v) for k, v in HAND.items()})
    got = estimate_all(log, n_bootstrap=0)
    assert list(got) == list(ESTIMATORS)
    for name in ESTIMATORS:
        assert got[name].value == pytest.approx(HAND_VALUES[name], abs=1e-12), name
        assert got[name].ess == pytest.approx(HAND_ESS[name], abs=1e-12), name
        assert got[name].n == 2 and math.isnan(got[name].ci_low) and got[name].n_bootstrap == 0
        assert "effective sample size" in got[name].warning  # 2 rounds: always too few


def test_hand_values_with_a_short_slate():
    log = SlateLog(**{k: np.array(v) for k, v in HAND3.items()})
    for name in ESTIMATORS:
        assert estimate(log, name, n_bootstrap=0).value == pytest.approx(HAND3_VALUES[name],
                                                                        abs=1e-12), name
    # ESS over the rounds where a position is present: position 1 has rows 0, 1 only.
    assert estimate(log, "iips", n_bootstrap=0).ess == pytest.approx(2.5**2 / 4.25, abs=1e-12)
    assert E.effective_sample_size(np.array([0.5, 2.0, 1.0])) == pytest.approx(3.5**2 / 5.25)


def test_per_round_terms_are_the_hand_terms():
    log = SlateLog(**{k: np.array(v) for k, v in HAND.items()})
    np.testing.assert_allclose(per_round(log, "dr"), [0.475, 0.2125], atol=1e-12)
    np.testing.assert_allclose(per_round(log, "pi"), [1.5, 0.75], atol=1e-12)
    np.testing.assert_allclose(per_round(log, "snrips"), per_round(log, "rips"), atol=0)


def test_k1_reduces_to_standard_ipw_and_dr():
    rng = np.random.default_rng(4)
    n = 50
    b, t = rng.uniform(0.05, 1, (n, 1)), rng.uniform(0, 1, (n, 1))
    r, qa, qt = rng.random((n, 1)), rng.random((n, 1)), rng.random((n, 1))
    log = SlateLog(reward=r, behavior_marginal=b, target_marginal=t, behavior_cascade=b,
                   target_cascade=t, behavior_joint=b[:, 0], target_joint=t[:, 0], q_logged=qa,
                   q_target=qt)
    ipw = float(np.mean(t / b * r))
    for name in ("ips", "iips", "rips"):
        assert estimate(log, name, n_bootstrap=0).value == pytest.approx(ipw, abs=1e-12)
    assert estimate(log, "pi", n_bootstrap=0).value == pytest.approx(ipw, abs=1e-12)
    dr = float(np.mean(t / b * (r - qa) + qt))
    assert estimate(log, "dr", n_bootstrap=0).value == pytest.approx(dr, abs=1e-12)
    snips = float(np.sum(t / b * r) / np.sum(t / b))
    for name in ("snips", "sniips", "snrips"):
        assert estimate(log, name, n_bootstrap=0).value == pytest.approx(snips, abs=1e-12)


# --------------------------------------------------------------------------- synthetic truth

M_ITEMS, K = 4, 3
ATTRACT = np.array([[0.8, 0.5, 0.3, 0.1], [0.1, 0.7, 0.3, 0.5]])  # per context, per item
THETA = np.array([1.0, 0.7, 0.45])                                    # examination per position


def _pl(scores, slates):
    """Plackett-Luce (without replacement) probability of each slate."""
    w = np.exp(scores)
    out = np.ones(len(slates))
    for i, s in enumerate(slates):
        left = w.sum()
        for a in s:
            out[i] *= w[a] / left
            left -= w[a]
    return out


def _product(probs, slates):
    """Independent positions (with replacement): prod_k probs[k, s_k]."""
    return np.array([np.prod([probs[k, a] for k, a in enumerate(s)]) for s in slates])


def _expected_reward(model, ctx, s):
    a = ATTRACT[ctx]
    if model == "independent":
        return np.array([THETA[k] * a[x] for k, x in enumerate(s)])
    out, none_yet = np.zeros(len(s)), 1.0  # cascade: click at the first attractive item
    for k, x in enumerate(s):
        out[k] = none_yet * a[x]
        none_yet *= 1 - a[x]
    return out


class World:
    """Two equally likely contexts; per context the logging and target slate laws (enumerated),
    the click model, and a reward model q_hat (exact or deliberately wrong)."""

    def __init__(self, logging: str, target: str, model: str, q_bias: float = 0.0):
        self.model = model
        rng = np.random.default_rng(0)
        self.ctx = []
        for c in range(2):
            if logging == "product":
                slates = list(itertools.product(range(M_ITEMS), repeat=K))
                p = rng.dirichlet(np.full(M_ITEMS, 2.0), size=K)
                mu = _product(p, slates)
            else:
                slates = list(itertools.permutations(range(M_ITEMS), K))
                mu = _pl(rng.normal(0, 0.7, M_ITEMS), slates)
            if target == "product":
                tp = rng.dirichlet(np.full(M_ITEMS, 1.0), size=K)
                pi = _product(tp, slates)
                target_all = list(itertools.product(range(M_ITEMS), repeat=K))
                pi_all = _product(tp, target_all)
            else:
                sc = rng.normal(0, 1.2, M_ITEMS)
                pi = _pl(sc, slates)
                target_all = list(itertools.permutations(range(M_ITEMS), K))
                pi_all = _pl(sc, target_all)
            truth = sum(p_ * _expected_reward(model, c, s).sum() for p_, s in zip(pi_all, target_all))
            self.ctx.append(self._rows(c, slates, mu, target_all, pi_all, q_bias) + (truth,))
        self.truth = 0.5 * (self.ctx[0][-1] + self.ctx[1][-1])

    def _rows(self, c, slates, mu, target_all, pi_all, q_bias):
        def prefix_probs(sl, pr):
            out = {}
            for s, p_ in zip(sl, pr):
                for k in range(K + 1):
                    out[tuple(s[:k])] = out.get(tuple(s[:k]), 0.0) + p_
            return out

        def marginals(sl, pr):
            out = np.zeros((K, M_ITEMS))
            for s, p_ in zip(sl, pr):
                for k, a in enumerate(s):
                    out[k, a] += p_
            return out

        bpre, tpre = prefix_probs(slates, mu), prefix_probs(target_all, pi_all)
        bm, tm = marginals(slates, mu), marginals(target_all, pi_all)

        def q_hat(prefix):  # reward model at the last position of the prefix
            true = _expected_reward(self.model, c, prefix)[-1]
            return (1 - q_bias) * true + q_bias * 0.3

        rows = {f: [] for f in ("behavior_marginal", "target_marginal", "behavior_cascade",
                                "target_cascade", "q_logged", "q_target", "expected")}
        for s in slates:
            rows["behavior_marginal"].append([bm[k, a] for k, a in enumerate(s)])
            rows["target_marginal"].append([tm[k, a] for k, a in enumerate(s)])
            rows["behavior_cascade"].append([bpre[tuple(s[:k + 1])] for k in range(K)])
            rows["target_cascade"].append([tpre.get(tuple(s[:k + 1]), 0.0) for k in range(K)])
            rows["q_logged"].append([q_hat(s[:k + 1]) for k in range(K)])
            qt = []
            for k in range(K):
                head = tuple(s[:k])
                denom = tpre.get(head, 0.0)
                qt.append(0.0 if denom == 0 else sum(
                    tpre.get(head + (a,), 0.0) / denom * q_hat(head + (a,)) for a in range(M_ITEMS)))
            rows["q_target"].append(qt)
            rows["expected"].append(_expected_reward(self.model, c, s))
        arrays = {f: np.array(v) for f, v in rows.items()}
        return np.array(slates), mu, arrays

    def enumerated(self) -> tuple[SlateLog, np.ndarray]:
        """Every (context, logged slate) as a row with its expected reward, and its probability."""
        parts, probs = [], []
        for slates, mu, arrays, _ in self.ctx:
            parts.append(arrays)
            probs.append(0.5 * mu)
        cat = {f: np.concatenate([p[f] for p in parts]) for f in parts[0]}
        return self._log(cat, cat.pop("expected")), np.concatenate(probs)

    def sample(self, n: int, seed: int) -> SlateLog:
        rng = np.random.default_rng(seed)
        ctx = rng.integers(0, 2, n)
        cat = {f: np.empty((n, K)) for f in self.ctx[0][2] if f != "expected"}
        reward = np.zeros((n, K))
        for c in range(2):
            rows = np.flatnonzero(ctx == c)
            slates, mu, arrays, _ = self.ctx[c]
            pick = rng.choice(len(mu), size=len(rows), p=mu)
            for f in cat:
                cat[f][rows] = arrays[f][pick]
            attract = ATTRACT[c][slates[pick]]
            u = rng.random((len(rows), K))
            if self.model == "independent":
                reward[rows] = u < THETA * attract
            else:
                clicks = u < attract
                first = np.where(clicks.any(axis=1), clicks.argmax(axis=1), K)
                reward[rows] = np.arange(K) == first[:, None]
        return self._log(cat, reward)

    @staticmethod
    def _log(cat, reward) -> SlateLog:
        return SlateLog(reward=reward, behavior_joint=cat["behavior_cascade"][:, -1],
                        target_joint=cat["target_cascade"][:, -1], **cat)


# Which estimators are unbiased in which world (module docstring's assumptions).
WORLDS = {
    # each position drawn independently, independent clicks: everything but dm holds
    "product_independent": (("product", "pl", "independent", 0.4),
                            ("ips", "iips", "rips", "pi", "dr")),
    # rankings (Plackett-Luce), cascade clicks: the cascade estimators hold, iips and pi do not
    "pl_cascade": (("pl", "pl", "cascade", 0.4), ("ips", "rips", "dr")),
}


@pytest.fixture(scope="module")
def worlds():
    return {name: World(*args) for name, (args, _) in WORLDS.items()}


@pytest.mark.parametrize("world", list(WORLDS))
def test_exact_expectation_equals_truth(worlds, world):
    """E_b[per-round term] by enumerating every slate: exactly the truth where the assumptions
    hold (per-round terms are linear in the reward, so the expected reward can stand in)."""
    w = worlds[world]
    log, prob = w.enumerated()
    assert prob.sum() == pytest.approx(1.0, abs=1e-12)
    for name in WORLDS[world][1]:
        assert per_round(log, name) @ prob == pytest.approx(w.truth, abs=1e-12), name


def test_biased_where_assumptions_fail(worlds):
    """The same exact check shows the test can fail: under cascade clicks and rankings, iips and
    the closed-form pi are off, and so is dm with a wrong reward model."""
    w = worlds["pl_cascade"]
    log, prob = w.enumerated()
    for name in ("iips", "pi", "dm"):
        assert abs(per_round(log, name) @ prob - w.truth) > 0.005, name


def test_dr_is_unbiased_for_an_exact_and_a_wrong_model():
    for q_bias in (0.0, 0.9):
        w = World("pl", "pl", "cascade", q_bias)
        log, prob = w.enumerated()
        assert per_round(log, "dr") @ prob == pytest.approx(w.truth, abs=1e-12)
    # with the exact model and a target that factorises, dm is exact too
    w = World("product", "product", "independent", 0.0)
    log, prob = w.enumerated()
    assert per_round(log, "dm") @ prob == pytest.approx(w.truth, abs=1e-12)
    assert per_round(log, "pi") @ prob == pytest.approx(w.truth, abs=1e-12)


def test_general_pseudo_inverse_is_unbiased_for_rankings():
    """Rankings drawn without replacement (the logging policy does not factorise), additive
    rewards: the closed form is biased, the Gamma pseudo-inverse weight is not."""
    w = World("pl", "pl", "independent", 0.0)
    log, prob = w.enumerated()
    assert abs(per_round(log, "pi") @ prob - w.truth) > 1e-3
    weights = []
    for c, (slates, mu, arrays, _) in enumerate(w.ctx):
        tm = np.zeros((K, M_ITEMS))  # the target's marginals, read back from the logged rows
        for s, row in zip(slates, arrays["target_marginal"]):
            for k, a in enumerate(s):
                tm[k, a] = row[k]
        weights.append(E.pseudo_inverse_weights(slates, mu, tm))
    fixed = SlateLog(**{f: getattr(log, f) for f in ("reward", "behavior_marginal",
                                                      "target_marginal")},
                     pi_weight=np.concatenate(weights))
    assert per_round(fixed, "pi") @ prob == pytest.approx(w.truth, abs=1e-10)


def test_general_pseudo_inverse_matches_the_closed_form_for_a_product_policy():
    rng = np.random.default_rng(2)
    slates = np.array(list(itertools.product(range(3), repeat=2)))
    p = rng.dirichlet(np.ones(3), size=2)
    mu = _product(p, slates)
    tm = rng.dirichlet(np.ones(3), size=2)
    got = E.pseudo_inverse_weights(slates, mu, tm)
    closed = np.array([sum(tm[k, a] / p[k, a] for k, a in enumerate(s)) - 2 + 1 for s in slates])
    np.testing.assert_allclose(got, closed, atol=1e-10)
    with pytest.raises(ValueError, match="behavior_prob: must sum to 1"):
        E.pseudo_inverse_weights(slates, mu * 2, tm)
    with pytest.raises(ValueError, match=r"slates: item ids must be in \[0, 3\)"):
        E.pseudo_inverse_weights(slates + 1, mu, tm)


SEEDS, N_ROUNDS = 200, 3000


@pytest.fixture(scope="module")
def monte_carlo(worlds):
    """estimate_all on 200 independent logs of each world (500 resamples each)."""
    out = {}
    for world, (_, names) in WORLDS.items():
        w = worlds[world]
        runs = [estimate_all(w.sample(N_ROUNDS, seed), n_bootstrap=500, seed=seed)
                for seed in range(SEEDS)]
        out[world] = (w.truth, runs)
    return out


def _with_self_normalised(names):
    """The self-normalised forms are biased (O(1/n)) but consistent: at n = 3000 their bias is
    far below the Monte Carlo error, so they are held to the same checks."""
    return names + tuple("sn" + e for e in names if e in ("ips", "iips", "rips"))


@pytest.mark.parametrize("world", list(WORLDS))
def test_mean_estimate_within_three_standard_errors(monte_carlo, world):
    truth, runs = monte_carlo[world]
    for name in _with_self_normalised(WORLDS[world][1]):
        values = np.array([r[name].value for r in runs])
        se = values.std(ddof=1) / math.sqrt(len(values))
        assert abs(values.mean() - truth) < 3 * se, (name, values.mean(), truth, se)


@pytest.mark.parametrize("world", list(WORLDS))
def test_ci_covers_truth_at_about_the_nominal_rate(monte_carlo, world):
    truth, runs = monte_carlo[world]
    for name in _with_self_normalised(WORLDS[world][1]):
        cover = np.mean([r[name].ci_low <= truth <= r[name].ci_high for r in runs])
        assert 0.88 <= cover <= 0.99, (name, cover)
        # the bootstrap SE tracks the spread of the estimates across logs
        spread = np.std([r[name].value for r in runs], ddof=1)
        se = np.median([r[name].se for r in runs])
        assert 0.8 < se / spread < 1.25, (name, se, spread)


def test_biased_estimators_miss_in_the_monte_carlo_too(monte_carlo):
    truth, runs = monte_carlo["pl_cascade"]
    values = np.array([r["iips"].value for r in runs])
    assert abs(values.mean() - truth) > 5 * values.std(ddof=1) / math.sqrt(len(values))


# --------------------------------------------------------------------------- twin agreement

@st.composite
def logs(draw):
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0 if draw(st.booleans()) else k, k + 1, n)
    mask = np.arange(k)[None, :] < lengths[:, None]
    bm = rng.uniform(0.01, 1, (n, k))
    tm = rng.uniform(0, 1, (n, k)) * (rng.random((n, k)) > 0.2)
    bc = np.cumprod(rng.uniform(0.05, 1, (n, k)), axis=1)
    tc = np.cumprod(rng.uniform(0, 1, (n, k)), axis=1)
    fields = dict(
        reward=np.where(rng.random((n, k)) < 0.5, rng.integers(0, 2, (n, k)), rng.normal(size=(n, k))),
        behavior_marginal=bm, target_marginal=tm, behavior_cascade=bc, target_cascade=tc,
        behavior_joint=bc[:, -1], target_joint=tc[:, -1], q_logged=rng.random((n, k)),
        q_target=rng.random((n, k)), position_weight=rng.uniform(0, 2, k), mask=mask)
    for f in ("reward", "behavior_marginal", "q_logged"):  # junk at absent positions is ignored
        fields[f] = np.where(mask, fields[f], np.nan)
    if draw(st.booleans()):
        fields["pi_weight"] = rng.normal(1, 2, n)
    return SlateLog(**fields), seed % 1000


@given(logs())
@settings(max_examples=60, deadline=None)
def test_twin_agrees_on_random_logs(case):
    log, seed = case
    got = estimate_all(log, n_bootstrap=6, seed=seed)
    assert list(got) == list(ESTIMATORS)
    for name, est in got.items():
        assert est.value == pytest.approx(naive.value(log, name), rel=1e-9, abs=1e-9), name
        assert est.ess == pytest.approx(naive.ess(log, name), rel=1e-9, abs=1e-9), name
        boot = naive.bootstrap(log, name, 6, seed, E.CHUNK)
        low, high = naive.interval(boot, 0.05)
        assert est.ci_low == pytest.approx(low, rel=1e-9, abs=1e-9), name
        assert est.ci_high == pytest.approx(high, rel=1e-9, abs=1e-9), name
        assert est.se == pytest.approx(naive.std(boot), rel=1e-7, abs=1e-9), name


@given(logs(), st.integers(1, 5))
@settings(max_examples=40, deadline=None)
def test_twin_agrees_on_the_bootstrap_across_chunks(case, chunk):
    """Small chunks, so the resamples span several: the kernel's draws are the twin's, for one
    column (direct kernel) and several (wide kernel), drawing rewarded rounds only (iips) or
    every round (sniips, dr)."""
    log, seed = case
    for name in ("iips", "sniips", "dr"):
        stats, finish = E.round_stats(log, name)
        live = E.rewarded(log) if name in E.SPARSE else None
        got = finish(E.bootstrap_sums(stats, 5, seed, chunk=chunk, live=live))
        want = naive.bootstrap(log, name, 5, seed, chunk)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- bootstrap law

def test_bootstrap_counts_have_the_multinomial_law():
    """Counts of rounds 0 and 9 (in different chunks of 3) over 40,000 resamples of 10 rounds:
    mean 1, variance 1 - 1/n, covariance -1/n, and every resample takes exactly n rounds."""
    n, b = 10, 40_000
    stats = np.zeros((n, 3))
    stats[0, 0] = stats[9, 1] = 1.0
    stats[:, 2] = 1.0
    sums = E.bootstrap_sums(stats, b, seed=11, chunk=3)
    assert (sums[:, 2] == n).all()
    c0, c9 = sums[:, 0], sums[:, 1]
    assert c0.mean() == pytest.approx(1.0, abs=0.02) and c9.mean() == pytest.approx(1.0, abs=0.02)
    assert c0.var() == pytest.approx(0.9, abs=0.03) and c9.var() == pytest.approx(0.9, abs=0.03)
    assert np.cov(c0, c9)[0, 1] == pytest.approx(-0.1, abs=0.02)
    # P(a round is never drawn) = (1 - 1/n)^n
    assert np.mean(c0 == 0) == pytest.approx(0.9**10, abs=0.01)


def test_bootstrap_drawing_live_rounds_only_has_the_same_law():
    """Rounds 5..9 are all-zero rows, so only rounds 0..4 are drawn one by one: the count of
    round 0 still has mean 1 and variance 0.9, and the draws on live rounds are
    Binomial(10, 1/2) (mean 5, variance 2.5), as with 10 uniform draws from all 10 rounds."""
    n, b = 10, 40_000
    stats = np.zeros((n, 2))
    stats[0, 0] = 1.0
    stats[:5, 1] = 1.0
    live = stats.any(axis=1)
    sums = E.bootstrap_sums(stats, b, seed=5, chunk=2, live=live)
    assert sums[:, 0].mean() == pytest.approx(1.0, abs=0.02)
    assert sums[:, 0].var() == pytest.approx(0.9, abs=0.03)
    assert sums[:, 1].mean() == pytest.approx(5.0, abs=0.03)
    assert sums[:, 1].var() == pytest.approx(2.5, abs=0.08)
    assert (E.bootstrap_sums(np.zeros((4, 1)), 3, 0, live=np.zeros(4, bool)) == 0).all()


def test_bootstrap_is_seeded_and_shared_across_estimators(worlds):
    log = worlds["pl_cascade"].sample(500, 3)
    a = estimate_all(log, n_bootstrap=200, seed=7)
    b = estimate_all(log, n_bootstrap=200, seed=7)
    assert a == b
    c = estimate_all(log, n_bootstrap=200, seed=8)
    assert a["ips"].ci_low != c["ips"].ci_low
    for name in ESTIMATORS:  # one estimator alone gets the same resamples as all together
        one = estimate(log, name, n_bootstrap=200, seed=7)
        assert one.ci_low == pytest.approx(a[name].ci_low, abs=1e-12)
        assert one.ci_high == pytest.approx(a[name].ci_high, abs=1e-12)


def test_constant_terms_give_a_degenerate_interval():
    n = 40
    log = SlateLog(reward=np.ones((n, 2)), behavior_marginal=np.full((n, 2), 0.5),
                   target_marginal=np.full((n, 2), 0.5))
    est = estimate(log, "iips", n_bootstrap=300, alpha=0.1)
    assert est.value == est.ci_low == est.ci_high == pytest.approx(2.0, abs=1e-12)
    assert est.se == pytest.approx(0.0, abs=1e-12) and est.alpha == 0.1


# --------------------------------------------------------------------------- ESS warning

def _iips_log(weights: np.ndarray) -> SlateLog:
    n = len(weights)
    scale = weights.max()
    return SlateLog(reward=np.ones((n, 1)), behavior_marginal=np.full((n, 1), 1.0),
                    target_marginal=(weights / scale)[:, None])


def test_ess_warning_thresholds():
    fine = estimate(_iips_log(np.ones(500)), "iips", n_bootstrap=0)
    assert fine.ess == pytest.approx(500) and fine.warning is None
    few = estimate(_iips_log(np.ones(99)), "iips", n_bootstrap=0)
    assert few.ess == pytest.approx(99)
    assert few.warning.startswith("iips: effective sample size 99.0 is below 100")
    # 20,000 rounds, 150 of them with weight 1 and the rest 0: ESS 150 >= 100 but < 1 %
    w = np.zeros(20_000)
    w[:150] = 1.0
    skew = estimate(_iips_log(w), "iips", n_bootstrap=0)
    assert skew.ess == pytest.approx(150)
    assert "below 1% of the 20000 rounds" in skew.warning and "do not trust" in skew.warning
    zero = estimate(SlateLog(reward=np.ones((3, 1)), behavior_marginal=np.ones((3, 1)),
                             target_marginal=np.zeros((3, 1))), "iips", n_bootstrap=0)
    assert zero.ess == 0.0 and zero.value == 0.0 and zero.warning is not None
    assert estimate(_iips_log(np.ones(5)), "pi", n_bootstrap=0).ess == pytest.approx(5)


# --------------------------------------------------------------------------- bad input

def _fields(**over):
    base = {k: np.array(v, dtype=float) for k, v in HAND.items()}
    base.update(over)
    return base


@pytest.mark.parametrize("over, message", [
    (dict(reward=np.ones(2)), r"SlateLog.reward: must be 2-D \(n rounds, K positions\), got shape \(2,\)"),
    (dict(reward=np.ones((0, 2))), r"SlateLog.reward: needs at least one round"),
    (dict(reward=np.array([["a", "b"], ["c", "d"]])), r"SlateLog.reward: must be a numeric array, got dtype <U1"),
    (dict(reward=np.array([[1.0, 0.0], [np.nan, 1.0]])), r"SlateLog.reward\[1, 0\]: must be finite, got nan"),
    (dict(behavior_marginal=np.ones((2, 3))), r"SlateLog.behavior_marginal: must have shape \(n, K\) = \(2, 2\) like reward, got \(2, 3\)"),
    (dict(behavior_marginal=np.array([[0.5, 0.25], [0.0, 0.5]])), r"SlateLog.behavior_marginal\[1, 0\]: must be in \(0, 1\], got 0.0"),
    (dict(behavior_marginal=np.array([[0.5, 1.5], [0.5, 0.5]])), r"SlateLog.behavior_marginal\[0, 1\]: must be in \(0, 1\], got 1.5"),
    (dict(target_marginal=np.array([[0.5, -0.1], [0.5, 0.5]])), r"SlateLog.target_marginal\[0, 1\]: must be in \[0, 1\], got -0.1"),
    (dict(target_marginal=np.array([[0.5, np.inf], [0.5, 0.5]])), r"SlateLog.target_marginal\[0, 1\]: must be finite, got inf"),
    (dict(behavior_cascade=np.array([[0.5, 0.6], [0.5, 0.2]])), r"SlateLog.behavior_cascade\[0, 1\]: a prefix cannot be more likely than the prefix one shorter, got 0.6 after 0.5"),
    (dict(target_cascade=None), r"SlateLog.target_cascade: is needed with the other policy's cascade"),
    (dict(behavior_joint=np.array([0.1, 0.0])), r"SlateLog.behavior_joint\[1\]: must be in \(0, 1\], got 0.0"),
    (dict(target_joint=np.array([0.1, 0.2, 0.3])), r"SlateLog.target_joint: must have shape \(n,\) = \(2,\), one value per round, got \(3,\)"),
    (dict(q_target=np.array([[0.1, np.nan], [0.1, 0.1]])), r"SlateLog.q_target\[0, 1\]: must be finite, got nan"),
    (dict(position_weight=np.array([1.0, -1.0])), r"SlateLog.position_weight\[1\]: must be in \[0, inf\], got -1.0"),
    (dict(position_weight=np.ones(3)), r"SlateLog.position_weight: must have shape \(K,\) = \(2,\), got \(3,\)"),
    (dict(mask=np.array([[False, True], [True, True]])), r"SlateLog.mask\[0\]: present positions must come first \(a prefix of the slate\), got \[False, True\]"),
    (dict(mask=np.array([[2, 1], [1, 1]])), r"SlateLog.mask: must be boolean \(or 0/1 integers\), got dtype int64"),
    (dict(pi_weight=np.array([1.0, np.nan])), r"SlateLog.pi_weight\[1\]: must be finite, got nan"),
])
def test_bad_input_names_the_field(over, message):
    with pytest.raises(ValueError, match=message):
        SlateLog(**_fields(**over))


def test_missing_fields_and_bad_options_are_named():
    log = SlateLog(reward=np.ones((3, 2)), behavior_marginal=np.full((3, 2), 0.5),
                   target_marginal=np.full((3, 2), 0.5))
    assert list(estimate_all(log, n_bootstrap=0)) == ["iips", "sniips", "pi"]
    with pytest.raises(ValueError, match=r"estimator 'rips' needs SlateLog.behavior_cascade, which is None"):
        estimate(log, "rips")
    with pytest.raises(ValueError, match=r"estimator 'dr' needs SlateLog.behavior_cascade"):
        estimate_all(log, ["iips", "dr"])
    with pytest.raises(ValueError, match=r"estimator 'dm' needs SlateLog.q_target"):
        per_round(log, "dm")
    with pytest.raises(ValueError, match=r"estimator: unknown 'sips', expected one of ips, snips"):
        estimate(log, "sips")
    with pytest.raises(ValueError, match=r"n_bootstrap: must be 0 \(no interval\) or >= 2, got 1"):
        estimate(log, "iips", n_bootstrap=1)
    with pytest.raises(ValueError, match=r"n_bootstrap: must be an integer >= 0, got -5"):
        estimate(log, "iips", n_bootstrap=-5)
    with pytest.raises(ValueError, match=r"alpha: must be a number in \(0, 1\), got 1.5"):
        estimate(log, "iips", alpha=1.5)
    with pytest.raises(ValueError, match=r"seed: must be an integer >= 0, got -1"):
        estimate(log, "iips", seed=-1)
