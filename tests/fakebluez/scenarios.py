"""Device behaviours the tests (and the lead's end-to-end test) script against a fake peripheral."""

from __future__ import annotations

from tests.fakebluez.gatt import u16
from tests.fakebluez.server import FakePeripheral

BLOOD_PRESSURE_MEASUREMENT = u16(0x2A35)
DATE_TIME = u16(0x2A08)


async def indicate_then_leave(
    peripheral: FakePeripheral,
    payloads: list[bytes],
    uuid: str = BLOOD_PRESSURE_MEASUREMENT,
    wait_read: str | None = None,
    timeout: float = 10.0,
) -> None:
    """What an A&D cuff does after a measurement: once the central has enabled indications, send every
    stored record, wait until the central has set the clock (when the device has a Date Time
    characteristic) or read ``wait_read``, then drop the link. The central's side is not awaited here:
    run it as a task and await it afterwards (the BLE transport ends with TransportError)."""
    await peripheral.wait_notifying(uuid, timeout)
    for payload in payloads:
        peripheral.indicate(uuid, payload)
    if wait_read is not None:
        await peripheral.wait_read(wait_read, timeout)
    if peripheral.spec.char(DATE_TIME) is not None:
        count = len(peripheral.writes.get(DATE_TIME, [])) + 1
        await peripheral.wait_write(DATE_TIME, count, timeout)
    peripheral.drop_link()
