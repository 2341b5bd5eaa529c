"""The ``[agent]`` section."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    facility: str = Field(min_length=1)  # MSH-4
    location: str = ""  # PV1-3 point of care, e.g. "CLINIC^ROOM12"
    data_dir: Path | None = None  # default: the platform data dir
    timezone: str | None = None  # IANA zone of device clocks; default: the system zone
    gateway_eui64: str | None = None  # MSH-3 universal id; default: derived from the host's MAC
    max_clock_skew_seconds: float = Field(120.0, gt=0)
    log_level: str = Field("INFO", pattern="^(?i:DEBUG|INFO|WARNING|ERROR)$")
    # storage (the outbox) failing for this long without a success stops the agent (non-zero exit)
    storage_give_up_seconds: float = Field(300.0, ge=1)

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @field_validator("gateway_eui64")
    @classmethod
    def _eui(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.replace(":", "").replace("-", "").upper()
        if not re.fullmatch(r"[0-9A-F]{16}", value):
            raise ValueError("must be 16 hexadecimal digits")
        return value
