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
class UsbId:
    """A USB device's identity: vendor id, product id and, when it has one, serial number. A port's
    adapter has one; so does a configured ``usb = "VID:PID[:SERIAL]"`` (hex ids), where the serial number
    may be left out."""

    vid: int
    pid: int
    serial_number: str | None = None

    @classmethod
    def parse(cls, spec: str) -> UsbId:
        parts = spec.strip().split(":")
        if len(parts) not in (2, 3) or not all(_is_hex4(p) for p in parts[:2]):
            raise ValueError(f"usb must be 'VID:PID' or 'VID:PID:SERIAL' with 4-digit hex ids, not {spec!r}")
        serial = parts[2] if len(parts) == 3 and parts[2] else None
        return cls(int(parts[0], 16), int(parts[1], 16), serial)

    def matches(self, listed: UsbId | None) -> bool:
        """Whether a listed port's identity is this configured one: the same ids, and the same serial
        number (in any case) unless this one leaves it out."""
        if listed is None or (listed.vid, listed.pid) != (self.vid, self.pid):
            return False
        if self.serial_number is None:
            return True
        return (
            listed.serial_number is not None
            and listed.serial_number.casefold() == self.serial_number.casefold()
        )

    @property
    def ids(self) -> str:
        """``"vvvv:pppp"`` (lower-case hex)."""
        return f"{self.vid:04x}:{self.pid:04x}"

    def __str__(self) -> str:
        return f"{self.ids}:{self.serial_number}" if self.serial_number else self.ids


@dataclass(frozen=True)
class PortInfo:
    """One serial port as the system lists it: its name, the identity of the USB adapter behind it (None
    for a built-in or other non-USB port), what the system calls it, and pyserial's hardware id (which
    also gives a USB port's bus location: for support)."""

    device: str
    usb: UsbId | None = None
    description: str | None = None
    manufacturer: str | None = None
    hwid: str | None = None

    @classmethod
    def from_pyserial(cls, info: Any) -> PortInfo:
        """From a ``serial.tools.list_ports_common.ListPortInfo`` (or anything with its attributes)."""

        def text(name: str) -> str | None:
            value = getattr(info, name, None)
            return None if value in (None, "", "n/a") else str(value)

        vid, pid = getattr(info, "vid", None), getattr(info, "pid", None)
        usb = None if vid is None or pid is None else UsbId(vid, pid, text("serial_number"))
        return cls(
            str(info.device),
            usb,
            description=text("description"),
            manufacturer=text("manufacturer"),
            hwid=text("hwid"),
        )


def _is_hex4(text: str) -> bool:
    return len(text) == 4 and all(c in "0123456789abcdefABCDEF" for c in text)


def _as_info(port: Any) -> PortInfo:
    return port if isinstance(port, PortInfo) else PortInfo.from_pyserial(port)


def list_serial_ports() -> list[PortInfo]:
    """Every serial port the system lists (pyserial ``comports()``), sorted by device path."""
    return sorted((PortInfo.from_pyserial(p) for p in comports()), key=lambda p: p.device)


def match_usb(spec: str | UsbId, ports: Iterable[Any]) -> list[PortInfo]:
    """The ports (``PortInfo`` or pyserial ``ListPortInfo``) whose USB identity matches ``spec``."""
    parsed = spec if isinstance(spec, UsbId) else UsbId.parse(spec)
    return [info for info in map(_as_info, ports) if parsed.matches(info.usb)]


def resolve_usb(spec: str | UsbId, ports: Iterable[Any] | None = None) -> PortInfo:
    """The one port matching ``spec``. Raises :class:`DeviceNotFoundError` when none matches (the device is
    unplugged: retry later) and :class:`TransportError` when several do (add the serial number)."""
    parsed = spec if isinstance(spec, UsbId) else UsbId.parse(spec)
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
