"""Issue 3 item 6: every fault a network or an interface engine can produce, each against a real TCP peer
on 127.0.0.1, with the real Outbox (SQLite) and Sender. Receivers record every message they get, so each
test checks exactly what arrived, in which order, and how often.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
from pathlib import Path

import pytest

from tests.fake_ehr import FakeEhr, Hl7Ehr, RawEhr, make_message
from tests.kit import fast_ehr, free_port, running_sender, until
from vitals_agent.agent.delivery.sender import Sender
from vitals_agent.agent.storage.outbox import DeadLetter, Outbox
from vitals_agent.errors import OutboxFullError

PEERS = [Hl7Ehr, RawEhr]


def queue(outbox: Outbox, names: list[str]) -> list[int]:
    return [outbox.enqueue(control_id=n, device_id="dev-1", body=make_message(n)) for n in names]


async def deliver_all(sender: Sender, outbox: Outbox, timeout: float = 10.0) -> None:
    async with running_sender(sender):
        await until(lambda: outbox.depth() == 0, timeout)


def assert_resent_identically(ehr: FakeEhr, control_id: str, *, new_connection: bool = True) -> None:
    copies = [r for r in ehr.received if r.control_id == control_id]
    assert len(copies) >= 2
    assert len({r.raw for r in copies}) == 1  # same bytes: same MSH-10, same MSH-7
    if new_connection:  # after a link failure the re-send goes over a new connection
        assert copies[0].connection != copies[-1].connection


# --- the link ---------------------------------------------------------------------------------------


async def test_ehr_down_at_start_then_up(outbox: Outbox) -> None:
    port = free_port()
    queue(outbox, ["M0", "M1", "M2"])
    sender = Sender(outbox, fast_ehr(port))
    async with running_sender(sender):
        await until(lambda: sender.status()["consecutive_failures"] >= 2)
        status = sender.status()
        assert status["connected"] is False and status["depth"] == 3
        assert f"cannot connect to 127.0.0.1:{port}" in status["last_error"]
        assert status["in_flight"] is None
        async with Hl7Ehr(port=port) as ehr:
            await until(lambda: outbox.depth() == 0)
            assert ehr.control_ids == ["M0", "M1", "M2"]  # in order, once each
            assert sender.status()["connected"] is True
            assert sender.status()["last_ack_at"] is not None


@pytest.mark.parametrize("peer", PEERS)
async def test_ehr_down_mid_stream(outbox: Outbox, peer: type[FakeEhr]) -> None:
    ehr = peer()
    await ehr.start()
    sender = Sender(outbox, fast_ehr(ehr.port))
    async with running_sender(sender):
        queue(outbox, ["M0", "M1"])
        sender.wake()
        await until(lambda: outbox.depth() == 0)
        await ehr.stop()  # the EHR goes away; connection dropped, new ones refused
        queue(outbox, ["M2", "M3", "M4"])
        sender.wake()
        await until(lambda: sender.status()["consecutive_failures"] >= 2)
        assert outbox.depth() == 3
        await ehr.start()  # back on the same port
        await until(lambda: outbox.depth() == 0)
    await ehr.stop()
    assert ehr.control_ids == ["M0", "M1", "M2", "M3", "M4"]


@pytest.mark.parametrize("peer", PEERS)
async def test_accepts_and_never_answers(outbox: Outbox, peer: type[FakeEhr]) -> None:
    async with peer(plan=["SILENT"]) as ehr:
        queue(outbox, ["M0", "M1"])
        sender = Sender(outbox, fast_ehr(ehr.port))
        await deliver_all(sender, outbox)
    assert ehr.control_ids == ["M0", "M0", "M1"]
    assert_resent_identically(ehr, "M0")


async def test_slow_answer_within_timeout_is_delivered_once(outbox: Outbox) -> None:
    async with Hl7Ehr(mode="SLOW", delay=0.15) as ehr:
        queue(outbox, ["M0", "M1"])
        await deliver_all(Sender(outbox, fast_ehr(ehr.port, ack_timeout_seconds=1.0)), outbox)
    assert ehr.control_ids == ["M0", "M1"]
    assert ehr.connections == 1


async def test_slow_answer_beyond_timeout_is_resent(outbox: Outbox) -> None:
    async with Hl7Ehr(plan=["SLOW"], delay=0.6) as ehr:
        queue(outbox, ["M0", "M1"])
        sender = Sender(outbox, fast_ehr(ehr.port, ack_timeout_seconds=0.2))
        await deliver_all(sender, outbox)
    assert ehr.control_ids == ["M0", "M0", "M1"]
    assert_resent_identically(ehr, "M0")


@pytest.mark.parametrize("peer", PEERS)
async def test_garbage_answer_is_no_ack(outbox: Outbox, peer: type[FakeEhr]) -> None:
    async with peer(plan=["GARBLE"]) as ehr:
        queue(outbox, ["M0", "M1"])
        sender = Sender(outbox, fast_ehr(ehr.port))
        await deliver_all(sender, outbox)
        assert "not an MLLP frame" in (sender.status()["last_error"] or "")
    assert ehr.control_ids == ["M0", "M0", "M1"]
    assert_resent_identically(ehr, "M0")


@pytest.mark.parametrize("peer", PEERS)
async def test_ack_for_a_different_msh10_is_no_ack(outbox: Outbox, peer: type[FakeEhr]) -> None:
    async with peer(plan=["WRONG_ID"]) as ehr:
        queue(outbox, ["M0", "M1"])
        sender = Sender(outbox, fast_ehr(ehr.port))
        await deliver_all(sender, outbox)
        assert "not for 'M0'" in (sender.status()["last_error"] or "")
    assert ehr.control_ids == ["M0", "M0", "M1"]
    assert_resent_identically(ehr, "M0")


@pytest.mark.parametrize("peer", PEERS)
async def test_reset_mid_frame(outbox: Outbox, peer: type[FakeEhr]) -> None:
    async with peer(plan=["RESET"]) as ehr:
        queue(outbox, ["M0", "M1"])
        sender = Sender(outbox, fast_ehr(ehr.port))
        await deliver_all(sender, outbox)
    assert ehr.control_ids == ["M0", "M0", "M1"]
    assert_resent_identically(ehr, "M0")


@pytest.mark.parametrize("peer", PEERS)
async def test_closed_before_ack(outbox: Outbox, peer: type[FakeEhr]) -> None:
    async with peer(plan=["CLOSE"]) as ehr:
        queue(outbox, ["M0", "M1"])
        await deliver_all(Sender(outbox, fast_ehr(ehr.port)), outbox)
    assert ehr.control_ids == ["M0", "M0", "M1"]
    assert_resent_identically(ehr, "M0")


async def test_half_open_connection(outbox: Outbox) -> None:
    """The peer stops reading and answering but never closes (a vanished host): timeout, new connection."""
    async with RawEhr(plan=["AA", "HALF_OPEN"]) as ehr:
        queue(outbox, ["M0", "M1", "M2"])
        await deliver_all(Sender(outbox, fast_ehr(ehr.port)), outbox)
    assert ehr.control_ids == ["M0", "M1", "M1", "M2"]
    assert [r.connection for r in ehr.received] == [1, 1, 2, 2]
    assert_resent_identically(ehr, "M1")


async def test_peer_that_closes_after_every_ack(outbox: Outbox) -> None:
    async with RawEhr(mode="AA_CLOSE") as ehr:
        queue(outbox, [f"M{i}" for i in range(5)])
        sender = Sender(outbox, fast_ehr(ehr.port))
        await deliver_all(sender, outbox)
    assert ehr.control_ids == [f"M{i}" for i in range(5)]
    assert ehr.connections == 5
    assert sender.status()["consecutive_failures"] == 0


async def test_close_after_n_messages(outbox: Outbox) -> None:
    async with Hl7Ehr(close_after=3) as ehr:
        queue(outbox, [f"M{i}" for i in range(7)])
        await deliver_all(Sender(outbox, fast_ehr(ehr.port)), outbox)
    assert ehr.control_ids == [f"M{i}" for i in range(7)]
    assert ehr.connections == 3


async def test_commit_ack_then_application_ack(outbox: Outbox) -> None:
    """CA completes delivery; the AA that follows is recognised and skipped, not taken as a protocol error."""
    async with Hl7Ehr(mode="CA_AA") as ehr:
        queue(outbox, [f"M{i}" for i in range(4)])
        sender = Sender(outbox, fast_ehr(ehr.port))
        await deliver_all(sender, outbox)
    assert ehr.control_ids == [f"M{i}" for i in range(4)]
    assert ehr.connections == 1
    assert sender.status()["last_error"] is None


# --- negative acknowledgements ----------------------------------------------------------------------


@pytest.mark.parametrize("peer", PEERS)
async def test_ae_retried_then_dead_lettered_without_holding_back_the_queue(
    outbox: Outbox, peer: type[FakeEhr]
) -> None:
    async with peer(per_id={"M1": "AE"}) as ehr:
        ids = queue(outbox, ["M0", "M1", "M2", "M3"])
        sender = Sender(outbox, fast_ehr(ehr.port, max_attempts=3, backoff_min_seconds=0.05))
        async with running_sender(sender):
            await until(lambda: outbox.depth() == 0)
    assert ehr.control_ids.count("M1") == 3
    assert [c for c in ehr.control_ids if c != "M1"] == ["M0", "M2", "M3"]
    assert ehr.control_ids.index("M2") < len(ehr.control_ids) - 1 - ehr.control_ids[::-1].index("M1")
    dead = outbox.get(ids[1])
    assert isinstance(dead, DeadLetter)
    assert dead.control_id == "M1" and dead.body == make_message("M1")
    assert dead.reason == "AE 3 times (max_attempts 3)"
    assert dead.ack_code == "AE"
    assert dead.ack_text == ("AE: Observation rejected [E 207^Application internal error^HL70357 at OBX^1^5]")
    assert dead.attempts == 3
    assert outbox.dead_count() == 1 and sender.status()["dead"] == 1


@pytest.mark.parametrize("peer", PEERS)
async def test_ar_dead_lettered_at_once_and_operator_retry_resends_original(
    outbox: Outbox, peer: type[FakeEhr]
) -> None:
    async with peer(per_id={"M1": "AR"}) as ehr:
        ids = queue(outbox, ["M0", "M1", "M2"])
        sender = Sender(outbox, fast_ehr(ehr.port))
        async with running_sender(sender):
            await until(lambda: outbox.depth() == 0)
            assert ehr.control_ids == ["M0", "M1", "M2"]  # M2 not held back, M1 sent once
            dead = outbox.get(ids[1])
            assert isinstance(dead, DeadLetter)
            assert (dead.reason, dead.ack_code) == ("rejected by the receiver (AR)", "AR")
            # the receiver's configuration is fixed; the operator re-queues the dead letter
            ehr.per_id.clear()
            assert outbox.retry_dead(ids[1]) == 1
            sender.wake()
            await until(lambda: outbox.depth() == 0 and len(ehr.received) == 4)
    assert ehr.control_ids == ["M0", "M1", "M2", "M1"]
    assert_resent_identically(ehr, "M1", new_connection=False)
    assert outbox.dead_count() == 0


async def test_ce_and_cr_follow_retry_negative(outbox: Outbox) -> None:
    async with RawEhr(per_id={"M0": "CE", "M1": "CR"}) as ehr:
        ids = queue(outbox, ["M0", "M1", "M2"])
        # CE not retried with this configuration: dead-lettered at once, like CR
        await deliver_all(Sender(outbox, fast_ehr(ehr.port, retry_negative="AE")), outbox)
    assert ehr.control_ids == ["M0", "M1", "M2"]
    reasons = [d.reason for d in outbox.list_dead()]
    assert reasons == ["rejected by the receiver (CE)", "rejected by the receiver (CR)"]
    assert [d.id for d in outbox.list_dead()] == ids[:2]


async def test_unknown_ack_code_is_parked(outbox: Outbox) -> None:
    async with RawEhr(plan=["XX"]) as ehr:
        ids = queue(outbox, ["M0", "M1"])
        await deliver_all(Sender(outbox, fast_ehr(ehr.port)), outbox)
    assert ehr.control_ids == ["M0", "M1"]
    dead = outbox.get(ids[0])
    assert isinstance(dead, DeadLetter) and dead.reason == "unknown acknowledgement code 'XX'"


# --- disk full ----------------------------------------------------------------------------------------


async def test_disk_full_while_queueing(tmp_path: Path) -> None:
    """Readings arrive while the EHR is down until the disk fills: the next one is refused loudly, every
    queued one is kept and, when the EHR is back, delivered in order."""
    outbox = Outbox(tmp_path, max_bytes=96 * 1024)
    port = free_port()
    sender = Sender(outbox, fast_ehr(port))
    accepted: list[str] = []
    async with running_sender(sender):
        with pytest.raises(OutboxFullError) as info:
            for i in range(1000):
                cid = f"F{i:04d}"
                await asyncio.to_thread(
                    outbox.enqueue, control_id=cid, device_id="d", body=make_message(cid, value="9" * 2000)
                )
                accepted.append(cid)
                sender.wake()
        refused = f"F{len(accepted):04d}"
        assert refused in str(info.value) and "NOT queued" in str(info.value)
        assert outbox.depth() == len(accepted) > 10
        async with Hl7Ehr(port=port) as ehr:
            await until(lambda: outbox.depth() == 0)
    outbox.close()
    assert ehr.control_ids == accepted
    assert refused not in ehr.control_ids


# --- stopping -------------------------------------------------------------------------------------------


async def test_stop_leaves_unacknowledged_message_queued(outbox: Outbox) -> None:
    async with Hl7Ehr(mode="SILENT") as ehr:
        queue(outbox, ["M0", "M1"])
        sender = Sender(outbox, fast_ehr(ehr.port, ack_timeout_seconds=30))
        task = asyncio.create_task(sender.run())
        await until(lambda: sender.status()["in_flight"] == "M0")
        await sender.stop(timeout=0.2)
        assert task.done()
    assert [r.control_id for r in outbox.peek()] == ["M0", "M1"]
    async with Hl7Ehr() as ehr2:
        await deliver_all(Sender(outbox, fast_ehr(ehr2.port)), outbox)
    assert ehr2.control_ids == ["M0", "M1"]
    assert ehr2.received[0].raw == ehr.received[0].raw


async def test_stop_finishes_the_message_in_flight(outbox: Outbox) -> None:
    async with Hl7Ehr(mode="SLOW", delay=0.3) as ehr:
        queue(outbox, ["M0", "M1"])
        sender = Sender(outbox, fast_ehr(ehr.port, ack_timeout_seconds=5))
        task = asyncio.create_task(sender.run())
        await until(lambda: sender.status()["in_flight"] == "M0")
        await sender.stop(timeout=3.0)
        assert task.done()
    assert ehr.control_ids == ["M0"]
    assert [r.control_id for r in outbox.peek()] == ["M1"]  # M0 acknowledged and removed; M1 not started


# --- kill -9 during a 2,000-message drain ----------------------------------------------------------------

WORKER = Path(__file__).with_name("drain_worker.py")


@pytest.mark.slow  # starts a Python process
async def test_sigkill_during_drain_loses_nothing(tmp_path: Path) -> None:
    n = 2000
    kills = 5
    data = tmp_path / "data"
    ob = Outbox(data)
    names = [f"K{i:05d}" for i in range(n)]
    ob.enqueue_many({"control_id": cid, "device_id": "d", "body": make_message(cid)} for cid in names)
    ob.close()
    rng = random.Random(os.getpid())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    async with Hl7Ehr() as ehr:
        killed_at: list[int] = []
        for _ in range(kills):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(WORKER), str(data), str(ehr.port), stdout=asyncio.subprocess.PIPE, env=env
            )
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"started"
            before = len(ehr.received)
            # kill at a random point once it is draining: after 0..150 more messages arrived
            target = before + rng.randrange(1, 150)
            with contextlib.suppress(AssertionError):  # (wait_for's timeout: then kill it anyway)
                await ehr.wait_for(target, timeout=10)
            proc.kill()  # SIGKILL; TerminateProcess on Windows
            await proc.wait()
            killed_at.append(len(ehr.received))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), str(data), str(ehr.port), "--until-empty", env=env
        )
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    got = ehr.control_ids
    # no loss, order kept, and duplicates only of the message in flight at a kill (same bytes, same MSH-10)
    collapsed = [c for i, c in enumerate(got) if i == 0 or got[i - 1] != c]
    assert collapsed == names
    duplicates = len(got) - n
    print(f"kills at {killed_at}, duplicates {duplicates}")
    assert 0 <= duplicates <= kills
    assert all(0 < k < n + kills for k in killed_at)  # every kill landed during the drain
    by_id: dict[str, set[bytes]] = {}
    for r in ehr.received:
        by_id.setdefault(r.control_id, set()).add(r.raw)
    assert all(len(v) == 1 for v in by_id.values())
    ob = Outbox(data)
    assert ob.depth() == 0 and ob.dead_count() == 0
    ob.close()


# --- a third, independent receiver: hl7apy's threaded MLLP server ---------------------------------------


async def test_hl7apy_server_one_message_per_connection(outbox: Outbox) -> None:
    """hl7apy's MLLPServer parses with hl7apy, answers one message per TCP connection and then closes it
    (testing.md §4.2): every message must still arrive once, in order, each on its own connection."""
    import threading

    from hl7apy.mllp import AbstractHandler, MLLPServer
    from hl7apy.parser import parse_message

    received: list[str] = []

    class Handler(AbstractHandler):  # type: ignore[misc]
        def reply(self) -> str:
            msg = parse_message(self.incoming_message)
            control_id = msg.msh.msh_10.value
            received.append(control_id)
            ack = (
                "MSH|^~\\&|EHR|HOSP|VITALS_AGENT|TEST_CLINIC|20250314153013+0000||ACK^R01^ACK|"
                f"A{control_id}|P|2.6\rMSA|AA|{control_id}\r"
            )
            return str(parse_message(ack).to_mllp())  # hl7apy handlers return the framed answer

    server = MLLPServer("127.0.0.1", 0, {"ORU^R01^ORU_R01": (Handler,)}, timeout=2)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        names = [f"H{i}" for i in range(5)]
        queue(outbox, names)
        sender = Sender(outbox, fast_ehr(server.server_address[1], ack_timeout_seconds=2))
        await deliver_all(sender, outbox)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert received == names
    assert sender.client.connections == 5


async def test_new_readings_are_queued_durably_during_a_full_speed_drain(outbox: Outbox) -> None:
    """The backlog drains while the pipeline keeps committing new readings from another thread: every
    enqueue succeeds (no 'database is locked'), and everything arrives in queue order."""
    backlog = [f"B{i:04d}" for i in range(600)]
    outbox.enqueue_many({"control_id": c, "device_id": "d", "body": make_message(c)} for c in backlog)
    fresh = [f"N{i:02d}" for i in range(20)]
    async with Hl7Ehr() as ehr:
        sender = Sender(outbox, fast_ehr(ehr.port))
        async with running_sender(sender):
            await ehr.wait_for(50)
            for cid in fresh:  # as the pipeline does: enqueue in a worker thread, then wake
                await asyncio.to_thread(outbox.enqueue, control_id=cid, device_id="d", body=make_message(cid))
                sender.wake()
            await until(lambda: outbox.depth() == 0, timeout=30)
    assert ehr.control_ids == backlog + fresh


async def test_unframeable_message_is_parked_not_blocking(outbox: Outbox) -> None:
    async with Hl7Ehr() as ehr:
        bad = outbox.enqueue(
            control_id="BAD", device_id="d", body=make_message("BAD").replace(b"97", b"9\x0b7")
        )
        queue(outbox, ["M1"])
        await deliver_all(Sender(outbox, fast_ehr(ehr.port)), outbox)
    assert ehr.control_ids == ["M1"]
    dead = outbox.get(bad)
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "message contains an MLLP framing byte (0x0B or 0x1C)" and dead.ack_code is None
