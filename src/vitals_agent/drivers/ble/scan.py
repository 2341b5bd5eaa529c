"""``vitals-agent scan``: which Bluetooth health devices are nearby, without connecting to them.

Lists address, name, RSSI and the health services a device advertises, and decodes Omron's manufacturer
data (company 0x020E: per user the latest record sequence number and the number of stored records,
devices.md §2.3) so a technician sees whether a cuff holds readings.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from vitals_agent.drivers.ble import uuids as U
from vitals_agent.errors import DecodeError, TransportError, TruncatedError


@dataclass(frozen=True)
class OmronUser:
    sequence: int  # sequence number of the latest record
    records: int  # number of stored records


@dataclass(frozen=True)
class OmronAdvertisement:
    users: tuple[OmronUser, ...]
    time_not_set: bool
    pairing_mode: bool
    streaming: bool
    standard_services: bool

    def describe(self) -> str:
        parts = [
            f"user {i}: {u.records} records (latest #{u.sequence})" for i, u in enumerate(self.users, start=1)
        ]
        for flag, text in (
            (self.time_not_set, "clock not set"),
            (self.pairing_mode, "pairing mode"),
            (self.streaming, "streaming"),
            (self.standard_services, "standard services mode"),
        ):
            if flag:
                parts.append(text)
        return "; ".join(parts)


def decode_omron_advertisement(data: bytes) -> OmronAdvertisement:
    """Omron manufacturer data after the company id: ``0x01 | flags | per user: seq u16 + count u8``."""
    if len(data) < 2:
        raise TruncatedError("Omron advertisement needs a tag and flags", bytes(data))
    if data[0] != 0x01:
        raise DecodeError(f"Omron advertisement tag 0x{data[0]:02X} is not 0x01", bytes(data))
    flags = data[1]
    count = (flags & 0x03) + 1
    if len(data) < 2 + 3 * count:
        raise TruncatedError(f"Omron advertisement announces {count} users", bytes(data))
    users = tuple(
        OmronUser(int.from_bytes(data[2 + 3 * i : 4 + 3 * i], "little"), data[4 + 3 * i])
        for i in range(count)
    )
    return OmronAdvertisement(
        users=users,
        time_not_set=bool(flags & 0x04),
        pairing_mode=bool(flags & 0x08),
        streaming=bool(flags & 0x10),
        standard_services=bool(flags & 0x20),
    )


@dataclass
class ScanResult:
    address: str
    name: str
    rssi: int
    services: list[str] = field(default_factory=list)  # advertised service UUIDs (lower case)
    omron: OmronAdvertisement | None = None
    omron_raw: bytes | None = None

    @property
    def health_services(self) -> list[str]:
        return [U.HEALTH_SERVICES[s] for s in self.services if s in U.HEALTH_SERVICES]

    @property
    def is_health_device(self) -> bool:
        return bool(self.health_services) or self.omron_raw is not None

    def line(self) -> str:
        services = ", ".join(self.health_services) or ", ".join(U.short_name(s) for s in self.services) or "-"
        text = f"{self.address}  {self.rssi:>4} dBm  {self.name or '(no name)'}  [{services}]"
        if self.omron is not None:
            text += f"  Omron: {self.omron.describe()}"
        elif self.omron_raw is not None:
            text += f"  Omron data {self.omron_raw.hex()} (not decoded)"
        return text


async def scan(seconds: float, adapter: str | None = None, everything: bool = False) -> list[ScanResult]:
    """Listen for ``seconds``; return health devices (or every device with ``everything``), by RSSI."""
    found: dict[str, ScanResult] = {}

    def seen(device: BLEDevice, adv: AdvertisementData) -> None:
        result = found.get(device.address) or ScanResult(device.address, "", adv.rssi)
        result.name = adv.local_name or device.name or result.name
        result.rssi = adv.rssi
        result.services = sorted({*result.services, *(U.normalize_uuid(u) for u in adv.service_uuids)})
        raw = adv.manufacturer_data.get(U.OMRON_COMPANY_ID)
        if raw is not None:
            result.omron_raw = bytes(raw)
            try:
                result.omron = decode_omron_advertisement(bytes(raw))
            except DecodeError:
                result.omron = None
        found[device.address] = result

    bluez: Any = {"adapter": adapter} if adapter else {}
    try:
        async with BleakScanner(detection_callback=seen, bluez=bluez):
            await asyncio.sleep(seconds)
    except (OSError, EOFError) as exc:
        raise TransportError(
            f"cannot reach the system D-Bus / BlueZ ({str(exc).strip() or type(exc).__name__}): "
            "is bluetoothd running? (apt install bluez; systemctl start bluetooth)"
        ) from exc
    except BleakError as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if "ServiceUnknown" in text or "org.bluez" in text:
            raise TransportError(
                f"cannot reach the system D-Bus / BlueZ ({text}): is bluetoothd running? "
                "(apt install bluez; systemctl start bluetooth)"
            ) from exc
        raise TransportError(f"Bluetooth scan failed: {text}") from exc
    results = [r for r in found.values() if everything or r.is_health_device]
    return sorted(results, key=lambda r: (-r.rssi, r.address))
