"""Experiment files: the examples, every bad input (message, path and line), assignment, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from engine import bucketing
from engine.bucketing import bucket
from engine.errors import PolicyInvalid
from engine.experiments import (
    Assignment,
    ExperimentInvalid,
    ExperimentSet,
    check_experiments,
    experiment_json_schema,
    experiment_with_weights,
    load_experiment_file,
    load_experiment_text,
    parse_experiment_text,
    write_experiment_schema,
)
from engine.yaml_model import MAX_DEPTH

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "experiments"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
#: The policies the examples name (all of them ship in policies/).
KNOWN = {"home_feed", "home_feed_diverse", "search", "search_fewer_ads", "discovery", "marketplace"}

# Three lines, so variants[0] is on line 4 and variants[1] on line 5.
HEAD = "name: x\npolicy: home_feed\nvariants:\n"


def issues_of(text: str) -> list[str]:
    """Every issue of `text`, as 'path: message' strings."""
    with pytest.raises(ExperimentInvalid) as info:
        parse_experiment_text(text, "e.yaml")
    assert info.value.source == "e.yaml"
    return [str(i) for i in info.value.issues]


def variants(*items: str) -> str:
    return HEAD + "".join(f"  - {item}\n" for item in items)


# --- the examples and the schema ---------------------------------------------------------------


def test_the_examples_load_and_build_together() -> None:
    loaded = [load_experiment_file(f) for f in EXAMPLE_FILES]
    assert [le.name for le in loaded] == ["home_feed_ranking_v2", "search_fewer_ads"]
    experiments = ExperimentSet.build(loaded, KNOWN)
    assert len(experiments) == 2 and experiments.experiment_for("search") == "search_fewer_ads"
    home = loaded[0].experiment
    assert (home.layer_name, home.salt_value, home.layer_range) == ("home", "hf-2026-12", (0, 10_000))
    assert [home.variant_policy(v) for v in home.variants] == ["home_feed", "home_feed_diverse", "home_feed"]
    search = loaded[1].experiment
    assert search.variant_ranges() == bucketing.rebalance(bucketing.ranges_from_weights([45, 45, 10]), [40, 45, 15])


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_a_valid_file_round_trips(path: Path) -> None:
    exp = load_experiment_file(path).experiment
    text = yaml.safe_dump(exp.model_dump(mode="json", exclude_unset=True), sort_keys=False)
    assert parse_experiment_text(text) == exp
    full = yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)  # defaults written out
    assert parse_experiment_text(full) == exp


def test_committed_schema_is_up_to_date(tmp_path: Path) -> None:
    write_experiment_schema(tmp_path / "schema.json")
    assert (EXAMPLES / "experiment.schema.json").read_text(encoding="utf-8") == \
        (tmp_path / "schema.json").read_text(encoding="utf-8"), (
        "examples/experiments/experiment.schema.json is stale: run `python -c 'from engine.experiments "
        "import write_experiment_schema; write_experiment_schema()'`")
    schema = experiment_json_schema()
    assert schema["$id"] == "urn:slate-reranker:experiment:v1"
    assert schema["required"] == ["name", "policy", "variants"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_the_schema_validates_the_examples(path: Path) -> None:
    jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), experiment_json_schema())


# --- bad input: one file -------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    (variants("{name: a, weight: 50}", "{name: b, weight: fifty}"),
     ["variants[1].weight: must be a finite number between 0 and 100, got 'fifty' (line 5)"]),
    (variants("{name: a, weight: 50}", "{name: b, weight: 45}"),
     ["variants: the weights must sum to 100, got 95 (a 50 + b 45) (line 3)"]),
    (variants("{name: a, weight: 60}", "{name: b, weight: 45}"),
     ["variants: the weights must sum to 100, got 105 (a 60 + b 45) (line 3)"]),
    (variants("{name: a, weight: 50.005}", "{name: b, weight: 49.995}"),
     ["variants[0].weight: must be a multiple of 0.01 (a bucket is 0.01 %), got 50.005 (line 4)",
      "variants[1].weight: must be a multiple of 0.01 (a bucket is 0.01 %), got 49.995 (line 5)"]),
    (variants("{name: a, weight: -5}", "{name: b, weight: 105}"),
     ["variants[0].weight: must be a finite number between 0 and 100, got -5 (line 4)",
      "variants[1].weight: must be a finite number between 0 and 100, got 105 (line 5)"]),
    (variants("{name: a, weight: true}"),
     ["variants[0].weight: must be a finite number between 0 and 100, got true (line 4)"]),
    (variants("{name: a}"), ["variants[0].weight: required (line 4)"]),
    (variants("{name: a, weight: 100, wieght: 3}"),
     ["variants[0]: unknown key 'wieght' (allowed: buckets, holdout, name, policy, weight); did you mean "
      "'weight'? (line 4)"]),
    (variants("{name: a, weight: 50}", "{name: a, weight: 50}"),
     ["variants[1].name: variant name 'a' is already used by variants[0] (line 5)"]),
    ("unit: cookie\n" + variants("{name: a, weight: 50}", "{name: a, weight: 50}"),  # checks on the valid parts
     ["unit: must be one of 'user_id', 'request_id', got 'cookie' (line 1)",
      "variants[1].name: variant name 'a' is already used by variants[0] (line 6)"]),
    (variants("{name: a, weight: 50}", "{name: h, weight: 50, holdout: true, policy: other}"),
     ["variants[1].policy: a holdout is served by the experiment's policy 'home_feed' (the control), got "
      "'other'; drop 'policy' or name 'home_feed' (line 5)"]),
    ("name: x\npolicy: p\nvariants: []\n", ["variants: must not be empty (line 3)"]),
    ("name: x\npolicy: p\nsalt: 'a:b'\nvariants: [{name: a, weight: 100}]\n",
     ["salt: must start with a letter or digit and contain only letters, digits, '_', '.' and '-', got 'a:b' "
      "(line 3)"]),
    ("layer_buckets: [5000, 100]\n" + variants("{name: a, weight: 100}"),
     ["layer_buckets: must be [start, end) with 0 <= start < end <= 10000, got [5000, 100] (line 1)"]),
    ("layer_buckets: [0, 1, 2]\n" + variants("{name: a, weight: 100}"),
     ["layer_buckets: must be [start, end) with 0 <= start < end <= 10000, got [0, 1, 2] (line 1)"]),
    ("layer_buckets: [0, 20000]\n" + variants("{name: a, weight: 100}"),
     ["layer_buckets[1]: must be an integer between 0 and 10000, got 20000 (line 1)"]),
    ("layer_buckets: [5000, 100]\nunit: x\n" + variants("{name: a, weight: 100}"),
     ["layer_buckets: must be [start, end) with 0 <= start < end <= 10000, got [5000, 100] (line 1)",
      "unit: must be one of 'user_id', 'request_id', got 'x' (line 2)"]),
    ("name: x\npolicy: p\npolicy: q\nvariants: [{name: a, weight: 100}]\n",
     ["policy: duplicate key 'policy', first given at line 2 (line 3)"]),
])
def test_bad_experiment(text: str, expected: list[str]) -> None:
    assert issues_of(text) == expected


@pytest.mark.parametrize("items, expected", [
    (("{name: a, weight: 50, buckets: [[0, 5000]]}", "{name: b, weight: 50}"),
     ["variants[1]: has no 'buckets' while variants[0] has: give the ranges of every variant, or of none "
      "(then they are contiguous in file order) (line 5)"]),
    (("{name: a, weight: 50, buckets: [[0, 5000]]}", "{name: b, weight: 50, buckets: [[4000, 9000]]}"),
     ["variants[1].buckets[0]: [4000, 9000) overlaps [0, 5000) of variants[0].buckets[0] (line 5)"]),
    (("{name: a, weight: 50, buckets: [[0, 4000]]}", "{name: b, weight: 50, buckets: [[4000, 10000]]}"),
     ["variants[0].buckets: holds 4000 buckets but weight 50 needs 5000 (a bucket is 0.01 %); or drop "
      "'buckets' from every variant (line 4)",
      "variants[1].buckets: holds 6000 buckets but weight 50 needs 5000 (a bucket is 0.01 %); or drop "
      "'buckets' from every variant (line 5)"]),
    (("{name: a, weight: 50, buckets: [[0, 4000], [9000, 10000]]}", "{name: b, weight: 50, buckets: [[5000, 9000]]}"),
     ["variants: buckets [4000, 5000) belong to no variant: the ranges must cover [0, 10000) (line 3)",
      "variants[1].buckets: holds 4000 buckets but weight 50 needs 5000 (a bucket is 0.01 %); or drop "
      "'buckets' from every variant (line 5)"]),
    (("{name: a, weight: 50, buckets: [[5000, 0]]}", "{name: b, weight: 50, buckets: [[5000, 10000]]}"),
     ["variants[0].buckets[0]: must be [start, end) with 0 <= start < end <= 10000, got [5000, 0] (line 4)"]),
])
def test_bad_explicit_ranges(items: tuple[str, ...], expected: list[str]) -> None:
    assert issues_of(variants(*items)) == expected


def test_the_message_names_the_file_the_experiment_the_path_and_the_line() -> None:
    with pytest.raises(ExperimentInvalid) as info:
        parse_experiment_text(variants("{name: a, weight: 50}", "{name: b, weight: fifty}"), "exp/x.yaml")
    err = info.value
    assert isinstance(err, PolicyInvalid) and err.experiment == "x"
    assert str(err) == ("exp/x.yaml: experiment 'x', variants[1].weight: must be a finite number between 0 and "
                        "100, got 'fifty' (line 5)")


@pytest.mark.parametrize("text, expected", [
    ("", "e.yaml: the document is empty; an experiment needs at least name, policy and variants"),
    ("- a\n", "e.yaml: the document must be a mapping of keys (name, policy and variants, ...), got a list (line 1)"),
    ("name: 'x y'\npolicy: p\nvariants: [{name: a, weight: 100}]\n",  # no usable name: not in the prefix
     "e.yaml: name: must start with a letter or digit and contain only letters, digits, '_', '.' and '-', "
     "got 'x y' (line 1)"),
    ("name: x\n\tpolicy: p\n", "e.yaml: invalid YAML: while scanning for the next token, found character '\\t' that "
                               "cannot start any token; indent with spaces, not tabs (line 2, column 1)"),
    ("a: " + "[" * (MAX_DEPTH + 5), f"e.yaml: the document is nested deeper than {MAX_DEPTH} levels (line 1); an "
                                    "experiment needs about 6"),
])
def test_bad_document(text: str, expected: str) -> None:
    with pytest.raises(ExperimentInvalid) as info:
        parse_experiment_text(text, "e.yaml")
    assert str(info.value) == expected


# --- bad input: across files ---------------------------------------------------------------------


def exp(name: str, policy: str = "home_feed", extra: str = "",
        items: str = "  - {name: a, weight: 50}\n  - {name: b, policy: home_feed_diverse, weight: 50}\n"):
    return load_experiment_text(f"name: {name}\npolicy: {policy}\n{extra}variants:\n{items}", f"{name}.yaml")


def cross(*experiments) -> list[str]:
    return [str(e) for e in check_experiments(experiments, KNOWN)]


def test_unknown_policies() -> None:
    bad = exp("x", items="  - {name: a, weight: 50}\n  - {name: b, policy: home_feed_divers, weight: 50}\n")
    listed = "loaded policies: discovery, home_feed, home_feed_diverse, marketplace, search, search_fewer_ads"
    assert cross(bad) == [f"x.yaml: experiment 'x', variants[1].policy: no policy named 'home_feed_divers' "
                          f"({listed}); did you mean 'home_feed_diverse'? (line 5)"]
    assert cross(exp("x", policy="nope")) == [f"x.yaml: experiment 'x', policy: no policy named 'nope' ({listed}) "
                                              "(line 2)"]
    assert [str(e) for e in check_experiments([exp("x")], set())] == [
        "x.yaml: experiment 'x', policy: no policy named 'home_feed' (no policy is loaded) (line 2)\n"
        "x.yaml: experiment 'x', variants[1].policy: no policy named 'home_feed_diverse' (no policy is loaded) "
        "(line 5)"]


def test_overlapping_experiments_in_one_layer() -> None:
    a = exp("x", extra="layer: home\nlayer_buckets: [0, 6000]\n")
    b = exp("y", policy="search", extra="layer: home\nlayer_buckets: [5000, 10000]\n")
    assert cross(a, b) == [
        "y.yaml: experiment 'y', layer_buckets: layer 'home': [5000, 10000) overlaps [0, 6000) of experiment 'x' "
        "(x.yaml); the experiments of one layer take disjoint shares of it (line 4)"]
    whole = exp("y", policy="search", extra="layer: home\n")  # takes the whole layer by default
    assert cross(a, whole) == [
        "y.yaml: experiment 'y', layer: layer 'home': [0, 10000) overlaps [0, 6000) of experiment 'x' (x.yaml); "
        "the experiments of one layer take disjoint shares of it (line 3)"]
    own = exp("y", policy="search", extra="layer: x\n")  # x, without 'layer', is in the layer 'x'
    assert cross(exp("x"), own) == [
        "y.yaml: experiment 'y', layer: layer 'x': [0, 10000) overlaps [0, 10000) of experiment 'x' (x.yaml) "
        "(without 'layer', an experiment has the layer named like it); the experiments of one layer take "
        "disjoint shares of it (line 3)"]
    halves = exp("y", policy="search", extra="layer: home\nlayer_buckets: [6000, 10000]\n")
    assert cross(a, halves) == []


def test_one_experiment_per_name_policy_and_salt() -> None:
    assert cross(exp("x"), exp("x", policy="search")) == [
        "x.yaml: experiment 'x', name: experiment name 'x' is already used by x.yaml (line 1)"]
    assert cross(exp("x", extra="layer: l1\n"), exp("y", extra="layer: l2\n")) == [
        "y.yaml: experiment 'y', policy: policy 'home_feed' is already split by experiment 'x' (x.yaml): one "
        "experiment per policy name, over all layers (line 2)"]
    assert cross(exp("x", extra="salt: s1\n"), exp("y", policy="search", extra="salt: s1\n")) == [
        "y.yaml: experiment 'y', salt: salt 's1' is already the salt of experiment 'x' (x.yaml): their variant "
        "splits would be the same draw; give another 'salt' (line 3)"]


def test_build_raises_the_first_file_error_and_accepts_plain_experiments() -> None:
    with pytest.raises(ExperimentInvalid, match="y.yaml: experiment 'y', policy: policy 'home_feed' is already"):
        ExperimentSet.build([exp("x"), exp("y")], KNOWN)
    plain = parse_experiment_text(variants("{name: a, weight: 100, policy: nope}"))
    with pytest.raises(ExperimentInvalid) as info:
        ExperimentSet.build([plain], KNOWN)
    assert info.value.source == "<text>" and str(info.value.issues[0]).startswith("variants[0].policy: no policy")


# --- assignment ----------------------------------------------------------------------------------

THREE = variants("{name: control, weight: 50}", "{name: diverse, policy: home_feed_diverse, weight: 45}",
                 "{name: holdout, weight: 5, holdout: true}")


def test_assignment_follows_bucketing() -> None:
    le = load_experiment_text("salt: s-1\nlayer: home\nlayer_buckets: [2000, 7000]\n" + THREE)
    experiments = ExperimentSet.build([le], KNOWN)
    table = bucketing.owners(le.experiment.variant_ranges())
    names = ["control", "diverse", "holdout"]
    assigned = 0
    for k in range(3000):
        user = f"user-{k}"
        a = experiments.assign("home_feed", user, f"req-{k}")
        lb = bucket("layer:home", user)
        if not 2000 <= lb < 7000:
            assert a is None
            continue
        assigned += 1
        b = bucket("s-1", user)
        assert a == Assignment("x", names[table[b]], "home_feed_diverse" if table[b] == 1 else "home_feed",
                               b, "home", lb, table[b] == 2, "user_id")
    assert 0.45 < assigned / 3000 < 0.55


def test_unit_ids() -> None:
    by_user = ExperimentSet.build([load_experiment_text(THREE)], KNOWN)
    a = by_user.assign("home_feed", "", "req-1")  # no user id: the request id
    assert a is not None and a.unit == "request_id" and a.bucket == bucket("x", "req-1")
    assert by_user.assign("home_feed", "", "") is None  # no id at all: not in the experiment
    assert by_user.assign("search", "u1", "r1") is None  # no experiment on that policy
    assert by_user.assign("home_feed", "u1", "r1") == by_user.assign("home_feed", "u1", "r2")  # sticky per user
    by_request = ExperimentSet.build([load_experiment_text("unit: request_id\n" + THREE)], KNOWN)
    a = by_request.assign("home_feed", "u1", "r1")
    assert a is not None and a.unit == "request_id" and a.bucket == bucket("x", "r1")
    assert by_request.assign("home_feed", "u1", "") is None


def test_a_unit_is_in_at_most_one_experiment_of_a_layer() -> None:
    a = exp("x", extra="layer: home\nlayer_buckets: [0, 5000]\n")
    b = exp("y", policy="search", extra="layer: home\nlayer_buckets: [5000, 10000]\n")
    experiments = ExperimentSet.build([a, b], KNOWN)
    both = [(experiments.assign("home_feed", f"u{k}"), experiments.assign("search", f"u{k}")) for k in range(4000)]
    assert all((p is None) != (q is None) for p, q in both)
    assert 0.45 < sum(p is not None for p, _ in both) / 4000 < 0.55


def test_holdout_is_served_by_the_control_and_says_so() -> None:
    experiments = ExperimentSet.build([load_experiment_text(THREE)], KNOWN)
    held = [a for a in (experiments.assign("home_feed", f"u{k}") for k in range(2000)) if a.holdout]
    assert held and {(a.variant, a.policy) for a in held} == {("holdout", "home_feed")}
    assert 0.03 < len(held) / 2000 < 0.07


# --- changing the weights ------------------------------------------------------------------------


def test_experiment_with_weights_writes_minimal_explicit_ranges() -> None:
    old = parse_experiment_text(THREE)
    out = experiment_with_weights(old, {"control": 40, "diverse": 45, "holdout": 15})
    assert out == {
        "name": "x", "policy": "home_feed",
        "variants": [
            {"name": "control", "weight": 40, "buckets": [[0, 4000]]},
            {"name": "diverse", "policy": "home_feed_diverse", "weight": 45, "buckets": [[5000, 9500]]},
            {"name": "holdout", "weight": 15, "holdout": True, "buckets": [[4000, 5000], [9500, 10000]]},
        ],
    }
    new = parse_experiment_text(yaml.safe_dump(out, sort_keys=False))
    assert bucketing.moved(old.variant_ranges(), new.variant_ranges()) == 1000
    again = experiment_with_weights(new, {"control": 50, "diverse": 45, "holdout": 5})  # from explicit ranges
    assert bucketing.moved(new.variant_ranges(), parse_experiment_text(json.dumps(again)).variant_ranges()) == 1000


@pytest.mark.parametrize("weights, message", [
    ({"control": 50, "diverse": 50}, "give a weight for every variant and no other; missing: holdout"),
    ({"control": 50, "diverse": 45, "holdout": 5, "x": 0}, "give a weight for every variant and no other; unknown: x"),
    ({"control": 50, "diverse": 45, "holdout": 15}, "the weights must sum to 100, got 110"),
])
def test_experiment_with_bad_weights(weights: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        experiment_with_weights(parse_experiment_text(THREE), weights)
