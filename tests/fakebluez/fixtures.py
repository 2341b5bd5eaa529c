"""pytest fixtures for the fake BlueZ, registered for every test by ``tests/conftest.py`` (through the kit).

* ``fake_bus_address`` (session): a private ``dbus-daemon`` whose address is put in
  ``DBUS_SYSTEM_BUS_ADDRESS`` before bleak's first call; skips the test when ``dbus-daemon`` is missing.
* ``fake_bluez`` (function, async): a :class:`~tests.fakebluez.server.FakeBlueZ` owning ``org.bluez`` on
  that bus in the test's event loop. Add peripherals with ``fake_bluez.add(and_ua651ble())``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.fakebluez.bus import PrivateBus, dbus_daemon_binary
from tests.fakebluez.server import FakeBlueZ

__all__ = ["fake_bluez", "fake_bus_address"]


@pytest.fixture(scope="session")
def fake_bus_address() -> Iterator[str]:
    if dbus_daemon_binary() is None:
        pytest.skip("dbus-daemon is not installed (Debian package dbus-daemon)")
    bus = PrivateBus()
    address = bus.start()
    previous = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
    try:
        yield address
    finally:
        if previous is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = previous
        bus.stop()


@pytest.fixture
async def fake_bluez(fake_bus_address: str) -> AsyncIterator[FakeBlueZ]:
    async with FakeBlueZ(fake_bus_address) as fake:
        yield fake
