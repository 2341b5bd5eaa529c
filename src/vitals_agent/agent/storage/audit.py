"""The audit trail: an append-only JSON-lines file, mode 0600; every record is on disk before it counts.

This is the *only* place where patient identifiers are written. The operational log (structlog) names
devices, channels and control ids; the audit log says which patient a reading was filed to, who set or
cleared the room's patient context and through which channel (``cli``, ``api``, ``barcode``, ``expiry``),
and what the EHR answered for every message (MSH-10 and ACK code).

Each line is one JSON object: ``{"ts": ISO-8601 UTC, "seq": n, "prev": sha256, "event": name, ...}``.
``seq`` goes on from the last record, across restarts and rotations. ``prev`` is the SHA-256 of the line
before it (:mod:`.audit_chain`): changing, removing or reordering a record breaks the chain, and
``vitals-agent audit verify`` says where. The file is opened with ``O_APPEND`` and never rewritten or
truncated; the agent rotates it itself by size or age and deletes rotated files past the retention
(``[audit]``), recording both in the trail. Do not rotate it with an external tool.

Two ways a record gets to disk, one file and one order:

* :meth:`AuditLog.record` (context changes, operator actions, refusals: rare) appends the line and fsyncs
  it before returning.
* The records of the reading path (``reading_accepted`` and ``message_sent``, one of each per reading) are
  built with :meth:`AuditLog.make` and committed **in the same SQLite transaction** as the change they
  describe (the outbox row, its removal after the ACK): the outbox's ``audit_pending`` table, the
  :class:`AuditJournal`. "Accepted" therefore means the reading and its audit record are on disk together,
  for one fsync. :meth:`AuditLog.flush_journal` then appends the committed rows to this file in commit order
  (right after the commit: a reader of the file sees them at once), :meth:`AuditLog.sync_journal` fsyncs
  the file now and then (a batch at a time) and only then lets the journal forget the rows; after a crash
  :meth:`AuditLog.attach` appends what the file lacks (rows already in its tail are not written twice).
  :meth:`AuditLog.record` first appends the committed rows, so the file's order is the order of events.

:meth:`AuditLog._append` is the one place that writes lines (``seq``, the cross-process lock): a chained or
rotated log changes that method only.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import structlog

from vitals_agent import host
from vitals_agent import log_events as ev
from vitals_agent.agent.storage import audit_chain as chain
from vitals_agent.agent.storage.files import explain
from vitals_agent.config.audit import AuditConfig
from vitals_agent.errors import VitalsAgentError
from vitals_agent.host import lock as host_lock
from vitals_agent.models import Reading

log = structlog.get_logger(__name__)

AUDIT_FILE = "audit.jsonl"
JOURNAL_SYNC_SECONDS = 2.0  # longest a committed record waits for the file's fsync (it is on disk already)
JOURNAL_SYNC_ROWS = 512  # ... or this many of them

# Channels through which a patient context can change.
CHANNEL_CLI = "cli"
CHANNEL_API = "api"
CHANNEL_BARCODE = "barcode"
CHANNEL_EXPIRY = "expiry"
CHANNEL_TIMEOUT = "timeout"


class AuditError(VitalsAgentError):
    """The audit record could not be written durably (disk full, permissions)."""


def _default(value: object) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit record not yet in the file: its time and ``{"event": ..., fields...}`` as JSON text.

    Built by :meth:`AuditLog.make`; committed by the outbox with the change it describes."""

    ts: str
    body: str

    def line(self, seq: int) -> str:
        """The file's line: exactly ``json.dumps({"ts": ts, "seq": seq, "event": ..., ...})``."""
        return f'{{"ts": {json.dumps(self.ts)}, "seq": {seq}, {self.body[1:]}\n'


class AuditJournal(Protocol):
    """Committed audit records waiting to reach the file (the outbox's ``audit_pending`` table)."""

    def audit_rows(self, after_id: int = 0, limit: int = 1000) -> list[tuple[int, AuditRecord]]:
        """Committed records with ``id > after_id``, in commit (id) order."""
        ...

    def audit_done(self, upto_id: int) -> None:
        """Forget the records up to ``upto_id``: the file has them on disk."""
        ...


def _canonical(entry: Mapping[str, Any]) -> str:
    """A record without its ``seq`` and ``prev`` (which a replay renumbers and rechains), to recognise it
    in the file."""
    return json.dumps({k: v for k, v in entry.items() if k not in ("seq", "prev")}, sort_keys=True)


def _seq_of(line: bytes) -> int | None:
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


PRUNE_CHECK_SECONDS = 3600.0  # how often rotated files are checked against the retention


def write_private(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, mode 0600 from the first byte, fsync'd (file and
    directory). The one writer of the agent's small private state files (patient context, control token)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = host.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    host.replace_file(tmp, path)


class AuditLog:
    """Append-only, fsync'd JSON-lines audit file. Thread-safe; each call is one durable record."""

    def __init__(
        self, path: Path, *, now: Callable[[], datetime] = _utc_now, policy: AuditConfig | None = None
    ) -> None:
        """``policy``: rotation and retention (the running agent's ``[audit]``); None (the operator tools):
        never rotate, only follow a rotation the agent made."""
        self.path = path
        self._now = now
        self.policy = policy
        self._lock = threading.Lock()
        try:
            host.private_dir(path.parent)
            fd = host.open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # an existing one: tightened
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {path}: {explain(exc)}") from None
        self._fd: int | None = fd
        self._ino = os.fstat(fd).st_ino  # another writer that rotated the file leaves us on the old one
        self._seq, self._prev = self._tail_state()
        self._size = os.fstat(fd).st_size  # where our last record ended: a bigger file had another writer
        self._head_fd: int | None = None
        self._first_ts: tuple[int, datetime | None] | None = None  # (inode, ts of its first record)
        self._pruned_at = -PRUNE_CHECK_SECONDS
        self._rotate_failing = False
        self._rotate_retry_at = 0.0
        self.journal: AuditJournal | None = None
        self._written = 0  # the last journal row appended to the file
        self._synced = 0  # ... and fsynced
        self._unsynced_since: float | None = None  # monotonic time of the first appended, unsynced row
        self.fsyncs = 0  # fsyncs of the file (bench/bench_ward.py counts them)
        self._flush_failing = False

    @classmethod
    def in_dir(
        cls, data_dir: Path, *, now: Callable[[], datetime] = _utc_now, policy: AuditConfig | None = None
    ) -> AuditLog:
        return cls(data_dir / AUDIT_FILE, now=now, policy=policy)

    def _tail_state(self) -> tuple[int, str]:
        """``seq`` of the last record and the hash of the last line (of the newest rotated file when the
        active one is empty; the genesis hash for a new trail)."""
        source = self.path
        last = chain.last_line(source)
        if last is None:
            older = [p for p in chain.trail_files(self.path.parent) if p.name != AUDIT_FILE]
            if not older:
                return 0, chain.GENESIS
            source, last = older[-1], chain.last_line(older[-1])
            if last is None:
                return 0, chain.GENESIS
        seq = _seq_of(last)
        if seq is None:  # a torn or legacy last line: the last record's seq plus the lines after it
            tail = [line for line in chain.tail_lines(source, 256) if line.strip()]
            for after, line in enumerate(reversed(tail)):
                found = _seq_of(line)
                if found is not None:
                    seq = found + after
                    break
            else:
                seq = self._count_lines() if source == self.path else len(tail)
        return seq, chain.line_hash(last)

    def _count_lines(self) -> int:
        with open(self.path, "rb") as fh:
            return sum(1 for _ in fh)

    def detach(self) -> None:
        """Sync what the journal gave the file and stop taking from it (before its outbox closes)."""
        if self.journal is not None:
            with contextlib.suppress(AuditError):
                self.sync_journal()
            self.journal = None

    def close(self) -> None:
        self.detach()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._head_fd is not None:
                os.close(self._head_fd)
                self._head_fd = None

    def make(self, event: str, **fields: Any) -> AuditRecord:
        """A record to commit with a queue change (see the module docstring); not written here."""
        body = json.dumps({"event": event, **fields}, default=_default, ensure_ascii=False)
        return AuditRecord(self._now().astimezone(UTC).isoformat(), body)

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record and fsync it. Returns the record as written. Raises :class:`AuditError`."""
        rec = self.make(event, **fields)
        last = self.append_record(rec, event)
        return {"ts": rec.ts, "seq": last, "event": event, **fields}

    def append_record(self, rec: AuditRecord, event: str = "") -> int:
        """Append a built record and fsync it, after the journal's committed records (the file keeps the
        order of events). Returns its ``seq``. Raises :class:`AuditError`."""
        with self._lock:
            try:
                pending = self._journal_rows()
                last = self._append([*(r for _, r in pending), rec], event)
            except (OSError, VitalsAgentError) as exc:
                reason = _reason(exc)
                log.error(ev.AUDIT_WRITE_FAILED, audit_event=event, error=reason)
                if isinstance(exc, AuditError):
                    raise
                raise AuditError(f"cannot write audit log {self.path}: {reason}") from None
            if pending:
                self._written = pending[-1][0]
            if self._written > self._synced:
                self._synced = self._written
                self._unsynced_since = None
            done = self._synced
        self._forget(done)
        return last

    def _append(self, records: Sequence[AuditRecord], event: str = "", *, sync: bool = True) -> int:
        """Append lines (the file's one writer; call with ``self._lock`` held); fsync unless ``sync`` is
        False. Returns the last ``seq`` written. Raises OSError (and AuditError when closed)."""
        if self._fd is None:
            raise AuditError("audit log is closed")
        try:
            # The agent and the operator tools (``vitals-agent outbox``) append to the same file: one
            # writer at a time; ``seq`` and the chain are read again when another process wrote since our
            # last record, and a file another process rotated away is left for the new one.
            self._lock_file()
            size = os.fstat(self._fd).st_size
            if size != self._size:
                if size and not self._ends_with_newline(size):
                    os.write(self._fd, b"\n")  # a torn last line (a crash mid-write) stays a line of its own
                    size += 1
                self._seq, self._prev = self._tail_state()
            now = self._now()
            records = [*self._rotate(size, now), *records]
            fd = self._fd
            size = os.fstat(fd).st_size
            seq, prev = self._seq, self._prev
            lines = []
            for rec in records:
                seq += 1
                line = chain.chained(rec.line(seq), prev)
                prev = chain.line_hash(line)
                lines.append(line)
            data = "".join(lines).encode()
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            if sync:
                os.fsync(fd)
                self.fsyncs += 1
            self._seq, self._prev = seq, prev
            self._size = size + written
            self._write_head()
        finally:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    host_lock.unlock(self._fd)
        return self._seq

    def _lock_file(self) -> None:
        """Take the cross-process lock on the active file (following a rotation another writer made)."""
        while True:
            assert self._fd is not None
            host_lock.lock_exclusive(self._fd)
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == self._ino:
                return
            # rotated (or removed) by another process: take the new file, read its tail
            fd = host.open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            with contextlib.suppress(OSError):
                host_lock.unlock(self._fd)
            os.close(self._fd)
            self._fd, self._ino, self._size = fd, os.fstat(fd).st_ino, -1

    def _rotate(self, size: int, now: datetime) -> list[AuditRecord]:
        """Rotate (size, age) and prune (retention) per the policy, with the lock held. Returns the records
        that say so, to be written first in the new file."""
        policy = self.policy
        if policy is None or self._fd is None:
            return []
        out: list[AuditRecord] = []
        mono = time.monotonic()
        if (
            size > 0
            and mono >= self._rotate_retry_at
            and chain.should_rotate(
                size,
                self._first_record_ts(),
                now,
                max_bytes=policy.max_bytes,
                max_age_days=policy.max_age_days,
            )
        ):
            rotated = self.path.with_name(chain.rotated_name(now))
            try:
                os.rename(self.path, rotated)
            except OSError as exc:  # e.g. Windows, where a file open elsewhere cannot be renamed
                if not self._rotate_failing:
                    log.warning(ev.AUDIT_ROTATE_FAILED, error=_reason(exc))
                self._rotate_failing = True
                self._rotate_retry_at = mono + PRUNE_CHECK_SECONDS
                return out
            self._rotate_failing = False
            fd = host.open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            host_lock.lock_exclusive(fd)
            with contextlib.suppress(OSError):
                host_lock.unlock(self._fd)
            os.close(self._fd)
            self._fd, self._ino, self._size = fd, os.fstat(fd).st_ino, 0
            host.fsync_dir(self.path.parent)
            out.append(self.make("audit_rotated", previous_file=rotated.name, previous_bytes=size))
            log.info(ev.AUDIT_ROTATED, previous_file=rotated.name, bytes=size)
        if out or mono - self._pruned_at >= PRUNE_CHECK_SECONDS:
            self._pruned_at = mono
            rotated_files = [p for p in chain.trail_files(self.path.parent) if p.name != AUDIT_FILE]
            gone = chain.expired(rotated_files, now, policy.retention_days)
            if gone:
                last = chain.last_line(gone[-1])
                for old in gone:
                    old.unlink()
                host.fsync_dir(self.path.parent)
                out.append(
                    self.make(
                        "audit_pruned",
                        files=[p.name for p in gone],
                        retention_days=policy.retention_days,
                        chain_from=chain.line_hash(last) if last is not None else None,
                    )
                )
                log.info(ev.AUDIT_PRUNED, files=len(gone))
        return out

    def _first_record_ts(self) -> datetime | None:
        if self._first_ts is None or self._first_ts[0] != self._ino:
            stamp = None
            with (
                contextlib.suppress(OSError, ValueError, AttributeError, TypeError),
                open(self.path, "rb") as fh,
            ):
                stamp = datetime.fromisoformat(json.loads(fh.readline())["ts"])
            self._first_ts = (self._ino, stamp)
        return self._first_ts[1]

    def _write_head(self) -> None:
        """``audit.head``: the last record's ``seq`` and hash (shows the removal of the last records)."""
        if self._head_fd is None:
            self._head_fd = host.open_private(self.path.with_name(chain.HEAD), os.O_RDWR | os.O_CREAT)
        data = chain.head_text(self._seq, self._prev)
        os.lseek(self._head_fd, 0, os.SEEK_SET)
        os.write(self._head_fd, data)
        os.ftruncate(self._head_fd, len(data))

    def _ends_with_newline(self, size: int) -> bool:
        with open(self.path, "rb") as fh:  # our descriptor is write-only
            fh.seek(size - 1)
            return fh.read(1) == b"\n"

    # --- records committed with the outbox (the journal) ----------------------------------------------

    def attach(self, journal: AuditJournal) -> int:
        """Take the records of the reading path from ``journal`` from now on, after appending the ones a
        crash left there (those already in the file's tail are not appended twice). Returns how many were
        appended now. Raises :class:`AuditError`."""
        pending: list[tuple[int, AuditRecord]] = []
        while True:
            batch = journal.audit_rows(pending[-1][0] if pending else 0)
            if not batch:
                break
            pending.extend(batch)
        with self._lock:
            self.journal = journal
            if not pending:
                return 0
            seen = self._tail_records(len(pending) + 16)
            missing = [r for _, r in pending if _canonical(_entry(r)) not in seen]
            try:
                if missing:
                    self._append(missing, "replay")
                else:
                    self._sync()
            except OSError as exc:
                raise AuditError(f"cannot write audit log {self.path}: {exc.strerror or exc}") from None
            self._written = self._synced = pending[-1][0]
        self._forget(self._synced)
        if missing:
            log.info(ev.AUDIT_RESTORED, records=len(missing))
        return len(missing)

    def _tail_records(self, n: int) -> set[str]:
        """The last ``n`` records of the trail, without their ``seq`` (and ``prev``); from the newest
        rotated file too when the active one holds fewer (a rotation just before a crash)."""
        lines: list[bytes] = []
        for path in reversed(chain.trail_files(self.path.parent)):
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                end = fh.tell()
                start = max(0, end - max(65536, n * 4096))
                fh.seek(start)
                lines = fh.read().splitlines()[-(n - len(lines)) :] + lines
            if len(lines) >= n:
                break
        out: set[str] = set()
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.add(_canonical(entry))
        return out

    def _journal_rows(self) -> list[tuple[int, AuditRecord]]:
        if self.journal is None:
            return []
        rows: list[tuple[int, AuditRecord]] = []
        while True:
            batch = self.journal.audit_rows(rows[-1][0] if rows else self._written)
            if not batch:
                return rows
            rows.extend(batch)

    def flush_journal(self) -> int:
        """Append the committed records not yet in the file, in commit order (no fsync: they are on disk
        in the outbox; :meth:`sync_journal` makes the file catch up). Returns how many. Never raises: a
        failure is logged and the records stay in the journal for the next try."""
        if self.journal is None:
            return 0
        with self._lock:
            try:
                rows = self._journal_rows()
                if not rows:
                    return 0
                self._append([r for _, r in rows], "journal", sync=False)
            except (OSError, VitalsAgentError) as exc:
                # They are in the outbox, whose own failures are reported (and stop the agent if they last).
                if not self._flush_failing:
                    log.warning(ev.AUDIT_APPEND_PENDING, error=_reason(exc))
                self._flush_failing = True
                return 0
            self._flush_failing = False
            self._written = rows[-1][0]
            if self._unsynced_since is None:
                self._unsynced_since = time.monotonic()
            return len(rows)

    def sync_journal(self, *, due_only: bool = False) -> bool:
        """fsync the file if it holds appended, unsynced records (``due_only``: only once the oldest has
        waited :data:`JOURNAL_SYNC_SECONDS` or :data:`JOURNAL_SYNC_ROWS` wait), then let the journal
        forget them. True when it synced. Raises :class:`AuditError` when the file cannot be synced."""
        self.flush_journal()
        with self._lock:
            if self._written <= self._synced or self._fd is None:
                return False
            if due_only:
                since = self._unsynced_since
                waited = since is not None and time.monotonic() - since >= JOURNAL_SYNC_SECONDS
                if not waited and self._written - self._synced < JOURNAL_SYNC_ROWS:
                    return False
            try:
                self._sync()
            except OSError as exc:
                raise AuditError(f"cannot write audit log {self.path}: {exc.strerror or exc}") from None
            self._synced = self._written
            self._unsynced_since = None
            done = self._synced
        self._forget(done)
        return True

    def _sync(self) -> None:
        if self._fd is None:
            raise AuditError("audit log is closed")
        os.fsync(self._fd)
        self.fsyncs += 1

    def _forget(self, upto: int) -> None:
        journal = self.journal
        if journal is None or upto <= 0:
            return
        try:
            journal.audit_done(upto)
        except VitalsAgentError as exc:  # kept: appended again (not twice) at the next start
            log.warning(ev.AUDIT_TRIM_FAILED, error=str(exc))

    # --- typed helpers: the events the agent writes ------------------------------------------------

    def message_queued(
        self,
        *,
        control_id: str,
        device_id: str,
        patient: Mapping[str, Any] | None,
        late_associated: bool = False,
    ) -> dict[str, Any]:
        """An ORU^R01 committed to the outbox, with its MSH-10."""
        return self.record(
            "message_queued",
            control_id=control_id,
            device_id=device_id,
            patient_mrn=patient.get("mrn") if patient else None,
            late_associated=late_associated,
        )

    def message_sent(self, *, control_id: str, ack_code: str, ack_text: str = "") -> dict[str, Any]:
        """The EHR answered: MSA-1 (AA/CA accepted, AE/AR/CE/CR refused) for MSH-10 ``control_id``."""
        return self.record("message_sent", control_id=control_id, ack_code=ack_code, ack_text=ack_text)

    def message_dead(self, *, control_id: str, reason: str) -> dict[str, Any]:
        """A message given up on (dead letter)."""
        return self.record("message_dead", control_id=control_id, reason=reason)


READING_ACCEPTED = "reading_accepted"  # the audit event of a reading the agent took on


def reading_fields(
    *,
    device_id: str,
    control_id: str | None,
    reading: Reading,
    patient: Mapping[str, Any] | None,
    disposition: str,
    late_associated: bool = False,
) -> dict[str, Any]:
    """The fields of a ``reading_accepted`` record (a reading the reporting policy selected;
    ``disposition``: ``bound``, ``unbound``, ``held`` or ``review``): ``AuditLog.record(READING_ACCEPTED,
    **reading_fields(...))``, or ``AuditLog.make`` when it commits with the message."""
    return {
        "device_id": device_id,
        "control_id": control_id,
        "disposition": disposition,
        "late_associated": late_associated,
        "patient": dict(patient) if patient is not None else None,
        "observed_at": reading.observed_at,
        "received_at": reading.received_at,
        "device": reading.device.model_dump(mode="json", exclude_none=True),
        "values": {
            m.metric: f"{format(m.value, 'f')} {m.unit}" for m in reading.measurements if m.value is not None
        },
        "flags": [str(f) for f in reading.flags],
        "dropped": [f"{d.metric}: {d.reason}" for d in reading.dropped],
    }


def _entry(record: AuditRecord) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(record.body)
    return {"ts": record.ts, **entry}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def read_audit(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of an audit file, in order (a torn last line after a crash is skipped)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
