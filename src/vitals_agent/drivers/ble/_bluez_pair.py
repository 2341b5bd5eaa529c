"""``vitals-agent pair ADDRESS``: pair and bond with a device through BlueZ (``org.bluez.Device1.Pair``).
(BlueZ only: the underscore keeps :func:`vitals_agent.drivers.load_all` from importing it on Windows, where
dbus-fast does not exist; ``vitals-agent pair`` imports it when asked.)

Needed for devices that require an encrypted link (e.g. the Nonin 3230 measurement characteristic) or
that only send data to a bonded host. Uses dbus-fast on the system bus directly. Works for "Just Works"
pairing; devices that ask for a passkey need an agent (``bluetoothctl``) - the error says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from vitals_agent.drivers.ble.address import parse_address, same_address
from vitals_agent.errors import DeviceNotFoundError, TransportError

BLUEZ = "org.bluez"
DEVICE = "org.bluez.Device1"
ADAPTER = "org.bluez.Adapter1"
PROPERTIES = "org.freedesktop.DBus.Properties"

_MESSAGES = {
    "org.bluez.Error.AuthenticationFailed": "authentication failed (wrong passkey, or the device refused)",
    "org.bluez.Error.AuthenticationRejected": "the device rejected pairing",
    "org.bluez.Error.AuthenticationCanceled": "pairing was cancelled",
    "org.bluez.Error.AuthenticationTimeout": "the device did not answer in time; put it in pairing mode",
    "org.bluez.Error.ConnectionAttemptFailed": "could not connect; is it in pairing mode and in range?",
    "org.bluez.Error.InProgress": "pairing with this device is already in progress",
    "org.bluez.Error.NotReady": "the Bluetooth adapter is not ready (powered off?)",
    "org.bluez.Error.DoesNotExist": "BlueZ no longer knows the device; scan again",
    "org.bluez.Error.InvalidArguments": "BlueZ refused the request (invalid arguments)",
    "org.bluez.Error.Failed": "pairing failed",
    "org.freedesktop.DBus.Error.ServiceUnknown": "BlueZ (bluetoothd) is not running",
    "org.freedesktop.DBus.Error.NoReply": "BlueZ did not answer in time",
    "org.freedesktop.DBus.Error.AccessDenied": "not allowed to pair (D-Bus policy: join group 'bluetooth')",
}


class PairingError(TransportError):
    """Pairing failed; the message is one line for the technician."""


@dataclass(frozen=True)
class PairResult:
    address: str
    already_paired: bool
    name: str


def _explain(reply: Message) -> str:
    detail = str(reply.body[0]) if reply.body else ""
    name = reply.error_name or "unknown error"
    text = _MESSAGES.get(name, name)
    return f"{text} ({detail})" if detail and detail.lower() not in text.lower() else text


async def _call(
    bus: MessageBus, path: str, interface: str, member: str, signature: str = "", body: Any = None
) -> Message:
    reply = await bus.call(
        Message(
            destination=BLUEZ,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    assert reply is not None
    return reply


async def _find(bus: MessageBus, address: str, adapter: str) -> tuple[str, dict[str, Any]] | None:
    reply = await _call(bus, "/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
    if reply.message_type == MessageType.ERROR:
        raise PairingError(f"cannot list Bluetooth devices: {_explain(reply)}")
    for path, interfaces in reply.body[0].items():
        props = interfaces.get(DEVICE)
        if props is None or not path.startswith(f"/org/bluez/{adapter}/"):
            continue
        if same_address(str(props["Address"].value), address):
            return path, {k: v.value for k, v in props.items()}
    return None


async def pair(
    address: str, adapter: str = "hci0", scan_seconds: float = 10.0, timeout: float = 60.0
) -> PairResult:
    """Pair and bond with ``address`` (discovering it first if BlueZ does not know it), then trust it."""
    address = parse_address(address)
    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, EOFError, ValueError) as exc:
        raise PairingError(f"cannot reach the system D-Bus: {exc}") from exc
    try:
        found = await _find(bus, address, adapter)
        if found is None:
            found = await _discover(bus, address, adapter, scan_seconds)
        path, props = found
        name = str(props.get("Alias") or props.get("Name") or "")
        if props.get("Paired"):
            return PairResult(address, True, name)
        try:
            async with asyncio.timeout(timeout):
                reply = await _call(bus, path, DEVICE, "Pair")
        except TimeoutError:
            with contextlib.suppress(Exception):
                await _call(bus, path, DEVICE, "CancelPairing")
            raise PairingError(f"pairing with {address} timed out after {timeout:g} s") from None
        if reply.message_type == MessageType.ERROR:
            if reply.error_name == "org.bluez.Error.AlreadyExists":
                return PairResult(address, True, name)
            raise PairingError(f"pairing with {address} failed: {_explain(reply)}")
        trust = await _call(bus, path, PROPERTIES, "Set", "ssv", [DEVICE, "Trusted", Variant("b", True)])
        if trust.message_type == MessageType.ERROR:
            raise PairingError(f"paired with {address} but could not mark it trusted: {_explain(trust)}")
        # Pair leaves the link up; let it go so the agent (or the device's own timer) can reconnect.
        await _call(bus, path, DEVICE, "Disconnect")
        return PairResult(address, False, name)
    finally:
        bus.disconnect()


async def _discover(
    bus: MessageBus, address: str, adapter: str, seconds: float
) -> tuple[str, dict[str, Any]]:
    adapter_path = f"/org/bluez/{adapter}"
    start = await _call(bus, adapter_path, ADAPTER, "StartDiscovery")
    if start.message_type == MessageType.ERROR and start.error_name != "org.bluez.Error.InProgress":
        raise PairingError(f"cannot scan on {adapter}: {_explain(start)}")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            found = await _find(bus, address, adapter)
            if found is not None:
                return found
            await asyncio.sleep(0.2)
    finally:
        if start.message_type != MessageType.ERROR:
            await _call(bus, adapter_path, ADAPTER, "StopDiscovery")
    raise DeviceNotFoundError(f"{address} not seen within {seconds:g} s; is it advertising (pairing mode)?")
