"""Sample input for every driver, decoded by the driver's own decoder (no I/O).

``vitals-agent interface-spec`` builds its sample messages from these readings, and the tests walk them
(one device identity form for every driver, issue 17). The bytes come from the drivers' simulators
(serial devices: the same bytes ``vitals-agent simulate`` plays) or are built with the project's encoders
from the characteristic layouts in devices.md (BLE: Device Information first — manufacturer, model, serial
number and System ID, so the reading carries the identity a real device states). EKG carts: a decoded
file (``EcgDecoded``) turned into a Reading by the same code the file decoders use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

from vitals_agent.drivers.base import DecodeContext, Driver, all_drivers
from vitals_agent.models import DeviceIdentity, DeviceStatusEvent, Reading

SAMPLE_TIME = datetime(2025, 3, 14, 15, 30, 0, tzinfo=UTC)
# A public-address style EUI-64 (OUI 00:09:1F, A&D) as a BLE System ID states it (little-endian)
SAMPLE_EUI64 = "00091FFFFE3D4E5F"


@dataclass(frozen=True)
class SampleInput:
    """One decode call: ``chunks`` (a byte stream, or one BLE payload each) of ``characteristic``."""

    chunks: tuple[bytes, ...]
    characteristic: str | None = None


def _dis(manufacturer: str, model: str, serial: str, eui64: str | None) -> list[SampleInput]:
    from vitals_agent.drivers.ble import uuids as U

    out = [
        SampleInput((manufacturer.encode(),), U.MANUFACTURER_NAME),
        SampleInput((model.encode(),), U.MODEL_NUMBER),
        SampleInput((serial.encode(),), U.SERIAL_NUMBER),
    ]
    if eui64 is not None:
        out.append(SampleInput((bytes(reversed(bytes.fromhex(eui64))),), U.SYSTEM_ID))
    return out


def _ble_inputs(name: str, local: datetime) -> list[SampleInput]:
    from vitals_agent.drivers.ble import uuids as U
    from vitals_agent.drivers.ble.clock import encode_date_time
    from vitals_agent.drivers.ble.ieee11073 import Number, encode_float, encode_sfloat

    stamp = encode_date_time(local)

    def sf(mantissa: int, exponent: int = 0) -> bytes:
        return encode_sfloat(Number(mantissa, exponent))

    if name == "ble-blood-pressure":
        bp = b"\x16" + sf(122) + sf(78) + sf(93) + stamp + sf(68) + b"\x00\x00"
        return [*_dis("A&D Medical", "UA-651BLE", "5110800123", SAMPLE_EUI64), SampleInput((bp,), None)]
    if name == "ble-thermometer":
        temp = b"\x06" + encode_float(Number(3682, -2)) + stamp + b"\x06"  # Cel, time stamp, type: mouth
        return [*_dis("A&D Medical", "UT-201BLE", "5120400456", SAMPLE_EUI64), SampleInput((temp,), None)]
    if name == "ble-weight-scale":
        weight = b"\x02" + (14100).to_bytes(2, "little") + stamp  # 70.5 kg (0.005 kg steps), time stamp
        return [*_dis("A&D Medical", "UC-352BLE", "5130900789", SAMPLE_EUI64), SampleInput((weight,), None)]
    if name == "ble-body-composition":
        # flags 0x0202: time stamp, weight; body fat 23.4 %, weight 70.5 kg
        body = (0x0202).to_bytes(2, "little") + (234).to_bytes(2, "little") + stamp
        body += (14100).to_bytes(2, "little")
        return [*_dis("Omron", "HBF-222T", "2040100321", SAMPLE_EUI64), SampleInput((body,), None)]
    if name == "ble-pulse-oximeter":
        spot = b"\x01" + sf(97) + sf(72) + stamp  # time stamp present
        return [
            *_dis("Masimo", "MightySat", "1230045678", SAMPLE_EUI64),
            SampleInput((spot,), U.PLX_SPOT_CHECK),
        ]
    if name == "nonin-3230":
        df19 = bytes([0x0A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2A, 97, 0x00, 72])
        return [*_dis("Nonin Medical", "3230", "502123456", None), SampleInput((df19,), U.NONIN_MEASUREMENT)]
    if name == "ble-heart-rate":
        return [*_dis("Polar", "H10", "C8A1B2C3", SAMPLE_EUI64), SampleInput((b"\x06\x48",), None)]
    return []


def _serial_inputs(name: str, local: datetime) -> list[SampleInput]:
    if name == "masimo-ascii":
        from vitals_agent.drivers.masimo import Rad8Simulator

        sim = Rad8Simulator(seed=1, episode_every=0)
        return [SampleInput(tuple(sim.next_line(local) for _ in range(3)))]
    if name in ("nonin-df2", "nonin-df8"):
        from vitals_agent.drivers.nonin import NoninSimulator

        nonin = NoninSimulator(fmt=name.removeprefix("nonin-"))
        return [SampleInput(tuple(nonin.periodic() for _ in range(6)))]
    if name == "scale-ascii":
        from vitals_agent.drivers.scale_ascii import ScaleSimulator

        scale = ScaleSimulator(weights=("70.50",))
        return [SampleInput(tuple(scale.periodic() for _ in range(len(scale.script))))]
    if name == "health-o-meter":
        from vitals_agent.drivers.health_o_meter import HealthOMeterSimulator

        hom = HealthOMeterSimulator()
        return [SampleInput(tuple(hom.on_request(b"Q") for _ in range(4)))]
    if name == "tanita":
        from vitals_agent.drivers.tanita import TanitaSimulator

        return [SampleInput((TanitaSimulator().periodic(),))]
    if name == "suntech-advantage":
        from vitals_agent.drivers.suntech import GET_BP_DATA, SunTechSimulator

        return [SampleInput((SunTechSimulator(systolic=122, diastolic=78, mean=93).on_request(GET_BP_DATA),))]
    return []


def sample_inputs(driver: str, tz: tzinfo = UTC) -> list[SampleInput]:
    """The sample input of ``driver`` (empty for drivers that make no readings, and for EKG carts: see
    :func:`sample_readings`); device clocks show :data:`SAMPLE_TIME` in ``tz`` (their local time)."""
    local = SAMPLE_TIME.astimezone(tz).replace(tzinfo=None)
    return _ble_inputs(driver, local) or _serial_inputs(driver, local)


def _ecg_reading(driver: Driver[Any], ctx: DecodeContext, local: datetime) -> Reading:
    from vitals_agent.drivers.ecg.common import EcgDecoded, to_reading, with_original

    fmt = {"aecg-xml": "aecg", "philips-xml": "philips-xml"}.get(driver.name, "scp-ecg")
    decoded = EcgDecoded(
        format=fmt,
        values={
            "ecg_heart_rate": Decimal(75),
            "ecg_pr_interval": Decimal(160),
            "ecg_qrs_duration": Decimal(92),
            "ecg_qt_interval": Decimal(400),
            "ecg_qtc_interval": Decimal(447),
        },
        statements=["Sinus rhythm", "Normal ECG"],
        acquired=local,
        manufacturer="Philips" if fmt == "philips-xml" else "Schiller",
        model="PageWriter TC50" if fmt == "philips-xml" else "CARDIOVIT AT-102",
        serial_number="US81234567" if fmt == "philips-xml" else "090.01234",
    )
    original = b"sample EKG file (the cart's original travels as an attachment when attach_original is on)"
    reading = to_reading(decoded, original, ctx)
    media = "application/xml" if fmt != "scp-ecg" else "application/octet-stream"
    return with_original(reading, original, f"sample.{'xml' if fmt != 'scp-ecg' else 'scp'}", media, 1 << 20)


def sample_readings(
    driver: str, device_id: str = "dev-1", *, now: datetime = SAMPLE_TIME, tz: tzinfo = UTC
) -> list[Reading]:
    """Readings ``driver`` decodes from its sample input, with the identity the device states merged in
    (as the agent's device runtime does). Unknown driver: :class:`~vitals_agent.errors.UnknownDriverError`."""
    from vitals_agent.drivers.base import driver_class

    drv = driver_class(driver)()
    ctx = DecodeContext(device=DeviceIdentity(id=device_id), tz=tz, now=lambda: now)
    if drv.device_class.value == "ecg":
        return [_ecg_reading(drv, ctx, now.astimezone(tz).replace(tzinfo=None))]
    identity = ctx.device
    out: list[Reading] = []
    for item in sample_inputs(driver, tz):
        for event in drv.decode_chunks(list(item.chunks), ctx, item.characteristic):
            if isinstance(event, DeviceStatusEvent) and event.identity is not None:
                identity = identity.merged(event.identity)
            elif isinstance(event, Reading):
                identity = identity.merged(event.device)
                out.append(event.with_updates(device=identity))
    return out


def drivers_with_readings() -> Sequence[str]:
    """Every driver of this package that produces readings (the barcode scanner does not; drivers a
    plugin or a test registers have no samples here)."""
    return [
        name
        for name, cls in all_drivers().items()
        if cls.device_class.value != "barcode" and cls.__module__.startswith("vitals_agent.drivers.")
    ]
