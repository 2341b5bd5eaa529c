"""The senders: take messages for one destination from the outbox in order and deliver them.

:class:`QueueSender` is the loop every destination shares; a :class:`~vitals_agent.agent.delivery.link.Link`
does the protocol. :class:`Sender` is the EHR's: HL7 v2 over MLLP (hl7-pcd01.md §9.2) through
:class:`MllpLink`; the FHIR server's is :class:`~vitals_agent.agent.delivery.fhir_sender.FhirSender`. Each
destination has its own sender, queue rows, back-off and dead letters, so one destination being down never
holds up the other.

This module does the I/O: it reads the outbox, talks to the receiver, writes the results and the audit
records. Every
decision — what to send next, when to retry, when to dead-letter or probe a poison message, how long to
back off after a storage error and when to give up — is :class:`~vitals_agent.agent.delivery.policy.
DeliveryPolicy`'s, which is pure and tested without sockets. In short:

* One message in flight. A message leaves the outbox only after an ``AA`` or ``CA`` whose MSH-10 it
  carries; re-sends reuse the stored bytes, so the MSH-10 (and MSH-7) never change.
* No ACK is a link failure: close, back off, reconnect, re-send the same message. ``AE``/``CE`` defer the
  message and let later ones go; ``AR``/``CR``/unknown codes dead-letter it. Dead letters are logged at
  WARNING (the interface alert) without the receiver's free text.
* A message the EHR accepted is never sent again, whatever the disk does: when its removal fails it is
  remembered (in memory, and in the outbox's ledger file when that can be written) and its removal is
  retried with a storage back-off. Storage errors back off, show in :meth:`Sender.status`, and after
  ``storage_give_up`` seconds :meth:`Sender.run` raises :class:`StorageFailedError` so the agent stops.
* The outbox depth is checked about once a second; crossing ``backlog_warning`` (and each doubling of it)
  logs a WARNING.

Message bodies are never logged; control ids, ids and device ids are.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import KW_ONLY, InitVar, dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict, Unpack

import structlog

from vitals_agent import log_events as ev
from vitals_agent.agent.delivery.link import Answer, Link
from vitals_agent.agent.delivery.policy import (
    DEFAULT_STORAGE_GIVE_UP,
    AwaitAppAck,
    DeadLetter,
    DeliveryPolicy,
    Fetch,
    Refill,
    Removal,
    Send,
    Settings,
    Settle,
    Wait,
)
from vitals_agent.agent.storage.outbox import Outbox, OutboxMessage
from vitals_agent.config.ehr import EhrConfig
from vitals_agent.errors import (
    AckProtocolError,
    ConnectFailedError,
    OutboxError,
    PeerUnavailableError,
    RetryLaterError,
    StorageFailedError,
)
from vitals_agent.hl7.ack import Ack, parse_ack
from vitals_agent.net.mllp import MllpClient

log = structlog.get_logger(__name__)

BATCH = 64  # messages read from the outbox at a time
IDLE_POLL_SECONDS = 2.0  # look at the outbox this often even without wake() (operator retries)
BACKLOG_CHECK_SECONDS = 1.0
# A message that fails this many times in a row *after* the EHR accepted the connection becomes a suspect:
# the next message is tried in its place (see delivery_policy.py).
POISON_SUSPECT_AFTER = 3
STORAGE_REMINDER_SECONDS = 60.0  # a still-failing outbox is logged at ERROR again this often
ANSWERED_MEMORY = 4096  # MSH-10s whose ACK the MLLP link remembers (to recognise answers given again)
REPLAY_WARN_AFTER = 3  # duplicate ACKs before the warning that the receiver replays a kept-open connection


class MllpLink(Link[MllpClient]):
    """HL7 v2 over MLLP: one message, its ACK. ``client`` reconnects itself.

    ``keep_open`` (``[ehr] keep_connection_open``, Mirth's sender term): False closes the connection after
    each ACK, so every message has a connection of its own (for receivers that mishandle a kept-open one).
    An ACK for another message while waiting is handed to :attr:`on_other` first (application ACKs of
    enhanced mode); else, when it is for a message already answered, it is counted and skipped: the same
    code again is a *duplicate* (a receiver replaying a kept-open connection answers every earlier message
    again with each new one: warned once, naming the setting), another code a *late* ACK (the AA after a
    CA). Anything else means this message got no usable ACK.
    """

    def __init__(
        self,
        client: MllpClient,
        ack_timeout: float,
        *,
        max_bytes: int | None = None,
        keep_open: bool = True,
    ) -> None:
        super().__init__(client)
        self.ack_timeout = ack_timeout
        self.max_bytes = max_bytes  # [ehr] max_message_bytes: the receiver's limit
        self.keep_open = keep_open
        self.on_other: Callable[[Ack], bool] | None = None  # True: that ACK was taken (enhanced mode)
        self._answered: OrderedDict[str, str] = OrderedDict()  # MSH-10 -> MSA-1 of the ACK it got
        self.duplicate_acks = 0  # the same answer again for a message already answered
        self.late_acks = 0  # another answer for a message already answered (e.g. AA after CA)
        self._replay_warned = False
        client.unsolicited = self._unsolicited

    async def listen(self, timeout: float) -> Ack | None:
        """An ACK the receiver sends on the open connection while nothing is in flight (the application
        ACK after a commit ACK), or None within ``timeout``. Never opens a connection."""
        payload = await self.client.listen(timeout)
        if payload is None:
            return None
        try:
            return parse_ack(payload)
        except AckProtocolError as exc:
            log.debug(ev.DELIVERY_IDLE_FRAME_UNREADABLE, error=str(exc))
            return None

    def _unsolicited(self, payload: bytes) -> None:
        """A frame that arrived before the next message was written (it cannot answer that message)."""
        try:
            ack = parse_ack(payload)
        except AckProtocolError as exc:
            log.debug(ev.DELIVERY_STRAY_FRAME_UNREADABLE, error=str(exc))
            return
        if not self._other(ack, lambda _cid: False):
            log.debug(ev.DELIVERY_STRAY_ACK, ack_for=ack.control_id, code=ack.code)

    def counters(self) -> dict[str, int]:
        """For the status: ACKs that answered messages already answered."""
        return {"duplicate_acks": self.duplicate_acks, "late_acks": self.late_acks}

    def refusal(self, msg: OutboxMessage) -> str | None:
        if b"\x0b" in msg.body or b"\x1c" in msg.body:
            # MLLP cannot carry it, now or ever: park it instead of blocking the queue behind it
            return "message contains an MLLP framing byte (0x0B or 0x1C)"
        if self.max_bytes is not None and len(msg.body) > self.max_bytes:
            return (
                f"message is {len(msg.body)} bytes, over the receiver's limit of {self.max_bytes} bytes "
                "([ehr] max_message_bytes)"
            )
        return None

    async def exchange(self, msg: OutboxMessage, was_acked: Callable[[str], bool]) -> Answer:
        timeout = self.ack_timeout
        deadline = time.monotonic() + timeout
        payload = await self.client.send(msg.body, timeout)
        while True:
            try:
                ack = parse_ack(payload)
            except AckProtocolError:
                self.client.abort()
                raise
            if ack.control_id == msg.control_id:
                self._answered[ack.control_id] = ack.code
                self._answered.move_to_end(ack.control_id)
                while len(self._answered) > ANSWERED_MEMORY:
                    self._answered.popitem(last=False)
                if not self.keep_open:
                    await self.client.close()
                return _answer(ack)
            if self._other(ack, was_acked):
                payload = await self.client.receive(max(0.0, deadline - time.monotonic()))
                continue
            self.client.abort()
            raise AckProtocolError(
                f"ACK is for message {ack.control_id!r}, not for {msg.control_id!r}: treated as no ACK"
            )

    def _other(self, ack: Ack, was_acked: Callable[[str], bool]) -> bool:
        """An ACK for another message: True when it is known (taken, or counted and skipped)."""
        if self.on_other is not None and self.on_other(ack):
            return True
        seen = self._answered.get(ack.control_id)
        if seen is not None and seen == ack.code:
            self.duplicate_acks += 1
            log.debug(ev.DELIVERY_DUPLICATE_ACK, ack_for=ack.control_id, code=ack.code)
            if self.keep_open and self.duplicate_acks >= REPLAY_WARN_AFTER and not self._replay_warned:
                self._replay_warned = True
                log.warning(
                    ev.DELIVERY_RECEIVER_REPLAYS,
                    fix="set [ehr] keep_connection_open = false (one connection per message)",
                    peer=self.peer,
                    duplicate_acks=self.duplicate_acks,
                )
            return True
        if seen is not None or was_acked(ack.control_id):
            # e.g. the AA that follows a CA we already took as delivery: not for this message
            self.late_acks += 1
            log.debug(ev.DELIVERY_LATE_ACK_SKIPPED, ack_for=ack.control_id, code=ack.code)
            return True
        return False


def _answer(ack: Ack) -> Answer:
    return Answer(ack.accepted, ack.code, ack.known, "" if ack.accepted else ack.describe(), ack.summary())


class SenderOptions(TypedDict, total=False):
    """What every sender takes besides its destination's section (the keywords of :class:`QueueSender`
    that :class:`Sender` and ``FhirSender`` pass on)."""

    rng: random.Random | None  # the back-off's jitter
    storage_give_up: float  # ``[agent] storage_give_up_seconds``
    clock: Callable[[], float]


@dataclass(eq=False)
class QueueSender:
    """Deliver one destination's messages from the outbox through ``link``, as ``settings`` (the
    destination's) say, with the loop's own tuning and ``storage_give_up``."""

    outbox: Outbox
    link: Link[Any]
    settings: InitVar[Settings]
    _: KW_ONLY
    destination: str = "ehr"
    backlog_warning: int = 100
    rng: InitVar[random.Random | None] = None
    storage_give_up: InitVar[float] = DEFAULT_STORAGE_GIVE_UP
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self, settings: Settings, rng: random.Random | None, storage_give_up: float) -> None:
        # the loop's tuning is read when a sender is made (tests shorten it)
        tuned = settings.tuned(
            storage_give_up=storage_give_up,
            batch=BATCH,
            idle_poll=IDLE_POLL_SECONDS,
            poison_after=POISON_SUSPECT_AFTER,
        )
        self.policy: DeliveryPolicy[OutboxMessage] = DeliveryPolicy(tuned, rng=rng)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._in_flight: OutboxMessage | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_ack_at: float | None = None
        self._storage_since: float | None = None  # wall time the current run of storage failures began
        self._storage_reminded = 0.0
        self._mark_failing = False
        self._delivered = 0
        self._committed = 0  # CA answers that left the message awaiting its application ACK
        self._app_acks = {"completed": 0, "dead": 0, "unmatched": 0, "repeated": 0}
        self._nudge = asyncio.Event()  # an application ACK decided something: settle it now
        self._background: set[asyncio.Task[Any]] = set()
        self._dead_lettered = 0
        self._backlog_level = 0
        self._backlog_checked = -math.inf
        self.audit: Any = None  # AuditLog (patient context issue): every ACK and dead letter
        # called after each try: (destination, answer code or None when there was no answer, seconds)
        self.exchange_observers: list[Callable[[str, str | None, float], None]] = []

    # --- public API ----------------------------------------------------------------------------------

    def wake(self) -> None:
        """A new message was queued. Call from the event loop's thread."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        depth: int | None
        dead: int | None
        try:
            depth, dead = self.outbox.depth(self.destination), self.outbox.dead_count(self.destination)
        except Exception:  # a closed or broken outbox must not break a status request
            depth = dead = None
        snap = self.policy.snapshot(self.clock())
        failing_for = snap["storage_failing_for"]
        give_up = self.policy.settings.storage_give_up
        return {
            "destination": self.destination,
            "connected": self.link.connected,
            "peer": self.link.peer,
            "tls": self.link.tls,
            "depth": depth,
            "dead": dead,
            "in_flight": self._in_flight.control_id if self._in_flight else None,
            "last_error": self._last_error,
            "last_error_at": _iso(self._last_error_at),
            "last_ack_at": _iso(self._last_ack_at),
            "sent": self._delivered,
            "delivered": self._delivered,
            "dead_lettered": self._dead_lettered,
            "consecutive_failures": self.policy.failures,
            **_link_counters(self.link),
            # enhanced mode: committed (CA), the application ACK owed; overdue after app_ack_timeout
            "committed": self._committed,
            "awaiting_app_ack": snap["awaiting_app_ack"],
            "app_ack_overdue": snap["app_ack_overdue"],
            "app_acks": dict(self._app_acks),
            "storage": {
                "ok": snap["storage_error"] is None,
                "error": snap["storage_error"],
                "failing_since": _iso(self._storage_since) if failing_for is not None else None,
                "stops_in_seconds": (
                    round(max(0.0, give_up - float(failing_for)), 1)  # type: ignore[arg-type]
                    if failing_for is not None
                    else None
                ),
                "acknowledged_not_removed": snap["unsettled_removals"],
                "ledger_durable": self.outbox.ledger.available,
            },
        }

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop after the message in flight is acknowledged, or after ``timeout`` leave it queued."""
        self._stopping = True
        self._stop.set()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._done.wait())
            except TimeoutError:
                if self._in_flight is not None:
                    log.info(ev.DELIVERY_STOPPING_MESSAGE_QUEUED, control_id=self._in_flight.control_id)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.link.close()

    async def run(self) -> None:
        """Deliver until :meth:`stop`. Storage errors back off; when they last longer than the give-up
        time this raises :class:`StorageFailedError` (the agent stops). Bugs are logged and retried."""
        self._task = asyncio.current_task()
        self._done.clear()
        log.info(ev.DELIVERY_STARTED, destination=self.destination, peer=self.link.peer, tls=self.link.tls)
        pending = self.outbox.delivered_pending()
        if pending:
            log.info(ev.DELIVERY_REMOVING_ACKNOWLEDGED, count=len(pending))
            self.policy.remembered(pending)
        awaiting = self.outbox.awaiting(self.destination)
        if awaiting:
            now = time.time()
            self.policy.restore_awaiting(
                [(a.id, a.control_id, now - a.committed_at) for a in awaiting], self.clock()
            )
            log.info(ev.DELIVERY_AWAITING_RESTORED, count=len(awaiting))
        try:
            while not self._stopping:
                try:
                    await self._check_backlog()
                    await self._step()
                except OutboxError as exc:  # a read failed (writes are handled where they happen)
                    self._in_flight = None
                    self._storage_failed(str(exc), write=False)
                except StorageFailedError:
                    raise
                except Exception as exc:  # a bug must not silently end delivery: log it, go on
                    self._in_flight = None
                    self._error(f"internal error: {exc.__class__.__name__}")
                    # no traceback at ERROR: a formatter that shows locals would print the message body
                    log.error(ev.DELIVERY_UNEXPECTED_ERROR, error=exc.__class__.__name__)
                    log.debug(ev.DELIVERY_UNEXPECTED_ERROR_DETAIL, exc_info=True)
                    self.link.abort()
                    self.policy.internal_error(self.clock())
        finally:
            self._in_flight = None
            self.link.abort()
            self._last_removals()
            self._done.set()
            log.info(ev.DELIVERY_STOPPED, destination=self.destination, delivered=self._delivered)

    # --- the loop ------------------------------------------------------------------------------------

    def _error(self, text: str) -> None:
        self._last_error = text
        self._last_error_at = time.time()

    async def _step(self) -> None:
        self._check_app_acks()
        step = self.policy.next_step(self.clock())
        if isinstance(step, Settle):
            await self._settle(step)
        elif isinstance(step, Send):
            await self._deliver(step.message)
        elif isinstance(step, Refill):
            self._wake.clear()  # before reading: a message queued from now on wakes the idle wait
            if self.policy.awaiting_count:
                self._awaiting_moved()
            # Inline: the outbox's read connection never waits for a writer (WAL), and a thread hand-off
            # per message costs more than the read (a ward sends hundreds a second).
            rows = self.outbox.peek(step.limit, destination=self.destination)
            if self.policy.refilled(rows, self.clock()):
                self._storage_recovered()
        elif isinstance(step, Fetch):
            item = await asyncio.to_thread(self.outbox.get, step.message_id)
            queued = item if isinstance(item, OutboxMessage) else None
            if self.policy.fetched(step.message_id, queued, self.clock()):
                self._storage_recovered()
        elif isinstance(step, Wait):
            await self._wait(step)

    async def _wait(self, step: Wait) -> None:
        if not step.wake_on_new:
            await self._sleep(step.seconds)
            return
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(self._nudge.wait()),
        ]
        listen = getattr(self.link, "listen", None)
        heard: asyncio.Future[Any] | None = None
        if callable(listen) and self.policy.snapshot(self.clock())["awaiting_app_ack"]:
            # enhanced mode: the application ACK may come on the open connection while nothing is sent
            heard = asyncio.ensure_future(listen(step.seconds))
            waiters.append(heard)
        try:
            await asyncio.wait(waiters, timeout=step.seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if heard is not None and heard.done() and not heard.cancelled() and heard.exception() is None:
            ack = heard.result()
            if ack is not None and not self.application_ack(ack):
                log.debug(ev.DELIVERY_IDLE_ACK_UNMATCHED, ack_for=ack.control_id)
        self._nudge.clear()
        self.policy.woken()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when stop() is called (or an application ACK needs settling)."""
        waiters = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._nudge.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        self._nudge.clear()

    # --- enhanced mode: application ACKs -------------------------------------------------------------

    def application_ack(self, ack: Ack) -> bool:
        """An application ACK, from the open connection or the inbound ``app_ack_port``. Returns True when
        it was for a message that awaits one (or one it completed already: a repeat, counted)."""
        verdict = self.policy.application_ack(
            ack.control_id, ack.code, self.clock(), text=ack.describe(), summary=ack.summary()
        )
        if verdict is None:
            if self.policy.was_completed(ack.control_id):
                self._app_acks["repeated"] += 1
                return True
            self._app_acks["unmatched"] += 1
            return False
        self._last_ack_at = time.time()
        if verdict.kind == "ignored":
            return True
        self._spawn(self._audit("message_sent", control_id=ack.control_id, ack_code=ack.code,
                                ack_text=ack.describe()))  # fmt: skip
        if verdict.kind == "completed":
            self._app_acks["completed"] += 1
            self._delivered += 1
            log.info(
                ev.DELIVERY_APP_ACK_ACCEPTED,
                destination=self.destination,
                control_id=ack.control_id,
                after_seconds=round(verdict.waited, 1),
            )
        else:
            self._app_acks["dead"] += 1
            self._error(f"{ack.control_id}: application ACK {ack.summary()} after the commit accept")
            log.info(
                ev.DELIVERY_APP_ACK_ERROR,
                destination=self.destination,
                control_id=ack.control_id,
                ack=ack.summary(),
            )
        self._nudge.set()  # the removal or dead-letter move is settled by the loop, now
        return True

    def _awaiting_moved(self) -> None:
        """Before each refill in enhanced mode: messages an operator re-queued or dead-lettered while they
        awaited their application ACK (``outbox retry`` / ``outbox dead-letter``) are no longer awaited."""
        for control_id in self.policy.awaiting_moved(self.outbox.awaiting_ids(self.destination)):
            log.info(
                ev.DELIVERY_APP_ACK_ABANDONED,
                destination=self.destination,
                control_id=control_id,
            )

    def _check_app_acks(self) -> None:
        late, quiet = self.policy.overdue(self.clock())
        timeout = self.policy.settings.app_ack_timeout
        for control_id in late:
            log.warning(
                ev.DELIVERY_APP_ACK_OVERDUE,
                destination=self.destination,
                control_id=control_id,
                app_ack_timeout_seconds=timeout,
                peer=self.link.peer,
            )
        for control_id in quiet:
            self._delivered += 1
            log.debug(ev.DELIVERY_APP_ACK_NONE_DUE, control_id=control_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _backoff(self, n: int) -> float:
        """Capped exponential back-off with jitter (the policy's): in [cap/2, cap]."""
        return self.policy.backoff(n)

    # --- storage -------------------------------------------------------------------------------------

    def _storage_failed(self, error: str, *, write: bool) -> None:
        verdict = self.policy.storage_failed(self.clock(), error, write=write)
        self._error(error)
        fields = {"error": error, "retry_in": round(verdict.delay, 2)}
        if verdict.first:
            self._storage_since = time.time()
            self._storage_reminded = 0.0
            log.error(
                ev.OUTBOX_STORAGE_FAILING,
                stops_agent_after=self.policy.settings.storage_give_up,
                **fields,
            )
        elif verdict.failing_for - self._storage_reminded >= STORAGE_REMINDER_SECONDS:
            self._storage_reminded = verdict.failing_for
            log.error(ev.OUTBOX_STORAGE_STILL_FAILING, failing_for=round(verdict.failing_for), **fields)
        else:
            log.debug(ev.OUTBOX_STORAGE_FAILING_AGAIN, failing_for=round(verdict.failing_for, 1), **fields)
        if verdict.give_up:
            raise StorageFailedError(
                f"stopping after {round(verdict.failing_for)} s of storage errors: {error}"
            )

    def _storage_recovered(self) -> None:
        log.info(ev.OUTBOX_STORAGE_USABLE)
        if self.policy.snapshot(self.clock())["storage_error"] is None:
            self._storage_since = None

    async def _settle(self, step: Settle[OutboxMessage], record: Any = None) -> None:
        """Write a decided outcome: remove a delivered message, or move one to the dead-letter table.

        ``record``: the ACK's audit record (an AuditRecord), committed with the removal."""
        outcome = step.outcome
        audit = (record,) if record is not None else ()
        if isinstance(outcome, AwaitAppAck):
            if record is not None:  # the CA's record: written on its own (the message stays, aside)
                await self._audit_record(record)
            try:
                await asyncio.to_thread(self.outbox.await_app_ack, step.message_id)
            except OutboxError as exc:  # not sent again meanwhile (unsettled); after a restart it may be
                self._storage_failed(str(exc), write=True)
                return
            if self.policy.settled(step.message_id, self.clock()):
                self._storage_recovered()
            return
        try:
            if isinstance(outcome, Removal):
                if step.message is None:  # remembered from before a restart: check its MSH-10 too
                    await asyncio.to_thread(self.outbox.delete, step.message_id, step.control_id)
                elif self.outbox.delete_nowait(step.message_id, audit=audit) is None:
                    # Inline when the outbox is free (a cheap NORMAL commit, no fsync): a thread hand-off
                    # per message would cost more than the delete. When it is busy, wait in a thread.
                    await asyncio.to_thread(self.outbox.delete, step.message_id, audit=audit)
                if audit:
                    self.audit.flush_journal()  # appended now (no fsync: the outbox has it)
                moved = True
            else:
                moved = await asyncio.to_thread(
                    self.outbox.dead_letter,
                    step.message_id,
                    outcome.reason,
                    ack_code=outcome.ack_code,
                    ack_text=outcome.ack_text,
                )
        except OutboxError as exc:
            if record is not None:  # not committed with the removal: written on its own
                await self._audit_record(record)
            if isinstance(outcome, Removal):
                durable = await asyncio.to_thread(
                    self.outbox.remember_delivered, step.message_id, step.control_id
                )
                if step.first_try:
                    log.warning(
                        ev.OUTBOX_DELIVERED_NOT_REMOVED,
                        control_id=step.control_id,
                        remembered="on disk" if durable else "in memory only",
                    )
            self._storage_failed(str(exc), write=True)
            return
        if self.policy.settled(step.message_id, self.clock()):
            self._storage_recovered()
        if isinstance(outcome, Removal):
            if not step.first_try or step.message is None:
                log.info(ev.OUTBOX_DELIVERED_REMOVED, control_id=step.control_id)
            return
        if moved:
            await self._dead_lettered_now(step, outcome)

    async def _dead_lettered_now(self, step: Settle[OutboxMessage], outcome: DeadLetter) -> None:
        self._dead_lettered += 1
        await self._audit("message_dead", control_id=step.control_id, reason=outcome.reason)
        try:
            dead: int | None = await asyncio.to_thread(self.outbox.dead_count, self.destination)
        except OutboxError:
            dead = None
        log.warning(
            ev.DELIVERY_DEAD_LETTERED,
            destination=self.destination,
            control_id=step.control_id,
            id=step.message_id,
            device_id=step.message.device_id if step.message is not None else None,
            reason=outcome.reason,
            ack=outcome.ack_summary,
            dead_letters=dead,
        )

    def _last_removals(self) -> None:
        """At stop: one last, never-waiting try to remove delivered messages (the ledger has them anyway)."""
        while True:
            step = self.policy.next_step(self.clock())
            if not isinstance(step, Settle) or not isinstance(step.outcome, Removal):
                return
            try:
                if self.outbox.delete_nowait(step.message_id) is None:
                    return
            except OutboxError:
                return
            self.policy.settled(step.message_id, self.clock())

    # --- one message ---------------------------------------------------------------------------------

    async def _deliver(self, msg: OutboxMessage) -> None:
        refusal = self.link.refusal(msg)
        if refusal is not None:
            self.policy.refuse(msg, refusal)
            return
        self._in_flight = msg
        started = time.monotonic()
        try:
            answer = await self.link.exchange(msg, self.policy.was_acked)
        except (PeerUnavailableError, AckProtocolError) as exc:
            self._in_flight = None
            self._observe(None, started, attempted=not isinstance(exc, ConnectFailedError))
            await self._link_failed(msg, exc)
            return
        self._observe(answer.code if answer.known else "other", started)
        try:
            await self._handle_answer(msg, answer)
        finally:
            self._in_flight = None

    def _observe(self, code: str | None, started: float, *, attempted: bool = True) -> None:
        if not attempted:
            return  # a refused connection: the message never left
        elapsed = time.monotonic() - started
        for observer in self.exchange_observers:
            observer(self.destination, code, elapsed)

    async def _link_failed(self, msg: OutboxMessage, exc: PeerUnavailableError | AckProtocolError) -> None:
        if isinstance(exc, RetryLaterError):
            after_connect, not_before = exc.after_connect, exc.retry_after
        else:
            after_connect, not_before = not isinstance(exc, ConnectFailedError), None
        verdict = self.policy.link_failed(
            msg, self.clock(), after_connect=after_connect, not_before=not_before
        )
        if verdict.suspect:
            log.info(
                ev.DELIVERY_POISON_PROBE,
                destination=self.destination,
                control_id=msg.control_id,
            )
        self._error(str(exc))
        fields = {
            "destination": self.destination,
            "control_id": msg.control_id,
            "error": str(exc),
            "retry_in": round(verdict.delay, 2),
        }
        if verdict.failures == 1:
            log.warning(ev.DELIVERY_FAILED, **fields)
        else:
            log.debug(ev.DELIVERY_FAILED_AGAIN, attempt=verdict.failures, **fields)
        # A refused connection is not a delivery attempt: the message never left (README, delivery).
        await self._mark_failure(msg, str(exc), attempted=not isinstance(exc, ConnectFailedError))

    async def _mark_failure(
        self, msg: OutboxMessage, error: str, *, negative: bool = False, attempted: bool = True
    ) -> int | None:
        """Count a failed attempt in the outbox (``attempted=False``: record the error only); returns the
        stored number of negative answers, or None when the outbox could not be written (a storage
        failure: backs off, may stop the agent)."""
        try:
            _, nacks = await asyncio.to_thread(
                self.outbox.mark_failure, msg.id, error, negative=negative, attempted=attempted
            )
        except OutboxError as oexc:
            self._storage_failed(str(oexc), write=True)
            return None
        if self.policy.storage_ok(self.clock(), write=True):
            self._storage_recovered()
        return nacks

    async def _audit(self, method: str, **fields: Any) -> None:
        """Write an audit record off the event loop (each record is fsynced; the log is thread-safe)."""
        if self.audit is None:
            return
        if self.destination != "ehr":  # EHR records keep their original shape
            fields["destination"] = self.destination
        try:
            await asyncio.to_thread(getattr(self.audit, method), **fields)
        except Exception as exc:  # the audit must not stop delivery
            log.error(ev.AUDIT_NOT_WRITTEN, control_id=fields.get("control_id"), error=str(exc))

    def _journal_record(self, method: str, **fields: Any) -> Any:
        """An audit record to commit with the outbox change it describes (None: no journal attached)."""
        if self.audit is None or getattr(self.audit, "journal", None) is None:
            return None
        if self.destination != "ehr":
            fields["destination"] = self.destination
        return self.audit.make(method, **fields)

    async def _audit_record(self, record: Any) -> None:
        """A record built for the journal whose outbox change failed: appended and fsynced on its own."""
        try:
            await asyncio.to_thread(self.audit.append_record, record)
        except Exception as exc:
            log.error(ev.AUDIT_NOT_WRITTEN, error=str(exc))

    async def _handle_answer(self, msg: OutboxMessage, ack: Answer) -> None:
        fields = {"control_id": msg.control_id, "ack_code": ack.code, "ack_text": ack.text}
        # A positive ACK's record commits with the message's removal (no fsync of its own).
        record = self._journal_record("message_sent", **fields) if ack.accepted else None
        if record is None:
            await self._audit("message_sent", **fields)
        resumed = self.policy.answered(msg)
        if resumed:
            log.info(
                ev.DELIVERY_RESUMED, destination=self.destination, after_failures=resumed, peer=self.link.peer
            )
        self._last_ack_at = time.time()
        if ack.accepted:
            # never offered again, whatever happens to the removal (or the move to awaiting_ack)
            completed = self.policy.accepted(msg, ack.code, self.clock())
            if completed:
                self._delivered += 1
                log.debug(
                    ev.DELIVERY_DELIVERED,
                    destination=self.destination,
                    control_id=msg.control_id,
                    ack=ack.code,
                )
            else:
                self._committed += 1
                log.debug(ev.DELIVERY_COMMITTED, destination=self.destination, control_id=msg.control_id)
            step = self.policy.next_step(self.clock())
            if isinstance(step, Settle) and step.message_id == msg.id:
                await self._settle(step, record)  # remove (or move) it now (the fast path)
            else:  # the outbox is failing: the removal waits, the ledger remembers it meanwhile
                if record is not None:
                    await self._audit_record(record)
                if completed:
                    await asyncio.to_thread(self.outbox.remember_delivered, msg.id, msg.control_id)
            return
        detail = ack.text  # stored with the message (outbox database), never logged above DEBUG
        self._error(f"{msg.control_id}: {ack.summary}")
        log.debug(ev.DELIVERY_NEGATIVE_ACK, control_id=msg.control_id, ack=detail)
        nacks = await self._mark_failure(msg, detail, negative=True)
        verdict = self.policy.negative(
            msg, ack.code, known=ack.known, nacks=nacks, now=self.clock(), text=detail, summary=ack.summary
        )
        if isinstance(verdict, DeadLetter):
            return  # settled by the next step
        log.warning(
            ev.DELIVERY_RECEIVER_ERROR,
            destination=self.destination,
            control_id=msg.control_id,
            ack=ack.summary,
            attempt=verdict.attempt,
            max_attempts=self.policy.settings.max_attempts,
            retry_in=round(verdict.delay, 2),
        )

    async def _check_backlog(self) -> None:
        now = time.monotonic()
        if now - self._backlog_checked < BACKLOG_CHECK_SECONDS:
            return
        self._backlog_checked = now
        try:
            depth = await asyncio.to_thread(self.outbox.depth, self.destination)
        except OutboxError as exc:  # the delivery steps report storage errors; this is only a monitor
            log.debug(ev.OUTBOX_BACKLOG_CHECK_FAILED, error=str(exc))
            return
        limit = self.backlog_warning
        level = 0 if depth < limit else int(math.log2(depth / limit)) + 1
        if level > self._backlog_level:
            log.warning(
                ev.OUTBOX_BACKLOG_GROWING,
                destination=self.destination,
                depth=depth,
                threshold=limit * 2 ** (level - 1),
                last_error=self._last_error,
            )
            self._backlog_level = level
        elif self._backlog_level and depth < limit // 2:
            log.info(ev.OUTBOX_BACKLOG_CLEARED, depth=depth)
            self._backlog_level = 0


class Sender(QueueSender):
    """The EHR's sender: HL7 v2 ORUs over MLLP, ``[ehr]``'s settings."""

    def __init__(
        self,
        outbox: Outbox,
        ehr: EhrConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        client: MllpClient | None = None,
        **options: Unpack[SenderOptions],
    ) -> None:
        self.ehr = ehr
        self.client = client or MllpClient(
            ehr.host,
            ehr.port,
            connect_timeout=ehr.connect_timeout_seconds,
            ssl_context=ssl_context,
            server_hostname=ehr.server_name,
        )
        link = MllpLink(
            self.client,
            ehr.ack_timeout_seconds,
            max_bytes=ehr.max_message_bytes,
            keep_open=ehr.keep_connection_open,
        )
        link.on_other = self.application_ack  # an application ACK on the same connection
        settings = Settings.from_ehr(ehr)
        super().__init__(
            outbox, link, settings, destination="ehr", backlog_warning=ehr.backlog_warning, **options
        )


def _link_counters(link: Link[Any]) -> dict[str, int]:
    counters = getattr(link, "counters", None)
    return dict(counters()) if callable(counters) else {}


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


__all__ = ["MllpLink", "QueueSender", "Sender"]
