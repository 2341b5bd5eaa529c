"""Issue 10 items 5 and 7: storage that fails under the sender, with the real Outbox (SQLite), the real
Sender and a real MLLP peer that counts every message it receives.

* item 7, the resend storm: after an AA the delete fails. Before: one MSH-10 received 126 times in 5 s
  (472 in 20 s in the trial). Now each message arrives once, whatever the disk does, also across a kill -9
  and a restart while the disk is still full (the outbox's ledger file remembers what was acknowledged).
* item 5, a corrupt outbox: before, ~25 ERROR lines a second forever; now the sender backs off, shows the
  error in its status and gives up after ``storage_give_up`` seconds with a one-line reason.

Faults: SQLite's own authorizer refusing the DELETE (always available), a damaged b-tree page in the
real file, and a real full disk (a tmpfs in a private mount namespace; skipped without root).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.fake_ehr import Hl7Ehr, RawEhr, make_message
from tests.kit import fast_ehr, running_sender, until
from tests.kit.toml import toml_str
from tests.storage_helpers import Worker, private_disk
from vitals_agent.agent.delivery.sender import Sender
from vitals_agent.agent.storage.outbox import OUTBOX_FILE, DeadLetter, Outbox
from vitals_agent.errors import StorageFailedError


def refuse(outbox: Outbox, action: int, table: str) -> None:
    """Make SQLite refuse one kind of write on the outbox's write connections ('not authorized')."""

    def authorizer(code: int, arg1: str | None, *_: Any) -> int:
        return sqlite3.SQLITE_DENY if code == action and arg1 == table else sqlite3.SQLITE_OK

    for conn in (outbox._conn, outbox._fast):
        conn.set_authorizer(authorizer)


def allow(outbox: Outbox) -> None:
    for conn in (outbox._conn, outbox._fast):
        conn.set_authorizer(None)


def queue(outbox: Outbox, n: int, prefix: str = "M") -> list[str]:
    names = [f"{prefix}{i}" for i in range(n)]
    for name in names:
        outbox.enqueue(control_id=name, device_id="d", body=make_message(name))
    return names


def failures(sender: Sender) -> int:
    value = sender.policy.snapshot(0.0)["storage_failures"]
    assert isinstance(value, int)
    return value


# --- item 7: an acknowledged message is never sent again ------------------------------------------------


async def test_acknowledged_message_is_not_resent_while_its_removal_fails(outbox: Outbox) -> None:
    names = queue(outbox, 5)
    refuse(outbox, sqlite3.SQLITE_DELETE, "outbox")
    async with Hl7Ehr() as ehr:
        sender = Sender(outbox, fast_ehr(ehr.port))
        with capture_logs() as logs:
            async with running_sender(sender):
                # every removal failed at least three times: each failure used to mean one more copy
                await until(lambda: len(ehr.received) == 5 and failures(sender) >= 3)
                status = sender.status()
                assert ehr.control_ids == names  # each once, in order
                assert outbox.depth() == 5
                assert status["storage"]["acknowledged_not_removed"] == 5
                assert "cannot remove delivered message" in status["storage"]["error"]
                assert status["storage"]["ok"] is False and status["storage"]["failing_since"]
                assert sorted(outbox.delivered_pending().values()) == names  # on disk too
                allow(outbox)  # the disk has room again
                await until(lambda: outbox.depth() == 0)
                assert sender.status()["storage"]["ok"] is True
    assert ehr.control_ids == names
    assert outbox.delivered_pending() == {}
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["outbox.storage_failing"]


async def test_restart_after_failed_removals_sends_nothing_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ob = Outbox(data)
    names = queue(ob, 4)
    refuse(ob, sqlite3.SQLITE_DELETE, "outbox")
    async with Hl7Ehr() as ehr:
        sender = Sender(ob, fast_ehr(ehr.port))
        async with running_sender(sender):
            await until(lambda: len(ehr.received) == 4 and failures(sender) >= 1)
        ob.close()
        # restart while removals still fail: nothing is sent again
        ob = Outbox(data)
        refuse(ob, sqlite3.SQLITE_DELETE, "outbox")
        sender = Sender(ob, fast_ehr(ehr.port))
        async with running_sender(sender):
            await until(lambda: failures(sender) >= 2)
            assert sender.status()["storage"]["acknowledged_not_removed"] == 4
        ob.close()
        # restart with a healthy disk: the ledger's messages are removed first, none is sent
        ob = Outbox(data)
        later = queue(ob, 1, prefix="N")
        sender = Sender(ob, fast_ehr(ehr.port))
        async with running_sender(sender):
            await until(lambda: ob.depth() == 0)
        assert ob.delivered_pending() == {}
        ob.close()
    assert ehr.control_ids == names + later


async def test_a_rejected_message_is_not_resent_while_its_dead_letter_cannot_be_written(
    outbox: Outbox,
) -> None:
    ids = [outbox.enqueue(control_id=c, device_id="d", body=make_message(c)) for c in ("A0", "A1", "A2")]
    refuse(outbox, sqlite3.SQLITE_INSERT, "dead_letter")
    async with RawEhr(per_id={"A1": "AR"}) as ehr:
        sender = Sender(outbox, fast_ehr(ehr.port))
        async with running_sender(sender):
            await until(lambda: len(ehr.received) == 3 and failures(sender) >= 3)
            assert ehr.control_ids == ["A0", "A1", "A2"]  # A1 refused once, not again and again
            allow(outbox)
            await until(lambda: outbox.dead_count() == 1 and outbox.depth() == 0)
    assert ehr.control_ids == ["A0", "A1", "A2"]
    dead = outbox.get(ids[1])
    assert isinstance(dead, DeadLetter) and dead.reason == "rejected by the receiver (AR)"


@pytest.mark.slow  # starts a process
async def test_full_disk_kill_and_restart_each_message_received_once(tmp_path: Path) -> None:
    """The trial's case on a real full disk: a tmpfs filled to the last byte after the messages were
    queued, the sender as a process, SIGKILL while removals fail, a restart on the still-full disk,
    then room again."""
    mount = tmp_path / "disk"
    with private_disk(mount) as disk:
        async with Hl7Ehr() as ehr:
            first = Worker.start(disk, mount / "data", ehr.port, "--enqueue", "20")
            second: Worker | None = None
            try:
                await first.ready_then_go(before_go=disk.fill)
                await first.wait(
                    lambda: first.last().get("unremoved") == 20 and first.last().get("failures", 0) >= 3,
                    "20 delivered, removals failing",
                )
                assert "disk full" in first.last()["error"]
                assert first.last()["durable"] is True
                counts = Counter(ehr.control_ids)
                assert len(counts) == 20 and set(counts.values()) == {1}, counts.most_common(3)
                first.kill()
                second = Worker.start(disk, mount / "data", ehr.port)
                await second.ready_then_go()
                await second.wait(
                    lambda: second.last().get("unremoved") == 20 and second.last().get("failures", 0) >= 3,
                    "the restarted sender remembers all 20",
                )
                assert len(ehr.received) == 20
                disk.free()
                await second.wait(lambda: second.last().get("depth") == 0, "removed once there is room")
            finally:
                first.kill()
                if second is not None:
                    second.kill()
    counts = Counter(ehr.control_ids)
    assert len(counts) == 20 and set(counts.values()) == {1}, counts.most_common(3)


# --- item 5: a corrupt outbox -----------------------------------------------------------------------------


def damage_outbox_table(data: Path) -> None:
    """Overwrite the header of the outbox table's root b-tree page: 'database disk image is malformed'."""
    conn = sqlite3.connect(data / OUTBOX_FILE)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'outbox'").fetchone()[0]
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with open(data / OUTBOX_FILE, "r+b") as fh:
        fh.seek((root - 1) * page)
        fh.write(b"\xff" * 64)


async def test_corrupt_outbox_backs_off_shows_in_status_and_gives_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ob = Outbox(data)
    for i in range(30):
        ob.enqueue(control_id=f"C{i}", device_id="d", body=make_message(f"C{i}", value="9" * 1500))
    ob.close()
    damage_outbox_table(data)
    ob = Outbox(data)  # opens: the damage is in a table page, found when the sender reads it
    peeks = 0
    real_peek = ob.peek

    def counting_peek(*args: Any, **kw: Any) -> Any:
        nonlocal peeks
        peeks += 1
        return real_peek(*args, **kw)

    ob.peek = counting_peek  # type: ignore[method-assign]
    async with Hl7Ehr() as ehr:
        sender = Sender(ob, fast_ehr(ehr.port), storage_give_up=2.0)
        with capture_logs() as logs:
            task = asyncio.create_task(sender.run())
            await until(lambda: failures(sender) >= 2)
            status = sender.status()
            assert status["storage"]["ok"] is False
            assert "the file is damaged (database disk image is malformed)" in status["storage"]["error"]
            assert 0 < status["storage"]["stops_in_seconds"] <= 2.0
            with pytest.raises(StorageFailedError) as info:
                await asyncio.wait_for(task, 30)
            await sender.stop()
    ob.close()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("stopping after 2 s of storage errors: outbox ") and "damaged" in message
    assert ehr.received == []
    # back-off from 0.25 s, capped at 0.5 s: a bounded number of tries in 2 s, not 25 a second
    assert 3 <= peeks <= 1 + int(2.0 / 0.125)
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert errors == ["outbox.storage_failing"]


async def test_an_unreadable_row_is_a_storage_error_not_garbage_on_the_wire(outbox: Outbox) -> None:
    queue(outbox, 2)
    outbox._conn.execute("UPDATE outbox SET body = 42 WHERE control_id = 'M0'")
    async with Hl7Ehr() as ehr:
        sender = Sender(outbox, fast_ehr(ehr.port), storage_give_up=1.0)
        task = asyncio.create_task(sender.run())
        with pytest.raises(StorageFailedError, match=r"outbox row 1 is unreadable"):
            await asyncio.wait_for(task, 30)
        await sender.stop()
    assert ehr.received == []


@pytest.mark.slow  # starts a process
async def test_agent_process_stops_with_one_line_and_exit_74_on_a_corrupt_outbox(tmp_path: Path) -> None:
    from tests.e2e_helpers import AgentProcess

    data = tmp_path / "data"
    ob = Outbox(data)
    queue(ob, 30)
    ob.close()
    damage_outbox_table(data)
    config = tmp_path / "agent.toml"
    config.write_text(
        "[agent]\n"
        'facility = "EXAMPLE_CLINIC"\n'
        f"data_dir = {toml_str(data)}\n"
        "storage_give_up_seconds = 2\n"
        "[ehr]\n"
        'host = "127.0.0.1"\n'
        "port = 9\n"
        "[control]\n"
        "enabled = false\n"
    )
    agent = AgentProcess(config)
    try:
        code = await asyncio.to_thread(agent.proc.wait, 60)
        await asyncio.to_thread(agent._reader.join, 10)
    finally:
        agent.cleanup()
    assert code == 74, agent.tail()
    errors = [e for e in agent.log if e.get("level") == "error"]
    assert [e["event"] for e in errors] == [
        "outbox.storage_failing",
        "agent.stopped_storage_failed",
    ]
    last = agent.raw_log[-1]
    assert last.startswith("error: stopping after 2 s of storage errors: outbox ") and "damaged" in last
    assert "Traceback" not in "\n".join(agent.raw_log)
