"""pytest fixtures for the fake BlueZ, registered for every test by ``tests/conftest.py`` (through the kit).

* ``fake_bus_address`` (session): a private ``dbus-daemon`` whose address is put in
  ``DBUS_SYSTEM_BUS_ADDRESS`` before bleak's first call; skips the test when ``dbus-daemon`` is missing.
* ``fake_bluez`` (function, async): a :class:`~tests.fakebluez.server.FakeBlueZ` owning ``org.bluez`` on
  that bus in the test's event loop. Add peripherals with ``fake_bluez.add(and_ua651ble())``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.fakebluez.bus import PrivateBus, dbus_daemon_binary
from vitals_agent import host

if TYPE_CHECKING:
    from tests.fakebluez.server import FakeBlueZ

__all__ = ["fake_bluez", "fake_bus_address"]


@pytest.fixture(scope="session")
def fake_bus_address() -> Iterator[str]:
    if not host.HAS_BLUEZ:  # (under Wine, Linux's dbus-daemon is on PATH: it must not be taken for ours)
        pytest.skip(f"the fake BlueZ needs D-Bus and BlueZ: Linux only, not {host.PLATFORM_NAME}")
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
    # Imported here, not at conftest load: dbus-fast (the server's D-Bus library) is Linux-only, and the
    # unit suite also runs under the Windows CPython (tests/windows), where these fixtures just skip.
    from tests.fakebluez.server import FakeBlueZ

    async with FakeBlueZ(fake_bus_address) as fake:
        yield fake
