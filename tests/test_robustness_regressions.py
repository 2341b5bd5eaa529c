"""Regressions found in review: malformed device values must become dropped values or refusals with a
reason, never an exception from an unexpected type that tears a device link down."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.fake_ehr import RawEhr, make_message
from tests.kit import MRN, fast_ehr, oximeter_reading, until
from tests.oracle import validate_oru
from vitals_agent.agent.delivery.sender import Sender
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.pipeline.normalize import normalise
from vitals_agent.agent.service import AgentService
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.cli import main
from vitals_agent.config.schema import parse_config
from vitals_agent.errors import OutboxFullError, RefusedError
from vitals_agent.hl7.oru import MessageProfile, build_oru, format_dtm, new_control_id
from vitals_agent.hl7.units import UnitConversionError, convert
from vitals_agent.models import DeviceClass, DeviceIdentity, Measurement, Reading

NOW = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)
PROFILE = MessageProfile(facility="F", location="C^R", gateway_eui64="0011223344556677")


@pytest.mark.parametrize("exponent", [127, -128, 60, -60])
def test_absurd_exponents_are_a_conversion_error(exponent: int) -> None:
    with pytest.raises(UnitConversionError):
        convert(Decimal(1).scaleb(exponent), "[degF]", "Cel")


def test_malformed_ble_float_temperature_is_dropped_not_raised() -> None:
    reading = Reading(
        device=DeviceIdentity(id="t"),
        device_class=DeviceClass.THERMOMETER,
        measurements=(Measurement(metric="body_temperature", value=Decimal("1E+127"), unit="[degF]"),),
        observed_at=NOW,
        received_at=NOW,
    )
    out = normalise(reading, max_clock_skew=timedelta(seconds=120))
    assert out.measurements == ()
    assert out.dropped[0].reason.startswith("cannot convert")


async def test_decode_of_a_malformed_float_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    # Temperature Measurement, degF flag, FLOAT mantissa 1 exponent +127 (devices.md 1.2)
    code = await main(["decode", "ble-thermometer", "--hex", "010100007F"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert code in (0, 1)


@pytest.mark.parametrize("year", [1, 5, 999])
def test_an_unset_device_clock_year_never_breaks_the_message(year: int) -> None:
    reading = Reading(
        device=DeviceIdentity(id="cuff", serial_number="S1"),
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=(Measurement(metric="bp_systolic", value=Decimal(120), unit="mm[Hg]"),),
        observed_at=NOW,
        received_at=NOW,
        device_time=datetime(year, 1, 1, 0, 30, tzinfo=UTC),
    )
    message = build_oru(reading, PROFILE, control_id=new_control_id(), created_at=NOW)
    parsed = validate_oru(message)
    assert "67975" not in parsed.codes()  # no device-clock row for a clock that was never set
    assert parsed.value("150021") == "120"


def test_dtm_years_are_four_digits() -> None:
    assert format_dtm(datetime(1905, 3, 4, 5, 6, 7, tzinfo=UTC)) == "19050304050607+0000"


# --- delivery and pipeline contracts (review findings) --------------------------------------------------
def _service(tmp_path: Path) -> AgentService:
    config = parse_config(
        {
            "agent": {"facility": "F", "location": "C^R", "data_dir": str(tmp_path)},
            "control": {"enabled": False},
            "patient": {"require_patient": True},
            "devices": [{"id": "oxi-1", "driver": "masimo-ascii", "port": str(tmp_path / "tty")}],
        }
    )
    return AgentService(config)


async def test_accept_raises_typed_errors_so_file_and_ble_transports_keep_the_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(tmp_path)
    try:
        service.patients.set(PatientDetails(mrn=MRN), Origin("cli"))
        runtime = service.runtimes["oxi-1"]

        def full(**kwargs: object) -> int:
            raise OutboxFullError("disk full; the reading was NOT queued")

        monkeypatch.setattr(service.outbox, "enqueue", full)
        with pytest.raises(OutboxFullError):
            await service.pipeline.accept(runtime, oximeter_reading(datetime.now(UTC)))
        monkeypatch.undo()
        demo = oximeter_reading(datetime.now(UTC)).with_updates(flags=())
        bad = demo.with_updates(measurements=())  # nothing to send: no conformant message
        with pytest.raises(RefusedError):
            await service.pipeline.accept(runtime, bad.with_updates(attachments=()))
        assert service.pipeline.refused == 2
    finally:
        service.outbox.close()
        service.patients.close()
        service.audit.close()


async def test_a_held_reading_released_twice_is_queued_once_under_its_reserved_msh10(tmp_path: Path) -> None:
    service = _service(tmp_path)
    try:
        runtime = service.runtimes["oxi-1"]
        assert await service.pipeline.accept(runtime, oximeter_reading(datetime.now(UTC))) is None  # held
        [held] = service.patients.held.all()
        assert held.control_id
        details = PatientDetails(mrn=MRN)
        first = await service.pipeline.release_held("oxi-1", held.reading, details, held.control_id)
        # a crash before the held row was removed: the next start releases it again
        again = await service.pipeline.release_held("oxi-1", held.reading, details, held.control_id)
        assert first == again == held.control_id
        assert [m.control_id for m in service.outbox.peek()] == [held.control_id]
    finally:
        service.outbox.close()
        service.patients.close()
        service.audit.close()


async def test_negative_ack_free_text_never_reaches_logs_above_debug(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "data")
    ehr = RawEhr(mode="AE")  # MSA-3 "Observation rejected" and an ERR segment, as receivers send
    await ehr.start()
    sender = Sender(outbox, fast_ehr(ehr.port, max_attempts=1))
    outbox.enqueue(control_id="C1", device_id="d", body=make_message("C1"))
    with capture_logs() as logs:
        task = asyncio.create_task(sender.run())
        try:
            await until(lambda: outbox.dead_count() == 1)
        finally:
            await sender.stop(timeout=1.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await ehr.stop()
    loud = [e for e in logs if e["log_level"] in ("info", "warning", "error")]
    assert any(e.get("ack") == "AE [207]" for e in loud), loud
    assert "Observation rejected" not in repr(loud)  # MSA-3 text of the fake's negative ACKs
    [dead] = outbox.list_dead()
    assert "Observation rejected" in (dead.ack_text or "")  # kept where an operator can read it
    outbox.close()


def test_scp_record_without_section_1_is_a_decode_error() -> None:
    """Found by the SCP mutation property test: a missing section raised KeyError out of the decoder."""
    from tests.test_ecg_fixtures import scp_record, scp_section7
    from vitals_agent.drivers.ecg.scp import parse
    from vitals_agent.errors import DecodeError

    record = scp_record({7: scp_section7()})
    with pytest.raises(DecodeError, match="no section 1"):
        parse(record)
