"""Who is taking the vitals: the room's signed-in clinician, the sibling of the patient context.

Set by a badge scan (the barcode driver's ``clinician_pattern``, channel ``barcode``), ``vitals-agent
clinician set`` (``cli``), the control API (``api``) or the status page (``page``); it ends on ``clinician
clear``, when the patient context ends (``patient``: cleared or expired), or after
``[review] clinician_timeout_minutes`` without activity (``expiry``; confirming, rejecting, correcting or
entering values is activity). It shares the patient context's mechanisms (``room.py``): the same writer
(``write_private``: 0600, atomic, fsync'd) in ``data_dir/clinician_context.json``, an unreadable file moved
aside (``move_aside``) and audited, ages on the monotonic clock (``clock.Clock``), and the same audit
vocabulary of channels. A clinician id and name are staff data, not patient data, but the operational log
still names only the channel; the audit trail names the person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import structlog
from pydantic import ValidationError

from vitals_agent import log_events as ev
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.patient.room import Records, RoomContext, RoomContextManager
from vitals_agent.agent.storage.audit import CHANNEL_BARCODE, CHANNEL_EXPIRY, AuditLog
from vitals_agent.agent.storage.files import Discarded
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


@dataclass(frozen=True, kw_only=True)
class ClinicianContext(RoomContext):
    clinician: Clinician

    def to_json(self) -> dict[str, Any]:
        return {"clinician": self.clinician.model_dump(), **super().to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClinicianContext:
        return cls(clinician=Clinician.model_validate(data["clinician"]), **cls.fields_from_json(data))


class ClinicianSnapshot(TypedDict):
    """The clinician part of the status (page, ``vitals-agent status``, ``clinician show``)."""

    set: bool
    id: str | None
    name: str | None  # "Anna Nurse"
    channel: str | None
    source: str | None
    set_at: str | None
    expires_at: str | None


class ClinicianContextManager(RoomContextManager[ClinicianContext]):
    """The signed-in clinician: set, clear, expiry, persistence, badge scans."""

    records = Records(discarded="clinician_discarded", cleared="clinician_cleared", subject="clinician_id")

    def __init__(self, data_dir: Path, config: ReviewConfig, audit: AuditLog, *, clock: Clock) -> None:
        self.config = config
        timeout = timedelta(minutes=config.clinician_timeout_minutes)
        super().__init__(data_dir / CLINICIAN_FILE, ClinicianContext.from_json, audit, timeout, clock)

    def _subject_id(self, ctx: ClinicianContext) -> str:
        return ctx.clinician.id

    def _log_discarded(self, discarded: Discarded) -> None:
        if discarded.move_error is not None:
            log.error(ev.CLINICIAN_CONTEXT_FILE_UNREADABLE, error=discarded.move_error)
        log.warning(
            ev.CLINICIAN_CONTEXT_FILE_MOVED_ASIDE, path=str(self._file), moved_to=discarded.moved_text
        )

    def _log_not_saved(self, error: str) -> None:
        log.warning(ev.CLINICIAN_ACTIVITY_NOT_SAVED, error=error)

    # --- context -------------------------------------------------------------------------------------
    def set(self, clinician: Clinician, origin: Origin) -> ClinicianContext:
        """Sign ``clinician`` in (replacing anyone signed in). Audited first; persisted."""
        now = self._now()
        previous = self._context
        context = ClinicianContext(clinician=clinician, **self._stamps(origin, now))
        self._start(
            context,
            "clinician_set",
            clinician=clinician.model_dump(),
            replaced=previous.clinician.id if previous else None,
            expires_at=now + self.timeout,
            **origin.caller,
        )
        log.info(ev.CLINICIAN_SIGNED_IN, channel=origin.channel, replaced=previous is not None)
        return context

    def clear(self, origin: Origin, *, reason: str | None = None) -> bool:
        """Sign the clinician out. Returns False when nobody was signed in (audited as an attempt)."""
        was_set = self._clear(origin, reason=reason)
        log.info(ev.CLINICIAN_SIGNED_OUT, channel=origin.channel, was_set=was_set)
        return was_set

    def _expired(self, ctx: ClinicianContext, now: datetime) -> None:
        self.audit.record(
            "clinician_expired",
            channel=CHANNEL_EXPIRY,
            clinician_id=ctx.clinician.id,
            last_activity=ctx.last_activity,
        )
        log.info(ev.CLINICIAN_TIMED_OUT, minutes=self.config.clinician_timeout_minutes)

    def current(self, now: datetime | None = None) -> Clinician | None:
        ctx = self.context(now)
        return ctx.clinician if ctx else None

    def tick(self, now: datetime | None = None) -> None:
        self.context(now)
        self.save_activity()

    def patient_changed(self, what: str, patient: PatientInfo | Any | None) -> None:
        """PatientContextManager listener: the clinician leaves with the patient (cleared or expired)."""
        if what in ("cleared", "expired") and self._context is not None:
            self.clear(Origin(CHANNEL_PATIENT), reason=f"patient context {what}")

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
        self.set(clinician, Origin(CHANNEL_BARCODE, source=scan.device_id))

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
        expires = self._expires(ctx)
        return {
            "set": True,
            "id": c.id,
            "name": " ".join(x for x in (c.given, c.family) if x) or None,
            "channel": ctx.channel,
            "source": ctx.source,
            "set_at": ctx.set_at.isoformat(),
            "expires_at": expires.isoformat(),
        }
