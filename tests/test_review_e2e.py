"""Clinician review end to end: the agent as a real process, a Masimo on a pseudo-terminal, the real CLI
(`clinician`, `review`, `manual`, `patient`) through the control API, python-hl7's MLLP server as the EHR,
every message checked by the hl7apy STRICT oracle. The wrong-patient path survives kill -9 between its two
messages, re-sending the retraction with exactly the same MSH-10 and bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_helpers import AgentProcess, cli, masimo_ascii1_line, write_config
from tests.fake_ehr import Hl7Ehr
from tests.kit import until
from tests.oracle import ParsedOru, validate_oru
from vitals_agent.agent.storage.audit import read_audit
from vitals_agent.drivers.pty import PtyDevice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # the agent as a subprocess

FIRST = "MRN1111111111"
SECOND = "MRN2222222222"


def config(tmp_path: Path, ehr_port: int, port: Path, mode: str) -> Path:
    return write_config(
        tmp_path / "agent.toml",
        data_dir=tmp_path / "data",
        ehr_port=ehr_port,
        control_port=0,
        devices=[{"id": "spo2-room12", "driver": "masimo-ascii", "port": str(port), "report": "every"}],
        extra=f'[patient]\nassigning_authority = "EXCLINIC&2.999.1&ISO"\n[review]\nmode = "{mode}"',
    )


def rows(parsed: ParsedOru) -> list[Any]:
    return [s for s in parsed.obx if not s[4].endswith(".0")]


def audit(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in read_audit(tmp_path / "data" / "audit.jsonl") if e["event"] == name]


async def started(agent: AgentProcess, tmp_path: Path) -> None:
    await agent.wait_log(lambda: bool(agent.events("device.connected")), what="oximeter connected")
    await agent.wait_log(lambda: (tmp_path / "data" / "control.json").exists(), what="control API")


async def test_confirm_mode_from_the_command_line(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
    now = datetime.now(UTC).replace(microsecond=0)
    with PtyDevice(tmp_path / "ttyRad8") as oxi:
        cfg = str(config(tmp_path, ehr.port, oxi.link, "confirm"))
        agent = AgentProcess(Path(cfg))
        try:
            await started(agent, tmp_path)
            assert (await cli("patient", "set", "--mrn", FIRST, "--config", cfg))[0] == 0
            await oxi.write(masimo_ascii1_line(now, "096", "072", "05.10"))

            async def listed() -> list[dict[str, Any]]:
                code, out, err = await cli("review", "list", "--json", "--config", cfg)
                assert code == 0, err
                items: list[dict[str, Any]] = json.loads(out)["items"]
                return items

            await until(lambda: bool(audit(tmp_path, "review_waiting")), what="the reading listed")
            [item] = await listed()
            assert item["waiting"] and item["values"]["spo2"] == "96 %"
            code, out, _ = await cli("review", "list", "--config", cfg)
            assert "WAITING FOR REVIEW" in out and FIRST not in out  # masked

            code, _, err = await cli("review", "confirm", str(item["id"]), "--config", cfg)
            assert code == 1 and err.startswith("error: confirming readings needs a signed-in clinician")
            assert ehr.received == []  # nothing is ever sent without a clinician in this mode

            code, out, err = await cli(
                "clinician", "set", "--id", "4711", "--name", "NURSE^ANNA", "--config", cfg
            )
            assert code == 0, err
            assert out.startswith("Clinician ANNA NURSE (4711): signed in via api")
            code, out, err = await cli("review", "confirm", "--all", "--config", cfg)
            assert code == 0 and out.startswith(f"review item {item['id']} confirmed: sent as F"), err
            [message] = await ehr.wait_for(1)
            parsed = validate_oru(message)
            assert parsed.pid.text(3, 1) == FIRST
            assert all(r[11] == "F" and r[16] == "4711^NURSE^ANNA" for r in rows(parsed))

            code, out, err = await cli("manual", "resp_rate=16", "pain=3", "--config", cfg)
            assert code == 0 and "entered and sent" in out, err
            manual = validate_oru((await ehr.wait_for(2))[1])
            resp, pain = manual.obx_by_code("9279-1"), manual.obx_by_code("72514-3")
            assert (resp.text(3, 1), resp[5], resp.text(6, 4), resp[11]) == ("151562", "16", "/min", "F")
            assert (pain[5], pain.text(6, 4), pain.text(17), pain[16]) == (
                "3",
                "{score}",
                "MMEAS",
                "4711^NURSE^ANNA",
            )

            code, _, err = await cli("manual", "resp_rate", "--config", cfg)
            assert (code, err.strip()) == (1, "error: 'resp_rate': write NAME=VALUE, e.g. resp_rate=16")
            code, _, err = await cli("clinician", "clear", "--config", cfg)
            code, _, err = await cli("manual", "pain=2", "--config", cfg)
            assert code == 1 and "needs a signed-in clinician" in err
            assert len(ehr.received) == 2
            assert FIRST not in "\n".join(agent.raw_log) and "ANNA" not in "\n".join(agent.raw_log)
        finally:
            agent.cleanup()
            await ehr.stop()


async def test_wrong_patient_survives_kill_9_between_the_two_messages(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
    now = datetime.now(UTC).replace(microsecond=0)
    with PtyDevice(tmp_path / "ttyRad8") as oxi:
        cfg = str(config(tmp_path, ehr.port, oxi.link, "auto"))
        agent = AgentProcess(Path(cfg))
        try:
            await started(agent, tmp_path)
            assert (await cli("patient", "set", "--mrn", FIRST, "--config", cfg))[0] == 0
            await oxi.write(masimo_ascii1_line(now, "095", "071", "04.00"))
            original = validate_oru((await ehr.wait_for(1))[0])
            assert original.pid.text(3, 1) == FIRST and {r[11] for r in rows(original)} == {"R"}

            ehr.mode = "SILENT"  # the EHR takes the retraction but never acknowledges it
            code, out, err = await cli("review", "wrong-patient", "1", "--config", cfg)
            assert code == 0 and "sent to its chart as wrong (W)" in out, err
            w_sent = (await ehr.wait_for(2))[1]
            agent.kill()  # kill -9: the W is unacknowledged, the refile not sent yet

            [retraction] = audit(tmp_path, "review_wrong_patient")
            ehr.mode = "AA"
            agent = AgentProcess(Path(cfg))
            await started(agent, tmp_path)
            await ehr.wait_for(3)
            assert ehr.received[2].control_id == ehr.received[1].control_id == retraction["control_id"]
            assert ehr.received[2].raw == ehr.received[1].raw  # the same bytes, MSH-7 included
            wrong = validate_oru(w_sent)
            assert wrong.pid.text(3, 1) == FIRST and {r[11] for r in rows(wrong)} == {"W"}
            assert wrong.obr[3] == original.obr[3]
            assert [(s[3], s[4]) for s in wrong.obx] == [(s[3], s[4]) for s in original.obx]

            assert len(ehr.received) == 3  # nothing else goes before the right patient is set
            assert (await cli("patient", "set", "--mrn", SECOND, "--config", cfg))[0] == 0
            refiled = validate_oru((await ehr.wait_for(4))[3])
            assert refiled.pid.text(3, 1) == SECOND
            assert refiled.value("150456") == "95" and {r[11] for r in rows(refiled)} == {"R"}
            assert refiled.obr[3] != original.obr[3]
            assert [e["patient_mrn"] for e in audit(tmp_path, "review_refiled")] == [SECOND]
            code, out, _ = await cli("review", "list", "--config", cfg)
            assert " sent R" in out
            await oxi.write(masimo_ascii1_line(now + timedelta(seconds=5), "097", "070", "04.10"))
            assert validate_oru((await ehr.wait_for(5))[4]).pid.text(3, 1) == SECOND
        finally:
            agent.cleanup()
            await ehr.stop()
