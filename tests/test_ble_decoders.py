"""BLE characteristic decoders against the public vectors (Nordic, Spezi) and the spec examples in
devices.md, as whole objects; special values never become numbers; random payloads never crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import m
from tests.kit.shared import shared_file
from vitals_agent.drivers.base import DecodeContext, DecodeFailure, all_drivers, driver_class
from vitals_agent.drivers.ble import uuids as U
from vitals_agent.drivers.ble.clock import (
    DateTimeValue,
    decode_current_time,
    decode_date_time,
    encode_current_time,
    encode_date_time,
)
from vitals_agent.drivers.ble.decoders import (
    BleRecord,
    HeartRate,
    PlxFeatures,
    RacpCount,
    RacpResult,
    decode_blood_pressure,
    decode_blood_pressure_record,
    decode_body_composition,
    decode_heart_rate,
    decode_heart_rate_fields,
    decode_intermediate_cuff_pressure,
    decode_nonin_df19,
    decode_plx_continuous,
    decode_plx_features,
    decode_plx_spot_check,
    decode_racp,
    decode_temperature,
    decode_weight,
    racp_request_all,
    racp_request_count,
    racp_request_since,
    record_to_event,
    system_id_to_eui64,
)
from vitals_agent.drivers.ble.drivers import BleDriver, BleOptions
from vitals_agent.drivers.ble.ieee11073 import Number, Special, encode_float, encode_sfloat
from vitals_agent.errors import DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import (
    DeviceClass,
    DeviceIdentity,
    DeviceStatusEvent,
    Flag,
    Reading,
    ReadingFlag,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
CTX = DecodeContext(device=DeviceIdentity(id="dev-1"), now=lambda: NOW)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# ------------------------------------------------------------------------------------------ blood pressure

NORDIC_BPM_FULL = h("1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00")


def test_nordic_bpm_full() -> None:
    assert decode_blood_pressure(NORDIC_BPM_FULL) == BleRecord(
        characteristic="2A35",
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=(
            m("bp_systolic", "138", "mm[Hg]"),
            m("bp_diastolic", "88", "mm[Hg]"),
            m("bp_mean", "120", "mm[Hg]"),
            m("pulse_rate", "60", "/min"),
        ),
        timestamp=DateTimeValue(0, 4, 17, 20, 41, 59),
        extra={
            "user_id": "1",
            "measurement_status": "body_movement,cuff_too_loose,irregular_pulse,improper_position",
            "pulse_rate_range": "within_range",
        },
        raw=NORDIC_BPM_FULL,
    )


def test_nordic_bpm_full_as_reading_keeps_values_but_not_the_partial_time() -> None:
    (reading,) = driver_class("ble-blood-pressure")().decode_chunks([NORDIC_BPM_FULL], CTX)
    assert reading == Reading(
        device=DeviceIdentity(id="dev-1"),
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=(
            m("bp_systolic", "138", "mm[Hg]"),
            m("bp_diastolic", "88", "mm[Hg]"),
            m("bp_mean", "120", "mm[Hg]"),
            m("pulse_rate", "60", "/min"),
        ),
        observed_at=NOW,
        received_at=NOW,
        device_time=None,
        flags=(ReadingFlag.CLOCK_UNSET,),
        extra={
            "user_id": "1",
            "measurement_status": "body_movement,cuff_too_loose,irregular_pulse,improper_position",
            "pulse_rate_range": "within_range",
            "device_clock": "0000-04-17T20:41:59",
        },
        raw=NORDIC_BPM_FULL,
    )


def test_nordic_bpm_some_kpa() -> None:
    raw = h("15 BD F0 0B 00 9F F0 3C 00 12 00")
    assert decode_blood_pressure(raw) == BleRecord(
        characteristic="2A35",
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=(
            m("bp_systolic", "18.9", "kPa"),
            m("bp_diastolic", "11.0", "kPa"),
            m("bp_mean", "15.9", "kPa"),
            m("pulse_rate", "60", "/min"),
        ),
        extra={"measurement_status": "cuff_too_loose", "pulse_rate_range": "below_lower_limit"},
        raw=raw,
    )


def test_nordic_bpm_minimal() -> None:
    raw = h("00 BD F0 0B 00 9F F0")
    assert decode_blood_pressure(raw).measurements == (
        m("bp_systolic", "18.9", "mm[Hg]"),
        m("bp_diastolic", "11", "mm[Hg]"),
        m("bp_mean", "15.9", "mm[Hg]"),
    )


def test_synthetic_bpm_as_reading() -> None:
    raw = h("06 80 00 54 00 63 00 E8 07 05 01 0A 1E 00 43 00")
    (reading,) = driver_class("ble-blood-pressure")().decode_chunks([raw], CTX)
    at = datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
    assert reading == Reading(
        device=DeviceIdentity(id="dev-1"),
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=(
            m("bp_systolic", "128", "mm[Hg]"),
            m("bp_diastolic", "84", "mm[Hg]"),
            m("bp_mean", "99", "mm[Hg]"),
            m("pulse_rate", "67", "/min"),
        ),
        observed_at=at,
        received_at=NOW,
        device_time=at,
        raw=raw,
    )


def test_device_clock_zone_is_applied() -> None:
    raw = h("06 80 00 54 00 63 00 E8 07 05 01 0A 1E 00 43 00")
    cet = timezone(timedelta(hours=1))
    ctx = DecodeContext(device=DeviceIdentity(id="d"), tz=cet, now=lambda: NOW)
    (reading,) = driver_class("ble-blood-pressure")().decode_chunks([raw], ctx)
    assert isinstance(reading, Reading)
    assert reading.observed_at == datetime(2024, 5, 1, 9, 30, tzinfo=UTC)


def test_failed_measurement_all_nan_is_not_reported() -> None:
    raw = h("16 FF 07 FF 07 FF 07 E1 07 01 0E 0A 00 00 FF 07 00 00")
    record = decode_blood_pressure(raw)
    assert record.failed
    assert not record.reportable
    assert [(x.value, x.absent_reason) for x in record.measurements] == [(None, "NaN")] * 4
    assert record_to_event(record, CTX) == DeviceStatusEvent(
        note="2A35: not reported (failed measurement: no values)"
    )


def test_one_special_field_is_no_value_with_reason() -> None:
    raw = h("04 78 00 50 00 FF 07 02 08")  # MAP NaN, pulse -INFINITY
    record = decode_blood_pressure(raw)
    assert record.reportable
    assert record.measurements == (
        m("bp_systolic", "120", "mm[Hg]"),
        m("bp_diastolic", "80", "mm[Hg]"),
        m("bp_mean", None, "mm[Hg]", absent_reason="NaN"),
        m("pulse_rate", None, "/min", absent_reason="-INFINITY"),
    )


def test_intermediate_cuff_pressure_is_progress_only() -> None:
    raw = h("1E 04 00 00 00 00 00 00 00 04 11 14 29 3B 3C 00 01 27 00")
    record = decode_intermediate_cuff_pressure(raw)
    assert record.measurements == (m("bp_cuff_pressure", "4", "mm[Hg]"),)
    assert not record.reportable
    outputs = driver_class("ble-blood-pressure")().decode_chunks([raw], CTX, "2A36")
    assert outputs == [
        DeviceStatusEvent(note="2A36: not reported (intermediate cuff pressure (progress only))")
    ]


def test_blood_pressure_record_with_sequence() -> None:
    inner = h("06 80 00 54 00 63 00 E8 07 05 01 0A 1E 00 43 00")
    raw = b"\x03" + (517).to_bytes(2, "little") + b"\x35\x2a" + inner
    record = decode_blood_pressure_record(raw)
    assert (record.sequence, record.from_storage, record.characteristic) == (517, True, "2B36")
    assert record.measurements == decode_blood_pressure(inner).measurements
    with pytest.raises(UnsupportedError, match="multi-segment"):
        decode_blood_pressure_record(b"\x01" + raw[1:])


@pytest.mark.parametrize("flags", [0x00, 0x02, 0x04, 0x08, 0x10, 0x16, 0x1F])
def test_every_short_bpm_is_truncated(flags: int) -> None:
    length = 7 + 7 * bool(flags & 2) + 2 * bool(flags & 4) + bool(flags & 8) + 2 * bool(flags & 16)
    payload = bytes([flags]) + bytes(length - 1)
    decode_blood_pressure(payload)
    for cut in range(length):
        with pytest.raises(TruncatedError):
            decode_blood_pressure(payload[:cut])


def test_trailing_bytes_are_ignored_and_counted() -> None:
    record = decode_blood_pressure(h("00 78 00 50 00 5D 00 AA BB"))
    assert record.measurements[0].value == Decimal(120)
    # longer than its flags announce: malformed, so no status bits would be reported (issue #12 item 5)
    assert record.extra == {"malformed": "9 bytes where the flags announce 7", "ignored_trailing_bytes": "2"}


# ------------------------------------------------------------------------------------------ thermometer

NORDIC_HTM = h("06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04")


def test_nordic_temperature_whole_record() -> None:
    assert decode_temperature(NORDIC_HTM) == BleRecord(
        characteristic="2A1C",
        device_class=DeviceClass.THERMOMETER,
        measurements=(m("body_temperature", "37.60", "Cel", site="7569003^Finger structure^SCT"),),
        timestamp=DateTimeValue(2012, 12, 5, 11, 50, 27),
        extra={"temperature_type": "finger"},
        raw=NORDIC_HTM,
    )


def test_nordic_temperature_missing_type_byte_is_invalid() -> None:
    outputs = driver_class("ble-thermometer")().decode_chunks([NORDIC_HTM[:-1]], CTX)
    assert len(outputs) == 1 and isinstance(outputs[0], DecodeFailure)
    assert isinstance(outputs[0].error, TruncatedError)
    assert outputs[0].data == NORDIC_HTM[:-1]


@pytest.mark.parametrize(
    ("kind", "metric", "site"),
    [
        (1, "body_temperature_axillary", "422543003^Structure of axillary fossa^SCT"),
        (2, "body_temperature", None),
        (3, "body_temperature_ear", "117590005^Ear structure^SCT"),
        (4, "body_temperature", "7569003^Finger structure^SCT"),
        (5, "body_temperature", None),
        (6, "body_temperature_oral", "74262004^Oral cavity structure^SCT"),
        (7, "body_temperature_rectal", "34402009^Rectum structure^SCT"),
        (8, "body_temperature", "29707007^Toe structure^SCT"),
        (9, "body_temperature_tympanic", "42859004^Tympanic membrane structure^SCT"),
        (42, "body_temperature", None),
    ],
)
def test_temperature_type_site_mapping(kind: int, metric: str, site: str | None) -> None:
    record = decode_temperature(b"\x05" + h("DA 03 00 FF") + bytes([kind]))
    assert record.measurements == (m(metric, "98.6", "[degF]", site=site),)


def test_temperature_without_type_uses_configured_site() -> None:
    record = decode_temperature(b"\x00" + h("B0 0E 00 FE"), default_site="52795006^Forehead structure^SCT")
    assert record.measurements == (
        m("body_temperature", "37.60", "Cel", site="52795006^Forehead structure^SCT"),
    )


def test_temperature_nan_is_failed() -> None:
    record = decode_temperature(b"\x00" + encode_float(Special.NAN))
    assert record.failed and not record.reportable


# ------------------------------------------------------------------------------------------ scales


def test_weight_examples_from_devices_md() -> None:
    assert decode_weight(h("00 B0 36")).measurements == (m("body_weight", "70.000", "kg"),)
    assert decode_weight(h("08 B0 36 E5 00 D6 06")).measurements == (
        m("body_weight", "70.000", "kg"),
        m("bmi", "22.9", "kg/m2", method="ACALC"),
        m("body_height", "1.750", "m"),
    )
    assert decode_weight(h("09 48 3C E5 00 B2 02")).measurements == (
        m("body_weight", "154.32", "[lb_av]"),
        m("bmi", "22.9", "kg/m2", method="ACALC"),
        m("body_height", "69.0", "[in_i]"),
    )


def test_weight_with_time_and_user_and_unsuccessful() -> None:
    raw = h("06 FF FF E8 07 05 01 0A 1E 00 03")
    record = decode_weight(raw)
    assert record == BleRecord(
        characteristic="2A9D",
        device_class=DeviceClass.SCALE,
        measurements=(m("body_weight", None, "kg", absent_reason="unsuccessful"),),
        timestamp=DateTimeValue(2024, 5, 1, 10, 30, 0),
        extra={"user_id": "3"},
        reportable=False,
        not_reported="failed measurement: no weight",
        raw=raw,
    )


def test_body_composition() -> None:
    # flags: time stamp, user, basal metabolism, muscle %, body water mass, weight, height
    flags = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 8) | (1 << 10) | (1 << 11)
    raw = (
        flags.to_bytes(2, "little")
        + (235).to_bytes(2, "little")  # fat 23.5 %
        + encode_date_time(datetime(2024, 5, 1, 7, 15, 0))
        + b"\x01"
        + (6900).to_bytes(2, "little")  # kJ
        + (412).to_bytes(2, "little")  # 41.2 %
        + (7200).to_bytes(2, "little")  # 36.000 kg water
        + (14000).to_bytes(2, "little")  # 70.000 kg
        + (1750).to_bytes(2, "little")  # 1.750 m
    )
    assert decode_body_composition(raw) == BleRecord(
        characteristic="2A9C",
        device_class=DeviceClass.BODY_COMPOSITION,
        measurements=(
            m("body_fat_pct", "23.5", "%"),
            m("body_weight", "70.000", "kg"),
            m("body_height", "1.750", "m"),
        ),
        timestamp=DateTimeValue(2024, 5, 1, 7, 15, 0),
        extra={
            "user_id": "1",
            "basal_metabolism_kJ": "6900",
            "muscle_percentage": "41.2",
            "body_water_mass": "36.000 kg",
        },
        raw=raw,
    )
    with pytest.raises(TruncatedError):
        decode_body_composition(raw[:-1])


def test_soehnle_capture_flags_frame_correctly() -> None:
    """Flag/framing check in the shape of the openScale #1303 capture (flags 0x051E): length only."""
    flags = 0x051E
    raw = flags.to_bytes(2, "little") + bytes(2 + 7 + 1 + 2 + 2 + 2) + (744).to_bytes(2, "little")
    record = decode_body_composition(raw)
    assert record.measurements[1] == m("body_weight", "3.720", "kg")


# ------------------------------------------------------------------------------------------ pulse oximetry


def test_spezi_continuous_plain_and_non_canonical_are_equal() -> None:
    a = decode_plx_continuous(h("00 E8 F3 84 F3"))
    b = decode_plx_continuous(h("00 64 00 5A 00"))
    assert a.measurements == b.measurements == (m("spo2", "100", "%"), m("pulse_rate_oximeter", "90", "/min"))
    assert a.reportable and a.timestamp is None


def test_spezi_continuous_with_status_and_pai_is_ongoing() -> None:
    raw = h("1C 5F 00 5A 00 20 00 00 00 00 57 F0")
    busy = (Flag.BUSY,)
    assert decode_plx_continuous(raw) == BleRecord(
        characteristic="2A5F",
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=(
            m("spo2", "95", "%", flags=busy),
            m("pulse_rate_oximeter", "90", "/min", flags=busy),
            m("pulse_amplitude_index", "8.7", "%", flags=busy),
        ),
        extra={"measurement_status": "measurement_ongoing", "device_status": ""},
        reportable=False,
        not_reported="measurement ongoing",
        raw=raw,
    )


def test_spezi_continuous_full() -> None:
    raw = h("1F DE F3 CA F3 CA F3 5A F5 D4 F3 B2 F2 20 01 00 00 00 7A E3")
    record = decode_plx_continuous(raw)
    assert [x.value for x in record.measurements] == [Decimal("99.0"), Decimal("97.0"), Decimal("8.90")]
    assert record.extra == {
        "spo2_fast": "97.0",
        "pulse_rate_fast": "137.0",
        "spo2_slow": "98.0",
        "pulse_rate_slow": "69.0",
        "measurement_status": "measurement_ongoing,fully_qualified_data",
        "device_status": "",
    }


def test_spezi_spot_check() -> None:
    raw = h("0F AC F3 BE F5 E8 07 0B 1D 17 08 39 20 40 22 00 00 66 E3")
    flags = (Flag.BUSY, Flag.QUESTIONABLE)
    assert decode_plx_spot_check(raw) == BleRecord(
        characteristic="2A5E",
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=(
            m("spo2", "94.0", "%", flags=flags),
            m("pulse_rate_oximeter", "147.0", "/min", flags=flags),
            m("pulse_amplitude_index", "8.70", "%", flags=flags),
        ),
        timestamp=DateTimeValue(2024, 11, 29, 23, 8, 57),
        extra={
            "measurement_status": "measurement_ongoing,questionable_measurement",
            "device_status": "equipment_malfunction,low_perfusion",
        },
        reportable=False,
        not_reported="measurement ongoing",
        raw=raw,
    )


def test_spezi_features() -> None:
    assert decode_plx_features(h("A3 00 40 10 80 01 00")) == PlxFeatures(0x00A3, 0x1040, 0x000180)
    assert not decode_plx_features(h("A3 00 40 10 80 01 00")).stored_records


def _spot(status: int | None = None, device: int | None = None, flags: int = 0) -> bytes:
    out = bytes([flags | (0x02 if status is not None else 0) | (0x04 if device is not None else 0)])
    out += h("61 00 48 00")  # 97 %, 72 /min
    if status is not None:
        out += status.to_bytes(2, "little")
    if device is not None:
        out += device.to_bytes(3, "little")
    return out


@pytest.mark.parametrize(
    ("status", "device", "reason"),
    [
        (1 << 13, None, "measurement unavailable"),
        (1 << 15, None, "invalid measurement"),
        (1 << 10, None, "data for demonstration"),
        (1 << 11, None, "data for testing"),
        (None, 1 << 15, "sensor disconnected"),
        (1 << 5, None, "measurement ongoing"),
    ],
)
def test_plx_filtering_rule(status: int | None, device: int | None, reason: str) -> None:
    record = decode_plx_spot_check(_spot(status, device))
    assert (record.reportable, record.not_reported) == (False, reason)
    assert isinstance(record_to_event(record, CTX), DeviceStatusEvent)


def test_plx_questionable_is_reported_with_ques() -> None:
    record = decode_plx_spot_check(_spot(1 << 14 | 1 << 7))
    assert record.reportable
    assert [x.flags for x in record.measurements] == [(Flag.QUESTIONABLE,)] * 2


def test_plx_clock_not_set_uses_host_time() -> None:
    raw = b"\x11" + h("61 00 48 00") + encode_date_time(datetime(2000, 1, 1, 0, 5, 0))
    (reading,) = driver_class("ble-pulse-oximeter")().decode_chunks([raw], CTX)
    assert isinstance(reading, Reading)
    assert reading.observed_at == NOW
    assert reading.device_time == datetime(2000, 1, 1, 0, 5, tzinfo=UTC)
    assert reading.flags == (ReadingFlag.CLOCK_UNSET,)


def test_nonin_df19() -> None:
    raw = h("0A 00 1E 01 2C 00 07 61 00 48")
    record = decode_nonin_df19(raw)
    assert record.measurements == (m("spo2", "97", "%"), m("pulse_rate_oximeter", "72", "/min"))
    assert record.extra == {"counter": "7"}
    missing = decode_nonin_df19(h("0A 00 1E 01 2C 00 08 7F 01 FF"))
    assert missing.failed and missing.flags == (ReadingFlag.SENSOR_OFF,)


# ------------------------------------------------------------------------------------------ heart rate


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("00 55", HeartRate(85, "not_supported", None, ())),
        ("04 FF", HeartRate(255, "not_detected", None, ())),
        ("1E 55 32 00 21 00", HeartRate(85, "detected", 50, (33,))),
        ("1F 01 01 32 01 01 00 02 01 FF FF", HeartRate(257, "detected", 306, (1, 258, 65535))),
    ],
)
def test_nordic_heart_rate(raw: str, expected: HeartRate) -> None:
    assert decode_heart_rate_fields(h(raw))[0] == expected


def test_nordic_heart_rate_truncated() -> None:
    with pytest.raises(TruncatedError):
        decode_heart_rate(h("17 01 01"))


def test_heart_rate_records() -> None:
    assert decode_heart_rate(h("1E 55 32 00 21 00")) == BleRecord(
        characteristic="2A37",
        device_class=DeviceClass.HEART_RATE,
        measurements=(m("ecg_heart_rate", "85", "/min"),),
        extra={"sensor_contact": "detected", "energy_expended_kJ": "50", "rr_intervals_1_1024_s": "33"},
        raw=h("1E 55 32 00 21 00"),
    )
    no_contact = decode_heart_rate(h("04 FF"))
    assert no_contact.measurements == (m("ecg_heart_rate", None, "/min", absent_reason="no sensor contact"),)
    assert no_contact.flags == (ReadingFlag.SENSOR_OFF,) and not no_contact.reportable


# ------------------------------------------------------------------------------- date time, RACP, DIS


def test_nordic_date_time() -> None:
    assert decode_date_time(h("E2 07 04 11 0F 33 00")) == DateTimeValue(2018, 4, 17, 15, 51, 0)
    partial = decode_date_time(h("00 00 00 00 12 1A 20"))
    assert partial == DateTimeValue(0, 0, 0, 18, 26, 32)
    assert partial.to_datetime(UTC) is None
    with pytest.raises(TruncatedError):
        decode_date_time(h("E2 07 04 11 0F 33"))
    outputs = driver_class("ble-blood-pressure")().decode_chunks([h("E2 07 04 11 0F 33")], CTX, "0x2a08")
    assert isinstance(outputs[0], DecodeFailure)


def test_date_time_plausibility() -> None:
    assert DateTimeValue(2017, 1, 14, 10, 0, 0).plausible(UTC) == datetime(2017, 1, 14, 10, 0, tzinfo=UTC)
    assert DateTimeValue(1970, 1, 1, 0, 0, 0).plausible(UTC) is None
    assert DateTimeValue(2024, 2, 30, 0, 0, 0).to_datetime(UTC) is None  # impossible date, no crash


def test_current_time_round_trip() -> None:
    at = datetime(2026, 11, 28, 12, 0, 0, 500000)
    raw = encode_current_time(at)
    assert raw == h("EA 07 0B 1C 0C 00 00 06 80 01")
    now = decode_current_time(raw)
    assert (now.date_time, now.day_of_week, now.fractions256, now.adjust_reason) == (
        DateTimeValue(2026, 11, 28, 12, 0, 0),
        6,
        128,
        1,
    )


@given(st.datetimes(min_value=datetime(1582, 1, 1), max_value=datetime(9999, 12, 31)))
def test_date_time_round_trip(at: datetime) -> None:
    assert decode_date_time(encode_date_time(at)).to_datetime(UTC) == at.replace(microsecond=0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("06 00 01 01", RacpResult(request_opcode=1, response=1)),
        ("06 00 01 06", RacpResult(request_opcode=1, response=6)),
        ("05 00 01", RacpCount(1)),
        ("05 00 04 03 02 01", RacpCount(16909060)),
        ("06 00 0C 02", RacpResult(request_opcode=12, response=2)),
        ("05 00 02 01", RacpCount(258)),
    ],
)
def test_nordic_racp(raw: str, expected: RacpCount | RacpResult) -> None:
    assert decode_racp(h(raw)) == expected


@pytest.mark.parametrize("raw", ["05 00 03 02 01", "06 01 01", "06 00 01", "05", "01 01"])
def test_nordic_racp_invalid(raw: str) -> None:
    with pytest.raises(DecodeError):
        decode_racp(h(raw))


def test_racp_requests_and_texts() -> None:
    assert racp_request_all() == h("01 01")
    assert racp_request_count() == h("04 01")
    assert racp_request_since(721) == h("01 03 01 D1 02")
    assert RacpResult(request_opcode=1, response=1).success
    assert RacpResult(request_opcode=1, response=6).no_records
    assert not RacpResult(request_opcode=1, response=6).success
    assert decode_racp(h("06 00 0C 02")).text == "request 12: op code not supported"
    assert decode_racp(h("06 00 01 0A")).text == "request 1: reserved"
    assert decode_racp(h("05 00 02 01")).text == "258 stored records"


def test_system_id_to_eui64() -> None:
    assert system_id_to_eui64(h("56 34 12 FE FF 1F 09 00")) == "00091FFFFE123456"
    with pytest.raises(DecodeError):
        system_id_to_eui64(h("56 34 12"))


def test_device_information_through_decode() -> None:
    drv = driver_class("ble-weight-scale")()
    assert drv.decode_chunks([b"A&D Medical\x00 "], CTX, "2A29") == [
        DeviceStatusEvent(identity=DeviceIdentity(id="dev-1", manufacturer="A&D Medical"))
    ]
    assert drv.decode_chunks([h("56 34 12 FE FF 1F 09 00")], CTX, "00002a23") == [
        DeviceStatusEvent(identity=DeviceIdentity(id="dev-1", eui64="00091FFFFE123456"))
    ]
    assert drv.decode_chunks([b"\x57"], CTX, "2a19") == [DeviceStatusEvent(battery_percent=87)]
    assert drv.decode_chunks([h("E2 07 04 11 0F 33 00")], CTX, "2A08") == [
        DeviceStatusEvent(note="device clock 2018-04-17T15:51:00")
    ]
    assert drv.decode_chunks([h("06 00 01 06")], CTX, "2A52") == [
        DeviceStatusEvent(note="RACP: request 1: no records found")
    ]


# ------------------------------------------------------------------------------------------ drivers

BLE_DRIVERS = {
    "ble-blood-pressure": (DeviceClass.BLOOD_PRESSURE, U.BLOOD_PRESSURE_MEASUREMENT, False),
    "ble-thermometer": (DeviceClass.THERMOMETER, U.TEMPERATURE_MEASUREMENT, False),
    "ble-weight-scale": (DeviceClass.SCALE, U.WEIGHT_MEASUREMENT, False),
    "ble-body-composition": (DeviceClass.BODY_COMPOSITION, U.BODY_COMPOSITION_MEASUREMENT, False),
    "ble-pulse-oximeter": (DeviceClass.PULSE_OXIMETER, U.PLX_SPOT_CHECK, False),
    "ble-heart-rate": (DeviceClass.HEART_RATE, U.HEART_RATE_MEASUREMENT, True),
    "nonin-3230": (DeviceClass.PULSE_OXIMETER, U.NONIN_MEASUREMENT, True),
}


@pytest.mark.parametrize("name", sorted(BLE_DRIVERS))
def test_driver_registry_contract(name: str) -> None:
    cls = all_drivers()[name]
    device_class, measurement, continuous = BLE_DRIVERS[name]
    assert issubclass(cls, BleDriver)
    assert (cls.transport, cls.device_class, cls.characteristics[0], cls.continuous) == (
        "ble",
        device_class,
        measurement,
        continuous,
    )
    assert U.SERIAL_NUMBER in cls.characteristics and U.SYSTEM_ID in cls.characteristics


def test_unknown_characteristic_is_refused() -> None:
    with pytest.raises(UnsupportedError, match="does not decode characteristic 2A37"):
        driver_class("ble-blood-pressure")().decode_chunks([b"\x00"], CTX, "2A37")
    with pytest.raises(DecodeError, match="not a Bluetooth UUID"):
        driver_class("ble-blood-pressure")().decode_chunks([b"\x00"], CTX, "blood")


def test_options_validation() -> None:
    with pytest.raises(ValueError, match="give 'address' or 'name'"):
        BleOptions()
    with pytest.raises(ValueError, match="AA:BB:CC:DD:EE:FF"):
        BleOptions(address="00:09:1F")
    with pytest.raises(ValueError, match="regular expression"):
        BleOptions(name="(")
    opts = BleOptions(name="^A&D", service="1810")
    assert (opts.service, opts.set_clock, opts.stored_records) == (U.BLOOD_PRESSURE_SERVICE, True, True)
    assert BleOptions(address="00:09:1f:12:34:56").address == "00:09:1F:12:34:56"


# ------------------------------------------------------------------------------------------ sample files


def _sample_lines(name: str) -> list[tuple[str, bytes, str]]:
    path = shared_file("samples", "ble", name)
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or "|" not in line:
            continue
        char, hex_payload, expect, *_ = (part.strip() for part in line.split("|"))
        rows.append((char, bytes.fromhex(hex_payload), expect))
    return rows


def test_every_nordic_sample_line_decodes_as_asserted() -> None:
    drivers = {
        "2A35": ("ble-blood-pressure", None),
        "2A36": ("ble-blood-pressure", "2A36"),
        "2A1C": ("ble-thermometer", None),
        "2A37": ("ble-heart-rate", None),
        "2A08": ("ble-blood-pressure", "2A08"),
        "2A52": ("ble-blood-pressure", "2A52"),
    }
    rows = _sample_lines("nordic_android_ble_common_test_vectors.txt")
    assert len(rows) == 22
    for char, payload, expect in rows:
        name, characteristic = drivers[char]
        (out,) = driver_class(name)().decode_chunks([payload], CTX, characteristic)
        assert isinstance(out, DecodeFailure) == expect.startswith("INVALID"), (char, payload.hex(), out)


def test_every_spezi_sample_line_decodes() -> None:
    rows = _sample_lines("spezi_plx_test_vectors.txt")
    assert len(rows) == 6
    decoded = {
        "2A5F": decode_plx_continuous,
        "2A5E": decode_plx_spot_check,
    }
    asserted = iter([(100, 90), (100, 90), (95, 90), (99, 97), (94, 147)])  # "expect" column, in order
    for char, payload, _expect in rows:
        if char == "2A60":
            assert decode_plx_features(payload) == PlxFeatures(0x00A3, 0x1040, 0x000180)
            continue
        record = decoded[char](payload)
        assert tuple(x.value for x in record.measurements[:2]) == tuple(Decimal(v) for v in next(asserted))


# ------------------------------------------------------------------------------------------ property tests

values = st.one_of(
    st.sampled_from(list(Special)),
    st.builds(Number, st.integers(-2000, 2000), st.integers(-3, 1)),
)


def _sf(v: Number | Special) -> bytes:
    return encode_sfloat(v)


@given(values, values, values, st.none() | values, st.none() | st.datetimes(min_value=datetime(2000, 1, 1)))
def test_bpm_special_values_never_become_numbers(
    sys: Number | Special,
    dia: Number | Special,
    mean: Number | Special,
    pulse: Number | Special | None,
    at: datetime | None,
) -> None:
    flags = (0x02 if at else 0) | (0x04 if pulse is not None else 0)
    raw = bytes([flags]) + _sf(sys) + _sf(dia) + _sf(mean)
    raw += encode_date_time(at) if at else b""
    raw += _sf(pulse) if pulse is not None else b""
    record = decode_blood_pressure(raw)
    sent = [sys, dia, mean] + ([pulse] if pulse is not None else [])
    for measurement, value in zip(record.measurements, sent, strict=True):
        if isinstance(value, Special):
            assert (measurement.value, measurement.absent_reason) == (None, value.value)
        else:
            assert (measurement.value, measurement.absent_reason) == (value.value, None)
    assert record.reportable == any(isinstance(v, Number) for v in sent)


@given(
    st.one_of(
        st.sampled_from(list(Special)), st.builds(Number, st.integers(-30000, 50000), st.integers(-3, 0))
    )
)
def test_temperature_special_values_never_become_numbers(value: Number | Special) -> None:
    record = decode_temperature(b"\x00" + encode_float(value))
    (measurement,) = record.measurements
    if isinstance(value, Special):
        assert measurement.value is None and measurement.absent_reason == value.value
    else:
        assert measurement.value == value.value


MEASUREMENT_CHARS = [
    (name, uuid)
    for name in sorted(BLE_DRIVERS)
    for uuid in all_drivers()[name].characteristics
    if uuid in getattr(all_drivers()[name], "measurement_characteristics", ())
]


@pytest.mark.parametrize(("name", "uuid"), MEASUREMENT_CHARS)
@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=40))
def test_random_payloads_never_crash(name: str, uuid: str, payload: bytes) -> None:
    outputs = driver_class(name)().decode_chunks([payload], CTX, uuid)
    assert len(outputs) == 1
    out = outputs[0]
    assert isinstance(out, Reading | DeviceStatusEvent | DecodeFailure)
    if isinstance(out, Reading):
        assert any(x.value is not None for x in out.measurements)
        for x in out.measurements:
            assert (x.value is None) == (x.absent_reason is not None)
            assert x.value is None or x.value.is_finite()
