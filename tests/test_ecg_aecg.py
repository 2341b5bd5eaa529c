"""HL7 aECG decoder: whole readings (synthetic and public samples), the SCP/aECG cross-check, hardened
XML parsing (bombs, external entities, invalid XML) and property tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import m
from tests.test_ecg_fixtures import (
    BILLION_LAUGHS,
    EXTERNAL_ENTITY,
    FIXED_NOW,
    ctx,
    sample,
    synthetic_aecg,
)
from vitals_agent.drivers.ecg import aecg, scp
from vitals_agent.errors import DecodeError, UnsupportedError
from vitals_agent.models import (
    DeviceClass,
    DeviceIdentity,
    Dropped,
    PatientInfo,
    Reading,
    ReadingFlag,
)


def test_synthetic_whole_reading() -> None:
    data = synthetic_aecg()
    tz = ZoneInfo("Europe/Berlin")
    reading = aecg.decode(data, ctx(tz=tz))
    acquired = datetime(2026, 3, 11, 13, 45, 10, tzinfo=tz)
    assert reading == Reading(
        device=DeviceIdentity(id="cart-1", manufacturer="ACME", model="MAC55", firmware="1.2"),
        device_class=DeviceClass.ECG,
        measurements=(
            m("ecg_heart_rate", 75, "/min"),
            m("ecg_p_duration", 110, "ms"),
            m("ecg_pr_interval", 160, "ms"),
            m("ecg_qrs_duration", 92, "ms"),
            m("ecg_qt_interval", 400, "ms"),  # sent as 0.4 s
            m("ecg_qtc_interval", 447, "ms"),
            m("ecg_p_axis", 30, "deg"),
            m("ecg_qrs_axis", -15, "deg"),
            m("ecg_t_axis", 45, "deg"),
        ),
        observed_at=acquired,
        received_at=FIXED_NOW,
        device_time=acquired,
        flags=(ReadingFlag.STORED_RECORD,),
        statements=("Sinus rhythm", "Normal ECG"),
        source_patient=PatientInfo(
            mrn="MRN-42", family_name="Doe", given_name="Jane", birth_date="19800229", sex="F"
        ),
        extra={
            "measurement_level": "representative beat",
            "format": "aecg",
            "source_sha256": hashlib.sha256(data).hexdigest(),
            "source_bytes": str(len(data)),
        },
        raw=data,
    )


def test_time_zone_in_the_file_wins_over_the_configured_one() -> None:
    data = synthetic_aecg(effective="20260311134510.250-0500")
    reading = aecg.decode(data, ctx(tz=ZoneInfo("Asia/Tokyo")))
    assert reading.device_time is not None
    assert reading.device_time.isoformat() == "2026-03-11T13:45:10.250000-05:00"


def test_zero_where_impossible_and_unknown_units_are_dropped() -> None:
    data = synthetic_aecg(
        measurements=(
            ("MDC_ECG_TIME_PD_QTc", "0", "ms"),
            ("MDC_ECG_TIME_PD_PR", "160", "furlong"),
            ("MDC_ECG_ANGLE_QRS_FRONT", "0", "deg"),  # 0 degrees is a real axis
            ("MDC_ECG_HEART_RATE", "NaN", "bpm"),
        )
    )
    reading = aecg.decode(data, ctx())
    assert reading.measurements == (m("ecg_qrs_axis", 0, "deg"),)
    assert reading.dropped == (
        Dropped(metric="ecg_qtc_interval", reason="not computed (0)", raw="0"),
        Dropped(metric="ecg_pr_interval", reason="unknown unit 'furlong'", raw="160"),
        Dropped(metric="ecg_heart_rate", reason="not a number", raw="NaN"),
    )


def test_beat_level_fallback_and_lead_annotations_ignored() -> None:
    beat = b"""<?xml version="1.0"?>
<AnnotatedECG xmlns="urn:hl7-org:v3"><effectiveTime><center value="20260311"/></effectiveTime>
<component><series><subjectOf><annotationSet>
 <component><annotation><code code="MDC_ECG_TIME_PD_QT"/><value value="999" unit="ms"/>
   <support><supportingROI><component><boundary><code code="MDC_ECG_LEAD_V2"/></boundary></component>
   </supportingROI></support></annotation></component>
 <component><annotation><code code="MDC_ECG_BEAT"/>
   <component><annotation><code code="MDC_ECG_TIME_PD_QT"/><value value="420" unit="ms"/>
     </annotation></component>
   <component><annotation><code code="MDC_ECG_ANGLE_T_FRONT"/><value value="86" unit="deg"/>
     </annotation></component>
 </annotation></component>
 <component><annotation><code code="MDC_ECG_BEAT"/>
   <component><annotation><code code="MDC_ECG_TIME_PD_QT"/><value value="430" unit="ms"/>
     </annotation></component>
 </annotation></component>
</annotationSet></subjectOf></series></component></AnnotatedECG>"""
    decoded = aecg.parse(beat)
    assert decoded.values == {"ecg_qt_interval": Decimal(420), "ecg_t_axis": Decimal(86)}
    assert decoded.extra == {"measurement_level": "beat"}
    assert decoded.acquired == datetime(2026, 3, 11)


# ------------------------------------------------------------------------------------------- samples


def test_hl7_example_and_scp_sample_are_the_same_ecg() -> None:
    xml = aecg.decode(sample("hl7-aecg", "HL7_Example_aECG_2003-12.xml").read_bytes(), ctx())
    bin_ = scp.decode(sample("scp-ecg", "scpinfo_example.scp").read_bytes(), ctx())
    expected = (
        m("ecg_p_duration", 102, "ms"),
        m("ecg_pr_interval", 148, "ms"),
        m("ecg_qrs_duration", 120, "ms"),
        m("ecg_qt_interval", 420, "ms"),
        m("ecg_qtc_interval", 443, "ms"),
        m("ecg_p_axis", 44, "deg"),
        m("ecg_qrs_axis", -61, "deg"),
        m("ecg_t_axis", 86, "deg"),
    )
    assert xml.measurements == bin_.measurements == expected
    assert (
        xml.source_patient
        == bin_.source_patient
        == PatientInfo(mrn="SBJ-123", family_name="Clark", birth_date="19530508", sex="M")
    )
    assert xml.device_time == bin_.device_time == datetime(2002, 11, 22, 9, 10, tzinfo=ctx().tz)
    assert xml.device.model == bin_.device.model == "ELI250"
    assert xml.device == DeviceIdentity(
        id="cart-1", manufacturer="Mortara Instrument, Inc.", model="ELI250", firmware="5.3"
    )
    assert xml.extra["rhythm"] == "Sinus Rhythm"
    assert xml.raw == b""  # 500 KB file: not kept twice in memory


def test_liryc_mindray_sample() -> None:
    data = sample("hl7-aecg", "liryc_hl7aecg_example.xml").read_bytes()
    reading = aecg.decode(data, ctx())
    assert reading.measurements == (
        m("ecg_heart_rate", 57, "/min"),
        m("ecg_pr_interval", 192, "ms"),
        m("ecg_qrs_duration", 88, "ms"),
        m("ecg_qt_interval", 418, "ms"),
        m("ecg_p_axis", 60, "deg"),  # Mindray vendor codes via the alias table
        m("ecg_qrs_axis", 64, "deg"),
        m("ecg_t_axis", 11, "deg"),
    )
    assert reading.dropped == (Dropped(metric="ecg_qtc_interval", reason="not computed (0)", raw="0"),)
    assert reading.extra["vendor_MINDRAY_ECG_TIME_PD_QTcH"] == "413 ms"
    assert reading.statements == (
        "Rythme sinusal avec ESA",
        "--- Interprétation sans connaître le sexe/l'âge du patient ---",
        "ECG limite",
        "Diagnostic non confirmé.",
    )
    assert reading.source_patient == PatientInfo(mrn="25060897140", sex="U")
    assert reading.device == DeviceIdentity(
        id="cart-1",
        manufacturer="(C) Shenzhen Mindray Bio-Medical Electronics Co., Ltd. All rights reserved.",
        model="BeneHeart R12",
        serial_number="FN-3A045256",
        firmware="02.10.00",
    )
    assert reading.device_time == datetime(2025, 9, 23, 10, 35, 50, tzinfo=ctx().tz)


def test_fda_minimal_sample_without_annotations() -> None:
    data = sample("hl7-aecg", "fda_aecg-python_minimum_aecg.xml").read_bytes()
    reading = aecg.decode(data, ctx())
    assert reading.measurements == ()
    assert reading.statements == ()
    assert reading.source_patient == PatientInfo(mrn="SBJ-123")
    assert reading.device_time == datetime(2002, 11, 22, 9, 10, tzinfo=ctx().tz)


# ------------------------------------------------------------------------------------------- hostile XML


def test_billion_laughs_is_refused() -> None:
    with pytest.raises(DecodeError, match="refused"):
        aecg.parse(BILLION_LAUGHS)


def test_external_entity_is_refused() -> None:
    with pytest.raises(DecodeError, match="refused"):
        aecg.parse(EXTERNAL_ENTITY)


def test_invalid_xml() -> None:
    with pytest.raises(DecodeError, match="invalid aECG XML"):
        aecg.parse(synthetic_aecg()[:-40])


def test_not_an_aecg_root() -> None:
    with pytest.raises(UnsupportedError, match="not an HL7 aECG file"):
        aecg.parse(b"<restingecgdata/>")
    with pytest.raises(UnsupportedError, match="namespace"):
        aecg.parse(b'<AnnotatedECG xmlns="urn:other"/>')


def test_size_limit() -> None:
    with pytest.raises(DecodeError, match="file too large"):
        aecg.parse(synthetic_aecg(), max_bytes=100)


VALID = synthetic_aecg()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        aecg.parse(data)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=len(VALID) - 1), st.binary(max_size=8))
def test_truncated_or_spliced_files_raise_only_decode_errors(cut: int, junk: bytes) -> None:
    with contextlib.suppress(DecodeError):
        aecg.parse(VALID[:cut] + junk)


# ------------------------------------------------------- #12 item 2: levels merged, units not guessed

NO_UNIT = (
    "no unit: an HL7 PQ without a unit is dimensionless (unit '1'), not a duration; not guessed "
    "(a site whose carts mean ms sets unitless_interval_unit)"
)


def test_rhythm_level_measurements_fill_what_the_representative_beat_lacks() -> None:
    """A TraceMasterVue export: the representative beat has only the heart rate, the rhythm level the rest.
    Before: the first level with any value was taken whole, so RR, PR, QRS and QT were never sent."""
    data = synthetic_aecg(
        measurements=(("MDC_ECG_HEART_RATE", "41", "/min"), ("MDC_ECG_TIME_PD_QRS", "0", "ms")),
        rhythm_measurements=(
            ("MDC_ECG_HEART_RATE", "45", "/min"),  # the beat level comes first: 41 stays
            ("MDC_ECG_TIME_PD_RR", "1463", "ms"),
            ("MDC_ECG_TIME_PD_PR", "0.144", "s"),
            ("MDC_ECG_TIME_PD_QRS", "102", "ms"),  # dropped at the beat level (0): the rhythm value counts
            ("MDC_ECG_TIME_PD_QTcB", "466", "ms"),
        ),
    )
    decoded = aecg.parse(data)
    assert decoded.values == {
        "ecg_heart_rate": Decimal(41),
        "ecg_rr_interval": Decimal(1463),
        "ecg_pr_interval": Decimal(144),
        "ecg_qrs_duration": Decimal(102),
        "ecg_qtc_bazett": Decimal(466),
    }
    assert decoded.dropped == []
    assert decoded.extra["measurement_level"] == "representative beat + series"


def test_interval_values_without_a_unit_are_refused_unless_the_site_declares_one() -> None:
    data = synthetic_aecg(
        measurements=(("MDC_ECG_HEART_RATE", "41", "/min"),),
        rhythm_measurements=(
            ("MDC_ECG_TIME_PD_PR", "144", None),
            ("MDC_ECG_TIME_PD_QT", "564", ""),  # an empty unit attribute says no more
            ("MDC_ECG_TIME_PD_QTcB", "466", "ms"),
        ),
    )
    refused = aecg.decode(data, ctx())
    assert refused.values() == {"ecg_heart_rate": 41, "ecg_qtc_bazett": 466}
    assert refused.dropped == (
        Dropped(metric="ecg_pr_interval", reason=NO_UNIT, raw="144"),
        Dropped(metric="ecg_qt_interval", reason=NO_UNIT, raw="564"),
    )
    assert "unitless_interval_unit" not in refused.extra
    as_ms = aecg.decode(data, ctx(), unitless_interval_unit="ms")
    assert as_ms.values() == {
        "ecg_heart_rate": 41,
        "ecg_pr_interval": 144,
        "ecg_qt_interval": 564,
        "ecg_qtc_bazett": 466,
    }
    assert as_ms.extra["unitless_interval_unit"] == "ms (declared by the site)"
    in_seconds = synthetic_aecg(rhythm_measurements=(), measurements=(("MDC_ECG_TIME_PD_QT", "0.42", None),))
    assert aecg.decode(in_seconds, ctx(), unitless_interval_unit="s").values() == {"ecg_qt_interval": 420}
    with pytest.raises(ValueError, match="unitless_interval_unit"):
        aecg.parse(data, unitless_interval_unit="furlong")


def test_the_driver_option_reaches_the_decoder() -> None:
    from tests.test_ecg_fixtures import driver

    data = synthetic_aecg(measurements=(("MDC_ECG_TIME_PD_PR", "150", None),))
    plain = driver("aecg-xml").decode_file(data, ctx())  # type: ignore[attr-defined]
    declared = driver("aecg-xml", unitless_interval_unit="ms").decode_file(data, ctx())  # type: ignore[attr-defined]
    assert plain.values() == {} and declared.values() == {"ecg_pr_interval": 150}


async def test_decode_command_takes_the_option_without_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vitals-agent decode aecg-xml -o unitless_interval_unit=ms` (before: "option folder: Field required",
    as for any folder driver's option offline)."""
    from vitals_agent.cli import main

    path = tmp_path / "ecg.xml"
    path.write_bytes(synthetic_aecg(measurements=(("MDC_ECG_TIME_PD_PR", "150", None),)))
    assert await main(["decode", "aecg-xml", "-o", "unitless_interval_unit=ms", "--file", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["measurements"][0]["value"] == 150
    assert (
        await main(["decode", "aecg-xml", "-o", "unitless_interval_unit=furlong", "--file", str(path)]) == 1
    )
    assert "option unitless_interval_unit: Input should be 'ms' or 's'" in capsys.readouterr().err
