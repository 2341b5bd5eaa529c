"""EKG with attachments end to end: the original aECG file and a rendered 12-lead PDF travel as ED OBX rows
(base64) to python-hl7's MLLP server, the message passes the STRICT oracle, and the attachment decodes
back to the very bytes that were dropped into the folder."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.e2e_helpers import AgentProcess, write_config
from tests.fake_ehr import Hl7Ehr
from tests.oracle import validate_oru
from tests.test_ecg_fixtures import synthetic_aecg

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # the agent as a subprocess


async def test_original_file_and_rendered_report_are_attached(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    ehr = await Hl7Ehr().start()
    device = {
        "id": "ekg-room12",
        "driver": "aecg-xml",
        "folder": str(share),
        "poll_seconds": 0.1,
        "attach_original": True,
        "attach_report": True,
    }
    cfg = write_config(
        tmp_path / "agent.toml", data_dir=tmp_path / "data", ehr_port=ehr.port, devices=[device]
    )
    original = synthetic_aecg()
    agent = AgentProcess(cfg)
    try:
        await agent.wait_log(lambda: bool(agent.events("device.connected")), what="device.connected")
        (share / "ecg-0002.xml").write_bytes(original)
        [message] = await ehr.wait_for(1)
        code, _ = agent.terminate()
    finally:
        agent.cleanup()
        await ehr.close()
    assert code == 0
    parsed = validate_oru(message)
    ed_rows = [seg for seg in parsed.obx if seg[2] == "ED"]
    assert len(ed_rows) == 2
    payloads = {seg.text(5, 3): base64.b64decode(seg.text(5, 5)) for seg in ed_rows}
    assert original in payloads.values(), "the original file travels unchanged"
    pdf = [data for data in payloads.values() if data.startswith(b"%PDF-")]
    assert len(pdf) == 1 and pdf[0].rstrip().endswith(b"%%EOF")
