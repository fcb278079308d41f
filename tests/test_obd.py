"""The Open Bandit Dataset sample (offline.obd), the reward model (offline.reward_model) and the
paper's experiment (offline.obd_experiment).

The data tests read what `make data` unpacked into data/obd: missing data fails with a clear
message when CI is set and is skipped (with the same message) otherwise."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from offline import obd
from offline.reward_model import fit_click_model, fit_logistic



@pytest.fixture(scope="module")
def root(obd_root) -> Path:
    return obd_root


# ------------------------------------------------------------------ fetch and checksum
def test_make_data_output_verifies_and_fetch_is_idempotent(root, tmp_path):
    manifest = obd.verify(root)
    assert manifest["archive_sha256"] == obd.OBP_SDIST_SHA256
    assert set(obd.EXPECTED_FILES) <= set(manifest["files"])
    for rel in obd.EXPECTED_FILES:
        assert obd.sha256_file(root / rel) == manifest["files"][rel]
    # already there: no download is attempted (a python that cannot run would fail it)
    assert obd.fetch(root, python=str(tmp_path / "no-such-python")) == root
    assert obd.verify(root) == manifest


def test_fetch_refuses_an_archive_with_the_wrong_checksum(tmp_path):
    bogus = tmp_path / obd.OBP_SDIST
    with tarfile.open(bogus, "w:gz") as tar:
        (tmp_path / "x.csv").write_text("a\n1\n")
        tar.add(tmp_path / "x.csv", arcname="obp-0.5.7/obp/dataset/obd/random/all/all.csv")
    dest = tmp_path / "obd"
    with pytest.raises(obd.ChecksumError) as err:
        obd.fetch(dest, archive=bogus)
    assert str(bogus) in str(err.value) and f"expected {obd.OBP_SDIST_SHA256}" in str(err.value)
    assert not dest.exists()  # nothing unpacked


def test_fetch_names_a_failed_download(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ERROR: network is unreachable' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(obd.FetchError, match=r"pip download of obp==0\.5\.7 .*failed with exit code 1"
                                             r"(.|\n)*network is unreachable"):
        obd.fetch(tmp_path / "obd", python=str(fake))
    assert not (tmp_path / "obd").exists()


def test_verify_names_a_changed_or_missing_file(root, tmp_path):
    copy = tmp_path / "obd"
    shutil.copytree(root, copy)
    target = copy / "random" / "men" / "men.csv"
    with open(target, "ab") as f:
        f.write(b"\n")
    with pytest.raises(obd.ChecksumError, match=r"random/men/men\.csv: sha256 [0-9a-f]{64}, expected"):
        obd.verify(copy)
    target.unlink()
    with pytest.raises(obd.DataMissing, match=r"random/men/men\.csv: missing \(run `make data`\)"):
        obd.verify(copy)
    (copy / obd.MANIFEST).unlink()
    with pytest.raises(obd.DataMissing, match="MANIFEST.json: not found"):
        obd.verify(copy)
    with pytest.raises(obd.DataMissing, match="run `make data`"):
        obd.load("men", "random", tmp_path / "nowhere")


# ------------------------------------------------------------------ reader validation
ITEMS = ",item_id,item_feature_0,item_feature_1,item_feature_2\n" \
        "0,0,-0.5,aa,xx\n1,1,0.25,bb,xx\n2,2,1.0,aa,yy\n"


def _rows(n=5):
    head = ["", "timestamp", "item_id", "position", "click", "propensity_score", "user_feature_0",
            "user_feature_1"] + [f"user-item_affinity_{i}" for i in range(3)]
    rows = []
    for r in range(n):
        rows.append([str(r), f"2019-11-24 00:00:{10 + r:02d}.000100+00:00", str(r % 3), str(1 + r % 3),
                     str(int(r == 2)), "0.3333333333333333", "u1" if r < 3 else "u2", "g", "0.0",
                     "1.0" if r == 1 else "0.0", "0.0"])
    return head, rows


def _write(root: Path, head, rows, items=ITEMS) -> Path:
    folder = root / "random" / "men"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "item_context.csv").write_text(items)
    path = folder / "men.csv"
    path.write_text("\n".join(",".join(r) for r in [head, *rows]) + "\n")
    return path


def test_reader_types_a_valid_file(tmp_path):
    _write(tmp_path, *_rows())
    d = obd.load("men", "random", tmp_path)
    assert (d.n, d.n_items, d.item_ids) == (5, 3, ("0", "1", "2"))
    assert d.item.tolist() == [0, 1, 2, 0, 1] and d.position.tolist() == [1, 2, 3, 1, 2]
    assert d.click.tolist() == [0, 0, 1, 0, 0] and np.allclose(d.propensity, 1 / 3)
    assert d.timestamp.dtype == np.dtype("datetime64[us]")
    assert str(d.timestamp[0]) == "2019-11-24T00:00:10.000100"
    assert d.user_feature_names == ("user_feature_0", "user_feature_1")
    assert d.user_dictionaries[0] == ("u1", "u2") and d.user_codes[:, 0].tolist() == [0, 0, 0, 1, 1]
    assert d.affinity.shape == (5, 3) and d.affinity[1, 1] == 1.0
    assert d.item_numeric["item_feature_0"].tolist() == [-0.5, 0.25, 1.0]
    assert d.item_dictionaries["item_feature_1"] == ("aa", "bb")
    assert d.item_codes["item_feature_1"].tolist() == [0, 1, 0]
    # rows 0-2 share the user and come 1 s apart: the gap is not <= 1 s from the first row for row 2
    assert obd.group_impressions(d, max_gap_s=1.0).tolist() == [0, 0, 1, 2, 2]
    assert obd.group_impressions(d, max_gap_s=0.5).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("row, column, value, message", [
    (3, "position", "x", "must be an integer position in 1..3, got 'x'"),
    (2, "position", "4", "must be an integer position in 1..3, got '4'"),
    (4, "item_id", "7", r"must be an item id in \[0, 2\] \(item_context.csv\), got '7'"),
    (1, "item_id", "1.5", "got '1.5'"),
    (5, "click", "2", "must be 0 or 1, got '2'"),
    (2, "propensity_score", "0", r"must be a number in \(0, 1\], got '0'"),
    (3, "propensity_score", "1.5", r"must be a number in \(0, 1\], got '1.5'"),
    (1, "propensity_score", "", r"must be a number in \(0, 1\], got ''"),
    (4, "propensity_score", "nan", r"must be a number in \(0, 1\], got 'nan'"),
    (2, "user-item_affinity_1", "inf", "must be a finite number, got 'inf'"),
    (3, "timestamp", "2019-11-24 00:00:12", "must be a time with a zone offset"),
    (5, "user_feature_1", "", "must be a non-empty category"),
])
def test_reader_refuses_a_bad_value_naming_file_row_and_column(tmp_path, row, column, value, message):
    head, rows = _rows()
    rows[row - 1][head.index(column)] = value
    path = _write(tmp_path, head, rows)
    with pytest.raises(obd.FormatError, match=message) as err:
        obd.load("men", "random", tmp_path)
    assert (err.value.file, err.value.row, err.value.column) == (str(path), row, column)
    assert str(err.value).startswith(f"{path}, row {row} (line {row + 1}), column {column!r}: ")


@pytest.mark.parametrize("column", ["click", "propensity_score", "user-item_affinity_2", "timestamp"])
def test_reader_refuses_a_missing_column(tmp_path, column):
    head, rows = _rows()
    j = head.index(column)
    path = _write(tmp_path, head[:j] + head[j + 1:], [r[:j] + r[j + 1:] for r in rows])
    with pytest.raises(obd.FormatError, match=f"column '{column}': missing column") as err:
        obd.load("men", "random", tmp_path)
    assert (err.value.file, err.value.row) == (str(path), None)


def test_reader_refuses_short_rows_bad_items_and_no_user_features(tmp_path):
    head, rows = _rows()
    rows[2] = rows[2][:-1]
    path = _write(tmp_path, head, rows)
    with pytest.raises(obd.FormatError, match=r"row 3 \(line 4\): expected 11 fields \(as the header\), got 10"):
        obd.load("men", "random", tmp_path)
    head, rows = _rows()
    _write(tmp_path, head, rows, items=ITEMS.replace("2,2,1.0", "2,1,1.0"))
    with pytest.raises(obd.FormatError, match=r"item_context.csv, row 3 \(line 4\), column 'item_id': "
                                              "duplicate item id 1"):
        obd.load("men", "random", tmp_path)
    keep = [j for j, h in enumerate(head) if not h.startswith("user_feature_")]
    _write(tmp_path, [head[j] for j in keep], [[r[j] for j in keep] for r in rows])
    with pytest.raises(obd.FormatError, match="no user_feature_"):
        obd.load("men", "random", tmp_path)
    assert path.exists()
    with pytest.raises(ValueError, match="campaign: must be one of all, men, women, got 'kids'"):
        obd.load("kids", "random", tmp_path)


# ------------------------------------------------------------------ the real sample
def test_the_sample_reads_as_documented(root):
    for behavior in obd.BEHAVIORS:
        for campaign in obd.CAMPAIGNS:
            d = obd.load(campaign, behavior, root)
            assert (d.n, d.n_items) == (10_000, obd.N_ITEMS[campaign])
            assert set(d.position.tolist()) == {1, 2, 3}
            assert (np.diff(d.timestamp.astype(np.int64)) >= 0).all()  # time order
            if behavior == "random":  # uniform random: 1 / n_items exactly
                assert np.allclose(d.propensity, 1 / d.n_items, rtol=1e-6)
            s = obd.impression_stats(d)
            # almost every impression keeps one row: slates of one item (module docstring)
            assert s["with_1_rows"] > 0.93 * s["impressions"] and s["with_3_rows"] <= 2
    assert obd.impression_stats(obd.load("all", "random", root))["with_3_rows"] == 0


def test_decision_log_round_trip_through_read_log(root, tmp_path):
    from engine.decision_log import from_table, join_outcomes, read_log, read_outcomes

    data = obd.load("men", "random", root)
    summary = obd.to_decision_log(data, tmp_path / "log", train_fraction=0.8, batch_size=700)
    assert summary["records"] == summary["test_rows"] == 2000 and summary["train_rows"] == 8000
    table = read_log(tmp_path / "log")
    assert table.num_rows == 2000
    records = from_table(table)
    test = np.arange(8000, 10_000)
    for rec, r in zip(records[::97], test[::97]):
        assert rec.request_id == f"obd-random-men-{int(data.index[r]):06d}"
        assert rec.policy == "obd_random" and rec.policy_digest == obd.policy_digest("random", "men")
        assert rec.slate_item_ids == (str(int(data.item[r])),) and rec.slate_index.tolist() == [data.item[r]]
        assert rec.marginal.tolist() == [data.propensity[r]] == rec.cascade.tolist() == [rec.joint]
        c = rec.candidates
        assert list(c.item_ids) == list(data.item_ids) and c.scores["p_click"].shape == (34,)
        assert ((0 < c.scores["p_click"]) & (c.scores["p_click"] < 1)).all()
        assert (c.numeric["position"] == data.position[r]).all()
        assert np.array_equal(c.numeric["user_item_affinity"], data.affinity[r])
        assert c.attributes["item_feature_1"].values() == [
            data.item_dictionaries["item_feature_1"][k] for k in data.item_codes["item_feature_1"]]
        assert set(c.attributes["user_feature_0"].values()) == {
            data.user_dictionaries[0][data.user_codes[r, 0]]}
        assert rec.ts.timestamp() == pytest.approx(data.timestamp[r].astype(np.int64) / 1e6, abs=1e-6)
    outcomes = read_outcomes(tmp_path / "log")
    joined = join_outcomes(table, outcomes)
    assert joined.num_rows == 2000
    assert joined.column("clicks").to_numpy().tolist() == data.click[test].tolist()
    assert joined.column("marginal").to_numpy().tolist() == data.propensity[test].tolist()
    # the scores are the reward model fitted on the first 8,000 rows only
    model = obd.fit_reward_model(data, np.arange(8000))
    q = obd.predict_rewards(model, data.take(test))
    p = data.position[test[0]] - 1
    assert np.allclose(records[0].candidates.scores["p_click"], q[0, :, p], rtol=1e-12)
    with pytest.raises(ValueError, match="rows: must be 'test' or 'all', got 'train'"):
        obd.to_decision_log(data, tmp_path / "x", rows="train")


# ------------------------------------------------------------------ Bernoulli TS
def test_bts_action_distribution_has_its_exact_properties():
    rng = np.random.default_rng(5)
    alpha, beta = rng.uniform(1, 6, 7), rng.uniform(2, 30, 7)
    n_sim = 200_000
    dist = obd.bts_action_dist(alpha, beta, len_list=3, n_sim=n_sim, seed=1, chunk=30_000)
    assert dist.shape == (7, 3)
    assert np.allclose(dist.sum(axis=0), 1.0, atol=1e-12)  # one item per position, always
    assert (dist.sum(axis=1) <= 1 + 1e-12).all()  # an item is shown at most once
    exact = obd.bts_top1_exact(alpha, beta)
    assert exact.sum() == pytest.approx(1.0, abs=1e-8)
    se = np.sqrt(exact * (1 - exact) / n_sim)
    assert (np.abs(dist[:, 0] - exact) <= 4.5 * se + 1e-9).all()
    # symmetric prior: every item equally likely at every position
    sym = obd.bts_action_dist(np.full(10, 3.0), np.full(10, 50.0), n_sim=n_sim, seed=2)
    se = np.sqrt(0.1 * 0.9 / n_sim)
    assert (np.abs(sym - 0.1) <= 4.5 * se).all()
    assert np.allclose(obd.bts_top1_exact(np.full(10, 3.0), np.full(10, 50.0)), 0.1, atol=1e-9)
    # as many positions as items: every row and column of the permutation law sums to 1
    full = obd.bts_action_dist(alpha[:4], beta[:4], len_list=4, n_sim=10_000, seed=3)
    assert np.allclose(full.sum(axis=0), 1) and np.allclose(full.sum(axis=1), 1)
    # seeded: same seed, same table; chunking does not change the draws' law but does their order
    assert np.array_equal(dist, obd.bts_action_dist(alpha, beta, len_list=3, n_sim=n_sim, seed=1,
                                                    chunk=30_000))
    assert not np.array_equal(dist, obd.bts_action_dist(alpha, beta, len_list=3, n_sim=n_sim, seed=4,
                                                        chunk=30_000))
    with pytest.raises(ValueError, match=r"len_list: must be an integer in \[1, 7\], got 8"):
        obd.bts_action_dist(alpha, beta, len_list=8)
    with pytest.raises(ValueError, match="alpha, beta: must be finite and > 0"):
        obd.bts_action_dist(-alpha, beta)


def test_bts_with_the_production_prior(root):
    for campaign in obd.CAMPAIGNS:
        alpha, beta = obd.bts_prior(campaign, root)
        assert alpha.shape == beta.shape == (obd.N_ITEMS[campaign],)
    alpha, beta = obd.bts_prior("men", root)
    dist = obd.bts_action_dist(alpha, beta, n_sim=100_000, seed=0)
    exact = obd.bts_top1_exact(alpha, beta)
    se = np.sqrt(exact * (1 - exact) / 100_000)
    assert (np.abs(dist[:, 0] - exact) <= 4.5 * se + 1e-9).all()
    bad = root.parent / "not-there"
    with pytest.raises(obd.DataMissing, match="prior_bts.yaml: not found"):
        obd.bts_prior("men", bad)


# ------------------------------------------------------------------ reward model
def test_logistic_regression_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40_000, 3))
    w, b = np.array([1.0, -0.5, 0.0]), -2.0
    y = (rng.random(40_000) < 1 / (1 + np.exp(-(X @ w + b)))).astype(int)
    m = fit_logistic(X, y, l2=0.0)
    assert m.converged
    assert np.allclose(m.coef, w, atol=0.06) and m.intercept == pytest.approx(b, abs=0.06)
    # the penalty shrinks the coefficients, never the intercept's role
    assert np.abs(fit_logistic(X, y, l2=1e5).coef).sum() < 0.5 * np.abs(m.coef).sum()
    with pytest.raises(ValueError, match="y: labels must be 0 or 1, got 2 at row 1"):
        fit_logistic(X[:3], [0, 2, 1])
    bad = X[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="X: must be finite, got nan at row 1, column 2"):
        fit_logistic(bad, [0, 1, 1])
    with pytest.raises(ValueError, match="l2: must be a number >= 0"):
        fit_logistic(X[:3], [0, 1, 1], l2=-1)


def test_click_model_factored_prediction_equals_the_design_matrix():
    rng = np.random.default_rng(1)
    ctx, items, pos, pair = rng.normal(size=(50, 4)), rng.normal(size=(6, 3)), np.eye(3)[:, 1:], \
        rng.normal(size=(50, 6))
    rows, item, position = rng.integers(0, 50, 400), rng.integers(0, 6, 400), rng.integers(0, 3, 400)
    clicks = rng.integers(0, 2, 400)
    model = fit_click_model(ctx, items, pos, pair, rows, item, position, clicks, l2=1.0)
    q = model.predict(ctx, items, pos, pair)
    assert q.shape == (50, 6, 3)
    assert np.allclose(q[rows, item, position],
                       model.predict_logged(ctx, items, pos, pair, rows, item, position), rtol=1e-12)
    with pytest.raises(ValueError, match=r"pair: must be contexts x items \(50, 6\), got \(50, 5\)"):
        model.predict(ctx, items, pos, pair[:, :5])


# ------------------------------------------------------------------ the experiment
def test_experiment_runs_end_to_end_on_the_sample(root, tmp_path, capsys):
    from offline import obd_experiment as ex

    r = ex.run_campaign("men", root, n_sim=50_000, n_bootstrap=60, seed=0, folds=3, l2=None)
    bts = obd.load("men", "bts", root)
    assert r["truth_on_policy_ctr"] == bts.ctr() and r["bts_clicks"] == int(bts.click.sum())
    # IPW by hand from the same Monte Carlo table: the estimators' K = 1 case is standard IPW
    random_log = obd.load("men", "random", root)
    dist = obd.bts_action_dist(*obd.bts_prior("men", root), n_sim=50_000, seed=0)
    w = dist[random_log.item, random_log.position - 1] / random_log.propensity
    ipw = float(np.mean(w * random_log.click))
    est = r["estimators"]
    assert est["ips"]["estimate"] == pytest.approx(ipw, rel=1e-12)
    assert est["snips"]["estimate"] == pytest.approx(np.sum(w * random_log.click) / np.sum(w), rel=1e-12)
    for e, v in est.items():
        assert v["relative_error"] == pytest.approx(abs(v["estimate"] - r["truth_on_policy_ctr"])
                                                    / r["truth_on_policy_ctr"])
        lo, hi = v["estimate_ci95"]
        assert lo <= v["estimate"] <= hi and v["ess"] > 0
        lo, hi = v["relative_error_ci95_truth_fixed"]
        assert 0 <= lo <= hi
    assert est["dm"]["ess"] == pytest.approx(10_000)  # DM uses no weights
    rm = r["reward_model"]  # the penalty with the smallest cross-fitted log loss was chosen
    assert rm["cross_fit_log_loss"] == min(rm["l2_cross_fit_log_loss"].values())
    assert rm["l2_cross_fit_log_loss"][str(rm["l2"])] == rm["cross_fit_log_loss"]
    out = tmp_path / "obd.json"
    assert ex.main(["--root", str(root), "--campaigns", "women", "--n-sim", "20000",
                    "--n-bootstrap", "30", "--l2", "100", "--output", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [c["campaign"] for c in saved["campaigns"]] == ["women"]
    assert saved["published"]["full_data_saito"]["values"]["women"]["dm"][0] == 0.22614
    printed = capsys.readouterr().out
    assert "relative error" in printed and "SNIPW" in printed and "0.226" in printed
    assert ex.main(["--root", str(tmp_path / "none"), "--output", "-"]) == 2
    assert "run `make data`" in capsys.readouterr().err


def test_cli_fetch_verify(root, capsys):
    assert obd.main(["fetch", "--dest", str(root), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert obd.main(["verify", "--root", str(root)]) == 0
    assert f"{len(obd.EXPECTED_FILES)} files verified" in capsys.readouterr().out
