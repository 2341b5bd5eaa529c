"""The fake BlueZ itself: its GATT tables match the real dumps, and it answers like BlueZ where bleak
and the agent depend on it (errors, discovery, link loss)."""

from __future__ import annotations

import asyncio

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakDBusError, BleakGATTProtocolError
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from tests.fakebluez.gatt import and_ua651ble, and_uc352ble, parse_gatt_dump, u16
from tests.fakebluez.server import ADAPTER_PATH, FakeBlueZ
from tests.kit import until
from tests.kit.shared import shared_file


@pytest.mark.parametrize(
    ("dump", "factory"),
    [("and_ua651ble_gatt_table.txt", and_ua651ble), ("and_uc352ble_gatt_table.txt", and_uc352ble)],
)
def test_gatt_tables_match_the_real_dumps(dump: str, factory: object) -> None:
    path = shared_file("samples", "ble", dump)
    expected = parse_gatt_dump(path.read_text())
    built = factory()  # type: ignore[operator]
    assert [(s.uuid, s.handle) for s in built.services] == [(s.uuid, s.handle) for s in expected]
    for ours, theirs in zip(built.services, expected, strict=True):
        assert [(c.uuid, c.handle, c.properties, c.descriptors) for c in ours.characteristics] == [
            (c.uuid, c.handle, c.properties, c.descriptors) for c in theirs.characteristics
        ]


async def test_bluez_errors_and_link_loss_reach_bleak(fake_bluez: FakeBlueZ) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    device = await BleakScanner.find_device_by_address(cuff.spec.address, timeout=5)
    assert device is not None
    lost = asyncio.Event()
    client = BleakClient(device, disconnected_callback=lambda _c: lost.set(), timeout=5)
    await client.connect()
    char = client.services.get_characteristic(u16(0x2A35))
    assert char is not None and char.properties == ["indicate"]
    assert [d.uuid for d in char.descriptors] == [u16(0x2902)]
    with pytest.raises(BleakGATTProtocolError, match="Read Not Permitted"):
        await client.read_gatt_char(u16(0x2A35))  # indicate-only
    with pytest.raises(BleakDBusError, match="NotSupported"):
        await client.start_notify(u16(0x2A49), lambda _s, _d: None)  # read-only
    with pytest.raises(BleakGATTProtocolError, match="Write Not Permitted"):
        await client.write_gatt_char(u16(0x2A25), b"x", response=True)
    received: list[bytes] = []
    await client.start_notify(u16(0x2A35), lambda _s, d: received.append(bytes(d)))
    cuff.indicate(u16(0x2A35), b"\x00\x78\x00\x50\x00\x5d\x00")
    await until(lambda: received)
    cuff.drop_link()
    await asyncio.wait_for(lost.wait(), 5)
    assert received == [b"\x00\x78\x00\x50\x00\x5d\x00"]
    assert not client.is_connected


async def test_discovery_in_progress_error(fake_bluez: FakeBlueZ) -> None:
    def adapter_call(member: str) -> Message:
        return Message(
            destination="org.bluez", path=ADAPTER_PATH, interface="org.bluez.Adapter1", member=member
        )

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        first = await bus.call(adapter_call("StartDiscovery"))
        second = await bus.call(adapter_call("StartDiscovery"))
        stop = await bus.call(adapter_call("StopDiscovery"))
    finally:
        bus.disconnect()
    assert first is not None and first.message_type == MessageType.METHOD_RETURN
    assert second is not None and second.error_name == "org.bluez.Error.InProgress"
    assert stop is not None and stop.message_type == MessageType.METHOD_RETURN
