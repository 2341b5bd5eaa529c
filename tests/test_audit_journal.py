"""Audit records committed with the outbox (one fsync per accepted reading), streamed to audit.jsonl in
commit order, replayed once after a crash."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.fake_ehr import Hl7Ehr, make_message
from tests.kit import MRN, FakeClock, fast_ehr, running_sender, until
from vitals_agent.agent.delivery.sender import Sender
from vitals_agent.agent.storage.audit import AuditLog, AuditRecord, read_audit
from vitals_agent.agent.storage.commit import GroupCommit
from vitals_agent.agent.storage.outbox import Outbox


def lines(path: Path) -> list[dict[str, object]]:
    return list(read_audit(path / "audit.jsonl"))


def test_a_record_line_is_exactly_the_json_of_the_whole_record(tmp_path: Path) -> None:
    audit = AuditLog.in_dir(tmp_path, now=FakeClock())
    rec = audit.make("reading_accepted", control_id="C1", patient={"mrn": MRN}, values={"spo2": "97 %"})
    expected = {
        "ts": rec.ts,
        "seq": 12,
        "event": "reading_accepted",
        "control_id": "C1",
        "patient": {"mrn": MRN},
        "values": {"spo2": "97 %"},
    }
    assert rec.line(12) == json.dumps(expected, ensure_ascii=False) + "\n"


def test_committed_records_reach_the_file_in_commit_order_without_an_fsync_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path)
    audit = AuditLog.in_dir(tmp_path, now=FakeClock())
    audit.attach(outbox)
    synced: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    for i in range(3):
        outbox.enqueue(
            control_id=f"C{i}", device_id="d", body=b"MSH", audit=[audit.make("reading_accepted", n=i)]
        )
        assert audit.flush_journal() == 1
    assert [e["n"] for e in lines(tmp_path)] == [0, 1, 2]
    assert [e["seq"] for e in lines(tmp_path)] == [1, 2, 3]
    assert synced == []  # the outbox's commit made them durable; the file catches up in batches
    assert len(outbox.audit_rows()) == 3  # kept until the file is synced
    assert audit.sync_journal(due_only=True) is False  # not due yet (2 s, or 512 rows)
    assert audit.sync_journal() is True
    assert len(synced) == 1 and outbox.audit_rows() == []
    audit.close()
    outbox.close()


def test_a_direct_record_comes_after_the_committed_ones(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    audit = AuditLog.in_dir(tmp_path, now=FakeClock())
    audit.attach(outbox)
    outbox.enqueue(control_id="C1", device_id="d", body=b"MSH", audit=[audit.make("reading_accepted")])
    audit.record("context_cleared", channel="api")  # before any flush: the committed record goes first
    assert [(e["seq"], e["event"]) for e in lines(tmp_path)] == [
        (1, "reading_accepted"),
        (2, "context_cleared"),
    ]
    assert outbox.audit_rows() == []  # the direct record's fsync covered it
    audit.close()
    outbox.close()


def test_records_a_crash_left_in_the_outbox_are_appended_once_at_the_next_start(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    audit = AuditLog.in_dir(tmp_path, now=FakeClock())
    audit.attach(outbox)
    outbox.enqueue(control_id="C1", device_id="d", body=b"MSH", audit=[audit.make("reading_accepted", n=1)])
    audit.flush_journal()  # in the file (not synced), still in the journal ...
    outbox.enqueue(control_id="C2", device_id="d", body=b"MSH", audit=[audit.make("reading_accepted", n=2)])
    # ... and the process dies here: C2's record is only in the outbox, C1's in both.
    assert [int(str(e["n"])) for e in lines(tmp_path)] == [1]
    outbox.close()

    outbox = Outbox(tmp_path)
    again = AuditLog.in_dir(tmp_path, now=FakeClock())
    assert again.attach(outbox) == 1
    assert [(e["seq"], e["n"]) for e in lines(tmp_path)] == [(1, 1), (2, 2)]
    assert outbox.audit_rows() == []
    again.close()
    outbox.close()


def test_a_torn_line_from_a_power_cut_stays_apart_from_the_next_record(tmp_path: Path) -> None:
    audit = AuditLog.in_dir(tmp_path, now=FakeClock())
    audit.record("one")
    with open(tmp_path / "audit.jsonl", "a") as fh:
        fh.write('{"ts": "2026-')
    audit.record("two")
    assert [e["event"] for e in lines(tmp_path)] == ["one", "two"]


async def test_readings_that_arrive_together_share_one_commit(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    audit = AuditLog.in_dir(tmp_path, now=FakeClock())
    audit.attach(outbox)
    group = GroupCommit(outbox, after_commit=audit.flush_journal)
    ids = await asyncio.gather(
        *(
            group.enqueue(
                control_id=f"C{i:02d}",
                device_id=f"dev-{i}",
                body=b"MSH",
                audit=[audit.make("reading_accepted", control_id=f"C{i:02d}")],
            )
            for i in range(50)
        )
    )
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert (group.commits, group.items) == (1, 50)
    assert [e["control_id"] for e in lines(tmp_path)] == [f"C{i:02d}" for i in range(50)]
    # a reading arriving alone is committed alone, at once
    await group.enqueue(control_id="LONE", device_id="d", body=b"MSH")
    assert (group.commits, group.items) == (2, 51)
    audit.close()
    outbox.close()


async def test_one_item_that_cannot_be_stored_costs_the_others_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    group = GroupCommit(outbox)
    good = group.enqueue(control_id="OK1", device_id="d", body=b"MSH")
    bad = group.enqueue(control_id="BAD", device_id="d", body=b"MSH", destination=None)  # NOT NULL
    late = group.enqueue(control_id="OK2", device_id="d", body=b"MSH")
    results = await asyncio.gather(good, bad, late, return_exceptions=True)
    assert isinstance(results[0], int) and isinstance(results[2], int)
    assert "cannot store message BAD" in str(results[1])
    assert [m.control_id for m in outbox.peek(10)] == ["OK1", "OK2"]
    outbox.close()


async def test_the_ack_record_commits_with_the_removal(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    audit = AuditLog.in_dir(tmp_path, now=FakeClock())
    audit.attach(outbox)
    async with Hl7Ehr() as ehr:
        sender = Sender(outbox, fast_ehr(ehr.port))
        sender.audit = audit
        outbox.enqueue(control_id="MSG1", device_id="d", body=make_message("MSG1"))
        async with running_sender(sender):
            sender.wake()
            await until(lambda: outbox.depth() == 0, 10, "delivery")
            await until(lambda: any(e["event"] == "message_sent" for e in lines(tmp_path)), 5, "audit")
    sent = [e for e in lines(tmp_path) if e["event"] == "message_sent"]
    assert [(e["control_id"], e["ack_code"]) for e in sent] == [("MSG1", "AA")]
    assert len(outbox.audit_rows()) == 1  # committed with the removal, until the file's next fsync
    audit.close()  # syncs the file and trims the journal
    assert outbox.audit_rows() == []
    outbox.close()


def test_the_record_type_round_trips_through_the_outbox(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    rec = AuditRecord("2026-03-11T14:00:00+00:00", '{"event": "x", "note": "é"}')
    message = outbox.enqueue(control_id="C", device_id="d", body=b"MSH", audit=[rec])
    assert outbox.delete_nowait(message, audit=[rec]) is True
    assert [r for _, r in outbox.audit_rows()] == [rec, rec]
    outbox.audit_done(outbox.audit_rows()[0][0])
    assert len(outbox.audit_rows()) == 1
    outbox.close()
