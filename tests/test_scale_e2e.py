"""Full stack for every serial driver of issue 4 (nonin-df8, nonin-df2/DF7, suntech-advantage, scale-ascii
A&D and Detecto, health-o-meter, tanita) in ONE agent run, to keep the suite fast: each driver's simulator
plays its device on its own pseudo-terminal, the agent runs as a real process, python-hl7's MLLP server is
an independent EHR, and every message passes the hl7apy STRICT oracle (tests/oracle.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_helpers import AgentProcess, write_config
from tests.fake_ehr import Hl7Ehr
from tests.oracle import validate_oru
from vitals_agent.drivers.base import Simulator
from vitals_agent.drivers.health_o_meter import HealthOMeterSimulator
from vitals_agent.drivers.nonin import NoninSimulator
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.drivers.scale_ascii import ScaleSimulator
from vitals_agent.drivers.suntech import SunTechSimulator
from vitals_agent.drivers.tanita import TanitaSimulator

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # the agent as a subprocess

SPO2, PR_OXI = "150456", "149530"
SYS, DIA, MEAN, PR_NIBP = "150021", "150022", "150023", "149546"
WEIGHT, HEIGHT, BMI, FAT = "188736", "188740", "188752", "188748"


def obx(message: str) -> dict[str, tuple[str, str]]:
    """OBX-3 code -> (OBX-5, OBX-6 UCUM) for numeric rows."""
    out = {}
    for seg in message.replace("\n", "\r").split("\r"):
        parts = seg.split("|")
        if parts[0] == "OBX" and len(parts) > 6 and parts[2] == "NM":
            unit = parts[6].split("^")
            out[parts[3].split("^")[0]] = (parts[5], unit[3] if len(unit) > 3 else unit[0])
    return out


# device table -> (simulator, the numeric OBX rows one of its messages must carry)
CASES: list[tuple[dict[str, Any], Simulator, dict[str, tuple[str, str]]]] = [
    (
        {"id": "ox-df8", "driver": "nonin-df8", "configure": True, "report": "every"},
        NoninSimulator(fmt="df8", hr=72, spo2=97, interval=0.05),
        {SPO2: ("97", "%"), PR_OXI: ("72", "/min")},
    ),
    (
        {"id": "ox-df7", "driver": "nonin-df2", "format": "df7", "report": "every"},
        NoninSimulator(fmt="df7", hr=81, spo2=94, interval=0.05),
        {SPO2: ("94", "%"), PR_OXI: ("81", "/min")},
    ),
    (
        {"id": "nibp", "driver": "suntech-advantage"},
        SunTechSimulator(
            systolic=128, diastolic=84, mean=99, heart_rate=67, interval=0.02, steps=3, auto_start=True
        ),
        {SYS: ("128", "mm[Hg]"), DIA: ("84", "mm[Hg]"), MEAN: ("99", "mm[Hg]"), PR_NIBP: ("67", "/min")},
    ),
    (
        {"id": "scale-and", "driver": "scale-ascii", "dialect": "and"},
        ScaleSimulator(dialect="and", weights=("70.50",), interval=0.02),
        {WEIGHT: ("70.50", "kg")},
    ),
    (
        {"id": "scale-detecto", "driver": "scale-ascii", "dialect": "detecto", "poll_seconds": 0.05},
        ScaleSimulator(dialect="detecto", weights=("132.3",), unit="lb", height_in="63.0", bmi="21.5"),
        # 132.3 lb and 63.0 in converted by the agent's normaliser at the device's resolution
        {WEIGHT: ("60.0", "kg"), HEIGHT: ("160.0", "cm"), BMI: ("21.5", "kg/m2")},
    ),
    (
        {"id": "scale-hom", "driver": "health-o-meter"},
        HealthOMeterSimulator(
            weights=("88.40", "0.00"), metric=True, height="172.0", bmi="29.9", interval=0.05
        ),
        {WEIGHT: ("88.40", "kg"), HEIGHT: ("172.0", "cm"), BMI: ("29.9", "kg/m2")},
    ),
    (
        {"id": "tanita", "driver": "tanita"},
        TanitaSimulator(weight="68.4", height="165.0", bmi="25.1", fat="31.2", interval=0.2, glitch=True),
        {WEIGHT: ("68.4", "kg"), HEIGHT: ("165.0", "cm"), BMI: ("25.1", "kg/m2"), FAT: ("31.2", "%")},
    ),
]


def matches(message: str, expected: dict[str, tuple[str, str]]) -> bool:
    values = obx(message)
    return all(values.get(code) == row for code, row in expected.items()) and set(values) == set(expected)


async def test_every_serial_driver_reaches_the_ehr_valid_under_strict(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
    ptys = [PtyDevice(tmp_path / f"tty{i}").open() for i in range(len(CASES))]
    tasks = [asyncio.create_task(sim.run(pty)) for (_, sim, _), pty in zip(CASES, ptys, strict=True)]
    devices = [{**dev, "port": str(pty.link)} for (dev, _, _), pty in zip(CASES, ptys, strict=True)]
    cfg = write_config(
        tmp_path / "agent.toml", data_dir=tmp_path / "data", ehr_port=ehr.port, devices=devices
    )
    agent = AgentProcess(cfg)
    try:

        def missing() -> list[str]:
            return [d["id"] for d, _, exp in CASES if not any(matches(m, exp) for m in ehr.messages)]

        await agent.wait_log(lambda: not missing(), timeout=30, what="a message from every scale")
        code, _ = agent.terminate()
    finally:
        for task in tasks:
            task.cancel()
        agent.cleanup()
        for pty in ptys:
            pty.close()
        await ehr.close()
    assert code == 0, agent.tail()
    for message in ehr.messages:
        validate_oru(message)
    # nothing else arrived: every message is one of the expected shapes (no half frames, no sentinels)
    unexpected = [m for m in ehr.messages if not any(matches(m, exp) for _, _, exp in CASES)]
    assert unexpected == []
