"""Characteristic payloads for fake peripherals, built with the project's encoders (devices.md layouts)."""

from __future__ import annotations

from datetime import datetime

from vitals_agent.drivers.ble.clock import encode_date_time
from vitals_agent.drivers.ble.ieee11073 import Number, Special, encode_sfloat

NAN = Special.NAN


def _sf(value: int | Special) -> bytes:
    return encode_sfloat(value if isinstance(value, Special) else Number(value, 0))


def blood_pressure(
    systolic: int | Special,
    diastolic: int | Special,
    mean: int | Special,
    pulse: int | Special,
    at: datetime,
    status: int = 0,
) -> bytes:
    """A&D UA-651BLE style Blood Pressure Measurement: flags 0x16 (time stamp, pulse, status), 18 bytes.
    ``blood_pressure(NAN, NAN, NAN, NAN, at)`` is a failed measurement as the cuff stores it."""
    return (
        b"\x16"
        + _sf(systolic)
        + _sf(diastolic)
        + _sf(mean)
        + encode_date_time(at)
        + _sf(pulse)
        + status.to_bytes(2, "little")
    )
