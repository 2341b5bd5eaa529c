"""Philips Sierra ECG XML decoder: 1.03 (UTF-8) and 1.04.x (UTF-16) whole readings, the three public
samples, vendor words ("Failed", "Indeterminate") as no value, unknown versions, hostile XML."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import datetime
from decimal import Decimal

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
    synthetic_philips_103,
    synthetic_philips_104,
)
from vitals_agent.drivers.ecg import philips
from vitals_agent.errors import DecodeError, UnsupportedError
from vitals_agent.models import (
    DeviceClass,
    DeviceIdentity,
    Dropped,
    PatientInfo,
    Reading,
    ReadingFlag,
)


def test_synthetic_104_utf16_whole_reading() -> None:
    data = synthetic_philips_104()
    assert data[:2] == b"\xff\xfe"  # UTF-16 LE with BOM, as the carts write it
    reading = philips.decode(data, ctx())
    acquired = datetime(2026, 3, 11, 13, 45, 9, tzinfo=ctx().tz)  # dataacquisition time, not reportinfo
    assert reading == Reading(
        device=DeviceIdentity(
            id="cart-1",
            manufacturer="Philips Medical Products",
            model="PageWriter TC50",
            serial_number="US00001",
            firmware="A.07.07.07",
        ),
        device_class=DeviceClass.ECG,
        measurements=(
            m("ecg_heart_rate", 64, "/min"),
            m("ecg_rr_interval", 938, "ms"),
            m("ecg_p_duration", 104, "ms"),
            m("ecg_pr_interval", 164, "ms"),
            m("ecg_qrs_duration", 102, "ms"),
            m("ecg_qt_interval", 399, "ms"),
            m("ecg_qtc_bazett", 412, "ms"),
            m("ecg_qtc_fridericia", 408, "ms"),
            m("ecg_p_axis", 27, "deg"),
            m("ecg_t_axis", 80, "deg"),
        ),
        observed_at=acquired,
        received_at=FIXED_NOW,
        device_time=acquired,
        flags=(ReadingFlag.STORED_RECORD,),
        dropped=(
            Dropped(metric="ecg_atrial_rate", reason="Indeterminate", raw="Indeterminate"),
            Dropped(metric="ecg_qrs_axis", reason="Failed", raw="Failed"),
        ),
        statements=("Sinus rhythm", "- OTHERWISE NORMAL ECG -", "Unconfirmed Diagnosis"),
        source_patient=PatientInfo(
            mrn="MRN-42", family_name="Doe", given_name="Jane", birth_date="19800229", sex="F"
        ),
        extra={
            "document_type": "PhilipsECG",
            "document_version": "1.04.01",
            "statement_1_code": "SR",
            "statement_1_reason": "normal P axis, V-rate 50-99",
            "model_number": "860315",
            "format": "philips-xml",
            "source_sha256": hashlib.sha256(data).hexdigest(),
            "source_bytes": str(len(data)),
        },
        raw=data,
    )


def test_synthetic_103_utf8() -> None:
    reading = philips.decode(synthetic_philips_103(), ctx())
    assert reading.measurements == (
        m("ecg_heart_rate", 41, "/min"),
        m("ecg_atrial_rate", 41, "/min"),
        m("ecg_pr_interval", 151, "ms"),
        m("ecg_qrs_duration", 135, "ms"),
        m("ecg_qt_interval", 476, "ms"),
        m("ecg_qtc_interval", 393, "ms"),  # 1.03 meanqtc: formula not stated
        m("ecg_p_axis", 66, "deg"),
        m("ecg_qrs_axis", -21, "deg"),
        m("ecg_t_axis", 59, "deg"),
    )
    assert reading.statements == ("Sinus bradycardia", "- ABNORMAL ECG -", "Unconfirmed diagnosis")
    assert reading.source_patient == PatientInfo(mrn="MRN-7", sex="M")
    assert reading.extra["patient_age"] == "50 y"


def test_104_in_utf8_also_works() -> None:
    reading = philips.decode(synthetic_philips_104("1.04", encoding="utf-8"), ctx())
    assert reading.values()["ecg_qtc_bazett"] == Decimal(412)


def test_unknown_version() -> None:
    with pytest.raises(UnsupportedError, match=r"Files of type PhilipsECG 2\.00 are unsupported"):
        philips.parse(synthetic_philips_104("2.00"))


def test_another_vendors_document_type_is_refused() -> None:
    """#12 item 8: a file in Philips' outer shape whose documenttype is not Philips' (MortaraECG) is refused,
    as pysierraecg's assert_version refuses it (tests/test_xml.py: "Files of type MortaraECG 1.03 are
    unsupported")."""
    data = synthetic_philips_104("1.04").decode("utf-16").replace("PhilipsECG", "MortaraECG").encode("utf-16")
    with pytest.raises(
        UnsupportedError, match=r"^Files of type MortaraECG 1\.04 are unsupported: documenttype"
    ):
        philips.parse(data)
    missing = (
        synthetic_philips_104("1.04").decode("utf-16").replace("<documenttype>PhilipsECG</documenttype>", "")
    )
    assert "document_type" not in philips.parse(missing.encode("utf-16")).extra  # names no other vendor: read
    reading = philips.decode(synthetic_philips_104("1.04"), ctx())
    assert (reading.extra["document_type"], reading.extra["document_version"]) == ("PhilipsECG", "1.04")


def test_hostile_xml_is_refused() -> None:
    with pytest.raises(DecodeError, match="refused"):
        philips.parse(BILLION_LAUGHS)
    with pytest.raises(DecodeError, match="refused"):
        philips.parse(EXTERNAL_ENTITY)
    with pytest.raises(DecodeError, match="invalid Philips XML"):
        philips.parse(synthetic_philips_104()[:-20])


# ------------------------------------------------------------------------------------------- samples


def test_sample_104_demo_patient() -> None:
    reading = philips.decode(sample("philips-xml", "3191723_ZZDEMOPTONLY_1-04_orig.xml").read_bytes(), ctx())
    assert reading.measurements == (
        m("ecg_heart_rate", 84, "/min"),
        m("ecg_atrial_rate", 77, "/min"),
        m("ecg_rr_interval", 714, "ms"),
        m("ecg_p_duration", 148, "ms"),
        m("ecg_pr_interval", 144, "ms"),
        m("ecg_qrs_duration", 84, "ms"),
        m("ecg_qt_interval", 352, "ms"),
        m("ecg_qtc_bazett", 417, "ms"),
        m("ecg_qtc_fridericia", 394, "ms"),
        m("ecg_p_axis", 81, "deg"),
        m("ecg_qrs_axis", 78, "deg"),
        m("ecg_t_axis", 67, "deg"),
    )
    assert reading.statements == (
        "SINUS RHYTHM",
        "PROBABLE LEFT VENTRICULAR HYPERTROPHY",
        "ANTERIOR ST ELEVATION, PROBABLY DUE TO LVH",
        "- ABNORMAL ECG -",
        "Preliminary",
    )
    assert reading.source_patient == PatientInfo(
        mrn="9999", family_name="ZZDEMOPTONLY", given_name="ADULT", birth_date="19500101", sex="M"
    )
    assert reading.device == DeviceIdentity(
        id="cart-1",
        manufacturer="Philips Medical Products",
        model="PageWriter Touch",
        serial_number="EKG1715",
        firmware="A.01.01.01",
    )
    assert reading.device_time == datetime(2010, 1, 19, 15, 19, 22, tzinfo=ctx().tz)
    assert reading.dropped == ()


def test_sample_10401_pagewriter_tc() -> None:
    reading = philips.decode(sample("philips-xml", "2020-5-18_15-48-11.xml").read_bytes(), ctx())
    assert reading.values() == {
        "ecg_heart_rate": Decimal(64),
        "ecg_atrial_rate": Decimal(64),
        "ecg_rr_interval": Decimal(938),
        "ecg_p_duration": Decimal(104),
        "ecg_pr_interval": Decimal(164),
        "ecg_qrs_duration": Decimal(102),
        "ecg_qt_interval": Decimal(399),
        "ecg_qtc_bazett": Decimal(412),
        "ecg_qtc_fridericia": Decimal(408),
        "ecg_p_axis": Decimal(27),
        "ecg_qrs_axis": Decimal(22),
        "ecg_t_axis": Decimal(80),
    }
    assert reading.statements == (
        "Sinus rhythm",
        "Abnormal R-wave progression, early transition",
        "- OTHERWISE NORMAL ECG -",
        "Unconfirmed Diagnosis",
    )
    assert reading.source_patient == PatientInfo(
        mrn="xxxxxx", family_name="xxxxxx", given_name="xxxxxx", birth_date="19510101", sex="U"
    )
    assert reading.device.serial_number == "US71621374"
    assert reading.device_time == datetime(2020, 5, 18, 15, 48, 11, tzinfo=ctx().tz)


def test_sample_103_heartstart_mrx() -> None:
    reading = philips.decode(sample("philips-xml", "129DYPRG.XML").read_bytes(), ctx())
    assert reading.measurements == (
        m("ecg_heart_rate", 41, "/min"),
        m("ecg_atrial_rate", 41, "/min"),
        m("ecg_pr_interval", 151, "ms"),
        m("ecg_qrs_duration", 135, "ms"),
        m("ecg_qt_interval", 476, "ms"),
        m("ecg_qtc_interval", 393, "ms"),
        m("ecg_p_axis", 66, "deg"),
        m("ecg_qrs_axis", -21, "deg"),
        m("ecg_t_axis", 59, "deg"),
    )
    assert reading.statements == (
        "Sinus bradycardia",
        "Nonspecific intraventricular conduction delay",
        "Inferior infarct, acute (LCx)",
        ">>> Acute MI <<<",
        "- ABNORMAL ECG -",
        "Unconfirmed diagnosis",
    )
    assert reading.source_patient == PatientInfo(mrn="1112010721168bdc", sex="M")
    assert reading.device.model == "HeartstartMRx"
    assert reading.device_time == datetime(2011, 12, 1, 7, 27, 34, tzinfo=ctx().tz)


VALID = synthetic_philips_104()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        philips.parse(data)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=len(VALID) - 1), st.binary(max_size=8))
def test_truncated_or_spliced_files_raise_only_decode_errors(cut: int, junk: bytes) -> None:
    with contextlib.suppress(DecodeError):
        philips.parse(VALID[:cut] + junk)


def _with_waveforms(data: bytes, leads: list[list[int]]) -> bytes:
    import base64

    from tests.test_ecg_xli import xli_encode

    text = data.decode("utf-16")
    block = base64.b64encode(b"".join(xli_encode(lead) for lead in leads)).decode()
    waves = (
        '<waveforms><parsedwaveforms dataencoding="Base64" compression="XLI" numberofleads="12" '
        'leadlabels="I II III aVR aVL aVF V1 V2 V3 V4 V5 V6" samplespersecond="500" resolution="5">'
        f"{block}</parsedwaveforms></waveforms>"
    )
    return text.replace("</restingecgdata>", waves + "</restingecgdata>").encode("utf-16")


def test_attach_report_renders_the_xli_waveforms_or_says_why_not() -> None:
    from tests.test_ecg_fixtures import driver

    one = [round(200 * ((k % 250) < 10)) for k in range(2500)]  # a 2 Hz "beat" in lead I
    zero = [0] * 2500
    data = _with_waveforms(synthetic_philips_104("1.04"), [one, one] + [zero] * 10)
    drv = driver("philips-xml", attach_report=True)
    reading = drv.decode_file(data, ctx())  # type: ignore[attr-defined]
    assert [a.name for a in reading.attachments] == ["ecg_report.pdf"]
    leads = philips.lead_samples(philips.document(data))
    assert leads["III"] == [0] * 2500  # II - I - 0
    assert leads["aVR"][:10] == [-200] * 10  # -(I + II) / 2
    plain = drv.decode_file(synthetic_philips_104("1.04"), ctx())  # type: ignore[attr-defined]
    assert plain.attachments == () and plain.extra["report_skipped"] == "Philips XML: no parsedwaveforms"
