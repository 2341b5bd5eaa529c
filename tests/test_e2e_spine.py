"""The spine end to end: a Masimo Rad-8 on a pseudo-terminal, the agent as a real process, and python-hl7's
MLLP server as an independent EHR. Every message is checked by the hl7apy STRICT oracle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e_helpers import AgentProcess, masimo_ascii1_line, write_config
from tests.fake_ehr import Hl7Ehr
from tests.kit import free_port
from tests.oracle import ParsedOru, validate_oru
from vitals_agent.drivers.pty import PtyDevice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # the agent as a subprocess


def value_and_unit(parsed: ParsedOru, code: str) -> tuple[str, str]:
    """OBX-5 and the UCUM code of OBX-6 of the numeric row with this MDC code."""
    row = parsed.obx_by_code(code)
    return row.text(5), row.text(6, 4)


async def test_rad8_capture_reaches_independent_ehr_one_oru_per_line(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
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
            await agent.wait_log(lambda: bool(agent.events("device.connected")), what="device.connected")
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
    parsed = [validate_oru(message) for message in messages]
    for oru, (spo2, bpm, pi) in zip(parsed, expected, strict=True):
        assert oru.msh[4] == "EXAMPLE_CLINIC"
        assert oru.msh[9] == "ORU^R01^ORU_R01"
        assert oru.pv1[3] == "CLINIC^ROOM12"
        assert value_and_unit(oru, "150456") == (spo2, "%")
        assert value_and_unit(oru, "149530") == (bpm, "/min")
        assert value_and_unit(oru, "150488") == (pi, "%")
        identities = [row[18] for row in oru.obx]
        assert any(ident.startswith("0000123456") for ident in identities), identities
    assert len({oru.control_id for oru in parsed}) == 3


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
            await agent.wait_log(lambda: bool(agent.events("device.connected")), what="device.connected")
            for i, v in enumerate(values):
                await pty.write(masimo_ascii1_line(now + timedelta(seconds=i), v, "070", "03.00"))
            await agent.wait_log(lambda: len(agent.events("reading.queued")) == 5, what="5 readings queued")
            queued_ids = [e["control_id"] for e in agent.events("reading.queued")]
            agent.kill()  # SIGKILL: no chance to clean up
        finally:
            agent.cleanup()
        ehr = await Hl7Ehr(port=port).start()  # the EHR comes back
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
    parsed = [validate_oru(message) for message in messages]
    assert [oru.value("150456") for oru in parsed] == [v.lstrip("0") for v in values]
    assert [oru.control_id for oru in parsed] == queued_ids, "retries keep the original MSH-10"
