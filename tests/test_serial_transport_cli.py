"""`vitals-agent simulate DRIVER --pty LINK` end to end: the simulator on a pty, read by SerialTransport."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import pytest

from tests.kit import FakeRuntime, fixed_ctx, make_driver, start, stop, until
from vitals_agent import host
from vitals_agent.cli import main
from vitals_agent.commands import simulate
from vitals_agent.drivers.base import SerialDriver, SerialOptions, register_driver
from vitals_agent.drivers.serial_transport import SerialTransport
from vitals_agent.models import DeviceClass


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # cmd_simulate configures structlog for the process; keep the test session's configuration.
    monkeypatch.setattr(simulate, "setup_logging", lambda *a, **k: None)


def args(
    driver: str, link: Path, interval: float | None = 0.02, seconds: float | None = 3.0
) -> argparse.Namespace:
    return argparse.Namespace(driver=driver, pty=link, interval=interval, seconds=seconds, verbose=False)


@pytest.mark.skipif(not host.HAS_PTY, reason="`vitals-agent simulate` needs a POSIX pseudo-terminal")
async def test_simulate_masimo_on_a_pty_is_read_by_the_transport(tmp_path: Path) -> None:
    link = tmp_path / "rad8"
    sim = asyncio.create_task(simulate.cmd_simulate(args("masimo-ascii", link)))
    await until(lambda: os.path.lexists(link), what="the simulator's pty link")
    rt = FakeRuntime(make_driver("masimo-ascii", link), ctx=fixed_ctx("sim"))
    task = start(SerialTransport(rt))
    got = await rt.wait_readings(5)
    await stop(task)
    assert all(r.device.serial_number == "0000123456" and r.device.manufacturer == "Masimo" for r in got)
    assert all(90 <= r.values()["spo2"] <= 100 for r in got)
    assert len(rt.failures) <= 1  # at most the line the port was opened in the middle of
    sim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sim
    assert not os.path.lexists(link)  # the link is removed on exit


async def test_simulate_ends_after_seconds_and_removes_the_link(tmp_path: Path) -> None:
    link = tmp_path / "rad8"
    assert await simulate.cmd_simulate(args("masimo-ascii", link, interval=0.05, seconds=0.2)) == 0
    assert not os.path.lexists(link)


@register_driver
class _NoSimDriver(SerialDriver[SerialOptions]):
    name = "test-no-simulator"
    description = "test only"
    device_class = DeviceClass.OTHER


async def test_simulate_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["simulate", "test-no-simulator", "--pty", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err == "error: driver 'test-no-simulator' has no simulator\n"
    regular = tmp_path / "file"
    regular.write_text("keep me")
    assert await main(["simulate", "masimo-ascii", "--pty", str(regular)]) == 1
    assert (
        capsys.readouterr().err == f"error: {regular} exists and is not a symlink; refusing to replace it\n"
    )
    assert regular.read_text() == "keep me"
    # a link in a folder that does not exist: refused before anything is created
    missing = tmp_path / "no-such-folder" / "rad8"
    assert await main(["simulate", "masimo-ascii", "--pty", str(missing)]) == 1
    assert capsys.readouterr().err == (
        f"error: cannot create {missing}: the folder {missing.parent} does not exist\n"
    )
    assert not missing.parent.exists()
    with pytest.raises(SystemExit) as exit_info:  # a usage error: argparse's exit status 2
        await main(["simulate", "masimo-ascii", "--pty", str(tmp_path / "y"), "--interval", "0"])
    assert exit_info.value.code == 2
    assert "--interval: must be > 0" in capsys.readouterr().err
