"""An EKG cart names its own patient. Against the room's patient context: a match is filed to the room's
patient, a mismatch is parked for review (never sent to either chart) with a WARNING that carries no
identifiers, and an unbound room uses the cart's id as PID-3 without holding the EKG."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.kit import FAMILY, GIVEN, MRN, events
from tests.oracle import validate_oru
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService
from vitals_agent.config.schema import parse_config
from vitals_agent.logs import setup_logging
from vitals_agent.models import DeviceClass, DeviceIdentity, Measurement, PatientInfo, Reading, ReadingFlag

CART_MRN = "SBJ-123"


def ekg(mrn: str = CART_MRN) -> Reading:
    at = datetime(2026, 11, 28, 9, 10, tzinfo=UTC)
    return Reading(
        device=DeviceIdentity(id="ekg-1", model="ELI250", serial_number="E1"),
        device_class=DeviceClass.ECG,
        measurements=(
            Measurement(metric="ecg_qt_interval", value=Decimal(420), unit="ms"),
            Measurement(metric="ecg_qrs_axis", value=Decimal(-61), unit="deg"),
        ),
        statements=("Sinus rhythm",),
        source_patient=PatientInfo(mrn=mrn, family_name="CLARK", birth_date="19530508", sex="M"),
        observed_at=at,
        received_at=at,
        device_time=at,
        flags=(ReadingFlag.STORED_RECORD,),
    )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[AgentService]:
    config = parse_config(
        {
            "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path)},
            "control": {"enabled": False},
            "patient": {"require_patient": True, "assigning_authority": "EXCLINIC&2.999.1&ISO"},
            "devices": [{"id": "ekg-1", "driver": "scp-ecg", "folder": str(tmp_path / "share")}],
        }
    )
    svc = AgentService(config)
    yield svc
    svc.outbox.close()
    svc.patients.close()
    svc.audit.close()


async def test_mismatch_is_parked_not_sent_and_warns_without_identifiers(
    service: AgentService, tmp_path: Path
) -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    service.patients.set(PatientDetails(mrn=MRN, family=FAMILY, given=GIVEN), Origin("api"))
    result = await service.pipeline.accept(service.runtimes["ekg-1"], ekg())
    assert result is None
    assert service.outbox.depth() == 0, "nothing may be sent to either chart"
    [parked] = service.outbox.list_dead()
    assert parked.reason.startswith("patient mismatch")
    warnings = [json.loads(line) for line in stream.getvalue().splitlines() if '"warning"' in line]
    assert [w["control_id"] for w in warnings] == [parked.control_id]
    for identifier in (MRN, CART_MRN, FAMILY, "CLARK"):
        assert identifier not in stream.getvalue()
    [audit] = [e for e in events(tmp_path) if e["event"] == "message_parked"]
    assert audit["device_patient"]["mrn"] == CART_MRN and audit["room_patient"]["mrn"] == MRN
    # An operator who checked the paper trail releases it: it goes out with the cart's own patient id.
    assert service.outbox.retry_dead(parked.id) == 1
    [queued] = service.outbox.peek()
    parsed = validate_oru(queued.body)
    assert parsed.pid.text(3, 1) == CART_MRN
    assert queued.control_id == parsed.control_id == parked.control_id
    assert service.status()["parked"] == 1


async def test_matching_cart_patient_is_filed_to_the_room_patient(service: AgentService) -> None:
    service.patients.set(PatientDetails(mrn=MRN, family=FAMILY, given=GIVEN), Origin("api"))
    accepted = await service.pipeline.accept(service.runtimes["ekg-1"], ekg(mrn=f" {MRN.lower()} "))
    assert accepted is not None
    parsed = validate_oru(accepted.message)
    assert parsed.pid.text(3, 1) == MRN
    assert (parsed.pid.text(5, 1), parsed.pid.text(5, 2)) == (FAMILY, GIVEN)
    assert service.outbox.dead_count() == 0


async def test_unbound_room_uses_the_carts_id_and_does_not_hold_the_ekg(service: AgentService) -> None:
    accepted = await service.pipeline.accept(service.runtimes["ekg-1"], ekg())
    assert accepted is not None, "an EKG that names its patient is not held by require_patient"
    parsed = validate_oru(accepted.message)
    assert parsed.pid.text(3, 1) == CART_MRN
    assert parsed.pid.text(3, 4) == "EXCLINIC&2.999.1&ISO"
    assert service.patients.held.summary()[0] == 0
