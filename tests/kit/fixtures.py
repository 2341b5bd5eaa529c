"""The kit's pytest fixtures (registered for every test by ``tests/conftest.py``).

* ``clock``: a :class:`~tests.kit.clock.FakeClock` at :data:`~tests.kit.clock.T0`.
* ``outbox``: an :class:`~vitals_agent.agent.storage.outbox.Outbox` in ``tmp_path/"data"``, closed afterwards.
* ``ehr``: python-hl7's MLLP server (:class:`tests.fake_ehr.Hl7Ehr`) answering AA, on a free port.
* ``pty_device``: a simulated serial device plugged in at ``tmp_path/"ttyDEV"``.
* ``fake_bus_address`` / ``fake_bluez``: the fake BlueZ on a private D-Bus (see tests/fakebluez).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fake_ehr import Hl7Ehr
from tests.fakebluez.fixtures import fake_bluez, fake_bus_address
from tests.kit.clock import FakeClock
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.drivers.pty import PtyDevice

__all__ = ["clock", "ehr", "fake_bluez", "fake_bus_address", "outbox", "pty_device"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "data")
    yield ob
    ob.close()


@pytest.fixture
async def ehr() -> AsyncIterator[Hl7Ehr]:
    peer = Hl7Ehr(mode="AA")
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


@pytest.fixture
def pty_device(tmp_path: Path) -> Iterator[PtyDevice]:
    device = PtyDevice(tmp_path / "ttyDEV").open()
    try:
        yield device
    finally:
        device.close()
