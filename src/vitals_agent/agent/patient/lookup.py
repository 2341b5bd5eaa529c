"""Lookup then confirm: with ``[pdq]`` configured, a typed or scanned MRN is first looked up in the EHR
and a person confirms the EHR's answer before the room is bound.

States (one room, one lookup at a time)::

    idle --lookup--> looking up --1+ match--> pending --confirm [pick]--> bound (from the EHR's answer)
                         |                       |--cancel / expiry / new lookup--> idle
                         |--no match--> idle (nothing bound)
                         |--EHR down/slow/AE/AR--> idle (refuse) | bound as typed, unverified (typed)

Starting a lookup ends the room's current context first (a new wristband means a new patient: the old
patient's chart must not get the new patient's vitals while the EHR is asked). While a lookup runs or a
confirmation is pending every reading is held durably (the held store of :mod:`patient_context`); a
confirmation releases them to the confirmed patient (late-associated); a cancellation or expiry sends them
unbound, or keeps them held when ``require_patient`` is on.

The pending confirmation is persisted (``data_dir/patient_pending.json``, 0600) so it survives a restart
until it expires; a lookup that was still running at a restart is treated as cancelled.

Every query, answer (count only), confirmation, cancellation, expiry and fallback is an audit record with
its channel; the operational log says only that something happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import structlog
from pydantic import ValidationError

from vitals_agent import log_events as ev
from vitals_agent.agent.clock import utc_now
from vitals_agent.agent.patient.context import (
    VERIFIED_EHR,
    VERIFIED_NO,
    PatientContext,
    PatientContextManager,
    PatientDetails,
    PatientError,
)
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.storage.audit import CHANNEL_EXPIRY, AuditLog, write_private
from vitals_agent.config.pdq import PdqConfig
from vitals_agent.errors import VitalsAgentError
from vitals_agent.hl7.pdq import PdqCandidate, PdqError
from vitals_agent.redact import mask_mrn

if TYPE_CHECKING:
    from vitals_agent.net.pdq import Lookup, PdqClient

log = structlog.get_logger(__name__)

PENDING_FILE = "patient_pending.json"


class ConfirmError(VitalsAgentError):
    """Nothing to confirm, or a pick that is not on the list."""


def initials(p: PatientDetails) -> str:
    """``O. Q.`` (given name first, as people say it)."""
    return " ".join(f"{part[0].upper()}." for part in (p.given, p.family) if part) or "(no name)"


def short_line(p: PatientDetails, *, sex: bool = False) -> str:
    """What a terminal may show of a candidate: initials and year of birth (and sex, to tell apart)."""
    parts = [initials(p)]
    if p.birth_date:
        parts.append(f"born {p.birth_date[:4]}")
    if sex and p.sex:
        parts.append(p.sex)
    return ", ".join(parts)


def full_view(p: PatientDetails) -> dict[str, str | None]:
    """What the person at the workstation sees to confirm: full name, date of birth, sex, MRN, visit."""
    dob = p.birth_date
    return {
        "mrn": p.mrn,
        "name": ", ".join(x for x in (p.family, p.given) if x) or None,
        "family": p.family,
        "given": p.given,
        "birth_date": f"{dob[:4]}-{dob[4:6]}-{dob[6:]}" if dob else None,
        "sex": p.sex,
        "encounter": p.encounter,
        "assigning_authority": p.assigning_authority,
    }


@dataclass(frozen=True)
class Pending:
    """A lookup in progress (state "lookup", no candidates) or answered and waiting for a person."""

    typed: PatientDetails  # what was scanned or typed (used only by the typed fallback)
    channel: str
    source: str | None
    started_at: datetime
    expires_at: datetime
    state: Literal["lookup", "confirm"] = "lookup"
    candidates: tuple[PatientDetails, ...] = ()
    query_id: str | None = None
    more: bool = False  # the EHR has more matches than it sent

    def to_json(self) -> dict[str, Any]:
        return {
            "typed": self.typed.model_dump(),
            "channel": self.channel,
            "source": self.source,
            "started_at": self.started_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "state": self.state,
            "candidates": [c.model_dump() for c in self.candidates],
            "query_id": self.query_id,
            "more": self.more,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pending:
        state = data["state"]
        if state not in ("lookup", "confirm"):
            raise ValueError("unknown state")
        return cls(
            typed=PatientDetails.model_validate(data["typed"]),
            channel=str(data["channel"]),
            source=data.get("source"),
            started_at=datetime.fromisoformat(data["started_at"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
            state=state,
            candidates=tuple(PatientDetails.model_validate(c) for c in data.get("candidates", [])),
            query_id=data.get("query_id"),
            more=bool(data.get("more", False)),
        )


class PendingView(TypedDict):
    """The pending confirmation for the CLI, the API and the page (masked unless revealed)."""

    state: str  # "lookup" | "confirm"
    mrn: str  # as typed, masked ("•••902") unless revealed
    channel: str
    started_at: str
    expires_at: str
    more: bool
    held: int
    revealed: bool
    candidates: list[dict[str, Any]]  # masked: {"n", "line"}; revealed: {"n", "line", **full_view}


@dataclass
class Outcome:
    """What a lookup ended in. ``kind``: ``pending`` (1+ matches, waiting for confirmation), ``none``
    (no match: nothing bound), ``failed`` (EHR not usable: nothing bound), ``fallback`` (EHR not usable:
    bound as typed, unverified)."""

    kind: Literal["pending", "none", "failed", "fallback"]
    message: str  # one line for the CLI (masked)
    pending: PendingView | None = None
    reason: str | None = None  # why the EHR was not usable (failed / fallback)
    count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.kind, "message": self.message, "count": self.count}
        if self.pending is not None:
            out["pending"] = self.pending
        if self.reason is not None:
            out["reason"] = self.reason
        out.update(self.extra)
        return out


@dataclass(eq=False)
class PatientLookup:
    """The lookup-then-confirm flow for one room (see the module docstring)."""

    patients: PatientContextManager
    client: PdqClient
    config: PdqConfig
    audit: AuditLog
    _: KW_ONLY
    now: Callable[[], datetime] = utc_now

    def __post_init__(self) -> None:
        self.confirm_timeout = timedelta(seconds=self.config.confirm_timeout_seconds)
        self._file = self.patients.data_dir / PENDING_FILE
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expires_mono: float | None = None  # the pending confirmation's end on the monotonic clock
        self._pending = self._load()
        self._expires_mono = self._end_mono(self._pending)
        # The last lookup that bound nothing (no match, EHR not usable): (when, masked one-line message), so
        # the page can tell the person at the workstation why a scan did nothing.
        self.last_failure: tuple[datetime, str] | None = None
        self.patients.pending_check = self.is_pending
        self.patients.scan_handler = self.start_scan_lookup

    # --- persistence -------------------------------------------------------------------------------
    def _load(self) -> Pending | None:
        try:
            text = self._file.read_text("utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning(ev.LOOKUP_PENDING_UNREADABLE, error=exc.strerror or str(exc))
            return None
        try:
            data = json.loads(text)
            pending = None if data is None else Pending.from_json(data)
        except (ValueError, KeyError, TypeError, ValidationError):
            log.warning(ev.LOOKUP_PENDING_FILE_UNREADABLE, path=str(self._file))
            self.audit.record(
                "pdq_discarded", reason="unreadable pending confirmation file", channel="startup"
            )
            return None
        if pending is not None and pending.state == "lookup":
            # The agent stopped while the EHR was being asked: nobody saw an answer to confirm.
            self.audit.record(
                "pdq_cancelled",
                channel="startup",
                reason="the agent restarted during the lookup",
                typed_mrn=pending.typed.mrn,
                query_id=pending.query_id,
            )
            self._pending = None
            self._save(None)
            return None
        return pending

    def _save(self, pending: Pending | None) -> None:
        write_private(self._file, json.dumps(pending.to_json() if pending else None))

    def _set_pending(self, pending: Pending | None) -> None:
        self._save(pending)  # durable first: a crash must not forget that readings are being held
        self._pending = pending
        self._expires_mono = self._end_mono(pending)

    # --- state -------------------------------------------------------------------------------------
    # How long a confirmation may wait is measured on the monotonic clock (agent/clock.py), as the patient
    # context's ages are: a wall-clock step neither ends it at once nor stretches it.
    def _mono(self, now: datetime | None) -> float:
        clock = self.patients.clock
        return clock.mono() if now is None else clock.mono_at(now)

    def _end_mono(self, pending: Pending | None) -> float | None:
        if pending is None:
            return None
        return self._mono(pending.started_at) + (pending.expires_at - pending.started_at).total_seconds()

    def _due(self, now: datetime | None) -> bool:
        return self._expires_mono is not None and self._mono(now) >= self._expires_mono

    def is_pending(self, now: datetime) -> bool:
        """PatientContextManager.pending_check: readings are held while this is true."""
        return self._pending is not None and not self._due(now)

    def pending(self, now: datetime | None = None) -> Pending | None:
        if self._pending is None or self._due(now):
            return None
        return self._pending

    def view(self, *, reveal: bool = False, now: datetime | None = None) -> PendingView | None:
        pending = self.pending(now)
        if pending is None:
            return None
        held, _ = self.patients.held.summary()
        candidates: list[dict[str, Any]] = []
        for n, c in enumerate(pending.candidates, start=1):
            item: dict[str, Any] = {"n": n, "line": short_line(c, sex=len(pending.candidates) > 1)}
            if reveal:
                item.update(full_view(c))
            candidates.append(item)
        return {
            "state": pending.state,
            "mrn": pending.typed.mrn if reveal else mask_mrn(pending.typed.mrn),
            "channel": pending.channel,
            "started_at": pending.started_at.isoformat(),
            "expires_at": pending.expires_at.isoformat(),
            "more": pending.more,
            "held": held,
            "revealed": reveal,
            "candidates": candidates,
        }

    # --- lookup ------------------------------------------------------------------------------------
    async def lookup(self, typed: PatientDetails, origin: Origin) -> Outcome:
        """Ask the EHR about ``typed.mrn``; returns what happened (nothing raised for EHR trouble)."""
        async with self._lock:
            return await self._lookup(typed, origin)

    async def _lookup(self, typed: PatientDetails, origin: Origin) -> Outcome:
        now = self.now()
        self.last_failure = None
        previous = self.pending(now)
        if previous is not None:
            self._end(previous, origin, "replaced by a new lookup", event="pdq_cancelled")
        if self.patients.current_details(now) is not None:
            # A new wristband is a new patient: the old context ends before the EHR is asked.
            self.patients.clear(replace(origin, caller={**origin.caller, "reason": "new lookup"}))
        masked = mask_mrn(typed.mrn)
        self._set_pending(
            Pending(
                typed,
                origin.channel,
                origin.source,
                now,
                now + timedelta(seconds=self.config.timeout_seconds + 5),
            )
        )
        self.audit.record(
            "pdq_query",
            **origin.audit_fields(mode=self.client.mode, peer=self.client.peer, typed_mrn=typed.mrn),
        )
        log.info(ev.LOOKUP_STARTED, channel=origin.channel, mode=self.client.mode)
        try:
            answer = await self.client.lookup(typed.mrn)
        except (PdqError, OSError) as exc:
            self._set_pending(None)
            return await self._unavailable(typed, origin, str(exc))
        except BaseException:
            self._set_pending(None)
            raise
        candidates, unusable = self._usable(answer)
        self.audit.record(
            "pdq_answer",
            **origin.audit_fields(
                mode=answer.mode,
                query_id=answer.query_id,
                count=len(candidates),
                unusable=unusable,
                outside_domain=answer.result.outside_domain,
                more=answer.result.more,
                increments=answer.increments,
                elapsed_ms=answer.elapsed_ms,
            ),
        )
        log.info(
            ev.LOOKUP_ANSWERED, channel=origin.channel, count=len(candidates), elapsed_ms=answer.elapsed_ms
        )
        if not candidates:
            self._set_pending(None)
            await self._after_end()
            if unusable:
                why = "the EHR's answer holds values the agent cannot send"
                return await self._unavailable(typed, origin, why, query_id=answer.query_id)
            return self._failed(Outcome("none", f"no patient with MRN {masked} in the EHR"))
        now = self.now()
        pending = Pending(
            typed,
            origin.channel,
            origin.source,
            now,
            now + self.confirm_timeout,
            state="confirm",
            candidates=tuple(candidates),
            query_id=answer.query_id,
            more=answer.result.more,
        )
        self._set_pending(pending)
        view = self.view(now=now)
        assert view is not None
        if len(candidates) == 1:
            message = (
                f"pending: {short_line(candidates[0])} \u2014 confirm with: vitals-agent patient confirm"
            )
        else:
            more = " (the EHR has more; check the MRN)" if pending.more else ""
            lines = [f"{len(candidates)} patients with MRN {masked} in the EHR{more}:"]
            lines += [f"  {c['n']}) {c['line']}" for c in view["candidates"]]
            lines.append("choose with: vitals-agent patient confirm --pick N")
            message = "\n".join(lines)
        return Outcome("pending", message, pending=view, count=len(candidates))

    def _usable(self, answer: Lookup) -> tuple[list[PatientDetails], int]:
        out: list[PatientDetails] = []
        unusable = 0
        for c in answer.result.candidates:
            try:
                out.append(self._details(c))
            except PatientError as exc:
                unusable += 1
                log.warning(ev.LOOKUP_CANDIDATE_UNUSABLE, error=str(exc))
        return out, unusable

    def _details(self, c: PdqCandidate) -> PatientDetails:
        return PatientDetails.parse(
            {
                "mrn": c.mrn,
                "family": c.family,
                "given": c.given,
                "birth_date": c.birth_date,
                "sex": c.sex,
                "encounter": c.encounter,
                "identifier_type": c.identifier_type or self.patients.config.identifier_type,
                "assigning_authority": str(c.authority) if c.authority else None,
            }
        )

    async def _unavailable(
        self, typed: PatientDetails, origin: Origin, reason: str, *, query_id: str | None = None
    ) -> Outcome:
        self.audit.record(
            "pdq_failed", **origin.audit_fields(reason=reason, query_id=query_id, typed_mrn=typed.mrn)
        )
        log.warning(ev.LOOKUP_FAILED, channel=origin.channel, reason=reason)
        if self.config.pdq_fallback == "typed":
            self.audit.record(
                "pdq_fallback", **origin.audit_fields(reason=reason, patient=typed.model_dump())
            )
            await self.patients.apply_set(typed, origin, verified=VERIFIED_NO)
            log.warning(ev.LOOKUP_BOUND_UNVERIFIED, channel=origin.channel)
            return Outcome(
                "fallback",
                f"bound UNVERIFIED as typed ({initials(typed)}): the EHR could not be asked: {reason}",
                reason=reason,
            )
        await self._after_end()
        return self._failed(
            Outcome("failed", f"patient lookup failed: {reason}; nothing was bound", reason=reason)
        )

    def _failed(self, outcome: Outcome) -> Outcome:
        self.last_failure = (self.now(), outcome.message)
        return outcome

    def notice(self, now: datetime | None = None, *, within: float = 120.0) -> str | None:
        """Why the last lookup bound nothing, while it is recent and nothing newer is pending or bound."""
        now = now or self.now()
        if self.last_failure is None or self.pending(now) is not None:
            return None
        when, message = self.last_failure
        ctx = self.patients.context(now)
        if (now - when).total_seconds() > within or (ctx is not None and ctx.set_at >= when):
            return None
        return message

    # --- confirm / cancel / expire -----------------------------------------------------------------
    async def confirm(self, origin: Origin, *, pick: int | None = None) -> PatientContext:
        """Bind the room to the (picked) candidate from the EHR's answer. Raises :class:`ConfirmError`."""
        async with self._lock:
            now = self.now()
            expired = self.expire(now)
            pending = self._pending
            if pending is None:
                if expired:
                    await self._after_end()
                    raise ConfirmError(
                        f"the confirmation expired after {self.config.confirm_timeout_seconds:g} s; "
                        "nothing was bound (set the patient again)"
                    )
                raise ConfirmError("nothing is waiting for confirmation (set the patient first)")
            if pending.state != "confirm":
                raise ConfirmError("the EHR has not answered yet; try again in a moment")
            count = len(pending.candidates)
            if pick is None:
                if count > 1:
                    raise ConfirmError(f"{count} patients match: choose one with --pick 1..{count}")
                pick = 1
            if not 1 <= pick <= count:
                raise ConfirmError(f"--pick must be 1..{count}")
            chosen = pending.candidates[pick - 1]
            self.audit.record(
                "pdq_confirmed",
                **origin.audit_fields(
                    query_id=pending.query_id,
                    pick=pick,
                    of=count,
                    patient=chosen.model_dump(),
                    pending_since=pending.started_at,
                ),
            )
            self._set_pending(None)
            log.info(ev.LOOKUP_CONFIRMED, channel=origin.channel, of=count)
            return await self.patients.apply_set(chosen, origin, verified=VERIFIED_EHR)

    async def cancel(self, origin: Origin) -> bool:
        """End a pending confirmation (nothing bound). False when nothing was pending (still audited)."""
        async with self._lock:
            pending = self.pending()
            if pending is None:
                self.audit.record("pdq_cancelled", **origin.audit_fields(was_pending=False))
                return False
            self._end(pending, origin, "cancelled", event="pdq_cancelled")
        await self._after_end()
        return True

    def expire(self, now: datetime | None = None) -> bool:
        """End a pending confirmation whose time is up (audited). Returns True when one ended."""
        pending = self._pending
        if pending is None or not self._due(now):
            return False
        self._end(pending, Origin(CHANNEL_EXPIRY), "not confirmed in time", event="pdq_expired")
        return True

    def _end(self, pending: Pending, origin: Origin, reason: str, *, event: str) -> None:
        self.audit.record(
            event,
            **origin.audit_fields(
                reason=reason,
                query_id=pending.query_id,
                typed_mrn=pending.typed.mrn,
                state=pending.state,
                pending_since=pending.started_at,
            ),
        )
        self._set_pending(None)
        log.info(ev.LOOKUP_ENDED, reason=reason, channel=origin.channel)

    async def _after_end(self) -> None:
        """Held readings follow require_patient: sent unbound when it is off, kept held when on."""
        if not self.patients.config.require_patient:
            await self.patients.release_held_unbound()

    def tick(self, now: datetime | None = None) -> None:
        """Call periodically: ends an expired confirmation and releases its held readings as due."""
        if self.expire(now):
            task = asyncio.get_running_loop().create_task(self._after_end())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # --- wristband scans ---------------------------------------------------------------------------
    def start_scan_lookup(self, typed: PatientDetails, origin: Origin) -> None:
        """A scan starts a lookup in the background (the scanner's device task must not wait for the EHR);
        the page shows the answer. Its audit records name the scanner as ``device_id`` too."""
        scanner = replace(origin, caller={"device_id": origin.source})
        task = asyncio.get_running_loop().create_task(self.lookup(typed, scanner))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def pending_file(data_dir: Path) -> Path:
    return data_dir / PENDING_FILE
