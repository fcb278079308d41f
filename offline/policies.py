"""Policies for offline work: load a policy file as a runnable version, and say, before any work
starts, what a policy needs from the logged candidates that a log does not have."""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.compile import compile_policy
from engine.decide import PolicyVersion
from engine.policy import AttributeFilter, NumericFilter
from engine.policy_loader import LoadedPolicy, load_policy_bytes, load_policy_file


def load_version(path: str | os.PathLike[str]) -> PolicyVersion:
    """A policy file, validated and compiled, as `engine.decide.decide` takes it. Raises
    engine.errors.PolicyInvalid naming the file, path and line."""
    return version_of(load_policy_file(path))


def version_of(loaded: LoadedPolicy) -> PolicyVersion:
    """The compiled version of a loaded policy."""
    source = "" if loaded.source.startswith("<") else loaded.source  # "<text>": no file to name
    return PolicyVersion(loaded, compile_policy(loaded.policy, source))


def version_from_text(text: str, source: str = "<text>") -> PolicyVersion:
    """A policy given as YAML text (tests, previews of an edit)."""
    return version_of(load_policy_bytes(text.encode("utf-8"), source))


@dataclass(frozen=True)
class LogFields:
    """The candidate columns a log carries (the union over its records)."""

    scores: frozenset[str]
    attributes: frozenset[str]
    numeric: frozenset[str]
    embeddings: bool


@dataclass(frozen=True)
class Need:
    kind: str  # "score" | "attribute" | "numeric" | "embeddings"
    name: str
    where: str  # where the policy uses it, in the policy's words


def needs(version: PolicyVersion) -> list[Need]:
    """Every candidate column a policy reads, with where it reads it."""
    policy, cp = version.loaded.policy, version.compiled
    out = [Need("score", name, "objective.weights") for name in policy.objective.weights]
    out += [Need("attribute", name, cp.needs_attribute.get(name, "")) for name in cp.required]
    for j, f in enumerate(policy.filters):
        if isinstance(f, AttributeFilter) and f.attribute not in cp.required:
            out.append(Need("attribute", f.attribute, f"filters[{j}]"))
        elif isinstance(f, NumericFilter):
            out.append(Need("numeric", f.numeric, f"filters[{j}]"))
    if policy.diversity is not None:
        out.append(Need("embeddings", "", f"diversity ({policy.diversity.method})"))
    return out


def missing(version: PolicyVersion, fields: LogFields) -> list[str]:
    """What `version` needs that the log has not got, one message per column (empty: it can run),
    e.g. "policy 'x' (file p.yaml) needs candidates.attributes['brand'] (constraints[0] 'cap'),
    which the log does not have (it has: category, seller)"."""
    have = {"score": fields.scores, "attribute": fields.attributes, "numeric": fields.numeric}
    plural = {"score": "scores", "attribute": "attributes", "numeric": "numeric"}
    out = []
    for need in needs(version):
        if need.kind == "embeddings":
            if not fields.embeddings:
                out.append(f"{version.compiled.where()} needs candidates.embeddings ({need.where}), "
                           f"which the log does not have")
        elif need.name not in have[need.kind]:
            listed = ", ".join(sorted(have[need.kind])) or "none"
            out.append(f"{version.compiled.where()} needs candidates.{plural[need.kind]}['{need.name}'] "
                       f"({need.where}), which the log does not have (it has: {listed})")
    return out
