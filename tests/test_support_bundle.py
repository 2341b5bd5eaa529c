"""``vitals-agent support-bundle``: a running agent with patient data everywhere it could leak (the
patient context, bound readings queued for a down EHR, a dead letter whose receiver text names the
patient, the audit trail, a device description a technician typed a name into, a log line that leaked an
MRN, a DEBUG line with a wristband in hex) gives a zip with what support needs and none of that data."""

from __future__ import annotations

import asyncio
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from tests.kit import DOB, FAMILY, GIVEN, MRN, free_port, oximeter_reading, until
from tests.kit.toml import toml_str
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService
from vitals_agent.cli import main
from vitals_agent.commands.support import redact_config, scrub
from vitals_agent.config.schema import load_config

VISIT = "VISIT778899"
SECRETS = (MRN, FAMILY, GIVEN, DOB, "1980-02-29", VISIT, MRN.encode().hex())


def test_scrub_and_redact() -> None:
    assert scrub(f"a {MRN} b {FAMILY.lower()} c", {MRN, FAMILY}) == ("a [redacted] b [redacted] c", 2)
    assert redact_config({"smtp": {"username": "u", "password_file": "/p", "host": "h"}, "token": None}) == {
        "smtp": {"username": "[redacted]", "password_file": "/p", "host": "h"},
        "token": None,
    }


async def test_a_support_bundle_has_what_support_needs_and_no_patient_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config_file = tmp_path / "agent.toml"
    config_file.write_text(
        "[agent]\n"
        'facility = "EXCLINIC"\n'
        'location = "CLINIC^ROOM12"\n'
        f"data_dir = {toml_str(data)}\n"
        "[control]\nport = 0\n"
        f"[ehr]\nport = {free_port()}\nbackoff_min_seconds = 0.01\nbackoff_max_seconds = 0.05\n"
        "[alerts]\ndisk_free_mb = 0\n"
        '[alerts.smtp]\nhost = "smtp.test"\nfrom = "a@b.test"\nto = ["c@d.test"]\nusername = "alerts-user"\n'
        "[[devices]]\n"
        'id = "oxi-1"\ndriver = "masimo-ascii"\nport = "/nonexistent/tty"\nreport = "every"\n'
        f'description = "left in room for {GIVEN} {FAMILY}"\n'
    )
    log_file = tmp_path / "agent.log"
    log_file.write_text(
        json.dumps({"event": "device.connected", "device": "oxi-1", "level": "info"}) + "\n"
        + json.dumps({"event": "oops", "mrn": MRN, "level": "warning"}) + "\n"
        + json.dumps({"event": "device.decode_failed", "hex": MRN.encode().hex(), "level": "debug"}) + "\n"
    )  # fmt: skip
    svc = AgentService(load_config(config_file))
    stop = asyncio.Event()
    run = asyncio.create_task(svc.run(stop))
    try:
        await until(lambda: (data / "control.json").exists(), 10, "the control API")
        details = PatientDetails(mrn=MRN, family=FAMILY, given=GIVEN, birth_date=DOB, encounter=VISIT)
        svc.patients.set(details, Origin("cli"))
        for spo2 in ("96", "97"):
            await svc.pipeline.on_event(svc.runtimes["oxi-1"], oximeter_reading(datetime.now(UTC), spo2=spo2))
        first = svc.outbox.peek(1)[0]
        svc.outbox.dead_letter(first.id, "AR", ack_code="AR", ack_text=f"unknown patient {FAMILY}^{GIVEN}")
        out = tmp_path / "support.zip"
        code = await main(
            ["support-bundle", "-o", str(out), "--config", str(config_file), "--log", str(log_file)]
        )
        assert code == 0
    finally:
        stop.set()
        await run

    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        texts = {name.split("/", 1)[1]: zf.read(name).decode() for name in names}
    assert sorted(texts) == sorted(
        ["README.txt", "config.json", "status.json", "versions.json", "ports.json", "ble.json", "log.txt",
         "outbox.json", "audit.json", "data_dir.json"]
    )  # fmt: skip
    everything = "\n".join([*names, *texts.values()]).lower()
    for secret in SECRETS:
        assert secret.lower() not in everything, secret
    status = json.loads(texts["status.json"])
    assert status["patient"] == {"set": True, "held": 0}
    assert status["devices"][0]["id"] == "oxi-1" and "last_reading" not in status["devices"][0]
    outbox = json.loads(texts["outbox.json"])
    assert outbox["queued"]["ehr"]["count"] == 1 and outbox["dead"]["ehr"]["count"] == 1
    audit = json.loads(texts["audit.json"])
    assert audit["by_event"]["reading_accepted"] == 2 and audit["by_event"]["context_set"] == 1
    assert audit["chain"]["intact"] is True and audit["chain"]["problems"] == []
    config = json.loads(texts["config.json"])
    assert config["alerts"]["smtp"]["username"] == "[redacted]"
    assert config["devices"][0]["description"] == "left in room for [redacted] [redacted]"
    assert "device.connected" in texts["log.txt"] and "device.decode_failed" not in texts["log.txt"]
    assert '"mrn": "[redacted]"' in texts["log.txt"]
    assert json.loads(texts["versions.json"])["packages"]["pydantic"]
    # the two names in the description and the leaked MRN: caught by the scrub, counted in the README
    assert "and removed: 3." in texts["README.txt"]
