"""The ``[control]`` section: the local control API and status page (loopback only)."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ControlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback only
    port: int = Field(8765, ge=0, le=65535)  # 0 = pick a free port (written to data_dir/control.json)

    @field_validator("host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        if value == "localhost":
            return value
        try:
            loopback = ipaddress.ip_address(value).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"must be a loopback address (127.0.0.1, localhost or ::1), not {value!r}")
        return value
