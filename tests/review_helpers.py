"""Shared pieces of the clinician-review tests (issue #16): an in-process agent with an injected clock, a
blood-pressure reading, and the outbox's messages checked by the oracle."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.kit import MRN, T0, FakeClock
from tests.oracle import ParsedOru, validate_oru
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.service import AgentService
from vitals_agent.agent.storage.outbox import OutboxMessage
from vitals_agent.config.schema import parse_config
from vitals_agent.models import Clinician, DeviceClass, DeviceIdentity, Measurement, Reading

OTHER_MRN = "MRN2718281828"
__all__ = ["MRN", "T0", "FakeClock"]
ANNA = Clinician(id="4711", family="NURSE", given="ANNA")
CUFF = "00091FFFFE123456"


def review_config(tmp_path: Path, mode: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path)},
        "control": {"enabled": False},
        "patient": {"assigning_authority": "EXCLINIC&2.999.1&ISO"},
        "review": {"mode": mode},
        "devices": [{"id": "cuff", "driver": "ble-blood-pressure", "address": "00:09:1F:12:34:56"}],
    }
    for key, value in extra.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return doc


def make_service(tmp_path: Path, mode: str, time: FakeClock, **extra: Any) -> AgentService:
    """The agent in process; ``time`` is its wall and monotonic clock."""
    clock = Clock(wall=time, mono=time.monotonic)
    return AgentService(parse_config(review_config(tmp_path, mode, **extra)), clock=clock)


def bp_reading(at: datetime, systolic: str = "128", diastolic: str = "84", pulse: str = "67") -> Reading:
    return Reading(
        device=DeviceIdentity(id="cuff", eui64=CUFF),
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=(
            Measurement(metric="bp_systolic", value=Decimal(systolic), unit="mm[Hg]"),
            Measurement(metric="bp_diastolic", value=Decimal(diastolic), unit="mm[Hg]"),
            Measurement(metric="pulse_rate", value=Decimal(pulse), unit="/min"),
        ),
        observed_at=at,
        received_at=at,
    )


def queued(service: AgentService, destination: str = "ehr") -> list[OutboxMessage]:
    return [m for m in service.outbox.list_queued() if m.destination == destination]


def orus(service: AgentService) -> list[ParsedOru]:
    return [validate_oru(m.body) for m in queued(service)]


def value_rows(parsed: ParsedOru) -> list[Any]:
    return [s for s in parsed.obx if not s[4].endswith(".0")]


@pytest.fixture
def services() -> Iterator[list[AgentService]]:
    opened: list[AgentService] = []
    yield opened
    for service in opened:
        service.close()
