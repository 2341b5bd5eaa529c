"""Issue 10 item 6: each store opens on its own. A damaged held-readings store (or patient-context file) is
moved aside — kept byte for byte for inspection, audited — and the rest of the agent runs; before, the
agent died at start with a traceback and the healthy outbox was never drained."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.e2e_helpers import STOPS_THE_AGENT, AgentProcess, write_config
from tests.fake_ehr import Hl7Ehr, make_message
from tests.kit import MRN, FakeClock, event_names, events, manager, oximeter_reading
from vitals_agent.agent.patient.context import HELD_FILE, HeldStore, PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.storage.files import StoreError
from vitals_agent.agent.storage.outbox import Outbox


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damaged_copies(data: Path, name: str) -> list[Path]:
    return sorted(data.glob(f"{name}.damaged-*"))


def held_store_with_rows(data: Path, n: int = 40) -> Path:
    clock = FakeClock()
    m = manager(data, clock, require_patient=True)
    for _ in range(n):
        m.route("oxi-1", oximeter_reading(clock.now), clock.now)
    m.close()
    m.audit.close()
    return data / HELD_FILE


def damage_table_page(path: Path, table: str) -> None:
    conn = sqlite3.connect(path)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * page)
        fh.write(b"\xff" * 64)


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        ("garbage", "is not an SQLite database"),
        ("page", "is damaged"),
        ("newer", "was written by a newer vitals-agent (schema 9; this version knows 1)"),
        ("foreign", "is not a held-readings store (tables patients)"),
        ("directory", "is a directory or a link"),
    ],
)
def test_a_damaged_held_store_is_moved_aside_audited_and_replaced(
    tmp_path: Path, spoil: str, reason: str
) -> None:
    path = tmp_path / HELD_FILE
    if spoil == "garbage":
        path.write_bytes(bytes(range(256)) * 40)
    elif spoil == "page":
        held_store_with_rows(tmp_path)
        damage_table_page(path, "held")
    elif spoil in ("newer", "foreign"):
        conn = sqlite3.connect(path)
        if spoil == "newer":
            conn.execute(
                "CREATE TABLE held (id INTEGER PRIMARY KEY, device_id TEXT, held_at TEXT, reading TEXT)"
            )
            conn.execute("PRAGMA user_version=9")
        else:
            conn.execute("CREATE TABLE patients (mrn TEXT)")
        conn.commit()
        conn.close()
    else:
        path.mkdir()
    before = digest(path) if path.is_file() else None
    clock = FakeClock()
    with capture_logs() as logs:
        m = manager(tmp_path, clock, require_patient=True)
    try:
        [moved] = damaged_copies(tmp_path, HELD_FILE)
        if before is not None:
            assert digest(moved) == before  # kept as it was, for inspection
        assert m.held.summary() == (0, None)  # a fresh, empty, working store
        m.route("oxi-1", oximeter_reading(clock.now), clock.now)
        assert m.held.summary()[0] == 1
        [record] = [e for e in events(tmp_path) if e["event"] == "store_quarantined"]
        assert record["store"] == "held readings" and record["moved_to"] == str(moved)
        assert reason in record["reason"]
        assert m.quarantined == [
            {"store": "held readings", "moved_to": str(moved), "reason": record["reason"]}
        ]
        [warning] = [e for e in logs if e["log_level"] == "warning"]
        assert warning["event"] == "held.store_moved_aside"
    finally:
        m.close()
        m.audit.close()


def test_an_unusable_held_store_leaves_holding_off_and_says_why(tmp_path: Path) -> None:
    store = HeldStore.unavailable(tmp_path / HELD_FILE, "disk full")
    assert store.all() == [] and store.summary() == (0, None) and store.remove(1) is False
    with pytest.raises(StoreError, match="held readings unavailable: disk full"):
        store.add("oxi-1", oximeter_reading(), oximeter_reading().received_at)


def test_an_unreadable_patient_context_file_is_moved_aside_and_audited(tmp_path: Path) -> None:
    ctx_file = tmp_path / "patient_context.json"
    ctx_file.write_text('{"patient": {"mrn": ')
    m = manager(tmp_path, FakeClock())
    try:
        assert m.context() is None
        [moved] = damaged_copies(tmp_path, "patient_context.json")
        assert moved.read_text() == '{"patient": {"mrn": '
        [record] = [e for e in events(tmp_path) if e["event"] == "context_discarded"]
        assert record["moved_to"] == str(moved)
        m.set(PatientDetails(mrn=MRN), Origin("cli"))
        assert "context_set" in event_names(tmp_path)
    finally:
        m.close()
        m.audit.close()


@pytest.mark.slow  # starts the agent
@STOPS_THE_AGENT
async def test_agent_with_a_damaged_held_store_starts_and_drains_the_outbox(tmp_path: Path) -> None:
    """The trial's case: a corrupt held store and a healthy outbox with queued messages, the agent as a
    real process, python-hl7's server as the EHR."""
    data = tmp_path / "data"
    ob = Outbox(data)
    names = [f"Q{i}" for i in range(5)]
    for name in names:
        ob.enqueue(control_id=name, device_id="oxi-1", body=make_message(name))
    ob.close()
    (data / HELD_FILE).write_bytes(b"\x00garbage, not a database\xff" * 400)
    ehr = await Hl7Ehr().start()
    cfg = write_config(tmp_path / "agent.toml", data_dir=data, ehr_port=ehr.port, devices=[])
    agent = AgentProcess(cfg)
    try:
        messages = await ehr.wait_for(5)
        await agent.wait_log(lambda: bool(agent.events("delivery.started")), what="delivery.started")
        code, _ = await asyncio.to_thread(agent.terminate)
    finally:
        agent.cleanup()
        await ehr.close()
    assert code == 0, agent.tail()
    assert [m.split("\r")[0].split("|")[9] for m in messages] == names
    assert "Traceback" not in "\n".join(agent.raw_log)
    [warning] = agent.events("held.store_moved_aside")
    assert "is not an SQLite database" in warning["reason"]
    assert len(damaged_copies(data, HELD_FILE)) == 1


def test_the_status_names_a_store_moved_aside(tmp_path: Path) -> None:
    from vitals_agent.agent.service import AgentService
    from vitals_agent.config.schema import parse_config

    (tmp_path / HELD_FILE).write_bytes(b"not a database" * 10)
    config = parse_config(
        {"agent": {"facility": "X", "data_dir": str(tmp_path)}, "control": {"enabled": False}}
    )
    svc = AgentService(config)
    try:
        storage = svc.status()["storage"]
        [moved] = damaged_copies(tmp_path, HELD_FILE)
        reason = f"{tmp_path / HELD_FILE} is not an SQLite database"
        assert storage["quarantined"] == [
            {"store": "held readings", "moved_to": str(moved), "reason": reason}
        ]
        assert storage["held"] == {"ok": True, "error": None}
        assert storage["outbox"]["ok"] is True
    finally:
        svc.close()


def test_an_audit_log_that_cannot_be_opened_is_a_one_line_error(tmp_path: Path) -> None:
    from vitals_agent.agent.storage.audit import AuditError, AuditLog

    (tmp_path / "audit.jsonl").mkdir()
    with pytest.raises(AuditError) as info:
        AuditLog.in_dir(tmp_path)
    assert str(info.value) == f"cannot open the audit log {tmp_path / 'audit.jsonl'}: is a directory"
