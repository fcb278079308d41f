"""The simulator (simulation/): scenario validation, each part alone (random streams, user model,
catalog, ranker, metrics), the loop (common random numbers, determinism, identical policies),
the calibration to the Open Bandit Dataset sample, and `reranker simulate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offline.policies import load_version, version_from_text
from simulation import rng
from simulation.catalog import Catalog, share_of
from simulation.environment import Market, calibrate_intercept, gini, hhi, simulate_shard
from simulation.ranker import retrieve
from simulation.run import METRICS, Calibration, paired, simulate
from simulation.scenario import ScenarioInvalid, check_policy, load_scenario, parse_scenario
from simulation.users import Users, choose, click_probabilities

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "scenarios" / "marketplace.yaml"
POLICIES = ROOT / "examples" / "scenarios" / "policies"

TINY = """
name: tiny
horizon_days: 4
users:
  initial: 20
  arrivals_per_day: 2
  session: {budget: 4.0, max_steps: 4}
catalog:
  initial_sellers: 6
  items_per_seller: 5
  new_sellers_per_day: 1
  new_seller_days: 3
  item_lifetime_days: 3
  churn: {window_days: 2, min_exposure: 5.0}
ranker: {noise_sd: 0.5, popularity_bias: 0.5}
clicks: {calibrate: target, target_ctr: 0.05}
engine: {candidates: 20, slate_size: 5}
"""
#: a fixed intercept (no calibration run) for the loop tests
CAL = Calibration("test", 0.05, -3.0, 0.05)


def tiny(**changes):
    s = parse_scenario(TINY)
    return s.model_copy(update=changes) if changes else s


@pytest.fixture(scope="module")
def feed():
    return load_version(POLICIES / "home_feed.yaml")


@pytest.fixture(scope="module")
def amortized():
    return load_version(POLICIES / "home_feed_amortized.yaml")


# ------------------------------------------------------------------ scenario files
def test_the_example_scenario_and_policies_load():
    s = load_scenario(EXAMPLE)
    assert s.name == "marketplace" and s.engine.candidates == 200 and s.engine.slate_size == 10
    assert s.clicks.calibrate == "obd"
    for name in ("home_feed", "home_feed_amortized", "home_feed_fair"):
        check_policy(load_version(POLICIES / f"{name}.yaml"))  # nothing missing


def test_impossible_parameters_are_refused_with_file_path_line_and_expectation(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nhorizon_days: 0\nusers:\n  initial: 10\n  arrivals_per_day: -1\n"
                   "  session: {budget: 0, max_steps: 3}\ncatalog:\n  initial_sellers: 5\n"
                   "  items_per_seller: 4\n  colour: red\n  churn: {window_days: 3, min_exposure: .nan}\n")
    with pytest.raises(ScenarioInvalid) as e:
        load_scenario(bad)
    lines = str(e.value).splitlines()
    assert lines == [
        # the default engine.candidates (200) against a catalog of 20 items: no line (not written)
        f"{bad}: engine.candidates: must be <= the day-0 catalog (catalog.initial_sellers x "
        "catalog.items_per_seller = 20 items), got 200",
        f"{bad}: horizon_days: must be an integer between 1 and 100000, got 0 (line 2)",
        f"{bad}: users.arrivals_per_day: must be a finite number between 0 and 1e+06, got -1 (line 5)",
        f"{bad}: users.session.budget: must be a finite number > 0 and <= 1e+06, got 0 (line 6)",
        f"{bad}: catalog: unknown key 'colour' (allowed: categories, churn, initial_sellers, "
        "item_lifetime_days, items_per_seller, new_seller_days, new_sellers_per_day, out_of_stock_share, "
        "price_median, price_sd_log, purchase_given_click, quality_sd, seller_quality_sd, video_share) (line 10)",
        f"{bad}: catalog.churn.min_exposure: must be a finite number between 0 and 1e+06, got .nan (line 11)",
    ]


def test_rules_across_fields_name_the_field():
    with pytest.raises(ScenarioInvalid) as e:
        parse_scenario(TINY.replace("candidates: 20, slate_size: 5", "candidates: 20, slate_size: 25"), "s.yaml")
    assert str(e.value) == "s.yaml: engine.slate_size: must be <= engine.candidates (20), got 25 (line 17)"
    with pytest.raises(ScenarioInvalid) as e:
        parse_scenario(TINY.replace("candidates: 20,", "candidates: 31,"), "s.yaml")
    assert "engine.candidates: must be <= the day-0 catalog (catalog.initial_sellers x " \
           "catalog.items_per_seller = 30 items), got 31 (line 17)" in str(e.value)
    with pytest.raises(ScenarioInvalid) as e:
        parse_scenario(TINY.replace("calibrate: target, target_ctr: 0.05", "calibrate: target"), "s.yaml")
    assert "clicks.target_ctr: is required with calibrate: target" in str(e.value)
    # with a bad field elsewhere, the rules across fields are still reported
    with pytest.raises(ScenarioInvalid) as e:
        parse_scenario(TINY.replace("candidates: 20, slate_size: 5", "candidates: 20, slate_size: 25")
                       .replace("budget: 4.0", "budget: 0"), "s.yaml")
    assert str(e.value).splitlines() == [
        "s.yaml: users.session.budget: must be a finite number > 0 and <= 1e+06, got 0 (line 7)",
        "s.yaml: engine.slate_size: must be <= engine.candidates (20), got 25 (line 17)"]
    with pytest.raises(ScenarioInvalid) as e:
        load_scenario("/nonexistent/scenario.yaml")
    assert str(e.value).startswith("/nonexistent/scenario.yaml: cannot read the scenario")


def test_a_policy_needing_what_the_simulator_does_not_generate_is_refused(feed):
    text = (POLICIES / "home_feed.yaml").read_text()
    brand = version_from_text(text.replace("attribute: category\n    max: 3", "attribute: brand\n    max: 3"),
                              "brand.yaml")
    with pytest.raises(ScenarioInvalid) as e:
        check_policy(brand)
    msg = str(e.value)
    assert "candidates.attributes['brand'] (constraints[0] 'max_3_per_category'), which the simulator does not " \
           "generate (it generates: availability, category, content_type, seller, seller_tier)" in msg
    dpp = version_from_text(text.replace("solver:", "diversity:\n  method: dpp\n  weight: 0.3\n\nsolver:"), "dpp.yaml")
    with pytest.raises(ScenarioInvalid, match=r"needs candidates.embeddings \(diversity \(dpp\)\), which the "
                                              r"simulator does not generate"):
        check_policy(dpp)
    with pytest.raises(ScenarioInvalid, match="brand"):
        simulate(tiny(), [feed, brand], seeds=1, calibration=CAL)


# ------------------------------------------------------------------ random streams
def test_keyed_streams_are_pure_functions_of_their_keys():
    k = rng.stream_key(7, 0, rng.CLICK)
    u = rng.uniform(k, np.arange(1000), 3)
    assert np.array_equal(u, rng.uniform(k, np.arange(1000), 3))
    # one draw does not depend on which others are drawn with it (common random numbers)
    assert np.array_equal(rng.uniform(k, np.arange(500, 1000), 3), u[500:])
    assert rng.uniform(k, np.array([17]), 3)[0] == u[17]
    assert not np.array_equal(u, rng.uniform(k, np.arange(1000), 4))
    assert rng.stream_key(7, 0, rng.CLICK) != rng.stream_key(7, 1, rng.CLICK) != rng.stream_key(8, 0, rng.CLICK)
    assert rng.stream_key(7, 0, rng.CLICK) != rng.stream_key(7, 0, rng.PURCHASE)
    big = rng.uniform(k, np.arange(200_000))
    assert 0.0 < big.min() and big.max() < 1.0
    assert abs(big.mean() - 0.5) < 0.005 and abs(big.var() - 1 / 12) < 0.002  # 0.005: ~7 standard errors
    z = rng.normal(k, np.arange(200_000), 1)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.02
    p = rng.poisson(k, 3.0, np.arange(100_000), 2)
    assert abs(p.mean() - 3.0) < 0.05 and p.min() >= 0
    # broadcasting: a [3, 1] x [1, 4] grid equals the draws made one by one
    grid = rng.uniform(k, np.arange(3)[:, None], 5, np.arange(4)[None, :])
    assert grid.shape == (3, 4)
    assert grid[2, 3] == rng.uniform(k, 2, 5, 3)


# ------------------------------------------------------------------ user model
def _choose_naive(logits, u):
    """The choice of one row by hand: P(no click) = 1 / (1 + sum exp), item k: exp(z_k) / (...)."""
    weights = [np.exp(z) for z in logits]
    total = 1.0 + sum(weights)
    acc = 0.0
    for k, w in enumerate(weights):
        acc += w / total
        if u < acc:
            return k
    return -1


def test_choice_matches_the_multinomial_logit_by_hand():
    g = np.random.default_rng(1)
    logits = g.normal(-1.0, 2.0, size=(400, 6))
    logits[::7, 4:] = -np.inf  # slates shorter than K
    u = g.random(400)
    got = choose(logits, u)
    assert got.tolist() == [_choose_naive(row, x) for row, x in zip(logits, u)]
    p = click_probabilities(logits)
    assert np.allclose(p.sum(axis=1), [sum(np.exp(z) for z in row) / (1 + sum(np.exp(z) for z in row)) for row in logits])
    assert (p[::7, 4:] == 0).all()
    # the empirical click rates over many uniforms equal the probabilities (4 standard errors)
    row = np.tile(logits[1], (40_000, 1))
    picks = choose(row, g.random(40_000))
    freq = np.bincount(picks[picks >= 0], minlength=6) / 40_000
    assert np.all(np.abs(freq - p[1]) < 4 * np.sqrt(p[1] * (1 - p[1]) / 40_000) + 1e-12)
    # huge logits do not overflow
    assert choose(np.array([[800.0, 799.0]]), np.array([0.5])).tolist() == [0]


def test_users_arrive_visit_evolve_and_leave_by_satisfaction():
    s = tiny()
    cfg = s.users.model_copy(update={"arrivals_per_day": 5.0})
    users = Users(cfg, s.catalog.categories, 6, seed=3, shard=0, shards=1)
    assert users.n_initial == 20 and (users.arrival[:20] == 0).all() and (np.diff(users.arrival) >= 0).all()
    v0 = users.visitors(0)
    assert v0.tolist() == list(range(20))  # everyone visits on the day they arrive
    later = users.visitors(3)
    assert set(later) <= set(np.flatnonzero(users.arrival <= 3))
    # interest evolution: a good item pulls the interest toward +1, a bad one toward -1
    users.interest[[0, 1], [2, 2]] = [0.2, 0.2]
    before = users.interest[[0, 1], [2, 2]].copy()
    users.after_clicks(np.array([0, 1]), np.array([2, 2]), np.array([1.0, -1.0]))
    after = users.interest[[0, 1], [2, 2]]
    assert after[0] > before[0] and after[1] < before[1]
    assert np.isclose(after[0], before[0] + 0.05 * (1 - before[0]))
    # return: satisfied users stay more often than unsatisfied ones, by the model's probability
    many = Users(s.users.model_copy(update={"initial": 4000, "arrivals_per_day": 0.0}), 8, 2, seed=1, shard=0, shards=1)
    ids = np.arange(4000)
    sat = np.where(ids < 2000, 3.0, -3.0)
    gone = many.end_sessions(ids, 0, sat)
    r = s.users.returns
    p_stay_hi = 1 / (1 + np.exp(-(r.base + r.slope * (1 - r.memory) * 3.0)))
    p_stay_lo = 1 / (1 + np.exp(-(r.base + r.slope * (1 - r.memory) * -3.0)))
    assert abs((gone >= 2000).sum() / 2000 - (1 - p_stay_lo)) < 0.05  # 0.05: > 4 standard errors
    assert abs((gone < 2000).sum() / 2000 - (1 - p_stay_hi)) < 0.05
    assert not many.retained[gone].any() and many.retained.sum() == 4000 - len(gone)


# ------------------------------------------------------------------ catalog
def test_sellers_without_exposure_leave_after_the_window_and_new_ones_arrive():
    s = tiny()
    cat = Catalog(s.catalog, 6, seed=0, shard=0, shards=1)
    assert cat.n_initial == 6 and (cat.arrival[6:] > 0).all()
    live = cat.start_day(0)
    assert set(cat.seller_of[live]) == set(range(6))
    w = np.array([1.0, 0.5])
    # day 0 and 1: seller 0's items shown a lot, the others never
    for d in (0, 1):
        if d:
            cat.start_day(d)
        slots = np.flatnonzero(cat.seller_of == 0)[:2]
        cat.record(d, np.tile(slots, (10, 1)), w, np.full(10, -1))
        left = cat.end_day(d)
        if d == 0:
            assert len(left) == 0  # nobody is window_days (2) old yet
    assert left.tolist() == [1, 2, 3, 4, 5]  # exposure 0 < 5 over the window
    assert cat.alive[0] and cat.exposure[0, :2].sum() == 30.0
    # new sellers arrive as 'new', alive on their day
    d = int(cat.arrival[6])
    for day in range(2, d + 1):
        cat.start_day(day)
    assert cat.alive[6] and cat.tier_new(d)[6] and not cat.tier_new(d)[0]
    assert not cat.tier_new(d + s.catalog.new_seller_days)[6]
    # expired items are replaced by a new generation of the same slot, same seller, listed that day
    mine = np.flatnonzero(cat.seller_of == 0)
    first_death = cat.death[mine].copy()
    for day in range(d + 1, 6):
        cat.start_day(day)
    replaced = mine[first_death <= 5]
    assert len(replaced) and (cat.gen[replaced] >= 1).all() and (cat.born[replaced] <= 5).all()
    assert (cat.gen[mine[first_death > 5]] == 0).all()
    assert share_of(10, 3, 0) == 4 and share_of(10, 3, 2) == 3


def test_item_attributes_come_from_their_identity():
    s = tiny()
    a = Catalog(s.catalog, 6, seed=0, shard=0, shards=1)
    b = Catalog(s.catalog, 6, seed=0, shard=0, shards=1)
    for c in (a, b):
        c.start_day(0)
    a.end_day(0)  # what happens to sellers does not move the items' draws
    for name in ("category", "quality", "price", "purchase_prob", "video", "death"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    other = Catalog(s.catalog, 6, seed=1, shard=0, shards=1)
    assert not np.array_equal(a.quality, other.quality)


# ------------------------------------------------------------------ ranker, metrics
def test_retrieve_is_the_top_n_by_score():
    g = np.random.default_rng(0)
    s = g.normal(size=(50, 80))
    for n in (1, 10, 80):
        got = retrieve(s, n)
        assert np.array_equal(got, np.argsort(-s, axis=1, kind="stable")[:, :n])


def _gini_naive(x):
    x = np.asarray(x, float)
    if x.sum() == 0:
        return 0.0
    return sum(abs(a - b) for a in x for b in x) / (2 * len(x) ** 2 * x.mean())


def test_gini_and_hhi_against_their_definitions():
    g = np.random.default_rng(2)
    for x in (g.random(17), g.exponential(size=40), np.zeros(5), np.array([3.0]), np.array([0, 0, 5.0])):
        assert np.isclose(gini(x), _gini_naive(x))
        total = x.sum()
        assert np.isclose(hhi(x), sum((v / total) ** 2 for v in x) if total else 0.0)
    assert gini(np.ones(10)) == 0.0 and np.isclose(hhi(np.ones(10)), 0.1)


def test_paired_differences_and_their_interval():
    d = paired([1.0, 2.0, 3.0], [1.5, 2.5, 4.0])
    assert np.allclose(d["per_seed"], [0.5, 0.5, 1.0])
    assert np.isclose(d["mean"], 2 / 3)
    half = 4.302652729911275 * np.std([0.5, 0.5, 1.0], ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert np.isclose(d["lo"], 2 / 3 - half) and np.isclose(d["hi"], 2 / 3 + half)
    one = paired([1.0], [2.0])
    assert one["mean"] == 1.0 and one["lo"] is None and one["hi"] is None


# ------------------------------------------------------------------ the loop
def test_common_random_numbers_same_users_items_and_noise_under_two_policies(feed, amortized):
    s = tiny()
    a = Market(s, feed, 5, 0, CAL.intercept)
    b = Market(s, amortized, 5, 0, CAL.intercept)
    for name in ("arrival", "interest"):
        assert np.array_equal(getattr(a.users, name), getattr(b.users, name))
    for name in ("arrival", "seller_quality", "category", "quality", "price"):
        assert np.array_equal(getattr(a.catalog, name), getattr(b.catalog, name))
    a.run_day(0)
    b.run_day(0)
    # day 0: the same visitors and budgets; a different policy shows different slates
    assert a.daily["sessions"][0] == b.daily["sessions"][0] > 0
    ra, rb = a.run(), b.run()
    assert ra.daily["users_arrived"].tolist() == rb.daily["users_arrived"].tolist()
    assert ra.daily["new_sellers_arrived"].tolist() == rb.daily["new_sellers_arrived"].tolist()
    assert ra.daily["new_seller_exposure"].sum() != rb.daily["new_seller_exposure"].sum()


def test_deterministic_by_seed(feed, amortized):
    s = tiny()
    one = simulate(s, [feed, amortized], seeds=2, calibration=CAL).to_json(timings=False)
    two = simulate(s, [feed, amortized], seeds=2, calibration=CAL).to_json(timings=False)
    assert json.dumps(one) == json.dumps(two)
    r0 = simulate_shard(s, feed, 0, 0, CAL.intercept)
    r1 = simulate_shard(s, feed, 1, 0, CAL.intercept)
    assert r0.daily["clicks"].tolist() != r1.daily["clicks"].tolist()
    assert one["metrics"]["sim_home_feed"]["mean"]["revenue"] > 0


def test_identical_policies_give_exactly_zero_paired_difference(feed):
    sim = simulate(tiny(), [feed, load_version(POLICIES / "home_feed.yaml")], seeds=3, calibration=CAL)
    assert sim.labels == ["sim_home_feed", "sim_home_feed#2"]
    for key in METRICS:
        d = sim.differences["sim_home_feed#2"][key]
        assert d["per_seed"] == [0.0, 0.0, 0.0] and d["mean"] == 0.0 and d["lo"] == 0.0 and d["hi"] == 0.0, key
    runs = sim.runs
    for a, b in zip(runs["sim_home_feed"], runs["sim_home_feed#2"]):
        for key in a.series:
            assert np.array_equal(a.series[key], b.series[key])


# ------------------------------------------------------------------ calibration
def test_click_rates_are_calibrated_to_the_obd_sample(obd_root):
    from offline import obd
    from simulation.run import calibrate

    target = obd.load("all", "random", obd_root).ctr()
    s = parse_scenario(TINY.replace("calibrate: target, target_ctr: 0.05",
                                    f"calibrate: obd, obd: {{root: {obd_root}}}, calibration_requests: 500"))
    cal = calibrate(s)
    assert cal.target_ctr == target == 0.0038
    assert abs(cal.achieved_ctr - target) < 1e-6
    assert "OBD sample (all/random" in cal.text() and f"{cal.intercept:.4f}" in cal.text()
    # the achieved CTR is the click model's: simulate the upstream ranker's slates by hand
    intercept, achieved = calibrate_intercept(s, 0.02)
    assert abs(achieved - 0.02) < 1e-6 and intercept > cal.intercept
    # and the simulated CTR under a policy lands near the target (the engine re-orders, users evolve)
    sim = simulate(s.model_copy(update={"horizon_days": 2}), [load_version(POLICIES / "home_feed.yaml")],
                   seeds=1, calibration=cal)
    assert 0 <= sim.mean_metrics("sim_home_feed")["ctr"] < 5 * target


def test_a_missing_obd_sample_is_a_clear_error(tmp_path):
    from simulation.run import calibrate

    s = parse_scenario(TINY.replace("calibrate: target, target_ctr: 0.05", f"calibrate: obd, obd: {{root: {tmp_path}}}"))
    with pytest.raises(ScenarioInvalid, match=r"clicks.obd.root: cannot read the Open Bandit Dataset sample .*make data"):
        calibrate(s)


# ------------------------------------------------------------------ the command line
def test_reranker_simulate_table_json_and_report(tmp_path, capsys):
    from server.cli import main

    scen = tmp_path / "tiny.yaml"
    scen.write_text(TINY)
    a, b = str(POLICIES / "home_feed.yaml"), str(POLICIES / "home_feed_amortized.yaml")
    out = tmp_path / "out"
    code = main(["simulate", "--scenario", str(scen), "--policy", a, "--policy", b, "--seeds", "2",
                 "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert "scenario tiny: 4 days, 2 seed(s), 1 shard(s); click intercept" in text
    assert "sim_home_feed_amortized - sim_home_feed" in text and "new sellers' exposure share" in text
    assert {p.name for p in out.iterdir()} == {"simulation.png", "report.html", "simulation.json"}
    assert (out / "simulation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "<img src=\"simulation.png\"" in page and "Calibration" in page and "target 0.05000" in page
    saved = json.loads((out / "simulation.json").read_text())
    assert saved["seeds"] == [0, 1] and set(saved["differences"]) == {"sim_home_feed_amortized"}
    assert len(saved["series"]["sim_home_feed"]["retention"]) == 4
    code = main(["simulate", "--scenario", str(scen), "--policy", a, "--policy", b, "--seeds", "2", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert printed["metrics"] == saved["metrics"] and printed["differences"] == saved["differences"]


def test_reranker_simulate_refuses_bad_input(tmp_path, capsys):
    from server.cli import main

    scen = tmp_path / "bad.yaml"
    scen.write_text(TINY.replace("budget: 4.0", "budget: -4.0"))
    a = str(POLICIES / "home_feed.yaml")
    assert main(["simulate", "--scenario", str(scen), "--policy", a]) == 2
    err = capsys.readouterr().err
    assert f"{scen}: users.session.budget: must be a finite number > 0 and <= 1e+06, got -4.0 (line 7)" in err
    assert main(["simulate", "--scenario", str(scen), "--policy", a, "--workers", "2", "--ray"]) == 2
    assert "choose one" in capsys.readouterr().err
