"""Issue #10 item 4: an EKG sent twice under two MSH-10s after a crash.

The file's digest used to be recorded after the outbox commit; a kill -9 between the two made the restarted
agent queue the same file again under a new MSH-10 (the trial: 14-18 of 300 files with a slow disk and 30
kills). Now the digest commits in the same SQLite transaction as the message. The agent runs as a real
process, killed by SIGKILL right after that commit (tests/ecg_crash_worker.py), restarted, and python-hl7's
MLLP server counts the MSH-10s each file arrived under: exactly one per file.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from tests.e2e_helpers import outbox_depth, write_config
from tests.fake_ehr import Hl7Ehr
from tests.kit import until
from tests.test_ecg_fixtures import ctx, driver, scp_record, scp_section1, scp_section7, synthetic_scp
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService
from vitals_agent.config.schema import parse_config
from vitals_agent.models import PatientInfo, Reading

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # the agent as a subprocess
WORKER = Path(__file__).with_name("ecg_crash_worker.py")


async def run_agent(config: Path, *flags: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        str(config),
        *flags,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def msh10_by_patient(messages: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for message in messages:
        segments = {
            line.split("|", 1)[0]: line.split("|") for line in message.replace("\n", "\r").split("\r")
        }
        mrn = segments["PID"][3].split("^")[0]
        out.setdefault(mrn, set()).add(segments["MSH"][9])
    return out


async def test_kill_right_after_the_outbox_commit_never_gives_a_second_msh10(tmp_path: Path) -> None:
    share, data = tmp_path / "share", tmp_path / "data"
    share.mkdir()
    ehr = await Hl7Ehr().start()
    device = {"id": "ekg-1", "driver": "scp-ecg", "folder": str(share), "poll_seconds": 0.05}
    config = write_config(tmp_path / "agent.toml", data_dir=data, ehr_port=ehr.port, devices=[device])
    mrns = [f"CRASH{i}" for i in range(3)]
    try:
        for mrn in mrns:
            (share / f"{mrn}.scp").write_bytes(scp_record({1: scp_section1(pid=mrn), 7: scp_section7()}))
            proc = await run_agent(config, "--kill-after-enqueue")
            assert await asyncio.wait_for(proc.wait(), 60) == -9  # killed by SIGKILL right after the commit
            assert (share / f"{mrn}.scp").exists(), "killed before the file was moved"
        proc = await run_agent(config)
        try:
            await until(
                lambda: len(list((share / "processed").glob("*.scp"))) == 3,
                timeout=30,
                what="all files processed",
            )
            await until(lambda: outbox_depth(data) == 0, timeout=30, what="the outbox drained")
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)
    finally:
        await ehr.close()
    sent = msh10_by_patient(ehr.messages)
    assert sorted(sent) == mrns
    # before the fix: {"CRASH0": {id1, id2}, ...} - each file queued again after the restart
    assert all(len(ids) == 1 for ids in sent.values()), sent
    assert sorted(p.name for p in (share / "processed").iterdir()) == [f"{m}.scp" for m in mrns]


# ------------------------------------------------------------------------------------ in process: every path


def _service(tmp_path: Path, *, require_patient: bool) -> AgentService:
    config = parse_config(
        {
            "agent": {
                "facility": "EXCLINIC",
                "location": "CLINIC^ROOM12",
                "data_dir": str(tmp_path / "data"),
            },
            "control": {"enabled": False},
            "patient": {"require_patient": require_patient},
            "devices": [{"id": "ekg-1", "driver": "scp-ecg", "folder": str(tmp_path / "share")}],
        }
    )
    return AgentService(config)


def _ekg(key: str, *, mrn: str | None) -> Reading:
    reading = driver("scp-ecg").decode_file(synthetic_scp(), ctx())  # type: ignore[attr-defined]
    assert isinstance(reading, Reading)
    patient = PatientInfo(mrn=mrn) if mrn else None
    return reading.with_updates(dedupe_key=key, source_patient=patient)


async def test_the_key_commits_with_the_message_and_a_second_offer_is_not_queued(tmp_path: Path) -> None:
    service = _service(tmp_path, require_patient=False)
    try:
        runtime = service.runtimes["ekg-1"]
        first = await service.pipeline.accept(runtime, _ekg("ecg-file:aa", mrn="CART1"))
        assert first is not None
        recorded = service.outbox.get_state("ekg-1", "ecg-file:aa")
        assert recorded is not None and json.loads(recorded)["control_id"] == first.control_id
        assert await service.pipeline.accept(runtime, _ekg("ecg-file:aa", mrn="CART1")) is None
        assert service.outbox.depth() == 1
    finally:
        service.outbox.close()
        service.patients.close()
        service.audit.close()


async def test_a_held_ekg_offered_again_after_a_crash_is_held_once(tmp_path: Path) -> None:
    service = _service(tmp_path, require_patient=True)
    try:
        runtime = service.runtimes["ekg-1"]
        assert await service.pipeline.accept(runtime, _ekg("ecg-file:bb", mrn=None)) is None  # held
        assert await service.pipeline.accept(runtime, _ekg("ecg-file:bb", mrn=None)) is None  # not again
        assert len(service.patients.held.all()) == 1
        service.patients.set(PatientDetails(mrn="ROOM7"), Origin("api"))
        await service.patients.release_held()
        assert service.outbox.depth() == 1 and service.outbox.get_state("ekg-1", "ecg-file:bb") is not None
        assert await service.pipeline.accept(runtime, _ekg("ecg-file:bb", mrn=None)) is None
        assert service.outbox.depth() == 1
    finally:
        service.outbox.close()
        service.patients.close()
        service.audit.close()
