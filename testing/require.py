"""A real part a test needs (Redis, chromium, a data set) that is missing: `make test` installs
every one of them, so under CI (CI set) that is a failure; elsewhere the test is skipped with the
message saying how to install it."""

from __future__ import annotations

import os

import pytest


def missing(message: str, why_ci: str = "") -> None:
    """pytest.fail under CI (with `why_ci` appended), pytest.skip otherwise; never returns."""
    if os.environ.get("CI"):
        pytest.fail(message + why_ci, pytrace=False)
    pytest.skip(message)
