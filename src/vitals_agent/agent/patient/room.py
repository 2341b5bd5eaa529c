"""What the room's two contexts share: the patient (``context.py``) and the signed-in clinician
(``clinician.py``).

A context is one JSON file in ``data_dir`` written by ``write_private`` (0600, atomic, fsync'd); a file
that cannot be read is moved aside (``move_aside``) and audited at start. It ends after ``timeout`` without
activity, measured on the monotonic clock (``clock.Clock``), so a wall-clock step neither ends it at once
nor stretches it. Activity (:meth:`RoomContextManager.touch`) is kept in memory; ``tick`` and ``close``
persist it. Each subclass names its audit records (:class:`Records`) and logs its own events.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from vitals_agent.agent.clock import Clock
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.storage.audit import AuditLog, write_private
from vitals_agent.agent.storage.files import Discarded, explain, read_state_file


@dataclass(frozen=True, kw_only=True)
class RoomContext:
    """The bookkeeping of a room context; a subclass adds who it is about."""

    channel: str
    source: str | None
    set_at: datetime
    last_activity: datetime
    client: str | None = None  # what a control API caller said it was (``cli``, ``barcode``): a claim
    # The same two instants on the monotonic clock (clock.py): ages are measured on these, so a wall-clock
    # step neither ends the context at once nor stretches it. Not persisted (meaningless after a reboot).
    set_mono: float = field(default=0.0, compare=False)
    active_mono: float = field(default=0.0, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "source": self.source,
            "set_at": self.set_at.isoformat(),
            "last_activity": self.last_activity.isoformat(),
            "client": self.client,
        }

    @staticmethod
    def fields_from_json(data: dict[str, Any]) -> dict[str, Any]:
        """The keywords for the fields :meth:`to_json` wrote."""
        return {
            "channel": str(data["channel"]),
            "source": data.get("source"),
            "set_at": datetime.fromisoformat(data["set_at"]),
            "last_activity": datetime.fromisoformat(data["last_activity"]),
            "client": data.get("client"),
        }


C = TypeVar("C", bound=RoomContext)


@dataclass(frozen=True)
class Records:
    """What a context's audit records are called."""

    discarded: str  # the state file was unreadable and moved aside
    cleared: str  # the context was cleared (or an attempt, when none was set)
    subject: str  # the field naming whose context it was (``patient_mrn``, ``clinician_id``)


class RoomContextManager(Generic[C]):
    """One room context: persistence, activity, expiry and clearing."""

    records: ClassVar[Records]

    def __init__(
        self,
        file: Path,
        parse: Callable[[dict[str, Any]], C],
        audit: AuditLog,
        timeout: timedelta,
        clock: Clock,
    ) -> None:
        self.audit = audit
        self.clock = clock
        self._now = clock.now
        self.timeout = timeout
        self._file = file
        self._parse = parse
        self._activity_unsaved = False  # touch() changed the context in memory only
        self._save_failing = False
        self._context = self._load()

    def close(self) -> None:
        self.save_activity()

    # --- the subclass's part ------------------------------------------------------------------------
    def _subject_id(self, ctx: C) -> str:
        """Whose context it is, for the audit trail (:attr:`Records.subject`)."""
        raise NotImplementedError

    def _expired(self, ctx: C, now: datetime) -> None:
        """Audit, log and pass on that ``ctx`` ran out of time (it is gone already)."""
        raise NotImplementedError

    def _log_discarded(self, discarded: Discarded) -> None:
        """Log that the state file was unreadable (moved aside, or not even that)."""
        raise NotImplementedError

    def _log_not_saved(self, error: str) -> None:
        """Log that touched activity could not be persisted (once, until it can again)."""
        raise NotImplementedError

    # --- persistence -------------------------------------------------------------------------------
    def _load(self) -> C | None:
        ctx = read_state_file(self._file, self._parse)
        if isinstance(ctx, Discarded):
            self._log_discarded(ctx)
            self.audit.record(
                self.records.discarded,
                reason="unreadable state file",
                channel="startup",
                moved_to=ctx.moved_text,
            )
            return None
        if ctx is None:
            return None
        return dataclasses.replace(
            ctx, set_mono=self.clock.mono_at(ctx.set_at), active_mono=self.clock.mono_at(ctx.last_activity)
        )

    def _save(self) -> None:
        write_private(self._file, json.dumps(self._context.to_json() if self._context else None))
        self._activity_unsaved = False

    def save_activity(self) -> None:
        """Persist a touched context (from :meth:`tick`); a failure is logged once and retried on the next
        tick."""
        if not self._activity_unsaved:
            return
        try:
            self._save()
        except OSError as exc:
            if not self._save_failing:
                self._log_not_saved(explain(exc))
            self._save_failing = True
            return
        self._save_failing = False

    # --- the context -------------------------------------------------------------------------------
    def _stamps(self, origin: Origin, now: datetime) -> dict[str, Any]:
        """The bookkeeping fields of a context ``origin`` sets now."""
        mono = self.clock.mono_at(now)
        client = origin.caller.get("client")
        return {
            "channel": origin.channel,
            "source": origin.source,
            "set_at": now,
            "last_activity": now,
            "client": str(client) if client else None,
            "set_mono": mono,
            "active_mono": mono,
        }

    def _start(self, context: C, audit_event: str, **audit: Any) -> None:
        """Make ``context`` the current one: audited first (if the trail cannot be written, nothing changes:
        AuditError), then persisted."""
        self.audit.record(audit_event, channel=context.channel, source=context.source, **audit)
        self._context = context
        self._save()

    def _clear(self, origin: Origin, **details: Any) -> bool:
        """End the context: persisted, then audited (also when none was set, as an attempt); ``details``:
        further audit fields. False when none was set."""
        previous = self._context
        self._context = None
        self._save()
        subject = self._subject_id(previous) if previous else None
        self.audit.record(
            self.records.cleared,
            **origin.audit_fields(**{self.records.subject: subject}, was_set=previous is not None, **details),
        )
        return previous is not None

    def context(self, now: datetime | None = None) -> C | None:
        """The live context (expiring it first if its time is up)."""
        now = now or self._now()
        ctx = self._context
        if ctx is None or self.clock.mono_at(now) - ctx.active_mono < self.timeout.total_seconds():
            return ctx
        self._context = None
        self._activity_unsaved = True
        self.save_activity()  # a file left behind still expires on load: never a wrong patient
        self._expired(ctx, now)
        return None

    def touch(self, now: datetime | None = None) -> None:
        """Activity: restart the inactivity timer.

        In memory only: the reading path opens no file (a process out of file descriptors still files its
        readings). :meth:`tick` and :meth:`close` persist the new time; a crash before that loses at most a
        second of activity, so a restarted context can only end earlier, never last longer."""
        now = now or self._now()
        ctx = self.context(now)
        if ctx is not None:
            self._context = dataclasses.replace(ctx, last_activity=now, active_mono=self.clock.mono_at(now))
            self._activity_unsaved = True

    def _expires(self, ctx: C) -> datetime:
        """When the context ends, on today's wall clock (its age is on the monotonic clock)."""
        return self.clock.wall_at(ctx.active_mono) + self.timeout
