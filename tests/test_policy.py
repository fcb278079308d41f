"""The policy language: examples, schema, every class of bad input (path AND message), the store."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.errors import FieldIssue, PolicyInvalid, PolicyNotFound
from engine.policy import AttributeFilter, Pin, Policy
from engine.policy_loader import (
    LoadedPolicy,
    PolicyStore,
    load_policy_file,
    parse_policy_text,
    policy_json_schema,
    write_schema,
)

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"
DATA = Path(__file__).resolve().parent / "data" / "policies"

# Five lines, so the first constraint item below it is on line 7.
HEAD = """\
name: t
version: 1
slate_size: 10
objective:
  weights: {p_click: 1.0}
"""


def issues_of(text: str) -> list[str]:
    """Every issue reported for `text`, as 'path: message' strings."""
    with pytest.raises(PolicyInvalid) as info:
        parse_policy_text(text, "t.yaml")
    assert info.value.source == "t.yaml"
    return [str(i) for i in info.value.issues]


def with_constraints(*items: str) -> str:
    return HEAD + "constraints:\n" + "".join(f"  - {item}\n" for item in items)


# --- the examples and the schema ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["home_feed", "search", "marketplace"])
def test_every_example_loads(name: str) -> None:
    loaded = load_policy_file(POLICIES / f"{name}.yaml")
    assert loaded.policy.name == name
    assert 10 <= loaded.policy.slate_size <= 20
    assert loaded.policy.constraints


def test_example_details() -> None:
    home = load_policy_file(POLICIES / "home_feed.yaml").policy
    assert home.filters == [AttributeFilter.model_validate({"attribute": "availability", "not_in": ["out_of_stock"]})]
    search = load_policy_file(POLICIES / "search.yaml").policy
    pin = next(c for c in search.constraints if isinstance(c, Pin))
    assert (pin.position, pin.attribute, pin.value, pin.hard) == (1, "sponsored", "yes", False)
    market = load_policy_file(POLICIES / "marketplace.yaml").policy
    assert market.solver.mode == "exact"


def test_examples_folder_loads_without_errors() -> None:
    store = PolicyStore.from_directory(POLICIES)
    assert store.errors == []
    assert [lp.name for lp in store.list()] == ["discovery", "home_feed", "home_feed_diverse",
                                                 "marketplace", "search", "search_fewer_ads"]


def test_committed_schema_is_up_to_date(tmp_path: Path) -> None:
    committed = (POLICIES / "policy.schema.json").read_text(encoding="utf-8")
    write_schema(tmp_path / "schema.json")
    assert committed == (tmp_path / "schema.json").read_text(encoding="utf-8"), (
        "policies/policy.schema.json is stale: run `python -c 'from engine.policy_loader import "
        "write_schema; write_schema()'`"
    )
    assert committed.endswith("}\n")


def test_schema_spells_the_language_as_written() -> None:
    schema = policy_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["$id"] and schema["title"]
    filter_props = schema["$defs"]["AttributeFilter"]["properties"]
    assert "in" in filter_props and "in_" not in filter_props
    assert '"in_"' not in json.dumps(schema)
    assert set(schema["required"]) == {"name", "version", "slate_size", "objective"}


def test_in_is_spelled_in_in_yaml() -> None:
    policy = parse_policy_text(HEAD + "filters:\n  - {attribute: category, in: [shoes, bags]}\n")
    assert policy.filters[0].in_ == ["shoes", "bags"]
    assert issues_of(HEAD + "filters:\n  - {attribute: category, in_: [shoes]}\n") == [
        "filters[0]: unknown key 'in_' (allowed: attribute, in, not_in); did you mean 'in'? (line 7)",
    ]


# --- bad input: each class gives the exact path and message -------------------------------------

BAD = {
    "wrong type": (
        with_constraints("{name: a, type: max_count, attribute: category, max: three}"),
        ["constraints[0].max: must be an integer >= 0, got 'three' (line 7)"],
    ),
    "boolean for a number": (
        with_constraints("{name: a, type: max_count, attribute: category, max: yes}"),
        ["constraints[0].max: must be an integer >= 0, got yes (line 7)"],
    ),
    "fraction for an integer": (
        with_constraints("{name: a, type: max_count, attribute: category, max: 2.0}"),
        ["constraints[0].max: must be an integer >= 0, got 2.0 (line 7)"],
    ),
    "below minimum": (
        with_constraints(
            "{name: a, type: max_count, attribute: category, max: 2}",
            "{name: b, type: max_count, attribute: brand, max: 2}",
            "{name: c, type: max_count, attribute: seller, max: -1}",
        ),
        ["constraints[2].max: must be an integer >= 0, got -1 (line 9)"],
    ),
    "out of range": (
        HEAD.replace("slate_size: 10", "slate_size: 5000"),
        ["slate_size: must be an integer between 1 and 1000, got 5000 (line 3)"],
    ),
    "unknown key": (
        with_constraints("{name: a, type: max_count, attribute: category, max: 2, maxx: 3}"),
        ["constraints[0]: unknown key 'maxx' (allowed: attribute, hard, max, name, penalty, priority, type, "
         "value, within_top); did you mean 'max'? (line 7)"],
    ),
    "unknown top-level key": (
        HEAD + "constraint: []\n",
        ["unknown key 'constraint' (allowed: constraints, description, diversity, exploration, exposure, filters, name, "
         "objective, slate_size, solver, version); did you mean 'constraints'? (line 6)"],
    ),
    "unknown constraint type": (
        with_constraints("{name: a, type: maxcount, attribute: category, max: 2}"),
        ["constraints[0].type: must be one of 'max_count', 'min_count', 'window', 'pin', 'coverage', 'calibration', 'fair_prefix', got 'maxcount'; "
         "did you mean 'max_count'? (line 7)"],
    ),
    "constraint without type": (
        with_constraints("{name: a, attribute: category, max: 2}"),
        ["constraints[0].type: required: the kind of rule, one of 'max_count', 'min_count', 'window', 'pin', "
         "'coverage', 'calibration', 'fair_prefix' (line 7)"],
    ),
    "missing required": (
        with_constraints("{name: a, type: min_count, attribute: seller_tier, value: new}"),
        ["constraints[0].min: required (line 7)"],
    ),
    "missing top-level key": (
        "name: t\nversion: 1\nobjective:\n  weights: {p_click: 1.0}\n",
        ["slate_size: required"],
    ),
    "literal": (
        HEAD + "solver:\n  mode: fast\n",
        ["solver.mode: must be one of 'auto', 'greedy', 'exact', got 'fast' (line 7)"],
    ),
    "name pattern": (
        HEAD.replace("name: t", "name: home feed"),
        ["name: must start with a letter or digit and contain only letters, digits, '_', '.' and '-', "
         "got 'home feed' (line 1)"],
    ),
    "unquoted yes": (
        with_constraints("{name: p, type: pin, position: 1, attribute: sponsored, value: yes, hard: false, "
                         "penalty: 1}"),
        ['constraints[0].value: must be a string, got yes (YAML reads it as true; write it in quotes: "yes") '
         "(line 7)"],
    ),
    "duplicate name": (
        with_constraints(
            "{name: per_seller, type: max_count, attribute: seller, max: 2}",
            "{name: per_brand, type: max_count, attribute: brand, max: 2}",
            "{name: per_category, type: max_count, attribute: category, max: 3}",
            "{name: per_seller, type: window, attribute: seller, size: 3, max: 1}",
        ),
        ["constraints[3].name: duplicate constraint name 'per_seller' (already used by constraints[0]) (line 10)"],
    ),
    "soft without penalty": (
        with_constraints("{name: a, type: max_count, attribute: category, max: 2, hard: false}"),
        ["constraints[0].penalty: required when hard is false (a number > 0: the cost of each unit of "
         "violation) (line 7)"],
    ),
    "hard with penalty": (
        with_constraints("{name: a, type: max_count, attribute: category, max: 2, penalty: 1.5}"),
        ["constraints[0].penalty: only soft rules have a penalty; set hard: false, or remove penalty (line 7)"],
    ),
    "pin beyond slate_size": (
        with_constraints("{name: top, type: pin, position: 11, item: sku-1}"),
        ["constraints[0].position: must be <= slate_size (10), got 11 (line 7)"],
    ),
    "within_top beyond slate_size": (
        with_constraints("{name: a, type: max_count, attribute: brand, max: 2, within_top: 12}"),
        ["constraints[0].within_top: must be <= slate_size (10), got 12 (line 7)"],
    ),
    "min above within_top": (
        with_constraints("{name: a, type: min_count, attribute: seller_tier, value: new, min: 4, within_top: 3}"),
        ["constraints[0].min: must be <= within_top (3), got 4: the rule can never hold (line 7)"],
    ),
    "min above slate_size": (
        with_constraints("{name: a, type: min_count, attribute: seller_tier, value: new, min: 11}"),
        ["constraints[0].min: must be <= slate_size (10), got 11: the rule can never hold (line 7)"],
    ),
    "minimums can never hold together": (
        with_constraints(
            "{name: new_top5, type: min_count, attribute: seller_tier, value: new, min: 3, within_top: 5}",
            "{name: per_brand, type: max_count, attribute: brand, max: 2}",
            "{name: pro_top8, type: min_count, attribute: seller_tier, value: pro, min: 6, within_top: 8}",
        ),
        ["constraints[2].min: can never hold together: 'new_top5' (constraints[0]) needs 3 items with "
         "seller_tier=new in the top 5 and 'pro_top8' (constraints[2]) needs 6 items with seller_tier=pro in "
         "the top 8; that is 9 items for 8 positions (line 9)"],
    ),
    "hard pins on one position": (
        with_constraints(
            "{name: hero, type: pin, position: 1, item: sku-1}",
            "{name: ad, type: pin, position: 1, attribute: sponsored, value: 'yes'}",
        ),
        ["constraints[1].position: can never hold together: hard pins 'hero' (constraints[0]) and 'ad' "
         "(constraints[1]) both take position 1 (line 8)"],
    ),
    "minimum above a cap": (
        with_constraints(
            "{name: one_video, type: max_count, attribute: content_type, value: video, max: 1}",
            "{name: two_videos, type: min_count, attribute: content_type, value: video, min: 2, within_top: 5}",
        ),
        ["constraints[1].min: can never hold together: 'two_videos' (constraints[1]) needs 2 items with "
         "content_type=video in the top 5, but 'one_video' (constraints[0]) allows at most 1 item with "
         "content_type=video in the top 10, so at most 1 there (line 8)"],
    ),
    "minimum above a window": (
        with_constraints(
            "{name: spread, type: window, attribute: category, size: 3, max: 1}",
            "{name: shoes, type: min_count, attribute: category, value: shoes, min: 3, within_top: 6}",
        ),
        ["constraints[1].min: can never hold together: 'shoes' (constraints[1]) needs 3 items with "
         "category=shoes in the top 6, but 'spread' (constraints[0]) allows at most 1 item per category value "
         "in any 3 consecutive positions, so at most 2 there (line 8)"],
    ),
    "window that never binds": (
        with_constraints("{name: w, type: window, attribute: seller, size: 3, max: 3}"),
        ["constraints[0].max: must be < size (3), got 3: otherwise the rule never binds (line 7)"],
    ),
    "filter with both in and not_in": (
        HEAD + "filters:\n  - {attribute: category, in: [a], not_in: [b]}\n",
        ["filters[0]: give exactly one of 'in' or 'not_in', got both (line 7)"],
    ),
    "numeric filter range": (
        HEAD + "filters:\n  - {numeric: price, min: 10, max: 5}\n",
        ["filters[0].min: must be <= max (5), got 10 (line 7)"],
    ),
    "position_discount too short": (
        HEAD + "  position_discount: [1.0, 0.5, 0.3]\n",
        ["objective.position_discount: needs at least slate_size (10) weights, one per position, got 3 (line 6)"],
    ),
    "position_discount increasing": (
        HEAD + "  position_discount: [1.0, 0.5, 0.8, 0.4, 0.3, 0.3, 0.2, 0.2, 0.1, 0.1]\n",
        ["objective.position_discount: must be non-increasing (a later position cannot weigh more), got 0.8 at "
         "position 3 after 0.5 at position 2 (line 6)"],
    ),
    "position_discount negative": (
        HEAD + "  position_discount: [1.0, -0.5]\n",
        ["objective.position_discount[1]: must be a finite number between 0 and 1e+06, got -0.5 (line 6)"],
    ),
    "position_discount unknown name": (
        HEAD + "  position_discount: log10\n",
        ["objective.position_discount: must be one of 'log2', 'reciprocal', 'none' or a list of weights, "
         "got 'log10'; did you mean 'log2'? (line 6)"],
    ),
    "empty list value": (
        HEAD + "constraints:\n",
        ["constraints: must be a list, got an empty value (line 6)"],
    ),
    "duplicate key": (
        HEAD + "slate_size: 12\n",
        ["slate_size: duplicate key 'slate_size', first given at line 3 (line 6)"],
    ),
    "yaml syntax error": (
        "name: t\nversion: 1\nobjective:\n  weights: {p_click: 1.0\nslate_size: 10\n",
        ["invalid YAML: while parsing a flow mapping, expected ',' or '}', but got ':' (line 5, column 11)"],
    ),
    "tab indentation": (
        HEAD + "constraints:\n\t- {name: a}\n",
        ["invalid YAML: while scanning for the next token, found character '\\t' that cannot start any token; "
         "indent with spaces, not tabs (line 7, column 1)"],
    ),
    "empty file": (
        "",
        ["the document is empty; a policy needs at least name, version, slate_size and objective"],
    ),
    "comments only": (
        "# nothing yet\n",
        ["the document is empty; a policy needs at least name, version, slate_size and objective"],
    ),
    "list document": (
        "- name: t\n- version: 1\n",
        ["the document must be a mapping of keys (name, version, slate_size and objective, ...), got a list "
         "(line 1)"],
    ),
    "scalar document": (
        "home_feed\n",
        ["the document must be a mapping of keys (name, version, slate_size and objective, ...), got "
         "'home_feed' (line 1)"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_exact_path_and_message(case: str) -> None:
    text, expected = BAD[case]
    assert issues_of(text) == expected


def test_issue_paths_are_fields_not_pydantic_locs() -> None:
    with pytest.raises(PolicyInvalid) as info:
        parse_policy_text(with_constraints("{name: a, type: max_count, attribute: category, max: -1}"))
    assert info.value.issues == [FieldIssue("constraints[0].max", "must be an integer >= 0, got -1 (line 7)")]
    assert str(info.value) == "<text>: constraints[0].max: must be an integer >= 0, got -1 (line 7)"


def test_every_error_in_a_file_is_reported_with_its_line() -> None:
    path = DATA / "bad_many_errors.yaml"
    with pytest.raises(PolicyInvalid) as info:
        load_policy_file(path)
    assert info.value.source == str(path)
    assert [str(i) for i in info.value.issues] == [
        "name: must start with a letter or digit and contain only letters, digits, '_', '.' and '-', "
        "got 'many errors' (line 2)",
        "objective.weights.p_click: must be a finite number between -1e+06 and 1e+06, got 'high' (line 7)",
        "filters[0]: give exactly one of 'in' or 'not_in', got both (line 9)",
        "constraints[0].max: must be an integer >= 0, got -1 (line 16)",
        "constraints[1].penalty: required when hard is false (a number > 0: the cost of each unit of violation) "
        "(line 17)",
        "constraints[1].name: duplicate constraint name 'per_category' (already used by constraints[0]) (line 17)",
        "constraints[2].position: must be <= slate_size (10), got 12 (line 25)",
        "solver.mode: must be one of 'auto', 'greedy', 'exact', got 'fastest' (line 29)",
    ]


def test_all_cross_rule_findings_are_reported_not_only_the_first() -> None:
    found = issues_of(with_constraints(
        "{name: a, type: pin, position: 2, item: x}",
        "{name: a, type: pin, position: 2, item: y}",
        "{name: c, type: pin, position: 40, item: z}",
    ))
    assert found == [
        "constraints[1].name: duplicate constraint name 'a' (already used by constraints[0]) (line 8)",
        "constraints[1].position: can never hold together: hard pins 'a' (constraints[0]) and 'a' "
        "(constraints[1]) both take position 2 (line 8)",
        "constraints[2].position: must be <= slate_size (10), got 40 (line 9)",
    ]


def test_soft_rules_do_not_count_as_never_holding() -> None:
    policy = parse_policy_text(with_constraints(
        "{name: a, type: pin, position: 1, item: x}",
        "{name: b, type: pin, position: 1, item: y, hard: false, penalty: 1}",
        "{name: new, type: min_count, attribute: tier, value: new, min: 3, within_top: 4}",
        "{name: pro, type: min_count, attribute: tier, value: pro, min: 3, within_top: 4, hard: false, penalty: 1}",
        "{name: new2, type: min_count, attribute: tier, value: new, min: 2, within_top: 3}",
    ))
    assert len(policy.constraints) == 5


def test_direct_construction_still_checks_rules_across_constraints() -> None:
    pin = {"type": "pin", "position": 20, "item": "x", "name": "p"}
    with pytest.raises(ValidationError, match=r"constraints\[0\]\.position: must be <= slate_size \(10\), got 20"):
        Policy.model_validate({"name": "t", "version": "1", "slate_size": 10,
                               "objective": {"weights": {"p_click": 1}}, "constraints": [pin]})


def test_minimal_policy_and_defaults() -> None:
    loaded = load_policy_file(DATA / "good_minimal.yaml")
    p = loaded.policy
    assert (p.name, p.version, p.slate_size, p.objective.position_discount, p.solver.mode) == (
        "minimal", "1", 5, "log2", "auto")


def test_syntax_error_from_a_file() -> None:
    with pytest.raises(PolicyInvalid) as info:
        load_policy_file(DATA / "bad_syntax.yaml")
    assert [str(i) for i in info.value.issues] == [
        "invalid YAML: while parsing a flow mapping, expected ',' or '}', but got ':' (line 6, column 12)"
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyInvalid) as info:
        load_policy_file(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: cannot read the file: No such file or directory"
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(PolicyInvalid, match=r"the file is not UTF-8 text \(byte 9\)"):
        load_policy_file(tmp_path / "latin1.yaml")


def test_loaded_policy_records_source_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD, encoding="utf-8")
    loaded = load_policy_file(str(path))
    assert isinstance(loaded, LoadedPolicy)
    assert loaded.source == str(path)
    assert loaded.digest == hashlib.sha256(HEAD.encode()).hexdigest()
    assert loaded.loaded_at > 0 and loaded.name == "t"


# --- the store -------------------------------------------------------------------------------------


def write(folder: Path, filename: str, name: str, slate_size: int = 10) -> Path:
    path = folder / filename
    path.write_text(HEAD.replace("name: t", f"name: {name}").replace("slate_size: 10", f"slate_size: {slate_size}"),
                    encoding="utf-8")
    return path


def test_store_loads_a_folder_and_reports_invalid_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "alpha")
    write(tmp_path, "b.yml", "beta")
    (tmp_path / "c.yaml").write_text("name: gamma\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a policy", encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub, "d.yaml", "delta")
    store = PolicyStore.from_directory(tmp_path)
    assert [lp.name for lp in store.list()] == ["alpha", "beta"]
    assert [e.source for e in store.errors] == [str(tmp_path / "c.yaml")]
    assert [str(i) for i in store.errors[0].issues] == ["version: required", "slate_size: required",
                                                        "objective: required"]


def test_store_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="policy directory not found: .*missing"):
        PolicyStore.from_directory(tmp_path / "missing")


def test_invalid_edit_keeps_the_old_version_live(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "feed.yaml", "feed", slate_size=10)
    store = PolicyStore.from_directory(tmp_path)
    before = store.get("feed")
    path.write_text(HEAD.replace("name: t", "name: feed").replace("slate_size: 10", "slate_size: -3"),
                    encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="engine.policy_loader"):
        errors = store.reload_directory(tmp_path)
    assert [str(e) for e in errors] == [
        f"{path}: slate_size: must be an integer between 1 and 1000, got -3 (line 3)"
    ]
    assert store.get("feed") is before
    assert store.errors == errors
    assert "previous version stays live" in caplog.text and "slate_size" in caplog.text
    write(tmp_path, "feed.yaml", "feed", slate_size=12)
    assert store.reload_directory(tmp_path) == []
    assert store.get("feed").policy.slate_size == 12


def test_deleted_file_removes_its_policy(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "alpha")
    b = write(tmp_path, "b.yaml", "beta")
    store = PolicyStore.from_directory(tmp_path)
    b.unlink()
    assert store.reload_directory(tmp_path) == []
    assert [lp.name for lp in store.list()] == ["alpha"]
    assert "beta" not in store


def test_renamed_policy_replaces_the_old_name(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "alpha")
    store = PolicyStore.from_directory(tmp_path)
    write(tmp_path, "a.yaml", "alpha2")
    store.reload_directory(tmp_path)
    assert [lp.name for lp in store.list()] == ["alpha2"]


def test_unknown_name_lists_known_policies(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "alpha")
    write(tmp_path, "b.yaml", "beta")
    store = PolicyStore.from_directory(tmp_path)
    with pytest.raises(PolicyNotFound) as info:
        store.get("gamma")
    assert str(info.value) == "policy: no policy named 'gamma'; loaded policies: alpha, beta"


def test_version_counts_changes_only(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "alpha")
    store = PolicyStore.from_directory(tmp_path)
    v0 = store.version
    store.reload_directory(tmp_path)  # nothing changed
    assert store.version == v0
    write(tmp_path, "a.yaml", "alpha", slate_size=11)
    store.reload_directory(tmp_path)
    assert store.version == v0 + 1
    store.add(LoadedPolicy(parse_policy_text(HEAD), "<text>", "0" * 64, 0.0))
    assert store.version == v0 + 2
    assert store.get("t").source == "<text>"
    (tmp_path / "a.yaml").unlink()
    store.reload_directory(tmp_path)
    assert store.version == v0 + 3
    assert [lp.name for lp in store.list()] == ["t"]  # policies not from this folder stay


def test_same_name_in_two_files_is_an_error_for_the_second(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "feed")
    second = write(tmp_path, "b.yaml", "feed")
    store = PolicyStore.from_directory(tmp_path)
    assert store.get("feed").source == str(tmp_path / "a.yaml")
    assert [str(e) for e in store.errors] == [
        f"{second}: name: policy name 'feed' is already used by {tmp_path / 'a.yaml'} (line 1)"
    ]


def test_a_new_file_cannot_take_a_live_name(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", "feed")
    store = PolicyStore.from_directory(tmp_path)
    write(tmp_path, "a.yaml", "feed")  # sorts first, but b.yaml holds the name
    errors = store.reload_directory(tmp_path)
    assert store.get("feed").source == str(tmp_path / "b.yaml")
    assert [e.source for e in errors] == [str(tmp_path / "a.yaml")]


def test_alias_bomb_is_rejected_quickly():
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = "\n".join(levels) + "\nname: p\n"
    with pytest.raises(PolicyInvalid, match="document too large: more than 100,000 values once YAML aliases are expanded"):
        parse_policy_text(text, "bomb.yaml")  # walking the expanded document would take hours
