"""Every number in a policy is finite and in its documented range; requests whose objective
would overflow, and request targets that cannot mean anything, are refused naming the field."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from engine.compile import MAX_OBJECTIVE_SCALE, compile_policy, compile_request, request_utility
from engine.engine import Engine
from engine.errors import InvalidRequest, PolicyInvalid
from engine.policy_loader import PolicyStore, load_policy_file, parse_policy_text, policy_json_schema
from engine.types import Attribute, Candidates, RerankRequest

# One policy that has every float field of the language; each case replaces one marker.
FULL = """\
name: full
version: "1"
slate_size: 5
objective:
  weights: {p_click: W_CLICK, p_purchase: 2.0}
  position_discount: [DISCOUNT, 0.5, 0.4, 0.3, 0.2]
filters:
  - numeric: price
    min: PRICE_MIN
    max: 1000.0
diversity:
  method: mmr
  weight: DIV_WEIGHT
constraints:
  - name: cap
    type: max_count
    attribute: category
    max: 2
  - name: soft_cap
    type: max_count
    attribute: seller
    max: 1
    hard: false
    penalty: PENALTY
  - name: taste
    type: calibration
    attribute: category
    target: {shoes: SHARE, home: 0.5}
    hard: false
    penalty: 0.5
  - name: fair
    type: fair_prefix
    attribute: seller_tier
    protected: [new]
    p: FAIR_P
    alpha: FAIR_ALPHA
exposure:
  amortized:
    - name: new_exposure
      attribute: seller_tier
      target: {new: AMORTIZED_SHARE}
      gain: GAIN
  lp:
    name: parity
    attribute: seller_tier
    tolerance: TOLERANCE
solver:
  budget_ms: BUDGET
"""
DEFAULTS = dict(W_CLICK="1.0", DISCOUNT="1.0", PRICE_MIN="0.0", DIV_WEIGHT="0.3", PENALTY="2.0",
                SHARE="0.5", FAIR_P="0.2", FAIR_ALPHA="0.1", AMORTIZED_SHARE="0.15", GAIN="1.0",
                TOLERANCE="0.05", BUDGET="10.0")
# marker -> (path in the policy, line, the range the message states)
FIELDS = {
    "W_CLICK": ("objective.weights.p_click", 5, "between -1e+06 and 1e+06"),
    "DISCOUNT": ("objective.position_discount[0]", 6, "between 0 and 1e+06"),
    "PRICE_MIN": ("filters[0].min", 9, ""),
    "DIV_WEIGHT": ("diversity.weight", 13, "> 0 and <= 1000"),
    "PENALTY": ("constraints[1].penalty", 24, "> 0 and <= 1e+06"),
    "SHARE": ("constraints[2].target.shoes", 28, "between 0 and 1e+06"),
    "FAIR_P": ("constraints[3].p", 35, "> 0 and < 1"),
    "FAIR_ALPHA": ("constraints[3].alpha", 36, "> 0 and < 1"),
    "AMORTIZED_SHARE": ("exposure.amortized[0].target.new", 41, "> 0 and < 1"),
    "GAIN": ("exposure.amortized[0].gain", 42, "> 0 and <= 1000"),
    "TOLERANCE": ("exposure.lp.tolerance", 46, "between 0 and 100"),
    "BUDGET": ("solver.budget_ms", 48, "> 0 and <= 60000"),
}


def _policy(**values: str) -> str:
    text = FULL
    for marker, default in sorted(DEFAULTS.items(), key=lambda kv: -len(kv[0])):  # SHARE last
        text = text.replace(marker, values.get(marker, default))
    return text


def test_the_full_policy_is_valid_with_its_defaults():
    policy = parse_policy_text(_policy())
    assert policy.name == "full" and len(policy.constraints) == 4


@pytest.mark.parametrize("marker", sorted(FIELDS))
@pytest.mark.parametrize("written", [".nan", ".inf", "-.inf", ".NaN", "+.inf"])
def test_non_finite_policy_numbers_are_refused_at_the_field(marker, written):
    path, line, bounds = FIELDS[marker]
    with pytest.raises(PolicyInvalid) as exc:
        parse_policy_text(_policy(**{marker: written}), "full.yaml")
    expected = f"must be a finite number{' ' + bounds if bounds else ''}, got {written} (line {line})"
    assert [(i.path, i.message) for i in exc.value.issues] == [(path, expected)]


@pytest.mark.parametrize("marker, value", [
    ("W_CLICK", "2.0e+6"), ("W_CLICK", "-2.0e+6"), ("DISCOUNT", "2.0e+6"), ("DIV_WEIGHT", "1001.0"),
    ("PENALTY", "1.0e+7"), ("SHARE", "1.0e+7"), ("GAIN", "1000.5"), ("TOLERANCE", "101.0"),
    ("BUDGET", "60001.0"), ("FAIR_P", "1.0"), ("AMORTIZED_SHARE", "1.0"),
    # the lower ends
    ("DISCOUNT", "-0.5"), ("DIV_WEIGHT", "0.0"), ("PENALTY", "0.0"), ("SHARE", "-0.1"),
    ("FAIR_P", "0.0"), ("FAIR_ALPHA", "0.0"), ("FAIR_ALPHA", "1.0"), ("AMORTIZED_SHARE", "0.0"),
    ("GAIN", "0.0"), ("TOLERANCE", "-0.01"), ("BUDGET", "0.0"), ("BUDGET", "-1.0"),
])
def test_policy_numbers_out_of_their_range_are_refused(marker, value):
    path, line, bounds = FIELDS[marker]
    with pytest.raises(PolicyInvalid) as exc:
        parse_policy_text(_policy(**{marker: value}), "full.yaml")
    (issue,) = [i for i in exc.value.issues if i.path == path]
    assert issue.message == f"must be a finite number {bounds}, got {value} (line {line})"


def test_the_json_schema_states_every_range():
    schema = json.dumps(policy_json_schema())
    defs = policy_json_schema()["$defs"]
    weights = policy_json_schema()["$defs"]["Objective"]["properties"]["weights"]["additionalProperties"]
    assert weights["minimum"] == -1e6 and weights["maximum"] == 1e6
    assert defs["Diversity"]["properties"]["weight"]["maximum"] == 1000
    assert defs["Amortized"]["properties"]["gain"]["maximum"] == 1000
    assert defs["ExposureLP"]["properties"]["tolerance"]["maximum"] == 100
    assert '"maximum": 1000000.0' in schema  # penalties, shares, position weights


def test_a_cap_of_zero_without_a_value_is_refused():
    text = _policy().replace("    attribute: category\n    max: 2\n", "    attribute: category\n    max: 0\n")
    with pytest.raises(PolicyInvalid) as exc:
        parse_policy_text(text, "full.yaml")
    assert [str(i) for i in exc.value.issues] == [
        "constraints[0].max: 0 without a `value` can never hold: every candidate has some category, "
        "so no item could be in the slate; give a `value` (at most 0 of that one), or use a filter (line 18)"]
    # with a value it means "none of that one": valid
    ok = text.replace("    attribute: category\n    max: 0\n",
                      "    attribute: category\n    value: shoes\n    max: 0\n")
    assert parse_policy_text(ok).constraints[0].max == 0


# ------------------------------------------------------------------------ requests


SIMPLE = """\
name: simple
version: "1"
slate_size: 5
objective:
  weights: {p_click: 1.0, p_purchase: 10.0}
constraints:
  - name: cap
    type: max_count
    attribute: category
    max: 3
  - name: taste
    type: calibration
    attribute: category
    target: {shoes: 0.5, home: 0.5}
    hard: false
    penalty: 0.5
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    folder = tmp_path_factory.mktemp("policies")
    (folder / "simple.yaml").write_text(SIMPLE)
    store = PolicyStore()
    store.add(load_policy_file(folder / "simple.yaml"))
    return Engine(store)


def _request(p_click=None, p_purchase=None, targets=None, n=20, **kw) -> RerankRequest:
    rng = np.random.default_rng(0)
    cands = Candidates(
        item_ids=[f"i{j}" for j in range(n)],
        scores={"p_click": rng.random(n) if p_click is None else np.asarray(p_click, dtype=np.float64),
                "p_purchase": rng.random(n) / 10 if p_purchase is None else np.asarray(p_purchase, dtype=np.float64)},
        attributes={"category": Attribute.from_values(["shoes", "home", "toys", "books"] * (n // 4))},
    )
    return RerankRequest("simple", cands, targets=targets or {}, **kw)


def test_a_normal_request_answers(engine):
    result = engine.rerank(_request())
    assert len(result.items) == 5 and math.isfinite(result.objective)


def test_a_score_whose_weighted_value_overflows_is_refused_blaming_the_policy_weight(engine):
    p = np.full(20, 0.01)
    p[7] = 1e308  # x the policy's weight 10 -> inf
    with pytest.raises(InvalidRequest) as exc:
        engine.rerank(_request(p_purchase=p))
    # the engine may or may not know the policy's file (compile_policy's `source`); see below
    assert re.fullmatch(r"candidates\.scores\['p_purchase'\]\.values\[7\]: weight 10 \(policy 'simple'"
                        r"( \(file [^)]*simple\.yaml\))?, objective\.weights\.p_purchase\) x score 1e\+308 "
                        r"overflows; scale the scores or the weight down", str(exc.value)), str(exc.value)


def test_an_overflow_through_the_policy_weight_names_the_policy_file(tmp_path):
    path = tmp_path / "simple.yaml"
    path.write_text(SIMPLE)
    loaded = load_policy_file(path)
    cp = compile_policy(loaded.policy, loaded.source)
    p = np.full(20, 0.01)
    p[7] = 1e308
    with pytest.raises(InvalidRequest) as exc:
        request_utility(cp, _request(p_purchase=p))
    assert str(exc.value) == (f"candidates.scores['p_purchase'].values[7]: weight 10 (policy 'simple' "
                              f"(file {path}), objective.weights.p_purchase) x score 1e+308 overflows; "
                              f"scale the scores or the weight down")
    with pytest.raises(InvalidRequest) as exc:  # the same through compile_request
        compile_request(cp, _request(p_purchase=p))
    assert f"(policy 'simple' (file {path}), objective.weights.p_purchase)" in str(exc.value)


def test_a_request_weight_that_overflows_is_named_as_the_request_s(engine):
    with pytest.raises(InvalidRequest) as exc:
        engine.rerank(_request(objective_weights={"p_click": 1e308}, p_click=np.full(20, 10.0)))
    assert "weight 1e+308 (objective_weights['p_click']) x score 10 overflows" in str(exc.value)


def test_finite_utilities_whose_slate_objective_would_overflow_are_refused(engine):
    """1e307 x 10 is finite, but five of them summed over the slate are not: before, the answer
    was objective inf (or nan gap). 1e300 and more is refused: the exact model's big-M would
    overflow as well."""
    p = np.full(20, 1e307)
    with pytest.raises(InvalidRequest) as exc:
        engine.rerank(_request(p_purchase=p))
    msg = str(exc.value)
    assert msg.startswith("candidates.scores['p_purchase'].values[0]: the slate objective would overflow: "
                          "utility 1e+308 of candidates.item_ids[0] times the slate's position weights")
    assert f"exceeds {MAX_OBJECTIVE_SCALE:.3g}" in msg
    # just under the limit answers, with a finite objective, bound and gap
    result = engine.rerank(_request(p_purchase=np.full(20, 1e298), p_click=np.zeros(20), solver="exact"))
    assert all(math.isfinite(x) for x in (result.objective, result.bound, result.gap))


def test_huge_negative_utilities_give_finite_bound_and_gap(engine):
    p = np.full(20, -1e298)
    result = engine.rerank(_request(p_purchase=p, p_click=np.zeros(20), solver="exact"))
    assert all(math.isfinite(x) for x in (result.objective, result.bound, result.gap))


@pytest.mark.parametrize("targets, field, message", [
    ({"tste": {"shoes": 1.0}}, "targets['tste']",
     "no calibration rule named 'tste' in policy 'simple' (calibration rules: taste)"),
    ({"cap": {"shoes": 1.0}}, "targets['cap']",
     "rule 'cap' of policy 'simple' is a max_count rule, not a calibration rule (calibration rules: taste)"),
    ({"taste": {"shoes": 0.0, "home": 0.0}}, "targets['taste']",
     "must give some value a share > 0 (shares are normalised to sum to 1), got only zeros"),
    ({"taste": {}}, "targets['taste']",
     "must give some value a share > 0 (shares are normalised to sum to 1), got no shares"),
    ({"taste": {"jewels": 0.7, "cars": 0.3}}, "targets['taste']",
     "none of its values with a share > 0 ('jewels', 'cars') occurs in candidates.attributes['category'] "
     "(values sent: 'shoes', 'home', 'toys', 'books')"),
    ({"taste": {"shoes": -1.0}}, "targets['taste']['shoes']", "must be a finite number >= 0, got -1.0"),
])
def test_request_targets_that_mean_nothing_are_refused(engine, targets, field, message):
    with pytest.raises(InvalidRequest) as exc:
        engine.rerank(_request(targets=targets))
    assert [(i.path, i.message) for i in exc.value.issues] == [(field, message)]


def test_request_targets_with_some_known_values_are_accepted(engine):
    result = engine.rerank(_request(targets={"taste": {"shoes": 0.9, "jewels": 0.1}}))
    assert len(result.items) == 5


HEAVY = """\
name: heavy
version: "1"
slate_size: 8
objective:
  weights: {a: 1.0e+6, b: -1.0e+6}
  position_discount: reciprocal
diversity: {method: METHOD, weight: 1000.0}
constraints:
  - {name: cap, type: max_count, attribute: cat, max: 3}
  - {name: none_x, type: max_count, attribute: cat, value: x, max: 0, hard: false, penalty: 1.0e+6}
  - {name: some_y, type: min_count, attribute: cat, value: y, min: 2, hard: false, penalty: 1.0e+6}
  - {name: spread, type: window, attribute: cat, size: 3, max: 1, hard: false, penalty: 1.0e+6}
  - {name: cover, type: coverage, attribute: cat, penalty: 1.0e+6}
  - {name: taste, type: calibration, attribute: cat, target: {x: 1.0, z: 1.0e+6}, penalty: 1.0e+6}
  - {name: fair, type: fair_prefix, attribute: tier, protected: [new], p: 0.9, alpha: 0.9}
exposure:
  lp: {name: lp, attribute: tier, tolerance: 0.0}
"""


@pytest.mark.parametrize("method", ["mmr", "dpp"])
@pytest.mark.parametrize("solver", ["greedy", "exact"])
def test_every_term_at_its_largest_keeps_objective_bound_and_gap_finite(tmp_path, method, solver):
    """Utilities just under the overflow limit, with every policy number at the top of its
    range (weights, penalties, diversity weight, calibration shares), identical embeddings
    (DPP residuals at their floor) and rules that cannot all hold: the answer's numbers stay
    finite, or the request is refused for overflow; never inf / nan in an OK answer."""
    (tmp_path / "heavy.yaml").write_text(HEAVY.replace("METHOD", method))
    store = PolicyStore()
    store.add(load_policy_file(tmp_path / "heavy.yaml"))
    engine = Engine(store)
    rng = np.random.default_rng(3)
    answered = 0
    for n, scale in [(30, 1e290), (30, 1e293), (12, 1e292), (30, 1e250)]:
        cands = Candidates(
            item_ids=[f"i{j}" for j in range(n)],
            scores={"a": rng.standard_normal(n) * scale, "b": rng.standard_normal(n) * scale},
            attributes={"cat": Attribute.from_values(list(rng.choice(["x", "y", "z"], n))),
                        "tier": Attribute.from_values(list(rng.choice(["new", "old"], n)))},
            embeddings=np.ones((n, 4), dtype=np.float32),
        )
        try:
            result = engine.rerank(RerankRequest("heavy", cands, solver=solver, explain=True, budget_ms=500))
        except InvalidRequest as exc:
            assert "overflow" in str(exc), str(exc)
            continue
        answered += 1
        numbers = [result.objective, result.bound, result.gap] + [it.utility for it in result.items]
        assert all(x is None or math.isfinite(x) for x in numbers), numbers
    assert answered >= 3
