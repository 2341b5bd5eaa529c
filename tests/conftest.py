"""Shared pytest configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults: a test that configures logging (the CLI does) must not
    change what later tests capture (e.g. a level filter hiding DEBUG events from ``capture_logs``)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
