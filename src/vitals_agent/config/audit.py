"""The ``[audit]`` section: how the audit trail is rotated and how long rotated files are kept."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    max_bytes: int = Field(64 * 1024 * 1024, ge=0)  # rotate past this size (0: never by size)
    max_age_days: float = Field(30.0, ge=0)  # rotate when the first record is this old (0: never by age)
    retention_days: float = Field(6 * 365.0, ge=0)  # delete rotated files older than this (0: keep all)
