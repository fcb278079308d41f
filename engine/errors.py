"""Domain exceptions. One base, a small tree; the server maps each to one gRPC status code."""

from __future__ import annotations

from dataclasses import dataclass


class RerankError(Exception):
    """Base of every error the engine raises on purpose."""


@dataclass(frozen=True)
class FieldIssue:
    """One problem with one field: where (a path) and what was expected / what came."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidRequest(RerankError):
    """The request is malformed. Carries every field issue found (at least one)."""

    def __init__(self, issues: list[FieldIssue] | FieldIssue | str, message: str | None = None):
        if isinstance(issues, str):
            issues = [FieldIssue(issues, message or "invalid")]
        elif isinstance(issues, FieldIssue):
            issues = [issues]
        self.issues: list[FieldIssue] = list(issues)
        super().__init__("; ".join(str(i) for i in self.issues))

    @property
    def field(self) -> str:
        return self.issues[0].path


class Unavailable(RerankError):
    """The service cannot do what was asked as configured (e.g. no outcome log)."""


class PolicyNotFound(RerankError):
    def __init__(self, name: str, known: list[str] | None = None):
        self.name = name
        known_txt = f"; loaded policies: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"policy: no policy named {name!r}{known_txt}")


class PolicyInvalid(RerankError):
    """A policy document failed validation. `source` is the file (or '<text>')."""

    def __init__(self, source: str, issues: list[FieldIssue]):
        self.source = source
        self.issues = issues
        super().__init__("\n".join(f"{source}: {i}" for i in issues))
