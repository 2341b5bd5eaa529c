"""The Windows lane: the zip installed by its own install.cmd into a fresh Wine prefix, then

(a) the platform-independent unit tests under the Windows CPython (tests/ without the slow ones, which
    start processes; what needs POSIX or BlueZ skips or is not collected, with the reason);
(b) end to end: a simulated Masimo on a Linux pty mapped to COM5, the agent under Wine sending to an
    MLLP receiver (python-hl7) on Linux loopback, each ORU^R01 STRICT-valid (hl7apy), Ctrl-C -> exit 0
    within 5 s, and the outbox surviving a kill and a restart;
(c) the service registered by install.cmd, started with ``wine net start vitals-agent``, the same
    reading flow while it runs, ``service reload`` applying an added device, ``net stop`` ending it
    within 5 s.

Run by ``make test-windows`` (which builds the zip and the prefix first); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.fake_ehr import Hl7Ehr
from tests.kit.wait import until
from tests.oracle import validate_oru
from tests.windows import winelane
from vitals_agent.drivers.masimo import Rad8Simulator
from vitals_agent.drivers.pty import PtyDevice

pytestmark = pytest.mark.skipif(
    not (os.environ.get("VITALS_WINDOWS_LANE") and winelane.prefix_ready()),
    reason="the Windows lane: run `make test-windows` (Wine prefix with the installed zip)",
)

STOP_DEADLINE = 5.0


async def simulate(devices: list[PtyDevice], interval: float = 0.5) -> list[asyncio.Task[None]]:
    return [
        asyncio.create_task(Rad8Simulator(interval=interval, seed=i, episode_every=0).run(device))
        for i, device in enumerate(devices)
    ]


@contextlib.asynccontextmanager
async def running(tasks: list[asyncio.Task[None]]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def received(ehr: Hl7Ehr, count: int, agent: winelane.WineAgent | None = None) -> list[str]:
    try:
        return await ehr.wait_for(count, timeout=90)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; agent log:\n{agent.tail() if agent else ''}") from None


async def record_in(
    windows_path: str, wanted: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60.0
) -> dict[str, Any]:
    """The first JSON line of a file in the prefix (the agent's log, the audit trail) that is ``wanted``."""
    path = winelane.unix_path(windows_path)
    found: list[dict[str, Any]] = []

    def there() -> bool:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text("utf-8", "replace").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    record = json.loads(line)
                    if isinstance(record, dict) and wanted(record):
                        found.append(record)
                        return True
        return False

    await until(there, timeout, f"{what} in {windows_path}", interval=0.2)
    return found[0]


def msh10(message: str) -> str:
    return message.replace("\n", "\r").split("\r")[0].split("|")[9]


# ----------------------------------------------------------------------------------- (a) unit tests


@pytest.mark.timeout(1500)  # the unit tests under Wine (about 1.5 minutes here)
def test_unit_tests_pass_under_the_windows_cpython() -> None:
    started = time.monotonic()
    out = winelane.python(
        winelane.TEST_DIR + r"\run_tests.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--timeout",
        "120",
        "-rs",
        "-m",
        "not slow",  # processes started under Wine are the e2e and service tests' part (below)
        "tests",
        timeout=1200,
        check=False,
        CI="1",
        VITALS_AGENT_SHARED="",  # (a Linux path there): the copied tests' ../shared, see winelane.copy_shared
    )
    (winelane.WINDOWS_DIR / "build" / "unit-lane.log").write_text(out.stdout)  # the whole run, for CI
    summary = [line for line in out.stdout.splitlines() if " passed" in line or "not collected" in line]
    print("\n".join(summary), f"({time.monotonic() - started:.0f} s under Wine)")
    assert out.returncode == 0, out.stdout[-6000:]


# ----------------------------------------------------------------------------------- (b) end to end


@pytest.mark.timeout(600)
async def test_masimo_on_com5_reaches_the_ehr_and_the_outbox_survives_a_kill() -> None:
    ehr = await Hl7Ehr().start()
    port = ehr.port
    with winelane.com_ports(1) as devices:
        winelane.write_config(port, ["COM5"])
        async with running(await simulate(devices)):
            agent = winelane.WineAgent()
            try:
                messages = await received(ehr, 3, agent)
                for message in messages:
                    validate_oru(message)
                code, took = agent.ctrl_c()
            finally:
                if agent.proc.poll() is None:
                    agent.kill()
            assert code == 0, agent.tail()
            assert took < STOP_DEADLINE, f"stop took {took:.1f} s"
            assert agent.events("agent.stopped"), agent.tail()

            # The EHR goes away; readings queue; the agent is killed; a new agent sends them.
            await ehr.close()
            agent = winelane.WineAgent()
            try:
                await agent.wait(
                    lambda: len(agent.events("reading.queued")) >= 3, "readings queued while the EHR is down"
                )
                queued = {e["control_id"] for e in agent.events("reading.queued")}
            finally:
                agent.kill()
            ehr = await Hl7Ehr(port=port).start()
            agent = winelane.WineAgent()
            try:
                await agent.wait(
                    lambda: queued <= {msh10(m) for m in ehr.messages},
                    "the queued readings after restart",
                    90,
                )
                for message in ehr.messages:
                    validate_oru(message)
                code, _ = agent.ctrl_c()
            finally:
                if agent.proc.poll() is None:
                    agent.kill()
                await ehr.close()
            assert code == 0, agent.tail()


# ----------------------------------------------------------------------------------- (c) the service


class ServiceWatch:
    """``watch_service.py`` under Wine: the service's state changes, each stamped on arrival (Linux clock)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["wine", winelane.PYTHON, winelane.TEST_DIR + r"\watch_service.py", "vitals-agent"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=winelane.wine_env(),
            start_new_session=True,
        )
        self.seen: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            self.seen.append((time.monotonic(), line.decode("utf-8", "replace").strip()))

    async def when(self, state: str, after: float = 0.0, timeout: float = 60.0) -> float:
        """The time ``state`` was first seen at or after ``after`` (waits for it)."""
        found: list[float] = []

        def seen() -> bool:
            found.extend(at for at, line in list(self.seen) if at >= after and line.split(" ")[0] == state)
            assert self.proc.poll() is None or self.seen, f"watcher ended: {self.seen}"
            return bool(found)

        await until(seen, timeout, f"the service {state}", interval=0.05, detail=lambda: str(self.seen))
        return found[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.mark.timeout(600)
async def test_service_started_by_net_start_sends_and_net_stop_ends_it_within_5_s() -> None:
    ehr = await Hl7Ehr().start()
    watch = ServiceWatch()
    try:
        await watch.when("watching")
        with winelane.com_ports(1) as devices:
            winelane.write_config(ehr.port, ["COM5"])
            async with running(await simulate(devices)):
                status = winelane.agent("service", "status", check=False).stdout
                assert "start: automatic" in status, status
                assert "NT AUTHORITY\\LocalService" in status, status
                begun = time.monotonic()
                started = winelane.wine("net", "start", "vitals-agent", timeout=120, check=False)
                assert started.returncode == 0, started.stdout
                start_took = await watch.when("running", begun) - begun
                messages = await received(ehr, 3)
                for message in messages:
                    validate_oru(message)
                # Reload, Windows' SIGHUP (the service control PARAMCHANGE): a second oximeter on COM6 is
                # added to the file, and `service reload` makes the running service start it.
                with winelane.com_ports(1, first=6) as more:
                    winelane.write_config(ehr.port, ["COM5", "COM6"])
                    async with running(await simulate(more)):
                        reloaded = winelane.agent("service", "reload", check=False)
                        assert reloaded.returncode == 0, reloaded.stdout
                        applied = await record_in(
                            winelane.DATA_DIR + r"\audit.jsonl",
                            lambda r: r.get("event") == "config_applied",
                            "config_applied audit record",
                        )
                        assert applied["devices_added"] == ["spo2-1"], applied
                        await record_in(
                            winelane.DATA_DIR + r"\logs\agent.log",
                            lambda r: r.get("event") == "device.connected" and r.get("device") == "spo2-1",
                            "the added device connected",
                        )
                begun = time.monotonic()
                stopped = winelane.wine("net", "stop", "vitals-agent", timeout=60, check=False)
                assert stopped.returncode == 0, stopped.stdout
                # net stop returns before the service has stopped under Wine: wait for the process to end.
                stop_took = await watch.when("exited", begun, timeout=30) - begun
                stopped_state = await watch.when("stopped", begun) - begun
    finally:
        watch.close()
        await ehr.close()
    log = winelane.unix_path(winelane.DATA_DIR + r"\logs\agent.log").read_text("utf-8")
    print(
        f"service: net start -> running {start_took:.1f} s; net stop -> stopped {stopped_state:.1f} s, "
        f"process ended {stop_took:.1f} s"
    )
    assert '"agent.stopped"' in log, log[-3000:]

    # The event log (Wine's ReportEvent traces each line into the services' output, see winelane.setup).
    def services_log() -> str:
        return winelane.SERVICES_LOG.read_text("utf-8", "replace")

    # `cat` copies it into the file: wait for the last line
    await until(
        lambda: "vitals-agent: stopped" in services_log(),
        30,
        "the 'stopped' event-log line",
        interval=0.1,
        detail=lambda: services_log()[-3000:],
    )
    events = services_log()
    assert "vitals-agent: started: 1 devices" in events, events[-3000:]
    assert stop_took < STOP_DEADLINE, f"net stop -> process ended took {stop_took:.1f} s"
    state = winelane.agent("service", "status", check=False).stdout
    assert "vitals-agent: stopped" in state, state
    assert "last exit code" not in state or "1077" in state, state  # no failure code after a clean stop
