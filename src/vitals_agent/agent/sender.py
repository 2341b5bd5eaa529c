"""The MLLP sender: takes messages from the outbox in order and delivers them (hl7-pcd01.md §9.2).

* One message in flight. A message leaves the outbox only after an ``AA`` or ``CA`` whose MSA-2 equals its
  MSH-10; re-sends reuse the stored bytes, so the MSH-10 (and MSH-7) never change.
* No ACK (refused, reset, closed, silent, garbage, an unparseable ACK, or an ACK for another MSH-10) is a
  link failure: close the connection, wait a capped exponential back-off with jitter, reconnect, re-send
  the same message. Order is kept; link failures never dead-letter a message.
* A negative ACK whose code is in ``retry_negative`` (default ``AE``, ``CE``) defers that message by a
  back-off and lets the later messages go; after ``max_attempts`` such answers it is dead-lettered. Any
  other negative or unknown code (``AR``, ``CR``, ...) dead-letters it at once. Dead letters keep the reason
  and the receiver's MSA-3/ERR text and are logged at WARNING (the interface alert).
* A late ``AA`` following a ``CA`` for an already delivered message is recognised and skipped.
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
from collections import deque
from datetime import UTC, datetime
from typing import Any

import structlog

from vitals_agent.agent.outbox import Outbox, OutboxMessage
from vitals_agent.config.ehr import EhrConfig
from vitals_agent.errors import (
    AckProtocolError,
    ConnectFailedError,
    DeliveryError,
    OutboxError,
    PeerUnavailableError,
)
from vitals_agent.hl7.ack import Ack, parse_ack
from vitals_agent.hl7.mllp import MllpClient

log = structlog.get_logger(__name__)

BATCH = 64  # messages read from the outbox at a time
IDLE_POLL_SECONDS = 2.0  # look at the outbox this often even without wake() (operator retries)
BACKLOG_CHECK_SECONDS = 1.0
RECENT_ACKED = 32
# A message that fails this many times in a row *after* the EHR accepted the connection becomes a suspect:
# the next message is tried in its place. If the receiver accepts that one, the suspect is poison (e.g.
# larger than the receiver's frame limit, so it drops the connection every time) and is dead-lettered,
# so one bad message never blocks the room's later readings. If the next one fails too, the EHR is broken
# for everyone: order is restored and nothing is dead-lettered.
POISON_SUSPECT_AFTER = 3


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        ehr: EhrConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        client: MllpClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.ehr = ehr
        self.client = client or MllpClient(
            ehr.host,
            ehr.port,
            connect_timeout=ehr.connect_timeout_seconds,
            ssl_context=ssl_context,
            server_hostname=ehr.server_name,
        )
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._batch: deque[OutboxMessage] = deque()
        self._deferred: dict[int, float] = {}  # id -> monotonic time it may be sent again (after AE/CE)
        self._recent_acked: deque[str] = deque(maxlen=RECENT_ACKED)
        self._failures = 0  # consecutive link failures
        self._post_connect_failures: dict[int, int] = {}  # message id -> failures after connecting
        self._suspect: int | None = None  # message id being probed as poison (deferred meanwhile)
        self._in_flight: OutboxMessage | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_ack_at: float | None = None
        self._delivered = 0
        self._dead_lettered = 0
        self._backlog_level = 0
        self._backlog_checked = 0.0
        self.audit: Any = None  # AuditLog (patient context issue): every ACK and dead letter

    # --- public API ----------------------------------------------------------------------------------

    def wake(self) -> None:
        """A new message was queued. Call from the event loop's thread."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        depth: int | None
        dead: int | None
        try:
            depth, dead = self.outbox.depth(), self.outbox.dead_count()
        except Exception:  # a closed or broken outbox must not break a status request
            depth = dead = None
        return {
            "connected": self.client.connected,
            "peer": self.client.peer,
            "tls": self.client.ssl_context is not None,
            "depth": depth,
            "dead": dead,
            "in_flight": self._in_flight.control_id if self._in_flight else None,
            "last_error": self._last_error,
            "last_error_at": _iso(self._last_error_at),
            "last_ack_at": _iso(self._last_ack_at),
            "sent": self._delivered,
            "delivered": self._delivered,
            "dead_lettered": self._dead_lettered,
            "consecutive_failures": self._failures,
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
                    log.info("sender stopping: message left queued", control_id=self._in_flight.control_id)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.client.close()

    async def run(self) -> None:
        """Deliver until :meth:`stop`. Outbox errors are logged and retried; this never returns early."""
        self._task = asyncio.current_task()
        self._done.clear()
        log.info("sender started", peer=self.client.peer, tls=self.client.ssl_context is not None)
        try:
            while not self._stopping:
                try:
                    await self._check_backlog()
                    msg = await self._next_message()
                    if msg is None:
                        await self._idle()
                        continue
                    await self._deliver(msg)
                except OutboxError as exc:
                    self._error(str(exc))
                    log.error("sender: outbox problem, retrying", error=str(exc))
                    self._batch.clear()
                    await self._sleep(self._backoff(max(self._failures, 1)))
                except Exception as exc:  # a bug must not silently end delivery: log it, go on
                    self._in_flight = None
                    self._error(f"internal error: {exc.__class__.__name__}")
                    # no traceback at ERROR: a formatter that shows locals would print the message body
                    log.error("sender: unexpected error, continuing", error=exc.__class__.__name__)
                    log.debug("sender: unexpected error details", exc_info=True)
                    self.client.abort()
                    self._batch.clear()
                    await self._sleep(self._backoff(max(self._failures, 1)))
        finally:
            self._in_flight = None
            self.client.abort()
            self._done.set()
            log.info("sender stopped", delivered=self._delivered)

    # --- the loop ------------------------------------------------------------------------------------

    def _error(self, text: str) -> None:
        self._last_error = text
        self._last_error_at = time.time()

    async def _next_message(self) -> OutboxMessage | None:
        now = time.monotonic()
        due = [mid for mid, at in self._deferred.items() if at <= now]
        if due:
            mid = min(due)
            del self._deferred[mid]
            item = await asyncio.to_thread(self.outbox.get, mid)
            if isinstance(item, OutboxMessage):
                return item
        if not self._batch:
            self._wake.clear()
            rows = await asyncio.to_thread(self.outbox.peek, BATCH + len(self._deferred))
            self._batch.extend(r for r in rows if r.id not in self._deferred)
        return self._batch[0] if self._batch else None

    async def _idle(self) -> None:
        timeout = IDLE_POLL_SECONDS
        if self._deferred:
            timeout = max(0.0, min(timeout, min(self._deferred.values()) - time.monotonic()))
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when stop() is called."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    def _backoff(self, n: int) -> float:
        """Capped exponential back-off with jitter: in [cap/2, cap], cap = min(max, min * 2**(n-1))."""
        lo, hi = self.ehr.backoff_min_seconds, self.ehr.backoff_max_seconds
        cap = min(hi, lo * math.pow(2.0, min(max(n - 1, 0), 62)))
        return cap / 2 + self._rng.random() * cap / 2

    def _drop_from_batch(self, msg: OutboxMessage) -> None:
        if self._batch and self._batch[0].id == msg.id:
            self._batch.popleft()
        else:
            self._batch = deque(m for m in self._batch if m.id != msg.id)

    async def _deliver(self, msg: OutboxMessage) -> None:
        if b"\x0b" in msg.body or b"\x1c" in msg.body:
            # MLLP cannot carry it, now or ever: park it instead of blocking the queue behind it
            await self._dead_letter(msg, "message contains an MLLP framing byte (0x0B or 0x1C)", None)
            return
        self._in_flight = msg
        try:
            ack = await self._exchange(msg)
        except (PeerUnavailableError, AckProtocolError) as exc:
            self._in_flight = None
            if not (self._batch and self._batch[0].id == msg.id):
                self._deferred[msg.id] = time.monotonic()  # a retried AE/CE message: due again at once
            if not isinstance(exc, ConnectFailedError):
                self._failed_after_connect(msg)
            await self._link_failed(msg, exc)
            return
        try:
            await self._handle_ack(msg, ack)
        finally:
            self._in_flight = None

    def _failed_after_connect(self, msg: OutboxMessage) -> None:
        """Count a failure the EHR caused after accepting the connection; probe a repeated one as poison."""
        if self._suspect is not None and msg.id != self._suspect:
            # The probe failed as well: the EHR is failing every message. Restore order, suspect nothing.
            log.debug("poison probe failed: the receiver fails other messages too", control_id=msg.control_id)
            self._deferred[self._suspect] = time.monotonic()
            self._suspect = None
            self._post_connect_failures.clear()
            return
        count = self._post_connect_failures.get(msg.id, 0) + 1
        self._post_connect_failures[msg.id] = count
        if count >= POISON_SUSPECT_AFTER and self._suspect is None and self._has_other_messages(msg):
            self._suspect = msg.id
            self._drop_from_batch(msg)
            self._deferred[msg.id] = time.monotonic() + max(60.0, 2 * self.ehr.ack_timeout_seconds)
            log.info(
                "trying the next message in place of one the receiver keeps failing",
                control_id=msg.control_id,
            )

    def _has_other_messages(self, msg: OutboxMessage) -> bool:
        return any(m.id != msg.id for m in self._batch) or any(i != msg.id for i in self._deferred)

    async def _confirm_poison(self) -> None:
        """A later message was accepted while a suspect waited: the suspect is poison for this receiver."""
        suspect, self._suspect = self._suspect, None
        if suspect is None:
            return
        self._deferred.pop(suspect, None)
        failures = self._post_connect_failures.pop(suspect, 0)
        item = await asyncio.to_thread(self.outbox.get, suspect)
        if isinstance(item, OutboxMessage):
            await self._dead_letter(
                item,
                f"the receiver failed this message {failures} times after accepting the connection "
                "while accepting later ones (too large for it, or content it cannot take)",
                None,
            )

    async def _exchange(self, msg: OutboxMessage) -> Ack:
        timeout = self.ehr.ack_timeout_seconds
        deadline = time.monotonic() + timeout
        payload = await self.client.send(msg.body, timeout)
        while True:
            try:
                ack = parse_ack(payload)
            except AckProtocolError:
                self.client.abort()
                raise
            if ack.control_id == msg.control_id:
                return ack
            if ack.control_id in self._recent_acked:
                # e.g. the AA that follows a CA we already took as delivery: not for this message
                log.debug("late ACK for a delivered message skipped", ack_for=ack.control_id, code=ack.code)
                payload = await self.client.receive(max(0.0, deadline - time.monotonic()))
                continue
            self.client.abort()
            raise AckProtocolError(
                f"ACK is for message {ack.control_id!r}, not for {msg.control_id!r}: treated as no ACK"
            )

    async def _link_failed(self, msg: OutboxMessage, exc: DeliveryError) -> None:
        self._failures += 1
        self._error(str(exc))
        delay = self._backoff(self._failures)
        fields = {"control_id": msg.control_id, "error": str(exc), "retry_in": round(delay, 2)}
        if self._failures == 1:
            log.warning("delivery failed, will re-send", **fields)
        else:
            log.debug("delivery failed again, will re-send", attempt=self._failures, **fields)
        try:
            await asyncio.to_thread(self.outbox.mark_failure, msg.id, str(exc))
        except OutboxError as oexc:
            log.error("cannot record the failed attempt", control_id=msg.control_id, error=str(oexc))
        await self._sleep(delay)

    async def _audit(self, method: str, **fields: Any) -> None:
        """Write an audit record off the event loop (each record is fsynced; the log is thread-safe)."""
        if self.audit is None:
            return
        try:
            await asyncio.to_thread(getattr(self.audit, method), **fields)
        except Exception as exc:  # the audit must not stop delivery
            log.error("audit record not written", control_id=fields.get("control_id"), error=str(exc))

    async def _handle_ack(self, msg: OutboxMessage, ack: Ack) -> None:
        await self._audit(
            "message_sent",
            control_id=msg.control_id,
            ack_code=ack.code,
            ack_text="" if ack.accepted else ack.describe(),
        )
        if self._failures:
            log.info("delivery resumed", after_failures=self._failures, peer=self.client.peer)
        self._failures = 0
        self._post_connect_failures.pop(msg.id, None)
        if self._suspect is not None and msg.id != self._suspect:
            await self._confirm_poison()
        self._last_ack_at = time.time()
        if ack.accepted:
            # Inline when the outbox is free (a cheap NORMAL commit, no fsync): a thread hand-off per
            # message would cost more than the delete. When it is busy, wait in a thread instead.
            if self.outbox.delete_nowait(msg.id) is None:
                await asyncio.to_thread(self.outbox.delete, msg.id)
            self._drop_from_batch(msg)
            self._recent_acked.append(msg.control_id)
            self._delivered += 1
            log.debug("delivered", control_id=msg.control_id, ack=ack.code)
            return
        detail = ack.describe()  # stored with the message (outbox database), never logged above DEBUG
        self._error(f"{msg.control_id}: {ack.summary()}")
        log.debug("negative acknowledgement", control_id=msg.control_id, ack=detail)
        _, nacks = await asyncio.to_thread(self.outbox.mark_failure, msg.id, detail, negative=True)
        if ack.code in self.ehr.retry_negative:
            self._drop_from_batch(msg)
            if nacks < self.ehr.max_attempts:
                delay = self._backoff(nacks)
                self._deferred[msg.id] = time.monotonic() + delay
                log.warning(
                    "receiver answered with an error, will retry",
                    control_id=msg.control_id,
                    ack=ack.summary(),
                    attempt=nacks,
                    max_attempts=self.ehr.max_attempts,
                    retry_in=round(delay, 2),
                )
                return
            reason = f"{ack.code} {nacks} times (max_attempts {self.ehr.max_attempts})"
        elif ack.known:
            reason = f"rejected by the receiver ({ack.code})"
        else:
            reason = f"unknown acknowledgement code {ack.code!r}"
        await self._dead_letter(msg, reason, ack)

    async def _dead_letter(self, msg: OutboxMessage, reason: str, ack: Ack | None) -> None:
        await asyncio.to_thread(
            self.outbox.dead_letter,
            msg.id,
            reason,
            ack_code=ack.code if ack else None,
            ack_text=ack.describe() if ack else None,
        )
        self._drop_from_batch(msg)
        self._deferred.pop(msg.id, None)
        self._dead_lettered += 1
        await self._audit("message_dead", control_id=msg.control_id, reason=reason)
        dead = await asyncio.to_thread(self.outbox.dead_count)
        log.warning(
            "interface alert: message moved to the dead-letter table",
            control_id=msg.control_id,
            id=msg.id,
            device_id=msg.device_id,
            reason=reason,
            ack=ack.summary() if ack else None,
            dead_letters=dead,
        )

    async def _check_backlog(self) -> None:
        now = time.monotonic()
        if now - self._backlog_checked < BACKLOG_CHECK_SECONDS:
            return
        self._backlog_checked = now
        depth = await asyncio.to_thread(self.outbox.depth)
        limit = self.ehr.backlog_warning
        level = 0 if depth < limit else int(math.log2(depth / limit)) + 1
        if level > self._backlog_level:
            log.warning(
                "outbox backlog growing",
                depth=depth,
                threshold=limit * 2 ** (level - 1),
                last_error=self._last_error,
            )
            self._backlog_level = level
        elif self._backlog_level and depth < limit // 2:
            log.info("outbox backlog cleared", depth=depth)
            self._backlog_level = 0


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


__all__ = ["Sender"]
