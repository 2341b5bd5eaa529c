"""Pure decoders for the Bluetooth health characteristics (devices.md §1-§6).

Each measurement decoder takes one characteristic payload and returns a :class:`BleRecord`: the
measurements (special values become "no value" with a reason, never numbers), the device's own time
stamp as sent, and whether the record may be reported at all. :func:`record_to_event` turns a record into
a :class:`~vitals_agent.models.Reading` (or a status note for things that are never reported) with the
time-stamp policy; the BLE transport adds stored-record and clock-offset handling on top.

Rules kept everywhere: lengths are computed from the flags and short payloads raise
:class:`~vitals_agent.errors.TruncatedError`; unexpected trailing bytes are ignored (and counted in
``extra``); nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from vitals_agent.drivers._serial_util import absent, value
from vitals_agent.drivers.base import DecodeContext
from vitals_agent.drivers.ble.clock import DateTimeValue, decode_date_time
from vitals_agent.drivers.ble.ieee11073 import (
    Number,
    Special,
    decode_sfloat,
    float_from_bytes,
    sfloat_from_bytes,
)
from vitals_agent.drivers.ble.quirks import BpQuirks
from vitals_agent.errors import DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import (
    DeviceClass,
    DeviceEvent,
    DeviceIdentity,
    DeviceStatusEvent,
    Flag,
    Measurement,
    Reading,
    ReadingFlag,
)

# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class BleRecord:
    """What one measurement payload says, before the host's clock policy is applied."""

    characteristic: str  # short name, e.g. "2A35"
    device_class: DeviceClass
    measurements: tuple[Measurement, ...]
    timestamp: DateTimeValue | None = None
    clock_not_set: bool = False  # the device says its clock was never set (PLX flag bit 4)
    from_storage: bool = False  # the device says the record comes from its storage
    sequence: int | None = None
    flags: tuple[ReadingFlag, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)
    reportable: bool = True
    not_reported: str | None = None  # why the record must not be reported (progress, failed, invalid)
    raw: bytes = b""

    @property
    def failed(self) -> bool:
        """True when the device sent a record without a single value (a failed measurement)."""
        return _no_values(self.measurements)


def _no_values(measurements: Sequence[Measurement]) -> bool:
    return bool(measurements) and all(m.value is None for m in measurements)


def _record(
    characteristic: str,
    device_class: DeviceClass,
    measurements: Sequence[Measurement],
    data: bytes,
    *,
    extra: Mapping[str, str],
    not_reported: str | None = None,
    timestamp: DateTimeValue | None = None,
    clock_not_set: bool = False,
    from_storage: bool = False,
    flags: tuple[ReadingFlag, ...] = (),
) -> BleRecord:
    """The record of one payload ``data``. It is not reportable when ``not_reported`` gives a reason, or
    when the device sent no value at all (a failed measurement)."""
    if not_reported is None and _no_values(measurements):
        not_reported = "failed measurement: no values"
    return BleRecord(
        characteristic=characteristic,
        device_class=device_class,
        measurements=tuple(measurements),
        timestamp=timestamp,
        clock_not_set=clock_not_set,
        from_storage=from_storage,
        flags=flags,
        extra=extra,
        reportable=not_reported is None,
        not_reported=not_reported,
        raw=bytes(data),
    )


def _value(num: Number | Special) -> tuple[Decimal | None, str | None]:
    if isinstance(num, Special):
        return None, num.value
    return num.value, None


def _measure(
    metric: str,
    num: Number | Special,
    unit: str,
    flags: tuple[Flag, ...] = (),
    site: str | None = None,
    method: str | None = None,
) -> Measurement:
    value, reason = _value(num)
    return Measurement(
        metric=metric, value=value, unit=unit, flags=flags, absent_reason=reason, site=site, method=method
    )


def _scaled(metric: str, raw: int, step: Decimal, unit: str, method: str | None = None) -> Measurement:
    """Unsigned fixed-point fields (weight, BMI, height, fat %): 0xFFFF = measurement unsuccessful."""
    if raw == 0xFFFF:
        return Measurement(metric=metric, value=None, unit=unit, absent_reason="unsuccessful", method=method)
    return Measurement(metric=metric, value=raw * step, unit=unit, method=method)


def _need(data: bytes, length: int, what: str) -> None:
    if len(data) < length:
        raise TruncatedError(f"{what}: flags announce {length} bytes, got {len(data)}", bytes(data))


def _trailing(data: bytes, used: int, extra: dict[str, str]) -> None:
    if len(data) > used:
        extra["ignored_trailing_bytes"] = str(len(data) - used)


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little")


def _bits(value: int, names: Mapping[int, str]) -> str:
    return ",".join(name for bit, name in sorted(names.items()) if value & (1 << bit))


def _user_id(value: int) -> str:
    return "unknown" if value == 0xFF else str(value)


# --------------------------------------------------------------------------------------------- blood pressure

_BP_STATUS = {
    0: "body_movement",
    1: "cuff_too_loose",
    2: "irregular_pulse",
    5: "improper_position",
}
_PULSE_RANGE = {0: "within_range", 1: "exceeds_upper_limit", 2: "below_lower_limit", 3: "reserved"}


def _time_stamp(data: bytes, pos: int, present: int) -> tuple[DateTimeValue | None, int]:
    """The optional Date Time field (7 bytes) at ``pos`` when its flag bit is set: (value, next position)."""
    if not present:
        return None, pos
    return decode_date_time(data, pos), pos + 7


_BpFields = tuple[str, list[Number | Special], dict[str, str], DateTimeValue | None]


def _bp_fields(data: bytes, what: str, quirks: BpQuirks | None = None, *, exact: bool = True) -> _BpFields:
    """The fields of a Blood Pressure Measurement, as BLS 1.0 3.1 lays them out or as the cuff's ``quirks``
    say it deviates. ``exact``: the record must be exactly as long as its flags announce; a longer one is
    *malformed* (its fields may be misaligned) and its status bits are not reported."""
    if not data:
        raise TruncatedError(f"{what}: empty payload")
    flags = data[0]
    user_byte = bool(flags & 0x08) or (quirks is not None and quirks.user_byte_always)
    length = 7 + 7 * bool(flags & 0x02) + 2 * bool(flags & 0x04) + user_byte + 2 * bool(flags & 0x10)
    _need(data, length, what)
    values = [sfloat_from_bytes(data, 1), sfloat_from_bytes(data, 3), sfloat_from_bytes(data, 5)]
    pos = 7
    extra: dict[str, str] = {}
    timestamp, pos = _time_stamp(data, pos, flags & 0x02)
    if flags & 0x04:
        order: Literal["big", "little"] = (
            "big" if quirks is not None and quirks.pulse_big_endian else "little"
        )
        values.append(decode_sfloat(int.from_bytes(data[pos : pos + 2], order)))
        pos += 2
    if user_byte:
        extra["user_id"] = _user_id(data[pos])
        pos += 1
    malformed = exact and len(data) > length
    if malformed:
        extra["malformed"] = f"{len(data)} bytes where the flags announce {length}"
    if flags & 0x10:
        order = "big" if quirks is not None and quirks.status_big_endian else "little"
        status = int.from_bytes(data[pos : pos + 2], order)
        pos += 2
        if not malformed:  # status bits from a misaligned record would be invented (issue #12 item 5)
            extra["measurement_status"] = _bits(status, _BP_STATUS)
            extra["pulse_rate_range"] = _PULSE_RANGE[(status >> 3) & 0x3]
    _trailing(data, pos, extra)
    if quirks is not None:
        extra["quirks"] = quirks.key
    unit = "kPa" if flags & 0x01 else "mm[Hg]"
    return unit, values, extra, timestamp


def decode_blood_pressure(data: bytes, quirks: BpQuirks | None = None, *, exact: bool = True) -> BleRecord:
    """Blood Pressure Measurement 0x2A35 → systolic, diastolic, MAP (mm[Hg] or kPa) and pulse rate.
    ``quirks``: how this cuff model deviates from the profile (:mod:`~vitals_agent.drivers.ble.quirks`)."""
    unit, values, extra, timestamp = _bp_fields(data, "blood pressure measurement", quirks, exact=exact)
    measurements = [
        _measure("bp_systolic", values[0], unit),
        _measure("bp_diastolic", values[1], unit),
        _measure("bp_mean", values[2], unit),
    ]
    if len(values) > 3:
        measurements.append(_measure("pulse_rate", values[3], "/min"))
    return _record("2A35", DeviceClass.BLOOD_PRESSURE, measurements, data, timestamp=timestamp, extra=extra)


def decode_intermediate_cuff_pressure(data: bytes) -> BleRecord:
    """Intermediate Cuff Pressure 0x2A36: the systolic slot is the current cuff pressure. Progress only:
    the record is never reportable."""
    unit, values, extra, timestamp = _bp_fields(data, "intermediate cuff pressure")
    return _record(
        "2A36",
        DeviceClass.BLOOD_PRESSURE,
        [_measure("bp_cuff_pressure", values[0], unit)],
        data,
        timestamp=timestamp,
        extra=extra,
        not_reported="intermediate cuff pressure (progress only)",
    )


def decode_blood_pressure_record(data: bytes, quirks: BpQuirks | None = None) -> BleRecord:
    """Blood Pressure Record 0x2B36 (BLS 1.1, layout [M]): header, sequence u16, recorded UUID u16, the
    recorded characteristic's bytes, optional E2E-CRC. Only single-segment records of 0x2A35 are handled."""
    _need(data, 5, "blood pressure record")
    header = data[0]
    if header & 0x03 != 0x03:
        raise UnsupportedError("multi-segment blood pressure records are not supported", bytes(data))
    sequence = _u16(data, 1)
    recorded = _u16(data, 3)
    if recorded != 0x2A35:
        raise UnsupportedError(f"blood pressure record of characteristic {recorded:04X}", bytes(data))
    inner = decode_blood_pressure(data[5:], quirks, exact=False)  # an E2E-CRC may follow the record
    extra = {k: v for k, v in inner.extra.items() if k != "ignored_trailing_bytes"}
    return BleRecord(
        characteristic="2B36",
        device_class=inner.device_class,
        measurements=inner.measurements,
        timestamp=inner.timestamp,
        from_storage=True,
        sequence=sequence,
        extra=extra,
        reportable=inner.reportable,
        not_reported=inner.not_reported,
        raw=bytes(data),
    )


# --------------------------------------------------------------------------------------------- thermometer


# codes.md §3: BLE temperature type -> (metric key, OBX-20 site or None, description)
TEMPERATURE_TYPES: dict[int, tuple[str, str | None, str]] = {
    1: ("body_temperature_axillary", "422543003^Structure of axillary fossa^SCT", "armpit"),
    2: ("body_temperature", None, "body (general)"),
    3: ("body_temperature_ear", "117590005^Ear structure^SCT", "ear"),
    4: ("body_temperature", "7569003^Finger structure^SCT", "finger"),
    5: ("body_temperature", None, "gastro-intestinal tract"),
    6: ("body_temperature_oral", "74262004^Oral cavity structure^SCT", "mouth"),
    7: ("body_temperature_rectal", "34402009^Rectum structure^SCT", "rectum"),
    8: ("body_temperature", "29707007^Toe structure^SCT", "toe"),
    9: ("body_temperature_tympanic", "42859004^Tympanic membrane structure^SCT", "tympanum"),
}


def temperature_type_name(value: int) -> str:
    entry = TEMPERATURE_TYPES.get(value)
    return entry[2] if entry else f"unknown type {value}"


def decode_temperature(
    data: bytes, default_type: int | None = None, default_site: str | None = None
) -> BleRecord:
    """Temperature Measurement 0x2A1C. The type byte (or ``default_type``, e.g. read from 0x2A1D) selects
    the metric key and OBX-20 site (codes.md §3); without a type, ``default_site`` (configured) is used."""
    if not data:
        raise TruncatedError("temperature measurement: empty payload")
    flags = data[0]
    length = 5 + 7 * bool(flags & 0x02) + bool(flags & 0x04)
    _need(data, length, "temperature measurement")
    temperature = float_from_bytes(data, 1)
    pos = 5
    extra: dict[str, str] = {}
    timestamp, pos = _time_stamp(data, pos, flags & 0x02)
    kind = default_type
    if flags & 0x04:
        kind = data[pos]
        pos += 1
    _trailing(data, pos, extra)
    metric, site = "body_temperature", default_site
    if kind is not None:
        extra["temperature_type"] = temperature_type_name(kind)
        if kind in TEMPERATURE_TYPES:
            metric, site, _ = TEMPERATURE_TYPES[kind]
    unit = "[degF]" if flags & 0x01 else "Cel"
    measurements = [_measure(metric, temperature, unit, site=site)]
    return _record("2A1C", DeviceClass.THERMOMETER, measurements, data, timestamp=timestamp, extra=extra)


def decode_temperature_type(data: bytes) -> int:
    """Temperature Type 0x2A1D (u8)."""
    _need(data, 1, "temperature type")
    return data[0]


# --------------------------------------------------------------------------------------------- scales

_KG_STEP = Decimal("0.005")
_LB_STEP = Decimal("0.01")


def _body_weight(raw: int, imperial: bool) -> Measurement:
    return _scaled("body_weight", raw, _LB_STEP if imperial else _KG_STEP, "[lb_av]" if imperial else "kg")


def _body_height(raw: int, imperial: bool) -> Measurement:
    return _scaled(
        "body_height", raw, Decimal("0.1") if imperial else Decimal("0.001"), "[in_i]" if imperial else "m"
    )


def decode_weight(data: bytes) -> BleRecord:
    """Weight Measurement 0x2A9D → body_weight (kg or [lb_av]); with flag bit 3 also BMI and height."""
    if not data:
        raise TruncatedError("weight measurement: empty payload")
    flags = data[0]
    imperial = bool(flags & 0x01)
    length = 3 + 7 * bool(flags & 0x02) + bool(flags & 0x04) + 4 * bool(flags & 0x08)
    _need(data, length, "weight measurement")
    measurements = [_body_weight(_u16(data, 1), imperial)]
    pos = 3
    extra: dict[str, str] = {}
    timestamp, pos = _time_stamp(data, pos, flags & 0x02)
    if flags & 0x04:
        extra["user_id"] = _user_id(data[pos])
        pos += 1
    if flags & 0x08:
        measurements.append(_scaled("bmi", _u16(data, pos), Decimal("0.1"), "kg/m2", method="ACALC"))
        measurements.append(_body_height(_u16(data, pos + 2), imperial))
        pos += 4
    _trailing(data, pos, extra)
    return _record(
        "2A9D",
        DeviceClass.SCALE,
        measurements,
        data,
        timestamp=timestamp,
        extra=extra,
        not_reported="failed measurement: no weight" if measurements[0].value is None else None,
    )


# bit -> (name, size) of the optional Body Composition fields after the mandatory body fat %
_BC_FIELDS: tuple[tuple[int, str, int], ...] = (
    (1, "time_stamp", 7),
    (2, "user_id", 1),
    (3, "basal_metabolism_kJ", 2),
    (4, "muscle_percentage", 2),
    (5, "muscle_mass", 2),
    (6, "fat_free_mass", 2),
    (7, "soft_lean_mass", 2),
    (8, "body_water_mass", 2),
    (9, "impedance_ohm", 2),
    (10, "weight", 2),
    (11, "height", 2),
)


def decode_body_composition(data: bytes) -> BleRecord:
    """Body Composition Measurement 0x2A9C → body_fat_pct, body_weight, body_height (others in ``extra``)."""
    _need(data, 4, "body composition measurement")
    flags = _u16(data, 0)
    imperial = bool(flags & 0x01)
    length = 4 + sum(size for bit, _, size in _BC_FIELDS if flags & (1 << bit))
    _need(data, length, "body composition measurement")
    mass_step, mass_unit = (_LB_STEP, "lb") if imperial else (_KG_STEP, "kg")
    measurements = [_scaled("body_fat_pct", _u16(data, 2), Decimal("0.1"), "%")]
    extra: dict[str, str] = {}
    timestamp = None
    pos = 4
    for bit, name, size in _BC_FIELDS:
        if not flags & (1 << bit):
            continue
        if name == "time_stamp":
            timestamp = decode_date_time(data, pos)
        elif name == "user_id":
            extra[name] = _user_id(data[pos])
        else:
            raw = _u16(data, pos)
            if name == "weight":
                measurements.append(_body_weight(raw, imperial))
            elif name == "height":
                measurements.append(_body_height(raw, imperial))
            elif raw == 0xFFFF:
                extra[name] = "unsuccessful"
            elif name == "basal_metabolism_kJ":
                extra[name] = str(raw)
            elif name in ("muscle_percentage", "impedance_ohm"):
                extra[name] = str(raw * Decimal("0.1"))
            else:
                extra[name] = f"{raw * mass_step} {mass_unit}"
        pos += size
    if flags & (1 << 12):
        extra["multiple_packet"] = "true"
    _trailing(data, pos, extra)
    return _record("2A9C", DeviceClass.BODY_COMPOSITION, measurements, data, timestamp=timestamp, extra=extra)


# --------------------------------------------------------------------------------------------- pulse oximetry

PLX_MEASUREMENT_STATUS = {
    5: "measurement_ongoing",
    6: "early_estimated_data",
    7: "validated_data",
    8: "fully_qualified_data",
    9: "data_from_measurement_storage",
    10: "data_for_demonstration",
    11: "data_for_testing",
    12: "calibration_ongoing",
    13: "measurement_unavailable",
    14: "questionable_measurement",
    15: "invalid_measurement",
}
PLX_DEVICE_STATUS = {
    0: "extended_display_update_ongoing",
    1: "equipment_malfunction",
    2: "signal_processing_irregularity",
    3: "inadequate_signal",
    4: "poor_signal",
    5: "low_perfusion",
    6: "erratic_signal",
    7: "non_pulsatile_signal",
    8: "questionable_pulse",
    9: "signal_analysis_ongoing",
    10: "sensor_interference",
    11: "sensor_unconnected_to_user",
    12: "unknown_sensor_connected",
    13: "sensor_displaced",
    14: "sensor_malfunctioning",
    15: "sensor_disconnected",
}


def _plx_policy(
    status: int | None, device_status: int | None
) -> tuple[str | None, tuple[Flag, ...], tuple[ReadingFlag, ...]]:
    """The devices.md §5.1 filtering rule: (reason not to report, measurement flags, reading flags)."""
    flags: list[Flag] = []
    reading_flags: list[ReadingFlag] = []
    reason = None
    if device_status is not None and device_status & (1 << 15):
        reason = "sensor disconnected"
        reading_flags.append(ReadingFlag.SENSOR_OFF)
    if status is not None:
        for bit, why in ((13, "measurement unavailable"), (15, "invalid measurement")):
            if status & (1 << bit):
                reason = reason or why
        for bit, why in ((10, "data for demonstration"), (11, "data for testing")):
            if status & (1 << bit):
                reason = reason or why
                reading_flags.append(ReadingFlag.TEST_DATA)
        if status & (1 << 5):
            reason = reason or "measurement ongoing"
            flags.append(Flag.BUSY)
        if status & (1 << 14):
            flags.append(Flag.QUESTIONABLE)
        if status & (1 << 6):
            flags.append(Flag.EARLY)
        if status & (1 << 12):
            flags.append(Flag.CALIBRATING)
    return reason, tuple(flags), tuple(reading_flags)


def _plx_record(
    char: str,
    data: bytes,
    pos: int,
    status_bit: int,
    extra: dict[str, str],
    timestamp: DateTimeValue | None = None,
    clock_not_set: bool = False,
) -> BleRecord:
    """What both PLX measurements share: SpO2 and pulse rate at bytes 1-4, then from ``pos`` the optional
    measurement status (u16), device and sensor status (u24) and pulse amplitude index (SFLOAT), announced
    by flag ``status_bit`` and the two bits above it."""
    flags = data[0]
    spo2, pr = sfloat_from_bytes(data, 1), sfloat_from_bytes(data, 3)
    status = device_status = None
    pai: Number | Special | None = None
    if flags & status_bit:
        status = _u16(data, pos)
        pos += 2
    if flags & (status_bit << 1):
        device_status = int.from_bytes(data[pos : pos + 3], "little")
        pos += 3
    if flags & (status_bit << 2):
        pai = sfloat_from_bytes(data, pos)
        pos += 2
    reason, measurement_flags, reading_flags = _plx_policy(status, device_status)
    if status is not None:
        extra["measurement_status"] = _bits(status, PLX_MEASUREMENT_STATUS)
    if device_status is not None:
        extra["device_status"] = _bits(device_status, PLX_DEVICE_STATUS)
    measurements = [
        _measure("spo2", spo2, "%", measurement_flags),
        _measure("pulse_rate_oximeter", pr, "/min", measurement_flags),
    ]
    if pai is not None:
        measurements.append(_measure("pulse_amplitude_index", pai, "%", measurement_flags))
    _trailing(data, pos, extra)
    return _record(
        char,
        DeviceClass.PULSE_OXIMETER,
        measurements,
        data,
        timestamp=timestamp,
        clock_not_set=clock_not_set,
        from_storage=status is not None and bool(status & (1 << 9)),
        flags=(ReadingFlag.CLOCK_UNSET, *reading_flags) if clock_not_set else reading_flags,
        extra=extra,
        not_reported=reason,
    )


def decode_plx_spot_check(data: bytes) -> BleRecord:
    """PLX Spot-Check Measurement 0x2A5E."""
    if not data:
        raise TruncatedError("PLX spot-check: empty payload")
    flags = data[0]
    length = (
        5 + 7 * bool(flags & 0x01) + 2 * bool(flags & 0x02) + 3 * bool(flags & 0x04) + 2 * bool(flags & 0x08)
    )
    _need(data, length, "PLX spot-check")
    pos = 5
    timestamp, pos = _time_stamp(data, pos, flags & 0x01)
    return _plx_record("2A5E", data, pos, 0x02, {}, timestamp, clock_not_set=bool(flags & 0x10))


def decode_plx_continuous(data: bytes) -> BleRecord:
    """PLX Continuous Measurement 0x2A5F (fast/slow pairs kept in ``extra``)."""
    if not data:
        raise TruncatedError("PLX continuous: empty payload")
    flags = data[0]
    length = (
        5
        + 4 * bool(flags & 0x01)
        + 4 * bool(flags & 0x02)
        + 2 * bool(flags & 0x04)
        + 3 * bool(flags & 0x08)
        + 2 * bool(flags & 0x10)
    )
    _need(data, length, "PLX continuous")
    pos = 5
    extra: dict[str, str] = {}
    for bit, name in ((0x01, "fast"), (0x02, "slow")):
        if flags & bit:
            for offset, label in ((0, "spo2"), (2, "pulse_rate")):
                val, why = _value(sfloat_from_bytes(data, pos + offset))
                extra[f"{label}_{name}"] = str(val) if val is not None else str(why)
            pos += 4
    return _plx_record("2A5F", data, pos, 0x04, extra)


@dataclass(frozen=True)
class PlxFeatures:
    """PLX Features 0x2A60."""

    features: int
    measurement_status_support: int | None
    device_status_support: int | None

    @property
    def stored_records(self) -> bool:
        """Spot-check measurement storage (retrieved with RACP)."""
        return bool(self.features & 0x04)


def decode_plx_features(data: bytes) -> PlxFeatures:
    _need(data, 2, "PLX features")
    features = _u16(data, 0)
    length = 2 + 2 * bool(features & 0x01) + 3 * bool(features & 0x02)
    _need(data, length, "PLX features")
    pos = 2
    status = device = None
    if features & 0x01:
        status = _u16(data, pos)
        pos += 2
    if features & 0x02:
        device = int.from_bytes(data[pos : pos + 3], "little")
    return PlxFeatures(features, status, device)


def decode_nonin_df19(data: bytes) -> BleRecord:
    """Nonin 3230 oximetry measurement (format DF19, 10 bytes) [X]: SpO2 u8 at byte 7, pulse rate u16
    big-endian at bytes 8-9, counter u16 big-endian at bytes 5-6. 127 / 511 = missing [M]."""
    _need(data, 10, "Nonin oximetry measurement")
    spo2_raw = data[7]
    pr_raw = int.from_bytes(data[8:10], "big")
    extra: dict[str, str] = {"counter": str(int.from_bytes(data[5:7], "big"))}
    _trailing(data, 10, extra)
    spo2 = (
        absent("spo2", "%", "missing") if spo2_raw == 127 or spo2_raw > 100 else value("spo2", spo2_raw, "%")
    )
    pr = (
        absent("pulse_rate_oximeter", "/min", "missing")
        if pr_raw == 511
        else value("pulse_rate_oximeter", pr_raw, "/min")
    )
    return _record(
        NONIN_SHORT,
        DeviceClass.PULSE_OXIMETER,
        [spo2, pr],
        data,
        flags=(ReadingFlag.SENSOR_OFF,) if _no_values((spo2, pr)) else (),
        extra=extra,
    )


NONIN_SHORT = "0AAD7EA0"

# --------------------------------------------------------------------------------------------- heart rate

_CONTACT = {0: "not_supported", 1: "not_supported", 2: "not_detected", 3: "detected"}


@dataclass(frozen=True)
class HeartRate:
    """Heart Rate Measurement 0x2A37 as sent."""

    heart_rate: int
    sensor_contact: str
    energy_expended_kj: int | None
    rr_intervals: tuple[int, ...]  # units of 1/1024 s


def decode_heart_rate_fields(data: bytes) -> tuple[HeartRate, int]:
    if not data:
        raise TruncatedError("heart rate measurement: empty payload")
    flags = data[0]
    wide = bool(flags & 0x01)
    length = 1 + (2 if wide else 1) + 2 * bool(flags & 0x08)
    _need(data, length, "heart rate measurement")
    rate = _u16(data, 1) if wide else data[1]
    pos = 3 if wide else 2
    energy = None
    if flags & 0x08:
        energy = _u16(data, pos)
        pos += 2
    rr: list[int] = []
    if flags & 0x10:
        if len(data) - pos < 2:
            raise TruncatedError("heart rate measurement: RR-interval flag without intervals", bytes(data))
        while len(data) - pos >= 2:
            rr.append(_u16(data, pos))
            pos += 2
    return HeartRate(rate, _CONTACT[(flags >> 1) & 0x3], energy, tuple(rr)), pos


def decode_heart_rate(data: bytes, metric: str = "ecg_heart_rate") -> BleRecord:
    """Heart Rate Measurement 0x2A37. With sensor contact supported but not detected the value is not a
    measurement of the patient: no value, reason ``no sensor contact``."""
    hr, pos = decode_heart_rate_fields(data)
    extra: dict[str, str] = {"sensor_contact": hr.sensor_contact}
    if hr.energy_expended_kj is not None:
        extra["energy_expended_kJ"] = str(hr.energy_expended_kj)
    if hr.rr_intervals:
        extra["rr_intervals_1_1024_s"] = ",".join(str(v) for v in hr.rr_intervals)
    _trailing(data, pos, extra)
    if hr.sensor_contact == "not_detected":
        measurement = absent(metric, "/min", "no sensor contact")
        flags: tuple[ReadingFlag, ...] = (ReadingFlag.SENSOR_OFF,)
    else:
        measurement = value(metric, hr.heart_rate, "/min")
        flags = ()
    return _record("2A37", DeviceClass.HEART_RATE, [measurement], data, flags=flags, extra=extra)


# --------------------------------------------------------------------------------------------- RACP


class RacpOpcode:
    REPORT_STORED_RECORDS = 1
    DELETE_STORED_RECORDS = 2
    ABORT = 3
    REPORT_NUMBER = 4
    NUMBER_RESPONSE = 5
    RESPONSE_CODE = 6


class RacpOperator:
    NULL = 0
    ALL = 1
    LESS_OR_EQUAL = 2
    GREATER_OR_EQUAL = 3
    RANGE = 4
    FIRST = 5
    LAST = 6


RACP_RESPONSES = {
    1: "success",
    2: "op code not supported",
    3: "invalid operator",
    4: "operator not supported",
    5: "invalid operand",
    6: "no records found",
    7: "abort unsuccessful",
    8: "procedure not completed",
    9: "operand not supported",
}


@dataclass(frozen=True)
class RacpCount:
    """A "number of stored records" response (opcode 5)."""

    count: int

    @property
    def text(self) -> str:
        return f"{self.count} stored records"


@dataclass(frozen=True)
class RacpResult:
    """A response code (opcode 6): how the request with opcode ``request_opcode`` ended."""

    request_opcode: int
    response: int

    @property
    def success(self) -> bool:
        return self.response == 1

    @property
    def no_records(self) -> bool:
        return self.response == 6

    @property
    def text(self) -> str:
        return f"request {self.request_opcode}: {RACP_RESPONSES.get(self.response, 'reserved')}"


def decode_racp(data: bytes) -> RacpCount | RacpResult:
    """RACP responses. Counts of 1, 2 or 4 bytes are accepted (Nordic's leniency); 3 bytes are not."""
    _need(data, 2, "RACP response")
    opcode, operator = data[0], data[1]
    if opcode not in (RacpOpcode.NUMBER_RESPONSE, RacpOpcode.RESPONSE_CODE):
        raise UnsupportedError(f"RACP opcode {opcode} is not a response", bytes(data))
    if operator != RacpOperator.NULL:
        raise DecodeError(f"RACP response operator must be 0 (null), got {operator}", bytes(data))
    operand = data[2:]
    if opcode == RacpOpcode.NUMBER_RESPONSE:
        if len(operand) not in (1, 2, 4):
            raise DecodeError(f"RACP record count of {len(operand)} bytes", bytes(data))
        return RacpCount(int.from_bytes(operand, "little"))
    if len(operand) < 2:
        raise TruncatedError("RACP response code needs request opcode and value", bytes(data))
    return RacpResult(request_opcode=operand[0], response=operand[1])


def racp_request_all() -> bytes:
    return bytes([RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.ALL])


def racp_request_count() -> bytes:
    return bytes([RacpOpcode.REPORT_NUMBER, RacpOperator.ALL])


def racp_request_since(sequence: int) -> bytes:
    """Records with sequence number ≥ ``sequence`` (filter type 0x01 = sequence number [M])."""
    return bytes([RacpOpcode.REPORT_STORED_RECORDS, RacpOperator.GREATER_OR_EQUAL, 0x01]) + (
        sequence & 0xFFFF
    ).to_bytes(2, "little")


# ------------------------------------------------------------------------------------ device information


def decode_dis_string(data: bytes) -> str:
    """DIS strings: UTF-8, devices pad them with NULs and spaces."""
    return bytes(data).decode("utf-8", errors="replace").rstrip("\x00 ").strip()


def system_id_to_eui64(data: bytes) -> str:
    """System ID 0x2A23 (8 bytes LE: 40-bit manufacturer id, then 24-bit OUI) → EUI-64 as 16 hex digits,
    OUI first. Byte order [M]: confirm against the device's public address on a real device."""
    if len(data) != 8:
        raise DecodeError(f"System ID must be 8 bytes, got {len(data)}", bytes(data))
    return bytes(reversed(data)).hex().upper()


@dataclass(frozen=True)
class PnpId:
    vendor_id_source: int
    vendor_id: int
    product_id: int
    product_version: int


def decode_pnp_id(data: bytes) -> PnpId:
    _need(data, 7, "PnP ID")
    return PnpId(data[0], _u16(data, 1), _u16(data, 3), _u16(data, 5))


def decode_battery_level(data: bytes) -> int:
    _need(data, 1, "battery level")
    if data[0] > 100:
        raise DecodeError(f"battery level {data[0]} % out of range", bytes(data))
    return data[0]


# --------------------------------------------------------------------------------------------- to events


FUTURE_TOLERANCE = timedelta(days=1)


def device_time_policy(
    record: BleRecord,
    ctx: DecodeContext,
    received_at: datetime,
    *,
    stored: bool = False,
    offset: timedelta | None = None,
) -> tuple[datetime, datetime | None, tuple[ReadingFlag, ...]]:
    """(observed_at, device_time, flags) for a record.

    * live record with a plausible device clock: observed_at = device time (the normaliser applies the
      skew rule);
    * stored record: flagged STORED_RECORD; with a measured ``offset`` (host - device clock) observed_at
      is the device time corrected by it and the reading is flagged CLOCK_CORRECTED;
    * no, unset or implausible device clock (before 2000, or more than a day ahead of the host):
      CLOCK_UNSET and observed_at = the host receive time. A stored record whose clock can be corrected
      by a measured offset is not "unset".
    """
    flags: list[ReadingFlag] = [f for f in record.flags if f is not ReadingFlag.CLOCK_UNSET]
    device_time = record.timestamp.to_datetime(ctx.tz) if record.timestamp is not None else None
    stored = stored or record.from_storage
    if stored:
        flags.append(ReadingFlag.STORED_RECORD)
    if record.clock_not_set and offset is None:
        flags.append(ReadingFlag.CLOCK_UNSET)
        return received_at, device_time, tuple(flags)
    if device_time is not None and stored and offset is not None:
        flags.append(ReadingFlag.CLOCK_CORRECTED)
        return device_time + offset, device_time, tuple(flags)
    plausible = record.timestamp.plausible(ctx.tz) if record.timestamp is not None else None
    if plausible is not None and plausible > received_at + FUTURE_TOLERANCE:
        plausible = None  # a clock running days ahead was never set right
    if plausible is None or record.clock_not_set:
        if record.timestamp is not None:
            flags.append(ReadingFlag.CLOCK_UNSET)
        return received_at, device_time, tuple(flags)
    return plausible, device_time, tuple(flags)


def record_to_event(
    record: BleRecord,
    ctx: DecodeContext,
    received_at: datetime | None = None,
    *,
    identity: DeviceIdentity | None = None,
    stored: bool = False,
    offset: timedelta | None = None,
) -> DeviceEvent:
    """A Reading for a reportable record; a DeviceStatusEvent note (no values) for one that must not be
    reported (progress, failed, filtered)."""
    if not record.reportable:
        return DeviceStatusEvent(note=f"{record.characteristic}: not reported ({record.not_reported})")
    received = received_at if received_at is not None else ctx.now()
    observed, device_time, flags = device_time_policy(record, ctx, received, stored=stored, offset=offset)
    extra = dict(record.extra)
    if record.timestamp is not None and device_time is None:
        extra["device_clock"] = record.timestamp.key()  # partial or impossible: kept for audit
    return Reading(
        device=identity or ctx.device,
        device_class=record.device_class,
        measurements=record.measurements,
        observed_at=observed,
        received_at=received,
        device_time=device_time,
        flags=flags,
        extra=extra,
        sequence=record.sequence,
        raw=record.raw,
    )
