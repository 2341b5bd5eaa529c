"""The review list: readings waiting for a clinician, and what was sent, so it can be confirmed, rejected,
corrected or retracted (issue #16).

One SQLite store, ``data_dir/review.sqlite3`` (0600, synchronous=FULL), beside the held readings:

* **items**: one per accepted reading (and per manual entry sent on its own), with the patient it was taken
  for, the clinician signed in when it was taken (OBR-10), its state (``pending`` waiting for a clinician,
  ``sent``, ``rejected`` never sent, ``retracted`` posted as wrong), the OBX-11 the EHR has now (``R``
  ``F`` ``C`` ``W``) and every MSH-10 sent for it. Sent items stay ``[review] keep_days`` so they can still
  be corrected or retracted; pending ones stay until a clinician decides.
* **actions**: every message the review sends (``final`` F, ``correct`` C, ``wrong`` W, ``refile`` to the
  right patient, ``retract`` W for a rejected auto+confirm reading) is first *reserved*: its MSH-10, MSH-7
  and the built bodies are committed here, with the item changes it makes, in one transaction. Then it is
  queued in the outbox (skipped when the outbox already has that MSH-10) and marked done together with
  those item changes. A crash anywhere in between is finished at the next start with exactly the same
  bytes and MSH-10. A wrong-patient retraction reserves its W and its refile in the same transaction; the
  refile waits (durably) until a different patient is set.

Every decision is an audit record naming the clinician, the channel (``cli``, ``api``, ``page``) and what
the caller said about itself; the operational log names item ids, never patients.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, InitVar, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, TypeVar

import structlog
from pydantic import ValidationError

from vitals_agent import host
from vitals_agent import log_events as ev
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.patient.clinician import ClinicianContextManager
from vitals_agent.agent.patient.context import (
    PatientContextManager,
    PatientDetails,
    reading_from_json,
    reading_to_json,
)
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.storage.audit import AuditError, AuditLog
from vitals_agent.agent.storage.files import StoreError, explain
from vitals_agent.codes import tables
from vitals_agent.config.review import ReviewConfig
from vitals_agent.errors import VitalsAgentError
from vitals_agent.hl7.oru import ResultReview, new_control_id
from vitals_agent.host.files import NOFOLLOW
from vitals_agent.models import (
    Clinician,
    DeviceClass,
    DeviceIdentity,
    Measurement,
    Qualifier,
    Reading,
)

log = structlog.get_logger(__name__)

REVIEW_FILE = "review.sqlite3"
SCHEMA_VERSION = 1
MANUAL_DEVICE = "manual"  # the device id of hand entries (no device measured them)
MANUAL_METHOD = "MMEAS"

PENDING = "pending"  # confirm mode: nothing sent, waiting for a clinician
SENT = "sent"
REJECTED = "rejected"  # never sent
RETRACTED = "retracted"  # posted as wrong (W)

FHIR_STATUS = {"R": "preliminary", "F": "final", "C": "corrected", "W": "entered-in-error"}

# What people type for the manual metrics and qualifiers (the table keys work too).
METRIC_ALIASES = {
    "resp_rate": "respiratory_rate",
    "rr": "respiratory_rate",
    "resp": "respiratory_rate",
    "pain": "pain_score",
    "height": "body_height",
    "o2_flow": "oxygen_flow_rate",
}
QUALIFIER_ALIASES = {
    "position": "bp_position",
    "arm": "bp_site",
    "bp_arm": "bp_site",
    "cuff": "bp_cuff_size",
    "cuff_size": "bp_cuff_size",
    "temp_site": "temperature_site",
    "o2_delivery": "oxygen_delivery",
    "o2": "oxygen_delivery",
}
_T = TypeVar("_T")


class ReviewError(VitalsAgentError):
    """A review action that cannot be done (the text says why and what to do; no patient data)."""


class NoClinicianError(ReviewError):
    """The action needs a signed-in clinician."""


class ReviewInputError(ReviewError):
    """What was entered cannot be used (a value, a metric name, a reason): the caller's mistake."""


# ------------------------------------------------------------------------------------------ the items


@dataclass(frozen=True)
class ManualPart:
    """A manual entry riding with a device reading: the values and who entered them."""

    reading: Reading
    entered_by: Clinician

    def to_json(self) -> dict[str, Any]:
        return {"reading": reading_to_json(self.reading), "entered_by": self.entered_by.model_dump()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManualPart:
        return cls(reading_from_json(data["reading"]), Clinician.model_validate(data["entered_by"]))


@dataclass(frozen=True)
class ReviewItem:
    id: int
    device_id: str
    reading: Reading
    manual: tuple[ManualPart, ...]
    patient: PatientDetails | None
    late: bool
    collector: Clinician | None  # signed in when it was taken (OBR-10)
    state: str
    status: str | None  # OBX-11 the EHR has now; None: nothing sent
    validator: Clinician | None
    needs_confirm: bool  # auto+confirm: sent R, a confirmation will send F
    awaiting_patient: bool  # wrong patient: waits for the right one
    control_ids: tuple[str, ...]
    reserved_control_id: str | None
    dedupe_key: str | None
    reason: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def waiting(self) -> bool:
        """Waiting for a clinician's decision (confirm or reject)."""
        return (self.state == PENDING or self.needs_confirm) and not self.awaiting_patient


class ItemView(TypedDict):
    """One review-list row for a person (``review list``, the page): patient masked unless revealed."""

    id: int
    device: str
    kind: str  # the device class ("manual" for hand entries)
    taken_at: str
    values: dict[str, str]  # metric -> "value unit"
    qualifiers: dict[str, str]  # qualifier -> answer display
    manual: list[dict[str, str]]  # attached manual entries' values
    patient: dict[str, str | None] | None  # {"mrn", "name"} (masked unless revealed)
    state: str
    status: str | None
    needs_confirm: bool
    awaiting_patient: bool
    waiting: bool
    validator: str | None
    collector: str | None
    control_ids: list[str]
    reason: str | None


def reading_values(reading: Reading) -> dict[str, str]:
    return {m.metric: f"{m.text_value()} {m.unit}" for m in reading.measurements if m.value is not None}


def qualifier_values(reading: Reading) -> dict[str, str]:
    table = tables().qualifiers
    return {q.key: table[q.key].answers[q.answer].display for q in reading.qualifiers}


def item_view(item: ReviewItem, *, reveal: bool = False) -> ItemView:
    patient: dict[str, str | None] | None = None
    if item.patient is not None:
        p = item.patient
        if reveal:
            patient = {"mrn": p.mrn, "name": " ".join(x for x in (p.family, p.given) if x) or None}
        else:
            patient = p.masked()
    return {
        "id": item.id,
        "device": item.device_id,
        "kind": item.reading.device_class.value,
        "taken_at": item.reading.observed_at.isoformat(),
        "values": reading_values(item.reading),
        "qualifiers": qualifier_values(item.reading),
        "manual": [{**reading_values(m.reading), **qualifier_values(m.reading)} for m in item.manual],
        "patient": patient,
        "state": item.state,
        "status": item.status,
        "needs_confirm": item.needs_confirm,
        "awaiting_patient": item.awaiting_patient,
        "waiting": item.waiting,
        "validator": item.validator.display() if item.validator else None,
        "collector": item.collector.display() if item.collector else None,
        "control_ids": list(item.control_ids),
        "reason": item.reason,
    }


# ------------------------------------------------------------------------------------------ the store

# Column names are constants of this module (never input): the f-strings below build no query from data.
_ITEM_COLUMNS = (
    "id, device_id, reading, manual, patient, late, collector, state, status, validator, needs_confirm,"
    " awaiting_patient, control_ids, reserved_control_id, dedupe_key, reason, created_at, updated_at"
)

_SELECT = "SELECT " + _ITEM_COLUMNS + " FROM items"  # noqa: S608 (constant column names)


def _json_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "model_dump"):
        return json.dumps(value.model_dump(mode="json"))
    return json.dumps(value)


@dataclass(frozen=True)
class Action:
    id: int
    item_id: int
    kind: str  # final | correct | wrong | refile | retract
    control_id: str
    created_at: datetime
    state: str  # due | waiting | done
    payload: dict[str, Any]

    @property
    def bodies(self) -> dict[str, bytes]:
        return {k: base64.b64decode(v) for k, v in self.payload.get("bodies", {}).items()}


class ReviewStore:
    """The durable review list (see the module docstring). Thread-safe; every write is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            os.close(host.open_private(path, os.O_RDWR | os.O_CREAT | NOFOLLOW))
        except OSError as exc:
            raise StoreError(f"cannot open the review list {path}: {explain(exc)}") from None
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA synchronous=FULL")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{path} was written by a newer vitals-agent (schema {version}; this version knows "
                    f"{SCHEMA_VERSION})"
                )
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS items (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, reading TEXT NOT NULL,
                    manual TEXT NOT NULL DEFAULT '[]', patient TEXT, late INTEGER NOT NULL DEFAULT 0,
                    collector TEXT, state TEXT NOT NULL, status TEXT, validator TEXT,
                    needs_confirm INTEGER NOT NULL DEFAULT 0, awaiting_patient INTEGER NOT NULL DEFAULT 0,
                    control_ids TEXT NOT NULL DEFAULT '[]', reserved_control_id TEXT UNIQUE,
                    dedupe_key TEXT, reason TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS actions (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, item_id INTEGER NOT NULL, kind TEXT NOT NULL,
                    control_id TEXT NOT NULL, created_at TEXT NOT NULL, state TEXT NOT NULL,
                    payload TEXT NOT NULL, done_at TEXT);
                CREATE INDEX IF NOT EXISTS items_state ON items (state);
                CREATE INDEX IF NOT EXISTS actions_state ON actions (state);
                """
            )
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the review list {path}: {explain(exc)}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"review list {self.path}: cannot {what}: {explain(exc)}") from None

    def _tx(self, what: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def run(db: sqlite3.Connection) -> _T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return self._run(what, run)

    # --- items -----------------------------------------------------------------------------------------
    def add(
        self,
        request: BuildRequest,
        *,
        collector: Clinician | None,
        state: str,
        status: str | None = None,
        validator: Clinician | None = None,
        needs_confirm: bool = False,
        control_ids: Sequence[str] = (),
        now: datetime,
    ) -> int:
        """A new item: the reading ``request`` builds a message from, its MSH-10 reserved for the item. With
        that MSH-10 already reserved, the existing item's id (idempotent: a held reading released twice
        after a crash is listed once)."""
        reading = request.reading

        def insert(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT id FROM items WHERE reserved_control_id = ?", (request.control_id,)
            ).fetchone()
            if row is not None:
                return int(row[0])
            stamp = now.astimezone(UTC).isoformat()
            cur = db.execute(
                "INSERT INTO items (device_id, reading, patient, late, collector, state, status, validator,"
                " needs_confirm, control_ids, reserved_control_id, dedupe_key, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request.device_id,
                    reading_to_json(reading),
                    _json_or_none(request.patient),
                    int(request.late),
                    _json_or_none(collector),
                    state,
                    status,
                    _json_or_none(validator),
                    int(needs_confirm),
                    json.dumps(list(control_ids)),
                    request.control_id,
                    reading.dedupe_key,
                    stamp,
                    stamp,
                ),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        return self._tx("add a reading", insert)

    @staticmethod
    def _item(row: Sequence[Any]) -> ReviewItem:
        return ReviewItem(
            id=int(row[0]),
            device_id=str(row[1]),
            reading=reading_from_json(row[2]),
            manual=tuple(ManualPart.from_json(m) for m in json.loads(row[3])),
            patient=PatientDetails.model_validate(json.loads(row[4])) if row[4] else None,
            late=bool(row[5]),
            collector=Clinician.model_validate(json.loads(row[6])) if row[6] else None,
            state=str(row[7]),
            status=row[8],
            validator=Clinician.model_validate(json.loads(row[9])) if row[9] else None,
            needs_confirm=bool(row[10]),
            awaiting_patient=bool(row[11]),
            control_ids=tuple(json.loads(row[12])),
            reserved_control_id=row[13],
            dedupe_key=row[14],
            reason=row[15],
            created_at=datetime.fromisoformat(row[16]),
            updated_at=datetime.fromisoformat(row[17]),
        )

    def get(self, item_id: int) -> ReviewItem | None:
        row = self._run(
            "read the review list",
            lambda db: db.execute(_SELECT + " WHERE id = ?", (item_id,)).fetchone(),
        )
        return self._item(row) if row is not None else None

    def items(self, *, limit: int = 200) -> list[ReviewItem]:
        """Newest first: everything still waiting, then the most recent others."""
        rows = self._run(
            "read the review list",
            lambda db: db.execute(
                _SELECT + " ORDER BY"
                " (state = 'pending' OR needs_confirm = 1 OR awaiting_patient = 1) DESC, id DESC LIMIT ?",
                (limit,),
            ).fetchall(),
        )
        out = []
        for row in rows:
            try:
                out.append(self._item(row))
            except (ValueError, KeyError, TypeError, ValidationError):
                log.warning(ev.REVIEW_ITEM_UNREADABLE, item_id=row[0])
        return out

    def waiting_summary(self) -> tuple[int, int, datetime | None]:
        """(pending, sent-awaiting-confirmation, oldest of them)."""
        row = self._run(
            "read the review list",
            lambda db: db.execute(
                "SELECT SUM(state = 'pending' AND awaiting_patient = 0),"
                " SUM(state = 'sent' AND needs_confirm = 1 AND awaiting_patient = 0),"
                " MIN(created_at) FROM items WHERE (state = 'pending' OR needs_confirm = 1)"
                " AND awaiting_patient = 0"
            ).fetchone(),
        )
        return int(row[0] or 0), int(row[1] or 0), datetime.fromisoformat(row[2]) if row[2] else None

    def has_dedupe(self, device_id: str, key: str) -> bool:
        row = self._run(
            "read the review list",
            lambda db: db.execute(
                "SELECT 1 FROM items WHERE device_id = ? AND dedupe_key = ? LIMIT 1", (device_id, key)
            ).fetchone(),
        )
        return row is not None

    def update(self, item_id: int, changes: Mapping[str, Any], now: datetime) -> None:
        self._tx("update the review list", lambda db: _apply(db, item_id, changes, now))

    def purge(self, older_than: datetime) -> int:
        """Forget settled items (sent, rejected, retracted; nothing waiting) not touched since then."""
        stamp = older_than.astimezone(UTC).isoformat()

        def run(db: sqlite3.Connection) -> int:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM items WHERE state != 'pending' AND needs_confirm = 0"
                    " AND awaiting_patient = 0 AND updated_at < ?"
                    " AND id NOT IN (SELECT item_id FROM actions WHERE state != 'done')",
                    (stamp,),
                )
            ]
            for item_id in ids:
                db.execute("DELETE FROM actions WHERE item_id = ?", (item_id,))
                db.execute("DELETE FROM items WHERE id = ?", (item_id,))
            return len(ids)

        return self._tx("purge the review list", run)

    # --- actions ---------------------------------------------------------------------------------------
    def reserve(
        self,
        actions: Sequence[tuple[int, str, str, datetime, str, Mapping[str, Any]]],
        now: datetime,
        item_changes: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Commit actions ``(item_id, kind, control_id, created_at, state, payload)`` and immediate item
        changes in one transaction; returns the action ids."""

        def run(db: sqlite3.Connection) -> list[int]:
            ids = []
            for item_id, kind, control_id, created, state, payload in actions:
                cur = db.execute(
                    "INSERT INTO actions (item_id, kind, control_id, created_at, state, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        item_id,
                        kind,
                        control_id,
                        created.astimezone(UTC).isoformat(),
                        state,
                        json.dumps(payload),
                    ),
                )
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
            for item_id, changes in (item_changes or {}).items():
                _apply(db, item_id, changes, now)
            return ids

        return self._tx("reserve a message", run)

    def actions(self, state: str) -> list[Action]:
        rows = self._run(
            "read the review list",
            lambda db: db.execute(
                "SELECT id, item_id, kind, control_id, created_at, state, payload FROM actions"
                " WHERE state = ? ORDER BY id",
                (state,),
            ).fetchall(),
        )
        return [
            Action(
                int(r[0]),
                int(r[1]),
                str(r[2]),
                str(r[3]),
                datetime.fromisoformat(r[4]),
                str(r[5]),
                json.loads(r[6]),
            )
            for r in rows
        ]

    def prepare(self, action_id: int, payload: Mapping[str, Any], created_at: datetime) -> None:
        """A waiting action (refile) gets its bodies and becomes due."""
        self._tx(
            "reserve a message",
            lambda db: db.execute(
                "UPDATE actions SET state = 'due', payload = ?, created_at = ? WHERE id = ?",
                (json.dumps(payload), created_at.astimezone(UTC).isoformat(), action_id),
            ),
        )

    def complete(self, action: Action, now: datetime) -> None:
        """The action's message is queued: mark it done and make its item changes, in one transaction."""

        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE actions SET state = 'done', done_at = ? WHERE id = ?",
                (now.astimezone(UTC).isoformat(), action.id),
            )
            changes = dict(action.payload.get("on_done", {}))
            if action.kind != "reassign":  # a reassignment sends nothing
                changes["append_control_id"] = action.control_id
            _apply(db, action.item_id, changes, now)

        self._tx("record a sent message", run)


def _apply(db: sqlite3.Connection, item_id: int, changes: Mapping[str, Any], now: datetime) -> None:
    """Item changes from a plain mapping (JSON-able: it is stored with the reserved action)."""
    sets: list[str] = ["updated_at = ?"]
    values: list[Any] = [now.astimezone(UTC).isoformat()]
    for key, value in changes.items():
        if key == "append_control_id":
            row = db.execute("SELECT control_ids FROM items WHERE id = ?", (item_id,)).fetchone()
            ids = json.loads(row[0]) if row else []
            if value not in ids:
                ids.append(value)
            sets.append("control_ids = ?")
            values.append(json.dumps(ids))
        elif key in ("state", "status", "reason", "reading", "manual", "patient", "validator", "collector"):
            sets.append(f"{key} = ?")
            values.append(value)
        elif key in ("needs_confirm", "awaiting_patient", "late"):
            sets.append(f"{key} = ?")
            values.append(int(bool(value)))
        else:  # pragma: no cover - a programming error
            raise ValueError(f"unknown review item field {key!r}")
    values.append(item_id)
    db.execute(f"UPDATE items SET {', '.join(sets)} WHERE id = ?", values)  # noqa: S608 (names above)


# ------------------------------------------------------------------------------------------ the desk


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    """What the pipeline builds one message from (the ORU and, with [fhir], the Bundle): a reading as it
    is accepted, or a reviewed one (F, C, W, a refile)."""

    device_id: str
    reading: Reading
    patient: PatientDetails | None
    late: bool
    control_id: str
    created_at: datetime
    review: ResultReview  # OBX-11/OBX-16/OBR-10 (FHIR: status and performer)
    also: tuple[Reading, ...] = ()  # manual entries of the same visit: further OBR groups / Observations
    revision: bool = False  # FHIR: the observations were sent before (update, not create)

    @property
    def fhir_status(self) -> str:
        return FHIR_STATUS[self.review.status]


class ReviewPipeline(Protocol):
    """The pipeline's side of the review: build the bodies, and queue them durably (idempotent)."""

    def build_reviewed(self, request: BuildRequest) -> dict[str, bytes]: ...

    async def commit_reviewed(
        self, device_id: str, control_id: str, bodies: Mapping[str, bytes], meta: Mapping[str, Any],
        state: Mapping[str, str] | None,
    ) -> None: ...  # fmt: skip


@dataclass
class ManualOutcome:
    item_id: int
    attached: bool  # joined a reading waiting for review (same visit)
    control_id: str | None  # the MSH-10 when sent on its own


@dataclass
class _Pending:
    refiles: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


@dataclass(eq=False)
class ReviewDesk:
    """The review's decisions: hold in ``confirm`` mode, register what was sent, and the clinician's
    confirm / reject / correct / wrong-patient / manual entries, each a durable reserved action."""

    data_dir: InitVar[Path]
    config: ReviewConfig
    _: KW_ONLY
    patients: PatientContextManager
    clinicians: ClinicianContextManager
    audit: AuditLog
    clock: Clock
    require_patient: bool = False

    def __post_init__(self, data_dir: Path) -> None:
        self.store = ReviewStore(data_dir / REVIEW_FILE)
        self.pipeline: ReviewPipeline | None = None
        self._lock: asyncio.Lock | None = None
        self._pending = _Pending()
        self._last_purge: float | None = None
        self.patients.listeners.append(self.patient_changed)

    @property
    def mode(self) -> str:
        return self.config.mode

    def close(self) -> None:
        for task in self._pending.tasks:
            task.cancel()
        self.store.close()

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _now(self) -> datetime:
        return self.clock.now()

    def _audit(self, event: str, **fields: Any) -> None:
        try:
            self.audit.record(event, **fields)
        except AuditError as exc:
            log.error(ev.AUDIT_NOT_WRITTEN, audit_event=event, error=str(exc))

    # --- the pipeline's side -------------------------------------------------------------------------
    def holds(self) -> bool:
        """Whether device readings wait for a clinician (``confirm`` mode)."""
        return self.config.mode == "confirm"

    def seen(self, device_id: str, key: str) -> bool:
        return self.store.has_dedupe(device_id, key)

    async def hold(self, request: BuildRequest) -> int:
        """``confirm`` mode: the reading waits for a clinician (durable); the confirmed message will carry
        the request's MSH-10 (reserved now, or earlier for a held reading being released)."""
        collector = self.clinicians.current()
        # On the event loop, like the audit record: no await between the reading being listed and the
        # device transport recording it as taken (a cancellation there would list it twice).
        item_id = self.store.add(request, collector=collector, state=PENDING, now=self._now())
        patient = request.patient
        self._audit(
            "review_waiting",
            item_id=item_id,
            device_id=request.device_id,
            patient_mrn=patient.mrn if patient else None,
            collector=collector.id if collector else None,
        )
        log.info(ev.REVIEW_WAITING, device=request.device_id, item_id=item_id)
        return item_id

    async def sent(self, request: BuildRequest) -> int | None:
        """``auto`` / ``auto+confirm``: list a reading that was just queued with ``R`` under the request's
        MSH-10 (so it can be confirmed, corrected or retracted); its collector is the request's OBR-10. A
        failure here never undoes the sending: logged, not raised."""
        try:  # on the loop: no await after the reading was queued (see hold)
            item_id = self.store.add(
                request,
                collector=request.review.collector,
                state=SENT,
                status="R",
                needs_confirm=self.config.mode == "auto+confirm",
                control_ids=(request.control_id,),
                now=self._now(),
            )
        except StoreError as exc:
            log.error(ev.REVIEW_NOT_LISTED, device=request.device_id, error=str(exc))
            return None
        return item_id

    # --- helpers -------------------------------------------------------------------------------------
    def _clinician(self, what: str) -> Clinician:
        clinician = self.clinicians.current()
        if clinician is None:
            raise NoClinicianError(
                f"{what} needs a signed-in clinician: scan a badge or run `vitals-agent clinician set`"
            )
        return clinician

    def _item(self, item_id: int) -> ReviewItem:
        item = self.store.get(item_id)
        if item is None:
            raise ReviewError(f"no review item {item_id} (see `vitals-agent review list`)")
        return item

    def _build(
        self,
        item: ReviewItem,
        review: ResultReview,
        *,
        control_id: str,
        created_at: datetime,
        revision: bool,
        reading: Reading | None = None,
        patient: PatientDetails | Literal["item"] | None = "item",
        manual: tuple[ManualPart, ...] | None = None,
    ) -> dict[str, Any]:
        """Build the bodies now; return the action payload holding them (base64) and the outbox meta."""
        if self.pipeline is None:  # pragma: no cover - wired by the service
            raise ReviewError("the review is not connected to the pipeline")
        reading = reading or item.reading
        parts = item.manual if manual is None else manual
        request = BuildRequest(
            device_id=item.device_id,
            reading=reading,
            also=tuple(p.reading for p in parts),
            patient=item.patient if patient == "item" else patient,
            late=item.late,
            control_id=control_id,
            created_at=created_at,
            review=review,
            revision=revision,
        )
        bodies = self.pipeline.build_reviewed(request)
        return {
            "bodies": {k: base64.b64encode(v).decode("ascii") for k, v in bodies.items()},
            "meta": {
                "device": item.device_id,
                "observed_at": reading.observed_at.isoformat(),
                "review": review.status,
            },
            "state": (
                {item.dedupe_key: json.dumps({"control_id": control_id})}
                if item.dedupe_key and item.state == PENDING
                else None
            ),
        }

    async def _execute(self, action: Action) -> None:
        """Queue a reserved action's message (unless the outbox has it already) and complete it."""
        if self.pipeline is None:  # pragma: no cover - wired by the service
            raise ReviewError("the review is not connected to the pipeline")
        await self.pipeline.commit_reviewed(
            action.payload.get("meta", {}).get("device", ""),
            action.control_id,
            action.bodies,
            action.payload.get("meta", {}),
            action.payload.get("state"),
        )
        await asyncio.to_thread(self.store.complete, action, self._now())

    async def _run_due(self) -> int:
        done = 0
        for action in await asyncio.to_thread(self.store.actions, "due"):
            await self._execute(action)
            done += 1
        return done

    async def resume(self) -> None:
        """At start: finish every reserved message a crash interrupted (same bytes, same MSH-10), then
        any refile whose right patient was set before the crash."""
        async with self._guard():
            count = await self._run_due()
        if count:
            log.info(ev.REVIEW_RESUMED, count=count)
        await self.run_refiles()

    # --- decisions -----------------------------------------------------------------------------------
    async def confirm(
        self,
        ids: Sequence[int] | None,
        origin: Origin,
    ) -> list[ReviewItem]:
        """Validate readings (``ids``; None = every reading waiting): sent with ``F`` and the signed-in
        clinician in OBX-16. Refused without a clinician."""
        async with self._guard():
            clinician = self._clinician("confirming readings")
            if ids is None:
                items = [i for i in await asyncio.to_thread(self.store.items, limit=10_000) if i.waiting]
                if not items:
                    raise ReviewError("no reading is waiting for review")
            else:
                items = [self._item(i) for i in ids]
                for item in items:
                    if not item.waiting:
                        raise ReviewError(_not_waiting(item))
            now = self._now()
            done = []
            for item in items:
                control_id = (
                    item.reserved_control_id
                    if item.state == PENDING and item.reserved_control_id
                    else new_control_id()
                )
                review = ResultReview(status="F", observer=clinician, collector=item.collector)
                payload = self._build(
                    item, review, control_id=control_id, created_at=now, revision=item.state == SENT
                )
                payload["on_done"] = {
                    "state": SENT,
                    "status": "F",
                    "validator": _json_or_none(clinician),
                    "needs_confirm": False,
                }
                (action_id,) = await asyncio.to_thread(
                    self.store.reserve, [(item.id, "final", control_id, now, "due", payload)], now
                )
                self._audit(
                    "review_confirmed",
                    **origin.audit_fields(
                        item_id=item.id,
                        control_id=control_id,
                        clinician=clinician.model_dump(),
                        patient_mrn=item.patient.mrn if item.patient else None,
                        resend=item.state == SENT,
                    ),
                )
                await self._execute(Action(action_id, item.id, "final", control_id, now, "due", payload))
                log.info(ev.REVIEW_CONFIRMED, item_id=item.id, control_id=control_id, channel=origin.channel)
                done.append(self._item(item.id))
            self.clinicians.touch()
            return done

    async def reject(
        self,
        item_id: int,
        reason: str,
        origin: Origin,
    ) -> ReviewItem:
        """A clinician rejects a reading: never sent (``confirm``), or posted as wrong with ``W`` when it
        was sent with ``R`` (``auto+confirm``). Manual entries riding with it are sent on their own."""
        reason = _reason(reason)
        async with self._guard():
            clinician = self._clinician("rejecting a reading")
            item = self._item(item_id)
            if not item.waiting:
                raise ReviewError(_not_waiting(item))
            now = self._now()
            common = origin.audit_fields(
                item_id=item.id,
                reason=reason,
                clinician=clinician.model_dump(),
                patient_mrn=item.patient.mrn if item.patient else None,
            )
            if item.state == PENDING:
                await asyncio.to_thread(
                    self.store.update, item.id, {"state": REJECTED, "reason": reason, "manual": "[]"}, now
                )
                self._audit("review_rejected", sent=False, **common)
                log.info(ev.REVIEW_REJECTED, item_id=item.id, channel=origin.channel)
                for part in item.manual:  # the clinician's own entries still go
                    await self._send_manual_alone(part, item.patient, now)
            else:
                control_id = new_control_id()
                review = ResultReview(status="W", observer=clinician, collector=item.collector)
                payload = self._build(item, review, control_id=control_id, created_at=now, revision=True)
                payload["on_done"] = {
                    "state": RETRACTED,
                    "status": "W",
                    "needs_confirm": False,
                    "reason": reason,
                }
                (action_id,) = await asyncio.to_thread(
                    self.store.reserve, [(item.id, "retract", control_id, now, "due", payload)], now
                )
                self._audit("review_rejected", sent=True, control_id=control_id, **common)
                await self._execute(Action(action_id, item.id, "retract", control_id, now, "due", payload))
                log.info(ev.REVIEW_REJECTED_SENT, item_id=item.id, control_id=control_id)
            self.clinicians.touch()
            return self._item(item.id)

    async def correct(
        self,
        item_id: int,
        values: Mapping[str, str],
        origin: Origin,
    ) -> ReviewItem:
        """A clinician corrects values (``metric=value`` in the metric's unit). Sent: re-sent with ``C`` on
        the corrected rows (same OBR-2/3, OBX-3/OBX-4). Still waiting: corrected in the list, audited."""
        async with self._guard():
            clinician = self._clinician("correcting a reading")
            item = self._item(item_id)
            if item.state in (REJECTED, RETRACTED) or item.awaiting_patient:
                raise ReviewError(f"review item {item.id} is {item.state}: nothing to correct")
            corrected, changed = _corrected(item.reading, values)
            now = self._now()
            old = {k: v for k, v in reading_values(item.reading).items() if k in changed}
            new = {k: v for k, v in reading_values(corrected).items() if k in changed}
            common = origin.audit_fields(
                item_id=item.id,
                clinician=clinician.model_dump(),
                patient_mrn=item.patient.mrn if item.patient else None,
                before=old,
                after=new,
            )
            if item.state == PENDING:
                await asyncio.to_thread(
                    self.store.update, item.id, {"reading": reading_to_json(corrected)}, now
                )
                self._audit("review_corrected", sent=False, **common)
            else:
                control_id = new_control_id()
                unchanged: Literal["R", "F"] = "F" if item.status in ("F", "C") else "R"
                review = ResultReview(
                    status="C",
                    observer=clinician,
                    collector=item.collector,
                    corrected=frozenset(changed),
                    unchanged=unchanged,
                )
                payload = self._build(
                    item, review, control_id=control_id, created_at=now, revision=True, reading=corrected
                )
                payload["on_done"] = {"status": "C", "reading": reading_to_json(corrected)}
                (action_id,) = await asyncio.to_thread(
                    self.store.reserve, [(item.id, "correct", control_id, now, "due", payload)], now
                )
                self._audit("review_corrected", sent=True, control_id=control_id, **common)
                await self._execute(Action(action_id, item.id, "correct", control_id, now, "due", payload))
            log.info(ev.REVIEW_CORRECTED, item_id=item.id, metrics=sorted(changed), channel=origin.channel)
            self.clinicians.touch()
            return self._item(item.id)

    async def wrong_patient(
        self,
        item_id: int,
        origin: Origin,
    ) -> ReviewItem:
        """The reading went to the wrong chart: ``W`` to that chart now, and the values to the right
        patient as soon as a different patient is set (both reserved in one transaction, so a crash in
        between loses neither). A reading still waiting just waits for the right patient."""
        async with self._guard():
            item = self._item(item_id)
            if item.state in (REJECTED, RETRACTED) or item.awaiting_patient:
                raise ReviewError(f"review item {item.id} is {item.state}: nothing to retract")
            clinician = self.clinicians.current()
            now = self._now()
            common = origin.audit_fields(
                item_id=item.id,
                clinician=clinician.model_dump() if clinician else None,
                patient_mrn=item.patient.mrn if item.patient else None,
            )
            wrong = item.patient.mrn if item.patient else None
            refile = {"wrong_mrn": wrong, "since": now.astimezone(UTC).isoformat()}
            if item.state == PENDING:
                await asyncio.to_thread(
                    self.store.reserve,
                    [(item.id, "reassign", new_control_id(), now, "waiting", refile)],
                    now,
                    {item.id: {"awaiting_patient": True}},
                )
                self._audit("review_wrong_patient", sent=False, **common)
            else:
                control_id = new_control_id()
                review = ResultReview(status="W", observer=clinician, collector=item.collector)
                payload = self._build(item, review, control_id=control_id, created_at=now, revision=True)
                payload["on_done"] = {"state": RETRACTED, "status": "W", "needs_confirm": False}
                refile_id = new_control_id()
                action_id, _ = await asyncio.to_thread(
                    self.store.reserve,
                    [
                        (item.id, "wrong", control_id, now, "due", payload),
                        (item.id, "refile", refile_id, now, "waiting", refile),
                    ],
                    now,
                    {item.id: {"awaiting_patient": True}},
                )
                self._audit("review_wrong_patient", sent=True, control_id=control_id, **common)
                await self._execute(Action(action_id, item.id, "wrong", control_id, now, "due", payload))
            log.info(ev.REVIEW_WRONG_PATIENT, item_id=item.id)
            if clinician is not None:
                self.clinicians.touch()
            result = self._item(item.id)
        await self.run_refiles()  # a different patient may already be set since (after a restart)
        return result

    # --- refiles (wrong patient -> the right one) ----------------------------------------------------
    def patient_changed(self, what: str, patient: Any) -> None:
        """PatientContextManager listener: a new patient may be the right one for a refile."""
        if what != "set":
            return
        self._pending.refiles = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a CLI tool): the next tick does it
        task = loop.create_task(self.run_refiles())
        self._pending.tasks.add(task)
        task.add_done_callback(self._pending.tasks.discard)

    async def run_refiles(self) -> int:
        """Send every waiting refile whose right patient is set now: a patient set after the retraction
        and different from the wrong one."""
        self._pending.refiles = False
        done = 0
        async with self._guard():
            ctx = self.patients.context()
            if ctx is None:
                return 0
            for action in await asyncio.to_thread(self.store.actions, "waiting"):
                since = datetime.fromisoformat(action.payload["since"])
                wrong = action.payload.get("wrong_mrn")
                if ctx.set_at < since or (wrong is not None and ctx.patient.mrn == wrong):
                    continue
                item = self._item(action.item_id)
                now = self._now()
                if action.kind == "reassign":  # nothing was sent: the item now waits for this patient
                    on_done = {"patient": _json_or_none(ctx.patient), "awaiting_patient": False}
                    done_action = replace(action, payload={**action.payload, "on_done": on_done})
                    await asyncio.to_thread(self.store.complete, done_action, now)
                    self._audit("review_refiled", item_id=item.id, sent=False, patient_mrn=ctx.patient.mrn)
                    done += 1
                    continue
                status = "F" if item.validator is not None else "R"
                review = ResultReview(
                    status=status,  # type: ignore[arg-type]
                    observer=item.validator,
                    collector=item.collector,
                    order_key=f"refile:{action.id}",
                )
                payload = self._build(
                    item,
                    review,
                    control_id=action.control_id,
                    created_at=now,
                    revision=False,
                    patient=ctx.patient,
                )
                payload["on_done"] = {
                    "state": SENT,
                    "status": status,
                    "patient": _json_or_none(ctx.patient),
                    "awaiting_patient": False,
                }
                await asyncio.to_thread(self.store.prepare, action.id, payload, now)
                self._audit(
                    "review_refiled",
                    item_id=item.id,
                    sent=True,
                    control_id=action.control_id,
                    patient_mrn=ctx.patient.mrn,
                    wrong_mrn=wrong,
                )
                await self._execute(replace(action, payload=payload, created_at=now, state="due"))
                log.info(ev.REVIEW_REFILED, item_id=item.id)
                done += 1
        return done

    # --- manual entries ------------------------------------------------------------------------------
    async def manual(
        self,
        values: Mapping[str, str],
        origin: Origin,
    ) -> ManualOutcome:
        """Values a clinician entered (``resp_rate=16 pain=3 arm=left_arm`` ...). They join the newest
        reading of the same patient still waiting for review from the last ``visit_window_minutes`` (one
        ORU per visit), else go at once on their own, validated (``F``) by the clinician who entered them."""
        measurements, qualifiers = parse_manual(values)
        async with self._guard():
            clinician = self._clinician("entering values")
            now = self._now()
            patient = self.patients.current_details(now)
            if patient is None and self.require_patient:
                raise ReviewError("no patient is set: set the patient before entering values")
            if patient is not None:
                self.patients.touch(now)
            reading = Reading(
                device=DeviceIdentity(id=MANUAL_DEVICE),
                device_class=DeviceClass.MANUAL,
                measurements=tuple(measurements),
                qualifiers=tuple(qualifiers),
                observed_at=now,
                received_at=now,
            )
            part = ManualPart(reading, clinician)
            target = self._visit_target(reading, patient, now)
            entered = {**reading_values(reading), **qualifier_values(reading)}
            common = origin.audit_fields(
                clinician=clinician.model_dump(),
                patient_mrn=patient.mrn if patient else None,
                values=entered,
            )
            if target is not None:
                changes: dict[str, Any] = {
                    "manual": json.dumps([p.to_json() for p in (*target.manual, part)])
                }
                sited = _with_sites(target.reading, reading)
                if sited is not target.reading:
                    changes["reading"] = reading_to_json(sited)
                await asyncio.to_thread(self.store.update, target.id, changes, now)
                self._audit("manual_entered", attached_to=target.id, **common)
                log.info(ev.REVIEW_MANUAL_ATTACHED, item_id=target.id, channel=origin.channel)
                self.clinicians.touch()
                return ManualOutcome(target.id, True, None)
            item_id, control_id = await self._send_manual_alone(part, patient, now, audit=common)
            log.info(ev.REVIEW_MANUAL_SENT, item_id=item_id, control_id=control_id, channel=origin.channel)
            self.clinicians.touch()
            return ManualOutcome(item_id, False, control_id)

    def _visit_target(
        self, reading: Reading, patient: PatientDetails | None, now: datetime
    ) -> ReviewItem | None:
        window = timedelta(minutes=self.config.visit_window_minutes)
        mrn = patient.mrn if patient else None
        candidates = [
            i
            for i in self.store.items(limit=500)
            if i.state == PENDING
            and not i.awaiting_patient
            and i.reading.device_class is not DeviceClass.MANUAL
            and (i.patient.mrn if i.patient else None) == mrn
            and now - i.reading.observed_at <= window
        ]
        if not candidates:
            return None
        wanted = {tables().qualifiers[q.key].applies_to for q in reading.qualifiers}
        matching = [i for i in candidates if i.reading.device_class.value in wanted]
        return max(matching or candidates, key=lambda i: (i.reading.observed_at, i.id))

    async def _send_manual_alone(
        self,
        part: ManualPart,
        patient: PatientDetails | None,
        now: datetime,
        audit: Mapping[str, Any] | None = None,
    ) -> tuple[int, str]:
        control_id = new_control_id()
        review = ResultReview(status="F", observer=part.entered_by, collector=part.entered_by)
        request = BuildRequest(
            device_id=MANUAL_DEVICE,
            reading=part.reading,
            patient=patient,
            late=False,
            control_id=control_id,
            created_at=now,
            review=review,
        )
        item_id = await asyncio.to_thread(
            self.store.add,
            request,
            collector=part.entered_by,
            state=PENDING,  # becomes sent when queued (the reserved action says so)
            now=now,
        )
        item = self._item(item_id)
        payload = self._build(item, review, control_id=control_id, created_at=now, revision=False)
        payload["on_done"] = {"state": SENT, "status": "F", "validator": _json_or_none(part.entered_by)}
        (action_id,) = await asyncio.to_thread(
            self.store.reserve, [(item_id, "final", control_id, now, "due", payload)], now
        )
        self._audit(
            "manual_entered",
            item_id=item_id,
            control_id=control_id,
            **(
                audit
                or {
                    "clinician": part.entered_by.model_dump(),
                    "channel": "review",
                    "patient_mrn": patient.mrn if patient else None,
                    "values": {**reading_values(part.reading), **qualifier_values(part.reading)},
                }
            ),
        )
        await self._execute(Action(action_id, item_id, "final", control_id, now, "due", payload))
        return item_id, control_id

    # --- upkeep and views ------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Once a second: refiles a patient change made due; forget settled items after keep_days."""
        if self._pending.refiles:
            await self.run_refiles()
        mono = self.clock.mono()
        if self._last_purge is None or mono - self._last_purge >= 3600:
            self._last_purge = mono
            cutoff = self._now() - timedelta(days=self.config.keep_days)
            with contextlib.suppress(StoreError):
                purged = await asyncio.to_thread(self.store.purge, cutoff)
                if purged:
                    log.info(ev.REVIEW_FORGOTTEN, count=purged, keep_days=self.config.keep_days)

    def list(self, *, reveal: bool = False, limit: int = 200) -> list[ItemView]:
        return [item_view(i, reveal=reveal) for i in self.store.items(limit=limit)]

    def snapshot(self) -> dict[str, Any]:
        """The review part of the status (no patient data)."""
        try:
            pending, awaiting, oldest = self.store.waiting_summary()
            problem = None
        except StoreError as exc:
            pending, awaiting, oldest, problem = 0, 0, None, str(exc)
        return {
            "mode": self.config.mode,
            "pending": pending,
            "awaiting_confirmation": awaiting,
            "oldest_waiting_at": oldest.isoformat() if oldest else None,
            "clinician": self.clinicians.snapshot(),
            "problem": problem,
        }


# ------------------------------------------------------------------------------------------ parsing


def _not_waiting(item: ReviewItem) -> str:
    if item.awaiting_patient:
        return f"review item {item.id} waits for the right patient (wrong patient): set the patient first"
    if item.state == SENT and item.status in ("F", "C"):
        return f"review item {item.id} is confirmed already (use `review correct` or `review wrong-patient`)"
    return f"review item {item.id} is not waiting for review (it is {item.state})"


def _reason(reason: str) -> str:
    text = " ".join(str(reason or "").split())
    if not text:
        raise ReviewInputError("a reason is required (--reason TEXT)")
    if len(text) > 200:
        raise ReviewInputError("the reason is longer than 200 characters")
    return text


def _metric_key(name: str) -> str:
    key = name.strip().lower()
    return METRIC_ALIASES.get(key, key)


def _decimal(metric: str, text: str) -> Decimal:
    info = tables().metric(metric)
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise ReviewInputError(f"{metric}: not a number") from None
    if not value.is_finite() or "e" in text.lower():
        raise ReviewInputError(f"{metric}: not a plain number")
    if not info.minimum <= value <= info.maximum:
        raise ReviewInputError(
            f"{metric}: outside the plausible range {info.minimum}..{info.maximum} {info.unit}"
        )
    return value


def parse_manual(values: Mapping[str, str]) -> tuple[list[Measurement], list[Qualifier]]:
    """``{"resp_rate": "16", "pain": "3", "arm": "left_arm"}`` -> measurements (MMEAS, canonical unit)
    and qualifiers. Raises :class:`ReviewError` naming the first bad entry (without patient data)."""
    measurements: list[Measurement] = []
    qualifiers: list[Qualifier] = []
    seen: set[str] = set()
    metrics, table = tables().metrics, tables().qualifiers
    for raw_name, raw_value in values.items():
        name = raw_name.strip().lower()
        text = str(raw_value).strip()
        if not text:
            continue  # an empty form field
        qkey = QUALIFIER_ALIASES.get(name, name)
        if qkey in table:
            answer = text.lower().replace(" ", "_").replace("-", "_")
            if answer not in table[qkey].answers:
                raise ReviewInputError(f"{qkey}: one of {', '.join(table[qkey].answers)}")
            if qkey in seen:
                raise ReviewInputError(f"{qkey} given twice")
            seen.add(qkey)
            qualifiers.append(Qualifier(key=qkey, answer=answer))
            continue
        key = _metric_key(name)
        info = metrics.get(key)
        if info is None or not info.manual:
            manual = sorted([*(k for k, i in metrics.items() if i.manual), *table])
            raise ReviewInputError(
                f"{raw_name!s}: not something to enter by hand (one of {', '.join(manual)})"
            )
        if key in seen:
            raise ReviewInputError(f"{key} given twice")
        seen.add(key)
        measurements.append(
            Measurement(metric=key, value=_decimal(key, text), unit=info.unit, method=MANUAL_METHOD)
        )
    if not (measurements or qualifiers):
        raise ReviewInputError("nothing entered: give at least one value, e.g. resp_rate=16 pain=3")
    return measurements, qualifiers


def _corrected(reading: Reading, values: Mapping[str, str]) -> tuple[Reading, set[str]]:
    """``reading`` with corrected values (metric=value in the value's unit); the metrics changed."""
    if not values:
        raise ReviewInputError("nothing to correct: give metric=value, e.g. bp_systolic=132")
    present = {m.metric: m for m in reading.measurements if m.value is not None}
    changes: dict[str, Measurement] = {}
    for name, text in values.items():
        key = _metric_key(name)
        if key not in present:
            raise ReviewInputError(
                f"{name}: this reading has no such value (it has {', '.join(sorted(present))})"
            )
        old = present[key]
        if tables().canonical_unit(old.unit) != tables().metric(key).unit:
            raise ReviewInputError(f"{key}: the reading is in {old.unit}; correct it in the device's unit")
        changes[key] = old.model_copy(update={"value": _decimal(key, str(text))})
    measurements = tuple(changes.get(m.metric, m) for m in reading.measurements)
    return reading.with_updates(measurements=measurements), set(changes)


def _with_sites(device_reading: Reading, manual: Reading) -> Reading:
    """The device reading with the body site a manual entry gives (arm for a cuff, site for a
    thermometer) on its values that name none."""
    table = tables().qualifiers
    for q in manual.qualifiers:
        info = table[q.key]
        if info.site and info.applies_to == device_reading.device_class.value:
            site = info.answers[q.answer].cwe
            measurements = tuple(
                m if m.site else m.model_copy(update={"site": site}) for m in device_reading.measurements
            )
            device_reading = device_reading.with_updates(measurements=measurements)
    return device_reading
