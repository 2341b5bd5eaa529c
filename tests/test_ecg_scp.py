"""SCP-ECG decoder: whole readings from a synthetic record and from the public sample, CRCs, sentinels,
bad records, and property tests (only DecodeError subclasses ever escape)."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kit import m
from tests.test_ecg_fixtures import (
    FIXED_NOW,
    crc_ccitt_bitwise,
    ctx,
    driver,
    refresh_crcs,
    sample,
    scp_record,
    scp_section1,
    scp_section7,
    synthetic_scp,
)
from vitals_agent.drivers.base import DecodeFailure
from vitals_agent.drivers.ecg import scp
from vitals_agent.errors import ChecksumError, DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import (
    Attachment,
    DeviceClass,
    DeviceIdentity,
    Dropped,
    PatientInfo,
    Reading,
    ReadingFlag,
)


def test_crc_ccitt_matches_the_standard_check_value() -> None:
    # CRC-16/CCITT-FALSE check value for "123456789" is 0x29B1 (both implementations).
    assert scp.crc_ccitt(b"123456789") == 0x29B1 == crc_ccitt_bitwise(b"123456789")


def test_synthetic_record_whole_reading() -> None:
    data = synthetic_scp()
    tz = ZoneInfo("America/Chicago")
    reading = scp.decode(data, ctx(tz=tz))
    acquired = datetime(2026, 3, 11, 13, 45, 10, tzinfo=tz)
    expected = Reading(
        device=DeviceIdentity(
            id="cart-1", manufacturer="ACME", model="MAC55", serial_number="SN123", firmware="1.2"
        ),
        device_class=DeviceClass.ECG,
        measurements=(
            m("ecg_heart_rate", 75, "/min"),
            m("ecg_atrial_rate", 75, "/min"),
            m("ecg_rr_interval", 800, "ms"),
            m("ecg_p_duration", 110, "ms"),
            m("ecg_pr_interval", 160, "ms"),
            m("ecg_qrs_duration", 92, "ms"),
            m("ecg_qt_interval", 400, "ms"),
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
            "scp_version": "2.0",
            "scp_device_id": "51",
            "scp_software": "scp-writer",
            "pp_interval_ms": "800",
            "pacemaker_spikes": "0",
            "qtc_formula": "unknown",
            "interpretation_status": "original",
            "lead_I_p_duration": "110",
            "lead_I_pr_interval": "160",
            "lead_I_qrs_duration": "92",
            "lead_I_qt_interval": "400",
            "lead_II_p_duration": "108",
            "lead_II_pr_interval": "158",
            "lead_II_qt_interval": "398",  # QRS 29999 = not computed: left out
            "format": "scp-ecg",
            "source_sha256": hashlib.sha256(data).hexdigest(),
            "source_bytes": str(len(data)),
        },
        raw=data,
    )
    assert reading == expected


def test_sentinels_never_become_numbers() -> None:
    data = scp_record(
        {
            1: scp_section1(),
            7: scp_section7(
                fiducials=(29999, 29999, 434, 554, 29999),
                axes=(999, -61, 999),
                rr=29999,
                vent_rate=0,
                atrial_rate=29999,
                qtc=29999,
                formula=1,
            ),
        }
    )
    reading = scp.decode(data, ctx())
    assert reading.measurements == (
        m("ecg_qrs_duration", 120, "ms"),
        m("ecg_qrs_axis", -61, "deg"),
    )
    assert {d.metric: d.reason for d in reading.dropped} == {
        "ecg_rr_interval": "not computed",
        "ecg_p_duration": "not computed (29999)",
        "ecg_pr_interval": "not computed (29999)",
        "ecg_qt_interval": "not computed (29999)",
        "ecg_p_axis": "undefined (999)",
        "ecg_t_axis": "undefined (999)",
        "ecg_heart_rate": "not given",
        "ecg_atrial_rate": "not given",
        "ecg_qtc_bazett": "not computed",  # formula 1 = Bazett
    }
    assert all(v not in (Decimal(29999), Decimal(999)) for v in reading.values().values())


def test_acquisition_time_zone_tag_34_is_used_when_present() -> None:
    section1 = scp_section1()[:-3] + struct.pack("<BHhH", 34, 5, 60, 0) + b"\x00" + b"\xff\x00\x00"
    reading = scp.decode(scp_record({1: section1, 7: scp_section7()}), ctx(tz=ZoneInfo("Asia/Tokyo")))
    assert reading.device_time == datetime(2026, 3, 11, 13, 45, 10, tzinfo=timezone(timedelta(hours=1)))


def test_public_sample_whole_reading() -> None:
    data = sample("scp-ecg", "scpinfo_example.scp").read_bytes()
    assert struct.unpack_from("<HI", data) == (1643, 34144)  # devices.md 9: record CRC and length
    assert scp.crc_ccitt(data[2:]) == 1643
    reading = scp.decode(data, ctx())
    acquired = datetime(2002, 11, 22, 9, 10, 0, tzinfo=ctx().tz)
    expected = Reading(
        device=DeviceIdentity(id="cart-1", manufacturer="ECGConversion", model="ELI250"),
        device_class=DeviceClass.ECG,
        measurements=(
            m("ecg_p_duration", 102, "ms"),
            m("ecg_pr_interval", 148, "ms"),
            m("ecg_qrs_duration", 120, "ms"),
            m("ecg_qt_interval", 420, "ms"),
            m("ecg_qtc_interval", 443, "ms"),
            m("ecg_p_axis", 44, "deg"),
            m("ecg_qrs_axis", -61, "deg"),
            m("ecg_t_axis", 86, "deg"),
        ),
        observed_at=acquired,
        received_at=FIXED_NOW,
        device_time=acquired,
        flags=(ReadingFlag.STORED_RECORD,),
        dropped=(
            Dropped(metric="ecg_rr_interval", reason="not computed", raw="29999"),
            Dropped(metric="ecg_heart_rate", reason="not given", raw="0"),
            Dropped(metric="ecg_atrial_rate", reason="not given", raw="29999"),
        ),
        source_patient=PatientInfo(mrn="SBJ-123", family_name="Clark", birth_date="19530508", sex="M"),
        extra={
            "scp_version": "2.0",
            "scp_device_id": "51",
            "scp_software": "ECGConversion",
            "pacemaker_spikes": "0",
            "qtc_formula": "unknown",
            "format": "scp-ecg",
            "source_sha256": hashlib.sha256(data).hexdigest(),
            "source_bytes": "34144",
        },
        raw=data,
    )
    assert reading == expected


def test_public_sample_section_crcs_all_valid() -> None:
    data = sample("scp-ecg", "scpinfo_example.scp").read_bytes()
    sections = scp._sections(data)
    assert sorted(sections) == [0, 1, 2, 3, 4, 5, 6, 7]
    stored = {sid: struct.unpack_from("<H", body)[0] for sid, body in sections.items()}
    # scpinfo prints these as signed 16-bit numbers (-19898 = 45638 ...)
    assert stored == {0: 21978, 1: 24375, 2: 22179, 3: 45638, 4: 4777, 5: 43502, 6: 61490, 7: 26535}


def test_driver_attaches_the_original_file_within_the_limit() -> None:
    data = synthetic_scp()
    drv = driver("scp-ecg", attach_original=True)
    reading = drv.decode_chunks([data[:100], data[100:]], ctx())[0]
    assert isinstance(reading, Reading)
    assert reading.attachments == (
        Attachment(name="ecg.scp", media_type="application/octet-stream", data=data),
    )
    small = driver("scp-ecg", attach_original=True, attach_max_bytes=100)
    reading = small.decode_chunks([data], ctx())[0]
    assert isinstance(reading, Reading)
    assert reading.attachments == ()
    assert reading.extra["attachment_skipped"] == f"original file {len(data)} bytes > attach_max_bytes 100"


# ------------------------------------------------------------------------------------------- bad records


def test_wrong_record_crc() -> None:
    data = bytearray(synthetic_scp())
    data[0] ^= 0xFF
    with pytest.raises(ChecksumError, match="record CRC mismatch"):
        scp.parse(bytes(data))


def test_wrong_section_crc_with_valid_record_crc() -> None:
    data = bytearray(synthetic_scp())
    offset = 6 + 16 + 10 * 12  # section 1 follows section 0 (12 pointers)
    data[offset + 20] ^= 0x01  # a byte inside section 1's body
    rest = bytes(data[2:])
    struct.pack_into("<H", data, 0, crc_ccitt_bitwise(rest))
    with pytest.raises(ChecksumError, match="section 1 CRC mismatch"):
        scp.parse(bytes(data))


def test_truncated_record() -> None:
    data = synthetic_scp()
    with pytest.raises(TruncatedError, match=f"truncated: {len(data) - 10} of {len(data)} bytes"):
        scp.parse(data[:-10])


def test_a_wrong_length_field_is_reported_as_non_compliant_not_truncated() -> None:
    """#12 item 7. A whole record whose length field is wrong (the Healforce Prince 180D writes a 16-bit
    length in bytes 5-6; healforcescpecg's reader notes "filesize is only 16 bits") was "truncated"; the
    section table shows the file is whole, so the report says which field is wrong."""
    good = synthetic_scp()
    data = bytearray(good)
    struct.pack_into("<I", data, 2, len(good) << 16)  # the length where a 16-bit writer puts it
    message = (
        f"non-compliant SCP-ECG record: its length field (bytes 3-6) says {len(good) << 16} bytes, but its "
        f"section table ends at byte {len(good)} of the {len(good)}-byte file"
    )
    with pytest.raises(DecodeError) as info:
        scp.parse(bytes(data))  # the stored CRC was computed with the right length: it no longer matches
    assert not isinstance(info.value, TruncatedError)
    assert str(info.value) == message + ", and the record CRC over those bytes does not match"
    struct.pack_into("<H", data, 0, crc_ccitt_bitwise(bytes(data[2:])))
    with pytest.raises(DecodeError) as info:
        scp.parse(bytes(data))
    assert str(info.value) == message
    # a truly cut file keeps the word: its section table points past the end
    cut = len(good) - 100
    with pytest.raises(
        TruncatedError, match=rf"truncated: {cut} of {len(good)} bytes; its section table reaches"
    ):
        scp.parse(good[:cut])


def test_section_table_errors_say_what_is_wrong() -> None:
    good = bytearray(synthetic_scp())
    # section 7's pointer aims at section 1's bytes
    table = 6 + 16
    length, index = struct.unpack_from("<II", good, table + 10 + 2)
    struct.pack_into("<II", good, table + 70 + 2, length, index)
    data = refresh_crcs(bytes(good))
    with pytest.raises(
        DecodeError, match=r"section table points to section 7 at byte \d+, which holds section ID 1"
    ):
        scp.parse(data)
    impossible = bytearray(synthetic_scp())
    struct.pack_into("<I", impossible, 2, 9)
    with pytest.raises(DecodeError, match=r"its length field says 9 bytes \(at least 22 are needed\)"):
        scp.parse(bytes(impossible))


def test_unknown_version() -> None:
    data = scp_record({1: scp_section1(), 7: scp_section7()}, version=99)
    with pytest.raises(UnsupportedError, match="version 99 is not supported"):
        scp.parse(data)


def test_too_large_is_refused_before_parsing() -> None:
    with pytest.raises(DecodeError, match="file too large"):
        scp.parse(b"\x00" * 1000, max_bytes=999)


def test_decode_chunks_reports_a_failure_instead_of_raising() -> None:
    out = driver("scp-ecg").decode_chunks([b"\x00" * 30], ctx())
    assert len(out) == 1 and isinstance(out[0], DecodeFailure)
    assert isinstance(out[0].error, DecodeError)


# ------------------------------------------------------------------------------------------- properties

VALID = synthetic_scp()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        scp.parse(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(VALID) - 1))
def test_every_truncation_is_a_decode_error(cut: int) -> None:
    with pytest.raises(DecodeError):
        scp.parse(VALID[:cut])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_past_the_crcs_raise_only_decode_errors(data: st.DataObject) -> None:
    record = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(6, len(record) - 1))
        record[pos] = data.draw(st.integers(0, 255))
    mutated = refresh_crcs(bytes(record))
    try:
        reading = scp.decode(mutated, ctx())
    except DecodeError:
        return
    for metric, value in reading.values().items():
        if metric.endswith("_axis"):
            assert -360 <= value <= 360
        else:
            assert 0 < value < 29999


def test_unset_or_future_cart_clock_uses_the_host_time() -> None:
    future = scp_record({1: scp_section1(acquired=(2099, 1, 1, 0, 0, 0)), 7: scp_section7()})
    reading = scp.decode(future, ctx())
    assert reading.flags == (ReadingFlag.CLOCK_UNSET,)
    assert reading.observed_at == FIXED_NOW
    assert reading.device_time == datetime(2099, 1, 1, tzinfo=ctx().tz)  # kept as the cart said
    no_date = scp_record({1: scp_section1()[:-3].replace(b"\x19\x04\x00", b"\x63\x04\x00") + b"\xff\x00\x00"})
    reading = scp.decode(no_date, ctx())
    assert (reading.flags, reading.observed_at, reading.device_time) == (
        (ReadingFlag.CLOCK_UNSET,),
        FIXED_NOW,
        None,
    )
