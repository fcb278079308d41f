"""Scenario files: the parameters of one simulated marketplace, validated once at load.

    scenario = load_scenario("examples/scenarios/marketplace.yaml")

A scenario is YAML validated by frozen pydantic models (unknown keys refused, every number finite
and within a documented range), through the same YAML -> model path as policies
(engine.yaml_model): every problem is reported with the file, the path written like the YAML and
its line, and what was expected, e.g.

    marketplace.yaml: users.session.budget: must be > 0, got 0.0 (line 14)

Impossible parameters are refused: negative rates, budgets <= 0, a horizon of 0, a slate larger
than the candidate set, more candidates than a market ever has items. `check_policy` refuses a
policy that reads a candidate column the simulator does not generate, naming the column.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from engine.errors import FieldIssue, PolicyInvalid
from engine.policy import Float, Int
from engine.yaml_model import Issue, RuleModel, parse_yaml_model

#: What the simulator puts on every candidate (offline.policies.LogFields' names).
SCORES = ("p_click", "p_add_to_cart", "p_purchase", "predicted_value")
ATTRIBUTES = ("category", "seller", "seller_tier", "content_type", "availability")
NUMERIC = ("price", "quality_estimate")
#: seller_tier values: a seller is "new" for its first catalog.new_seller_days days
TIERS = ("established", "new")
CONTENT_TYPES = ("image", "video")
AVAILABILITY = ("in_stock", "out_of_stock")

_REQUIRED = "name, horizon_days, users, catalog"

Prob = Annotated[Float, Field(ge=0.0, le=1.0)]
NonNeg = Annotated[Float, Field(ge=0.0, le=1e6)]
Positive = Annotated[Float, Field(gt=0.0, le=1e6)]


class ScenarioInvalid(PolicyInvalid):
    """A scenario file (or a policy against it) failed validation: `source` is the file, each
    issue names the path (and line) and what was expected."""


class Session(RuleModel):
    """One visit, in RecSim's interest-evolution shape: a time budget that browsing and clicks
    spend and good items give back."""

    budget: Positive = Field(default=10.0, description="Time budget of a session (minutes).")
    browse_cost: Positive = Field(default=1.0, description="Time a slate without a click takes.")
    click_cost: Positive = Field(default=2.0, description="Time a click takes.")
    give_back: NonNeg = Field(default=1.0, description="Time given back per unit of clicked item quality "
                                                       "(negative quality takes time instead).")
    max_steps: Annotated[Int, Field(ge=1, le=1000)] = Field(default=20, description="Most slates per session.")


class Return(RuleModel):
    """Whether a user comes back after a session: P = sigmoid(base + slope * satisfaction), the
    satisfaction an exponential average (weight `memory` on the past) of sessions' click quality."""

    base: Annotated[Float, Field(ge=-20, le=20)] = 3.0
    slope: Annotated[Float, Field(ge=0, le=100)] = 1.0
    memory: Prob = 0.7
    visit_prob: Annotated[Float, Field(gt=0.0, le=1.0)] = Field(
        default=0.6, description="Chance that a retained user visits on a given day.")


class Users(RuleModel):
    initial: Annotated[Int, Field(ge=1, le=10_000_000)] = Field(description="Users on day 0 (the cohort of the retention curve).")
    arrivals_per_day: NonNeg = Field(default=0.0, description="Mean new users per day (Poisson).")
    interest_sd: NonNeg = Field(default=1.0, description="Spread of users' interest per category.")
    interest_step: Prob = Field(default=0.05, description="Interest evolution per click: toward the "
                                                          "category if the item was good, away if bad.")
    session: Session = Field(default_factory=Session)
    returns: Return = Field(default_factory=Return, alias="return")


class Churn(RuleModel):
    """RecSim NG's viable corpus: a seller whose exposure or clicks over the last `window_days`
    stay below the thresholds leaves (checked once a seller is `window_days` old)."""

    window_days: Annotated[Int, Field(ge=1, le=10_000)] = 7
    min_exposure: NonNeg = Field(default=0.0, description="Position-weighted exposure over the window.")
    min_clicks: Annotated[Int, Field(ge=0, le=10_000_000)] = 0


class Catalog(RuleModel):
    categories: Annotated[Int, Field(ge=1, le=1000)] = 8
    initial_sellers: Annotated[Int, Field(ge=1, le=1_000_000)]
    items_per_seller: Annotated[Int, Field(ge=1, le=10_000)] = 10
    new_sellers_per_day: NonNeg = Field(default=0.0, description="Mean new sellers per day (Poisson), with no history.")
    new_seller_days: Annotated[Int, Field(ge=1, le=10_000)] = Field(
        default=14, description="Days a seller carries seller_tier 'new'.")
    item_lifetime_days: Positive = Field(default=30.0, description="Mean life of an item (exponential); "
                                                                  "its seller replaces it the next day.")
    quality_sd: NonNeg = 0.5
    seller_quality_sd: NonNeg = 0.5
    video_share: Prob = 0.3
    out_of_stock_share: Prob = 0.05
    price_median: Positive = 25.0
    price_sd_log: Annotated[Float, Field(ge=0, le=5)] = 0.6
    purchase_given_click: Prob = Field(default=0.15, description="Mean P(purchase | click).")
    churn: Churn = Field(default_factory=Churn)


class Ranker(RuleModel):
    """The upstream ranker: score = true affinity + noise_sd * N(0, 1) + popularity_bias *
    log(1 + the item's clicks so far); the top `engine.candidates` go to the engine."""

    noise_sd: NonNeg = 0.5
    popularity_bias: NonNeg = 0.3


class Obd(RuleModel):
    campaign: Literal["all", "men", "women"] = "all"
    behavior: Literal["random", "bts"] = "random"
    root: str = "data/obd"


class Clicks(RuleModel):
    """The click model: a multinomial logit over the slate and 'no click' (logit 0), item logit =
    intercept + affinity_weight * affinity + log(examination weight of its position). The
    intercept is calibrated so that the per-impression CTR of the upstream ranker's own slates
    matches `target_ctr`, or the CTR of the Open Bandit Dataset sample (`calibrate: obd`)."""

    calibrate: Literal["obd", "target"] = "obd"
    target_ctr: Annotated[Float, Field(gt=0.0, lt=1.0)] | None = None
    obd: Obd = Field(default_factory=Obd)
    affinity_weight: NonNeg = 1.0
    position_bias: Literal["log2", "reciprocal", "none"] = "log2"
    calibration_requests: Annotated[Int, Field(ge=10, le=1_000_000)] = 2000

    def _rule_issues(self) -> list[Issue]:
        if self.calibrate == "target" and self.target_ctr is None:
            return [("target_ctr", "is required with calibrate: target (a CTR per impression in (0, 1))")]
        return []


class EngineSettings(RuleModel):
    candidates: Annotated[Int, Field(ge=1, le=100_000)] = Field(default=200, description="N per request.")
    slate_size: Annotated[Int, Field(ge=1, le=1000)] = Field(default=10, description="K per request.")
    solver: Literal["greedy", "policy"] = Field(
        default="greedy", description="greedy: every answer is deterministic; policy: the policy's own "
                                      "mode (an exact solve stopped by its time limit may differ between runs).")


class Scenario(RuleModel):
    """One simulated marketplace."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    description: str = ""
    horizon_days: Annotated[Int, Field(ge=1, le=100_000)]
    shards: Annotated[Int, Field(ge=1, le=10_000)] = Field(
        default=1, description="Independent markets (users, sellers, ledger each) the population is split into.")
    seeds: Annotated[Int, Field(ge=1, le=10_000)] = 3
    users: Users
    catalog: Catalog
    ranker: Ranker = Field(default_factory=Ranker)
    clicks: Clicks = Field(default_factory=Clicks)
    engine: EngineSettings = Field(default_factory=EngineSettings)

    def _rule_issues(self) -> list[Issue]:
        out: list[Issue] = []
        e, c = self.engine, self.catalog
        if e.slate_size > e.candidates:
            out.append(("engine.slate_size", f"must be <= engine.candidates ({e.candidates}), got {e.slate_size}"))
        items = c.initial_sellers * c.items_per_seller
        if e.candidates > items:
            out.append(("engine.candidates", f"must be <= the day-0 catalog (catalog.initial_sellers x "
                                             f"catalog.items_per_seller = {items} items), got {e.candidates}"))
        if self.users.initial < self.shards:
            out.append(("users.initial", f"must be >= shards ({self.shards}): every shard needs a user, "
                                         f"got {self.users.initial}"))
        if c.initial_sellers < self.shards:
            out.append(("catalog.initial_sellers", f"must be >= shards ({self.shards}), got {c.initial_sellers}"))
        elif e.candidates > (c.initial_sellers // self.shards) * c.items_per_seller:
            out.append(("engine.candidates", f"must be <= one shard's day-0 catalog "
                                             f"({(c.initial_sellers // self.shards) * c.items_per_seller} items "
                                             f"with {self.shards} shards), got {e.candidates}"))
        return out


def _partial_issues(data: dict[str, Any]) -> list[Issue]:
    """The rules across fields on whatever parts of a failed document are plain integers, so a
    file with a bad field still hears about a slate larger than its candidate set."""
    def get(*path, default=None):
        node: Any = data
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node if type(node) is int else None

    out: list[Issue] = []
    k, n = get("engine", "slate_size", default=10), get("engine", "candidates", default=200)
    if k is not None and n is not None and k > n:
        out.append(("engine.slate_size", f"must be <= engine.candidates ({n}), got {k}"))
    sellers, per = get("catalog", "initial_sellers"), get("catalog", "items_per_seller", default=10)
    if n is not None and sellers is not None and per is not None and 0 < sellers and n > sellers * per:
        out.append(("engine.candidates", f"must be <= the day-0 catalog (catalog.initial_sellers x "
                                         f"catalog.items_per_seller = {sellers * per} items), got {n}"))
    return out


def _error(source: str, issues: list[FieldIssue], data: Any) -> ScenarioInvalid:
    return ScenarioInvalid(source, issues)


def parse_scenario(text: str, source: str = "<text>") -> Scenario:
    """Validate a scenario given as YAML text; raise ScenarioInvalid listing every issue."""
    return parse_yaml_model(Scenario, text, source, noun="a scenario", required_keys=_REQUIRED,
                            partial_checks=_partial_issues, error=_error)


def load_scenario(path: str | os.PathLike) -> Scenario:
    """Read and validate a scenario file; ScenarioInvalid names the file, path and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioInvalid(str(p), [FieldIssue("", f"cannot read the scenario: {e.strerror or e}")]) from None
    return parse_scenario(text, str(p))


def generated_fields():
    """What the simulator generates, as offline.policies.LogFields (for offline.policies.missing)."""
    from offline.policies import LogFields

    return LogFields(frozenset(SCORES), frozenset(ATTRIBUTES), frozenset(NUMERIC), False)


def check_policy(version, scenario_source: str = "the simulator") -> None:
    """Refuse a policy that needs a candidate column the simulator does not generate (raises
    ScenarioInvalid naming the policy file and the column, and what the simulator has)."""
    from offline.policies import missing

    problems = [m.replace("which the log does not have", "which the simulator does not generate")
                .replace("(it has:", "(it generates:") for m in missing(version, generated_fields())]
    if problems:
        raise ScenarioInvalid(version.loaded.source, [FieldIssue("", m) for m in problems])
