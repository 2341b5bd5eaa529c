"""Peripherals as data: services -> characteristics -> descriptors, with handles and properties.

The A&D tables are transcribed from the GATT discovery dumps in ``../shared/samples/ble/``
(HEADS-project/ThingML-BLE; same services, properties and handle order); ``test_ble_fakebluez.py``
checks the transcription against the dump files when they are present. The thermometer and PLX tables
follow the standard profiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BASE = "-0000-1000-8000-00805f9b34fb"

PROPERTY_FLAGS = {
    0x01: "broadcast",
    0x02: "read",
    0x04: "write-without-response",
    0x08: "write",
    0x10: "notify",
    0x20: "indicate",
    0x40: "authenticated-signed-writes",
    0x80: "extended-properties",
}


def u16(short: int) -> str:
    return f"0000{short:04x}{BASE}"


def flags_of(properties: int) -> list[str]:
    return [name for bit, name in PROPERTY_FLAGS.items() if properties & bit]


@dataclass
class CharSpec:
    uuid: str
    handle: int  # declaration handle (the object path ends in it)
    properties: int
    value: bytes = b""
    descriptors: list[tuple[int, str]] = field(default_factory=list)  # (handle, uuid)

    @property
    def flags(self) -> list[str]:
        return flags_of(self.properties)


@dataclass
class ServiceSpec:
    uuid: str
    handle: int
    characteristics: list[CharSpec] = field(default_factory=list)

    def char(self, uuid: str) -> CharSpec | None:
        return next((c for c in self.characteristics if c.uuid == uuid), None)


@dataclass
class PeripheralSpec:
    address: str
    name: str
    services: list[ServiceSpec]
    advertised_uuids: list[str] = field(default_factory=list)
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    rssi: int = -58

    def char(self, uuid: str) -> CharSpec | None:
        for service in self.services:
            found = service.char(uuid)
            if found is not None:
                return found
        return None

    def set_value(self, uuid: str, value: bytes) -> None:
        char = self.char(uuid)
        if char is None:
            raise KeyError(uuid)
        char.value = value


_SERVICE = re.compile(r"Service \[0x([0-9A-F]{4})-0x[0-9A-F]{4}\] : ([0-9A-F-]{36})", re.I)
_CHAR = re.compile(
    r"Characteristic \[0x([0-9A-F]{4})->0x[0-9A-F]{4}\] \(0x([0-9A-F]{2})\) : ([0-9A-F-]{36})", re.I
)
_DESC = re.compile(r"Descriptor \[0x([0-9A-F]{4})\] : ([0-9A-F-]{36})", re.I)


def parse_gatt_dump(text: str) -> list[ServiceSpec]:
    """Parse a ThingML-BLE style discovery dump."""
    services: list[ServiceSpec] = []
    for line in text.splitlines():
        if m := _SERVICE.search(line):
            services.append(ServiceSpec(m.group(2).lower(), int(m.group(1), 16)))
        elif m := _CHAR.search(line):
            services[-1].characteristics.append(
                CharSpec(m.group(3).lower(), int(m.group(1), 16), int(m.group(2), 16))
            )
        elif m := _DESC.search(line):
            services[-1].characteristics[-1].descriptors.append((int(m.group(1), 16), m.group(2).lower()))
    return services


AND_CUSTOM_SERVICE = "233bf000-5a34-1b6d-975c-000d5690abe4"
AND_CUSTOM_CHAR = "233bf001-5a34-1b6d-975c-000d5690abe4"

# (service uuid, handle, [(char uuid, declaration handle, properties, [descriptor handles (0x2902)])])
Table = list[tuple[str, int, list[tuple[str, int, int, list[int]]]]]
_AND_COMMON_HEAD: Table = [
    (
        u16(0x1800),
        0x0001,
        [
            (u16(0x2A00), 0x0002, 0x02, []),
            (u16(0x2A01), 0x0004, 0x02, []),
            (u16(0x2A02), 0x0006, 0x0A, []),
            (u16(0x2A03), 0x0008, 0x08, []),
            (u16(0x2A04), 0x000A, 0x02, []),
        ],
    ),
    (u16(0x1801), 0x000C, [(u16(0x2A05), 0x000D, 0x20, [0x000F])]),
]
_AND_COMMON_TAIL: Table = [
    (
        u16(0x180A),
        0x0018,
        [
            (u16(0x2A29), 0x0019, 0x02, []),
            (u16(0x2A24), 0x001B, 0x02, []),
            (u16(0x2A25), 0x001D, 0x02, []),
            (u16(0x2A27), 0x001F, 0x02, []),
            (u16(0x2A26), 0x0021, 0x02, []),
            (u16(0x2A28), 0x0023, 0x02, []),
            (u16(0x2A23), 0x0025, 0x02, []),
            (u16(0x2A2A), 0x0027, 0x02, []),
        ],
    ),
    (u16(0x180F), 0x0029, [(u16(0x2A19), 0x002A, 0x02, [])]),
    (AND_CUSTOM_SERVICE, 0x002C, [(AND_CUSTOM_CHAR, 0x002D, 0x0A, [])]),
]


def _build(table: Table) -> list[ServiceSpec]:
    return [
        ServiceSpec(
            uuid,
            handle,
            [CharSpec(c, h, p, descriptors=[(d, u16(0x2902)) for d in descs]) for c, h, p, descs in chars],
        )
        for uuid, handle, chars in table
    ]


def _dis_values(
    services: list[ServiceSpec], manufacturer: str, model: str, serial: str, system_id: bytes
) -> None:
    values = {
        u16(0x2A29): manufacturer.encode(),
        u16(0x2A24): model.encode(),
        u16(0x2A25): serial.encode() + b"\x00\x00",  # devices pad their strings
        u16(0x2A27): b"1.0",
        u16(0x2A26): b"2.3",
        u16(0x2A28): b"2.3",
        u16(0x2A23): system_id,
        u16(0x2A2A): bytes(8),
        u16(0x2A19): bytes([87]),
        u16(0x2A00): model.encode(),
    }
    for service in services:
        for char in service.characteristics:
            if char.uuid in values:
                char.value = values[char.uuid]


def and_ua651ble(
    address: str = "00:09:1F:12:34:56",
    name: str = "A&D_UA-651_3456",
    serial: str = "5140300185",
    clock: bytes = bytes.fromhex("E1 07 01 0E 0A 00 00"),  # 2017-01-14 10:00:00: factory epoch
) -> PeripheralSpec:
    """A&D UA-651BLE cuff (ua651ble GATT dump): 0x1810 with 2A35 (indicate), 2A49, 2A08 (read/write)."""
    services = _build(
        [
            *_AND_COMMON_HEAD,
            (
                u16(0x1810),
                0x0010,
                [
                    (u16(0x2A35), 0x0011, 0x20, [0x0013]),
                    (u16(0x2A49), 0x0014, 0x02, []),
                    (u16(0x2A08), 0x0016, 0x0A, []),
                ],
            ),
            *_AND_COMMON_TAIL,
        ]
    )
    octets = bytes.fromhex(address.replace(":", ""))
    system_id = bytes(reversed(octets[:3] + b"\xff\xfe" + octets[3:]))  # EUI-64 from the MAC, little-endian
    _dis_values(services, "A&D Medical", "UA-651BLE", serial, system_id)
    spec = PeripheralSpec(address, name, services, advertised_uuids=[u16(0x1810)])
    spec.set_value(u16(0x2A49), b"\x05\x00")
    spec.set_value(u16(0x2A08), clock)
    return spec


def and_uc352ble(
    address: str = "00:09:1F:65:43:21", name: str = "A&D_UC-352_4321", serial: str = "5150200033"
) -> PeripheralSpec:
    """A&D UC-352BLE scale (uc352ble GATT dump): 0x181D with 2A9D (indicate), 2A9E, 2A08 (read/write)."""
    services = _build(
        [
            *_AND_COMMON_HEAD,
            (
                u16(0x181D),
                0x0010,
                [
                    (u16(0x2A9D), 0x0011, 0x20, [0x0013]),
                    (u16(0x2A9E), 0x0014, 0x02, []),
                    (u16(0x2A08), 0x0016, 0x0A, []),
                ],
            ),
            *_AND_COMMON_TAIL,
        ]
    )
    octets = bytes.fromhex(address.replace(":", ""))
    _dis_values(
        services, "A&D Medical", "UC-352BLE", serial, bytes(reversed(octets[:3] + b"\xff\xfe" + octets[3:]))
    )
    spec = PeripheralSpec(address, name, services, advertised_uuids=[u16(0x181D)])
    spec.set_value(u16(0x2A9E), (0x0000003F).to_bytes(4, "little"))
    spec.set_value(u16(0x2A08), bytes.fromhex("E1 07 01 0E 0A 00 00"))
    return spec


def plx_oximeter(address: str = "C4:7C:8D:6A:11:22", name: str = "Nonin3230_502837") -> PeripheralSpec:
    """A PLX 0x1822 oximeter with spot-check storage (RACP 0x2A52), Current Time, DIS with a serial."""
    services = _build(
        [
            (u16(0x1800), 0x0001, [(u16(0x2A00), 0x0002, 0x02, [])]),
            (
                u16(0x1822),
                0x0010,
                [
                    (u16(0x2A5E), 0x0011, 0x20, [0x0013]),
                    (u16(0x2A5F), 0x0014, 0x10, [0x0016]),
                    (u16(0x2A60), 0x0017, 0x02, []),
                    (u16(0x2A52), 0x0019, 0x28, [0x001B]),
                ],
            ),
            (u16(0x1805), 0x0020, [(u16(0x2A2B), 0x0021, 0x1A, [0x0023])]),
            (
                u16(0x180A),
                0x0030,
                [
                    (u16(0x2A29), 0x0031, 0x02, []),
                    (u16(0x2A24), 0x0033, 0x02, []),
                    (u16(0x2A25), 0x0035, 0x02, []),
                ],
            ),
        ]
    )
    _dis_values(services, "Nonin Medical", "3230", "502837", b"")
    spec = PeripheralSpec(address, name, services, advertised_uuids=[u16(0x1822)])
    spec.set_value(u16(0x2A60), bytes.fromhex("07 00 E0 FF FF FF 00"))  # status, device status, storage
    return spec


def thermometer(address: str = "5C:31:3E:00:AA:01", name: str = "HTS-Thermo") -> PeripheralSpec:
    services = _build(
        [
            (
                u16(0x1809),
                0x0010,
                [(u16(0x2A1C), 0x0011, 0x20, [0x0013]), (u16(0x2A1D), 0x0014, 0x02, [])],
            ),
            (u16(0x180A), 0x0020, [(u16(0x2A29), 0x0021, 0x02, []), (u16(0x2A25), 0x0023, 0x02, [])]),
        ]
    )
    _dis_values(services, "Generic", "HTS", "T-0001", b"")
    spec = PeripheralSpec(address, name, services, advertised_uuids=[u16(0x1809)])
    spec.set_value(u16(0x2A1D), b"\x06")  # mouth
    return spec


def omron_cuff(address: str = "28:FF:B2:00:11:22", name: str = "BLEsmart_00000116") -> PeripheralSpec:
    """An Omron cuff as seen while scanning: manufacturer data 0x020E with record counts (devices.md §2.3)."""
    services = _build([(u16(0x1810), 0x0010, [(u16(0x2A35), 0x0011, 0x20, [0x0013])])])
    return PeripheralSpec(
        address,
        name,
        services,
        advertised_uuids=[u16(0x1810)],
        manufacturer_data={0x020E: bytes.fromhex("01 01 D0 02 64 11 00 11")},
    )
