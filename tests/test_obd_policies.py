"""Re-ranking policies on the OBD random logs (offline.obd_policies): a 3-row case worked by hand,
the random policy's estimate against the on-policy mean, the joint bootstrap against a naive
loop and against the one-SlateLog alternative, the diverse and fair slates checked from the
slates themselves, bad input named, and the command end to end on the real sample.

The real-data tests read what `make data` unpacked into data/obd: missing data fails with a
clear message when CI is set and is skipped (with the same message) otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import PolicyInvalid
from offline import obd
from offline import obd_policies as op
from offline.estimators import SlateLog, estimate_all
from offline.policies import version_from_text
from solvers.fair import fair_mtable

W = 1.0 / np.log2(np.arange(3) + 2.0)


def make_data(item, position, click, n_items, codes, dictionary, attribute="item_feature_3",
              propensity=None) -> obd.ObdData:
    """An ObdData-like input: rows (item, position, click, propensity 1/n_items by default) and
    one categorical item feature; the user columns are placeholders the evaluation never reads."""
    n = len(item)
    return obd.ObdData(
        campaign="tiny", behavior="random", path="<tiny>", index=np.arange(n),
        timestamp=np.zeros(n, "datetime64[us]"), item=np.asarray(item, np.int64),
        position=np.asarray(position, np.int64), click=np.asarray(click, np.int64),
        propensity=np.full(n, 1.0 / n_items) if propensity is None else np.asarray(propensity, float),
        user_feature_names=("user_feature_0",), user_codes=np.zeros((n, 1), np.int64),
        user_dictionaries=(("u",),), affinity=np.zeros((n, n_items)),
        item_ids=tuple(str(i) for i in range(n_items)),
        item_numeric={"item_feature_0": np.zeros(n_items)},
        item_codes={attribute: np.asarray(codes, np.int64)}, item_dictionaries={attribute: tuple(dictionary)})


# ------------------------------------------------------------------ the tiny case, by hand
# 3 items: item 0 and 1 have item_feature_3 = x, item 2 has y. The model: q[r, a, k] = s_a m_k,
# s = (0.3, 0.2, 0.1), m = (1, 0.5, 0.25) for every row, so every policy ranks 0 > 1 > 2.
# Rows: (position 1, item 0, click 1), (position 2, item 2, click 1), (position 3, item 2, click 0).
S = np.array([0.3, 0.2, 0.1])
M = np.array([1.0, 0.5, 0.25])


@pytest.fixture()
def tiny():
    data = make_data(item=[0, 2, 2], position=[1, 2, 3], click=[1, 1, 0], n_items=3,
                     codes=[0, 0, 1], dictionary=("x", "y"))
    q = np.broadcast_to(S[None, :, None] * M[None, None, :], (3, 3, 3)).copy()
    return data, q


def versions(protected="y", p=op.FAIR_P, alpha=op.FAIR_ALPHA):
    texts = op.policy_texts("tiny", protected, p=p, alpha=alpha)
    return {name: version_from_text(text, f"<{name}>") for name, text in texts.items()}


def test_tiny_slates_and_estimates_by_hand(tiny):
    data, q = tiny
    v = versions(p=0.6)  # m-table (0, 1, 1): a y item in the top 2
    assert fair_mtable(3, 0.6, 0.2).tolist() == [0, 1, 1]
    runs = {name: op.run_policy(v[name], data, q[:, :, 0]) for name in op.POLICIES}
    assert runs["obd_greedy"].slates.tolist() == [[0, 1, 2]] * 3
    # one per value: 0 (x), 2 (y); a third slot only by relaxing the rule (reported, every row)
    assert runs["obd_diverse"].slates.tolist() == [[0, 2, 1]] * 3
    assert runs["obd_diverse"].relaxed == {"one_per_item_feature_3": 3}
    assert runs["obd_fair"].slates.tolist() == [[0, 2, 1]] * 3
    assert runs["obd_fair"].relaxed == {}

    target, q_target = op.target_of_slates(data, runs["obd_greedy"].slates, q)
    assert target.tolist() == [1.0, 0.0, 1.0]  # row 1 logged item 2 at position 2, greedy has 1 there
    assert q_target.tolist() == pytest.approx([0.3, 0.2 * 0.5, 0.1 * 0.25])
    est = op.estimate_policy(data, target, q, q_target, n_bootstrap=50, seed=1)
    # ips_k = W r with W = 1 / (1/3) = 3 where the slate matches
    assert [p["value"] for p in est["ips"]["positions"]] == pytest.approx([3.0, 0.0, 0.0], abs=1e-12)
    assert est["ips"]["slate"]["value"] == pytest.approx(3.0, abs=1e-12)
    # snips_k = W r / W: position 2 has no weight (0 / 0 = 0), position 3 a weight but no click
    assert [p["value"] for p in est["snips"]["positions"]] == pytest.approx([1.0, 0.0, 0.0], abs=1e-12)
    # dr_k = W (r - q_logged) + q_target
    dr = [3 * (1 - 0.3) + 0.3, 0 * (1 - 0.05) + 0.1, 3 * (0 - 0.025) + 0.025]
    assert [p["value"] for p in est["dr"]["positions"]] == pytest.approx(dr, abs=1e-12)
    assert est["dr"]["slate"]["value"] == pytest.approx(2.45, abs=1e-12)
    assert est["dm"]["slate"]["value"] == pytest.approx(0.3 + 0.1 + 0.025, abs=1e-12)
    assert [p["ess"] for p in est["ips"]["positions"]] == [1.0, 0.0, 1.0]
    assert all(p["warning"] for p in est["ips"]["positions"])  # ESS < 100: said plainly

    target, q_target = op.target_of_slates(data, runs["obd_diverse"].slates, q)
    assert target.tolist() == [1.0, 1.0, 0.0]
    est = op.estimate_policy(data, target, q, q_target, n_bootstrap=0)
    assert est["ips"]["slate"]["value"] == pytest.approx(6.0, abs=1e-12)
    assert est["ips"]["slate"]["ci95"] is None  # no bootstrap asked


def test_tiny_exposure_and_protected_choice(tiny):
    data, q = tiny
    greedy = op.run_policy(versions()["obd_greedy"], data, q[:, :, 0])
    share = op.exposure_shares(greedy.slates, data)["item_feature_3"]
    assert share["y"] == pytest.approx(W[2] / W.sum())
    assert share["x"] == pytest.approx((W[0] + W[1]) / W.sum())
    rand = op.random_exposure_shares(data)["item_feature_3"]
    assert rand == {"x": 2 / 3, "y": 1 / 3}
    value, shortfall = op.choose_protected(greedy.slates, data)
    assert value == "y" and shortfall["y"] == pytest.approx(1 / 3 - W[2] / W.sum())


def test_fair_relaxation_is_reported_when_no_protected_item_exists(tiny):
    data, q = tiny
    data = make_data(item=[0, 2, 2], position=[1, 2, 3], click=[1, 1, 0], n_items=3,
                     codes=[0, 0, 1], dictionary=("x", "y", "z"))  # no item has z
    v = versions(protected="z")["obd_fair"]
    run = op.run_policy(v, data, q[:, :, 0])
    assert run.slates.tolist() == [[0, 1, 2]] * 3
    assert run.relaxed == {"fair_item_feature_3": 3}
    facts = op.slate_facts(run, data, "item_feature_3", "z", op.FAIR_P, op.FAIR_ALPHA)
    assert facts["meets_fair_mtable"] == 0.0 and facts["protected_per_slate"] == 0.0


def test_random_policy_estimate_is_the_on_policy_mean_exactly(tiny):
    data, q = tiny
    target, q_target = op.target_of_random(data, q)
    est = op.estimate_policy(data, target, q, q_target, n_bootstrap=20)
    for e in ("ips", "snips"):
        assert [p["value"] for p in est[e]["positions"]] == [1.0, 1.0, 0.0]
    rng = np.random.default_rng(3)
    n, n_items = 4000, 7
    data = make_data(item=rng.integers(0, n_items, n), position=rng.integers(1, 4, n),
                     click=rng.random(n) < 0.1, n_items=n_items, codes=np.arange(n_items) % 2,
                     dictionary=("a", "b"))
    q = rng.random((n, n_items, 3)) * 0.2
    target, q_target = op.target_of_random(data, q)
    est = op.estimate_policy(data, target, q, q_target, n_bootstrap=0)
    for k in range(3):
        mean = data.click[data.position == k + 1].mean()
        assert est["ips"]["positions"][k]["value"] == mean
        assert est["snips"]["positions"][k]["value"] == mean


# ------------------------------------------------------------------ the bootstrap and the alternative
def synthetic(seed=5, n=3000, n_items=5):
    rng = np.random.default_rng(seed)
    data = make_data(item=rng.integers(0, n_items, n), position=rng.integers(1, 4, n),
                     click=rng.random(n) < 0.2, n_items=n_items, codes=np.arange(n_items) % 2,
                     dictionary=("a", "b"))
    q = rng.random((n, n_items, 3)) * 0.4
    slates = np.array([rng.permutation(n_items)[:3] for _ in range(n)])
    target, q_target = op.target_of_slates(data, slates, q)
    return data, q, target, q_target


def test_slate_estimate_equals_one_slatelog_with_weights_one_over_share():
    data, q, target, q_target = synthetic()
    est = op.estimate_policy(data, target, q, q_target, n_bootstrap=0)
    share = np.bincount(data.position, minlength=4)[1:] / data.n
    c = 1.0 / share[data.position - 1]
    rows = np.arange(data.n)
    b = data.propensity
    q_logged = q[rows, data.item, data.position - 1]
    one = SlateLog(reward=(data.click * c)[:, None], behavior_marginal=b[:, None], target_marginal=target[:, None],
                   behavior_cascade=b[:, None], target_cascade=target[:, None], behavior_joint=b,
                   target_joint=target, q_logged=(q_logged * c)[:, None], q_target=(q_target * c)[:, None])
    alt = estimate_all(one, ["ips", "dr", "dm", "snips"], n_bootstrap=0)
    for e in ("ips", "dr", "dm"):
        assert est[e]["slate"]["value"] == pytest.approx(alt[e].value, rel=1e-12)
    # snips: normalised per position here, over all rows there: close, not equal
    assert est["snips"]["slate"]["value"] != alt["snips"].value
    assert est["snips"]["slate"]["value"] == pytest.approx(alt["snips"].value, rel=0.1)
    # the slate ESS is that log's weight ESS
    assert est["ips"]["slate"]["ess"] == pytest.approx(alt["ips"].ess, rel=1e-12)


def test_per_position_values_are_estimate_all_on_that_position():
    data, q, target, q_target = synthetic(seed=8)
    est = op.estimate_policy(data, target, q, q_target, n_bootstrap=0)
    for p in (1, 2, 3):
        at = np.flatnonzero(data.position == p)
        k = (np.arange(data.n)[at], data.item[at], p - 1)
        w = target[at] / data.propensity[at]
        r = data.click[at]
        assert est["ips"]["positions"][p - 1]["value"] == pytest.approx(np.mean(w * r), rel=1e-12)
        assert est["snips"]["positions"][p - 1]["value"] == pytest.approx(np.sum(w * r) / np.sum(w), rel=1e-12)
        dr = w * (r - q[k]) + q_target[at]
        assert est["dr"]["positions"][p - 1]["value"] == pytest.approx(dr.mean(), rel=1e-12)


def test_joint_bootstrap_has_the_law_of_a_naive_row_resample():
    data, q, target, q_target = synthetic(seed=11)
    B = 2000
    est = op.estimate_policy(data, target, q, q_target, n_bootstrap=B, seed=2)
    draws = op.joint_bootstrap(data.position, data.click.astype(float), target / data.propensity,
                               q[np.arange(data.n), data.item, data.position - 1], q_target,
                               n_bootstrap=B, seed=2)
    # the CIs reported are these draws' percentiles
    assert est["ips"]["slate"]["ci95"] == pytest.approx(np.quantile(draws["ips"].sum(axis=1), [0.025, 0.975]).tolist())
    # naive: np.random resamples of the rows, every position's estimate recomputed
    rng = np.random.default_rng(99)
    w = target / data.propensity
    r = data.click.astype(float)
    ql = q[np.arange(data.n), data.item, data.position - 1]
    naive = {e: np.empty(B) for e in ("ips", "snips", "dr")}
    for b in range(B):
        i = rng.integers(0, data.n, data.n)
        tot = {e: 0.0 for e in naive}
        for p in (1, 2, 3):
            j = i[data.position[i] == p]
            tot["ips"] += np.mean(w[j] * r[j])
            tot["snips"] += np.sum(w[j] * r[j]) / np.sum(w[j])
            tot["dr"] += np.mean(w[j] * (r[j] - ql[j]) + q_target[j])
        for e in naive:
            naive[e][b] = tot[e]
    for e in naive:
        ours = draws[e].sum(axis=1)
        assert ours.std(ddof=1) == pytest.approx(naive[e].std(ddof=1), rel=0.08), e
        assert ours.mean() == pytest.approx(naive[e].mean(), abs=4 * naive[e].std() / np.sqrt(B)), e


# ------------------------------------------------------------------ bad input
def test_bad_inputs_are_named(tiny, tmp_path):
    data, q = tiny
    v = versions()["obd_greedy"]
    with pytest.raises(ValueError, match=r"scores: must have shape \(rows, items\) = \(3, 3\), got \(3, 2\)"):
        op.run_policy(v, data, q[:, :2, 0])
    needs_brand = version_from_text(
        'name: x\nversion: "1"\nslate_size: 3\nobjective: {weights: {p_click: 1.0}}\n'
        "constraints:\n  - {name: cap, type: max_count, attribute: brand, max: 1}\n")
    with pytest.raises(op.PolicyError, match=r"needs candidates.attributes\['brand'\].*it has: item_feature_3"):
        op.run_policy(needs_brand, data, q[:, :, 0])
    two = make_data(item=[0, 1], position=[1, 2], click=[0, 1], n_items=3, codes=[0, 0, 1], dictionary=("x", "y"))
    with pytest.raises(ValueError, match="<tiny>: no row at position 3"):
        op.estimate_policy(two, np.ones(2) / 3, q[:2], np.zeros(2), n_bootstrap=0)
    with pytest.raises(op.PolicyError, match="attribute: 'brand' is not an item feature of <tiny>"):
        op.choose_protected(np.zeros((3, 3), np.int64), data, "brand")
    with pytest.raises(ValueError, match="protected: obd_fair needs the protected value"):
        op.policy_texts("tiny", None)
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "obd_greedy.yaml").write_text(op.policy_texts("tiny", "y")["obd_greedy"].replace("slate_size: 3", "slate_size: 0"))
    with pytest.raises(PolicyInvalid, match=r"obd_greedy.yaml.*slate_size"):
        op.policy_version(folder, "obd_greedy", op.policy_texts("tiny", "y")["obd_greedy"])
    (folder / "obd_diverse.yaml").write_text(op.policy_texts("tiny", "y")["obd_greedy"])
    with pytest.raises(op.PolicyError, match="obd_diverse.yaml: policy name must be 'obd_diverse'"):
        op.policy_version(folder, "obd_diverse", op.policy_texts("tiny", "y")["obd_diverse"])


# ------------------------------------------------------------------ the real sample
@pytest.fixture(scope="module")
def root(obd_root) -> Path:
    return obd_root


def test_real_diverse_and_fair_slates_checked_from_the_slates(root):
    data = obd.load("all", "random", root).take(np.arange(3000))
    q, _ = op.reward_model(data, 3, 10000.0)
    scores = np.ascontiguousarray(q[:, :, 0])
    v = {n: version_from_text(t, f"<{n}>") for n, t in op.policy_texts("all", None, names=op.POLICIES[:2]).items()}
    greedy = op.run_policy(v["obd_greedy"], data, scores)
    top = np.sort(scores, axis=1)[:, ::-1][:, :3]
    assert np.array_equal(np.take_along_axis(scores, greedy.slates, axis=1), top)  # the top 3, in order
    codes = data.item_codes[op.DIVERSITY_ATTRIBUTE]
    diverse = op.run_policy(v["obd_diverse"], data, scores)
    c = codes[diverse.slates]
    assert (c[:, 0] != c[:, 1]).all() and (c[:, 0] != c[:, 2]).all() and (c[:, 1] != c[:, 2]).all()
    assert diverse.relaxed == {}
    # the optimum under "1 per value" (a partition matroid): walk down the ranking, skip repeats
    order = np.argsort(-scores, axis=1, kind="stable")
    for r in range(0, data.n, 97):
        want, seen = [], set()
        for a in order[r]:
            if codes[a] not in seen:
                want.append(a)
                seen.add(codes[a])
            if len(want) == 3:
                break
        assert np.allclose(scores[r, diverse.slates[r]], scores[r, want])
    protected, shortfall = op.choose_protected(greedy.slates, data)
    assert shortfall[protected] == max(shortfall.values()) > 0
    fair = op.run_policy(version_from_text(op.policy_texts("all", protected, names=("obd_fair",))["obd_fair"]),
                         data, scores)
    pc = data.item_dictionaries[op.FAIR_ATTRIBUTE].index(protected)
    prot = data.item_codes[op.FAIR_ATTRIBUTE][fair.slates] == pc
    table = fair_mtable(3, op.FAIR_P, op.FAIR_ALPHA)
    assert (np.cumsum(prot, axis=1) >= table).all() and fair.relaxed == {}
    # its optimum: the greedy slate when it has a protected item, else its top 2 + the best protected
    is_p = data.item_codes[op.FAIR_ATTRIBUTE] == pc
    for r in range(0, data.n, 97):
        g = greedy.slates[r]
        best_p = max(np.flatnonzero(is_p), key=lambda a: scores[r, a])
        want = g if is_p[g].any() else [g[0], g[1], best_p]
        assert np.allclose(scores[r, fair.slates[r]], scores[r, want])
    # what the greedy never shows gains exposure under the fair policy
    assert (op.exposure_shares(fair.slates, data)[op.FAIR_ATTRIBUTE][protected]
            > op.exposure_shares(greedy.slates, data)[op.FAIR_ATTRIBUTE][protected])


def test_command_end_to_end_on_the_real_sample(root, tmp_path):
    out = tmp_path / "r.json"
    pol = tmp_path / "pol"
    assert op.main(["--root", str(root), "--campaign", "men", "--n-bootstrap", "200", "--l2", "100",
                    "--policy-dir", str(pol), "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    (c,) = res["campaigns"]
    data = obd.load("men", "random", root)
    assert c["rows"] == data.n and c["clicks"] == int(data.click.sum())
    rnd = c["results"][op.RANDOM]
    on = [float(data.click[data.position == k].mean()) for k in (1, 2, 3)]
    assert [p["value"] for p in rnd["estimates"]["ips"]["positions"]] == on
    assert [p["value"] for p in rnd["estimates"]["snips"]["positions"]] == on
    assert rnd["check"]["ips_equals_on_policy_mean"] == [True] * 3
    dc = c["data_checks"]
    assert dc["fair_mtable"] == [0, 0, 1] and dc["protected_value"] == dc["protected_chosen_by_data"]
    for name in op.POLICIES:
        r = c["results"][name]
        assert (pol / "men" / f"{name}.yaml").is_file() and not c["policies"][name]["edited"]
        for e in op.ESTIMATORS:
            x = r["estimates"][e]["slate"]
            assert x["value"] == pytest.approx(sum(p["value"] for p in r["estimates"][e]["positions"]))
            assert x["ci95"][0] <= x["ci95"][1]
        assert all(p["warning"] for p in r["estimates"]["ips"]["positions"] if p["ess"] < 100)
        shares = r["exposure_share"][op.FAIR_ATTRIBUTE]
        assert sum(shares.values()) == pytest.approx(1.0)
        assert r["matched_rows_per_position"] == [round(p["ess"]) for p in r["estimates"]["ips"]["positions"]]
    assert c["results"]["obd_diverse"]["slates"][f"max_per_{op.DIVERSITY_ATTRIBUTE}_value"] == 1
    assert c["results"]["obd_fair"]["slates"]["meets_fair_mtable"] == 1.0
    assert c["results"]["obd_fair"]["relaxation_rate"] == {f"fair_{op.FAIR_ATTRIBUTE}": 0.0}
    prot = dc["protected_value"]
    assert c["results"]["obd_greedy"]["exposure_share"][op.FAIR_ATTRIBUTE][prot] < \
        rnd["exposure_share"][op.FAIR_ATTRIBUTE][prot]


def test_an_edited_policy_file_is_what_gets_evaluated(root, tmp_path):
    pol = tmp_path / "pol"
    first = op.run_campaign("women", root, policy_dir=pol, n_bootstrap=0, l2=10000.0, rows=1500)
    path = pol / "women" / "obd_diverse.yaml"
    path.write_text(path.read_text().replace("    max: 1\n", "    max: 2\n"))
    second = op.run_campaign("women", root, policy_dir=pol, n_bootstrap=0, l2=10000.0, rows=1500)
    assert not first["policies"]["obd_diverse"]["edited"] and second["policies"]["obd_diverse"]["edited"]
    assert second["results"]["obd_diverse"]["slates"][f"max_per_{op.DIVERSITY_ATTRIBUTE}_value"] == 2
    again = op.run_campaign("women", root, policy_dir=pol, n_bootstrap=0, l2=10000.0, rows=1500,
                            reset_policies=True)
    assert not again["policies"]["obd_diverse"]["edited"]
    assert again["results"]["obd_diverse"]["slates"] == first["results"]["obd_diverse"]["slates"]


def test_matched_clicks_and_the_zero_click_bound(tiny):
    data, q = tiny
    v = versions()["obd_greedy"]
    runs = {"obd_greedy": op.run_policy(v, data, q[:, :, 0])}
    res = op.evaluate_runs(data, q, runs, fair_attribute="item_feature_3", protected="y", p=op.FAIR_P,
                           alpha=op.FAIR_ALPHA, n_bootstrap=0, seed=0)["obd_greedy"]
    assert res["matched_rows_per_position"] == [1, 0, 1]
    assert res["matched_clicks_per_position"] == [1, 0, 0]
    assert res["zero_click_upper95_ctr"] == [None, None, pytest.approx(0.95)]  # 1 - 0.05^(1/1)
