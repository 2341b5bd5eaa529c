"""Issue 17 item 2: enhanced acknowledgement mode.

A commit accept (CA) moves a message to *awaiting application ACK* (policy state and the outbox's
``awaiting_ack`` table, durable across restarts); the application ACK arrives on the same connection or on
the inbound ``[ehr] app_ack_port``, is matched by MSA-2, and AA completes, AE/AR dead-letters with the
reason and the interface alert; without one within ``app_ack_timeout_seconds`` the message is overdue
(status and WARNING), not dropped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.fake_ehr import AE_ERR, AE_TEXT, RawEhr, ack_bytes, make_message
from tests.kit import fast_ehr, running_sender, until
from vitals_agent.agent.control import render_text
from vitals_agent.agent.delivery.policy import (
    AwaitAppAck,
    DeadLetter,
    DeliveryPolicy,
    Removal,
    Send,
    Settings,
    Settle,
    Wait,
)
from vitals_agent.agent.delivery.sender import Sender
from vitals_agent.agent.service import AgentService
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.config.ehr import EhrConfig
from vitals_agent.config.schema import parse_config
from vitals_agent.hl7.mllp import MllpDeframer
from vitals_agent.net.ack_listener import AckListener


@dataclass(frozen=True)
class Msg:
    id: int
    control_id: str


def policy(mode: str = "always", timeout: float = 60.0) -> DeliveryPolicy[Msg]:
    return DeliveryPolicy(Settings(app_ack=mode, app_ack_timeout=timeout))  # type: ignore[arg-type]


def commit(p: DeliveryPolicy[Msg], msg: Msg, now: float) -> None:
    """The receiver answered CA and the move to awaiting_ack was written."""
    p.refilled([msg], now)
    step = p.next_step(now)
    assert isinstance(step, Send) and step.message == msg
    p.answered(msg)
    assert p.accepted(msg, "CA", now) is False
    step = p.next_step(now)
    assert isinstance(step, Settle) and isinstance(step.outcome, AwaitAppAck)
    p.settled(msg.id, now)


# --- the policy (pure) ----------------------------------------------------------------------------------


def test_settings_follow_msh16() -> None:
    for msh16, mode in [("NE", "never"), ("AL", "always"), ("SU", "always"), ("ER", "errors")]:
        ehr = EhrConfig.model_validate({"application_ack_type": msh16, "app_ack_timeout_seconds": 42.0})
        settings = Settings.from_ehr(ehr)
        assert (settings.app_ack, settings.app_ack_timeout) == (mode, 42.0)


def test_without_enhanced_mode_a_ca_is_delivery() -> None:
    p = policy("never")
    p.refilled([Msg(1, "M1")], 0.0)
    p.next_step(0.0)
    assert p.accepted(Msg(1, "M1"), "CA", 0.0) is True
    step = p.next_step(0.0)
    assert isinstance(step, Settle) and isinstance(step.outcome, Removal)
    assert p.application_ack("M1", "AA", 1.0) is None


def test_ca_then_aa_completes() -> None:
    p = policy()
    commit(p, Msg(1, "M1"), 10.0)
    assert p.snapshot(10.0)["awaiting_app_ack"] == 1
    verdict = p.application_ack("M1", "AA", 25.0)
    assert verdict is not None and verdict.kind == "completed" and verdict.waited == 15.0
    step = p.next_step(25.0)
    assert isinstance(step, Settle) and isinstance(step.outcome, Removal) and step.message is None
    p.settled(1, 25.0)
    assert p.snapshot(25.0)["awaiting_app_ack"] == 0
    assert p.was_completed("M1") and p.application_ack("M1", "AA", 26.0) is None


@pytest.mark.parametrize(("code", "what"), [("AE", "application error"), ("AR", "application reject")])
def test_ca_then_error_dead_letters_with_the_reason(code: str, what: str) -> None:
    p = policy()
    commit(p, Msg(1, "M1"), 0.0)
    verdict = p.application_ack("M1", code, 3.0, text=f"{code}: {AE_TEXT}", summary=f"{code} [207]")
    assert verdict is not None and verdict.kind == "dead"
    step = p.next_step(3.0)
    assert isinstance(step, Settle) and isinstance(step.outcome, DeadLetter)
    assert (
        step.outcome.reason == f"{what} ({code}) after the receiver had committed the message (CA), 3 s later"
    )
    assert (step.outcome.ack_code, step.outcome.ack_text, step.outcome.ack_summary) == (
        code,
        f"{code}: {AE_TEXT}",
        f"{code} [207]",
    )


def test_a_second_ca_changes_nothing() -> None:
    p = policy()
    commit(p, Msg(1, "M1"), 0.0)
    verdict = p.application_ack("M1", "CA", 1.0)
    assert verdict is not None and verdict.kind == "ignored"
    assert p.snapshot(1.0)["awaiting_app_ack"] == 1


def test_no_application_ack_is_overdue_once_and_a_late_aa_still_completes() -> None:
    p = policy(timeout=30.0)
    commit(p, Msg(1, "M1"), 0.0)
    p.refilled([], 0.0)
    step = p.next_step(0.0)
    assert isinstance(step, Wait) and step.seconds == 2.0  # the idle poll comes first
    step = p.next_step(29.5)
    assert isinstance(step, Wait) and step.seconds == pytest.approx(0.5)  # wakes for the deadline
    assert p.overdue(29.0) == ([], [])
    assert p.overdue(30.0) == (["M1"], [])
    assert p.overdue(90.0) == ([], [])  # reported once
    assert p.snapshot(90.0)["app_ack_overdue"] == ["M1"]
    verdict = p.application_ack("M1", "AA", 95.0)
    assert verdict is not None and verdict.kind == "completed"
    assert p.snapshot(95.0)["app_ack_overdue"] == []


def test_errors_only_mode_completes_on_silence() -> None:
    p = policy("errors", timeout=10.0)
    commit(p, Msg(1, "M1"), 0.0)
    assert p.overdue(10.0) == ([], ["M1"])
    step = p.next_step(10.0)
    assert isinstance(step, Settle) and isinstance(step.outcome, Removal)


def test_restored_after_a_restart_with_the_time_already_waited() -> None:
    p = policy(timeout=60.0)
    p.restore_awaiting([(7, "M7", 50.0), (8, "M8", 70.0)], 1000.0)
    assert p.awaiting("M7") and p.awaiting("M8")
    assert p.overdue(1000.0) == (["M8"], [])
    assert p.overdue(1010.0) == (["M7"], [])


# --- the outbox ------------------------------------------------------------------------------------------


def test_outbox_moves_committed_messages_aside_and_settles_them(outbox: Outbox) -> None:
    first = outbox.enqueue(control_id="M1", device_id="d", body=make_message("M1"))
    second = outbox.enqueue(control_id="M2", device_id="d", body=make_message("M2"))
    assert outbox.await_app_ack(first) and outbox.await_app_ack(second)
    assert outbox.depth() == 0 and outbox.peek() == []  # never sent again
    assert [a.control_id for a in outbox.awaiting("ehr")] == ["M1", "M2"]
    assert outbox.has_control_id("M1")
    assert outbox.delete(first, "M1")  # AA
    assert outbox.dead_letter(second, "application error", ack_code="AE", ack_text="AE: no")  # AE
    assert outbox.awaiting() == []
    [dead] = outbox.list_dead()
    assert (dead.id, dead.control_id, dead.ack_code, dead.body) == (second, "M2", "AE", make_message("M2"))


# --- through the sender, with real sockets ---------------------------------------------------------------


def _enhanced(port: int, **kw: Any) -> EhrConfig:
    return fast_ehr(port, application_ack_type="AL", ack_timeout_seconds=2.0, **kw)


async def _send_ack(port: int, control_id: str, code: str, **kw: str) -> bytes:
    """An engine's application ACK to the inbound port, as its own MLLP message; returns the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x0b" + ack_bytes(control_id, code, **kw) + b"\x1c\r")
        await writer.drain()
        deframer = MllpDeframer()
        async with asyncio.timeout(10):
            while not (frames := deframer.feed(await reader.read(4096))):
                pass
        return frames[0]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_same_connection_ca_then_aa_completes(outbox: Outbox) -> None:
    outbox.enqueue(control_id="M1", device_id="d", body=make_message("M1"))
    async with RawEhr(mode="CA_AA") as ehr:
        sender = Sender(outbox, _enhanced(ehr.port))
        async with running_sender(sender):
            await until(lambda: sender.status()["app_acks"]["completed"] == 1, 10.0, "the AA taken")
            await until(lambda: outbox.awaiting() == [], 10.0, "the awaiting row removed")
    status = sender.status()
    assert (status["committed"], status["delivered"], status["awaiting_app_ack"]) == (1, 1, 0)
    assert outbox.depth() == 0 and outbox.dead_count() == 0
    assert ehr.control_ids == ["M1"]  # sent once


async def test_same_connection_ca_then_ae_dead_letters_with_an_alert(outbox: Outbox) -> None:
    outbox.enqueue(control_id="M1", device_id="d", body=make_message("M1"))
    with capture_logs() as logs:
        async with RawEhr(mode="CA_AE") as ehr:
            sender = Sender(outbox, _enhanced(ehr.port))
            async with running_sender(sender):
                await until(lambda: outbox.dead_count() == 1, 10.0, "dead-lettered")
    [dead] = outbox.list_dead()
    assert dead.ack_code == "AE" and "application error (AE) after the receiver had committed" in dead.reason
    assert AE_TEXT in (dead.ack_text or "")
    alerts = [e for e in logs if e["log_level"] == "warning" and e["event"] == "delivery.dead_lettered"]
    assert len(alerts) == 1 and alerts[0]["control_id"] == "M1" and alerts[0]["ack"] == "AE [207]"
    assert not any(AE_TEXT in str(e) for e in logs if e["log_level"] != "debug")  # receiver text: DEBUG only


async def test_ack_listener_matches_by_msa2_and_answers_each_ack(outbox: Outbox) -> None:
    for n in (1, 2):
        outbox.enqueue(control_id=f"M{n}", device_id="d", body=make_message(f"M{n}"))
    async with RawEhr(mode="CA") as ehr:
        sender = Sender(outbox, _enhanced(ehr.port))
        listener = AckListener("127.0.0.1", 0, sender.application_ack)
        port = await listener.start()
        try:
            async with running_sender(sender):
                await until(lambda: len(outbox.awaiting()) == 2, 10.0, "both committed")
                answer = await _send_ack(port, "M2", "AA")
                assert b"MSA|CA|ACK-M2" in answer  # the ACK is itself acknowledged (MLLP senders wait)
                await until(lambda: [a.control_id for a in outbox.awaiting()] == ["M1"], 10.0, "M2 done")
                answer = await _send_ack(port, "NOBODY", "AA")
                assert b"MSA|CA|" in answer
                assert listener.status()["unmatched"] == 1 and listener.status()["matched"] == 1
        finally:
            await listener.close()


@pytest.mark.slow
async def test_engine_answering_ca_then_ae_on_the_inbound_port_dead_letters_and_alerts(
    tmp_path: Path,
) -> None:
    """Done when: an engine stand-in that answers CA then AE on the inbound port gets the message
    dead-lettered with the reason and an alert; one that never sends the application ACK shows it as
    overdue in status."""
    async with RawEhr(mode="CA") as ehr:
        config = parse_config(
            {
                "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path)},
                "ehr": {
                    "port": ehr.port,
                    "application_ack_type": "AL",
                    "app_ack_port": 0,
                    "app_ack_host": "127.0.0.1",
                    "app_ack_timeout_seconds": 1.0,
                    "backoff_min_seconds": 0.05,
                    "backoff_max_seconds": 0.1,
                },
                "control": {"enabled": False},
            }
        )
        svc = AgentService(config)
        for n in (1, 2):
            svc.outbox.enqueue(control_id=f"M{n}", device_id="d", body=make_message(f"M{n}"))
        stop = asyncio.Event()
        with capture_logs() as logs:
            run = asyncio.create_task(svc.run(stop))
            try:
                await until(lambda: len(svc.outbox.awaiting()) == 2, 10.0, "both committed (CA)")
                assert svc.ack_listener is not None
                await _send_ack(svc.ack_listener.port, "M1", "AE", text=AE_TEXT, err=AE_ERR)
                await until(lambda: svc.outbox.dead_count() == 1, 10.0, "M1 dead-lettered")
                # M2: the engine never sends its application ACK
                await until(lambda: svc.status()["sender"]["app_ack_overdue"] == ["M2"], 10.0, "M2 overdue")
                text = render_text(svc.status(), {"set": False})
            finally:
                stop.set()
                await run
    [dead] = Outbox(tmp_path).list_dead()
    assert dead.control_id == "M1" and dead.ack_code == "AE"
    assert "application error (AE) after the receiver had committed the message (CA)" in dead.reason
    assert "EHR 1 message(s) committed by the EHR, awaiting the application ACK; 1 OVERDUE: M2" in text
    assert "1 dead letter(s)" in text
    alerts = [e for e in logs if e["log_level"] == "warning" and e["event"] == "delivery.dead_lettered"]
    assert [a["control_id"] for a in alerts] == ["M1"]
    overdue = [e for e in logs if e["log_level"] == "warning" and e["event"] == "delivery.app_ack_overdue"]
    assert [o["control_id"] for o in overdue] == ["M2"]  # once


async def test_awaiting_survives_a_restart_and_the_ack_completes_it_then(outbox: Outbox) -> None:
    outbox.enqueue(control_id="M1", device_id="d", body=make_message("M1"))
    async with RawEhr(mode="CA") as ehr:
        first = Sender(outbox, _enhanced(ehr.port))
        async with running_sender(first):
            await until(lambda: len(outbox.awaiting()) == 1, 10.0, "committed")
        assert ehr.control_ids == ["M1"]
        second = Sender(outbox, _enhanced(ehr.port))  # the agent restarted
        listener = AckListener("127.0.0.1", 0, second.application_ack)
        port = await listener.start()
        try:
            async with running_sender(second):
                await until(lambda: second.status()["awaiting_app_ack"] == 1, 10.0, "restored")
                await _send_ack(port, "M1", "AA")
                await until(lambda: outbox.awaiting() == [], 10.0, "completed after the restart")
        finally:
            await listener.close()
        assert ehr.control_ids == ["M1"]  # never sent again


async def test_outbox_list_shows_messages_awaiting_their_application_ack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vitals_agent.cli import main

    ob = Outbox(tmp_path)
    ob.enqueue(control_id="M1", device_id="cuff-1", body=make_message("M1"))
    second = ob.enqueue(control_id="M2", device_id="cuff-1", body=make_message("M2"))
    ob.await_app_ack(second)
    ob.close()
    assert await main(["outbox", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 queued, 1 awaiting an application ACK, 0 dead")
    [row] = [line for line in out.splitlines() if " M2 " in line]
    assert "ackwait" in row and "awaiting its application ACK" in row


def test_reload_plan_for_the_new_ehr_keys(tmp_path: Path) -> None:
    from vitals_agent.agent.reconfigure import plan

    base = {"agent": {"facility": "F", "data_dir": str(tmp_path)}}
    old = parse_config({**base, "ehr": {"application_ack_type": "NE"}})
    charset = plan(old, parse_config({**base, "ehr": {"application_ack_type": "NE", "charset": "ASCII"}}))
    assert charset.profile and charset.senders == [] and charset.restart_needed == []
    mode = plan(old, parse_config({**base, "ehr": {"application_ack_type": "AL"}}))
    assert mode.senders == ["ehr"]  # MSH-16 is also the sender's policy
    port = plan(old, parse_config({**base, "ehr": {"application_ack_type": "NE", "app_ack_port": 2576}}))
    assert port.restart_needed == ["ehr.app_ack_port"] and port.senders == []


async def test_the_inbound_port_follows_a_replaced_ehr_sender(tmp_path: Path) -> None:
    ehr = {"application_ack_type": "AL", "app_ack_port": 0, "app_ack_host": "127.0.0.1", "port": 1}
    base = {"agent": {"facility": "F", "data_dir": str(tmp_path)}, "control": {"enabled": False}}
    svc = AgentService(parse_config({**base, "ehr": ehr}))
    try:
        first = svc.senders["ehr"]
        await svc.apply_config(parse_config({**base, "ehr": {**ehr, "ack_timeout_seconds": 5.0}}))
        second = svc.senders["ehr"]
        assert second is not first
        second.policy.restore_awaiting([(1, "M1", 0.0)], 0.0)
        assert svc.ack_listener is not None
        assert svc.ack_listener.on_ack(_ack("M1", "AA")) is True  # reaches the sender of the moment
        assert second.status()["app_acks"]["completed"] == 1
    finally:
        svc.close()


def _ack(control_id: str, code: str) -> Any:
    from vitals_agent.hl7.ack import parse_ack

    return parse_ack(ack_bytes(control_id, code))
