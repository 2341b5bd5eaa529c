"""FHIR delivery through the shared sender loop: the FHIR fault cases against the loopback FHIR server,
each destination's rows independent of the other's."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.fake_ehr import Hl7Ehr, make_message
from tests.fake_fhir import FakeFhir
from tests.fhir_oracle import check_bundle
from tests.kit import free_port, until
from vitals_agent.agent.delivery.fhir_sender import FhirSender
from vitals_agent.agent.delivery.sender import QueueSender, Sender
from vitals_agent.agent.storage.outbox import DeadLetter, Outbox
from vitals_agent.config.ehr import EhrConfig
from vitals_agent.config.fhir import FhirConfig
from vitals_agent.fhir.bundle import FhirProfile, build_bundle
from vitals_agent.models import DeviceClass, DeviceIdentity, Measurement, Reading

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
PROFILE = FhirProfile(gateway_eui64="00000000000000AA", patient_system="urn:oid:2.999.1", location="C^R12")


def fast_fhir(base_url: str, **kw: Any) -> FhirConfig:
    values: dict[str, Any] = {
        "enabled": True,
        "base_url": base_url,
        "connect_timeout_seconds": 1.0,
        "timeout_seconds": 0.5,
        "backoff_min_seconds": 0.01,
        "backoff_max_seconds": 0.05,
    }
    values.update(kw)
    return FhirConfig(**values)


def bundle(control_id: str, n: int) -> bytes:
    at = T0 + timedelta(seconds=n)
    reading = Reading(
        device=DeviceIdentity(id="ox", eui64="0011223344556677"),
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=(
            Measurement(metric="spo2", value=Decimal(90 + n), unit="%"),
            Measurement(metric="pulse_rate_oximeter", value=Decimal(60 + n), unit="/min"),
        ),
        observed_at=at,
        received_at=at,
    )
    return build_bundle(reading, PROFILE, message_id=control_id, created_at=at)


def queue(outbox: Outbox, names: list[str], *, both: bool = False) -> None:
    for n, name in enumerate(names):
        if both:
            outbox.enqueue(
                control_id=name, device_id="ox", body=make_message(name), also={"fhir": bundle(name, n)}
            )
        else:
            outbox.enqueue(control_id=name, device_id="ox", body=bundle(name, n), destination="fhir")


@contextlib.asynccontextmanager
async def running(*senders: QueueSender) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(s.run()) for s in senders]
    try:
        yield
    finally:
        for sender in senders:
            await sender.stop(timeout=1.0)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_bundles_delivered_in_order_once_and_ehr_rows_untouched(outbox: Outbox) -> None:
    queue(outbox, ["C0", "C1", "C2"])
    outbox.enqueue(control_id="E0", device_id="ox", body=make_message("E0"))  # the EHR's: not FHIR's business
    async with FakeFhir() as server:
        sender = FhirSender(outbox, fast_fhir(server.base_url))
        async with running(sender):
            await until(lambda: outbox.depth("fhir") == 0)
            status = sender.status()
        assert server.bundle_ids() == ["C0", "C1", "C2"]
        for arrival in server.arrivals:
            check_bundle(arrival.raw)
        assert len(server.observations()) == 6
    assert outbox.depth("ehr") == 1
    assert status["destination"] == "fhir" and status["depth"] == 0 and status["delivered"] == 3
    assert status["connected"] is True and status["peer"] == server.base_url


async def test_fhir_down_at_start_then_up(outbox: Outbox) -> None:
    port = free_port()
    queue(outbox, ["C0", "C1"])
    sender = FhirSender(outbox, fast_fhir(f"http://127.0.0.1:{port}/fhir"))
    async with running(sender):
        await until(lambda: sender.status()["consecutive_failures"] >= 3)
        assert "cannot reach the FHIR server" in sender.status()["last_error"]
        assert outbox.dead_count() == 0  # a server that is down never dead-letters anything
        async with FakeFhir(port=port) as server:
            await until(lambda: outbox.depth("fhir") == 0)
            assert server.bundle_ids() == ["C0", "C1"]


async def test_503_with_retry_after_is_honoured_then_delivered(outbox: Outbox) -> None:
    queue(outbox, ["C0"])
    async with FakeFhir() as server:
        server.plan = ["503", "503"]
        server.retry_after = "1"
        sender = FhirSender(outbox, fast_fhir(server.base_url))
        started = time.monotonic()
        async with running(sender):
            await until(lambda: outbox.depth("fhir") == 0, timeout=15)
        arrivals = [a.status for a in server.arrivals]
        assert arrivals == [503, 503, 200]
        # the back-off is 10-50 ms here: the two 1 s waits can only come from Retry-After
        assert time.monotonic() - started >= 1.9
        assert outbox.dead_count() == 0 and len(server.observations()) == 2


async def test_400_dead_letters_with_the_operation_outcome_and_the_queue_moves_on(outbox: Outbox) -> None:
    queue(outbox, ["C0", "C1", "C2"])
    async with FakeFhir() as server:
        server.per_id = {"C1": "400"}
        sender = FhirSender(outbox, fast_fhir(server.base_url))
        async with running(sender):
            await until(lambda: outbox.depth("fhir") == 0 and outbox.dead_count() == 1)
        assert server.bundle_ids() == ["C0", "C2"]
    (dead,) = outbox.list_dead()
    assert isinstance(dead, DeadLetter)
    assert (dead.control_id, dead.destination, dead.ack_code) == ("C1", "fhir", "HTTP 400")
    assert dead.reason == "rejected by the receiver (HTTP 400)"
    assert dead.ack_text == "error invalid: Observation.code: not acceptable here (test)"


async def test_timeout_then_resend_creates_no_duplicate(outbox: Outbox) -> None:
    queue(outbox, ["C0", "C1"])
    async with FakeFhir() as server:
        server.delay = 2.0
        server.plan = ["STORE_SLOW", "STORE_RESET"]  # stored both times, the answer lost both times
        sender = FhirSender(outbox, fast_fhir(server.base_url, timeout_seconds=0.4))
        async with running(sender):
            await until(lambda: outbox.depth("fhir") == 0, timeout=15)
        assert server.bundle_ids(None).count("C0") >= 2  # sent again after the lost answers
        ids = server.observation_identifiers()
        assert len(ids) == len(set(ids)) == 4  # two readings, two Observations each, none twice
        assert len(server.store.all("Device")) == 1
    assert outbox.dead_count() == 0


async def test_a_bundle_the_server_always_fails_is_dead_lettered_once_a_later_one_goes(
    outbox: Outbox,
) -> None:
    queue(outbox, ["C0", "C1"])
    async with FakeFhir() as server:
        server.per_id = {"C0": "500"}
        sender = FhirSender(outbox, fast_fhir(server.base_url))
        async with running(sender):
            await until(lambda: outbox.depth("fhir") == 0 and outbox.dead_count() == 1, timeout=15)
        assert server.bundle_ids() == ["C1"]
    assert outbox.list_dead()[0].control_id == "C0"
    assert "after accepting the connection" in outbox.list_dead()[0].reason


async def test_a_busy_server_never_dead_letters(outbox: Outbox) -> None:
    queue(outbox, ["C0", "C1"])
    async with FakeFhir() as server:
        server.plan = ["429", "503", "429", "503", "408"]
        sender = FhirSender(outbox, fast_fhir(server.base_url))
        async with running(sender):
            await until(lambda: outbox.depth("fhir") == 0, timeout=15)
        assert server.bundle_ids() == ["C0", "C1"]
    assert outbox.dead_count() == 0


async def test_each_destination_independently(outbox: Outbox) -> None:
    """The FHIR server down does not hold up the EHR, and the EHR down does not hold up FHIR."""
    queue(outbox, ["R0", "R1", "R2"], both=True)
    fhir_port = free_port()
    async with Hl7Ehr() as ehr:
        hl7_sender = Sender(
            outbox,
            EhrConfig(
                host="127.0.0.1",
                port=ehr.port,
                ack_timeout_seconds=0.3,
                backoff_min_seconds=0.01,
                backoff_max_seconds=0.05,
            ),
        )
        fhir_sender = FhirSender(outbox, fast_fhir(f"http://127.0.0.1:{fhir_port}/fhir"))
        async with running(hl7_sender, fhir_sender):
            await until(lambda: outbox.depth("ehr") == 0)
            assert ehr.control_ids == ["R0", "R1", "R2"]
            assert outbox.depth("fhir") == 3  # waiting for its server, unharmed
            await ehr.stop()  # now the EHR goes down and the FHIR server comes up
            async with FakeFhir(port=fhir_port) as server:
                await until(lambda: outbox.depth("fhir") == 0)
                assert server.bundle_ids() == ["R0", "R1", "R2"]
    assert outbox.depth() == 0 and outbox.dead_count() == 0


async def test_outbox_commands_show_both_rows_of_a_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vitals_agent.cli import main

    data = tmp_path / "data"
    ob = Outbox(data)
    queue(ob, ["R0"], both=True)
    fhir_row = ob.peek(10, destination="fhir")[0]
    ob.dead_letter(
        fhir_row.id, "rejected by the receiver (HTTP 400)", ack_code="HTTP 400", ack_text="error x"
    )
    ob.close()
    assert await main(["outbox", "list", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "1 queued, 1 dead"
    assert [line.split()[:5] for line in out[2:]] == [
        ["1", "queued", "R0", "ox", "ehr"],
        ["2", "dead", "R0", "ox", "fhir"],
    ]
    assert await main(["outbox", "show", "R0", "--data-dir", str(data)]) == 0
    shown = capsys.readouterr().out
    assert "destination: ehr" in shown and "destination: fhir" in shown
    assert "Bundle R0 (transaction, 4 entries)" in shown and "POST Observation" in shown
    assert '"valueQuantity"' not in shown  # redacted
    assert await main(["outbox", "retry", "R0", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.strip() == "re-queued message 2 (R0) for fhir; it keeps its MSH-10"
    assert await main(["outbox", "retry", "R0", "--data-dir", str(data)]) == 1
    assert "already queued" in capsys.readouterr().err


def test_status_shows_each_destination(tmp_path: Path) -> None:
    from tests.test_control import fake_status
    from vitals_agent.agent.control import render_html, render_text
    from vitals_agent.agent.control.common import SenderSnapshot

    now = datetime(2026, 3, 11, 14, 0, 5, tzinfo=UTC)
    status = fake_status()
    ehr: SenderSnapshot = {
        "peer": "ehr.test:2575",
        "connected": True,
        "last_ack_at": "2026-03-11T14:00:00+00:00",
    }
    fhir: SenderSnapshot = {
        "peer": "https://fhir.test/r4",
        "consecutive_failures": 2,
        "last_error": "HTTP 503: the FHIR server cannot take it now",
        "last_error_at": "2026-03-11T14:00:04+00:00",
    }
    status["sender"] = ehr
    status["destinations"] = {"ehr": ehr, "fhir": fhir}
    text = render_text(status, {}, now=now)
    assert "EHR ehr.test:2575: connected; last ACK" in text
    assert "FHIR https://fhir.test/r4: UNREACHABLE (HTTP 503: the FHIR server cannot take it now;" in text
    assert "Last FHIR error: HTTP 503" in text and "Last EHR error: none" in text
    page = render_html(status, {}, now=now)
    assert '<div id="fhir" class="stat wide bad">FHIR https://fhir.test/r4: UNREACHABLE' in page
    assert '<div id="ehr" class="stat wide">EHR ehr.test:2575' in page
    # a FHIR-only site shows no EHR at all
    status["sender"] = fhir
    status["destinations"] = {"fhir": fhir}
    text = render_text(status, {}, now=now)
    assert "EHR" not in text and "FHIR https://fhir.test/r4: UNREACHABLE" in text
    assert 'id="ehr"' not in render_html(status, {}, now=now)
