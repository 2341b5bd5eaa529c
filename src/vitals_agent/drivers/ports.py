"""Serial port listing and USB identity matching (``usb = "VID:PID[:SERIAL]"`` in the config).

``/dev/ttyUSB0`` changes when cables move; a USB serial adapter's vendor id, product id and serial number do
not. :func:`resolve_usb` finds the port of a configured ``usb`` spec in pyserial's port listing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vitals_agent.errors import DeviceNotFoundError, TransportError
from vitals_agent.host.serial import comports, same_port_name


@dataclass(frozen=True)
class PortInfo:
    """One serial port as the system lists it (pyserial's ``ListPortInfo``, typed and frozen)."""

    device: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    description: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    location: str | None = None
    hwid: str | None = None

    @classmethod
    def from_pyserial(cls, info: Any) -> PortInfo:
        """From a ``serial.tools.list_ports_common.ListPortInfo`` (or anything with its attributes)."""

        def text(name: str) -> str | None:
            value = getattr(info, name, None)
            return None if value in (None, "", "n/a") else str(value)

        return cls(
            device=str(info.device),
            vid=getattr(info, "vid", None),
            pid=getattr(info, "pid", None),
            serial_number=text("serial_number"),
            description=text("description"),
            manufacturer=text("manufacturer"),
            product=text("product"),
            location=text("location"),
            hwid=text("hwid"),
        )

    @property
    def usb_id(self) -> str | None:
        """``"vvvv:pppp"`` (lower-case hex) for USB ports, else None."""
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid:04x}:{self.pid:04x}"


@dataclass(frozen=True)
class UsbSpec:
    """A parsed ``"VID:PID"`` or ``"VID:PID:SERIAL"`` (hex ids; the serial number is compared
    case-insensitively)."""

    vid: int
    pid: int
    serial_number: str | None = None

    @classmethod
    def parse(cls, spec: str) -> UsbSpec:
        parts = spec.strip().split(":")
        if len(parts) not in (2, 3) or not all(_is_hex4(p) for p in parts[:2]):
            raise ValueError(f"usb must be 'VID:PID' or 'VID:PID:SERIAL' with 4-digit hex ids, not {spec!r}")
        serial = parts[2] if len(parts) == 3 and parts[2] else None
        return cls(int(parts[0], 16), int(parts[1], 16), serial)

    def matches(self, port: PortInfo) -> bool:
        if port.vid != self.vid or port.pid != self.pid:
            return False
        if self.serial_number is None:
            return True
        return (
            port.serial_number is not None and port.serial_number.casefold() == self.serial_number.casefold()
        )

    def __str__(self) -> str:
        base = f"{self.vid:04x}:{self.pid:04x}"
        return f"{base}:{self.serial_number}" if self.serial_number else base


def _is_hex4(text: str) -> bool:
    return len(text) == 4 and all(c in "0123456789abcdefABCDEF" for c in text)


def _as_info(port: Any) -> PortInfo:
    return port if isinstance(port, PortInfo) else PortInfo.from_pyserial(port)


def list_serial_ports() -> list[PortInfo]:
    """Every serial port the system lists (pyserial ``comports()``), sorted by device path."""
    return sorted((PortInfo.from_pyserial(p) for p in comports()), key=lambda p: p.device)


def match_usb(spec: str | UsbSpec, ports: Iterable[Any]) -> list[PortInfo]:
    """The ports (``PortInfo`` or pyserial ``ListPortInfo``) whose USB identity matches ``spec``."""
    parsed = spec if isinstance(spec, UsbSpec) else UsbSpec.parse(spec)
    return [info for info in map(_as_info, ports) if parsed.matches(info)]


def resolve_usb(spec: str | UsbSpec, ports: Iterable[Any] | None = None) -> PortInfo:
    """The one port matching ``spec``. Raises :class:`DeviceNotFoundError` when none matches (the device is
    unplugged: retry later) and :class:`TransportError` when several do (add the serial number)."""
    parsed = spec if isinstance(spec, UsbSpec) else UsbSpec.parse(spec)
    found = match_usb(parsed, list_serial_ports() if ports is None else ports)
    if not found:
        raise DeviceNotFoundError(f"no serial port with USB id {parsed} is present")
    if len(found) > 1:
        devices = ", ".join(p.device for p in found)
        hint = "" if parsed.serial_number else ": add the serial number (usb = 'VID:PID:SERIAL')"
        raise TransportError(f"USB id {parsed} matches {len(found)} ports ({devices}){hint}")
    return found[0]


def same_port(configured: str, port: PortInfo) -> bool:
    """Whether a configured ``port`` path names this listed port (following symlinks such as
    ``/dev/serial/by-id/...``). URLs (``socket://``...) never match a listed port."""
    if "://" in configured:
        return False
    return same_port_name(configured, port.device)
