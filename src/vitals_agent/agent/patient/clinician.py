"""Who is taking the vitals: the room's signed-in clinician, the sibling of the patient context.

Set by a badge scan (the barcode driver's ``clinician_pattern``, channel ``barcode``), ``vitals-agent
clinician set`` (``cli``), the control API (``api``) or the status page (``page``); it ends on ``clinician
clear``, when the patient context ends (``patient``: cleared or expired), or after
``[review] clinician_timeout_minutes`` without activity (``expiry``; confirming, rejecting, correcting or
entering values is activity). It uses the patient context's mechanisms: the same private-file writer
(``write_private``: 0600, atomic, fsync'd) in ``data_dir/clinician_context.json``, an unreadable file moved
aside (``move_aside``) and audited, ages on the monotonic clock (``clock.Clock``), and the same audit
vocabulary of channels. A clinician id and name are staff data, not patient data, but the operational log
still names only the channel; the audit trail names the person.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import structlog
from pydantic import ValidationError

from vitals_agent import log_events as ev
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.storage.audit import CHANNEL_BARCODE, CHANNEL_EXPIRY, AuditLog, write_private
from vitals_agent.agent.storage.files import Discarded, explain, read_state_file
from vitals_agent.config.review import ReviewConfig
from vitals_agent.errors import VitalsAgentError
from vitals_agent.models import Clinician, ClinicianScan, PatientInfo

log = structlog.get_logger(__name__)

CLINICIAN_FILE = "clinician_context.json"
CHANNEL_PATIENT = "patient"  # signed out because the patient context ended


class ClinicianError(VitalsAgentError):
    """A clinician id or name that cannot be used (the message never echoes the value)."""


def parse_clinician(
    ident: str, name: str | None = None, *, family: str | None = None, given: str | None = None
) -> Clinician:
    """A :class:`Clinician` from untrusted input; ``name`` is ``FAMILY^GIVEN`` (the CLI form).
    Raises :class:`ClinicianError` with a message that omits the values."""
    if name is not None:
        if name.count("^") > 1:
            raise ClinicianError("name: must be FAMILY^GIVEN")
        fam, _, giv = name.partition("^")
        family, given = family or fam or None, given or giv or None
    try:
        return Clinician(id=ident, family=family, given=given)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "clinician"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"].startswith("string_type"):
            msg = "must be a string"
        raise ClinicianError(f"clinician {where}: {msg}") from None


@dataclass(frozen=True)
class ClinicianContext:
    clinician: Clinician
    channel: str
    source: str | None
    set_at: datetime
    last_activity: datetime
    client: str | None = None  # what a control API caller said it was: a claim
    set_mono: float = field(default=0.0, compare=False)  # monotonic instants (not persisted)
    active_mono: float = field(default=0.0, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "clinician": self.clinician.model_dump(),
            "channel": self.channel,
            "source": self.source,
            "set_at": self.set_at.isoformat(),
            "last_activity": self.last_activity.isoformat(),
            "client": self.client,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClinicianContext:
        return cls(
            clinician=Clinician.model_validate(data["clinician"]),
            channel=str(data["channel"]),
            source=data.get("source"),
            set_at=datetime.fromisoformat(data["set_at"]),
            last_activity=datetime.fromisoformat(data["last_activity"]),
            client=data.get("client"),
        )


class ClinicianSnapshot(TypedDict):
    """The clinician part of the status (page, ``vitals-agent status``, ``clinician show``)."""

    set: bool
    id: str | None
    name: str | None  # "Anna Nurse"
    channel: str | None
    source: str | None
    set_at: str | None
    expires_at: str | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ClinicianContextManager:
    """The signed-in clinician: set, clear, expiry, persistence, badge scans."""

    def __init__(
        self,
        data_dir: Path,
        config: ReviewConfig,
        audit: AuditLog,
        *,
        now: Callable[[], datetime] = _utc_now,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.audit = audit
        self.clock = clock or Clock.following(now)
        self._now = self.clock.now
        self.timeout = timedelta(minutes=config.clinician_timeout_minutes)
        self._file = data_dir / CLINICIAN_FILE
        self._activity_unsaved = False
        self._context = self._load()

    def close(self) -> None:
        self.save_activity()

    # --- persistence (the patient context's mechanisms) ---------------------------------------------
    def _load(self) -> ClinicianContext | None:
        ctx = read_state_file(self._file, ClinicianContext.from_json)
        if isinstance(ctx, Discarded):
            if ctx.move_error is not None:
                log.error(ev.CLINICIAN_CONTEXT_FILE_UNREADABLE, error=ctx.move_error)
            log.warning(ev.CLINICIAN_CONTEXT_FILE_MOVED_ASIDE, path=str(self._file))
            self.audit.record(
                "clinician_discarded",
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
        if not self._activity_unsaved:
            return
        try:
            self._save()
        except OSError as exc:
            log.warning(ev.CLINICIAN_ACTIVITY_NOT_SAVED, error=explain(exc))

    # --- context -------------------------------------------------------------------------------------
    def set(
        self,
        clinician: Clinician,
        channel: str,
        *,
        source: str | None = None,
        caller: Mapping[str, Any] | None = None,
    ) -> ClinicianContext:
        """Sign ``clinician`` in (replacing anyone signed in). Audited first; persisted."""
        now = self._now()
        mono = self.clock.mono_at(now)
        previous = self._context
        client = caller.get("client") if caller else None
        context = ClinicianContext(
            clinician, channel, source, now, now, str(client) if client else None, mono, mono
        )
        self.audit.record(
            "clinician_set",
            channel=channel,
            source=source,
            clinician=clinician.model_dump(),
            replaced=previous.clinician.id if previous else None,
            expires_at=now + self.timeout,
            **(caller or {}),
        )
        self._context = context
        self._save()
        log.info(ev.CLINICIAN_SIGNED_IN, channel=channel, replaced=previous is not None)
        return context

    def clear(
        self,
        channel: str,
        *,
        source: str | None = None,
        caller: Mapping[str, Any] | None = None,
        reason: str | None = None,
    ) -> bool:
        """Sign the clinician out. Returns False when nobody was signed in (audited as an attempt)."""
        previous = self._context
        self._context = None
        self._save()
        self.audit.record(
            "clinician_cleared",
            channel=channel,
            source=source,
            clinician_id=previous.clinician.id if previous else None,
            was_set=previous is not None,
            reason=reason,
            **(caller or {}),
        )
        log.info(ev.CLINICIAN_SIGNED_OUT, channel=channel, was_set=previous is not None)
        return previous is not None

    def context(self, now: datetime | None = None) -> ClinicianContext | None:
        """The signed-in clinician's context, after expiring it when its time is up."""
        now = now or self._now()
        ctx = self._context
        if ctx is not None and self.clock.mono_at(now) - ctx.active_mono >= self.timeout.total_seconds():
            self._context = None
            self._activity_unsaved = True
            self.save_activity()
            self.audit.record(
                "clinician_expired",
                channel=CHANNEL_EXPIRY,
                clinician_id=ctx.clinician.id,
                last_activity=ctx.last_activity,
            )
            log.info(ev.CLINICIAN_TIMED_OUT, minutes=self.config.clinician_timeout_minutes)
            return None
        return ctx

    def current(self, now: datetime | None = None) -> Clinician | None:
        ctx = self.context(now)
        return ctx.clinician if ctx else None

    def touch(self, now: datetime | None = None) -> None:
        """The clinician did something (confirm, reject, correct, manual entry): restart the timer."""
        now = now or self._now()
        ctx = self.context(now)
        if ctx is not None:
            self._context = dataclasses.replace(ctx, last_activity=now, active_mono=self.clock.mono_at(now))
            self._activity_unsaved = True

    def tick(self, now: datetime | None = None) -> None:
        self.context(now)
        self.save_activity()

    def patient_changed(self, what: str, patient: PatientInfo | Any | None) -> None:
        """PatientContextManager listener: the clinician leaves with the patient (cleared or expired)."""
        if what in ("cleared", "expired") and self._context is not None:
            self.clear(CHANNEL_PATIENT, reason=f"patient context {what}")

    def on_scan(self, scan: ClinicianScan) -> None:
        """A badge scan signs a clinician in (names from the badge, else from ``[review] clinicians``)."""
        family, given = scan.family, scan.given
        if not (family or given):
            family, given = self.config.roster_name(scan.clinician_id)
        try:
            clinician = parse_clinician(scan.clinician_id, family=family, given=given)
        except ClinicianError as exc:
            log.warning(ev.CLINICIAN_BADGE_NOT_USABLE, device=scan.device_id, error=str(exc))
            self.audit.record("badge_rejected", device_id=scan.device_id, reason=str(exc), raw=scan.raw)
            return
        self.set(clinician, CHANNEL_BARCODE, source=scan.device_id)

    def snapshot(self, now: datetime | None = None) -> ClinicianSnapshot:
        ctx = self.context(now)
        if ctx is None:
            return {
                "set": False,
                "id": None,
                "name": None,
                "channel": None,
                "source": None,
                "set_at": None,
                "expires_at": None,
            }
        c = ctx.clinician
        expires = self.clock.wall_at(ctx.active_mono) + self.timeout
        return {
            "set": True,
            "id": c.id,
            "name": " ".join(x for x in (c.given, c.family) if x) or None,
            "channel": ctx.channel,
            "source": ctx.source,
            "set_at": ctx.set_at.isoformat(),
            "expires_at": expires.isoformat(),
        }
