"""The ORU builder's clinician review (issue #16): OBX-11 R/F/C/W, OBX-16 and OBR-10, manual entries and
their qualifiers, extra OBR groups, series means. Every message goes through the oracle (hl7apy STRICT +
PCD-01 checks) and the assertions read the real fields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracle import ParsedOru, Segment, validate_oru
from vitals_agent.hl7.oru import (
    MessageBuildError,
    MessageProfile,
    PatientIdentity,
    ResultReview,
    build_oru,
)
from vitals_agent.models import (
    Clinician,
    DeviceClass,
    DeviceIdentity,
    Flag,
    Measurement,
    Qualifier,
    Reading,
    Series,
)

GATEWAY = "0A1B2CFFFE3D4E5F"
CUFF = "00091FFFFE123456"
T0 = datetime(2025, 3, 14, 15, 29, 58, tzinfo=UTC)
CREATED = datetime(2025, 3, 14, 15, 30, 12, tzinfo=UTC)
PROFILE = MessageProfile(
    facility="EXAMPLE_CLINIC",
    location="CARDIO CLINIC^EXAM 3^^EXHOSP&2.999.1&ISO",
    gateway_eui64=GATEWAY,
    assigning_authority="EXHOSP&2.999.1&ISO",
)
JANE = PatientIdentity(mrn="MRN0012345", family="DOE", given="JANE")
ANNA = Clinician(id="4711", family="NURSE", given="ANNA")


def m(metric: str, value: str | None, unit: str, **kw: Any) -> Measurement:
    return Measurement(metric=metric, value=None if value is None else Decimal(value), unit=unit, **kw)


def bp(**kw: Any) -> Reading:
    kw.setdefault("observed_at", T0)
    return Reading(
        device=DeviceIdentity(id="cuff", eui64=CUFF),
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=(
            m("bp_systolic", "128", "mm[Hg]"),
            m("bp_diastolic", "84", "mm[Hg]"),
            m("bp_mean", "99", "mm[Hg]"),
            m("pulse_rate", "67", "/min"),
        ),
        received_at=kw["observed_at"] + timedelta(seconds=4),
        device_time=datetime(2025, 3, 14, 15, 29, 50, tzinfo=UTC),
        **kw,
    )


def manual(*measurements: Measurement, qualifiers: tuple[Qualifier, ...] = (), **kw: Any) -> Reading:
    return Reading(
        device=DeviceIdentity(id="manual"),
        device_class=DeviceClass.MANUAL,
        measurements=measurements,
        observed_at=kw.pop("observed_at", T0),
        received_at=T0,
        qualifiers=qualifiers,
        **kw,
    )


def build(reading: Reading, profile: MessageProfile = PROFILE, **kw: Any) -> ParsedOru:
    kw.setdefault("control_id", "CTRL0001")
    kw.setdefault("created_at", CREATED)
    kw.setdefault("patient", JANE)
    return validate_oru(build_oru(reading, profile, **kw), version=profile.version)


def value_rows(parsed: ParsedOru) -> list[Segment]:
    return [s for s in parsed.obx if not s[4].endswith(".0")]


def ids(parsed: ParsedOru) -> list[tuple[str, str]]:
    """(OBX-3, OBX-4) of every row: what the EHR matches an update on."""
    return [(s[3], s[4]) for s in parsed.obx]


def test_default_is_raw_device_data_without_a_clinician() -> None:
    parsed = build(bp())
    assert {s[11] for s in value_rows(parsed)} == {"R"}
    assert all(not s[16] for s in parsed.obx)
    assert not parsed.obr[10]


def test_validated_rows_carry_f_and_the_clinician_on_every_value_row() -> None:
    parsed = build(bp(), review=ResultReview(status="F", observer=ANNA, collector=ANNA))
    rows = value_rows(parsed)
    assert len(rows) == 5  # systolic, diastolic, mean, pulse, device clock
    for row in rows:
        assert row[11] == "F"
        assert row[16] == "4711^NURSE^ANNA"
    mds = parsed.obx[0]
    assert (mds[4], mds[11], mds[16]) == ("1.0.0.0", "X", "")  # device rows stay X, no observer
    assert parsed.obr[10] == "4711^NURSE^ANNA"


def test_f_without_a_clinician_is_refused() -> None:
    with pytest.raises(MessageBuildError, match="OBX-16"):
        ResultReview(status="F")
    with pytest.raises(MessageBuildError, match="OBX-16"):
        ResultReview(status="C", corrected=frozenset({"bp_systolic"}))
    with pytest.raises(MessageBuildError, match="R F C W"):
        ResultReview(status="D")  # type: ignore[arg-type]


def test_final_message_keeps_the_order_numbers_and_observation_ids_of_the_raw_one() -> None:
    raw = build(bp(), control_id="FIRST01")
    final = build(bp(), control_id="SECOND01", review=ResultReview(status="F", observer=ANNA))
    assert raw.control_id != final.control_id
    assert (final.obr[2], final.obr[3]) == (raw.obr[2], raw.obr[3])
    assert ids(final) == ids(raw)


def test_correction_marks_only_the_corrected_rows_c() -> None:
    corrected = bp().model_copy(
        update={"measurements": (m("bp_systolic", "132", "mm[Hg]"), *bp().measurements[1:])}
    )
    review = ResultReview(status="C", observer=ANNA, corrected=frozenset({"bp_systolic"}), unchanged="F")
    parsed = build(corrected, review=review)
    systolic = parsed.obx_by_code("150021")
    assert (systolic[5], systolic[11], systolic[16]) == ("132", "C", "4711^NURSE^ANNA")
    others = [s for s in value_rows(parsed) if s is not systolic]
    assert {s[11] for s in others} == {"F"}
    assert ids(parsed) == ids(build(bp()))
    assert parsed.obr[3] == build(bp()).obr[3]


def test_wrong_patient_marks_every_value_row_w_for_the_same_chart() -> None:
    first = build(bp())
    wrong = build(bp(), control_id="WRONG01", review=ResultReview(status="W"))
    assert {s[11] for s in value_rows(wrong)} == {"W"}
    assert wrong.pid[3] == first.pid[3] and wrong.obr[3] == first.obr[3]
    assert ids(wrong) == ids(first)


def test_a_refile_to_another_chart_gets_its_own_order_number() -> None:
    first = build(bp())
    refiled = build(bp(), review=ResultReview(order_key="refile:1"))
    assert refiled.obr[3] != first.obr[3]
    assert ids(refiled) == ids(first)


def test_unavailable_values_stay_x_and_carry_no_observer() -> None:
    reading = bp().model_copy(
        update={
            "measurements": (
                m("bp_systolic", "128", "mm[Hg]"),
                m("bp_diastolic", "84", "mm[Hg]", flags=(Flag.INVALID,)),
            )
        }
    )
    parsed = build(reading, review=ResultReview(status="F", observer=ANNA))
    dia = parsed.obx_by_code("150022")
    assert (dia[11], dia[16]) == ("X", "")
    assert parsed.obx_by_code("150021")[11] == "F"


def test_manual_resp_rate_and_pain_score() -> None:
    entry = manual(
        m("respiratory_rate", "16", "/min", method="MMEAS"), m("pain_score", "3", "{score}", method="MMEAS")
    )
    parsed = build(entry, review=ResultReview(status="F", observer=ANNA, collector=ANNA))
    assert [s[4] for s in parsed.obx] == ["1.0.0.1", "1.0.0.2"]  # no device row for a hand entry
    resp = parsed.obx_by_code("9279-1")
    assert resp.components(3) == ["151562", "MDC_RESP_RATE", "MDC", "9279-1", "Respiration rate", "LN"]
    assert resp[5] == "16"
    assert resp.components(6) == ["264928", "MDC_DIM_RESP_PER_MIN", "MDC", "/min", "/min", "UCUM"]
    pain = parsed.obx_by_code("72514-3")
    assert pain.text(3, 3) == "99VITALS" and pain.text(3, 6) == "LN"  # no MDC term: local, LOINC alternate
    assert pain[5] == "3"
    assert pain.text(6, 4) == "{score}"
    for row in (resp, pain):
        assert row.components(17) == ["MMEAS", "manual-measurement", "MDC"]
        assert (row[11], row[16], row[18]) == ("F", "4711^NURSE^ANNA", "")


def test_manual_codes_with_loinc_first_and_in_2_5_1() -> None:
    entry = manual(m("respiratory_rate", "16", "/min", method="MMEAS"), m("pain_score", "3", "{score}"))
    review = ResultReview(status="F", observer=ANNA)
    loinc_first = MessageProfile(**{**PROFILE.__dict__, "code_system": "loinc"})
    parsed = build(entry, loinc_first, review=review)
    assert parsed.obx[0].text(3, 1) == "9279-1" and parsed.obx[1].text(3, 1) == "72514-3"
    old = MessageProfile(**{**PROFILE.__dict__, "version": "2.5.1"})
    q = (Qualifier(key="bp_position", answer="sitting"),)
    parsed = build(manual(m("pain_score", "0", "{score}"), qualifiers=q), old, review=review)
    assert parsed.obx_by_code("8361-8")[2] == "CE"  # 2.5.1 has no CWE


def test_qualifiers_are_coded_rows_in_table_order() -> None:
    entry = manual(
        m("respiratory_rate", "18", "/min", method="MMEAS"),
        m("oxygen_flow_rate", "2", "L/min", method="MMEAS"),
        qualifiers=(
            Qualifier(key="oxygen_delivery", answer="nasal_cannula"),
            Qualifier(key="bp_site", answer="left_arm"),
            Qualifier(key="bp_position", answer="sitting"),
        ),
    )
    parsed = build(entry, review=ResultReview(status="F", observer=ANNA))
    assert [s[4] for s in parsed.obx] == ["1.0.0.1", "1.0.0.4", "1.0.0.5", "1.0.0.6", "1.0.0.9"]
    position = parsed.obx_by_code("8361-8")
    assert (position[2], position.components(5)) == ("CWE", ["33586001", "Sitting position", "SCT"])
    assert parsed.obx_by_code("41904-4").components(5) == ["LA", "Left arm", "HL70163"]
    delivery = parsed.obx_by_code("O2_DELIVERY")
    assert delivery.components(5) == ["371907003", "Oxygen administration by nasal cannula", "SCT"]
    flow = parsed.obx_by_code("3151-8")
    assert flow[5] == "2" and flow.components(6)[:4] == ["265216", "MDC_DIM_X_L_PER_MIN", "MDC", "L/min"]


def test_manual_entries_ride_in_the_device_message_as_a_second_obr() -> None:
    entry = manual(m("respiratory_rate", "16", "/min", method="MMEAS"))
    parsed = build(bp(), also=(entry,), review=ResultReview(status="F", observer=ANNA))
    obrs = parsed.all("OBR")
    assert [o[1] for o in obrs] == ["1", "2"]
    assert obrs[0][3] != obrs[1][3]
    assert [s[1] for s in parsed.obx] == [str(i) for i in range(1, len(parsed.obx) + 1)]
    assert parsed.names.index("OBR", 4) < parsed.names.index("OBX", parsed.names.index("OBR", 4))
    assert parsed.obx_by_code("9279-1")[11] == "F"


def test_empty_manual_entry_is_refused() -> None:
    with pytest.raises(MessageBuildError, match="no value"):
        build(manual())


def test_a_series_mean_names_the_interval_and_is_calculated() -> None:
    times = (T0 + timedelta(seconds=60), T0 + timedelta(seconds=120))
    mean = bp(observed_at=times[-1]).model_copy(
        update={"series": Series(taken=3, averaged_at=times, discarded_first=True), "device_time": None}
    )
    last = build(bp(observed_at=times[-1]))
    parsed = build(mean)
    assert parsed.obr[7] == "20250314153058+0000" and parsed.obr[8] == "20250314153158+0000"
    assert parsed.obr[3] != last.obr[3]  # not the series' last reading
    for row in value_rows(parsed):
        assert row.components(17) == ["ACALC", "auto-calculation", "MDC"]
        assert row[14] == ""  # the values belong to the interval
    note = parsed.nte_after(parsed.obr)[0].text(3)
    assert note.startswith("mean of 2 readings taken at 20250314153058+0000, 20250314153158+0000")
    assert "first of the series' 3 readings" in note


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="|^~\\&\u2028\u2029"),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() and s == s.strip())


@settings(max_examples=60, deadline=None)
@given(ident=_text.filter(lambda s: len(s) <= 32), family=_text, given_name=_text)
def test_any_clinician_name_round_trips_through_obx_16(ident: str, family: str, given_name: str) -> None:
    clinician = Clinician(id=ident, family=family, given=given_name)
    parsed = build(bp(), review=ResultReview(status="F", observer=clinician))
    for row in value_rows(parsed):
        assert row.components(16)[:3] == [ident, family, given_name]


def test_clinician_text_with_delimiters_is_refused() -> None:
    with pytest.raises(ValueError, match=r"one of \| \^ ~"):
        Clinician(id="47|11")
    with pytest.raises(ValueError, match="longer than 60"):
        Clinician(id="1", family="X" * 61)
    with pytest.raises(ValueError, match="empty"):
        Clinician(id="  ")
