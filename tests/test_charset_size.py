"""Issue 17 item 3: the receiver's character set (MSH-18) and message size limit.

A character the charset cannot carry is sent as an HL7 hex escape of its UTF-8 bytes (default) or as a
visible marker, and counted; nothing is dropped silently. A message over ``max_message_bytes`` goes without
its attachment (an NTE says which and why) or is dead-lettered with the reason and the interface alert.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.fake_ehr import RawEhr
from tests.kit import PROFILE, m, reading, until
from tests.oracle import validate_oru
from vitals_agent.agent.control import render_text
from vitals_agent.agent.delivery.sender import MllpLink
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService
from vitals_agent.agent.storage.outbox import OutboxMessage
from vitals_agent.config.schema import parse_config
from vitals_agent.errors import ConfigError
from vitals_agent.hl7.escape import unescape
from vitals_agent.hl7.oru import MessageBuildError, MessageProfile, PatientIdentity, oru_message
from vitals_agent.models import Attachment, DeviceClass, DeviceIdentity, Reading
from vitals_agent.net.mllp import MllpClient

CREATED = datetime(2025, 3, 14, 15, 30, 12, tzinfo=UTC)
RENEE = PatientIdentity(mrn="MRN4815162342", family="Renée", given="Zoë")


def _profile(**change: Any) -> MessageProfile:
    return dataclasses.replace(PROFILE, **change)


def _bp() -> Reading:
    return reading(
        DeviceClass.BLOOD_PRESSURE, m("bp_systolic", "120", "mm[Hg]"), m("bp_diastolic", "80", "mm[Hg]")
    )


def test_8859_1_sends_latin1_bytes_and_says_so_in_msh18() -> None:
    built = oru_message(
        _bp(), _profile(charset="8859/1"), control_id="ID1", created_at=CREATED, patient=RENEE
    )
    assert b"Ren\xe9e^Zo\xeb" in built.body  # one byte each, ISO 8859-1
    assert "é".encode() not in built.body
    assert (built.escaped, built.replaced) == (0, 0)
    parsed = validate_oru(built.body)
    assert parsed.msh[18] == "8859/1"
    assert (parsed.pid.text(5, 1), parsed.pid.text(5, 2)) == ("Renée", "Zoë")


def test_8859_1_escapes_what_latin1_cannot_carry() -> None:
    patient = dataclasses.replace(RENEE, family="Łukasz-Renée")
    built = oru_message(
        _bp(), _profile(charset="8859/1"), control_id="ID1", created_at=CREATED, patient=patient
    )
    assert b"\\XC581\\ukasz-Ren\xe9e" in built.body
    assert built.escaped == 1
    assert validate_oru(built.body).pid.text(5, 1) == "Łukasz-Renée"


def test_ascii_escapes_every_non_ascii_character() -> None:
    built = oru_message(_bp(), _profile(charset="ASCII"), control_id="ID1", created_at=CREATED, patient=RENEE)
    assert built.body.isascii()
    assert b"Ren\\XC3A9\\e^Zo\\XC3AB\\" in built.body
    assert built.escaped == 2 and built.replaced == 0
    parsed = validate_oru(built.body)
    assert parsed.msh[18] == "ASCII"
    assert parsed.pid.text(5, 1) == "Renée"  # the receiver gets it back exactly
    assert unescape("Ren\\XC3A9\\e") == "Renée"


def test_marker_replaces_and_counts() -> None:
    profile = _profile(charset="ASCII", unrepresentable="marker", marker="?")
    built = oru_message(_bp(), profile, control_id="ID1", created_at=CREATED, patient=RENEE)
    assert b"PID|||MRN4815162342^^^EXAMPLE_HOSP&2.999.1&ISO^MR||Ren?e^Zo?^^^^^L" in built.body
    assert (built.escaped, built.replaced) == (0, 2)
    validate_oru(built.body)


def test_utf8_default_is_unchanged() -> None:
    built = oru_message(_bp(), PROFILE, control_id="ID1", created_at=CREATED, patient=RENEE)
    assert "Renée^Zoë".encode() in built.body
    assert validate_oru(built.body).msh[18] == "UNICODE UTF-8"
    ascii_only = oru_message(_bp(), PROFILE, control_id="ID1", created_at=CREATED)
    assert validate_oru(ascii_only.body).msh[18] == ""


@pytest.mark.parametrize("marker", ["", "|", "^^", "é"])
def test_bad_marker_is_refused(marker: str) -> None:
    with pytest.raises(MessageBuildError, match="marker"):
        _profile(unrepresentable="marker", marker=marker)


def _ekg(pdf_bytes: int) -> Reading:
    return reading(
        DeviceClass.ECG,
        m("ecg_heart_rate", "72", "/min"),
        device=DeviceIdentity(id="cart-1", serial_number="US81234567", model="PageWriter TC50"),
        statements=("Sinus rhythm",),
        attachments=(Attachment(name="ecg-report.pdf", media_type="application/pdf", data=b"%" * pdf_bytes),),
    )


def test_oversize_drops_the_attachment_and_says_so_in_an_nte() -> None:
    profile = _profile(max_message_bytes=99_999)
    small = oru_message(_ekg(10_000), profile, control_id="ID1", created_at=CREATED)
    assert small.dropped_attachments == () and b"|ED|" in small.body
    built = oru_message(_ekg(200_000), profile, control_id="ID1", created_at=CREATED)
    assert built.dropped_attachments == ("ecg-report.pdf",)
    assert len(built.body) <= 99_999
    parsed = validate_oru(built.body)
    assert not [o for o in parsed.obx if o[2] == "ED"]
    note = parsed.nte_after(parsed.obr)[0].text(3)
    assert "attachment ecg-report.pdf (200000 bytes) not sent" in note
    assert "over the receiver's limit of 99999 bytes (max_message_bytes)" in note
    assert parsed.value("8601-7") == "Sinus rhythm"  # everything else is there
    assert parsed.value("147842") == "72"


def test_oversize_dead_letter_mode_leaves_the_message_whole_and_the_link_refuses_it() -> None:
    profile = _profile(max_message_bytes=99_999, oversize="dead-letter")
    built = oru_message(_ekg(200_000), profile, control_id="ID1", created_at=CREATED)
    assert built.dropped_attachments == () and len(built.body) > 99_999
    link = MllpLink(MllpClient("127.0.0.1", 1), 1.0, max_bytes=99_999)
    msg = OutboxMessage(id=1, control_id="ID1", device_id="cart-1", body=built.body)
    reason = link.refusal(msg)
    assert reason is not None and f"message is {len(built.body)} bytes" in reason
    assert "max_message_bytes" in reason
    assert link.refusal(dataclasses.replace(msg, body=b"MSH|^~\\&|small\r")) is None


def test_config_keys(tmp_path: Path) -> None:
    base: dict[str, Any] = {"agent": {"facility": "F", "data_dir": str(tmp_path)}}
    config = parse_config(
        {
            **base,
            "ehr": {
                "charset": "8859/1",
                "unrepresentable": "marker",
                "marker": "#",
                "max_message_bytes": 99999,
            },
        }
    )
    assert (config.ehr.charset, config.ehr.marker, config.ehr.max_message_bytes) == ("8859/1", "#", 99999)
    assert config.ehr.oversize == "drop-attachment"
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "ehr": {"charset": "latin1", "marker": "|", "max_message_bytes": 10}})
    keys = {key for key, _ in info.value.problems}
    assert {"ehr.charset", "ehr.marker", "ehr.max_message_bytes"} <= keys


# --- through the agent to a receiver --------------------------------------------------------------


async def _deliver(tmp_path: Path, ehr: RawEhr, **ehr_keys: Any) -> tuple[bytes, dict[str, Any], str]:
    config = parse_config(
        {
            "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path)},
            "ehr": {"port": ehr.port, "backoff_min_seconds": 0.05, "backoff_max_seconds": 0.1, **ehr_keys},
            "control": {"enabled": False},
            "devices": [{"id": "cuff-1", "driver": "suntech-advantage", "port": str(tmp_path / "tty")}],
        }
    )
    svc = AgentService(config)
    try:
        svc.patients.set(PatientDetails(mrn="MRN4815162342", family="Renée", given="Zoë"), Origin("cli"))
        now = datetime.now(UTC)  # after the patient was set: filed to that patient
        bp = _bp().with_updates(device=DeviceIdentity(id="cuff-1"), observed_at=now, received_at=now)
        await svc.runtimes["cuff-1"].emit(bp)
        assert svc.outbox.depth() == 1
        sender = svc.senders["ehr"]
        task = asyncio.create_task(sender.run())
        try:
            await ehr.wait_for(1)
            await until(lambda: svc.outbox.depth() == 0, 10.0, "the message delivered")
        finally:
            await sender.stop()
            await task
        status = svc.status()
        return ehr.received[0].raw, status, render_text(status, {"set": False})
    finally:
        svc.close()


@pytest.mark.slow
async def test_agent_sends_8859_1_to_the_receiver(tmp_path: Path) -> None:
    async with RawEhr() as ehr:
        raw, status, _ = await _deliver(tmp_path, ehr, charset="8859/1")
    assert b"Ren\xe9e^Zo\xeb" in raw
    assert validate_oru(raw).msh[18] == "8859/1"
    assert status["encoding"] == {"escaped": 0, "replaced": 0, "attachments_dropped": 0}


@pytest.mark.slow
async def test_agent_sends_ascii_escaped_and_counts_it(tmp_path: Path) -> None:
    with capture_logs() as logs:
        async with RawEhr() as ehr:
            raw, status, text = await _deliver(tmp_path, ehr, charset="ASCII")
    assert raw.isascii() and b"Ren\\XC3A9\\e^Zo\\XC3AB\\" in raw
    parsed = validate_oru(raw)
    assert (parsed.msh[18], parsed.pid.text(5, 1)) == ("ASCII", "Renée")
    assert status["encoding"]["escaped"] == 2
    assert "2 character(s) sent as HL7 escapes ([ehr] charset)" in text
    said = [e for e in logs if e["event"] == "reading.chars_escaped"]
    assert said and said[0]["escaped"] == 2
    assert not any("Ren" in str(e) for e in logs)  # the name itself is never logged
