"""The policy language, v1: typed, frozen models validated once at load.

A policy is a YAML document; `engine.policy_loader` parses and validates it into a `Policy`.
Field names here ARE the language: changing one is a breaking change for every policy file.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Objective(_Model):
    """What to maximise: a weighted sum of score columns, discounted by position."""

    weights: dict[str, float] = Field(
        min_length=1,
        description="Weight of each score column sent by the caller (e.g. p_click: 1.0).",
    )
    position_discount: Union[Literal["log2", "reciprocal", "none"], list[Annotated[float, Field(ge=0)]]] = Field(
        default="log2",
        description="log2: 1/log2(1+p); reciprocal: 1/p; none: 1; or an explicit non-increasing list, "
        "one weight per position (at least slate_size long).",
    )

    @field_validator("position_discount")
    @classmethod
    def _non_increasing(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("must be a non-empty list of weights")
            if any(b > a for a, b in zip(v, v[1:])):
                raise ValueError("must be non-increasing (a later position cannot weigh more)")
        return v


class AttributeFilter(_Model):
    """Keep only candidates whose attribute is (`in`) / is not (`not_in`) among the values."""

    attribute: str
    in_: list[str] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.in_ is None) == (self.not_in is None):
            raise ValueError("give exactly one of 'in' or 'not_in'")
        return self


class NumericFilter(_Model):
    """Keep only candidates whose numeric feature lies in [min, max]."""

    numeric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _range(self):
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min}) must be <= 'max' ({self.max})")
        return self


Filter = Union[AttributeFilter, NumericFilter]


class _Constraint(_Model):
    name: str = Field(pattern=NAME_PATTERN, description="Unique name; used in reports.")
    hard: bool = Field(default=True, description="Hard rules must hold (or are reported relaxed).")
    penalty: float | None = Field(
        default=None, gt=0, description="Soft rules only: objective cost per unit of violation."
    )
    priority: int = Field(
        default=0,
        description="When hard rules conflict, the one with the LOWEST priority gives way first.",
    )

    @model_validator(mode="after")
    def _soft_needs_penalty(self):
        if not self.hard and self.penalty is None:
            raise ValueError("a soft constraint (hard: false) needs a 'penalty' > 0")
        if self.hard and self.penalty is not None:
            raise ValueError("'penalty' applies to soft constraints only; set hard: false or drop it")
        return self


class MaxCount(_Constraint):
    """At most `max` items per value of `attribute` (or of the one `value`), in the top `within_top`."""

    type: Literal["max_count"]
    attribute: str
    value: str | None = None
    max: int = Field(ge=0)
    within_top: int | None = Field(default=None, ge=1)


class MinCount(_Constraint):
    """At least `min` items with `attribute == value`, in the top `within_top` (default: the slate)."""

    type: Literal["min_count"]
    attribute: str
    value: str
    min: int = Field(ge=1)
    within_top: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _fits_prefix(self):
        if self.within_top is not None and self.min > self.within_top:
            raise ValueError(
                f"can never hold: needs {self.min} items within the top {self.within_top}"
            )
        return self


class Window(_Constraint):
    """At most `max` items sharing a value of `attribute` in any `size` consecutive positions."""

    type: Literal["window"]
    attribute: str
    value: str | None = None
    size: int = Field(ge=2)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _meaningful(self):
        if self.max >= self.size:
            raise ValueError(f"'max' ({self.max}) must be < 'size' ({self.size}), else the rule never binds")
        return self


class Pin(_Constraint):
    """Put item `item` (or the best item with `attribute == value`) at 1-based `position`."""

    type: Literal["pin"]
    position: int = Field(ge=1)
    item: str | None = None
    attribute: str | None = None
    value: str | None = None

    @model_validator(mode="after")
    def _target(self):
        by_item = self.item is not None
        by_attr = self.attribute is not None or self.value is not None
        if by_item == by_attr:
            raise ValueError("give either 'item', or both 'attribute' and 'value'")
        if by_attr and (self.attribute is None or self.value is None):
            raise ValueError("pin by attribute needs both 'attribute' and 'value'")
        return self


Constraint = Annotated[Union[MaxCount, MinCount, Window, Pin], Field(discriminator="type")]


class SolverSettings(_Model):
    mode: Literal["auto", "greedy", "exact"] = "auto"
    budget_ms: float = Field(default=10.0, gt=0, le=60_000)


class Policy(_Model):
    """A re-ranking policy: objective, filters, constraints and solver settings."""

    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(min_length=1, description="Free text; reported with every answer.")
    description: str = ""
    slate_size: int = Field(ge=1, le=1000)
    objective: Objective
    filters: list[Filter] = Field(default_factory=list)
    constraints: list[Constraint] = Field(default_factory=list)
    solver: SolverSettings = Field(default_factory=SolverSettings)

    @field_validator("version", mode="before")
    @classmethod
    def _version_str(cls, v):
        return str(v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _cross_checks(self):
        seen: set[str] = set()
        for i, c in enumerate(self.constraints):
            if c.name in seen:
                raise ValueError(f"constraints[{i}].name: duplicate constraint name {c.name!r}")
            seen.add(c.name)
        if isinstance(self.objective.position_discount, list) and len(
            self.objective.position_discount
        ) < self.slate_size:
            raise ValueError(
                f"objective.position_discount: needs at least slate_size={self.slate_size} weights, "
                f"got {len(self.objective.position_discount)}"
            )
        return self
