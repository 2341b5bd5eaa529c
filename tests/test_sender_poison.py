"""A message the receiver always fails after accepting the connection (e.g. larger than its frame limit,
so it drops the connection) must not block the room's later readings: it is probed against the next
message and dead-lettered when the receiver takes that one. An EHR that fails every message empties
nothing into the dead-letter table and keeps the order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from tests.fake_ehr import RawEhr, make_message
from tests.kit import fast_ehr, until
from vitals_agent.agent.delivery.sender import POISON_SUSPECT_AFTER, Sender
from vitals_agent.agent.storage.outbox import Outbox


@contextlib.asynccontextmanager
async def delivering(outbox: Outbox, ehr: RawEhr) -> AsyncIterator[Sender]:
    sender = Sender(outbox, fast_ehr(ehr.port))
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        await sender.stop(timeout=1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_poison_message_is_dead_lettered_and_later_readings_flow(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "data")
    ehr = RawEhr(mode="AA", per_id={"C2": "CLOSE"})
    await ehr.start()
    for cid in ("C1", "C2", "C3", "C4"):
        outbox.enqueue(control_id=cid, device_id="d", body=make_message(cid))
    try:
        async with delivering(outbox, ehr):
            await until(lambda: outbox.depth() == 0, timeout=20)
    finally:
        await ehr.stop()
    got = [r.control_id for r in ehr.received]
    assert got[0] == "C1"
    # the client re-sends once on a fresh connection when a kept-open connection turns out closed
    assert POISON_SUSPECT_AFTER <= got.count("C2") <= POISON_SUSPECT_AFTER + 1
    assert [c for c in got if c != "C2"] == ["C1", "C3", "C4"]
    [dead] = outbox.list_dead()
    assert dead.control_id == "C2" and "later ones" in dead.reason
    outbox.close()


async def test_an_ehr_failing_every_message_dead_letters_nothing_and_keeps_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "data")
    ehr = RawEhr(mode="CLOSE")
    await ehr.start()
    for cid in ("C1", "C2", "C3"):
        outbox.enqueue(control_id=cid, device_id="d", body=make_message(cid))
    try:
        async with delivering(outbox, ehr):
            await until(lambda: len(ehr.received) >= 4 * POISON_SUSPECT_AFTER, timeout=30)
            assert outbox.dead_count() == 0
            ehr.mode = "AA"  # the EHR recovers
            await until(lambda: outbox.depth() == 0, timeout=20)
    finally:
        await ehr.stop()
    assert outbox.dead_count() == 0
    accepted_order = [r.control_id for r in ehr.received][-3:]
    assert accepted_order == ["C1", "C2", "C3"]
    outbox.close()
