"""The ORU^R01 builder: every device class, patient modes and profile options, each message checked by the
oracle (hl7apy STRICT + PCD-01 checks) and by asserting the real field values."""

from __future__ import annotations

import base64
import dataclasses
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.kit import m
from tests.oracle import ParsedOru, validate_oru
from vitals_agent.agent.pipeline.profile import EHR_MESSAGE_KEYS, message_profile
from vitals_agent.config.ehr import EhrConfig
from vitals_agent.config.schema import parse_config
from vitals_agent.errors import ConfigError
from vitals_agent.hl7.oru import (
    MessageBuildError,
    MessageProfile,
    PatientIdentity,
    build_oru,
    format_dtm,
    new_control_id,
)
from vitals_agent.models import (
    Attachment,
    DeviceClass,
    DeviceIdentity,
    Flag,
    Measurement,
    PatientInfo,
    Reading,
    ReadingFlag,
    device_text,
    device_text_lines,
)

GATEWAY = "0A1B2CFFFE3D4E5F"
CUFF = "00091FFFFE123456"
T0 = datetime(2025, 3, 14, 15, 29, 58, tzinfo=UTC)
CREATED = datetime(2025, 3, 14, 15, 30, 12, tzinfo=UTC)
AUTHORITY = "EXHOSP&2.999.1&ISO"

PROFILE = MessageProfile(
    facility="EXAMPLE_CLINIC",
    location="CARDIO CLINIC^EXAM 3^^EXHOSP&2.999.1&ISO",
    gateway_eui64=GATEWAY,
    receiving_application="EHR",
    receiving_facility="EXAMPLE_HOSP",
    assigning_authority=AUTHORITY,
)
JANE = PatientIdentity(
    mrn="MRN0012345", family="DOE", given="JANE", birth_date="19700101", sex="F", encounter="V77"
)


def reading(device_class: DeviceClass, *measurements: Measurement, **kw: Any) -> Reading:
    kw.setdefault("device", DeviceIdentity(id="dev1", eui64=CUFF))
    kw.setdefault("observed_at", T0)
    kw.setdefault("received_at", T0 + timedelta(seconds=6))
    return Reading(device_class=device_class, measurements=measurements, **kw)


def build(r: Reading, profile: MessageProfile = PROFILE, **kw: Any) -> tuple[bytes, ParsedOru]:
    kw.setdefault("control_id", "0A1B2C3D4E5F-000123")
    kw.setdefault("created_at", CREATED)
    raw = build_oru(r, profile, **kw)
    return raw, validate_oru(raw, version=profile.version)


def bp_reading(**kw: Any) -> Reading:
    return reading(
        DeviceClass.BLOOD_PRESSURE,
        m("bp_systolic", "128", "mm[Hg]", site="LA^Left arm^HL70163"),
        m("bp_diastolic", "84", "mm[Hg]", site="LA^Left arm^HL70163"),
        m("bp_mean", "99", "mm[Hg]", site="LA^Left arm^HL70163"),
        m("pulse_rate", "67", "/min"),
        device_time=datetime(2017, 1, 16, 12, 39, 54, tzinfo=UTC),
        **kw,
    )


def test_bp_bound_patient_whole_message() -> None:
    raw, parsed = build(bp_reading(), patient=JANE)
    assert raw.endswith(b"\r") and b"\n" not in raw
    assert parsed.names == ["MSH", "PID", "PV1", "OBR", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX"]
    msh = parsed.msh
    assert msh[3] == f"VITALS_AGENT^{GATEWAY}^EUI-64"
    assert (msh[4], msh[5], msh[6]) == ("EXAMPLE_CLINIC", "EHR", "EXAMPLE_HOSP")
    assert msh[7] == "20250314153012+0000"
    assert msh[9] == "ORU^R01^ORU_R01"
    assert msh[10] == "0A1B2C3D4E5F-000123"
    assert (msh[11], msh[12], msh[15], msh[16]) == ("P", "2.6", "AL", "NE")
    assert msh[18] == ""  # ASCII only
    assert msh[21] == "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
    pid = parsed.pid
    assert pid[3] == "MRN0012345^^^EXHOSP&2.999.1&ISO^MR"
    assert pid[5] == "DOE^JANE^^^^^L"
    assert (pid[7], pid[8], pid[31]) == ("19700101", "F", "N")
    assert parsed.pv1.fields == [
        "PV1",
        "",
        "U",
        "CARDIO CLINIC^EXAM 3^^EXHOSP&2.999.1&ISO",
        *[""] * 15,
        "V77",
    ]
    obr = parsed.obr
    assert obr[1] == "1"
    assert re.fullmatch(rf"{GATEWAY}20250314152958-[0-9A-F]{{8}}\^VITALS_AGENT\^{GATEWAY}\^EUI-64", obr[3])
    assert obr[2] == obr[3]
    assert obr[4] == "182777000^monitoring of patient^SCT"
    assert obr[7] == "20250314152958+0000"
    rows = [(o[1], o[2], o.text(3), o[4], o[5], o[11]) for o in parsed.obx]
    assert rows == [
        ("1", "", "528391", "1.0.0.0", "", "X"),
        ("2", "NM", "150021", "1.0.0.1", "128", "R"),
        ("3", "NM", "150022", "1.0.0.2", "84", "R"),
        ("4", "NM", "150023", "1.0.0.3", "99", "R"),
        ("5", "NM", "149546", "1.0.0.4", "67", "R"),
        ("6", "DTM", "67975", "1.0.0.5", "20170116123954+0000", "R"),
    ]
    mds = parsed.obx[0]
    assert mds[3] == "528391^MDC_DEV_SPEC_PROFILE_BP^MDC"
    assert mds[18] == f"{CUFF}^^{CUFF}^EUI-64"
    sys_ = parsed.obx_by_code("150021")
    assert sys_[3] == "150021^MDC_PRESS_BLD_NONINV_SYS^MDC^8480-6^Non-invasive systolic blood pressure^LN"
    assert sys_[6] == "266016^MDC_DIM_MMHG^MDC^mm[Hg]^mm[Hg]^UCUM"
    assert sys_[14] == "20250314152958+0000"
    assert sys_[18] == ""  # identity only on the MDS row
    assert sys_[20] == "LA^Left arm^HL70163"
    pulse = parsed.obx_by_code("149546")
    assert pulse[6] == "264864^MDC_DIM_BEAT_PER_MIN^MDC^/min^/min^UCUM"
    assert pulse[20] == ""
    clock = parsed.obx_by_code("67975")
    assert clock[3] == "67975^MDC_ATTR_TIME_ABS^MDC"
    assert clock[14] == "20250314153004+0000"  # host receive time


def test_oximeter_unbound_temporary_identity() -> None:
    r = reading(
        DeviceClass.PULSE_OXIMETER,
        m("spo2", "97", "%"),
        m("pulse_rate_oximeter", "72", "/min"),
        m("perfusion_index", "3.60", "%"),
        device=DeviceIdentity(id="spo2-room12", serial_number="RAD8-0001", model="Rad-8"),
    )
    _, parsed = build(r)
    pid = parsed.pid
    assert pid[3] == f"TMP-RAD8-0001@{GATEWAY}-20250314152958^^^EXHOSP&2.999.1&ISO^PI"
    assert pid[5] == "^^^^^^U"
    assert (pid[7], pid[8], pid[31]) == ("", "", "Y")
    assert parsed.pv1[19] == ""
    assert parsed.obx[0][3] == "528388^MDC_DEV_SPEC_PROFILE_PULS_OXIM^MDC"
    assert parsed.obx[0][18] == f"RAD8-0001^Rad-8^{GATEWAY}^EUI-64"  # serial^model^the agent^EUI-64
    assert parsed.value("150456") == "97"
    assert (
        parsed.obx_by_code("150456")[3]
        == "150456^MDC_PULS_OXIM_SAT_O2^MDC^59408-5^Oxygen saturation by pulse oximetry^LN"
    )
    assert parsed.obx_by_code("149530")[4] == "1.0.0.2"
    pi = parsed.obx_by_code("150488")  # codes.md interim decision for P/C: Masimo/Mindray PI -> 150488
    assert pi[3] == "150488^MDC_BLD_PERF_INDEX^MDC"  # no LOINC known
    assert (pi[4], pi[5]) == ("1.0.0.3", "3.60")  # device precision kept
    assert pi[6] == "262688^MDC_DIM_PERCENT^MDC^%^%^UCUM"
    assert [o[4] for o in parsed.obx] == ["1.0.0.0", "1.0.0.1", "1.0.0.2", "1.0.0.3"]


def test_thermometer_with_site_and_fahrenheit_preference() -> None:
    r = reading(
        DeviceClass.THERMOMETER,
        m("body_temperature_oral", "37.60", "Cel", site="74262004^Oral cavity structure^SCT"),
    )
    _, parsed = build(r)
    row = parsed.obx_by_code("188424")
    assert row[3] == "188424^MDC_TEMP_ORAL^MDC^8331-1^Oral temperature^LN"
    assert (row[4], row[5]) == ("1.0.0.1", "37.60")
    assert row[6] == "268192^MDC_DIM_DEGC^MDC^Cel^Cel^UCUM"
    assert row[20] == "74262004^Oral cavity structure^SCT"
    assert parsed.obx[0][3] == "528392^MDC_DEV_SPEC_PROFILE_TEMP^MDC"

    fahrenheit = MessageProfile(
        **{**PROFILE.__dict__, "preferred_units": MappingProxyType({"Cel": "[degF]"})}
    )
    _, parsed = build(r, fahrenheit)
    row = parsed.obx_by_code("188424")
    assert row[5] == "99.68"
    assert row[6] == "266560^MDC_DIM_FAHR^MDC^[degF]^[degF]^UCUM"


def test_scale_bmi_is_auto_calculated_and_pounds_preference() -> None:
    r = reading(
        DeviceClass.SCALE,
        m("body_weight", "70.50", "kg"),
        m("body_height", "175.0", "cm"),
        m("bmi", "23.0", "kg/m2"),
        device=DeviceIdentity(id="scale-1"),
    )
    pounds = MessageProfile(**{**PROFILE.__dict__, "preferred_units": MappingProxyType({"kg": "[lb_av]"})})
    _, parsed = build(r, pounds)
    assert parsed.obx[0][3] == "528399^MDC_DEV_SPEC_PROFILE_SCALE^MDC"
    assert parsed.obx[0][18] == f"scale-1^^{GATEWAY}^EUI-64"  # configured id under this gateway
    weight = parsed.obx_by_code("188736")
    assert (weight[4], weight[5]) == ("1.0.0.1", "155.43")
    assert weight[6] == "263904^MDC_DIM_LB^MDC^[lb_av]^[lb_av]^UCUM"
    height = parsed.obx_by_code("188740")
    assert (height[4], height[5], height.text(6, 4)) == ("1.0.0.2", "175.0", "cm")
    bmi = parsed.obx_by_code("188752")
    assert (bmi[4], bmi[5]) == ("1.0.0.3", "23.0")
    assert bmi[6] == "264096^MDC_DIM_KG_PER_M_SQ^MDC^kg/m2^kg/m2^UCUM"  # not converted: kg/m2 is not kg
    assert bmi[17] == "ACALC^auto-calculation^MDC"
    assert weight[17] == ""


def test_ekg_cart_patient_statements_and_pdf() -> None:
    pdf = b"%PDF-1.4\n% fake report\n\x00\x01\x02\xff"
    long_statement = "Borderline ECG: " + "x" * 250
    r = reading(
        DeviceClass.ECG,
        m("ecg_heart_rate", "72", "/min"),
        m("ecg_pr_interval", "160", "ms"),
        m("ecg_qt_interval", "380", "ms"),
        m("ecg_qrs_axis", "-15", "deg"),
        statements=("Sinus rhythm", "Normal ECG\r\nNo previous ECG", long_statement),
        attachments=(Attachment(name="ecg 0001.pdf", media_type="application/pdf", data=pdf),),
        source_patient=PatientInfo(
            mrn="CART-778", family_name="O'Brien", given_name="Sean", birth_date="1961-02-03", sex="M"
        ),
        device=DeviceIdentity(id="cart-1", manufacturer="Philips", serial_number="PH123"),
    )
    _, parsed = build(r)
    pid = parsed.pid
    assert pid[3] == "CART-778^^^EXHOSP&2.999.1&ISO^MR"
    assert pid[5] == "O'Brien^Sean^^^^^L"
    assert (pid[7], pid[8], pid[31]) == ("19610203", "M", "")
    assert parsed.obx[0][3] == "69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC"
    hr = parsed.obx_by_code("147842")
    assert (hr[5], hr[3]) == ("72", "147842^MDC_ECG_HEART_RATE^MDC^8867-4^Heart rate (EKG)^LN")
    pr = parsed.obx_by_code("8625-6")  # C in codes.md: local primary, LOINC alternate
    assert pr[3] == "MDC_ECG_TIME_PD_PR^PR interval^99VITALS^8625-6^PR interval^LN"
    assert pr[6] == "264338^MDC_DIM_MILLI_SEC^MDC^ms^ms^UCUM"
    assert parsed.value("147204") == "-15"
    statements = parsed.obx_all_by_code("MDC_ECG_INTERPRETATION")
    assert [(s[2], s.text(5)) for s in statements] == [
        ("ST", "Sinus rhythm"),
        ("ST", "Normal ECG"),
        ("ST", "No previous ECG"),
        ("TX", long_statement),
    ]
    assert statements[0][3] == "MDC_ECG_INTERPRETATION^EKG interpretation^99VITALS^8601-7^EKG impression^LN"
    ed = parsed.obx_by_code("DEVICE_REPORT")
    assert ed[2] == "ED"
    _, kind, subtype, encoding, data = ed[5].split("^")
    assert (kind, subtype, encoding) == ("application", "pdf", "Base64")
    assert base64.b64decode(data) == pdf
    assert [n.text(3) for n in parsed.nte_after(ed)] == ["Attachment: ecg 0001.pdf"]
    subids = [o[4] for o in parsed.obx]
    assert len(set(subids)) == len(subids)


def test_large_pdf_attachment() -> None:
    pdf = bytes(range(256)) * 400  # 100 KiB
    r = reading(
        DeviceClass.ECG,
        m("ecg_heart_rate", "72", "/min"),
        attachments=(Attachment(name="report.pdf", media_type="application/pdf", data=pdf),),
    )
    raw, parsed = build(r)
    assert len(raw) > 130_000
    data = parsed.obx_by_code("DEVICE_REPORT")[5].split("^")[4]
    assert base64.b64decode(data) == pdf
    broken = raw.replace(data[:4].encode(), b"!!!!", 1)
    with pytest.raises(AssertionError, match="Base64"):
        validate_oru(broken)


def test_bound_patient_wins_over_cart_patient() -> None:
    r = reading(DeviceClass.ECG, m("ecg_heart_rate", "72", "/min"), source_patient=PatientInfo(mrn="CART-1"))
    _, parsed = build(r, patient=JANE)
    assert parsed.pid.text(3) == "MRN0012345"


def test_cart_without_id_is_sent_unbound() -> None:
    r = reading(
        DeviceClass.ECG, m("ecg_heart_rate", "72", "/min"), source_patient=PatientInfo(family_name="X")
    )
    _, parsed = build(r)
    assert parsed.pid.text(3).startswith(f"TMP-{CUFF}@{CUFF}-")
    assert parsed.pid[31] == "Y"


def test_late_associated_note_after_obr() -> None:
    _, parsed = build(bp_reading(), patient=JANE, late_associated=True)
    assert parsed.names[:5] == ["MSH", "PID", "PV1", "OBR", "NTE"]
    (note,) = parsed.nte_after(parsed.obr)
    assert note.fields[1:] == ["1", "L", "late-associated: held until patient was set", "RE^Remark^HL70364"]
    # the reading-level flag has the same effect
    _, parsed = build(bp_reading(flags=(ReadingFlag.LATE_ASSOCIATED,)), patient=JANE)
    assert len(parsed.nte_after(parsed.obr)) == 1
    _, parsed = build(bp_reading(), patient=JANE)
    assert parsed.nte_after(parsed.obr) == []


def test_v251_profile() -> None:
    profile = MessageProfile(**{**PROFILE.__dict__, "version": "2.5.1"})
    _, parsed = build(bp_reading(), profile, patient=JANE)
    assert parsed.msh[12] == "2.5.1"
    clock = parsed.obx_by_code("67975")
    assert clock[2] == "TS"  # 2.5.1 table 0125 has no DTM
    sys_ = parsed.obx_by_code("150021")
    assert sys_[20] == ""  # no OBX-20 before 2.6: the site goes to a note
    assert [n.text(3) for n in parsed.nte_after(sys_)] == ["Observation site: LA Left arm HL70163"]
    with pytest.raises(AssertionError, match="MSH-12"):
        validate_oru(build_oru(bp_reading(), profile, control_id="X1", created_at=CREATED), version="2.6")


def test_loinc_primary_and_mdc_only() -> None:
    loinc = MessageProfile(**{**PROFILE.__dict__, "code_system": "loinc"})
    _, parsed = build(bp_reading(), loinc)
    assert parsed.obx_by_code("8480-6")[3] == (
        "8480-6^Non-invasive systolic blood pressure^LN^150021^MDC_PRESS_BLD_NONINV_SYS^MDC"
    )
    mdc = MessageProfile(**{**PROFILE.__dict__, "code_system": "mdc"})
    _, parsed = build(bp_reading(), mdc)
    assert parsed.obx_by_code("150021")[3] == "150021^MDC_PRESS_BLD_NONINV_SYS^MDC"


def test_hierarchy_rows_off_puts_identity_on_every_row() -> None:
    flat = MessageProfile(**{**PROFILE.__dict__, "hierarchy_rows": False})
    _, parsed = build(bp_reading(), flat)
    assert [o[4] for o in parsed.obx] == ["1.0.0.1", "1.0.0.2", "1.0.0.3", "1.0.0.4", "1.0.0.5"]
    assert {o[18] for o in parsed.obx} == {f"{CUFF}^^{CUFF}^EUI-64"}
    assert [o[1] for o in parsed.obx] == ["1", "2", "3", "4", "5"]


def test_every_text_leaf_is_escaped() -> None:
    nasty = PatientIdentity(mrn="A|B^C", family="Smith^Jones|X", given="Ann~Marie & \\Co\r\nLine2")
    profile = MessageProfile(**{**PROFILE.__dict__, "location": "ROOM|1^BED~2", "facility": "F|A\\C"})
    r = reading(
        DeviceClass.BLOOD_PRESSURE,
        m("bp_systolic", "120", "mm[Hg]"),
        device=DeviceIdentity(id="x", serial_number="SN^1|2", model="M&M"),
        statements=(),
    )
    raw, parsed = build(r, profile, patient=nasty)
    assert parsed.pid.text(3) == "A|B^C"
    assert parsed.pid.text(5, 1) == "Smith^Jones|X"
    assert parsed.pid.text(5, 2) == "Ann~Marie & \\Co Line2"  # line breaks in names become spaces
    assert parsed.pv1[3] == "ROOM\\F\\1^BED\\R\\2"
    assert parsed.msh[4] == "F\\F\\A\\E\\C"
    assert parsed.obx[0][18] == f"SN\\S\\1\\F\\2^M_M^{GATEWAY}^EUI-64"  # EI-2 (IS): plain
    assert raw.count(b"\r") == len(parsed.segments)


def test_unicode_line_separators_and_c1_controls_never_go_raw() -> None:
    """Issue 10: U+0085, U+2028, U+2029 and C1 controls were sent raw in PID-5, PID-3 and OBX-18."""
    patient = PatientIdentity(mrn="M\x851\u2028", family="Doe\u2028Smith", given="Ann\x85Marie\x9b")
    r = reading(
        DeviceClass.BLOOD_PRESSURE,
        m("bp_systolic", "120", "mm[Hg]"),
        # DeviceIdentity strips such characters itself (issue 12 item 6); model_construct bypasses that so
        # the builder's own defence is what is tested here
        device=DeviceIdentity.model_construct(id="x", serial_number="SN\u20291\x80", model="M\x85"),
    )
    raw, parsed = build(r, patient=patient)
    text = raw.decode("utf-8")
    assert not {"\x85", "\u2028", "\u2029"} & set(text)
    assert not any(0x80 <= ord(c) <= 0x9F for c in text)
    assert parsed.pid.text(3) == "M\x851\u2028"  # identifiers: escaped, exact on receipt
    assert parsed.pid.text(5, 1) == "Doe Smith"  # names: line breaks become spaces
    assert parsed.pid.text(5, 2) == "Ann Marie\x9b"
    assert parsed.obx[0].text(18, 1) == "SN\u20291\x80"
    assert parsed.obx[0][18].startswith("SN\\XE280A9\\1\\XC280\\^M_^")


def test_non_ascii_sets_msh18_and_utf8() -> None:
    patient = PatientIdentity(mrn="M1", family="Müller", given="Zoë")
    raw, parsed = build(bp_reading(), patient=patient)
    assert parsed.msh[18] == "UNICODE UTF-8"
    assert "Müller^Zoë".encode() in raw
    assert parsed.pid.text(5, 1) == "Müller"


def test_values_without_number_are_not_sent_and_flags_map() -> None:
    r = reading(
        DeviceClass.PULSE_OXIMETER,
        m("spo2", "95", "%", flags=(Flag.QUESTIONABLE,)),
        m("pulse_rate_oximeter", None, "/min", absent_reason="sensor off"),
        # the model refuses NaN; the builder still defends itself if one slips through model_construct
        Measurement.model_construct(metric="perfusion_index", value=Decimal("NaN"), unit="%", flags=()),
        m("pvi", "12", "%", flags=(Flag.INVALID, Flag.ALARM_ACTIVE)),
    )
    _, parsed = build(r)
    assert parsed.codes() == ["528388", "150456", "PVI"]  # pulse rate: no value; PI: NaN
    spo2 = parsed.obx_by_code("150456")
    assert (spo2[8], spo2[11]) == ("QUES", "R")
    pvi = parsed.obx_by_code("PVI")
    assert (pvi[8], pvi[11]) == ("INV~ALACT", "X")
    assert b"NaN" not in build_oru(r, PROFILE, control_id="C1", created_at=CREATED)


def test_unreportable_metric_is_not_sent() -> None:
    r = reading(
        DeviceClass.BLOOD_PRESSURE, m("bp_cuff_pressure", "180", "mm[Hg]"), m("bp_systolic", "120", "mm[Hg]")
    )
    _, parsed = build(r)
    assert parsed.codes() == ["528391", "150021"]


def test_reading_with_nothing_to_send_is_refused() -> None:
    r = reading(
        DeviceClass.BLOOD_PRESSURE,
        m("bp_cuff_pressure", "180", "mm[Hg]"),
        m("bp_systolic", None, "mm[Hg]"),
        device_time=T0,
    )
    with pytest.raises(MessageBuildError, match="no value, statement or attachment"):
        build_oru(r, PROFILE, control_id="C1", created_at=CREATED)


def test_test_data_never_with_processing_id_p() -> None:
    r = reading(DeviceClass.PULSE_OXIMETER, m("spo2", "95", "%", flags=(Flag.DEMO,)))
    with pytest.raises(MessageBuildError, match="processing id P"):
        build_oru(r, PROFILE, control_id="C1", created_at=CREATED)
    debug = MessageProfile(**{**PROFILE.__dict__, "processing_id": "D"})
    _, parsed = build(r, debug)
    assert parsed.msh[11] == "D"
    assert parsed.obx_by_code("150456")[8] == "DEMO"


def test_local_time_zone_output() -> None:
    berlin = MessageProfile(**{**PROFILE.__dict__, "tz": ZoneInfo("Europe/Berlin")})
    _, parsed = build(bp_reading(), berlin)
    assert parsed.msh[7] == "20250314163012+0100"
    assert parsed.obr[7] == "20250314162958+0100"
    assert (
        format_dtm(datetime(2025, 7, 1, 12, 0, tzinfo=UTC), ZoneInfo("America/New_York"))
        == "20250701080000-0400"
    )


def test_filler_order_is_stable_per_reading_and_unique_between_readings() -> None:
    a = build(bp_reading(), control_id="C1")[1].obr[3]
    again = build(bp_reading(), control_id="C2")[1].obr[3]
    other_device = build(bp_reading(device=DeviceIdentity(id="dev2", eui64="00091FFFFE654321")))[1].obr[3]
    same_second = build(bp_reading(observed_at=T0 + timedelta(milliseconds=300)))[1].obr[3]
    assert a == again
    assert len({a, other_device, same_second}) == 3


def test_new_control_id() -> None:
    ids = {new_control_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[0-9A-F]{20}", i) for i in ids)


@pytest.mark.parametrize("control_id", ["", "x" * 21, "has space", "a|b"])
def test_bad_control_id(control_id: str) -> None:
    with pytest.raises(MessageBuildError, match="control id"):
        build_oru(bp_reading(), PROFILE, control_id=control_id, created_at=CREATED)


def test_naive_created_at_and_unknown_unit() -> None:
    with pytest.raises(MessageBuildError, match="timezone-aware"):
        build_oru(bp_reading(), PROFILE, control_id="C1", created_at=datetime(2025, 1, 1))
    r = reading(DeviceClass.SCALE, m("body_weight", "70", "stone"))
    with pytest.raises(MessageBuildError, match="stone"):
        build_oru(r, PROFILE, control_id="C1", created_at=CREATED)
    # known aliases are normalised to their UCUM spelling
    _, parsed = build(reading(DeviceClass.BLOOD_PRESSURE, m("bp_systolic", "120", "mmHg")))
    assert parsed.obx_by_code("150021").text(6, 4) == "mm[Hg]"


def test_bad_patient_demographics_are_left_out() -> None:
    patient = PatientIdentity(mrn="M1", birth_date="03/02/1961", sex="female?")
    _, parsed = build(bp_reading(), patient=patient)
    assert (parsed.pid[5], parsed.pid[7], parsed.pid[8]) == ("^^^^^^U", "", "F")
    patient = PatientIdentity(mrn="M1", sex="X")
    assert build(bp_reading(), patient=patient)[1].pid[8] == ""
    with pytest.raises(MessageBuildError, match="empty MRN"):
        build_oru(
            bp_reading(), PROFILE, control_id="C1", created_at=CREATED, patient=PatientIdentity(mrn=" ")
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gateway_eui64": "0a1b"}, "EUI-64"),
        ({"processing_id": "X"}, "processing id"),
        ({"accept_ack_type": "XX"}, "accept_ack_type"),
        ({"preferred_units": {"kg": "cm"}}, "unit preference"),
        ({"preferred_units": {"kg": "stone"}}, "unit preference"),
        ({"patient_class": "Z"}, "patient class"),
    ],
)
def test_profile_is_validated(change: dict[str, Any], message: str) -> None:
    with pytest.raises(MessageBuildError, match=message):
        MessageProfile(**{**PROFILE.__dict__, **change})


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"location": "A VERY LONG POINT OF CARE^EXAM 3"}, "location component 1 (point of care)"),
        ({"location": "CLINIC^ROOM^BED^A_VERY_LONG_FACILITY_NAME&2.999.1&ISO"}, "location component 4"),
        ({"location": "CLINIC^EXAM\r\n\x00\x01"}, "location component 2 (room)"),  # escaping counts
        ({"facility": "A VERY LONG FACILITY NAME"}, "facility"),
        ({"sending_application": "VITALS_AGENT_WITH_A_LONG_NAME"}, "sending_application"),
        ({"assigning_authority": "A_VERY_LONG_AUTHORITY_NAME&2.999.1&ISO"}, "assigning_authority"),
    ],
)
def test_site_values_too_long_for_hl7_are_refused_up_front(change: dict[str, str], what: str) -> None:
    with pytest.raises(MessageBuildError, match=re.escape(what) + ".*longer than 20"):
        MessageProfile(**{**PROFILE.__dict__, **change})
    # a long description (PL-9, ST) is fine
    profile = MessageProfile(
        **{**PROFILE.__dict__, "location": "CLINIC^EXAM 3^^^^^^^Cardiology exam room 3, 2nd floor"}
    )
    assert build(bp_reading(), profile)[1].pv1.text(3, 9) == "Cardiology exam room 3, 2nd floor"


def test_long_model_name_is_cut_to_the_namespace_length() -> None:
    device = DeviceIdentity(id="x", serial_number="SN1", model="IntelliVue MP30 Patient Monitor")
    _, parsed = build(reading(DeviceClass.PULSE_OXIMETER, m("spo2", "97", "%"), device=device))
    assert parsed.obx[0][18] == f"SN1^IntelliVue MP30 Pati^{GATEWAY}^EUI-64"  # EI-2 is an IS (20)


def test_message_profile_from_config() -> None:
    config = parse_config(
        {
            "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "timezone": "Europe/Berlin"},
            "ehr": {
                "receiving_application": "EHR",
                "processing_id": "D",
                "accept_ack_type": "NE",
                "application_ack_type": "AL",
                "hl7_version": "2.5.1",
                "code_system": "loinc",
                "preferred_units": {"kg": "[lb_av]", "Cel": "[degF]"},
                "hierarchy_rows": False,
            },
            "patient": {"assigning_authority": "EXCLINIC&2.999.1&ISO"},
        }
    )
    profile = message_profile(config, "0a:1b:2c:ff:fe:3d:4e:5f")
    assert profile.gateway_eui64 == GATEWAY
    assert (profile.facility, profile.location, profile.receiving_application) == (
        "EXCLINIC",
        "CLINIC^ROOM12",
        "EHR",
    )
    assert (profile.processing_id, profile.accept_ack_type, profile.application_ack_type) == ("D", "NE", "AL")
    assert (profile.version, profile.code_system, profile.hierarchy_rows) == ("2.5.1", "loinc", False)
    assert dict(profile.preferred_units) == {"kg": "[lb_av]", "Cel": "[degF]"}
    assert profile.assigning_authority == "EXCLINIC&2.999.1&ISO"
    assert profile.tz == ZoneInfo("Europe/Berlin")
    raw = build_oru(bp_reading(), profile, control_id="C1", created_at=CREATED)
    parsed = validate_oru(raw, version="2.5.1", accept_ack_type="NE", application_ack_type="AL")
    assert parsed.pid[3].endswith("^^^EXCLINIC&2.999.1&ISO^PI")
    defaults = message_profile(parse_config({"agent": {"facility": "F"}}), GATEWAY)
    assert (defaults.version, defaults.code_system, defaults.hierarchy_rows, defaults.tz) == (
        "2.6",
        "mdc+loinc",
        True,
        UTC,
    )


def test_message_profile_takes_every_ehr_message_key() -> None:
    """Each [ehr] key named like a MessageProfile field is passed on by name (a new one is not forgotten),
    and a value set in the config is the one the profile carries."""
    shared = set(EhrConfig.model_fields) & {f.name for f in dataclasses.fields(MessageProfile)}
    assert shared - {"preferred_units"} == set(EHR_MESSAGE_KEYS)
    ehr = {
        "sending_application": "SENDER",
        "receiving_application": "EHR",
        "receiving_facility": "HOSP",
        "processing_id": "T",
        "accept_ack_type": "NE",
        "application_ack_type": "ER",
        "code_system": "mdc",
        "hierarchy_rows": False,
        "charset": "8859/1",
        "unrepresentable": "marker",
        "marker": "#",
        "max_message_bytes": 99999,
        "oversize": "dead-letter",
    }
    assert set(ehr) == set(EHR_MESSAGE_KEYS)
    assert all(ehr[name] != EhrConfig.model_fields[name].default for name in ehr)
    profile = message_profile(parse_config({"agent": {"facility": "F"}, "ehr": ehr}), GATEWAY)
    assert {name: getattr(profile, name) for name in ehr} == ehr


@pytest.mark.parametrize(
    ("units", "message"),
    [
        ({"kg": "stone"}, "not a known UCUM unit"),
        ({"kg": "cm"}, "cannot convert kg to cm"),
        ({"mmHg": "kPa"}, "mmHg"),
    ],
)
def test_preferred_units_config_errors(units: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"agent": {"facility": "F"}, "ehr": {"preferred_units": units}})
    assert any(key == "ehr.preferred_units" and message in text for key, text in info.value.problems), (
        info.value.problems
    )


_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)  # utf-8 excludes surrogates


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mrn=_TEXT.filter(lambda s: s.strip() != ""),
    family=_TEXT,
    given_name=_TEXT,
    location=_TEXT,
    serial=_TEXT.filter(bool),
    statement=_TEXT,
)
def test_random_text_always_gives_a_valid_message(
    mrn: str, family: str, given_name: str, location: str, serial: str, statement: str
) -> None:
    try:
        profile = MessageProfile(**{**PROFILE.__dict__, "location": location})
    except MessageBuildError as exc:  # a site value too long for HL7 is refused up front, never sent
        assert "longer than 20 characters" in str(exc)
        assume(False)
    device = DeviceIdentity(id="cart", serial_number=serial)  # device text is sanitised by the model
    assume(device.serial_number is not None)
    r = reading(DeviceClass.ECG, m("ecg_heart_rate", "72", "/min"), device=device, statements=(statement,))
    patient = PatientIdentity(mrn=mrn, family=family or None, given=given_name or None)
    raw = build_oru(r, profile, control_id="P1", created_at=CREATED, patient=patient)
    parsed = validate_oru(raw)
    assert parsed.pid.text(3) == mrn
    if family or given_name:
        assert parsed.pid.text(5, 1) == re.sub(r"[\r\n\x85\u2028\u2029]+", " ", family).strip()
        assert parsed.pid.text(5, 2) == re.sub(r"[\r\n\x85\u2028\u2029]+", " ", given_name).strip()
    assert parsed.obx[0].text(18, 1) == device_text(serial)
    assert parsed.value("147842") == "72"
    lines = (device_text_lines(statement) or "").split("\n") if device_text_lines(statement) else []
    assert [s.text(5) for s in parsed.obx_all_by_code("MDC_ECG_INTERPRETATION")] == lines
