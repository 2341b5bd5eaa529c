"""The spine end to end: a Masimo Rad-8 on a pseudo-terminal, the agent as a real process, and python-hl7's
MLLP server as an independent EHR. Every message is checked by the hl7apy STRICT oracle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e_helpers import AgentProcess, PyHl7Ehr, free_port, masimo_ascii1_line, write_config
from tests.oracle import validate_oru
from vitals_agent.drivers.pty import PtyDevice

pytestmark = pytest.mark.timeout(90)


def field(message: str, segment: str, index: int, occurrence: int = 0) -> str:
    segs = [s for s in message.replace("\n", "\r").split("\r") if s.startswith(segment + "|")]
    fields = segs[occurrence].split("|")
    pos = index - 1 if segment == "MSH" else index
    return fields[pos] if pos < len(fields) else ""


def obx_values(message: str) -> dict[str, tuple[str, str]]:
    """OBX-3 code -> (OBX-5, OBX-6 UCUM) for numeric rows."""
    out = {}
    for seg in message.replace("\n", "\r").split("\r"):
        parts = seg.split("|")
        if parts[0] == "OBX" and len(parts) > 6 and parts[2] == "NM":
            unit = parts[6].split("^")
            out[parts[3].split("^")[0]] = (parts[5], unit[3] if len(unit) > 3 else unit[0])
    return out


async def test_rad8_capture_reaches_independent_ehr_one_oru_per_line(tmp_path: Path) -> None:
    ehr = await PyHl7Ehr().start()
    now = datetime.now(UTC).replace(microsecond=0)
    lines = [
        masimo_ascii1_line(now + timedelta(seconds=i), spo2, bpm, pi)
        for i, (spo2, bpm, pi) in enumerate(
            [("096", "072", "05.10"), ("097", "070", "04.69"), ("095", "075", "02.28")]
        )
    ]
    bad = [
        b"\x00\xff garbage \x13\r\n",
        b"SPO2=%%% BPM==\r\n",
        b"11/28/26 09:14:05 SN=1 SPO2=099% BPM=060 PI=0",
    ]
    with PtyDevice(tmp_path / "ttyRad8") as pty:
        cfg = write_config(
            tmp_path / "agent.toml",
            data_dir=tmp_path / "data",
            ehr_port=ehr.port,
            devices=[
                {"id": "spo2-room12", "driver": "masimo-ascii", "port": str(pty.link), "report": "every"}
            ],
        )
        agent = AgentProcess(cfg)
        try:
            await agent.wait_log(lambda: bool(agent.events("device connected")), what="device connected")
            await pty.write(lines[0] + bad[0] + lines[1] + bad[1] + lines[2] + bad[2][:20])
            messages = await ehr.wait_for(3)
            code, took = agent.terminate()
        finally:
            agent.cleanup()
            await ehr.close()
    assert code == 0, agent.tail()
    assert took < 5.0
    assert len(messages) == 3, "bad lines must produce no message"
    expected = [("96", "72", "5.10"), ("97", "70", "4.69"), ("95", "75", "2.28")]
    for message, (spo2, bpm, pi) in zip(messages, expected, strict=True):
        validate_oru(message)
        assert field(message, "MSH", 4) == "EXAMPLE_CLINIC"
        assert field(message, "MSH", 9) == "ORU^R01^ORU_R01"
        assert field(message, "PV1", 3) == "CLINIC^ROOM12"
        values = obx_values(message)
        assert values["150456"] == (spo2, "%")
        assert values["149530"] == (bpm, "/min")
        assert values["150488"] == (pi, "%")
        identities = [field(message, "OBX", 18, i) for i in range(message.count("\rOBX|"))]
        assert any(ident.startswith("0000123456") for ident in identities), identities
    control_ids = [field(m, "MSH", 10) for m in messages]
    assert len(set(control_ids)) == 3


async def test_ehr_down_then_sigkill_then_restart_delivers_all_five_in_order_once(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet: the EHR is down
    now = datetime.now(UTC).replace(microsecond=0)
    values = ["091", "092", "093", "094", "095"]
    with PtyDevice(tmp_path / "ttyRad8") as pty:
        cfg = write_config(
            tmp_path / "agent.toml",
            data_dir=tmp_path / "data",
            ehr_port=port,
            devices=[
                {"id": "spo2-room12", "driver": "masimo-ascii", "port": str(pty.link), "report": "every"}
            ],
        )
        agent = AgentProcess(cfg)
        try:
            await agent.wait_log(lambda: bool(agent.events("device connected")), what="device connected")
            for i, v in enumerate(values):
                await pty.write(masimo_ascii1_line(now + timedelta(seconds=i), v, "070", "03.00"))
            await agent.wait_log(lambda: len(agent.events("reading queued")) == 5, what="5 readings queued")
            queued_ids = [e["control_id"] for e in agent.events("reading queued")]
            agent.kill()  # SIGKILL: no chance to clean up
        finally:
            agent.cleanup()
        ehr = await PyHl7Ehr(port).start()  # the EHR comes back
        agent = AgentProcess(cfg)
        try:
            messages = await ehr.wait_for(5)
            await agent.wait_log(lambda: len(ehr.messages) >= 5, what="delivery")
            code, _ = agent.terminate()
        finally:
            agent.cleanup()
            await ehr.close()
    assert code == 0
    assert len(messages) == 5, "each reading exactly once"
    assert [obx_values(m)["150456"][0] for m in messages] == [v.lstrip("0") for v in values]
    assert [field(m, "MSH", 10) for m in messages] == queued_ids, "retries keep the original MSH-10"
    for message in messages:
        validate_oru(message)
