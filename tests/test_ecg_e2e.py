"""EKG cart end to end: a file dropped into the watched folder reaches python-hl7's MLLP server (an
independent EHR) as one ORU^R01 valid under the hl7apy STRICT oracle, exactly once, also when the agent
is restarted while the cart is still writing the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e_helpers import AgentProcess, outbox_depth, write_config
from tests.fake_ehr import Hl7Ehr
from tests.oracle import validate_oru
from tests.test_ecg_fixtures import synthetic_aecg, synthetic_scp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # the agent as a subprocess


def segments(message: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in message.replace("\n", "\r").split("\r") if s.startswith(name + "|")]


def config(tmp_path: Path, share: Path, port: int, driver: str, **options: object) -> Path:
    device = {"id": "ekg-room12", "driver": driver, "folder": str(share), "poll_seconds": 0.1, **options}
    return write_config(
        tmp_path / "agent.toml",
        data_dir=tmp_path / "data",
        ehr_port=port,
        devices=[device],
        log_level="DEBUG",  # "ecg.file_incomplete": each pass over a half-written file
    )


async def test_dropped_aecg_file_reaches_the_ehr_once(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    ehr = await Hl7Ehr().start()
    agent = AgentProcess(config(tmp_path, share, ehr.port, "aecg-xml"))
    try:
        await agent.wait_log(lambda: bool(agent.events("device.connected")), what="device.connected")
        (share / "ecg-0001.xml").write_bytes(synthetic_aecg())
        messages = await ehr.wait_for(1)
        await agent.wait_log(lambda: (share / "processed" / "ecg-0001.xml").exists(), what="moved")
        # the file is moved after its hand-over: once the outbox is empty, nothing else can be sent
        await agent.wait_log(lambda: outbox_depth(tmp_path / "data") == 0, what="the outbox drained")
        code, _ = agent.terminate()
    finally:
        agent.cleanup()
        await ehr.close()
    assert code == 0, agent.tail()
    assert len(ehr.messages) == 1
    message = messages[0]
    validate_oru(message)
    values = {row[3].split("^")[1]: row[5] for row in segments(message, "OBX") if row[2] == "NM"}
    assert values["MDC_ECG_TIME_PD_QT_GL"] == "400"
    assert values["MDC_ECG_ANGLE_QRS_FRONT"] == "-15"
    texts = [row[5] for row in segments(message, "OBX") if row[2] in ("ST", "TX")]
    assert "Sinus rhythm" in " ".join(texts) and "Normal ECG" in " ".join(texts)
    pid = segments(message, "PID")[0]
    assert pid[3].split("^")[0] == "MRN-42"  # unbound room: the cart's patient id


async def test_restart_while_the_cart_is_writing_sends_once(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    data = synthetic_scp()
    target = share / "ecg.scp"
    target.write_bytes(data[:300])  # the cart has begun writing
    ehr = await Hl7Ehr().start()
    cfg = config(tmp_path, share, ehr.port, "scp-ecg")
    try:
        first = AgentProcess(cfg)
        try:
            await first.wait_log(
                lambda: len(first.events("ecg.file_incomplete")) >= 3,
                what="three passes over the half-written file",
            )
            first.terminate()
        finally:
            first.cleanup()
        assert ehr.messages == [], "a half-written file must not be sent"
        assert target.exists()
        with target.open("ab") as fh:  # the cart finishes while the agent is down
            fh.write(data[300:])
        second = AgentProcess(cfg)
        try:
            messages = await ehr.wait_for(1)
            await second.wait_log(lambda: (share / "processed" / "ecg.scp").exists(), what="moved")
            await second.wait_log(lambda: outbox_depth(tmp_path / "data") == 0, what="the outbox drained")
            second.terminate()
        finally:
            second.cleanup()
    finally:
        await ehr.close()
    assert len(ehr.messages) == 1
    validate_oru(messages[0])
