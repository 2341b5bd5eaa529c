"""Sender behaviour beyond the fault suite: status, wake, back-off, backlog warnings, what it logs."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.fake_ehr import Hl7Ehr, RawEhr, make_message
from tests.kit import fast_ehr, free_port, running_sender, until
from vitals_agent.agent.delivery import sender as sender_module
from vitals_agent.agent.delivery.sender import Sender
from vitals_agent.agent.storage.outbox import Outbox


def test_backoff_is_capped_exponential_with_jitter(outbox: Outbox) -> None:
    sender = Sender(
        outbox, fast_ehr(1, backoff_min_seconds=0.5, backoff_max_seconds=8.0), rng=random.Random(1)
    )
    for n, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (60, 8.0), (10_000, 8.0)]:
        values = [sender._backoff(n) for _ in range(200)]
        assert all(cap / 2 <= v <= cap for v in values), n
        assert len(set(values)) > 100  # jittered, not constant


async def test_status_and_wake_for_messages_queued_while_running(outbox: Outbox) -> None:
    async with Hl7Ehr() as ehr:
        # each message is sent exactly once: a generous ACK timeout, so a loaded machine causes no retry
        sender = Sender(outbox, fast_ehr(ehr.port, ack_timeout_seconds=10.0))
        assert sender.status() == {
            "destination": "ehr",
            "connected": False,
            "peer": f"127.0.0.1:{ehr.port}",
            "tls": False,
            "depth": 0,
            "dead": 0,
            "in_flight": None,
            "last_error": None,
            "last_error_at": None,
            "last_ack_at": None,
            "sent": 0,
            "delivered": 0,
            "dead_lettered": 0,
            "consecutive_failures": 0,
            "duplicate_acks": 0,
            "late_acks": 0,
            "committed": 0,
            "awaiting_app_ack": 0,
            "app_ack_overdue": [],
            "app_acks": {"completed": 0, "dead": 0, "unmatched": 0, "repeated": 0},
            "storage": {
                "ok": True,
                "error": None,
                "failing_since": None,
                "stops_in_seconds": None,
                "acknowledged_not_removed": 0,
                "ledger_durable": True,
            },
        }
        async with running_sender(sender):
            for i in range(3):
                outbox.enqueue(control_id=f"W{i}", device_id="d", body=make_message(f"W{i}"))
                sender.wake()
                await until(lambda: outbox.depth() == 0)
            status = sender.status()
            assert (status["connected"], status["sent"], status["depth"], status["in_flight"]) == (
                True,
                3,
                0,
                None,
            )
            assert datetime.fromisoformat(status["last_ack_at"]).tzinfo is not None
    assert ehr.control_ids == ["W0", "W1", "W2"]


async def test_operator_retry_from_another_process_is_picked_up_without_wake(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "IDLE_POLL_SECONDS", 0.05)
    async with RawEhr(plan=["AR"]) as ehr:
        mid = outbox.enqueue(control_id="O1", device_id="d", body=make_message("O1"))
        sender = Sender(outbox, fast_ehr(ehr.port))
        async with running_sender(sender):
            await until(lambda: outbox.dead_count() == 1)
            tool = Outbox(outbox.data_dir, create=False)  # what `vitals-agent outbox retry` does
            assert tool.retry_dead(mid) == 1
            tool.close()
            await until(lambda: outbox.depth() == 0 and outbox.dead_count() == 0)
    assert ehr.control_ids == ["O1", "O1"]


async def test_backlog_warnings_when_crossing_thresholds(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "BACKLOG_CHECK_SECONDS", 0.0)
    port = free_port()
    sender = Sender(outbox, fast_ehr(port, backlog_warning=2))
    with capture_logs() as logs:
        async with running_sender(sender):
            for i in range(9):
                outbox.enqueue(control_id=f"B{i}", device_id="d", body=make_message(f"B{i}"))
                sender.wake()
                n = i + 1
                await until(lambda n=n: sender._backlog_level == (0 if n < 2 else n.bit_length() - 1))
            async with Hl7Ehr(port=port):
                await until(lambda: outbox.depth() == 0)
                await until(lambda: sender._backlog_level == 0)
    warnings = [e for e in logs if e["event"] == "outbox.backlog_growing"]
    assert [(w["log_level"], w["threshold"]) for w in warnings] == [
        ("warning", 2),
        ("warning", 4),
        ("warning", 8),
    ]
    assert [w["depth"] for w in warnings] == [2, 4, 8]
    assert any(e["event"] == "outbox.backlog_cleared" for e in logs)


async def test_logs_never_contain_message_bodies(outbox: Outbox) -> None:
    secret = "DOE^JANE-SECRET-4711"
    plan = ["AE", "AR", "CLOSE", "GARBLE", "WRONG_ID", "XX", "AA", "AA", "AA", "AA", "AA"]
    with capture_logs() as logs:
        async with RawEhr(plan=plan) as ehr:
            for i in range(4):
                body = make_message(f"P{i}").replace(b"UNKNOWN^UNKNOWN", secret.encode())
                outbox.enqueue(control_id=f"P{i}", device_id="d", body=body)
            sender = Sender(outbox, fast_ehr(ehr.port, max_attempts=2))
            async with running_sender(sender):
                await until(lambda: outbox.depth() == 0)
    assert secret.encode() in ehr.received[0].raw
    assert logs, "the sender logged nothing at all"
    text = repr(logs)
    assert "SECRET" not in text and "PID|" not in text and "OBX|" not in text
    assert any(e["log_level"] == "warning" and e.get("control_id") == "P1" for e in logs)


async def test_delivery_waits_for_a_busy_outbox_instead_of_failing(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (the outbox tool) holds the write lock while an ACK arrives: the delete waits."""
    import sqlite3
    import threading

    deleting = threading.Event()
    delete = outbox.delete

    def spy(*args: Any, **kw: Any) -> Any:
        deleting.set()
        return delete(*args, **kw)

    monkeypatch.setattr(outbox, "delete", spy)
    async with Hl7Ehr() as ehr:
        outbox.enqueue(control_id="L0", device_id="d", body=make_message("L0"))
        other = sqlite3.connect(outbox.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        sender = Sender(outbox, fast_ehr(ehr.port))
        async with running_sender(sender):
            await ehr.wait_for(1)
            await until(deleting.is_set, what="the sender deleting the acknowledged message")
            assert outbox.depth() == 1  # not removed yet: the delete is waiting for the lock
            other.execute("COMMIT")
            other.close()
            await until(lambda: outbox.depth() == 0)
    assert ehr.control_ids == ["L0"]
    assert sender.status()["last_error"] is None


async def test_an_unexpected_bug_does_not_end_delivery(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vitals_agent.hl7.ack import parse_ack as real

    calls = {"n": 0}

    def flaky(payload: bytes) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(payload)

    monkeypatch.setattr(sender_module, "parse_ack", flaky)
    async with Hl7Ehr() as ehr:
        outbox.enqueue(control_id="U0", device_id="d", body=make_message("U0"))
        sender = Sender(outbox, fast_ehr(ehr.port))
        with capture_logs() as logs:
            async with running_sender(sender):
                await until(lambda: outbox.depth() == 0)
    assert ehr.control_ids == ["U0", "U0"]  # re-sent with the same MSH-10 after the failure
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["event"], e["error"]) for e in errors] == [("delivery.unexpected_error", "RuntimeError")]
