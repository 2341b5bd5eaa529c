"""Shared fixtures for the patient-context, audit, control API and status page tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from vitals_agent.agent.audit import AuditLog, read_audit
from vitals_agent.agent.patient_context import PatientContextManager
from vitals_agent.config.patient import PatientConfig
from vitals_agent.models import Attachment, DeviceClass, DeviceIdentity, Measurement, Reading

T0 = datetime(2026, 3, 11, 14, 0, 0, tzinfo=UTC)

# Test patients: distinctive strings so a grep over logs cannot match anything else by accident.
MRN = "MRN4815162342"
FAMILY = "QUIXOTEFAMILY"
GIVEN = "ZEBEDEEGIVEN"
DOB = "19800229"


class Clock:
    """A settable clock for the manager and the audit log."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


def make_reading(
    observed_at: datetime = T0, spo2: str = "97", pulse: str = "72", device_id: str = "oxi-1"
) -> Reading:
    return Reading(
        device=DeviceIdentity(id=device_id, manufacturer="Acme", serial_number="SN123"),
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=(
            Measurement(metric="spo2", value=Decimal(spo2), unit="%"),
            Measurement(metric="pulse_rate_oximeter", value=Decimal(pulse), unit="/min"),
        ),
        observed_at=observed_at,
        received_at=observed_at,
        raw=b"\x02SPO2=97\x03",
        attachments=(Attachment(name="trace.bin", media_type="application/octet-stream", data=b"\x00\xff"),),
    )


def manager(
    data_dir: Path, clock: Callable[[], datetime], audit: AuditLog | None = None, **config: Any
) -> PatientContextManager:
    audit = audit or AuditLog.in_dir(data_dir, now=clock)
    return PatientContextManager(data_dir, PatientConfig(**config), audit, now=clock)


def events(data_dir: Path) -> list[dict[str, Any]]:
    return list(read_audit(data_dir / "audit.jsonl"))


def event_names(data_dir: Path) -> list[str]:
    return [e["event"] for e in events(data_dir)]
