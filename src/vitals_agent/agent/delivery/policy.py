"""The delivery policy: every decision of the MLLP sender, without I/O (issue 13 item 2).

:class:`~vitals_agent.agent.delivery.sender.Sender` does the I/O — it reads the outbox, talks MLLP and
writes the results — and it asks :meth:`DeliveryPolicy.next_step` what to do next and tells the policy what
happened. Time is an argument (a monotonic clock reading, in seconds) and jitter comes from an injected
``random.Random``, so the policy is a deterministic state machine that tests drive without sockets.

The rules (README, "Delivery guarantees"):

* **Order.** Messages go in outbox id order, one in flight. A message deferred after ``AE``/``CE`` is
  sent again when its back-off is over, before the next one in order.
* **Link failures** (refused, reset, closed, silent, garbage, an ACK for another MSH-10): capped
  exponential back-off with jitter, then the same message again. They never dead-letter a message.
* **Poison.** A message that fails ``poison_after`` times in a row *after* the EHR accepted the connection
  becomes a suspect: the next message is tried in its place. If the EHR answers that one, the suspect is
  dead-lettered (one bad message must not block the room's later readings); if that one fails too, the EHR
  is failing everything: order is restored and nothing is dead-lettered.
* **Negative ACKs.** A code in ``retry_negative`` defers the message by a back-off and lets later messages
  go; after ``max_attempts`` such answers it is dead-lettered. Any other code is dead-lettered at once.
* **Settled means settled.** Once the EHR has accepted a message (or it was decided to dead-letter it),
  it is never offered for sending again, whatever the storage does: the removal (or the move to the
  dead-letter table) is kept as *unsettled* until a write succeeds, retried with a storage back-off. While
  ``max_unsettled`` are waiting, nothing new is sent.
* **Enhanced acknowledgement** (``[ehr] application_ack_type`` AL/SU/ER): a commit accept (``CA``) does
  not complete the message; it moves to *awaiting application ACK* (the outbox's ``awaiting_ack`` table,
  so it is never sent again and survives a restart). The application ACK, matched by MSA-2, completes it
  (``AA``) or dead-letters it with the reason (``AE``/``AR``, any other code). Without one within
  ``app_ack_timeout`` it is *overdue*: reported, kept, still completed by a late ``AA``. With ``ER``
  (errors only) silence means success: after the timeout the message is complete.
* **Storage errors** (a read or a write of the outbox fails): capped exponential back-off with jitter from
  ``storage_backoff_min`` to ``storage_backoff_max``, separately for reads and for writes. After
  ``storage_give_up`` seconds of failing without a success the verdict says *give up*: the agent stops with
  a one-line reason so the service manager and the alerts see it, instead of spinning.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Generic, Literal, Protocol, TypeVar

from vitals_agent.config.ehr import EhrConfig
from vitals_agent.config.fhir import FhirConfig

DEFAULT_STORAGE_GIVE_UP = 300.0
# MSH-16 -> what a commit accept (CA) leaves to wait for (HL7 table 0155)
APP_ACK_MODES: dict[str, Literal["never", "always", "errors"]] = {
    "NE": "never",
    "AL": "always",
    "SU": "always",
    "ER": "errors",
}


class Message(Protocol):
    """What the policy needs to know about a queued message (``OutboxMessage`` has it)."""

    @property
    def id(self) -> int: ...

    @property
    def control_id(self) -> str: ...


M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Settings:
    max_attempts: int = 3
    retry_negative: frozenset[str] = frozenset({"AE", "CE"})
    backoff_min: float = 0.5
    backoff_max: float = 60.0
    ack_timeout: float = 30.0
    batch: int = 64  # messages read from the outbox at a time
    idle_poll: float = 2.0  # look at the outbox this often without a wake-up (operator retries)
    poison_after: int = 3
    storage_backoff_min: float = 0.25
    storage_backoff_max: float = 30.0
    storage_give_up: float = DEFAULT_STORAGE_GIVE_UP
    max_unsettled: int = 64
    # enhanced mode: after a CA, "always" (AL, SU) waits for the application ACK, "errors" (ER) waits for
    # an error only, "never" (NE) takes the CA as delivery
    app_ack: Literal["never", "always", "errors"] = "never"
    app_ack_timeout: float = 300.0

    @classmethod
    def from_ehr(cls, ehr: EhrConfig) -> Settings:
        return cls(
            max_attempts=ehr.max_attempts,
            retry_negative=frozenset(ehr.retry_negative),
            backoff_min=ehr.backoff_min_seconds,
            backoff_max=ehr.backoff_max_seconds,
            ack_timeout=ehr.ack_timeout_seconds,
            app_ack=APP_ACK_MODES[ehr.application_ack_type],
            app_ack_timeout=ehr.app_ack_timeout_seconds,
        )

    @classmethod
    def from_fhir(cls, fhir: FhirConfig) -> Settings:
        """A FHIR server: no negative answer is retried as such (408/429/5xx are link failures, other
        4xx dead-letter at once: see fhir/answer.py)."""
        return cls(
            max_attempts=1,
            retry_negative=frozenset(),
            backoff_min=fhir.backoff_min_seconds,
            backoff_max=fhir.backoff_max_seconds,
            ack_timeout=fhir.timeout_seconds,
        )

    def tuned(self, *, storage_give_up: float, batch: int, idle_poll: float, poison_after: int) -> Settings:
        """A destination's settings with the delivery loop's own: ``storage_give_up`` (the agent's) and a
        storage back-off that fits a few retries in it, however short it is configured."""
        return replace(
            self,
            storage_give_up=storage_give_up,
            storage_backoff_max=min(30.0, max(0.5, storage_give_up / 5)),
            batch=batch,
            idle_poll=idle_poll,
            poison_after=poison_after,
        )


# --- what to do next ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """The EHR accepted the message: remove it from the outbox."""


@dataclass(frozen=True)
class DeadLetter:
    """Move the message to the dead-letter table."""

    reason: str
    ack_code: str | None = None
    ack_text: str | None = None  # the receiver's MSA-3/ERR text: stored, never logged above DEBUG
    ack_summary: str | None = None  # MSA-1 and ERR codes only: what the interface alert may log


@dataclass(frozen=True)
class AwaitAppAck:
    """The receiver committed the message (CA) and owes an application ACK: move it to awaiting."""


Outcome = Removal | DeadLetter | AwaitAppAck


@dataclass(frozen=True)
class Send(Generic[M]):
    message: M


@dataclass(frozen=True)
class Refill:
    """Read up to ``limit`` of the oldest queued messages and hand them to :meth:`DeliveryPolicy.refilled`."""

    limit: int


@dataclass(frozen=True)
class Fetch:
    """A deferred message is due: read it again and hand it to :meth:`DeliveryPolicy.fetched`."""

    message_id: int


@dataclass(frozen=True)
class Settle(Generic[M]):
    """Write a decided outcome; then :meth:`DeliveryPolicy.settled` (or ``storage_failed(write=True)``)."""

    message_id: int
    control_id: str
    outcome: Outcome
    message: M | None  # None for a removal remembered from before a restart
    first_try: bool


@dataclass(frozen=True)
class Wait:
    """Nothing to do for ``seconds``. ``wake_on_new``: a newly queued message ends the wait early."""

    seconds: float
    wake_on_new: bool
    why: str


Step = Send[M] | Refill | Fetch | Settle[M] | Wait


@dataclass(frozen=True)
class Retry:
    """A negative ACK to be retried after ``delay`` (this was answer number ``attempt``)."""

    delay: float
    attempt: int


@dataclass(frozen=True)
class LinkVerdict:
    delay: float
    failures: int  # consecutive link failures, this one included
    suspect: bool  # this message is now probed as poison


@dataclass(frozen=True)
class StorageVerdict:
    delay: float
    first: bool  # the first failure of a run (log it loudly; repeats quietly)
    failing_for: float
    give_up: bool


@dataclass
class _Unsettled(Generic[M]):
    control_id: str
    outcome: Outcome
    message: M | None
    tried: bool = False


@dataclass
class _Awaiting:
    message_id: int
    deadline: float
    overdue: bool = False


@dataclass(frozen=True)
class AppAckVerdict:
    """What an application ACK did: ``completed`` (AA), ``dead`` (an error: ``outcome`` says why) or
    ``ignored`` (another commit ACK for it)."""

    kind: Literal["completed", "dead", "ignored"]
    waited: float  # seconds since the commit ACK
    outcome: DeadLetter | None = None


@dataclass
class _Trouble:
    since: float
    count: int
    retry_at: float
    error: str


class DeliveryPolicy(Generic[M]):
    """The sender's decisions. Not thread-safe: one event loop drives it."""

    def __init__(self, settings: Settings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        self._batch: deque[M] = deque()
        self._drained = False  # the last refill found nothing new: wait for a wake-up or the idle poll
        self._due: M | None = None  # a fetched deferred message, sent before the batch
        self._deferred: dict[int, float] = {}  # id -> time it may be sent again
        self._post_connect: dict[int, int] = {}  # id -> failures after the EHR accepted the connection
        self._nacks: dict[int, int] = {}  # id -> negative answers seen in this run
        self._suspect: M | None = None
        self._unsettled: dict[int, _Unsettled[M]] = {}
        self._recent_acked: deque[str] = deque(maxlen=32)
        self._awaiting: dict[str, _Awaiting] = {}  # control id -> committed, owes its application ACK
        self._completed: OrderedDict[str, None] = OrderedDict()  # recently completed by an application ACK
        self.failures = 0  # consecutive link failures
        self._internal = 0  # consecutive unexpected errors (bugs)
        self._link_retry_at = 0.0
        self._read: _Trouble | None = None
        self._write: _Trouble | None = None

    # --- the next step ------------------------------------------------------------------------------

    def next_step(self, now: float) -> Step[M]:
        step = self._next_step(now)
        if isinstance(step, Wait) and self._awaiting:
            due = [a.deadline for a in self._awaiting.values() if not a.overdue]
            if due:  # wake for the next application-ACK deadline (overdue report, ER completion)
                step = Wait(max(0.0, min(step.seconds, min(due) - now)), step.wake_on_new, step.why)
        return step

    def _next_step(self, now: float) -> Step[M]:
        write = self._write
        if self._unsettled and (write is None or now >= write.retry_at):
            message_id, item = next(iter(self._unsettled.items()))
            first = not item.tried
            item.tried = True
            return Settle(message_id, item.control_id, item.outcome, item.message, first)
        # any wait ends when the unsettled ones may be tried again
        settle_in = write.retry_at - now if self._unsettled and write is not None else math.inf
        read = self._read
        if read is not None and now < read.retry_at:
            return Wait(min(read.retry_at - now, settle_in), False, "storage")
        if len(self._unsettled) >= self.settings.max_unsettled:
            return Wait(max(0.0, settle_in), False, "unsettled")
        if now < self._link_retry_at:
            return Wait(min(self._link_retry_at - now, settle_in), False, "link")
        if self._due is not None:
            return Send(self._due)
        due = [mid for mid, at in self._deferred.items() if at <= now]
        if due:
            return Fetch(min(due))
        if self._batch:
            return Send(self._batch[0])
        if not self._drained:
            return Refill(self.settings.batch + len(self._deferred) + len(self._unsettled))
        timeout = min(self.settings.idle_poll, settle_in)
        if self._deferred:
            timeout = max(0.0, min(timeout, min(self._deferred.values()) - now))
        return Wait(timeout, True, "idle")

    def woken(self) -> None:
        """An idle wait ended (a wake-up or the poll interval): look at the outbox again."""
        self._drained = False

    # --- results of the I/O steps ------------------------------------------------------------------

    def refilled(self, rows: Iterable[M], now: float) -> bool:
        """The oldest queued messages. Returns True when this read ended a run of storage failures."""
        skip = self._deferred.keys() | self._unsettled.keys()
        self._batch = deque(r for r in rows if r.id not in skip)
        self._drained = not self._batch
        return self.storage_ok(now, write=False)

    def fetched(self, message_id: int, message: M | None, now: float) -> bool:
        """The deferred message as read again; None when it is no longer queued (an operator moved it)."""
        self._deferred.pop(message_id, None)
        if message is not None and message_id not in self._unsettled:
            self._due = message
        return self.storage_ok(now, write=False)

    def remembered(self, pending: dict[int, str]) -> None:
        """Removals the last run could not finish (the outbox ledger): settle them before sending."""
        for message_id, control_id in sorted(pending.items()):
            self._unsettled.setdefault(message_id, _Unsettled(control_id, Removal(), None))

    def settled(self, message_id: int, now: float) -> bool:
        """A removal or dead-letter move was written. Returns True when this ended a storage failure."""
        self._unsettled.pop(message_id, None)
        return self.storage_ok(now, write=True)

    # --- results of a send --------------------------------------------------------------------------

    def _forget_sending(self, msg: M) -> None:
        if self._due is not None and self._due.id == msg.id:
            self._due = None
        if self._batch and self._batch[0].id == msg.id:
            self._batch.popleft()
        elif any(m.id == msg.id for m in self._batch):
            self._batch = deque(m for m in self._batch if m.id != msg.id)

    def link_failed(
        self, msg: M, now: float, *, after_connect: bool, not_before: float | None = None
    ) -> LinkVerdict:
        """No usable ACK. ``after_connect``: the EHR accepted the connection (this may be the message's
        fault); otherwise it says nothing about the message. ``not_before``: the receiver asked for at
        least this many seconds of quiet (an HTTP ``Retry-After``); the back-off is never shorter."""
        if self._due is not None and self._due.id == msg.id:
            self._due = None
            self._deferred[msg.id] = now  # a retried AE/CE message: due again after the back-off
        suspect = after_connect and self._failed_after_connect(msg, now)
        self.failures += 1
        delay = max(self.backoff(self.failures), not_before or 0.0)
        self._link_retry_at = now + delay
        return LinkVerdict(delay, self.failures, suspect)

    def _failed_after_connect(self, msg: M, now: float) -> bool:
        if self._suspect is not None and msg.id != self._suspect.id:
            # The probe failed as well: the EHR is failing every message. Restore order, suspect nothing.
            self._deferred[self._suspect.id] = now
            self._suspect = None
            self._post_connect.clear()
            return False
        count = self._post_connect.get(msg.id, 0) + 1
        self._post_connect[msg.id] = count
        others = any(m.id != msg.id for m in self._batch) or any(i != msg.id for i in self._deferred)
        if count >= self.settings.poison_after and self._suspect is None and others:
            self._suspect = msg
            self._forget_sending(msg)
            self._deferred[msg.id] = now + max(60.0, 2 * self.settings.ack_timeout)
            return True
        return False

    def answered(self, msg: M) -> int:
        """The EHR answered this message (any code): the link works. Returns the link failures it ended.

        A suspect waiting while a later message got an answer is poison: it is dead-lettered."""
        resumed = self.failures
        self.failures = 0
        self._internal = 0
        self._link_retry_at = 0.0
        self._post_connect.pop(msg.id, None)
        suspect = self._suspect
        if suspect is not None and msg.id != suspect.id:
            self._suspect = None
            self._deferred.pop(suspect.id, None)
            failures = self._post_connect.pop(suspect.id, 0)
            self._decide(
                suspect,
                DeadLetter(
                    f"the receiver failed this message {failures} times after accepting the connection "
                    "while accepting later ones (too large for it, or content it cannot take)"
                ),
            )
        return resumed

    def accepted(self, msg: M, code: str = "AA", now: float = 0.0) -> bool:
        """``AA``/``CA``: never offered again. Returns True when that completed the message (its removal
        is unsettled), False when a ``CA`` left it awaiting the application ACK (its move is unsettled)."""
        self._recent_acked.append(msg.control_id)
        if code == "CA" and self.settings.app_ack != "never":
            self._awaiting[msg.control_id] = _Awaiting(msg.id, now + self.settings.app_ack_timeout)
            self._decide(msg, AwaitAppAck())
            return False
        self._decide(msg, Removal())
        return True

    # --- enhanced mode: application ACKs ----------------------------------------------------------------

    def awaiting(self, control_id: str) -> bool:
        return control_id in self._awaiting

    @property
    def awaiting_count(self) -> int:
        return len(self._awaiting)

    def awaiting_moved(self, present: set[int]) -> list[str]:
        """The outbox's ``awaiting_ack`` ids as read now: a message of ours missing there was moved by an
        operator (``outbox retry`` queued it again, ``outbox dead-letter`` gave up on it). Forget it, so it
        is neither reported overdue nor completed by a late application ACK. Messages whose move to
        awaiting is still unwritten are kept. Returns the control ids forgotten."""
        gone: list[str] = []
        for control_id, item in list(self._awaiting.items()):
            if item.message_id in present or item.message_id in self._unsettled:
                continue
            del self._awaiting[control_id]
            gone.append(control_id)
        return gone

    def restore_awaiting(self, rows: Iterable[tuple[int, str, float]], now: float) -> None:
        """Messages committed before a restart: ``(id, control id, seconds since the commit)``."""
        for message_id, control_id, age in rows:
            deadline = now + self.settings.app_ack_timeout - max(0.0, age)
            self._awaiting[control_id] = _Awaiting(message_id, deadline, overdue=False)

    def application_ack(
        self, control_id: str, code: str, now: float, *, text: str = "", summary: str | None = None
    ) -> AppAckVerdict | None:
        """An application ACK (same connection or the inbound port). None: no message awaits one with
        this MSA-2. ``AA`` completes the message, a repeated ``CA`` changes nothing, every other code
        dead-letters it with the reason."""
        item = self._awaiting.get(control_id)
        if item is None:
            return None
        waited = max(0.0, now - (item.deadline - self.settings.app_ack_timeout))
        if code == "CA":
            return AppAckVerdict("ignored", waited)
        del self._awaiting[control_id]
        pending = self._unsettled.get(item.message_id)
        if code == "AA":
            self._remember_completed(control_id)
            # an awaiting row (or, while its move is unwritten, the queued row): removed from either table
            self._unsettled[item.message_id] = _Unsettled(control_id, Removal(), None)
            return AppAckVerdict("completed", waited)
        what = "application error" if code in ("AE", "CE") else "application reject"
        if code not in ("AE", "AR", "CE", "CR"):
            what = f"unknown application acknowledgement code {code!r}"
        dead = DeadLetter(
            f"{what} ({code}) after the receiver had committed the message (CA), {waited:.0f} s later",
            code,
            text,
            summary or code,
        )
        self._unsettled[item.message_id] = _Unsettled(
            control_id, dead, pending.message if pending is not None else None
        )
        return AppAckVerdict("dead", waited, dead)

    def overdue(self, now: float) -> tuple[list[str], list[str]]:
        """Application ACKs due by ``now``: ``(newly overdue, completed by silence)``. With ``errors``
        (MSH-16 ER) silence is success: those messages complete; otherwise each is reported once and
        keeps waiting (a late AA still completes it)."""
        late: list[str] = []
        quiet: list[str] = []
        for control_id, item in list(self._awaiting.items()):
            if item.overdue or item.deadline > now:
                continue
            if self.settings.app_ack == "errors":
                del self._awaiting[control_id]
                self._remember_completed(control_id)
                self._unsettled[item.message_id] = _Unsettled(control_id, Removal(), None)
                quiet.append(control_id)
            else:
                item.overdue = True
                late.append(control_id)
        return late, quiet

    def was_completed(self, control_id: str) -> bool:
        """An application ACK completed this message a while ago (a repeated one is not news)."""
        return control_id in self._completed

    def _remember_completed(self, control_id: str) -> None:
        self._completed[control_id] = None
        while len(self._completed) > 4096:
            self._completed.popitem(last=False)

    def negative(
        self,
        msg: M,
        code: str,
        *,
        known: bool,
        nacks: int | None,
        now: float,
        text: str,
        summary: str | None = None,
    ) -> Retry | DeadLetter:
        """A negative or unknown acknowledgement. ``nacks``: the negative answers so far as the outbox
        counted them, None when it could not count (then this run's own count is used)."""
        seen = self._nacks.get(msg.id, 0) + 1
        self._nacks[msg.id] = seen
        nacks = max(nacks or 0, seen)
        if code in self.settings.retry_negative:
            if nacks < self.settings.max_attempts:
                self._forget_sending(msg)
                delay = self.backoff(nacks)
                self._deferred[msg.id] = now + delay
                return Retry(delay, nacks)
            reason = f"{code} {nacks} times (max_attempts {self.settings.max_attempts})"
        elif known:
            reason = f"rejected by the receiver ({code})"
        else:
            reason = f"unknown acknowledgement code {code!r}"
        dead = DeadLetter(reason, code, text, summary or code)
        self._decide(msg, dead)
        return dead

    def refuse(self, msg: M, reason: str) -> None:
        """A message that can never be sent (e.g. it contains an MLLP framing byte): dead-letter it."""
        self._decide(msg, DeadLetter(reason))

    def _decide(self, msg: M, outcome: Outcome) -> None:
        self._forget_sending(msg)
        self._deferred.pop(msg.id, None)
        self._post_connect.pop(msg.id, None)
        self._nacks.pop(msg.id, None)
        self._unsettled[msg.id] = _Unsettled(msg.control_id, outcome, msg)

    def was_acked(self, control_id: str) -> bool:
        """A late ACK (e.g. the AA after a CA) for a message delivered a moment ago."""
        return control_id in self._recent_acked

    def is_unsettled(self, message_id: int) -> bool:
        return message_id in self._unsettled

    # --- storage and internal errors ----------------------------------------------------------------

    def storage_failed(self, now: float, error: str, *, write: bool) -> StorageVerdict:
        trouble = self._write if write else self._read
        first = trouble is None
        if trouble is None:
            trouble = _Trouble(since=now, count=0, retry_at=now, error=error)
        trouble.count += 1
        trouble.error = error
        delay = self._storage_backoff(trouble.count)
        trouble.retry_at = now + delay
        if write:
            self._write = trouble
        else:
            self._read = trouble
            self._batch.clear()
            self._due = None
            self._drained = False
        failing_for = now - trouble.since
        return StorageVerdict(delay, first, failing_for, failing_for >= self.settings.storage_give_up)

    def storage_ok(self, now: float, *, write: bool) -> bool:
        """A read (or write) succeeded. Returns True when that ended a run of failures."""
        if write:
            ended, self._write = self._write is not None, None
        else:
            ended, self._read = self._read is not None, None
        return ended

    def internal_error(self, now: float) -> float:
        """A bug (an unexpected exception): start over from the outbox after a growing back-off."""
        self._internal += 1
        self._batch.clear()
        self._due = None
        self._drained = False
        delay = self.backoff(self._internal)
        self._link_retry_at = now + delay
        return delay

    # --- helpers -------------------------------------------------------------------------------------

    def backoff(self, n: int) -> float:
        """Capped exponential back-off with jitter: in [cap/2, cap], cap = min(max, min * 2**(n-1))."""
        return self._jitter(self.settings.backoff_min, self.settings.backoff_max, n)

    def _storage_backoff(self, n: int) -> float:
        return self._jitter(self.settings.storage_backoff_min, self.settings.storage_backoff_max, n)

    def _jitter(self, lo: float, hi: float, n: int) -> float:
        cap = min(hi, lo * math.pow(2.0, min(max(n - 1, 0), 62)))
        return cap / 2 + self._rng.random() * cap / 2

    def snapshot(self, now: float) -> dict[str, object]:
        """Counters and storage state for the status (no message content)."""
        trouble = self._write or self._read
        unsettled = list(self._unsettled.values())
        return {
            "unsettled": len(unsettled),
            "unsettled_removals": sum(isinstance(u.outcome, Removal) for u in unsettled),
            "deferred": len(self._deferred),
            "suspect": self._suspect.control_id if self._suspect is not None else None,
            "awaiting_app_ack": len(self._awaiting),
            "app_ack_overdue": sorted(c for c, a in self._awaiting.items() if a.overdue),
            "storage_error": trouble.error if trouble is not None else None,
            "storage_failures": trouble.count if trouble is not None else 0,
            "storage_failing_for": round(now - trouble.since, 1) if trouble is not None else None,
            "storage_retry_in": round(max(0.0, trouble.retry_at - now), 2) if trouble is not None else None,
        }
