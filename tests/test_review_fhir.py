"""Clinician review on the FHIR destination (issue #16 with #19): the review's status, performer and
revision reach the Bundle (R -> preliminary, F -> final, C -> corrected, W -> entered-in-error), and a
clinician's manual entries have no Device. Every Bundle goes through the independent FHIR oracle
(fhir.resources R4B models + the Vital Signs profile rules)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.fhir_oracle import check_bundle, observation_by_loinc, resources
from tests.kit import FakeClock
from tests.review_helpers import ANNA, MRN, bp_reading, make_service, queued, services
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService
from vitals_agent.fhir.bundle import FhirProfile, Performer, build_bundle
from vitals_agent.models import DeviceClass, DeviceIdentity, Measurement, PatientInfo, Reading, Series

__all__ = ["services"]  # the fixture

FHIR = {
    "enabled": True,
    "base_url": "https://fhir.example.org/r4",
    "patient_identifier_system": "urn:oid:2.999.1",
}
PROFILE = FhirProfile(
    gateway_eui64="00000000000000AA", patient_system="urn:oid:2.999.1", tz=timezone(timedelta(hours=1))
)
T0 = datetime(2026, 12, 4, 9, 15, 30, tzinfo=UTC)
JANE = PatientInfo(mrn="0012345", family_name="Doe", given_name="Jane")


def _manual(at: datetime) -> Reading:
    return Reading(
        device=DeviceIdentity(id="manual"),
        device_class=DeviceClass.MANUAL,
        measurements=(
            Measurement(metric="respiratory_rate", value=Decimal(16), unit="/min", method="MMEAS"),
            Measurement(metric="pain_score", value=Decimal(3), unit="{score}", method="MMEAS"),
        ),
        observed_at=at,
        received_at=at,
    )


def _observations(body: bytes) -> list[dict[str, Any]]:
    return resources(check_bundle(body), "Observation")


def _patient(service: AgentService) -> None:
    service.patients.set(PatientDetails(mrn=MRN, family="QUIXOTEFAMILY", given="ZEBEDEEGIVEN"), Origin("api"))


def test_a_manual_entry_has_no_device_and_says_a_clinician_entered_it() -> None:
    body = build_bundle(
        _manual(T0), PROFILE, message_id="M1", created_at=T0, patient=JANE, status="final",
        performer=Performer("4711", "NURSE", "ANNA"),
    )  # fmt: skip
    doc = check_bundle(body)
    assert resources(doc, "Device") == []
    resp = observation_by_loinc(doc, "9279-1")
    assert resp["valueQuantity"]["value"] == 16 and resp["valueQuantity"]["code"] == "/min"
    assert "device" not in resp and resp["status"] == "final"
    assert resp["method"]["coding"][0]["code"] == "MMEAS"
    assert resp["performer"] == [
        {"identifier": {"system": PROFILE.clinician_system, "value": "4711"}, "display": "ANNA NURSE"}
    ]
    pain = observation_by_loinc(doc, "72514-3")
    assert pain["valueQuantity"]["value"] == 3 and pain["valueQuantity"]["code"] == "{score}"
    assert "device" not in pain


def test_a_device_reading_keeps_its_device_and_has_no_method() -> None:
    doc = check_bundle(build_bundle(bp_reading(T0), PROFILE, message_id="M2", created_at=T0, patient=JANE))
    [device] = resources(doc, "Device")
    panel = observation_by_loinc(doc, "85354-9")
    assert panel["device"]["reference"].startswith("urn:uuid:") and "method" not in panel
    assert panel["status"] == "preliminary"
    assert device["identifier"][0]["value"] == "00-09-1F-FF-FE-12-34-56"


def test_a_series_mean_is_marked_with_its_readings_times() -> None:
    times = (T0, T0 + timedelta(minutes=1))
    mean = bp_reading(times[-1], systolic="121", diastolic="79").model_copy(
        update={"series": Series(taken=3, averaged_at=times, discarded_first=True)}
    )
    doc = check_bundle(build_bundle(mean, PROFILE, message_id="M3", created_at=T0, patient=JANE))
    panel = observation_by_loinc(doc, "85354-9")
    assert panel["method"]["coding"][0]["code"] == "ACALC"
    assert panel["note"] == [
        {
            "text": "mean of 2 readings taken at 2026-12-04T10:15:30+01:00, 2026-12-04T10:16:30+01:00; "
            "the first of the series' 3 readings was sent but not averaged"
        }
    ]
    single = observation_by_loinc(
        check_bundle(
            build_bundle(bp_reading(times[-1]), PROFILE, message_id="M4", created_at=T0, patient=JANE)
        ),
        "85354-9",
    )
    assert single["identifier"] != panel["identifier"]  # the mean is not the last reading again


async def test_a_correction_is_corrected_in_place_with_the_performer(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "auto", time, fhir=FHIR)
    services.append(service)
    _patient(service)
    await service.pipeline.submit(service.runtimes["cuff"], bp_reading(time.now))
    [item] = service.review.list()
    service.clinicians.set(ANNA, Origin("cli"))
    await service.review.correct(item["id"], {"bp_systolic": "132"}, Origin("cli"))
    first, corrected = (_observations(m.body) for m in queued(service, "fhir"))
    assert {o["status"] for o in first} == {"preliminary"} and "performer" not in first[0]
    # one status per Bundle: the unchanged pulse Observation is re-sent as "corrected" too (the ORU says
    # C on the corrected row only)
    assert {o["status"] for o in corrected} == {"corrected"}
    assert [o["identifier"] for o in corrected] == [o["identifier"] for o in first]  # updates, not adds
    panel = next(o for o in corrected if o["code"]["coding"][0]["code"] == "85354-9")
    systolic = next(c for c in panel["component"] if c["code"]["coding"][0]["code"] == "8480-6")
    assert systolic["valueQuantity"]["value"] == 132
    assert panel["performer"][0]["identifier"]["value"] == "4711"
    assert panel["performer"][0]["display"] == "ANNA NURSE"


async def test_a_confirmed_reading_with_manual_entries_is_final_and_new(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time, fhir=FHIR)
    services.append(service)
    _patient(service)
    held = await service.pipeline.submit(service.runtimes["cuff"], bp_reading(time.now))
    service.clinicians.set(ANNA, Origin("cli"))
    await service.review.manual({"resp_rate": "16", "pain": "3"}, Origin("cli"))
    assert queued(service, "fhir") == []  # nothing without the clinician's confirmation
    assert held is not None
    await service.review.confirm([service.review.list()[0]["id"]], Origin("cli"))
    [message] = queued(service, "fhir")
    doc = check_bundle(message.body)
    assert {
        e["request"]["method"] for e in doc["entry"] if e["resource"]["resourceType"] == "Observation"
    } == {
        "POST"  # a first send: conditional create, not an update
    }
    [device] = resources(doc, "Device")  # the cuff's; the manual entries add none
    resp = observation_by_loinc(doc, "9279-1")
    assert (
        "device" not in resp and resp["status"] == "final" and resp["method"]["coding"][0]["code"] == "MMEAS"
    )
    panel = observation_by_loinc(doc, "85354-9")
    assert panel["status"] == "final" and panel["device"]["reference"] == next(
        e["fullUrl"] for e in doc["entry"] if e["resource"] is device
    )
    assert json.loads(message.body)["identifier"]["value"] == message.control_id


@pytest.mark.parametrize(
    ("status", "expected"),
    [("R", "preliminary"), ("F", "final"), ("C", "corrected"), ("W", "entered-in-error")],
)
def test_every_review_status_has_its_fhir_status(status: str, expected: str) -> None:
    from vitals_agent.agent.pipeline.flow import _FHIR_STATUS

    assert _FHIR_STATUS[status] == expected
    body = build_bundle(
        bp_reading(T0), PROFILE, message_id="M5", created_at=T0, patient=JANE, status=_FHIR_STATUS[status]
    )
    assert {o["status"] for o in _observations(body)} == {expected}
