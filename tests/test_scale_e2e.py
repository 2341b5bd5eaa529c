"""Full stack for the serial drivers of issue 4: the driver's simulator on a pseudo-terminal, the agent as a
real process, python-hl7's MLLP server as an independent EHR; every message passes the hl7apy STRICT
oracle. ``full_stack`` is shared by the other drivers' ``*_e2e`` test modules."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_helpers import AgentProcess, PyHl7Ehr, write_config
from tests.oracle import validate_oru
from vitals_agent.drivers.base import Simulator
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.drivers.scale_ascii import ScaleSimulator

pytestmark = pytest.mark.timeout(60)

WEIGHT = "188736"  # MDC_MASS_BODY_ACTUAL
HEIGHT = "188740"
BMI = "188752"


async def full_stack(tmp_path: Path, device: dict[str, Any], sim: Simulator, count: int) -> list[str]:
    """Run the agent with one device on a pty played by ``sim``; return the first ``count`` ORUs."""
    ehr = await PyHl7Ehr().start()
    with PtyDevice(tmp_path / "ttyDEV") as pty:
        cfg = write_config(
            tmp_path / "agent.toml",
            data_dir=tmp_path / "data",
            ehr_port=ehr.port,
            devices=[{**device, "port": str(pty.link)}],
        )
        sim_task = asyncio.create_task(sim.run(pty))
        agent = AgentProcess(cfg)
        try:
            messages = await ehr.wait_for(count)
            code, _ = agent.terminate()
        finally:
            sim_task.cancel()
            agent.cleanup()
            await ehr.close()
    assert code == 0, agent.tail()
    for message in messages:
        validate_oru(message)
    return messages[:count]


def obx(message: str) -> dict[str, tuple[str, str]]:
    """OBX-3 code -> (OBX-5, OBX-6 UCUM) for numeric rows."""
    out = {}
    for seg in message.replace("\n", "\r").split("\r"):
        parts = seg.split("|")
        if parts[0] == "OBX" and len(parts) > 6 and parts[2] == "NM":
            unit = parts[6].split("^")
            out[parts[3].split("^")[0]] = (parts[5], unit[3] if len(unit) > 3 else unit[0])
    return out


async def test_and_scale_full_stack(tmp_path: Path) -> None:
    sim = ScaleSimulator(dialect="and", weights=("70.50", "82.30"), interval=0.01)
    messages = await full_stack(tmp_path, {"id": "scale-1", "driver": "scale-ascii", "dialect": "and"}, sim, 2)
    assert [obx(m)[WEIGHT] for m in messages] == [("70.50", "kg"), ("82.30", "kg")]


async def test_detecto_full_stack_polled_in_pounds(tmp_path: Path) -> None:
    sim = ScaleSimulator(dialect="detecto", weights=("132.3",), unit="lb", height_in="63.0", bmi="21.5")
    device = {"id": "scale-2", "driver": "scale-ascii", "dialect": "detecto", "poll_seconds": 0.05}
    (message,) = await full_stack(tmp_path, device, sim, 1)
    values = obx(message)
    assert values[WEIGHT] == ("60.0", "kg")  # 132.3 lb, converted at the device's resolution
    assert values[HEIGHT] == ("160.0", "cm")  # 63.0 in
    assert values[BMI] == ("21.5", "kg/m2")
