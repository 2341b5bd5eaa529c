"""Rules more than one section follows: each written once, each section keeping its own words."""

from __future__ import annotations

import re

from pydantic import AfterValidator, BaseModel


def http_url(example: str) -> AfterValidator:
    """A base URL as a field's validator: ``http://`` or ``https://`` with a host and no white space; the
    trailing ``/`` is dropped. ``example`` completes the message: ``must be ... URL, e.g. {example}``."""

    def check(value: str) -> str:
        if not re.match(r"^https?://[^/\s]+\S*$", value):
            raise ValueError(f"must be an http:// or https:// URL, e.g. {example}")
        return value.rstrip("/")

    return AfterValidator(check)


def needs(section: BaseModel, key: str, needed: str, why: str = "") -> None:
    """A key that only works with another: ValueError ``{key} needs {needed}{why}`` when ``key`` is set and
    ``needed`` is not (for a section's ``model_validator(mode="after")``)."""
    if getattr(section, key) is not None and getattr(section, needed) is None:
        raise ValueError(f"{key} needs {needed}{why}")


def oid_system(assigning_authority: str) -> str | None:
    """``urn:oid:`` of an assigning authority's ISO universal id (``NS&2.999.1&ISO``), else None: the FHIR
    identifier system of MRNs when none is configured."""
    parts = [*re.split(r"[\^&]", assigning_authority), "", "", ""]
    if parts[1] and parts[2].upper() == "ISO":
        return f"urn:oid:{parts[1]}"
    return None
