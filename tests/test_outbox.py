"""The SQLite outbox: durability contract, ordering, dead letters, device state, disk full."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from tests.fake_ehr import make_message
from tests.private_files import assert_private
from vitals_agent import host
from vitals_agent.agent.storage.audit import AuditRecord
from vitals_agent.agent.storage.outbox import OUTBOX_FILE, SCHEMA_VERSION, DeadLetter, Outbox, OutboxMessage
from vitals_agent.errors import OutboxError, OutboxFullError


def test_file_mode_wal_and_directory_created(tmp_path: Path) -> None:
    data = tmp_path / "new" / "dir"
    ob = Outbox(data)
    ob.enqueue(control_id="A1", device_id="d", body=b"x")
    path = data / OUTBOX_FILE
    assert_private(path)
    assert_private(data, directory=True)
    assert (data / (OUTBOX_FILE + "-wal")).exists()
    wal = data / (OUTBOX_FILE + "-wal")
    assert_private(wal, inherited=True)
    ob.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_enqueue_order_peek_and_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path)
    ids = [
        ob.enqueue(control_id=f"M{i}", device_id="spo2", body=make_message(f"M{i}"), meta={"n": i})
        for i in range(5)
    ]
    assert ids == sorted(ids) and len(set(ids)) == 5
    ob.close()
    ob = Outbox(tmp_path)  # survives close/reopen
    rows = ob.peek(10)
    assert [(r.id, r.control_id, r.device_id, r.body, r.meta) for r in rows] == [
        (ids[i], f"M{i}", "spo2", make_message(f"M{i}"), {"n": i}) for i in range(5)
    ]
    assert [r.control_id for r in ob.peek(2, after_id=ids[1])] == ["M2", "M3"]
    assert ob.depth() == 5 and ob.dead_count() == 0
    assert ob.delete(ids[0]) is True
    assert ob.delete(ids[0]) is False
    assert ob.depth() == 4
    ob.close()


def test_mark_failure_counts(outbox: Outbox) -> None:
    mid = outbox.enqueue(control_id="F1", device_id="d", body=b"b")
    assert outbox.mark_failure(mid, "timeout") == (1, 0)
    assert outbox.mark_failure(mid, "AE: nope", negative=True) == (2, 1)
    item = outbox.get(mid)
    assert isinstance(item, OutboxMessage)
    assert (item.attempts, item.nacks, item.last_error) == (2, 1, "AE: nope")


def test_dead_letter_and_retry_keep_id_body_and_control_id(outbox: Outbox) -> None:
    a = outbox.enqueue(control_id="A", device_id="d", body=b"body-A")
    b = outbox.enqueue(control_id="B", device_id="d", body=b"body-B")
    outbox.mark_failure(a, "AR: rejected", negative=True)
    assert outbox.dead_letter(a, "rejected by the receiver (AR)", ack_code="AR", ack_text="AR: rejected")
    assert outbox.depth() == 1 and outbox.dead_count() == 1
    dead = outbox.get(a)
    assert isinstance(dead, DeadLetter)
    assert (
        dead.id,
        dead.control_id,
        dead.body,
        dead.reason,
        dead.ack_code,
        dead.ack_text,
        dead.attempts,
    ) == (
        a,
        "A",
        b"body-A",
        "rejected by the receiver (AR)",
        "AR",
        "AR: rejected",
        1,
    )
    c = outbox.enqueue(control_id="C", device_id="d", body=b"body-C")
    assert c > b  # AUTOINCREMENT: ids never reused
    assert outbox.retry_dead(a) == 1
    assert [(r.id, r.control_id, r.body, r.attempts, r.nacks) for r in outbox.peek()] == [
        (a, "A", b"body-A", 0, 0),  # back at its original place, same MSH-10
        (b, "B", b"body-B", 0, 0),
        (c, "C", b"body-C", 0, 0),
    ]
    assert outbox.retry_dead(a) == 0


def test_retry_all_and_purge(outbox: Outbox) -> None:
    ids = [outbox.enqueue(control_id=f"P{i}", device_id="d", body=b"x") for i in range(4)]
    for mid in ids[:3]:
        outbox.dead_letter(mid, "test")
    assert outbox.purge_dead(older_than_seconds=3600) == 0  # all fresh
    assert outbox.purge_dead(older_than_seconds=0) == 3
    assert outbox.dead_count() == 0
    outbox.dead_letter(ids[3], "test")
    assert outbox.retry_dead() == 1
    assert [r.id for r in outbox.peek()] == [ids[3]]


def test_device_state_is_durable_and_overwritable(tmp_path: Path) -> None:
    ob = Outbox(tmp_path)
    assert ob.get_state("cuff", "last_record") is None
    ob.set_state("cuff", "last_record", "41")
    ob.set_state("cuff", "last_record", "42")
    ob.set_state("other", "last_record", "7")
    ob.close()
    ob = Outbox(tmp_path)
    assert (ob.get_state("cuff", "last_record"), ob.get_state("other", "last_record")) == ("42", "7")
    ob.close()


def test_disk_full_refuses_loudly_and_keeps_what_was_queued(tmp_path: Path) -> None:
    """A size cap (SQLite max_page_count) acts as a full disk: the insert fails inside its transaction."""
    ob = Outbox(tmp_path, max_bytes=64 * 1024)
    body = b"X" * 3000
    queued: list[str] = []
    with pytest.raises(OutboxFullError) as info:
        for i in range(200):
            cid = f"D{i:03d}"
            ob.enqueue(control_id=cid, device_id="d", body=body)
            queued.append(cid)
    assert "full" in str(info.value) and "NOT queued" in str(info.value)
    assert len(queued) > 5
    refused = f"D{len(queued):03d}"
    assert refused in str(info.value)
    assert [r.control_id for r in ob.peek(1000)] == queued  # nothing already queued was lost
    # still usable: deliveries can be removed, after which new readings fit again
    ob.delete(ob.peek(1)[0].id)
    ob.delete(ob.peek(1)[0].id)
    ob.enqueue(control_id="AFTER", device_id="d", body=body)
    ob.close()
    ob = Outbox(tmp_path)
    assert [r.control_id for r in ob.peek(1000)] == [*queued[2:], "AFTER"]
    ob.close()


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() == 0, reason="root ignores file permissions")
@pytest.mark.skipif(host.WINDOWS, reason="POSIX mode bits; Windows' read-only attribute does not stop SQLite")
def test_read_only_database_refuses_loudly(tmp_path: Path) -> None:
    ob = Outbox(tmp_path)
    ob.enqueue(control_id="R0", device_id="d", body=b"x")
    ob.close()
    os.chmod(tmp_path / OUTBOX_FILE, 0o400)
    try:
        ob = Outbox(tmp_path)
        with pytest.raises(OutboxFullError, match=r"read-only|readonly"):
            ob.enqueue(control_id="R1", device_id="d", body=b"x")
        ob.close()
    except OutboxError:
        pass  # refusing to open at all is loud enough too
    finally:
        os.chmod(tmp_path / OUTBOX_FILE, 0o600)


def test_read_only_connection_refuses_loudly(tmp_path: Path) -> None:
    """Same check that works as root: force SQLite's query_only mode on the outbox connection."""
    ob = Outbox(tmp_path)
    ob.enqueue(control_id="R0", device_id="d", body=b"x")
    ob._conn.execute("PRAGMA query_only=1")
    with pytest.raises(OutboxError, match="R1"):
        ob.enqueue(control_id="R1", device_id="d", body=b"x")
    ob._conn.execute("PRAGMA query_only=0")
    assert [r.control_id for r in ob.peek()] == ["R0"]
    ob.close()


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_not_a_database_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / OUTBOX_FILE
    path.write_bytes(b"this is not sqlite" * 100)
    before = _digest(path)
    with pytest.raises(OutboxError) as info:
        Outbox(tmp_path)
    assert str(info.value) == (
        f"{path} is not an outbox of this version (not an SQLite database): "
        "move it away or restore it; it was not changed"
    )
    assert _digest(path) == before


def test_a_directory_in_place_of_the_outbox_says_so(tmp_path: Path) -> None:
    (tmp_path / OUTBOX_FILE).mkdir()
    with pytest.raises(OutboxError, match=r"outbox.sqlite3 is a directory, not an outbox file: move it away"):
        Outbox(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutboxError, match=r"file is not a directory \(it should hold the outbox\)"):
        Outbox(tmp_path / "file")


def test_an_outbox_from_a_newer_version_is_refused_not_rewritten(tmp_path: Path) -> None:
    ob = Outbox(tmp_path)
    ob.enqueue(control_id="N0", device_id="d", body=b"x")
    ob.close()
    conn = sqlite3.connect(tmp_path / OUTBOX_FILE)
    conn.execute("PRAGMA user_version=7")
    conn.execute("ALTER TABLE outbox ADD COLUMN priority INTEGER")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = _digest(tmp_path / OUTBOX_FILE)
    with pytest.raises(OutboxError) as info:
        Outbox(tmp_path)
    assert (
        f"was written by a newer vitals-agent (outbox schema 7; this version knows {SCHEMA_VERSION})"
        in str(info.value)
    )
    assert "not opened and not changed" in str(info.value)
    assert _digest(tmp_path / OUTBOX_FILE) == before
    conn = sqlite3.connect(tmp_path / OUTBOX_FILE)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 7
    conn.close()


def test_another_applications_database_is_refused_not_rewritten(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / OUTBOX_FILE)
    conn.execute("CREATE TABLE patients (mrn TEXT)")
    conn.commit()
    conn.close()
    before = _digest(tmp_path / OUTBOX_FILE)
    with pytest.raises(OutboxError, match=r"is not an outbox of this version \(it holds tables patients\)"):
        Outbox(tmp_path)
    assert _digest(tmp_path / OUTBOX_FILE) == before


@pytest.mark.slow  # starts a process
def test_a_read_only_file_system_is_named(tmp_path: Path) -> None:
    """A data dir on a read-only mount (a bind mount made read-only in a private mount namespace)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and util-linux unshare for a read-only mount")
    data = tmp_path / "data"
    ob = Outbox(data)
    ob.close()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from vitals_agent.agent.storage.outbox import Outbox\n"
        "try:\n"
        "    Outbox(Path(sys.argv[1]))\n"
        "except Exception as exc:\n"
        "    print(exc)\n"
    )
    script = 'mount --bind -o ro "$1" "$1" && exec "$2" -c "$3" "$1"'
    result = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(data),
            sys.executable,
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "mount" in result.stderr and result.returncode:
        pytest.skip(f"cannot make a read-only mount here: {result.stderr.strip()}")
    assert result.stdout.strip() == (
        f"the outbox at {data / OUTBOX_FILE} is read-only: its file system is mounted read-only"
    ), result.stderr


def test_create_false_does_not_create(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="no outbox at"):
        Outbox(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()


def test_threads_enqueue_concurrently_without_loss(outbox: Outbox) -> None:
    def worker(t: int) -> None:
        for i in range(25):
            outbox.enqueue(control_id=f"T{t}-{i}", device_id=f"d{t}", body=b"x")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rows = outbox.peek(1000)
    assert sorted(r.control_id for r in rows) == sorted(f"T{t}-{i}" for t in range(4) for i in range(25))
    for t in range(4):  # each producer's messages stay in its own order
        mine = [r.control_id for r in rows if r.device_id == f"d{t}"]
        assert mine == [f"T{t}-{i}" for i in range(25)]


def test_second_process_view_sees_committed_rows(tmp_path: Path) -> None:
    """The operator tools open the same file while the agent runs."""
    agent = Outbox(tmp_path)
    agent.enqueue(control_id="S1", device_id="d", body=b"x")
    tool = Outbox(tmp_path, create=False)
    assert [r.control_id for r in tool.peek()] == ["S1"]
    mid = tool.peek()[0].id
    tool.dead_letter(mid, "operator test")
    assert agent.depth() == 0 and agent.dead_count() == 1
    tool.close()
    agent.close()


def test_enqueue_many_is_all_or_nothing(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, max_bytes=64 * 1024)
    ids = ob.enqueue_many({"control_id": f"B{i}", "device_id": "d", "body": b"x"} for i in range(3))
    assert [r.id for r in ob.peek()] == ids
    with pytest.raises(OutboxFullError, match="none of them was queued"):
        ob.enqueue_many({"control_id": f"C{i}", "device_id": "d", "body": b"y" * 3000} for i in range(100))
    assert [r.control_id for r in ob.peek()] == ["B0", "B1", "B2"]
    ob.close()


def test_enqueue_many_takes_every_keyword_of_enqueue(tmp_path: Path) -> None:
    """Each item is what enqueue() takes: parked, device state and audit records are committed with it
    (enqueue_many used to drop park_reason, state and audit silently)."""
    ob = Outbox(tmp_path)
    record = AuditRecord("2026-03-11T14:00:00+00:00", '{"event": "reading_accepted"}')
    ids = ob.enqueue_many(
        [
            {"control_id": "P1", "device_id": "cart", "body": b"x", "park_reason": "patient mismatch"},
            {"control_id": "Q1", "device_id": "cart", "body": b"y", "state": {"k": "v"}, "audit": [record]},
        ]
    )
    assert [m.control_id for m in ob.peek()] == ["Q1"] and ob.peek()[0].id == ids[1]
    assert [(d.id, d.reason) for d in ob.list_dead()] == [(ids[0], "patient mismatch")]
    assert ob.get_state("cart", "k") == "v"
    assert [r for _, r in ob.audit_rows()] == [record]
    ob.close()


def test_delete_nowait_never_waits(tmp_path: Path) -> None:
    ob = Outbox(tmp_path)
    a, b = (ob.enqueue(control_id=c, device_id="d", body=b"x") for c in ("A", "B"))
    # another process holds the write lock: no waiting, None, nothing changed
    other = sqlite3.connect(tmp_path / OUTBOX_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    assert ob.delete_nowait(a) is None
    other.execute("COMMIT")
    other.close()
    # another thread is inside a write transaction (e.g. an enqueue waiting for fsync): None as well
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with ob._tx("FULL"):
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    assert ob.delete_nowait(a) is None
    release.set()
    t.join()
    assert [r.id for r in ob.peek()] == [a, b]
    assert ob.delete_nowait(a) is True
    assert ob.delete_nowait(a) is False
    assert [r.id for r in ob.peek()] == [b]
    ob.close()


# --- destinations (FHIR beside HL7, issue 19) -------------------------------------------------------


def test_a_reading_for_two_destinations_is_two_rows_in_one_commit(tmp_path: Path) -> None:
    ob = Outbox(tmp_path)
    first = ob.enqueue(control_id="R1", device_id="d", body=b"MSH|oru", also={"fhir": b'{"bundle":1}'})
    ob.enqueue(control_id="R2", device_id="d", body=b'{"bundle":2}', destination="fhir")
    ob.enqueue(control_id="R3", device_id="d", body=b"MSH|p", also={"fhir": b"{}"}, park_reason="mismatch")
    assert [(m.control_id, m.destination) for m in ob.peek(10)] == [
        ("R1", "ehr"),
        ("R1", "fhir"),
        ("R2", "fhir"),
    ]
    assert [m.control_id for m in ob.peek(10, destination="ehr")] == ["R1"]
    assert [(m.control_id, m.body) for m in ob.peek(10, destination="fhir")] == [
        ("R1", b'{"bundle":1}'),
        ("R2", b'{"bundle":2}'),
    ]
    assert (ob.depth(), ob.depth("ehr"), ob.depth("fhir")) == (3, 1, 2)
    assert (ob.dead_count(), ob.dead_count("ehr"), ob.dead_count("fhir")) == (2, 1, 1)
    assert {d.destination for d in ob.list_dead()} == {"ehr", "fhir"}
    # each destination's row has its own fate; the reading is done when both are
    ob.delete(first)
    assert ob.has_control_id("R1")
    fhir_row = ob.peek(1, destination="fhir")[0]
    assert ob.dead_letter(fhir_row.id, "rejected", ack_code="HTTP 400", ack_text="error invalid")
    dead = ob.get(fhir_row.id)
    assert isinstance(dead, DeadLetter) and dead.destination == "fhir"
    assert ob.retry_dead(fhir_row.id) == 1
    again = ob.get(fhir_row.id)
    assert isinstance(again, OutboxMessage) and again.destination == "fhir"
    ob.close()


def test_an_all_or_nothing_commit_for_every_destination(tmp_path: Path) -> None:
    ob = Outbox(tmp_path, max_bytes=64 * 1024)
    with pytest.raises(OutboxFullError):
        ob.enqueue(control_id="BIG", device_id="d", body=b"MSH|x", also={"fhir": b"x" * 200_000})
    assert ob.depth() == 0  # not the ORU without the Bundle
    ob.close()


def test_a_schema_1_outbox_is_migrated_and_its_messages_are_the_ehrs(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / OUTBOX_FILE)
    conn.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, control_id TEXT NOT NULL,"
        " device_id TEXT NOT NULL, body BLOB NOT NULL, meta TEXT NOT NULL DEFAULT '{}',"
        " created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, nacks INTEGER NOT NULL DEFAULT 0,"
        " last_error TEXT);"
        "CREATE TABLE dead_letter (id INTEGER PRIMARY KEY, control_id TEXT NOT NULL, device_id TEXT NOT NULL,"
        " body BLOB NOT NULL, meta TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, dead_at REAL NOT NULL, reason TEXT NOT NULL, ack_code TEXT,"
        " ack_text TEXT);"
        "INSERT INTO outbox (control_id, device_id, body, created_at) VALUES ('OLD1', 'd', x'4d5348', 1.0);"
        "INSERT INTO dead_letter (id, control_id, device_id, body, created_at, dead_at, reason)"
        " VALUES (7, 'OLD0', 'd', x'4d5348', 1.0, 2.0, 'AR');"
        "PRAGMA user_version=1;"
    )
    conn.close()
    ob = Outbox(tmp_path)
    (old,) = ob.peek(10, destination="ehr")
    assert (old.control_id, old.body, old.destination) == ("OLD1", b"MSH", "ehr")
    assert ob.list_dead()[0].destination == "ehr"
    ob.enqueue(control_id="NEW", device_id="d", body=b"{}", destination="fhir")
    assert ob.depth("fhir") == 1
    ob.close()
    conn = sqlite3.connect(tmp_path / OUTBOX_FILE)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    conn.close()
