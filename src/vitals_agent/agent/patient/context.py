"""The room's patient context: who the next reading belongs to, for how long, and what waits for a patient.

One agent serves one room. The context is set by a wristband scan (``barcode`` channel), the CLI
(``cli``) or the control API (``api``); it ends on ``clear`` or after ``patient_timeout_minutes`` without a
reading (``expiry``). It is persisted in ``data_dir/patient_context.json`` (0600) so a restart keeps it
until it expires.

With ``require_patient = true`` a reading that arrives while no context is set is *held*: stored durably
in ``data_dir/held.sqlite3`` (0600), released with ``late_associated`` when a patient is set, or dropped
after ``hold_timeout_minutes`` (or by an operator) with an audit record.

Every change goes to the audit log with the patient's identifiers; the operational log only says *that*
something happened and through which channel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypedDict, TypeVar

import structlog
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from vitals_agent import host
from vitals_agent import log_events as ev
from vitals_agent.agent.clock import Clock, utc_now
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.patient.room import Records, RoomContext, RoomContextManager
from vitals_agent.agent.storage.audit import (
    CHANNEL_BARCODE,
    CHANNEL_EXPIRY,
    CHANNEL_TIMEOUT,
    READING_ACCEPTED,
    AuditError,
    AuditLog,
    reading_fields,
)
from vitals_agent.agent.storage.files import (
    Discarded,
    StoreDamagedError,
    StoreError,
    explain,
    is_damage,
    move_aside,
)
from vitals_agent.config.patient import PatientConfig
from vitals_agent.errors import VitalsAgentError
from vitals_agent.hl7.oru import new_control_id
from vitals_agent.models import (
    Attachment,
    Measurement,
    PatientInfo,
    PatientScan,
    Reading,
    ReadingFlag,
    person_text,
    required_person_text,
)
from vitals_agent.redact import mask_mrn

if TYPE_CHECKING:
    import asyncio

    from vitals_agent.hl7.oru import PatientIdentity

log = structlog.get_logger(__name__)

CONTEXT_FILE = "patient_context.json"
HELD_FILE = "held.sqlite3"
HELD_SCHEMA_VERSION = 1
_T = TypeVar("_T")
CHANNELS = frozenset({"cli", "api", "barcode"})
VERIFIED_EHR = "ehr"  # the EHR answered with this patient and a person confirmed it
VERIFIED_NO = "unverified"  # bound as typed while the EHR could not be asked (pdq_fallback = "typed")

# Control characters (C0, DEL, C1 including U+0085 NEL) and the Unicode line/paragraph separators: a
# receiver may take any of them for a line break. HL7 delimiters are refused in patient fields as well.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Lone surrogates: what Python makes of a byte that is not UTF-8 in a command-line argument.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class PatientError(VitalsAgentError):
    """Patient data that cannot be used (bad MRN, date, sex). The message never echoes the value."""


def check_text(value: str, what: str) -> None:
    """Refuse text that is not valid UTF-8 or holds a control character or line separator (ValueError)."""
    if _SURROGATE.search(value):
        raise ValueError(f"{what} is not valid UTF-8 text (check the terminal's character set)")
    if _CONTROL.search(value):
        raise ValueError(f"{what} contains a control character or line separator")


def _mrn(value: str) -> str:
    return required_person_text(value, "MRN", 64)


def _name(value: str) -> str | None:
    return person_text(value, "name", 80)


def _encounter(value: str) -> str | None:
    return person_text(value, "encounter", 64)


def _birth_date(value: str) -> str:
    if not re.fullmatch(r"\d{8}", value):
        raise ValueError("date of birth must be YYYYMMDD")
    try:
        born = date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise ValueError("date of birth is not a real date") from None
    if born.year < 1880 or born > datetime.now(UTC).date():
        raise ValueError("date of birth is out of range")
    return value


def _sex(value: str) -> str:
    value = value.upper()
    if value not in {"F", "M", "U", "O", "A", "N"}:
        raise ValueError("sex must be one of F, M, U (or O, A, N)")
    return value


def _identifier_type(value: str) -> str:
    if not re.fullmatch(r"[A-Z]{1,5}", value):
        raise ValueError("identifier type must be 1-5 capital letters (e.g. MR)")
    return value


def _authority(value: str) -> str:
    if len(value) > 200:
        raise ValueError("assigning authority is longer than 200 characters")
    if re.search(r"[|~\\\x00-\x1f\x7f]", value):
        raise ValueError("assigning authority contains a control character or one of | ~ \\")
    return value


class PatientDetails(BaseModel):
    """A patient as the room knows it. Field names match the ORU builder's ``PatientIdentity``. Each field
    names its check; an optional field's check sees only a value that is there."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mrn: Annotated[str, AfterValidator(_mrn)]
    family: Annotated[str, AfterValidator(_name)] | None = None
    given: Annotated[str, AfterValidator(_name)] | None = None
    birth_date: Annotated[str, AfterValidator(_birth_date)] | None = None  # YYYYMMDD
    sex: Annotated[str, AfterValidator(_sex)] | None = None  # F | M | U | O | A | N (HL7 table 0001)
    encounter: Annotated[str, AfterValidator(_encounter)] | None = None  # PV1-19
    identifier_type: Annotated[str, AfterValidator(_identifier_type)] = "MR"  # CX-5
    # CX-4 when the EHR named the patient's domain (a PDQ answer); None: [patient] assigning_authority
    assigning_authority: Annotated[str, AfterValidator(_authority)] | None = None

    @field_validator("assigning_authority", "birth_date", "sex", mode="before")
    @classmethod
    def _blank_is_absent(cls, value: object) -> object:
        """Surrounding white space dropped; an empty value is an absent one."""
        return (value.strip() or None) if isinstance(value, str) else value

    @classmethod
    def parse(cls, data: dict[str, Any]) -> PatientDetails:
        """Validate untrusted input. Raises :class:`PatientError` with a message that omits the values."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "patient"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] == "missing":
                msg = "required"
            elif err["type"].startswith("string_type"):
                msg = "must be a string"
            raise PatientError(f"{field}: {msg}") from None

    @classmethod
    def from_name(cls, mrn: str, name: str | None = None, **rest: Any) -> PatientDetails:
        """``name`` as ``FAMILY^GIVEN`` (the CLI form)."""
        family = given = None
        if name:
            family, _, given = name.partition("^")
        return cls.parse({"mrn": mrn, "family": family or None, "given": given or None, **rest})

    def to_identity(self) -> PatientIdentity:
        """The ORU builder's type (PID-3/5/7/8, PV1-19)."""
        from vitals_agent.hl7.oru import PatientIdentity

        return PatientIdentity(**self.model_dump())

    def to_info(self) -> PatientInfo:
        """The FHIR builder's type (a device's demographics: no identifier type or authority)."""
        shared = self.model_dump(include={"mrn", "birth_date", "sex", "encounter"})
        return PatientInfo(family_name=self.family, given_name=self.given, **shared)

    def masked(self) -> dict[str, str | None]:
        """What a room screen may show: the masked MRN (:func:`~vitals_agent.redact.mask_mrn`) and the
        initials."""
        shown = mask_mrn(self.mrn)
        initials = " ".join(f"{part[0]}." for part in (self.family, self.given) if part)
        return {"mrn": shown, "name": initials or None}


class PatientSnapshot(TypedDict):
    """The patient part of the status page / ``vitals-agent status`` (filled by the context manager)."""

    set: bool
    verified: str | None  # "ehr" (confirmed against the EHR), "unverified" (typed fallback), None (no PDQ)
    revealed: bool
    mrn: str | None  # masked ("•••178") unless revealed
    name: str | None  # initials unless revealed
    birth_date: str | None  # only when revealed
    sex: str | None  # only when revealed
    encounter: str | None  # only when revealed
    channel: str | None
    source: str | None
    client: str | None  # what the control API caller claimed to be (cli, barcode), if it said
    set_at: str | None
    expires_at: str | None
    require_patient: bool
    held: int
    oldest_held_at: str | None


@dataclass(frozen=True, kw_only=True)
class PatientContext(RoomContext):
    """The current context with its bookkeeping."""

    patient: PatientDetails
    verified: str | None = None  # VERIFIED_EHR, VERIFIED_NO (typed while the EHR could not be asked), None

    def expires_at(self, timeout: timedelta) -> datetime:
        return self.last_activity + timeout

    def to_json(self) -> dict[str, Any]:
        return {"patient": self.patient.model_dump(), **super().to_json(), "verified": self.verified}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PatientContext:
        return cls(
            patient=PatientDetails.model_validate(data["patient"]),
            **cls.fields_from_json(data),
            verified=data.get("verified"),
        )


@dataclass(frozen=True)
class Route:
    """What to do with an accepted reading: send bound (``patient``), send unbound, or it was held."""

    patient: PatientDetails | None
    held_id: int | None = None

    @property
    def held(self) -> bool:
        return self.held_id is not None


@dataclass(frozen=True)
class HeldReading:
    id: int
    device_id: str
    held_at: datetime
    reading: Reading
    control_id: str | None = None  # MSH-10 reserved when it was held


# A patient-context change: ("set", the patient) / ("cleared", None) / ("expired", None).
ContextListener = Callable[[str, "PatientDetails | None"], None]
# Hands a released reading to the pipeline: (device id, reading marked late-associated, patient,
# reserved MSH-10) -> the MSH-10 of the queued message, or None if it could not be queued (it stays held).
Releaser = Callable[[str, Reading, PatientDetails, str | None], Awaitable[str | None]]
# The same for a reading sent unbound after all (a patient confirmation was cancelled or expired).
UnboundReleaser = Callable[[str, Reading, str | None], Awaitable[str | None]]


# ------------------------------------------------------------------------------------------ serialisation


def reading_to_json(reading: Reading) -> str:
    """Lossless JSON for a reading (Decimal precision, raw bytes and attachments survive)."""
    data = reading.model_dump(mode="json", exclude={"measurements", "attachments", "raw"})
    data["measurements"] = [
        {
            **m.model_dump(mode="json", exclude={"value"}),
            "value": None if m.value is None else format(m.value, "f"),
        }
        for m in reading.measurements
    ]
    data["attachments"] = [
        {"name": a.name, "media_type": a.media_type, "data": a.data.hex()} for a in reading.attachments
    ]
    data["raw"] = reading.raw.hex()
    return json.dumps(data, separators=(",", ":"))


def reading_from_json(text: str) -> Reading:
    data = json.loads(text)
    data["measurements"] = [Measurement.model_validate(m) for m in data["measurements"]]
    data["attachments"] = [
        Attachment(name=a["name"], media_type=a["media_type"], data=bytes.fromhex(a["data"]))
        for a in data["attachments"]
    ]
    data["raw"] = bytes.fromhex(data["raw"])
    return Reading.model_validate(data)


# ------------------------------------------------------------------------------------------ held store


class HeldStore:
    """Readings waiting for a patient: a small SQLite database (0600, synchronous=FULL).

    Opening checks that the file is a held-readings store this version knows and that SQLite finds it
    intact (``quick_check``); otherwise :class:`StoreDamagedError` (the manager moves it aside). A store
    that cannot be used at all (:meth:`unavailable`) holds nothing: :meth:`add` refuses, the rest is empty.
    Errors while running are :class:`StoreError` with one line saying what is wrong, logged once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.problem: str | None = None
        self._unreadable: set[int] = set()
        self._db = self._open()

    @classmethod
    def unavailable(cls, path: Path, problem: str) -> HeldStore:
        store = cls.__new__(cls)
        store.path = path
        store._lock = threading.Lock()
        store._db = None
        store.problem = problem
        store._unreadable = set()
        return store

    def _open(self) -> sqlite3.Connection:
        path = self.path
        if path.is_dir() or path.is_symlink():
            raise StoreDamagedError(f"{path} is a directory or a link, not a held-readings store")
        try:
            if path.exists() and path.stat().st_size >= 16:
                with open(path, "rb") as fh:
                    if fh.read(16) != b"SQLite format 3\0":
                        raise StoreDamagedError(f"{path} is not an SQLite database")
            host.ensure_private_file(path)  # private before sqlite opens it
        except OSError as exc:
            raise StoreError(f"cannot open the held-readings store {path}: {explain(exc)}") from None
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version > HELD_SCHEMA_VERSION:
                raise StoreDamagedError(
                    f"{path} was written by a newer vitals-agent (schema {version}; this version knows "
                    f"{HELD_SCHEMA_VERSION})"
                )
            if tables and ("held" not in tables or not tables <= {"held", "sqlite_sequence"}):
                raise StoreDamagedError(
                    f"{path} is not a held-readings store (tables {', '.join(sorted(tables))})"
                )
            check = [str(r[0]) for r in db.execute("PRAGMA quick_check")]
            if check != ["ok"]:
                raise StoreDamagedError(f"{path} is damaged ({check[0][:200]})")
            db.execute(
                "CREATE TABLE IF NOT EXISTS held (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " device_id TEXT NOT NULL, held_at TEXT NOT NULL, reading TEXT NOT NULL, control_id TEXT)"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(held)")}
            if "control_id" not in columns:  # a store written before MSH-10s were reserved at hold time
                db.execute("ALTER TABLE held ADD COLUMN control_id TEXT")
            if version != HELD_SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version={HELD_SCHEMA_VERSION}")
        except StoreError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            if is_damage(exc):
                raise StoreDamagedError(f"{path}: {explain(exc)}") from None
            raise StoreError(f"cannot open the held-readings store {path}: {explain(exc)}") from None
        return db

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._db is None:
                raise StoreError(f"held readings unavailable: {self.problem}")
            try:
                result = fn(self._db)
            except sqlite3.Error as exc:
                error = f"held-readings store {self.path}: cannot {what}: {explain(exc)}"
                if self.problem is None:
                    log.error(ev.HELD_STORE_FAILING, error=error)
                self.problem = error
                raise StoreError(error) from None
            if self.problem is not None:
                log.info(ev.HELD_STORE_USABLE)
                self.problem = None
            return result

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def add(self, device_id: str, reading: Reading, held_at: datetime) -> int:
        # The MSH-10 is reserved now: a release interrupted by a crash (queued, but the held row not yet
        # removed) is released again with the same MSH-10, so the receiver can recognise the repeat.
        def insert(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO held (device_id, held_at, reading, control_id) VALUES (?, ?, ?, ?)",
                (device_id, held_at.astimezone(UTC).isoformat(), reading_to_json(reading), new_control_id()),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        return self._run("hold a reading", insert)

    def all(self) -> list[HeldReading]:
        """Every held reading, oldest first. A row that cannot be parsed is left in place, logged once."""
        if self._db is None:
            return []
        rows = self._run(
            "read held readings",
            lambda db: db.execute(
                "SELECT id, device_id, held_at, reading, control_id FROM held ORDER BY id"
            ).fetchall(),
        )
        out: list[HeldReading] = []
        for r in rows:
            try:
                out.append(
                    HeldReading(r[0], r[1], datetime.fromisoformat(r[2]), reading_from_json(r[3]), r[4])
                )
            except (ValueError, TypeError, KeyError, ValidationError):
                if r[0] not in self._unreadable:
                    self._unreadable.add(r[0])
                    log.warning(ev.HELD_READING_UNREADABLE, held_id=r[0])
        return out

    def times(self) -> dict[int, datetime]:
        """Held id -> when it was held (cheap: no reading is parsed)."""
        if self._db is None:
            return {}
        rows = self._run(
            "read held readings", lambda db: db.execute("SELECT id, held_at FROM held").fetchall()
        )
        out: dict[int, datetime] = {}
        for held_id, held_at in rows:
            with contextlib.suppress(ValueError, TypeError):
                out[int(held_id)] = datetime.fromisoformat(held_at)
        return out

    def remove(self, held_id: int) -> bool:
        if self._db is None:
            return False
        return self._run(
            "remove a held reading",
            lambda db: db.execute("DELETE FROM held WHERE id = ?", (held_id,)).rowcount > 0,
        )

    def clamp(self, now: datetime) -> int:
        """Set every hold time later than ``now`` (stored before the wall clock went back) to ``now``."""
        late = [held_id for held_id, at in self.times().items() if at > now]
        if late:
            stamp = now.astimezone(UTC).isoformat()
            self._run(
                "correct hold times",
                lambda db: db.executemany(
                    "UPDATE held SET held_at = ? WHERE id = ?", [(stamp, i) for i in late]
                ),
            )
        return len(late)

    def summary(self) -> tuple[int, datetime | None]:
        """How many are held and since when; (0, None) when the store is unavailable (status never fails)."""
        if self._db is None:
            return 0, None
        try:
            count, oldest = self._run(
                "count held readings",
                lambda db: db.execute("SELECT COUNT(*), MIN(held_at) FROM held").fetchone(),
            )
        except StoreError:
            return 0, None
        return int(count), datetime.fromisoformat(oldest) if oldest else None


# ------------------------------------------------------------------------------------------ manager


class PatientContextManager(RoomContextManager[PatientContext]):
    """Patient context of the room, its expiry, persistence and the hold queue."""

    records = Records(discarded="context_discarded", cleared="context_cleared", subject="patient_mrn")

    def __init__(
        self,
        data_dir: Path,
        config: PatientConfig,
        audit: AuditLog,
        *,
        now: Callable[[], datetime] = utc_now,
        clock: Clock | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.hold_timeout = timedelta(minutes=config.hold_timeout_minutes)
        self.releaser: Releaser | None = None
        self.unbound_releaser: UnboundReleaser | None = None
        # Set by the patient lookup (agent/patient/lookup.py): True while a confirmation is pending, when
        # every reading is held whatever require_patient says.
        self.pending_check: Callable[[datetime], bool] | None = None
        # Set by the patient lookup: a wristband scan starts a lookup instead of binding the room.
        self.scan_handler: Callable[[PatientDetails, Origin], None] | None = None
        # Called after the context changed: ("set", patient), ("cleared", None), ("expired", None). The
        # signed-in clinician ends with the patient; a blood-pressure series stops on a patient change.
        self.listeners: list[ContextListener] = []
        self._release_lock: asyncio.Lock | None = None  # created in the running loop (_releasing)
        self.quarantined: list[dict[str, str]] = []  # stores moved aside at start (for the status)
        host.private_dir(data_dir)
        # ``now`` alone (tests): a clock whose monotonic time follows it. The service passes a real Clock.
        clock = clock or Clock.following(now)
        timeout = timedelta(minutes=config.patient_timeout_minutes)
        super().__init__(data_dir / CONTEXT_FILE, PatientContext.from_json, audit, timeout, clock)
        self.held = self._open_held()
        # held id -> monotonic time it was held: the hold timeout is an age on the monotonic clock
        self._held_mono = {i: self.clock.mono_at(at) for i, at in self._held_times().items()}

    def close(self) -> None:
        super().close()
        self.held.close()

    def _subject_id(self, ctx: PatientContext) -> str:
        return ctx.patient.mrn

    def _log_discarded(self, discarded: Discarded) -> None:
        if discarded.move_error is not None:
            log.error(ev.PATIENT_CONTEXT_FILE_UNREADABLE, error=discarded.move_error)
        log.warning(ev.PATIENT_CONTEXT_FILE_MOVED_ASIDE, path=str(self._file), moved_to=discarded.moved_text)

    def _log_not_saved(self, error: str) -> None:
        log.warning(ev.PATIENT_ACTIVITY_NOT_SAVED, error=error)

    def _open_held(self) -> HeldStore:
        """Open the held-readings store on its own: a damaged one is moved aside (kept, audited) and an
        empty one takes its place; one that cannot be opened at all leaves the agent running without
        holding (readings that must wait for a patient are then refused, loudly)."""
        path = self.data_dir / HELD_FILE
        try:
            return HeldStore(path)
        except StoreDamagedError as exc:
            reason = str(exc)
            try:
                moved = move_aside(path, sidecars=("-journal", "-wal", "-shm"))
            except OSError as oexc:
                problem = f"{reason}; and it could not be moved aside: {explain(oexc)}"
                log.error(ev.HELD_STORE_UNUSABLE, error=problem)
                return HeldStore.unavailable(path, problem)
            log.warning(
                ev.HELD_STORE_MOVED_ASIDE,
                reason=reason,
                moved_to=str(moved),
            )
            try:
                self.audit.record(
                    "store_quarantined",
                    channel="startup",
                    store="held readings",
                    path=str(path),
                    moved_to=str(moved),
                    reason=reason,
                )
            except AuditError as aexc:
                log.error(ev.AUDIT_NOT_WRITTEN, audit_event="store_quarantined", error=str(aexc))
            self.quarantined.append({"store": "held readings", "moved_to": str(moved), "reason": reason})
        except StoreError as exc:
            log.error(ev.HELD_STORE_UNUSABLE, error=str(exc))
            return HeldStore.unavailable(path, str(exc))
        try:
            return HeldStore(path)
        except StoreError as exc:
            log.error(ev.HELD_STORE_UNUSABLE, error=str(exc))
            return HeldStore.unavailable(path, str(exc))

    def _held_times(self) -> dict[int, datetime]:
        try:
            return self.held.times()
        except StoreError:
            return {}

    def _held_age(self, item: HeldReading, mono: float) -> float:
        held = self._held_mono.get(item.id)
        if held is None:
            held = self._held_mono[item.id] = self.clock.mono_at(item.held_at)
        return mono - held

    # --- context -----------------------------------------------------------------------------------
    def set(
        self,
        patient: PatientDetails,
        origin: Origin,
        *,
        now: datetime | None = None,
        verified: str | None = None,
    ) -> PatientContext:
        """Make ``patient`` the room's patient (replacing any other). Audited; persisted. ``verified``:
        VERIFIED_EHR, VERIFIED_NO or None (no PDQ)."""
        now = now or self._now()
        previous = self._context
        context = PatientContext(patient=patient, **self._stamps(origin, now), verified=verified)
        self._start(
            context,
            "context_set",
            patient=patient.model_dump(),
            replaced_mrn=previous.patient.mrn if previous else None,
            expires_at=self._expires(context),
            **origin.caller,
            **({"verified": verified} if verified is not None else {}),
        )
        log.info(ev.PATIENT_SET, channel=origin.channel, source=origin.source, replaced=previous is not None)
        self._notify("set", patient)
        return context

    def _notify(self, what: str, patient: PatientDetails | None) -> None:
        for listener in list(self.listeners):
            try:
                listener(what, patient)
            except Exception:  # a listener's bug must not undo or block a patient change
                log.exception(ev.PATIENT_LISTENER_FAILED, change=what)

    def clear(self, origin: Origin) -> bool:
        """End the context. Returns False if none was set (still audited, as an attempt)."""
        was_set = self._clear(origin)
        log.info(ev.PATIENT_CLEARED, channel=origin.channel, was_set=was_set)
        if was_set:
            self._notify("cleared", None)
        return was_set

    def _expired(self, ctx: PatientContext, now: datetime) -> None:
        idle = (now - ctx.last_activity).total_seconds() / 60
        self.audit.record(
            "context_expired",
            channel=CHANNEL_EXPIRY,
            patient_mrn=ctx.patient.mrn,
            last_activity=ctx.last_activity,
            idle_minutes=round(idle, 1),
        )
        log.info(ev.PATIENT_EXPIRED, idle_minutes=round(idle, 1))
        self._notify("expired", None)

    def current_details(self, now: datetime | None = None) -> PatientDetails | None:
        ctx = self.context(now)
        return ctx.patient if ctx else None

    def current(self, now: datetime | None = None) -> PatientIdentity | None:
        """The patient for a message built now (None = unbound). Does not count as activity."""
        details = self.current_details(now)
        return details.to_identity() if details else None

    def expires_at(self, now: datetime | None = None) -> datetime | None:
        ctx = self.context(now)
        return self._expires(ctx) if ctx else None

    # --- readings ----------------------------------------------------------------------------------
    def route(self, device_id: str, reading: Reading, now: datetime | None = None) -> Route:
        """Decide for one accepted reading: bound to the current patient (and touch), unbound, or held."""
        now = now or self._now()
        details = self.current_details(now)
        if details is not None:
            self.touch(now)
            return Route(details)
        pending = self.pending_check is not None and self.pending_check(now)
        if not (pending or self.config.require_patient):
            return Route(None)
        held_id = self.held.add(device_id, reading, now)
        self._held_mono[held_id] = self.clock.mono_at(now)
        self.audit.record(
            READING_ACCEPTED,
            **reading_fields(
                device_id=device_id, control_id=None, reading=reading, patient=None, disposition="held"
            ),
        )
        reason = "patient confirmation pending" if pending else "no patient set"
        self.audit.record("reading_held", held_id=held_id, device_id=device_id, reason=reason)
        if pending:
            log.info(ev.HELD_UNTIL_CONFIRMED, device=device_id, held_id=held_id)
        else:
            log.info(ev.HELD_UNTIL_PATIENT, device=device_id, held_id=held_id)
        return Route(None, held_id=held_id)

    def expire_held(self, now: datetime | None = None) -> int:
        """Drop held readings older than ``hold_timeout_minutes`` (audited). Returns how many."""
        mono = self.clock.mono_at(now or self._now())
        limit = self.hold_timeout.total_seconds()
        items = self.held.all()
        self._held_mono = {i.id: self._held_mono.get(i.id, self.clock.mono_at(i.held_at)) for i in items}
        dropped = self._drop_held(
            (item for item in items if self._held_age(item, mono) >= limit),
            channel=CHANNEL_TIMEOUT,
            reason=f"no patient within {self.config.hold_timeout_minutes:g} minutes",
        )
        if dropped:
            log.warning(ev.HELD_DROPPED, count=dropped)
        return dropped

    def discard_held(self, origin: Origin) -> int:
        """An operator discards every held reading (audited)."""
        count = self._drop_held(self.held.all(), **origin.audit_fields(reason="discarded by operator"))
        if count:
            log.info(ev.HELD_DISCARDED, count=count, channel=origin.channel)
        return count

    def _unhold(self, item: HeldReading) -> bool:
        """Forget a held reading (its row and its hold time); False when it was gone already."""
        removed = self.held.remove(item.id)
        self._held_mono.pop(item.id, None)
        return removed

    def _released(self, item: HeldReading, control_id: str, mrn: str | None) -> None:
        """A held reading is queued (to the patient ``mrn``, or unbound): no longer held, audited."""
        self._unhold(item)
        self.audit.record(
            "held_released",
            held_id=item.id,
            device_id=item.device_id,
            control_id=control_id,
            patient_mrn=mrn,
            held_at=item.held_at,
        )

    def _drop_held(self, items: Iterable[HeldReading], **why: Any) -> int:
        """Remove held readings, one ``held_dropped`` audit record each (``why``: channel, reason ...)."""
        count = 0
        for item in items:
            if self._unhold(item):
                count += 1
                self.audit.record(
                    "held_dropped",
                    held_id=item.id,
                    device_id=item.device_id,
                    **why,
                    held_at=item.held_at,
                    observed_at=item.reading.observed_at,
                )
        return count

    def _releasing(self) -> asyncio.Lock:
        """The lock that lets one release run at a time (created in the running loop)."""
        import asyncio

        if self._release_lock is None:
            self._release_lock = asyncio.Lock()
        return self._release_lock

    async def release_held(self, now: datetime | None = None) -> int:
        """Send what was held to the current patient, oldest first, marked late-associated."""
        if self.releaser is None:
            return 0
        released = 0
        async with self._releasing():
            now = now or self._now()
            self.expire_held(now)
            for item in self.held.all():
                details = self.current_details(now)
                if details is None:
                    break
                reading = item.reading
                if ReadingFlag.LATE_ASSOCIATED not in reading.flags:
                    reading = reading.with_updates(flags=(*reading.flags, ReadingFlag.LATE_ASSOCIATED))
                control_id = await self.releaser(item.device_id, reading, details, item.control_id)
                if control_id is None:
                    break  # could not be queued: stays held, retried on the next release
                self._released(item, control_id, details.mrn)
                released += 1
            if released:
                self.touch(now)
                log.info(ev.HELD_RELEASED, count=released)
        return released

    async def release_held_unbound(self) -> int:
        """Send what was held as unbound readings (a confirmation was cancelled or expired and
        ``require_patient`` is off). Only while no patient is set and nothing is pending."""
        if self.unbound_releaser is None:
            return 0
        released = 0
        async with self._releasing():
            for item in self.held.all():
                now = self._now()
                pending = self.pending_check is not None and self.pending_check(now)
                if self.current_details(now) is not None or pending or self.config.require_patient:
                    break
                control_id = await self.unbound_releaser(item.device_id, item.reading, item.control_id)
                if control_id is None:
                    break
                self._released(item, control_id, None)
                released += 1
            if released:
                log.info(ev.HELD_RELEASED_UNBOUND, count=released)
        return released

    # --- async entry points for the service, the control API and the barcode driver -----------------
    async def apply_set(
        self, patient: PatientDetails, origin: Origin, *, verified: str | None = None
    ) -> PatientContext:
        """:meth:`set`, then release what was held for a patient."""
        ctx = self.set(patient, origin, verified=verified)
        await self.release_held()
        return ctx

    async def on_scan(self, scan: PatientScan) -> None:
        """A wristband scan from a barcode device sets the room's patient."""
        try:
            details = PatientDetails.parse({"mrn": scan.mrn, "identifier_type": self.config.identifier_type})
        except PatientError as exc:
            log.warning(ev.PATIENT_SCAN_NOT_USABLE, device=scan.device_id, error=str(exc))
            self.audit.record("scan_rejected", device_id=scan.device_id, reason=str(exc), raw=scan.raw)
            return
        self.audit.record("scan", device_id=scan.device_id, mrn=scan.mrn, raw=scan.raw)
        log.info(ev.PATIENT_SCANNED, device=scan.device_id)
        origin = Origin(CHANNEL_BARCODE, source=scan.device_id)
        if self.scan_handler is not None:
            self.scan_handler(details, origin)
            return
        await self.apply_set(details, origin)

    def tick(self, now: datetime | None = None) -> None:
        """Call periodically: expires the context and old held readings even when no reading comes."""
        now = now or self._now()
        self.context(now)
        self.save_activity()
        # No query at all: the held readings are loaded only when the oldest is due (monotonic ages).
        if self._held_mono:
            oldest = min(self._held_mono.values())
            if self.clock.mono_at(now) - oldest >= self.hold_timeout.total_seconds():
                self.expire_held(now)

    def clock_stepped(self, step: float, now: datetime | None = None) -> None:
        """The wall clock stepped by ``step`` seconds (clock.py). Ages do not change (they are monotonic);
        after a backward step, stored times that now lie in the future are clamped to now, so a restart
        does not stretch the context or the holds by the length of the step."""
        if step >= 0:
            return
        now = now or self._now()
        ctx = self._context
        if ctx is not None and (ctx.set_at > now or ctx.last_activity > now):
            self._context = dataclasses.replace(
                ctx, set_at=min(ctx.set_at, now), last_activity=min(ctx.last_activity, now)
            )
            self._activity_unsaved = True
            self.save_activity()
        try:
            clamped = self.held.clamp(now)
        except StoreError:
            clamped = 0
        if clamped:
            log.info(ev.HELD_TIMES_CORRECTED, count=clamped)

    def snapshot(self, now: datetime | None = None, *, reveal: bool = False) -> PatientSnapshot:
        """The patient part of the status (masked unless ``reveal``)."""
        now = now or self._now()
        ctx = self.context(now)
        count, oldest = self.held.summary()
        snap: PatientSnapshot = {
            "set": ctx is not None,
            "verified": ctx.verified if ctx else None,
            "revealed": reveal and ctx is not None,
            "mrn": None,
            "name": None,
            "birth_date": None,
            "sex": None,
            "encounter": None,
            "channel": ctx.channel if ctx else None,
            "source": ctx.source if ctx else None,
            "client": ctx.client if ctx else None,
            "set_at": ctx.set_at.isoformat() if ctx else None,
            "expires_at": self._expires(ctx).isoformat() if ctx else None,
            "require_patient": self.config.require_patient,
            "held": count,
            "oldest_held_at": oldest.isoformat() if oldest else None,
        }
        if ctx is not None:
            p = ctx.patient
            if reveal:
                snap["mrn"] = p.mrn
                snap["name"] = " ".join(x for x in (p.family, p.given) if x) or None
                snap["birth_date"] = p.birth_date
                snap["sex"] = p.sex
                snap["encounter"] = p.encounter
            else:
                masked = p.masked()
                snap["mrn"] = masked["mrn"]
                snap["name"] = masked["name"]
        return snap
