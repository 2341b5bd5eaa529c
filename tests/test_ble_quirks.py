"""Issue #12 item 5: per-model quirks for BLE cuffs. The Beurer BM85 family sends the pulse rate and the
measurement status big-endian and always a user byte; decoded by the profile as written, the pulse was
dropped (an impossible SFLOAT) and a "body movement" status was invented from the user byte. A record known
to be malformed never reports status bits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest

from tests.fakebluez.gatt import and_ua651ble, u16
from tests.kit import FakeClock, FakeRuntime, MemoryState
from vitals_agent.agent.pipeline.normalize import normalise
from vitals_agent.drivers.base import DecodeContext
from vitals_agent.drivers.ble import uuids as U
from vitals_agent.drivers.ble.decoders import decode_blood_pressure, decode_blood_pressure_record
from vitals_agent.drivers.ble.drivers import BleOptions, BloodPressureDriver
from vitals_agent.drivers.ble.quirks import BEURER_BM85, bp_quirks
from vitals_agent.drivers.ble.transport import BleTransport
from vitals_agent.errors import TransportError
from vitals_agent.models import DeviceIdentity, Reading

if TYPE_CHECKING:  # the fake BlueZ needs dbus-fast (Linux); the decoder tests here run on Windows too
    from tests.fakebluez.server import FakeBlueZ

# Blood Pressure Measurement 0x2A35 as a BM85 sends it (issue #12): flags 0x14 (pulse rate and measurement
# status present; the user-id flag 0x08 NOT set), systolic 128, diastolic 84, MAP 99 mm[Hg] as SFLOAT
# little-endian (BLS 1.0 3.1), then the pulse rate 72 as SFLOAT big-endian (00 48), a user byte (01) the
# flags do not announce, and the status 0x0004 (irregular pulse) big-endian (00 04).
BM85 = bytes.fromhex("148000540063000048010004")
# The same measurement as the profile writes it (flags 0x1C: user id announced; everything little-endian).
STANDARD = bytes.fromhex("1C8000540063004800010400")

CTX = DecodeContext(device=DeviceIdentity(id="cuff"), now=lambda: datetime(2026, 3, 11, 14, 0, tzinfo=UTC))
SKEW = timedelta(seconds=120)
DIS = {U.MANUFACTURER_NAME: b"Beurer\x00", U.MODEL_NUMBER: b"BM85"}


def values(record_measurements: tuple[object, ...]) -> dict[str, Decimal | None]:
    return {m.metric: m.value for m in record_measurements}  # type: ignore[attr-defined]


def test_as_written_the_bm85_record_is_malformed_and_reports_no_status() -> None:
    record = decode_blood_pressure(BM85)
    assert "measurement_status" not in record.extra and "pulse_rate_range" not in record.extra
    assert record.extra["malformed"] == "12 bytes where the flags announce 11"
    # read little-endian the pulse SFLOAT 0x4800 is -2048 x 10^4: kept out of the chart by the floor
    assert values(record.measurements)["pulse_rate"] == Decimal(-20480000)
    reading = BloodPressureDriver().decode_chunks([BM85], CTX)[0]
    assert isinstance(reading, Reading)
    out = normalise(reading, max_clock_skew=SKEW)
    assert set(out.values()) == {"bp_systolic", "bp_diastolic", "bp_mean"}


def test_with_the_bm85_quirks_the_pulse_status_and_user_are_read() -> None:
    record = decode_blood_pressure(BM85, BEURER_BM85)
    assert values(record.measurements) == {
        "bp_systolic": Decimal(128),
        "bp_diastolic": Decimal(84),
        "bp_mean": Decimal(99),
        "pulse_rate": Decimal(72),
    }
    assert record.extra == {
        "user_id": "1",
        "measurement_status": "irregular_pulse",
        "pulse_rate_range": "within_range",
        "quirks": "beurer-bm85",
    }
    # ... and they equal what a profile-conformant cuff sends for the same measurement
    standard = decode_blood_pressure(STANDARD)
    assert standard.measurements == record.measurements
    assert {k: v for k, v in record.extra.items() if k != "quirks"} == standard.extra


def test_quirks_are_matched_from_device_information_or_the_model_key() -> None:
    assert bp_quirks("Beurer", "BM85") is BEURER_BM85
    assert bp_quirks(None, "BM 85") is BEURER_BM85  # configured model = "BM 85", no Device Information
    assert bp_quirks("BEURER GmbH", "bm-85") is BEURER_BM85
    assert bp_quirks("Acme", "BM85") is None  # another maker's model number
    assert bp_quirks("Beurer", "BM850") is None and bp_quirks("Beurer", "BM54") is None
    assert bp_quirks("Beurer", None) is None

    from_dis = BloodPressureDriver().decode_measurement(U.BLOOD_PRESSURE_MEASUREMENT, BM85, DIS)
    assert values(from_dis.measurements)["pulse_rate"] == Decimal(72)
    configured = BloodPressureDriver(BleOptions.model_construct(model="BM85"))
    from_key = configured.decode_measurement(U.BLOOD_PRESSURE_MEASUREMENT, BM85, {})
    assert values(from_key.measurements)["pulse_rate"] == Decimal(72)
    other = BloodPressureDriver().decode_measurement(
        U.BLOOD_PRESSURE_MEASUREMENT,
        STANDARD,
        {U.MANUFACTURER_NAME: b"A&D Medical", U.MODEL_NUMBER: b"UA-651"},
    )
    assert values(other.measurements)["pulse_rate"] == Decimal(72) and "quirks" not in other.extra


def test_a_quirked_record_of_the_wrong_length_is_malformed_too() -> None:
    record = decode_blood_pressure(BM85 + b"\x00", BEURER_BM85)
    assert record.extra["malformed"] == "13 bytes where the flags announce 12"
    assert "measurement_status" not in record.extra


def test_stored_records_get_the_quirks() -> None:
    # Blood Pressure Record 0x2B36: header 0x03 (first and last segment), sequence 7, recorded UUID 0x2A35
    record = decode_blood_pressure_record(bytes.fromhex("030700352A") + BM85, BEURER_BM85)
    assert values(record.measurements)["pulse_rate"] == Decimal(72)
    assert record.sequence == 7 and record.extra["measurement_status"] == "irregular_pulse"


@pytest.mark.parametrize("model", ["BM85", None])
async def test_bm85_through_bleak_and_the_fake_bluez(fake_bluez: FakeBlueZ, model: str | None) -> None:
    """End to end: the cuff says "Beurer"/"BM85" in Device Information (or, model=None in the DIS and the
    config key given instead) and indicates its record; the reading has the pulse and the real status."""
    from tests.fakebluez.scenarios import indicate_then_leave

    spec = and_ua651ble()
    spec.set_value(u16(0x2A29), b"Beurer")
    spec.set_value(u16(0x2A24), model.encode() if model else b"")
    cuff = fake_bluez.add(spec)
    options = BleOptions(
        address=spec.address, scan_seconds=5, connect_seconds=5, model=None if model else "BM85"
    )
    runtime = FakeRuntime(BloodPressureDriver(options), state=MemoryState(), now=FakeClock(datetime.now(UTC)))
    task = asyncio.ensure_future(BleTransport(runtime).run())
    await indicate_then_leave(cuff, [BM85], u16(0x2A35), None)
    with pytest.raises(TransportError, match="lost"):
        await asyncio.wait_for(task, 10)
    [reading] = runtime.readings
    assert reading.values()["pulse_rate"] == Decimal(72)
    assert (
        reading.extra["measurement_status"] == "irregular_pulse" and reading.extra["quirks"] == "beurer-bm85"
    )
