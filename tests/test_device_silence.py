"""Issue #12: a configured device that stays silent for ``silent_after_seconds`` while its link is up is shown
as ``silent`` in status (not as ``connected``), and the ``device_silent`` alert uses the same notion.

Silence is measured on the monotonic clock (agent/runtime.py): the fake clock's monotonic face moves it, an
NTP step of the wall clock does not. No test sleeps: the clock is advanced, bytes are written to a real pty.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.e2e_helpers import masimo_ascii1_line
from tests.kit import FakeClock, fixed_ctx, start, stop, until
from vitals_agent.agent.alerts.rules import DeviceFacts, Facts, observe
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.control import render_html, render_text
from vitals_agent.agent.runtime import DeviceRuntimeImpl
from vitals_agent.agent.service import AgentService
from vitals_agent.config.alerts import AlertsConfig
from vitals_agent.config.schema import Config, parse_config
from vitals_agent.drivers import DRIVER_MODULES
from vitals_agent.drivers.base import DecodeFailure, driver_class, transport_class
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.errors import ConfigError, DecodeError
from vitals_agent.models import DeviceStatusEvent

# The per-driver defaults, decided one by one (README "[[devices]]"): devices that stream while they are on,
# whether or not a patient is attached, get 30 s (30 missed lines/frames/notifications); spot-check devices
# are quiet between measurements, so an open port with nothing on it is normal for them.
STREAMING = {"masimo-ascii", "nonin-df8", "nonin-df2", "nonin-3230", "ble-heart-rate"}


def _config(tmp_path: Path, **device: Any) -> Config:
    device.setdefault("id", "oxi-1")
    device.setdefault("driver", "masimo-ascii")
    device.setdefault("port", str(tmp_path / "ttyOXI"))
    return parse_config(
        {
            "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path / "d")},
            "control": {"enabled": False},
            "devices": [device],
        }
    )


def _runtime(tmp_path: Path, clock: FakeClock, **device: Any) -> DeviceRuntimeImpl:
    dev = _config(tmp_path, **device).devices[0]

    async def sink(_rt: DeviceRuntimeImpl, _event: object) -> None:
        return None

    driver = driver_class(dev.driver)(dev.options)
    return DeviceRuntimeImpl(
        dev, driver, fixed_ctx(dev.id, now=clock), _NoState(), sink, mono=clock.monotonic
    )


class _NoState:
    def get(self, key: str) -> str | None:
        return None

    def set(self, key: str, value: str) -> None:
        return None


def test_each_driver_has_a_deliberate_default() -> None:
    defaults = {name: driver_class(name).silent_after_seconds for name in DRIVER_MODULES}
    assert {name for name, limit in defaults.items() if limit is not None} == STREAMING
    assert all(defaults[name] == 30.0 for name in STREAMING)


def test_a_streaming_device_with_its_port_open_and_nothing_coming_is_silent(
    tmp_path: Path, clock: FakeClock
) -> None:
    rt = _runtime(tmp_path, clock)
    assert rt.silent_after == 30.0
    assert rt.link_state() == "disconnected"
    clock.advance(600)
    assert rt.link_state() == "disconnected"  # silence is about an open link; a closed one says so itself

    rt.set_connected(True, "/dev/ttyUSB0")
    clock.advance(29.9)
    assert rt.link_state() == "connected"
    clock.advance(0.1)
    assert rt.link_state() == "silent"
    snap = rt.snapshot()
    assert (snap["state"], snap["connected"], snap["quiet_seconds"], snap["silent_after_seconds"]) == (
        "silent",
        True,
        30.0,
        30.0,
    )
    assert snap["detail"] == "/dev/ttyUSB0 open, nothing received for 30 s"
    assert rt.status.detail == "/dev/ttyUSB0"  # the runtime's own detail is untouched

    rt.heard(17)  # a partial line: not a reading yet, but the device is talking
    assert rt.link_state() == "connected" and rt.quiet_seconds() == 0.0
    assert rt.snapshot()["detail"] == "/dev/ttyUSB0"

    clock.advance(45)
    assert rt.link_state() == "silent"
    rt.decode_failed(DecodeFailure(DecodeError("garbled", b"\x00")))  # garbage is a sign of life too
    assert rt.link_state() == "connected"
    clock.advance(31)
    assert rt.link_state() == "silent"
    rt.set_connected(False, "closed")
    assert rt.link_state() == "disconnected"
    rt.set_connected(True, "/dev/ttyUSB0")  # silence counts again from the reopening
    assert rt.link_state() == "connected"


async def test_a_decoded_event_ends_a_silence(tmp_path: Path, clock: FakeClock) -> None:
    rt = _runtime(tmp_path, clock)
    rt.set_connected(True, "p")
    clock.advance(40)
    assert rt.link_state() == "silent"
    await rt.emit(DeviceStatusEvent(battery_percent=80))
    assert rt.link_state() == "connected"


def test_the_wall_clock_stepping_does_not_make_a_device_silent(tmp_path: Path, clock: FakeClock) -> None:
    rt = _runtime(tmp_path, clock)
    rt.set_connected(True, "p")
    clock.set(clock() + timedelta(hours=3))  # NTP step forwards: monotonic time does not move
    assert rt.link_state() == "connected" and rt.quiet_seconds() == 0.0


def test_the_device_key_overrides_the_driver_default(tmp_path: Path, clock: FakeClock) -> None:
    quick = _runtime(tmp_path, clock, silent_after_seconds=5)
    never = _runtime(tmp_path, clock, silent_after_seconds=0)
    cuff = _runtime(tmp_path, clock, id="bp-1", driver="suntech-advantage")
    watched_cuff = _runtime(tmp_path, clock, id="bp-2", driver="suntech-advantage", silent_after_seconds=600)
    for rt in (quick, never, cuff, watched_cuff):
        rt.set_connected(True, "p")
    clock.advance(5)
    assert quick.link_state() == "silent"
    clock.advance(86_400)
    assert never.link_state() == "connected" and never.silent_after is None
    assert cuff.link_state() == "connected" and cuff.silent_after is None  # a cuff between measurements
    assert watched_cuff.link_state() == "silent"


def test_a_negative_limit_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="silent_after_seconds"):
        _config(tmp_path, silent_after_seconds=-1)
    dev = _config(tmp_path, silent_after_seconds=12.5).devices[0]
    assert dev.silence_limit() == 12.5
    assert "silent_after_seconds" not in dev.options.model_dump()  # a common key, not the driver's


def test_silence_is_logged_once_when_it_starts_and_once_when_it_ends(
    tmp_path: Path, clock: FakeClock
) -> None:
    rt = _runtime(tmp_path, clock)
    rt.set_connected(True, "p")
    with capture_logs() as logs:
        rt.check_silence()
        clock.advance(31)
        for _ in range(3):  # the agent checks every second
            rt.check_silence()
            clock.advance(1)
        rt.heard(4)
        rt.heard(4)
        rt.check_silence()
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("device.silent", "info"),
        ("device.talking_again", "info"),
    ]
    assert logs[0]["quiet_seconds"] == 31 and logs[0]["silent_after"] == 30.0


def test_status_page_and_terminal_show_silent(tmp_path: Path, clock: FakeClock) -> None:
    rt = _runtime(tmp_path, clock)
    rt.set_connected(True, "/dev/ttyUSB0")
    clock.advance(31)
    status = {"version": "x", "facility": "EXCLINIC", "devices": [rt.snapshot()]}
    text = render_text(status, {}, now=clock())
    assert "oxi-1 [masimo-ascii]: SILENT (/dev/ttyUSB0 open, nothing received for 31 s)" in text
    assert '<span class="dot other"></span>silent</span>' in render_html(status, {}, now=clock())


def test_the_alert_rule_uses_the_runtime_state() -> None:
    """``device_silent``: a silent link counts like a lost one; a connected spot-check device does not."""
    config = AlertsConfig(device_silent_seconds=1800)
    facts = Facts(
        devices={
            "oxi-1": DeviceFacts(True, 1801.0, "silent"),
            "oxi-2": DeviceFacts(True, 1799.0, "silent"),
            "bp-1": DeviceFacts(True, 99_999.0, "connected"),  # a cuff on an open port, no silence limit
            "bp-2": DeviceFacts(False, 1801.0, "disconnected"),
        }
    )
    seen = {o.key: o for o in observe(config, facts)}
    assert seen["device_silent:oxi-1"].bad
    assert seen["device_silent:oxi-1"].summary == "device oxi-1 connected but silent for 30 min"
    assert not seen["device_silent:oxi-2"].bad
    assert not seen["device_silent:bp-1"].bad
    assert (
        seen["device_silent:bp-2"].bad
        and seen["device_silent:bp-2"].summary == "device bp-2 not seen for 30 min"
    )


async def test_masimo_on_a_real_pty_goes_silent_then_connected_when_bytes_arrive(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The agent (service, serial transport, pyserial on a pty, alert monitor) with the fake clock: an open
    port with nothing on it turns ``silent`` after the driver's 30 s and raises ``device_silent`` after
    ``[alerts] device_silent_seconds``; one Masimo line brings ``connected`` back (and the alert clears)."""
    with PtyDevice(tmp_path / "ttyOXI") as oximeter:
        config = _config(tmp_path, port=str(oximeter.link))
        config = config.model_copy(
            update={"alerts": AlertsConfig(device_silent_seconds=120, hold_down_seconds=60)}
        )
        service = AgentService(config, clock=Clock(clock, clock.monotonic))
        runtime = service.runtimes["oxi-1"]
        assert service.alerts is not None
        task = start(transport_class("serial")(runtime))
        try:
            await until(lambda: runtime.status.connected, what="port opened")

            def shown() -> tuple[str, str]:
                [dev] = service.status()["devices"]
                return dev["state"], render_text(service.status(), {}, now=clock()).split("Devices:")[1]

            state, text = shown()
            assert state == "connected" and "oxi-1 [masimo-ascii]: connected" in text
            clock.advance(30)
            state, text = shown()
            assert state == "silent"
            assert f"oxi-1 [masimo-ascii]: SILENT ({oximeter.link} open, nothing received for 30 s)" in text
            assert not [e for e in await service.alerts.check() if e.kind == "device_silent"]
            clock.advance(91)
            [fired] = [e for e in await service.alerts.check() if e.kind == "device_silent"]
            assert (fired.state, fired.device) == ("firing", "oxi-1")
            assert fired.summary == "device oxi-1 connected but silent for 2 min"

            line = masimo_ascii1_line(clock(), "097", "072", "05.10")
            await oximeter.write(line[:20])  # half a line: no reading yet, but the device is talking
            await until(lambda: runtime.link_state() == "connected", what="bytes heard")
            assert runtime.status.readings == 0 and shown()[0] == "connected"
            await oximeter.write(line[20:])
            await until(lambda: runtime.status.readings == 1, what="the Masimo line decoded")
            state, text = shown()
            assert state == "connected" and "oxi-1 [masimo-ascii]: connected" in text
            assert not [e for e in await service.alerts.check() if e.kind == "device_silent"]  # hold-down
            clock.advance(61)
            [cleared] = [e for e in await service.alerts.check() if e.kind == "device_silent"]
            assert (cleared.state, cleared.summary) == ("cleared", "device oxi-1 seen again")
        finally:
            await stop(task)
            service.outbox.close()
            service.patients.close()
            service.audit.close()
