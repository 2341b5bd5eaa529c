"""Patient context end to end: the agent as a real process, a Masimo and a wristband scanner on
pseudo-terminals, the real CLI talking to the control API, and python-hl7's MLLP server as the EHR
(every message checked by the hl7apy STRICT oracle)."""

from __future__ import annotations

import asyncio
import http.client
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e_helpers import AgentProcess, cli, masimo_ascii1_line
from tests.fake_ehr import Hl7Ehr
from tests.oracle import validate_oru
from tests.private_files import assert_private
from vitals_agent.agent.storage.audit import read_audit
from vitals_agent.drivers.pty import PtyDevice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # the agent as a subprocess

MRN = "MRN7700112233"
FAMILY = "PEMBERTONFAMILY"
GIVEN = "ISOLDEGIVEN"
SCANNED = "MRN5544332211"
WRISTBAND = r"\]C1(?P<mrn>MRN\d+)\^.*"


def write_config(
    path: Path, data_dir: Path, ehr_port: int, devices: list[dict[str, Any]], *, require_patient: bool
) -> Path:
    lines = [
        "[agent]",
        'facility = "EXAMPLE_CLINIC"',
        'location = "CLINIC^ROOM12"',
        f"data_dir = '{data_dir}'",
        'timezone = "UTC"',
        "[ehr]",
        'host = "127.0.0.1"',
        f"port = {ehr_port}",
        "ack_timeout_seconds = 2",
        "backoff_min_seconds = 0.05",
        "backoff_max_seconds = 0.5",
        "[control]",
        "port = 0",
        "[patient]",
        'assigning_authority = "EXCLINIC&2.999.1&ISO"',
        f"require_patient = {'true' if require_patient else 'false'}",
        f"mrn_pattern = '{WRISTBAND}'",
    ]
    for dev in devices:
        lines.append("[[devices]]")
        for key, value in dev.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def field(message: str, segment: str, index: int) -> str:
    for seg in message.replace("\n", "\r").split("\r"):
        if seg.startswith(segment + "|"):
            parts = seg.split("|")
            pos = index - 1 if segment == "MSH" else index
            return parts[pos] if pos < len(parts) else ""
    return ""


def open_twice(url: str) -> tuple[tuple[int, str], tuple[int, str]]:
    """Open a status page link twice, as two browsers would: (status, Set-Cookie) each time."""
    parts = urlsplit(url)
    answers = []
    for _ in range(2):
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            conn.request("GET", f"{parts.path}?{parts.query}")
            resp = conn.getresponse()
            resp.read()
            answers.append((resp.status, resp.getheader("Set-Cookie") or ""))
        finally:
            conn.close()
    return answers[0], answers[1]


async def wait_control(agent: AgentProcess, data_dir: Path) -> None:
    await agent.wait_log(lambda: (data_dir / "control.json").exists(), what="control API")


async def test_set_scan_clear_change_the_next_message(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
    data = tmp_path / "data"
    now = datetime.now(UTC).replace(microsecond=0)
    with PtyDevice(tmp_path / "ttyRad8") as oxi, PtyDevice(tmp_path / "ttyScan") as scanner:
        cfg = write_config(
            tmp_path / "agent.toml",
            data,
            ehr.port,
            [
                {"id": "spo2-room12", "driver": "masimo-ascii", "port": str(oxi.link), "report": "every"},
                {"id": "scanner", "driver": "barcode", "port": str(scanner.link), "mrn_pattern": WRISTBAND},
            ],
            require_patient=False,
        )
        agent = AgentProcess(cfg)
        try:
            await agent.wait_log(lambda: len(agent.events("device.connected")) == 2, what="devices connected")
            await wait_control(agent, data)
            assert_private(data / "control.token")

            # 1. no patient: unbound
            await oxi.write(masimo_ascii1_line(now, "096", "072", "05.10"))
            await ehr.wait_for(1)

            # 2. patient set by the CLI: bound
            code, out, err = await cli(
                "patient", "set", "--mrn", MRN, "--name", f"{FAMILY}^{GIVEN}", "--dob", "19750102",
                "--sex", "F", "--encounter", "V123", "--config", str(cfg),
            )  # fmt: skip
            assert (code, err) == (0, ""), err
            assert MRN not in out and out.startswith("Patient \u2022")
            await oxi.write(masimo_ascii1_line(now + timedelta(seconds=1), "097", "070", "04.69"))
            await ehr.wait_for(2)

            # 3. wristband scan on the serial scanner: bound to the scanned MRN
            await scanner.write(f"]C1{SCANNED}^DOE^JANE\r\n".encode())
            await agent.wait_log(lambda: bool(agent.events("patient.scanned")), what="scan")
            await oxi.write(masimo_ascii1_line(now + timedelta(seconds=2), "098", "071", "04.00"))
            await ehr.wait_for(3)

            # 4. clear: unbound again
            code, out, err = await cli("patient", "clear", "--config", str(cfg))
            assert (code, out) == (0, "patient context cleared\n"), err
            await oxi.write(masimo_ascii1_line(now + timedelta(seconds=3), "095", "075", "02.28"))
            messages = await ehr.wait_for(4)

            code, status_out, _ = await cli("status", "--config", str(cfg))
            assert code == 0
            # 5. the status page link: a single-use code, never the token; the browser's cookie neither
            code, url, err = await cli("status", "--url", "--config", str(cfg))
            assert code == 0, err
            token = (data / "control.token").read_text().strip()
            assert token not in url and "/?code=" in url
            first, again = await asyncio.to_thread(open_twice, url.strip())
            assert first[0] == 303 and token not in first[1] and first[1].startswith("vitals_session=")
            assert again[0] == 401
            code, _ = agent.terminate()
        finally:
            agent.cleanup()
            await ehr.close()
    assert code == 0, agent.tail()
    parsed = [validate_oru(m) for m in messages]
    unbound1, bound, scanned, unbound2 = parsed
    for p in (unbound1, unbound2):
        assert (p.pid[5], p.pid[31]) == ("^^^^^^U", "Y")
        assert p.pid.text(3, 1).startswith("TMP-")
    assert (bound.pid.text(3, 1), bound.pid.text(3, 4), bound.pid.text(3, 5)) == (
        MRN,
        "EXCLINIC&2.999.1&ISO",
        "MR",
    )
    assert (bound.pid.text(5, 1), bound.pid.text(5, 2)) == (FAMILY, GIVEN)
    assert (bound.pid[7], bound.pid[8], bound.pid[31]) == ("19750102", "F", "N")
    assert bound.pv1.text(19, 1) == "V123"
    assert (scanned.pid.text(3, 1), scanned.pid[31]) == (SCANNED, "N")

    # status in the terminal: devices and a masked (or no) patient
    assert "spo2-room12 [masimo-ascii]: connected" in status_out and "scanner [barcode]" in status_out
    # the operational log (the agent's INFO output) holds no identifier, nor the token ...
    log_text = "\n".join(agent.raw_log)
    assert token not in log_text
    for secret in (MRN, SCANNED, FAMILY, GIVEN, "19750102", "DOE^JANE"):
        assert secret not in log_text
    # ... and the audit log has the whole trail
    trail = list(read_audit(data / "audit.jsonl"))
    names = [e["event"] for e in trail]
    assert names.count("reading_accepted") == 4
    sets = [e for e in trail if e["event"] == "context_set"]
    # the CLI's calls are API calls (its "cli" is a claim, kept as client); the scanner is a device
    assert [(e["channel"], e.get("client"), e["patient"]["mrn"]) for e in sets] == [
        ("api", "cli", MRN),
        ("barcode", None, SCANNED),
    ]
    cleared = [e for e in trail if e["event"] == "context_cleared"]
    assert [(e["channel"], e.get("client")) for e in cleared] == [("api", "cli")]
    accepted = [e for e in trail if e["event"] == "reading_accepted"]
    assert [(e["patient"] or {}).get("mrn") for e in accepted] == [None, MRN, SCANNED, None]
    sent = {e["control_id"]: e["ack_code"] for e in trail if e["event"] == "message_sent"}
    assert sent == {field(m, "MSH", 10): "AA" for m in messages}


async def test_require_patient_holds_across_a_restart_then_sends_late_associated(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
    data = tmp_path / "data"
    now = datetime.now(UTC).replace(microsecond=0)
    with PtyDevice(tmp_path / "ttyRad8") as oxi:
        cfg = write_config(
            tmp_path / "agent.toml",
            data,
            ehr.port,
            [{"id": "spo2-room12", "driver": "masimo-ascii", "port": str(oxi.link), "report": "every"}],
            require_patient=True,
        )
        agent = AgentProcess(cfg)
        try:
            await agent.wait_log(lambda: bool(agent.events("device.connected")), what="device.connected")
            await oxi.write(masimo_ascii1_line(now, "096", "072", "05.10"))
            await agent.wait_log(lambda: bool(agent.events("held.until_patient")), what="held")
            code, _ = agent.terminate()
            assert code == 0
        finally:
            agent.cleanup()
        assert ehr.messages == []

        agent = AgentProcess(cfg)  # restart: the held reading is still there
        try:
            await wait_control(agent, data)
            code, out, err = await cli("status", "--config", str(cfg))
            assert "1 held reading(s)" in out, out + err
            code, _, err = await cli(
                "patient", "set", "--mrn", MRN, "--name", f"{FAMILY}^{GIVEN}", "--config", str(cfg)
            )
            assert code == 0, err
            messages = await ehr.wait_for(1)
            code, _ = agent.terminate()
        finally:
            agent.cleanup()
            await ehr.close()
    parsed = validate_oru(messages[0])
    assert parsed.pid.text(3, 1) == MRN
    assert any(s.name == "NTE" and "late-associated" in s.raw for s in parsed.segments)
    assert parsed.value("150456") == "96"
    names = [e["event"] for e in read_audit(data / "audit.jsonl")]
    assert names[:2] == ["reading_accepted", "reading_held"]
    assert "held_released" in names and "message_sent" in names
