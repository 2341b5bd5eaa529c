"""Shared pytest configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import HealthCheck, settings

# Property tests: random in development (they find new cases), deterministic in CI (a red CI must be
# reproducible, not a roll of the dice), and a heavier "fuzz" profile to run by hand:
#   HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest -q tests
# No deadlines: speed is measured in bench/, never asserted in tests.
settings.register_profile("dev", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("fuzz", deadline=None, max_examples=2000, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults: a test that configures logging (the CLI does) must not
    change what later tests capture (e.g. a level filter hiding DEBUG events from ``capture_logs``)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
