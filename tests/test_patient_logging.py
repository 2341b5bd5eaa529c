"""Patient identifiers never reach the operational log at INFO; the audit log has the full trail."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.kit import DOB, FAMILY, GIVEN, MRN, T0, FakeClock, event_names, manager, oximeter_reading
from tests.test_control import Env, fake_status
from vitals_agent.agent.control import ControlServer
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.drivers.barcode import BarcodeDriver, BarcodeOptions
from vitals_agent.drivers.base import DecodeContext, DecodeFailure
from vitals_agent.logs import setup_logging
from vitals_agent.models import DeviceIdentity, PatientScan, Reading

SECRETS = (MRN, FAMILY, GIVEN, DOB, "SCANNEDNAME")


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    setup_logging("INFO", stream=buf, json=True)  # the agent's real logging setup, JSON lines
    yield buf
    structlog.reset_defaults()


async def test_whole_patient_flow_logs_no_identifiers(tmp_path: Path, log_buffer: io.StringIO) -> None:
    clock = FakeClock()
    patients = manager(tmp_path, clock, require_patient=True, patient_timeout_minutes=30)
    released: list[Reading] = []

    async def releaser(
        device_id: str, reading: Reading, patient: PatientDetails, control_id: str | None = None
    ) -> str | None:
        released.append(reading)
        return f"CTRL{len(released)}"

    patients.releaser = releaser
    server = ControlServer(tmp_path, patients, fake_status, port=0, now=clock)
    await server.start()
    env = Env(server, patients, tmp_path, FakeClock())
    try:
        # a reading before any patient: held
        patients.route("oxi-1", oximeter_reading(T0))
        # the wristband scanner sees a bad scan (someone's name) and then a good one
        options = BarcodeOptions(port="/dev/null", mrn_pattern=r"(?P<mrn>MRN\d+)")
        decoder = BarcodeDriver(options).stream_decoder(
            DecodeContext(device=DeviceIdentity(id="scan-1"), now=clock)
        )
        outputs = decoder.feed(b"SCANNEDNAME\r\n" + MRN.encode() + b"\r\n")
        for item in outputs:
            if isinstance(item, PatientScan):
                await patients.on_scan(item)
            elif isinstance(item, DecodeFailure):
                structlog.get_logger("vitals_agent.agent.runtime").info(
                    "device.decode_failed", error=str(item.error)
                )
        assert len(released) == 1  # the held reading went to the scanned patient
        # the full demographics through the API, a reveal, bad input, a reading, expiry, a clear
        body = {"mrn": MRN, "name": f"{FAMILY}^{GIVEN}", "birth_date": DOB, "sex": "F"}
        assert (await env.http("PUT", "/api/patient", body))[0] == 200
        assert (await env.http("GET", "/api/patient?reveal=1"))[0] == 200
        assert (await env.http("GET", "/?reveal=1"))[0] == 200
        assert (await env.http("PUT", "/api/patient", {"mrn": MRN + "|"}))[0] == 400
        assert (await env.http("PUT", "/api/patient", {"mrn": MRN}, token="wrong"))[0] == 401
        patients.route("oxi-1", oximeter_reading(clock.now))
        clock.advance(minutes=31)
        patients.tick()
        patients.set(PatientDetails(mrn=MRN, family=FAMILY), Origin("cli"))
        patients.clear(Origin("cli"))
        patients.route("oxi-1", oximeter_reading(clock.now))
        clock.advance(hours=2)
        patients.tick()  # the held reading times out
    finally:
        await server.stop()
        patients.close()

    logged = log_buffer.getvalue()
    records = [json.loads(line) for line in logged.splitlines()]
    messages = {r["event"] for r in records}
    # The flow really was logged (so the check below is not vacuous) ...
    assert {
        "held.until_patient",
        "patient.scanned",
        "patient.set",
        "held.released",
        "patient.expired",
        "patient.cleared",
        "control.request_refused",
        "held.dropped",
        "device.decode_failed",
    } <= messages
    assert all(r["level"] in {"info", "warning", "error"} for r in records)
    # ... and no identifier is in it, nor the control token.
    assert server.token not in logged
    for secret in SECRETS:
        assert secret not in logged, f"{secret} leaked into the operational log"

    # The audit log has every step, with the identifiers.
    audit_text = (tmp_path / "audit.jsonl").read_text()
    assert MRN in audit_text and FAMILY in audit_text and GIVEN in audit_text and DOB in audit_text
    assert event_names(tmp_path) == [
        "reading_accepted",
        "reading_held",
        "scan",
        "context_set",
        "held_released",
        "context_set",
        "context_revealed",
        "context_revealed",
        "context_expired",
        "context_set",
        "context_cleared",
        "reading_accepted",
        "reading_held",
        "held_dropped",
    ]
