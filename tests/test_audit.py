"""The audit log: append-only JSON lines, 0600, fsync'd, survives restarts, holds the whole record."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from decimal import Decimal
from pathlib import Path

import pytest

from tests.kit import MRN, T0, FakeClock, oximeter_reading
from tests.private_files import assert_private, make_public
from vitals_agent.agent.storage.audit import (
    READING_ACCEPTED,
    AuditError,
    AuditLog,
    read_audit,
    reading_fields,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_file_is_private_and_records_are_json_lines(tmp_path: Path) -> None:
    audit = AuditLog.in_dir(tmp_path, now=FakeClock())
    first = audit.record("context_set", channel="cli", patient={"mrn": MRN})
    audit.record("context_cleared", channel="api")
    assert_private(tmp_path / "audit.jsonl")
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "ts": "2026-03-11T14:00:00+00:00",
            "seq": 1,
            "prev": "0" * 64,  # the chain's start (tests/test_audit_chain.py)
            "event": "context_set",
            "channel": "cli",
            "patient": {"mrn": MRN},
        },
        {
            "ts": "2026-03-11T14:00:00+00:00",
            "seq": 2,
            "prev": hashlib.sha256(lines[0].encode()).hexdigest(),
            "event": "context_cleared",
            "channel": "api",
        },
    ]
    assert first["seq"] == 1


def test_existing_file_with_wide_permissions_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    make_public(path)
    AuditLog(path)
    assert_private(path)


def test_append_only_across_restarts_and_seq_continues(tmp_path: Path) -> None:
    clock = FakeClock()
    a = AuditLog.in_dir(tmp_path, now=clock)
    a.record("one")
    a.close()
    clock.advance(minutes=1)
    b = AuditLog.in_dir(tmp_path, now=clock)
    b.record("two")
    got = list(read_audit(tmp_path / "audit.jsonl"))
    assert [(e["seq"], e["event"], e["ts"]) for e in got] == [
        (1, "one", "2026-03-11T14:00:00+00:00"),
        (2, "two", "2026-03-11T14:01:00+00:00"),
    ]


def test_every_record_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = AuditLog.in_dir(tmp_path)
    synced: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    audit.record("a")
    audit.record("b")
    assert len(synced) == 2


def test_write_failure_is_a_typed_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = AuditLog.in_dir(tmp_path)

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(AuditError, match="No space left on device"):
        audit.record("x")
    audit.close()
    with pytest.raises(AuditError, match="closed"):
        audit.record("y")


def test_reading_accepted_keeps_device_precision_and_identity(tmp_path: Path) -> None:
    audit = AuditLog.in_dir(tmp_path, now=FakeClock())
    reading = oximeter_reading(spo2="97.50")
    entry = audit.record(
        READING_ACCEPTED,
        **reading_fields(
            device_id="oxi-1",
            control_id="ABC123",
            reading=reading,
            patient={"mrn": MRN, "family": "X"},
            disposition="bound",
        ),
    )
    stored = next(read_audit(tmp_path / "audit.jsonl"))
    assert stored["seq"] == entry["seq"] and stored["event"] == "reading_accepted"
    assert stored["values"] == {"spo2": "97.50 %", "pulse_rate_oximeter": "72 /min"}
    assert stored["patient"] == {"mrn": MRN, "family": "X"}
    assert stored["control_id"] == "ABC123"
    assert stored["device"] == {"id": "oxi-1", "manufacturer": "Acme", "serial_number": "SN123"}
    assert stored["observed_at"] == T0.isoformat()
    assert Decimal(stored["values"]["spo2"].split()[0]) == Decimal("97.50")


def test_message_trail_helpers(tmp_path: Path) -> None:
    audit = AuditLog.in_dir(tmp_path, now=FakeClock())
    audit.message_queued(control_id="C1", device_id="oxi-1", patient={"mrn": MRN}, late_associated=True)
    audit.message_sent(control_id="C1", ack_code="AA")
    audit.message_dead(control_id="C2", reason="AR: unknown patient")
    got = [
        {k: v for k, v in e.items() if k not in ("ts", "seq", "prev")}
        for e in read_audit(tmp_path / "audit.jsonl")
    ]
    assert got == [
        {
            "event": "message_queued",
            "control_id": "C1",
            "device_id": "oxi-1",
            "patient_mrn": MRN,
            "late_associated": True,
        },
        {"event": "message_sent", "control_id": "C1", "ack_code": "AA", "ack_text": ""},
        {"event": "message_dead", "control_id": "C2", "reason": "AR: unknown patient"},
    ]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    audit = AuditLog.in_dir(tmp_path)
    audit.record("complete")
    with open(tmp_path / "audit.jsonl", "a") as fh:
        fh.write('{"ts": "2026-')  # crash mid-write
    assert [e["event"] for e in read_audit(tmp_path / "audit.jsonl")] == ["complete"]
