"""The review list inside the agent (in process, injected clock): confirm / auto+confirm / auto modes,
reject, corrections, wrong patient, manual entries, durability of reserved messages across a crash.
Every queued ORU goes through the oracle; the assertions read the real fields."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.kit import FakeClock, events
from tests.oracle import validate_oru
from tests.private_files import assert_private
from tests.review_helpers import (
    ANNA,
    MRN,
    OTHER_MRN,
    bp_reading,
    make_service,
    orus,
    queued,
    services,
    value_rows,
)
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.patient.review import NoClinicianError, ReviewError
from vitals_agent.agent.pipeline.flow import Accepted, Reviewed
from vitals_agent.agent.service import AgentService
from vitals_agent.models import Clinician

__all__ = ["services"]  # the fixture


def _patient(service: AgentService, mrn: str = MRN) -> None:
    from vitals_agent.agent.patient.context import PatientDetails

    service.patients.set(PatientDetails(mrn=mrn, family="QUIXOTEFAMILY", given="ZEBEDEEGIVEN"), Origin("api"))


async def _take(service: AgentService, time: FakeClock, **values: str) -> Accepted | Reviewed | None:
    return await service.pipeline.submit(service.runtimes["cuff"], bp_reading(time.now, **values))


async def test_confirm_mode_sends_nothing_until_a_clinician_confirms(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time)
    services.append(service)
    _patient(service)
    held = await _take(service, time)
    assert isinstance(held, Reviewed)
    assert queued(service) == []
    [item] = service.review.list()
    assert (item["state"], item["status"], item["waiting"]) == ("pending", None, True)
    assert item["patient"] == {"mrn": "\u2022" * 3 + MRN[-3:], "name": "Q. Z."}  # masked

    with pytest.raises(NoClinicianError, match="clinician set"):
        await service.review.confirm([held.item_id], Origin("cli"))
    assert queued(service) == []

    service.clinicians.set(ANNA, Origin("cli"))
    time.advance(minutes=2)
    await service.review.confirm([held.item_id], Origin("cli", source="nurse1"))
    [oru] = orus(service)
    assert oru.control_id == held.control_id  # the MSH-10 reserved when it started waiting
    rows = value_rows(oru)
    assert len(rows) == 3
    assert all(r[11] == "F" and r[16] == "4711^NURSE^ANNA" for r in rows)
    assert oru.pid.text(3, 1) == MRN
    [item] = service.review.list()
    assert (item["state"], item["status"], item["waiting"]) == ("sent", "F", False)
    assert item["validator"] == "ANNA NURSE (4711)"
    confirmed = [e for e in events(tmp_path) if e["event"] == "review_confirmed"]
    assert [(e["item_id"], e["channel"], e["source"], e["clinician"]["id"]) for e in confirmed] == [
        (held.item_id, "cli", "nurse1", "4711")
    ]
    with pytest.raises(ReviewError, match="confirmed already"):
        await service.review.confirm([held.item_id], Origin("cli"))


async def test_confirm_all_and_reject(tmp_path: Path, services: list[AgentService]) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time)
    services.append(service)
    first = await _take(service, time, systolic="120")
    time.advance(seconds=30)
    second = await _take(service, time, systolic="122")
    time.advance(seconds=30)
    third = await _take(service, time, systolic="250", diastolic="40")  # an artefact
    assert isinstance(first, Reviewed) and isinstance(second, Reviewed) and isinstance(third, Reviewed)
    service.clinicians.set(ANNA, Origin("api"))
    with pytest.raises(ReviewError, match="reason"):
        await service.review.reject(third.item_id, "  ", Origin("api"))
    await service.review.reject(third.item_id, "cuff slipped", Origin("api"))
    await service.review.confirm(None, Origin("page"))
    sent = orus(service)
    assert sorted(o.value("150021") for o in sent) == ["120", "122"]  # the rejected one never went
    assert {o.control_id for o in sent} == {first.control_id, second.control_id}
    rejected = [e for e in events(tmp_path) if e["event"] == "review_rejected"]
    assert [(e["item_id"], e["reason"], e["sent"]) for e in rejected] == [
        (third.item_id, "cuff slipped", False)
    ]
    with pytest.raises(ReviewError, match="no reading is waiting"):
        await service.review.confirm(None, Origin("page"))


async def test_auto_confirm_sends_r_at_once_then_f_with_the_same_identifiers(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "auto+confirm", time)
    services.append(service)
    _patient(service)
    accepted = await _take(service, time)
    assert isinstance(accepted, Accepted)
    [raw] = orus(service)
    assert {r[11] for r in value_rows(raw)} == {"R"} and not any(r[16] for r in raw.obx)
    [item] = service.review.list()
    assert item["needs_confirm"] and item["waiting"]
    service.clinicians.set(ANNA, Origin("barcode"))
    await service.review.confirm([item["id"]], Origin("cli"))
    first, final = orus(service)
    assert first.control_id == raw.control_id and final.control_id != raw.control_id
    assert (final.obr[2], final.obr[3]) == (raw.obr[2], raw.obr[3])
    assert [(s[3], s[4]) for s in final.obx] == [(s[3], s[4]) for s in raw.obx]
    assert {r[11] for r in value_rows(final)} == {"F"}
    assert all(r[16] == "4711^NURSE^ANNA" for r in value_rows(final))


async def test_auto_confirm_reject_posts_the_sent_values_as_wrong(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "auto+confirm", time)
    services.append(service)
    await _take(service, time)
    [item] = service.review.list()
    service.clinicians.set(ANNA, Origin("cli"))
    await service.review.reject(item["id"], "patient moved", Origin("cli"))
    raw, wrong = orus(service)
    assert {r[11] for r in value_rows(wrong)} == {"W"} and wrong.obr[3] == raw.obr[3]
    assert service.review.list()[0]["state"] == "retracted"


async def test_auto_mode_keeps_r_and_a_correction_sends_c(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "auto", time)
    services.append(service)
    _patient(service)
    await _take(service, time)
    [item] = service.review.list()
    assert not item["waiting"] and item["status"] == "R"
    with pytest.raises(NoClinicianError):
        await service.review.correct(item["id"], {"bp_systolic": "132"}, Origin("cli"))
    service.clinicians.set(ANNA, Origin("cli"))
    with pytest.raises(ReviewError, match="no such value"):
        await service.review.correct(item["id"], {"spo2": "97"}, Origin("cli"))
    with pytest.raises(ReviewError, match="plausible range"):
        await service.review.correct(item["id"], {"bp_systolic": "2047"}, Origin("cli"))
    await service.review.correct(item["id"], {"bp_systolic": "132"}, Origin("cli"))
    raw, corrected = orus(service)
    systolic = corrected.obx_by_code("150021")
    assert (systolic[5], systolic[11], systolic[16]) == ("132", "C", "4711^NURSE^ANNA")
    assert corrected.obx_by_code("150022")[11] == "R"  # not corrected, never validated
    assert corrected.obr[3] == raw.obr[3]
    assert [(s[3], s[4]) for s in corrected.obx] == [(s[3], s[4]) for s in raw.obx]
    audit = [e for e in events(tmp_path) if e["event"] == "review_corrected"]
    assert audit[0]["before"] == {"bp_systolic": "128 mm[Hg]"} and audit[0]["after"] == {
        "bp_systolic": "132 mm[Hg]"
    }


async def test_wrong_patient_sends_w_to_the_first_chart_then_the_values_to_the_next_patient(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "auto", time)
    services.append(service)
    _patient(service, MRN)
    await _take(service, time)
    [item] = service.review.list()
    time.advance(minutes=1)
    await service.review.wrong_patient(item["id"], Origin("cli"))
    original, wrong = orus(service)
    assert wrong.pid.text(3, 1) == MRN and {r[11] for r in value_rows(wrong)} == {"W"}
    assert wrong.obr[3] == original.obr[3]
    assert service.review.list()[0]["awaiting_patient"]
    _patient(service, MRN)  # the same wrong patient again: not the right one
    await service.review.run_refiles()
    assert len(queued(service)) == 2
    time.advance(minutes=1)
    _patient(service, OTHER_MRN)
    await service.review.run_refiles()
    refiled = orus(service)[2]
    assert refiled.pid.text(3, 1) == OTHER_MRN
    assert refiled.value("150021") == "128" and {r[11] for r in value_rows(refiled)} == {"R"}
    assert refiled.obr[3] != original.obr[3]  # a new observation set for this chart
    [item] = service.review.list()
    assert (item["state"], item["awaiting_patient"]) == ("sent", False)
    names = [e["event"] for e in events(tmp_path) if e["event"].startswith("review_")]
    assert names == ["review_wrong_patient", "review_refiled"]


async def test_manual_entries_join_the_waiting_reading_of_the_visit(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time)
    services.append(service)
    _patient(service)
    held = await _take(service, time)
    assert isinstance(held, Reviewed)
    with pytest.raises(NoClinicianError):
        await service.review.manual({"resp_rate": "16"}, Origin("cli"))
    service.clinicians.set(ANNA, Origin("cli"))
    time.advance(minutes=3)
    outcome = await service.review.manual(
        {"resp_rate": "16", "pain": "3", "arm": "left_arm", "position": "sitting"}, Origin("cli")
    )
    assert outcome.attached and outcome.item_id == held.item_id and queued(service) == []
    await service.review.confirm([held.item_id], Origin("cli"))
    [oru] = orus(service)
    assert [o[1] for o in oru.all("OBR")] == ["1", "2"]
    assert oru.obx_by_code("150021").components(20) == ["LA", "Left arm", "HL70163"]  # the arm entered
    resp = oru.obx_by_code("9279-1")
    assert (resp[5], resp[11], resp[16], resp.text(17)) == ("16", "F", "4711^NURSE^ANNA", "MMEAS")
    assert oru.obx_by_code("72514-3")[5] == "3"
    assert oru.obx_by_code("8361-8").components(5) == ["33586001", "Sitting position", "SCT"]


async def test_manual_entries_outside_the_visit_go_on_their_own(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time)
    services.append(service)
    _patient(service)
    held = await _take(service, time)
    service.clinicians.set(ANNA, Origin("cli"))
    time.advance(minutes=16)  # past visit_window_minutes (15)
    outcome = await service.review.manual({"resp_rate": "16", "pain": "3"}, Origin("api"))
    assert not outcome.attached and outcome.control_id is not None
    [oru] = orus(service)
    assert oru.control_id == outcome.control_id and len(oru.all("OBR")) == 1
    assert oru.obx_by_code("9279-1")[11] == "F" and oru.obx_by_code("72514-3")[16] == "4711^NURSE^ANNA"
    assert [s[4] for s in oru.obx] == ["1.0.0.1", "1.0.0.2"]
    assert isinstance(held, Reviewed) and service.review.store.get(held.item_id).state == "pending"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"resp_rate": "abc"}, "not a number"),
        ({"resp_rate": "1e2"}, "plain number"),
        ({"pain": "11"}, "plausible range"),
        ({"spo2": "97"}, "not something to enter by hand"),
        ({"arm": "left_leg"}, "one of left_arm, right_arm"),
        ({"resp_rate": ""}, "nothing entered"),
    ],
)
async def test_manual_entry_mistakes_are_refused_with_one_line(
    tmp_path: Path, services: list[AgentService], values: dict[str, str], message: str
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "auto", time)
    services.append(service)
    service.clinicians.set(ANNA, Origin("cli"))
    with pytest.raises(ReviewError, match=message):
        await service.review.manual(values, Origin("cli"))
    assert queued(service) == []


async def test_a_rejected_reading_still_sends_the_manual_entries_riding_with_it(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time)
    services.append(service)
    held = await _take(service, time)
    assert isinstance(held, Reviewed)
    service.clinicians.set(ANNA, Origin("cli"))
    await service.review.manual({"resp_rate": "18"}, Origin("cli"))
    await service.review.reject(held.item_id, "artefact", Origin("cli"))
    [oru] = orus(service)
    assert oru.value("9279-1") == "18" and oru.codes() == ["151562"]


async def test_a_crash_between_reserving_and_queueing_resends_the_same_bytes(
    tmp_path: Path, services: list[AgentService], monkeypatch: pytest.MonkeyPatch
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time)
    held = await _take(service, time)
    assert isinstance(held, Reviewed)
    service.clinicians.set(ANNA, Origin("cli"))

    async def crash(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed")  # the process dies right after the reservation was committed

    monkeypatch.setattr(service.pipeline, "commit_reviewed", crash)
    with pytest.raises(SystemExit):
        await service.review.confirm([held.item_id], Origin("cli"))
    [reserved] = service.review.store.actions("due")
    service.close()
    time.advance(minutes=5)

    again = make_service(tmp_path, "confirm", time)
    services.append(again)
    assert queued(again) == []
    await again.review.resume()
    [message] = queued(again)
    assert message.control_id == held.control_id == reserved.control_id
    assert message.body == reserved.bodies["ehr"]  # byte for byte, MSH-7 included
    assert validate_oru(message.body).obx_by_code("150021")[11] == "F"
    await again.review.resume()  # nothing twice
    assert len(queued(again)) == 1


async def test_confirm_survives_a_crash_after_queueing(
    tmp_path: Path, services: list[AgentService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued, but the action not yet marked done: the restart queues nothing twice (same MSH-10)."""
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time)
    held = await _take(service, time)
    assert isinstance(held, Reviewed)
    service.clinicians.set(ANNA, Origin("cli"))

    def crash(*args: object, **kwargs: object) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(service.review.store, "complete", crash)
    with pytest.raises(SystemExit):
        await service.review.confirm([held.item_id], Origin("cli"))
    assert len(queued(service)) == 1
    service.close()
    again = make_service(tmp_path, "confirm", time)
    services.append(again)
    await again.review.resume()
    assert [m.control_id for m in queued(again)] == [held.control_id]
    assert again.review.list()[0]["status"] == "F"


async def test_a_reading_released_twice_after_a_crash_is_listed_once(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time)
    services.append(service)
    reading = bp_reading(time.now)
    runtime = service.runtimes["cuff"]
    from vitals_agent.agent.patient.context import PatientDetails

    patient = PatientDetails(mrn=MRN)
    first = await service.pipeline.submit(runtime, reading, late_patient=patient, control_id="HELD00001")
    second = await service.pipeline.submit(runtime, reading, late_patient=patient, control_id="HELD00001")
    assert isinstance(first, Reviewed) and isinstance(second, Reviewed)
    assert first.item_id == second.item_id and len(service.review.list()) == 1


async def test_the_clinician_leaves_with_the_patient_and_after_the_timeout(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(
        tmp_path, "confirm", time, review={"mode": "confirm", "clinician_timeout_minutes": 10}
    )
    services.append(service)
    _patient(service)
    service.clinicians.set(ANNA, Origin("barcode", source="badge-1"))
    service.patients.clear(Origin("api"))
    assert service.clinicians.current() is None
    service.clinicians.set(ANNA, Origin("cli"))
    time.advance(minutes=9)
    service.clinicians.touch()
    time.advance(minutes=9)
    assert service.clinicians.current() == ANNA  # activity restarted the timer
    time.advance(minutes=1, seconds=1)
    assert service.clinicians.current() is None
    names = [(e["event"], e.get("channel")) for e in events(tmp_path) if e["event"].startswith("clinician_")]
    assert names == [
        ("clinician_set", "barcode"),
        ("clinician_cleared", "patient"),
        ("clinician_set", "cli"),
        ("clinician_expired", "expiry"),
    ]


async def test_the_clinician_survives_a_restart_and_an_unreadable_file_is_moved_aside(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "auto", time)
    service.clinicians.set(Clinician(id="0815", family="DOC"), Origin("cli"))
    service.close()
    again = make_service(tmp_path, "auto", time)
    assert again.clinicians.current() == Clinician(id="0815", family="DOC")
    again.close()
    (tmp_path / "clinician_context.json").write_text("{not json")
    third = make_service(tmp_path, "auto", time)
    services.append(third)
    assert third.clinicians.current() is None
    assert list(tmp_path.glob("clinician_context.json.damaged-*"))
    third.clinicians.set(ANNA, Origin("cli"))
    assert_private(tmp_path / "clinician_context.json")  # POSIX 0600; Windows: owner/SYSTEM/Administrators


async def test_status_names_the_mode_the_waiting_readings_and_the_clinician(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time)
    services.append(service)
    await _take(service, time)
    service.clinicians.set(ANNA, Origin("cli"))
    review = service.status()["review"]
    assert (review["mode"], review["pending"], review["awaiting_confirmation"]) == ("confirm", 1, 0)
    assert review["clinician"]["name"] == "ANNA NURSE" and review["clinician"]["channel"] == "cli"
    assert MRN not in str(service.status())
    assert time.now - timedelta(seconds=1) < __import__("datetime").datetime.fromisoformat(
        review["oldest_waiting_at"]
    )


async def test_fhir_gets_the_review_status_performer_and_updates(
    tmp_path: Path, services: list[AgentService]
) -> None:
    import json

    time = FakeClock()
    fhir = {
        "enabled": True,
        "base_url": "https://fhir.example.org/r4",
        "patient_identifier_system": "urn:oid:2.999.1",
    }
    service = make_service(tmp_path, "auto+confirm", time, fhir=fhir)
    services.append(service)
    _patient(service)
    await _take(service, time)
    [item] = service.review.list()
    service.clinicians.set(ANNA, Origin("cli"))
    await service.review.confirm([item["id"]], Origin("cli"))
    await service.review.wrong_patient(item["id"], Origin("cli"))
    time.advance(minutes=1)
    _patient(service, OTHER_MRN)
    await service.review.run_refiles()
    bundles = [json.loads(m.body) for m in queued(service, "fhir")]
    assert len(bundles) == 4

    def observations(bundle: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]

    first, final, wrong, refiled = (observations(b) for b in bundles)
    assert {o["resource"]["status"] for o in first} == {"preliminary"}
    assert {o["resource"]["status"] for o in final} == {"final"}
    assert all(o["request"]["method"] == "PUT" for o in final)
    assert final[0]["resource"]["performer"][0]["identifier"]["value"] == "4711"
    assert [o["fullUrl"] for o in final] == [o["fullUrl"] for o in first]  # the same observations
    assert {o["resource"]["status"] for o in wrong} == {"entered-in-error"}
    assert {o["resource"]["status"] for o in refiled} == {"final"}
    assert not {o["fullUrl"] for o in refiled} & {o["fullUrl"] for o in first}  # new ones for the new chart
    assert all(o["request"]["method"] == "POST" for o in refiled)
    assert OTHER_MRN in refiled[0]["resource"]["subject"]["reference"]
