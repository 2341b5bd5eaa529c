"""The FHIR Bundle builder: Vital Signs profiles, codes, identity, idempotency, patient and device forms."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fhir_oracle import FhirOracleError, check_bundle, observation_by_loinc, resources
from vitals_agent.codes import tables
from vitals_agent.fhir.bundle import (
    EUI64_SYSTEM,
    FhirBuildError,
    FhirProfile,
    Performer,
    build_bundle,
)
from vitals_agent.fhir.wire import dumps
from vitals_agent.models import (
    Attachment,
    DeviceClass,
    DeviceIdentity,
    Flag,
    Measurement,
    PatientInfo,
    Reading,
    ReadingFlag,
)

T0 = datetime(2026, 11, 28, 9, 15, 30, tzinfo=UTC)
PROFILE = FhirProfile(
    gateway_eui64="00000000000000AA",
    patient_system="urn:oid:2.999.1",
    location="CARDIO^EXAM 3",
    tz=timezone(timedelta(hours=1)),
)
JANE = PatientInfo(mrn="0012345", family_name="Doe", given_name="Jane", birth_date="19800102", sex="F")
MDC = "urn:iso:std:iso:11073:10101"


def _reading(
    device_class: DeviceClass,
    *values: tuple[str, str, str],
    device: DeviceIdentity | None = None,
    measurements: tuple[Measurement, ...] | None = None,
    flags: tuple[ReadingFlag, ...] = (),
    statements: tuple[str, ...] = (),
    source_patient: PatientInfo | None = None,
    attachments: tuple[Attachment, ...] = (),
) -> Reading:
    return Reading(
        device=device
        or DeviceIdentity(
            id="dev1", manufacturer="Acme", model="M1", serial_number="SN-9", eui64="0011223344556677"
        ),
        device_class=device_class,
        measurements=measurements
        if measurements is not None
        else tuple(Measurement(metric=k, value=Decimal(v), unit=u) for k, v, u in values),
        observed_at=T0,
        received_at=T0,
        flags=flags,
        statements=statements,
        source_patient=source_patient,
        attachments=attachments,
    )


def _build(reading: Reading, profile: FhirProfile = PROFILE, **kw: Any) -> dict[str, Any]:
    kw.setdefault("message_id", "MSG1")
    kw.setdefault("created_at", T0 + timedelta(seconds=2))
    return check_bundle(build_bundle(reading, profile, **kw))


def _codes(obs: dict[str, Any], system: str) -> list[str]:
    return [c["code"] for c in obs["code"]["coding"] if c["system"] == system]


BP = _reading(
    DeviceClass.BLOOD_PRESSURE,
    ("bp_systolic", "120", "mm[Hg]"),
    ("bp_diastolic", "80", "mm[Hg]"),
    ("bp_mean", "93", "mm[Hg]"),
    ("pulse_rate", "72", "/min"),
)


def test_blood_pressure_is_one_panel_with_components_and_heart_rate_apart() -> None:
    doc = _build(BP, patient=JANE)
    panel = observation_by_loinc(doc, "85354-9")
    assert _codes(panel, MDC) == ["150020"]
    comps = {c["code"]["coding"][0]["code"]: c for c in panel["component"]}
    assert list(comps) == ["8480-6", "8462-4", "8478-0"]
    assert comps["8480-6"]["valueQuantity"] == {
        "value": 120,
        "unit": "mm[Hg]",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]",
    }
    assert comps["8480-6"]["code"]["coding"][1] == {
        "system": MDC,
        "code": "150021",
        "display": "MDC_PRESS_BLD_NONINV_SYS",
    }
    assert comps["8462-4"]["valueQuantity"]["value"] == 80
    assert comps["8478-0"]["valueQuantity"]["value"] == 93
    assert "valueQuantity" not in panel
    hr = observation_by_loinc(doc, "8867-4")
    assert hr["valueQuantity"]["value"] == 72 and hr["valueQuantity"]["code"] == "/min"
    assert _codes(hr, MDC) == ["149546"]
    assert panel["meta"]["profile"] == [
        "http://hl7.org/fhir/StructureDefinition/vitalsigns",
        "http://hl7.org/fhir/StructureDefinition/bp",
    ]
    assert hr["meta"]["profile"][1] == "http://hl7.org/fhir/StructureDefinition/heartrate"
    assert panel["subject"] == {"reference": "Patient?identifier=urn:oid:2.999.1|0012345"}
    assert panel["effectiveDateTime"] == "2026-11-28T10:15:30+01:00"
    assert panel["issued"] == "2026-11-28T10:15:32+01:00"
    assert panel["status"] == "preliminary"
    assert panel["category"][0]["coding"][0]["code"] == "vital-signs"


def test_missing_diastolic_is_a_data_absent_component_not_a_dropped_requirement() -> None:
    reading = _reading(DeviceClass.BLOOD_PRESSURE, ("bp_systolic", "131", "mm[Hg]"))
    doc = _build(reading, patient=JANE)
    panel = observation_by_loinc(doc, "85354-9")
    dia = next(c for c in panel["component"] if c["code"]["coding"][0]["code"] == "8462-4")
    assert dia["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    assert "valueQuantity" not in dia
    assert len(panel["component"]) == 2  # no mean: it is optional


def test_spo2_carries_both_loinc_codes_and_mdc() -> None:
    reading = _reading(
        DeviceClass.PULSE_OXIMETER,
        ("spo2", "97", "%"),
        ("pulse_rate_oximeter", "64", "/min"),
        ("perfusion_index", "2.40", "%"),
    )
    doc = _build(reading, patient=JANE)
    spo2 = observation_by_loinc(doc, "2708-6")
    assert _codes(spo2, "http://loinc.org") == ["2708-6", "59408-5"]
    assert _codes(spo2, MDC) == ["150456"]
    assert spo2["meta"]["profile"][1].endswith("/oxygensat")
    pi = next(o for o in resources(doc, "Observation") if _codes(o, MDC) == ["150488"])
    assert pi["category"][0]["coding"][0]["code"] == "exam"  # not a vital sign: no profile claimed
    assert "meta" not in pi
    assert pi["valueQuantity"]["value"] == 2.4
    assert b'"value":2.40' in build_bundle(reading, PROFILE, message_id="M", created_at=T0)


def test_temperature_keeps_its_resolution_and_gets_the_site() -> None:
    oral = _reading(DeviceClass.THERMOMETER, ("body_temperature_oral", "36.60", "Cel"))
    body = build_bundle(oral, PROFILE, message_id="M", created_at=T0, patient=JANE)
    assert b'"valueQuantity":{"value":36.60,' in body
    temp = observation_by_loinc(check_bundle(body), "8310-5")
    assert _codes(temp, "http://loinc.org") == ["8310-5", "8331-1"]
    assert temp["bodySite"]["coding"] == [
        {"system": "http://snomed.info/sct", "code": "74262004", "display": "Oral cavity structure"}
    ]
    # a site the device names wins over the metric's implied site
    finger = _reading(
        DeviceClass.THERMOMETER,
        measurements=(
            Measurement(
                metric="body_temperature",
                value=Decimal("35.9"),
                unit="Cel",
                site="7569003^Finger structure^SCT",
            ),
        ),
    )
    temp = observation_by_loinc(_build(finger), "8310-5")
    assert temp["bodySite"]["coding"][0]["code"] == "7569003"


def test_scale_weight_height_bmi_and_respiration() -> None:
    reading = _reading(
        DeviceClass.SCALE,
        ("body_weight", "70.25", "kg"),
        ("body_height", "172.0", "cm"),
        ("bmi", "23.7", "kg/m2"),
        ("respiratory_rate", "16", "/min"),
    )
    doc = _build(reading, patient=JANE)
    assert observation_by_loinc(doc, "29463-7")["valueQuantity"]["code"] == "kg"
    assert observation_by_loinc(doc, "8302-2")["valueQuantity"]["value"] == 172.0
    assert observation_by_loinc(doc, "39156-5")["valueQuantity"]["code"] == "kg/m2"
    resp = observation_by_loinc(doc, "9279-1")
    assert resp["meta"]["profile"][1].endswith("/resprate")
    assert _codes(resp, MDC) == ["151562"]


def test_unbound_reading_has_no_subject_but_device_and_room() -> None:
    doc = _build(BP)
    for obs in resources(doc, "Observation"):
        assert "subject" not in obs
        assert "meta" not in obs  # the Vital Signs profiles need a Patient subject: not claimed
        assert obs["device"]["reference"].startswith("urn:uuid:")
    (device,) = resources(doc, "Device")
    (location,) = resources(doc, "Location")
    assert location["identifier"] == [{"system": "urn:vitals-agent:location", "value": "CARDIO^EXAM 3"}]
    assert location["name"] == "CARDIO EXAM 3"
    location_url = next(e["fullUrl"] for e in doc["entry"] if e["resource"] is location)
    assert device["location"] == {"reference": location_url}
    assert not resources(doc, "Patient")


def test_device_is_a_conditional_create_on_its_eui64() -> None:
    doc = _build(BP)
    entry = next(e for e in doc["entry"] if e["resource"]["resourceType"] == "Device")
    device = entry["resource"]
    assert device["identifier"][0]["system"] == EUI64_SYSTEM
    assert device["identifier"][0]["value"] == "00-11-22-33-44-55-66-77"
    assert device["identifier"][0]["type"]["coding"][0]["code"] == "SYSID"
    assert device["manufacturer"] == "Acme" and device["modelNumber"] == "M1"
    assert device["serialNumber"] == "SN-9"
    assert device["type"]["coding"][0]["code"] == "528391"
    assert entry["request"] == {
        "method": "POST",
        "url": "Device",
        "ifNoneExist": f"identifier={EUI64_SYSTEM}|00-11-22-33-44-55-66-77",
    }
    # without an EUI-64: the serial number; without one either: the configured id on this gateway
    serial_only = _reading(
        DeviceClass.SCALE,
        ("body_weight", "70.2", "kg"),
        device=DeviceIdentity(id="scale", manufacturer="A&D", model="UC-321", serial_number="77 01"),
    )
    entry = next(e for e in _build(serial_only)["entry"] if e["resource"]["resourceType"] == "Device")
    assert entry["request"]["ifNoneExist"] == "identifier=urn:vitals-agent:serial:a-d-uc-321|77%2001"
    bare = _reading(DeviceClass.SCALE, ("body_weight", "70.2", "kg"), device=DeviceIdentity(id="scale-3"))
    entry = next(e for e in _build(bare)["entry"] if e["resource"]["resourceType"] == "Device")
    assert entry["request"]["ifNoneExist"] == "identifier=urn:vitals-agent:device:00000000000000AA|scale-3"


def test_rebuilt_bundle_is_identical_and_observation_ids_are_stable() -> None:
    first = build_bundle(BP, PROFILE, message_id="A", created_at=T0, patient=JANE)
    again = build_bundle(BP, PROFILE, message_id="A", created_at=T0, patient=JANE)
    assert first == again
    other_msg = check_bundle(build_bundle(BP, PROFILE, message_id="B", created_at=T0, patient=JANE))
    ids = [e["fullUrl"] for e in check_bundle(first)["entry"]]
    assert ids == [e["fullUrl"] for e in other_msg["entry"]]  # the reading, not the message, names them
    later = BP.with_updates(observed_at=T0 + timedelta(seconds=1))
    later_ids = [e["fullUrl"] for e in _build(later, patient=JANE)["entry"]]
    assert set(ids[2:]).isdisjoint(later_ids)  # another reading: other Observations (same Device/room)
    for entry in check_bundle(first)["entry"]:
        if entry["resource"]["resourceType"] == "Observation":
            ident = entry["resource"]["identifier"][0]
            assert ident["value"] == entry["fullUrl"]
            assert entry["request"]["ifNoneExist"] == f"identifier=urn:ietf:rfc:3986|{ident['value']}"


def test_revision_updates_the_same_observations_with_final_status_and_performer() -> None:
    first = _build(BP, patient=JANE)
    final = _build(
        BP, patient=JANE, status="final", performer=Performer("N77", "Smith", "Ann"), revision=True
    )
    before = {e["fullUrl"] for e in first["entry"] if e["resource"]["resourceType"] == "Observation"}
    for entry in final["entry"]:
        if entry["resource"]["resourceType"] != "Observation":
            continue
        assert entry["fullUrl"] in before
        assert entry["request"]["method"] == "PUT"
        assert entry["request"]["url"] == f"Observation?identifier=urn:ietf:rfc:3986|{entry['fullUrl']}"
        assert entry["resource"]["status"] == "final"
        assert entry["resource"]["performer"] == [
            {"identifier": {"system": "urn:vitals-agent:clinician", "value": "N77"}, "display": "Ann Smith"}
        ]


def test_flagged_values_are_absent_not_sent_and_test_data_is_tagged() -> None:
    reading = _reading(
        DeviceClass.PULSE_OXIMETER,
        measurements=(
            Measurement(metric="spo2", value=Decimal("0"), unit="%", flags=(Flag.INVALID,)),
            Measurement(metric="pulse_rate_oximeter", value=Decimal("61"), unit="/min"),
        ),
        flags=(ReadingFlag.TEST_DATA,),
    )
    doc = _build(reading, patient=JANE)
    spo2 = observation_by_loinc(doc, "2708-6")
    assert "valueQuantity" not in spo2
    assert spo2["dataAbsentReason"]["coding"][0]["code"] == "error"
    for obs in resources(doc, "Observation"):
        assert obs["meta"]["security"][0]["code"] == "HTEST"


def test_ekg_panel_statements_and_original_file() -> None:
    data = b"SCP-ECG \x00\x01 original bytes"
    reading = _reading(
        DeviceClass.ECG,
        ("ecg_heart_rate", "61", "/min"),
        ("ecg_qrs_duration", "92", "ms"),
        ("ecg_pr_interval", "160", "ms"),
        statements=("Sinus rhythm\nNormal ECG",),
        source_patient=PatientInfo(mrn="CART-77", family_name="Roe"),
        attachments=(Attachment(name="ekg.scp", media_type="application/octet-stream", data=data),),
    )
    doc = _build(reading)
    panel = observation_by_loinc(doc, "34534-8")
    assert panel["category"][0]["coding"][0]["code"] == "procedure"
    # the cart's own patient id is the subject when the room is unbound (as PID-3 in the ORU)
    assert panel["subject"] == {"reference": "Patient?identifier=urn:oid:2.999.1|CART-77"}
    by_code = {c["code"]["text"]: c for c in panel["component"]}
    assert by_code["Heart rate (EKG)"]["valueQuantity"]["value"] == 61
    assert by_code["QRS duration"]["code"]["coding"][0] == {"system": "http://loinc.org", "code": "8633-0"}
    pr = by_code["PR interval"]["code"]["coding"]
    assert {
        "system": "urn:vitals-agent:code:99VITALS",
        "code": "MDC_ECG_TIME_PD_PR",
        "display": "PR interval",
    } in pr
    assert all(c["system"] != MDC for c in pr)  # conflicting MDC code: local code instead
    assert by_code["EKG impression"]["valueString"] == "Sinus rhythm\nNormal ECG"
    (doc_ref,) = resources(doc, "DocumentReference")
    attachment = doc_ref["content"][0]["attachment"]
    assert base64.b64decode(attachment["data"]) == data
    assert attachment["size"] == len(data) and attachment["title"] == "ekg.scp"
    doc_url = next(e["fullUrl"] for e in doc["entry"] if e["resource"] is doc_ref)
    assert panel["derivedFrom"] == [{"reference": doc_url}]
    no_attachments = FhirProfile(gateway_eui64="00000000000000AA", attachments=False)
    doc = _build(reading, no_attachments)
    assert not resources(doc, "DocumentReference") and "derivedFrom" not in observation_by_loinc(
        doc, "34534-8"
    )


def test_bound_room_wins_over_the_cart_and_create_patient_sends_demographics() -> None:
    reading = _reading(
        DeviceClass.ECG, ("ecg_heart_rate", "61", "/min"), source_patient=PatientInfo(mrn="0012345")
    )
    profile = FhirProfile(
        gateway_eui64="00000000000000AA", patient_system="urn:oid:2.999.1", create_patient=True
    )
    doc = _build(reading, profile, patient=JANE, late_associated=True)
    (patient,) = resources(doc, "Patient")
    assert patient["identifier"][0]["value"] == "0012345"
    assert patient["name"] == [{"use": "official", "family": "Doe", "given": ["Jane"]}]
    assert patient["birthDate"] == "1980-01-02" and patient["gender"] == "female"
    entry = next(e for e in doc["entry"] if e["resource"] is patient)
    assert entry["request"]["ifNoneExist"] == "identifier=urn:oid:2.999.1|0012345"
    panel = observation_by_loinc(doc, "34534-8")
    assert panel["subject"] == {"reference": entry["fullUrl"]}
    assert panel["note"] == [{"text": "late-associated: held until a patient was set"}]


def test_effective_time_uses_the_sites_zone_with_daylight_saving() -> None:
    profile = FhirProfile(gateway_eui64="00000000000000AA", tz=ZoneInfo("Europe/Berlin"))
    summer = BP.with_updates(observed_at=datetime(2026, 7, 1, 12, 0, tzinfo=UTC))
    assert observation_by_loinc(_build(summer, profile), "85354-9")["effectiveDateTime"] == (
        "2026-07-01T14:00:00+02:00"
    )
    utc = FhirProfile(gateway_eui64="00000000000000AA")
    assert (
        observation_by_loinc(_build(BP, utc), "85354-9")["effectiveDateTime"] == "2026-11-28T09:15:30+00:00"
    )


def test_refusals_are_typed_errors() -> None:
    empty = _reading(
        DeviceClass.BLOOD_PRESSURE,
        measurements=(Measurement(metric="bp_systolic", value=None, unit="mm[Hg]", absent_reason="cuff"),),
    )
    with pytest.raises(FhirBuildError, match="no value"):
        build_bundle(empty, PROFILE, message_id="M", created_at=T0)
    with pytest.raises(FhirBuildError, match="message id"):
        build_bundle(BP, PROFILE, message_id="bad id!", created_at=T0)
    with pytest.raises(FhirBuildError, match="status"):
        build_bundle(BP, PROFILE, message_id="M", created_at=T0, status="done")  # type: ignore[arg-type]
    with pytest.raises(FhirBuildError, match="empty MRN"):
        build_bundle(BP, PROFILE, message_id="M", created_at=T0, patient=PatientInfo(mrn="  "))
    with pytest.raises(FhirBuildError, match="URI"):
        FhirProfile(gateway_eui64="00000000000000AA", patient_system="MRN")
    odd_unit = _reading(
        DeviceClass.SCALE, measurements=(Measurement(metric="body_weight", value=Decimal("3"), unit="stone"),)
    )
    with pytest.raises(FhirBuildError, match="UCUM"):
        build_bundle(odd_unit, PROFILE, message_id="M", created_at=T0)


def test_wire_writes_decimals_exactly() -> None:
    assert dumps({"a": Decimal("36.60"), "b": Decimal("1E+2"), "c": [True, None, 3, "é\n"]}) == (
        '{"a":36.60,"b":100,"c":[true,null,3,"é\\n"]}'
    )
    assert json.loads(dumps({"v": Decimal("0.005")}))["v"] == 0.005
    with pytest.raises(ValueError, match="finite"):
        dumps(Decimal("NaN"))
    with pytest.raises(TypeError):
        dumps(b"raw")


def _mutated(change: str) -> bytes:
    doc = json.loads(build_bundle(BP, PROFILE, message_id="M", created_at=T0, patient=JANE))
    entries = doc["entry"]
    panel = next(e for e in entries if e["resource"]["resourceType"] == "Observation")
    obs = panel["resource"]
    if change == "category":
        obs["category"][0]["coding"][0]["code"] = "exam"
    elif change == "offset":
        obs["effectiveDateTime"] = "2026-11-28T10:15:30"
    elif change == "diastolic":
        obs["component"] = obs["component"][:1]
    elif change == "unit":
        hr = next(
            e["resource"]
            for e in entries
            if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "8867-4"
        )
        hr["valueQuantity"]["code"] = "Hz"
    elif change == "ifNoneExist":
        del panel["request"]["ifNoneExist"]
    elif change == "dangling":
        obs["device"]["reference"] = "urn:uuid:00000000-0000-0000-0000-000000000000"
    elif change == "no-subject-no-device":
        del obs["subject"], obs["device"]
    elif change == "status":
        obs["status"] = "done"
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "change",
    ["category", "offset", "diastolic", "unit", "ifNoneExist", "dangling", "no-subject-no-device", "status"],
)
def test_the_oracle_rejects_what_the_profile_forbids(change: str) -> None:
    """The check is not a rubber stamp: each required element, removed, fails it."""
    with pytest.raises((FhirOracleError, ValueError)):
        check_bundle(_mutated(change))


# --- property: any reportable reading becomes a Bundle that passes the oracle --------------------------

_REPORTABLE = sorted(k for k, m in tables().metrics.items() if m.reportable)


@st.composite
def _readings(draw: st.DrawFn) -> Reading:
    keys = draw(st.lists(st.sampled_from(_REPORTABLE), min_size=1, max_size=6, unique=True))
    measurements = []
    for key in keys:
        info = tables().metric(key)
        lo = info.minimum if info.minimum is not None else Decimal(0)
        hi = info.maximum if info.maximum is not None else Decimal(1000)
        value = draw(st.decimals(min_value=lo, max_value=hi, places=2, allow_nan=False, allow_infinity=False))
        flags = draw(st.sampled_from([(), (Flag.QUESTIONABLE,), (Flag.INVALID,)]))
        measurements.append(Measurement(metric=key, value=value, unit=info.unit, flags=flags))
    device_class = draw(st.sampled_from(list(DeviceClass)))
    eui = draw(st.one_of(st.none(), st.text("0123456789ABCDEF", min_size=16, max_size=16)))
    offset = draw(st.integers(min_value=-12 * 60, max_value=14 * 60))
    return Reading(
        device=DeviceIdentity(id="dev", eui64=eui, model=draw(st.one_of(st.none(), st.text(max_size=12)))),
        device_class=device_class,
        measurements=tuple(measurements),
        observed_at=(T0 + timedelta(seconds=draw(st.integers(0, 10**8)))).astimezone(
            timezone(timedelta(minutes=offset))
        ),
        received_at=T0,
        statements=tuple(draw(st.lists(st.text(max_size=30), max_size=2))),
    )


@given(reading=_readings(), bound=st.booleans())
def test_any_reading_builds_a_valid_vital_signs_bundle(reading: Reading, bound: bool) -> None:
    if reading.device_class is DeviceClass.MANUAL and not bound:  # no device, no patient: nobody's
        with pytest.raises(FhirBuildError, match="manual entry needs a patient"):
            build_bundle(reading, PROFILE, message_id="P1", created_at=T0)
        return
    body = build_bundle(reading, PROFILE, message_id="P1", created_at=T0, patient=JANE if bound else None)
    doc = check_bundle(body)
    sent = {m.metric for m in reading.measurements}
    codes = {c["code"] for o in resources(doc, "Observation") for c in o["code"]["coding"]}
    for comp in (c for o in resources(doc, "Observation") for c in o.get("component", [])):
        codes |= {c["code"] for c in comp["code"]["coding"]}
    for key in sent:  # every metric is somewhere, by its LOINC, MDC or local code
        info = tables().metric(key)
        assert {info.loinc, str(info.mdc), info.refid} & codes, key


# --- decode --fhir -------------------------------------------------------------------------------------


async def test_decode_fhir_prints_one_bundle_per_reading(capsys: pytest.CaptureFixture[str]) -> None:
    from vitals_agent.cli import main

    frames = b"ST,GS,+0070.50kg\r\nST,GS,+0071.00kg\r\n".hex()
    assert (
        await main(["decode", "scale-ascii", "--hex", frames, "--fhir", "--timezone", "Europe/Berlin"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 1
    doc = check_bundle(lines[0])
    weight = observation_by_loinc(doc, "29463-7")
    assert '"valueQuantity":{"value":70.50,"unit":"kg"' in lines[0]
    assert weight["effectiveDateTime"][-6:] in ("+01:00", "+02:00")
    assert "subject" not in weight  # offline: nobody is bound
    assert await main(["decode", "scale-ascii", "--hex", b"ST,GS,+0070\r\n".hex(), "--fhir"]) == 1


def test_wrong_patient_flow_retracts_then_files_anew() -> None:
    """Review (#16) "wrong patient": the first chart's Observations become entered-in-error (same ids,
    conditional update); the refile to the right chart gets new ids, so it is not mistaken for them."""
    first = _build(BP, patient=JANE)
    retract = _build(BP, patient=JANE, status="entered-in-error", revision=True)
    refile = _build(BP, patient=PatientInfo(mrn="0099999"), order_key="refile-1")

    def ids(doc: dict[str, Any]) -> set[str]:
        return {e["fullUrl"] for e in doc["entry"] if e["resource"]["resourceType"] == "Observation"}

    assert ids(retract) == ids(first)
    assert all(o["status"] == "entered-in-error" for o in resources(retract, "Observation"))
    assert ids(refile).isdisjoint(ids(first))
    assert observation_by_loinc(refile, "85354-9")["subject"]["reference"].endswith("|0099999")
