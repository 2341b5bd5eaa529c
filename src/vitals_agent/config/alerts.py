"""The ``[alerts]`` section: which conditions raise an alert, the hold-down time, and the channels.

Every rule is a number of seconds (or MB, days); 0 turns that rule off. The status-page banner and a
WARNING log line are always on; ``[alerts.smtp]``, ``[alerts.webhook]`` and ``[alerts.syslog]`` add a
channel each when present.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SmtpChannel(BaseModel):
    """``[alerts.smtp]``: one mail per alert and per clear."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    host: str = Field(min_length=1)
    port: int = Field(587, ge=1, le=65535)
    from_: str = Field(alias="from", min_length=3)
    to: tuple[str, ...] = Field(min_length=1, strict=False)
    starttls: bool = True  # upgrade the connection (RFC 3207) before authenticating or sending
    tls_verify: bool = True
    ca_file: Path | None = Field(None, strict=False)
    username: str | None = None
    password_file: Path | None = Field(None, strict=False)  # read at each send (rotate it freely)
    timeout_seconds: float = Field(20.0, gt=0)

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str) -> str:
        return _address(value)

    @field_validator("to")
    @classmethod
    def _to(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_address(v) for v in value)


class WebhookChannel(BaseModel):
    """``[alerts.webhook]``: one JSON POST per alert and per clear, optionally HMAC-signed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    url: str
    hmac_key_file: Path | None = Field(None, strict=False)  # X-Vitals-Signature: sha256=<hex HMAC>
    tls_verify: bool = True
    ca_file: Path | None = Field(None, strict=False)
    timeout_seconds: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
        return value


class SyslogChannel(BaseModel):
    """``[alerts.syslog]``: one RFC 5424 line per alert and per clear."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    address: str  # "host:port" (UDP, or TCP with protocol = "tcp") or a local socket path such as /dev/log
    protocol: Literal["udp", "tcp"] = "udp"
    facility: Literal["user", "daemon", "local0", "local1", "local2", "local3", "local4", "local5"] = "daemon"

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value.startswith("/"):
            return value
        host_port(value, "address")
        return value

    def target(self) -> str | tuple[str, int]:
        return self.address if self.address.startswith("/") else host_port(self.address, "address")


class AlertsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = True
    ehr_unreachable_seconds: float = Field(300.0, ge=0)  # the EHR (or FHIR server) failing this long
    queue_age_seconds: float = Field(900.0, ge=0)  # the oldest queued message older than this
    dead_letter: bool = True  # any dead letter (cleared when none is left: retried or purged)
    device_silent_seconds: float = Field(1800.0, ge=0)  # a configured device disconnected/unseen this long
    held_reading_seconds: float = Field(900.0, ge=0)  # a reading held (no patient) longer than this
    disk_free_mb: float = Field(500.0, ge=0)  # free space of the data folder's disk under this
    cert_expiry_days: float = Field(30.0, ge=0)  # our certificate or the EHR's expiring within this
    hold_down_seconds: float = Field(300.0, ge=0)  # no second change of one alert within this
    check_seconds: float = Field(5.0, gt=0, le=300)  # how often the conditions are looked at
    room: str | None = None  # how alerts name this agent; default: [agent] location, else the facility
    smtp: SmtpChannel | None = None
    webhook: WebhookChannel | None = None
    syslog: SyslogChannel | None = None


def _address(value: str) -> str:
    if value.count("@") != 1 or any(c in value for c in " \r\n<>,;"):
        raise ValueError(f"{value!r} is not one mail address (name@domain)")
    return value


def host_port(value: str, what: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); raises ValueError with a one-line reason."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} must be host:port (e.g. 0.0.0.0:9464 or [::]:9464), not {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{what}: {host!r} is not an IPv6 address (write it as [addr]:port)") from None
    return host, int(port)
