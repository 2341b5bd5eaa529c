"""Issue 10 item 3: a flood of idle connections to the control port must not cost a reading.

The agent runs as a real process with a hard limit of 256 open files (so it cannot raise its way out),
a Masimo Rad-8 on a pseudo-terminal and python-hl7's MLLP server as the EHR. 1,100 connections are opened
to the control port while readings flow; every reading must reach the EHR, the agent must never hold more
than its connection cap of control connections, and the API must answer again once the flood is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_helpers import AgentProcess, masimo_ascii1_line, write_config
from tests.fake_ehr import Hl7Ehr
from tests.kit import until
from tests.oracle import validate_oru
from vitals_agent.agent.control import ControlClient, ControlError
from vitals_agent.drivers.pty import PtyDevice

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (/proc, ptys, rlimits)"),
]

AGENT_FILES = 256  # the agent's soft and hard RLIMIT_NOFILE
FLOOD = 1100
CAP = AGENT_FILES // 16  # connection_cap() for that limit


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


@pytest.fixture
def room_for_the_flood() -> None:
    """This test process holds the flood's sockets itself: make sure it may."""
    import resource

    need = FLOOD + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the test needs {need} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class Flood:
    """Opens ``count`` idle TCP connections from a thread; keeps them open until closed."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.sockets: list[socket.socket] = []
        self.failed = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Flood:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for _ in range(self.count):
                try:
                    self.sockets.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))
                except OSError:
                    self.failed += 1
        finally:
            self.done.set()

    def close(self) -> None:
        self._thread.join(timeout=60)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


async def test_a_connection_flood_costs_no_reading(tmp_path: Path, room_for_the_flood: None) -> None:
    ehr = await Hl7Ehr().start()
    start = datetime.now(UTC).replace(microsecond=0)
    data = tmp_path / "data"
    with PtyDevice(tmp_path / "ttyRad8") as pty:
        cfg = write_config(
            tmp_path / "agent.toml",
            data_dir=data,
            ehr_port=ehr.port,
            devices=[{"id": "spo2-1", "driver": "masimo-ascii", "port": str(pty.link), "report": "every"}],
            control_port=0,
            extra="[patient]\nrequire_patient = false\n",
        )
        agent = AgentProcess(cfg, open_files=(AGENT_FILES, AGENT_FILES))
        flood: Flood | None = None
        try:
            await agent.wait_log(lambda: bool(agent.events("device.connected")), what="device.connected")
            await agent.wait_log(lambda: bool(agent.events("control.listening")), what="control API")
            assert agent.events("control.listening")[0]["max_connections"] == CAP
            client = ControlClient.from_data_dir(data)
            # A bound patient: every reading then also touches the patient context (the path that
            # failed with "Too many open files" before).
            await client.call("PUT", "/api/patient", {"mrn": "MRN0012345", "channel": "cli"})
            baseline = open_fds(agent.proc.pid)

            flood = Flood(client.port, FLOOD).start()
            peak, sent = baseline, 0
            deadline = time.monotonic() + 90
            while not flood.done.is_set() or sent < 3:
                assert time.monotonic() < deadline, "the flood did not finish"
                opened = len(flood.sockets) + flood.failed
                # readings at the start, in the middle and at the end of the flood
                if sent < 3 and (opened >= sent * FLOOD // 2 or flood.done.is_set()):
                    at = start + timedelta(seconds=sent)
                    await pty.write(masimo_ascii1_line(at, f"09{sent}", "070", "03.00"))
                    sent += 1
                peak = max(peak, open_fds(agent.proc.pid))
                await asyncio.sleep(0.005)  # the sampling rate of the peak, not a wait for an effect
            messages = await ehr.wait_for(3, timeout=30)
            assert len(flood.sockets) >= 1000, f"only {len(flood.sockets)} flood connections opened"
        finally:
            if flood is not None:
                flood.close()
        try:
            # The API answers again once the flood is gone (idle ones time out fast).
            status: dict[str, Any] = {}

            async def answers() -> bool:
                try:
                    status.update(await client.call("GET", "/api/status"))
                except ControlError:
                    return False
                return True

            await until(answers, timeout=30, what="the control API answering again", interval=0.2)
            code, _ = agent.terminate()
        finally:
            agent.cleanup()
            await ehr.close()
    assert code == 0, agent.tail()
    assert [validate_oru(m).value("150456") for m in messages] == ["90", "91", "92"]
    # The agent never held more than its cap of control connections (plus the reading path's own).
    assert peak <= baseline + CAP + 4, (baseline, peak)
    assert status["devices"][0]["messages"] == 3
    assert agent.events("control.busy")
    log_text = "\n".join(agent.raw_log)
    assert "Too many open files" not in log_text
    assert not agent.events("reading.refused_patient_context")


async def test_the_agent_raises_its_soft_open_files_limit(tmp_path: Path) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"needs a hard open files limit of at least 2048 (is {hard})")
    cfg = write_config(
        tmp_path / "agent.toml", data_dir=tmp_path / "data", ehr_port=9, devices=[], control_port=0
    )
    agent = AgentProcess(cfg, open_files=(512, 2048))
    try:
        await agent.wait_log(lambda: bool(agent.events("control.listening")), what="control API")
        assert soft_open_files_limit(agent.proc.pid) == 2048
        assert agent.events("control.listening")[0]["max_connections"] == 32
        endpoint = json.loads((tmp_path / "data" / "control.json").read_text())
        assert endpoint["pid"] == agent.proc.pid
        code, _ = agent.terminate()
    finally:
        agent.cleanup()
    assert code == 0, agent.tail()
