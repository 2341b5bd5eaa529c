"""A ward on one agent: 50 oximeters behind a simulated terminal server (raw TCP), the agent as a real
process, python-hl7's MLLP server as the EHR. Every reading arrives once, in order per device, STRICT-valid;
a terminal-server restart that drops and later restores every connection loses nothing."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e_helpers import STOPS_THE_AGENT, AgentProcess, masimo_ascii1_line, outbox_depth, write_config
from tests.fake_ehr import Hl7Ehr
from tests.kit.netdev import FedDevice
from tests.oracle import validate_oru

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # the agent as a subprocess

DEVICES = 50
ROUNDS = 6  # lines per device: rounds 0-2 before the restart, 3 in flight as it happens, 4-5 while down


def serial_of(d: int) -> str:
    return f"{9000000000 + d:010d}"


def line(d: int, r: int, t0: datetime) -> bytes:
    return masimo_ascii1_line(t0 + timedelta(seconds=r), f"{90 + r:03d}", f"{60 + d % 30:03d}", "04.00",
                              serial=serial_of(d))  # fmt: skip


@STOPS_THE_AGENT
async def test_fifty_tcp_devices_through_one_agent_survive_a_terminal_server_restart(tmp_path: Path) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    ehr = await Hl7Ehr().start()
    devices = [await FedDevice(f"oxi-{d}").start() for d in range(DEVICES)]
    cfg = write_config(
        tmp_path / "agent.toml",
        data_dir=tmp_path / "data",
        ehr_port=ehr.port,
        devices=[
            {"id": f"oxi-{d}", "driver": "masimo-ascii", "port": dev.url, "report": "every"}
            for d, dev in enumerate(devices)
        ],
    )
    agent = AgentProcess(cfg)
    try:
        await agent.wait_log(lambda: len(agent.events("device.connected")) >= DEVICES, 60, "50 connections")
        for r in range(3):
            for d, dev in enumerate(devices):
                dev.feed(line(d, r, t0))
        await ehr.wait_for(3 * DEVICES, timeout=60)
        for d, dev in enumerate(devices):
            dev.feed(line(d, 3, t0))  # on the wire while the terminal server restarts
        await asyncio.gather(*(dev.server.drop_all() for dev in devices))
        await agent.wait_log(
            lambda: len(agent.events("device.disconnected")) >= DEVICES, 30, "every link to notice the drop"
        )
        for r in (4, 5):
            for d, dev in enumerate(devices):
                dev.feed(line(d, r, t0))  # waits in the device until its port is back
        await asyncio.gather(*(dev.server.restore() for dev in devices))
        await ehr.wait_for(ROUNDS * DEVICES, timeout=90)
        # everything queued is delivered: no message can still be on its way (a duplicate would be)
        await agent.wait_log(lambda: outbox_depth(tmp_path / "data") == 0, 30, "an empty outbox")
        messages = list(ehr.messages)
        queued = len(agent.events("reading.queued"))
        code, _ = agent.terminate()
    finally:
        agent.cleanup()
        await ehr.close()
        for dev in devices:
            await dev.server.stop()
    assert code == 0, agent.tail()
    assert all(dev.backlog == 0 for dev in devices)
    assert sum(len(dev.sent) for dev in devices) == ROUNDS * DEVICES
    assert queued == len(messages) == ROUNDS * DEVICES, "every reading once"
    per_device: dict[str, list[int]] = defaultdict(list)
    control_ids = set()
    for message in messages:
        oru = validate_oru(message)  # hl7apy STRICT and the PCD-01 checks
        control_ids.add(oru.control_id)
        serials = {row[18].split("^")[0] for row in oru.obx if row[18]}
        (serial,) = serials & {serial_of(d) for d in range(DEVICES)}
        per_device[serial].append(int(oru.obx_by_code("150456").text(5)))
    assert len(control_ids) == ROUNDS * DEVICES
    expected = [90 + r for r in range(ROUNDS)]
    assert {serial: values for serial, values in per_device.items()} == {
        serial_of(d): expected for d in range(DEVICES)
    }, "in order per device"
    reconnected = [e for e in agent.events("device.connected") if e.get("device")]
    assert len(reconnected) >= 2 * DEVICES  # every link came back after the restart
