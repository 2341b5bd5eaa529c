"""Supervisor: a failing device link is restarted with capped back-off; one WARNING per failure streak."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import ClassVar

import pytest
from structlog.testing import capture_logs

from tests.kit import until
from vitals_agent.agent.runtime import DeviceRuntimeImpl
from vitals_agent.agent.supervisor import Backoff, DeviceSupervisor
from vitals_agent.config.schema import DeviceConfig
from vitals_agent.drivers.base import (
    DecodeContext,
    Driver,
    DriverOptions,
    Transport,
    register_driver,
    register_transport,
)
from vitals_agent.errors import DeviceNotFoundError
from vitals_agent.models import DeviceClass, DeviceEvent, DeviceIdentity, Measurement, Reading


class FlakyTransport(Transport):
    name = "test-flaky"
    runs: ClassVar[int] = 0

    async def run(self) -> None:
        FlakyTransport.runs += 1
        if FlakyTransport.runs <= 3:
            raise DeviceNotFoundError("no such port: /dev/ttyTEST")
        self.runtime.set_connected(True, "test")
        at = datetime(2026, 1, 1, tzinfo=UTC)
        await self.runtime.emit(
            Reading(
                device=DeviceIdentity(id="x", serial_number="SN1"),
                device_class=DeviceClass.OTHER,
                measurements=(Measurement(metric="spo2", value=97, unit="%"),),
                observed_at=at,
                received_at=at,
            )
        )
        await asyncio.sleep(3600)  # (simulation) a device that stays connected until stopped


@register_driver
class FlakyDriver(Driver[DriverOptions]):
    name = "test-flaky"
    description = "test only"
    device_class = DeviceClass.OTHER
    transport = "test-flaky"


register_transport(FlakyTransport)


class Store:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def set(self, key: str, value: str) -> None:
        self.data[key] = value


def test_backoff_is_capped_and_jittered() -> None:
    b = Backoff(initial=0.25, cap=4.0)
    delays = [b.next() for _ in range(12)]
    assert all(0 < d <= 4.0 for d in delays)
    assert delays[-1] >= 2.0  # capped region: between cap/2 and cap
    b.reset()
    assert b.next() <= 0.25


async def test_failing_link_is_restarted_and_logged_once_at_warning() -> None:
    events: list[DeviceEvent] = []

    async def sink(rt: DeviceRuntimeImpl, event: DeviceEvent) -> None:
        events.append(event)

    cfg = DeviceConfig(id="x", driver="test-flaky", options=DriverOptions())
    rt = DeviceRuntimeImpl(cfg, FlakyDriver(), DecodeContext(device=DeviceIdentity(id="x")), Store(), sink)
    sup = DeviceSupervisor(rt, backoff_cap=0.05)
    sup.backoff.initial = 0.01
    rt.on_connected.append(sup.connected)
    with capture_logs() as logs:
        task = asyncio.create_task(sup.run())
        await until(lambda: events)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert FlakyTransport.runs == 4
    warnings = [e for e in logs if e["log_level"] == "warning"]
    debugs = [e for e in logs if e["event"] == "device.still_unavailable"]
    assert len(warnings) == 1 and warnings[0]["error"] == "no such port: /dev/ttyTEST"
    assert len(debugs) == 2
    assert rt.status.link_failures == 3
    [reading] = events
    assert isinstance(reading, Reading)
    assert reading.device.serial_number == "SN1"
    assert rt.status.identity == {"serial_number": "SN1"}
    assert rt.status.connected is False  # cancelled -> stopped


class CrashingTransport(Transport):
    """Comes up, then hits a bug at once, every time (as one EKG file tripping a bug did: #10 item 9)."""

    name = "test-crashing"

    async def run(self) -> None:
        self.runtime.set_connected(True, "watching")
        raise TypeError("bug quoting device data: DOE^JANE")


@register_driver
class CrashingDriver(Driver[DriverOptions]):
    name = "test-crashing"
    description = "test only"
    device_class = DeviceClass.OTHER
    transport = "test-crashing"


register_transport(CrashingTransport)


async def test_crash_loop_backs_off_and_shows_in_status() -> None:
    async def sink(rt: DeviceRuntimeImpl, event: DeviceEvent) -> None:
        pass

    cfg = DeviceConfig(id="ekg", driver="test-crashing", options=DriverOptions())
    rt = DeviceRuntimeImpl(
        cfg, CrashingDriver(), DecodeContext(device=DeviceIdentity(id="ekg")), Store(), sink
    )
    sup = DeviceSupervisor(rt)
    rt.on_connected.append(sup.connected)  # as the service wires it: a connect must not reset crash back-off
    delays: list[float] = []
    details: list[str] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        details.append(rt.status.detail)
        if len(delays) == 12:
            raise asyncio.CancelledError

    sup.sleep = fake_sleep
    with capture_logs() as logs, pytest.raises(asyncio.CancelledError):
        await sup.run()
    # before: a 0.25..4 s back-off reset by every connect (116 restarts a minute); now 1 s doubling to 5 min
    assert all(b >= a / 2 for a, b in itertools.pairwise(delays))
    assert delays[0] <= 1.0 and 128 <= delays[8] <= 256 and 150 <= delays[-1] <= 300
    assert sum(delays) > 700  # twelve crashes take over ten minutes (jitter: at least half of each base)
    assert rt.status.counters == {"crashes": 12} and rt.status.connected is False
    assert details[2].startswith("crashed (TypeError at test_supervisor.py:")
    assert "3 in a row, restart in" in details[2]
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1 and errors[0]["error"] == "TypeError"  # one ERROR per streak, no message text
    assert not any("DOE" in str(e) for e in logs if e["log_level"] != "debug")
