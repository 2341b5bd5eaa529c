"""The patient context inside the agent's pipeline (in process): bound / unbound / held -> outbox + audit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.kit import FAMILY, GIVEN, MRN, events, oximeter_reading
from tests.oracle import validate_oru
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService
from vitals_agent.config.schema import parse_config


def service_for(tmp_path: Path, *, require_patient: bool) -> AgentService:
    config = parse_config(
        {
            "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path)},
            "control": {"enabled": False},
            "patient": {"require_patient": require_patient, "assigning_authority": "EXCLINIC&2.999.1&ISO"},
            "devices": [{"id": "oxi-1", "driver": "masimo-ascii", "port": str(tmp_path / "ttyNone")}],
        }
    )
    return AgentService(config)


@pytest.fixture
def closing() -> Iterator[list[AgentService]]:
    services: list[AgentService] = []
    yield services
    for s in services:
        s.outbox.close()
        s.patients.close()
        s.audit.close()


async def test_unbound_then_bound_then_unbound(tmp_path: Path, closing: list[AgentService]) -> None:
    service = service_for(tmp_path, require_patient=False)
    closing.append(service)
    runtime = service.runtimes["oxi-1"]
    first = await service.pipeline.accept(runtime, oximeter_reading(datetime.now(UTC)))
    service.patients.set(PatientDetails(mrn=MRN, family=FAMILY, given=GIVEN), Origin("api"))
    second = await service.pipeline.accept(runtime, oximeter_reading(datetime.now(UTC)))
    service.patients.clear(Origin("api"))
    third = await service.pipeline.accept(runtime, oximeter_reading(datetime.now(UTC)))
    assert first and second and third
    pids = [validate_oru(a.message).pid for a in (first, second, third)]
    assert [p[31] for p in pids] == ["Y", "N", "Y"]
    assert pids[1].text(3, 1) == MRN and (pids[1].text(5, 1), pids[1].text(5, 2)) == (FAMILY, GIVEN)
    accepted = [e for e in events(tmp_path) if e["event"] == "reading_accepted"]
    assert [(e["control_id"], e["disposition"], (e["patient"] or {}).get("mrn")) for e in accepted] == [
        (first.control_id, "unbound", None),
        (second.control_id, "bound", MRN),
        (third.control_id, "unbound", None),
    ]
    assert service.outbox.depth() == 3


async def test_held_reading_goes_through_the_pipeline_late_associated(
    tmp_path: Path, closing: list[AgentService]
) -> None:
    service = service_for(tmp_path, require_patient=True)
    closing.append(service)
    now = datetime.now(UTC).replace(microsecond=0)
    assert await service.pipeline.accept(service.runtimes["oxi-1"], oximeter_reading(now)) is None
    assert service.outbox.depth() == 0
    assert service.patients.held.summary()[0] == 1
    await service.patients.apply_set(PatientDetails(mrn=MRN), Origin("barcode", source="scan-1"))
    [queued] = service.outbox.peek()
    parsed = validate_oru(queued.body)
    assert parsed.pid.text(3, 1) == MRN
    assert any(s.name == "NTE" and "late-associated" in s.raw for s in parsed.segments)
    released = [e for e in events(tmp_path) if e["event"] == "held_released"]
    assert [e["control_id"] for e in released] == [queued.control_id]
    accepted = [e for e in events(tmp_path) if e["event"] == "reading_accepted"]
    assert [(e["disposition"], e["late_associated"]) for e in accepted] == [("held", False), ("bound", True)]
    assert "late_associated" in accepted[1]["flags"]


async def test_a_reading_taken_before_the_patient_was_set_is_never_filed_to_them(
    tmp_path: Path, closing: list[AgentService]
) -> None:
    """An interval policy releases a reading up to report_seconds after it was taken: if a new patient
    was set in between, the reading belongs to someone else (or no one) and is dropped, audited."""
    service = service_for(tmp_path, require_patient=False)
    closing.append(service)
    taken = datetime.now(UTC)
    service.patients.set(PatientDetails(mrn=MRN, family=FAMILY, given=GIVEN), Origin("barcode"))
    assert await service.pipeline.accept(service.runtimes["oxi-1"], oximeter_reading(taken)) is None
    assert service.outbox.depth() == 0
    assert service.pipeline.dropped == 1
    [dropped] = [e for e in events(tmp_path) if e["event"] == "reading_dropped"]
    assert dropped["device_id"] == "oxi-1"
