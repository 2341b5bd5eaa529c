"""The ``[agent]`` section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vitals_agent.config.central import PublicKey
from vitals_agent.config.hl7_values import Location, hl7_value
from vitals_agent.config.rules import needs
from vitals_agent.models import checked_eui64

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    facility: Annotated[  # MSH-4 (HD: NAMESPACE or NAMESPACE^UNIVERSAL-ID^TYPE)
        str,
        Field(min_length=1),
        hl7_value(allow="^", what="MSH-4 is NAMESPACE or NAMESPACE^UNIVERSAL-ID^TYPE"),
    ]
    location: Location = ""  # PV1-3 point of care, e.g. "CLINIC^ROOM12"
    # default: the platform data dir; relative: against the config file's folder
    data_dir: Path | None = Field(None, strict=False)
    timezone: str | None = None  # IANA zone of device clocks; default: the system zone
    gateway_eui64: str | None = None  # MSH-3 universal id; default: derived from the host's MAC
    max_clock_skew_seconds: float = Field(120.0, gt=0)
    log_level: str = "INFO"  # any case
    # storage (the outbox) failing for this long without a success stops the agent (non-zero exit)
    storage_give_up_seconds: float = Field(300.0, ge=1)
    # central configuration (local-only keys: a central layer cannot set them)
    config_source: str | None = (
        None  # https://.../room12.bundle or a path (file share); None: local file only
    )
    config_public_key: PublicKey | None = None  # base64 Ed25519 public key the bundle must be signed with
    config_poll_seconds: float = Field(300.0, ge=5)
    config_ca_file: Path | None = Field(
        None, strict=False
    )  # CA for an https:// source; default: system store

    @field_validator("config_source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is not None and "://" in value and not value.startswith(("https://", "file://")):
            raise ValueError("must be an https:// URL or a path (plain http cannot be trusted to deliver it)")
        return value

    @model_validator(mode="after")
    def _signed(self) -> AgentConfig:
        needs(self, "config_source", "config_public_key", ": central configuration is always signed")
        return self

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
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (any case), not {value!r}")
        return value.upper()

    @field_validator("gateway_eui64")
    @classmethod
    def _eui(cls, value: str | None) -> str | None:
        return checked_eui64(value, "must be 16 hexadecimal digits")
