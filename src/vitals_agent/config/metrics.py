"""The ``[metrics]`` section: a read-only Prometheus endpoint, off unless ``listen`` is set."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vitals_agent.config.alerts import host_port
from vitals_agent.config.rules import needs


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    listen: str | None = None  # "host:port", e.g. "0.0.0.0:9464"; absent: no listener at all
    path: str = "/metrics"
    # clients (addresses or networks) that may scrape; empty: anyone who can reach the port
    allow: tuple[str, ...] = Field((), strict=False)
    cert_file: Path | None = Field(None, strict=False)  # PEM: serve HTTPS
    key_file: Path | None = Field(None, strict=False)  # its key (default: inside cert_file)
    max_connections: int = Field(16, ge=1, le=1024)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            host_port(value, "listen")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "?# "):
            raise ValueError(f"must be a path such as /metrics, not {value!r}")
        return value

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an address or network (e.g. 10.20.0.0/16)") from None
        return value

    @model_validator(mode="after")
    def _key_needs_cert(self) -> MetricsConfig:
        needs(self, "key_file", "cert_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.listen is not None

    def address(self) -> tuple[str, int]:
        assert self.listen is not None
        return host_port(self.listen, "listen")

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in self.allow]
