"""The durable outbound queue: SQLite in WAL mode under ``data_dir`` (file ``outbox.sqlite3``, mode 0600).

Tables:

* ``outbox`` — messages waiting for a positive ACK, delivered in ``id`` order. ``id`` is AUTOINCREMENT, so
  it is never reused and a dead letter put back by an operator keeps its place and its MSH-10. Each row is
  one reading *for one destination* (``destination``: ``ehr`` = HL7 v2 over MLLP, ``fhir`` = a FHIR
  transaction Bundle): a reading bound for both has two rows with the same ``control_id``, committed in
  one transaction, each with its own body, attempts and fate. A reading is done when all its rows are.
* ``dead_letter`` — messages the receiver refused (AR/CR, an unknown MSA-1, or AE/CE ``max_attempts``
  times), with the reason and the receiver's MSA-3/ERR text, for human review (``vitals-agent outbox``).
* ``awaiting_ack`` — enhanced acknowledgement mode: messages the receiver committed (``CA``) that owe their
  application ACK (same id, body and MSH-10; never sent again); the ACK removes them or moves them to
  ``dead_letter``.
* ``device_state`` — a small durable key/value store per device (pairing state, last record number ...).
* ``audit_pending`` — audit records committed with the change they describe (``reading_accepted`` with its
  message, ``message_sent`` with its removal) until the audit file has them on disk (see
  :mod:`vitals_agent.agent.storage.audit`): one fsync per accepted reading, for the message and its
  audit record.

Durability and power loss:

* :meth:`Outbox.enqueue` commits with ``synchronous=FULL`` before it returns: the WAL is fsynced, so an
  accepted reading survives a kill -9 *and* a power cut. :meth:`Outbox.enqueue_group` commits the readings
  that arrived together (while the previous commit was on its way to disk) in one such transaction: one
  fsync for the group, each reading still accepted only once it is on disk. If the commit fails (disk full,
  read-only file system) the transaction rolls back, the reading is refused with :class:`OutboxFullError`,
  and nothing that was already queued is touched.
* :meth:`Outbox.delete` (after a positive ACK) and the bookkeeping updates commit with
  ``synchronous=NORMAL``: no fsync, so they survive a crash of the process but a power cut may undo the
  last few of them. An undone delete only means that message is sent again with its original MSH-10 and
  the receiver sees a duplicate it can recognise (delivery is at-least-once). The next FULL commit makes
  every earlier NORMAL commit durable as well.

Thread safety: the agent calls from the event loop through :func:`asyncio.to_thread` and from the loop
itself. Writes go through one connection guarded by a lock; reads (``depth``, ``peek``, ``get`` ...) use a
second, read-only connection, so in WAL mode they never wait for a writer and a status request never
blocks the loop; :meth:`Outbox.delete_nowait` uses a third connection with ``busy_timeout=0`` so the
sender can remove a delivered message inline and fall back to a thread only when the file is busy. Other
processes (the ``outbox`` command on a running agent) share the file through SQLite's own locking.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Required, TypedDict, Unpack

import structlog

from vitals_agent import host
from vitals_agent.agent.storage.audit import AuditRecord
from vitals_agent.agent.storage.files import explain
from vitals_agent.agent.storage.ledger import LEDGER_FILE, DeliveredLedger
from vitals_agent.errors import OutboxError, OutboxFullError

log = structlog.get_logger(__name__)

OUTBOX_FILE = "outbox.sqlite3"
# 2: the destination column; 3: audit_pending; 4: awaiting_ack (older files are migrated when opened)
SCHEMA_VERSION = 4
DESTINATIONS = ("ehr", "fhir")

# The columns a message keeps in every table it moves through (queued, dead letter, awaiting its ACK).
_MESSAGE_DDL = """\
    control_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    body BLOB NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
{_MESSAGE_DDL}
    nacks INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    destination TEXT NOT NULL DEFAULT 'ehr'
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY,
{_MESSAGE_DDL}
    dead_at REAL NOT NULL,
    reason TEXT NOT NULL,
    ack_code TEXT,
    ack_text TEXT,
    destination TEXT NOT NULL DEFAULT 'ehr'
);
CREATE TABLE IF NOT EXISTS awaiting_ack (
    id INTEGER PRIMARY KEY,
{_MESSAGE_DDL}
    committed_at REAL NOT NULL,
    destination TEXT NOT NULL DEFAULT 'ehr'
);
CREATE TABLE IF NOT EXISTS device_state (
    device_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE TABLE IF NOT EXISTS audit_pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    body TEXT NOT NULL
);
"""

_MSG_COLUMNS = "id, control_id, device_id, body, meta, created_at, attempts, nacks, last_error, destination"
_DEAD_COLUMNS = (
    "id, control_id, device_id, body, meta, created_at, attempts, dead_at, reason, ack_code, ack_text,"
    " destination"
)
# Statements assembled from the constant column lists above (values are always bound parameters).
_SELECT_QUEUED = f"SELECT {_MSG_COLUMNS} FROM outbox"  # noqa: S608
_SELECT_DEAD = f"SELECT {_DEAD_COLUMNS} FROM dead_letter"  # noqa: S608
_MOVE_COLUMNS = "id, control_id, device_id, body, meta, created_at, attempts"
_DEAD_INSERT = f"INSERT INTO dead_letter ({_MOVE_COLUMNS}, dead_at, reason, ack_code, ack_text, destination)"
_DEAD_SELECT = f"SELECT {_MOVE_COLUMNS}, ?, ?, ?, ?, destination"
_TO_DEAD = (  # a queued message, or one awaiting its application ACK (constant statements)
    (f"{_DEAD_INSERT} {_DEAD_SELECT} FROM outbox WHERE id = ?", "DELETE FROM outbox WHERE id = ?"),
    (
        f"{_DEAD_INSERT} {_DEAD_SELECT} FROM awaiting_ack WHERE id = ?",
        "DELETE FROM awaiting_ack WHERE id = ?",
    ),
)
_SELECT_AWAITING = (
    "SELECT id, control_id, device_id, body, meta, created_at, attempts, committed_at, destination"
    " FROM awaiting_ack"
)
_RETRY_DEAD = (
    "INSERT INTO outbox (id, control_id, device_id, body, meta, created_at, attempts, nacks, last_error,"
    " destination)"
    " SELECT id, control_id, device_id, body, meta, created_at, 0, 0, 'operator retry after: ' || reason,"
    " destination FROM dead_letter"
)
_INSERT = (
    "INSERT INTO outbox (control_id, device_id, body, meta, created_at, destination)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_AUDIT = "INSERT INTO audit_pending (ts, body) VALUES (?, ?)"
_UPSERT_STATE = (
    "INSERT INTO device_state (device_id, key, value, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (device_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)


class QueueItem(TypedDict, total=False):
    """One message to queue (:meth:`Outbox.enqueue`)."""

    control_id: Required[str]  # MSH-10 (the same for every destination of the reading)
    device_id: Required[str]
    body: Required[bytes]  # the message for ``destination``
    destination: str  # who ``body`` is for: "ehr" (default) or "fhir"
    # The same reading for other destinations (destination -> body), queued in the same transaction under
    # the same ``control_id`` and ``meta`` (and parked with it): a reading is queued for all or for none.
    also: Mapping[str, bytes]
    meta: Mapping[str, Any] | None
    # Store it durably but do not send it: straight to the dead-letter table with this reason (same
    # transaction, so the sender never sees it), for an operator to review and ``outbox retry`` (e.g. an
    # EKG whose patient does not match the room's patient).
    park_reason: str | None
    # Device-state entries (``device_id``'s keys) written in the same transaction, e.g. the digest of the
    # EKG file this message comes from, so "queued" and "this file was taken" are one fact.
    state: Mapping[str, str] | None
    audit: Sequence[AuditRecord]  # audit records committed in the same transaction (``audit_pending``)


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    control_id: str
    device_id: str
    body: bytes
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    attempts: int = 0  # failed delivery attempts so far (a refused connection is not an attempt)
    nacks: int = 0  # AE/CE answers so far
    last_error: str | None = None
    destination: str = "ehr"  # "ehr" (HL7 v2, MLLP) or "fhir" (FHIR transaction Bundle)


@dataclass(frozen=True)
class _Moved:
    """A message out of the queue: what it keeps from it (same id, body and MSH-10)."""

    id: int
    control_id: str
    device_id: str
    body: bytes
    meta: dict[str, Any]
    created_at: float
    attempts: int


@dataclass(frozen=True)
class DeadLetter(_Moved):
    dead_at: float
    reason: str
    ack_code: str | None
    ack_text: str | None
    destination: str = "ehr"


def _meta(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def _common(row: tuple[Any, ...], what: str) -> dict[str, Any]:
    """The columns every message table shares: id, MSH-10, device, body, meta, created."""
    if not isinstance(row[3], bytes | bytearray | memoryview | str) or not isinstance(row[1], str):
        raise OutboxError(f"{what} {row[0]} is unreadable (MSH-10 or body missing or of a wrong type)")
    body = row[3].encode() if isinstance(row[3], str) else bytes(row[3])
    return {
        "id": row[0],
        "control_id": row[1],
        "device_id": row[2],
        "body": body,
        "meta": _meta(row[4]),
        "created_at": row[5],
    }


def _msg(row: tuple[Any, ...]) -> OutboxMessage:
    return OutboxMessage(
        **_common(row, "outbox row"),
        attempts=row[6],
        nacks=row[7],
        last_error=row[8],
        destination=str(row[9] or "ehr"),
    )


@dataclass(frozen=True)
class AwaitingMessage(_Moved):
    """A message the receiver committed (``CA``) that waits for its application ACK (enhanced mode)."""

    committed_at: float  # wall time of the commit ACK
    destination: str = "ehr"


def _awaiting(row: tuple[Any, ...]) -> AwaitingMessage:
    return AwaitingMessage(
        **_common(row, "message awaiting an ACK"),
        attempts=row[6],
        committed_at=row[7],
        destination=str(row[8] or "ehr"),
    )


def _dead(row: tuple[Any, ...]) -> DeadLetter:
    return DeadLetter(
        **_common(row, "dead letter"),
        attempts=row[6],
        dead_at=row[7],
        reason=row[8],
        ack_code=row[9],
        ack_text=row[10],
        destination=str(row[11] or "ehr"),
    )


def _meta_text(meta: Mapping[str, Any] | None) -> str:
    return json.dumps(meta or {}, default=str, separators=(",", ":"))


def _is_full(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (13, 8) or "full" in text or "readonly" in text or "read-only" in text


_TABLES = frozenset(
    {"outbox", "dead_letter", "awaiting_ack", "device_state", "audit_pending", "sqlite_sequence"}
)


def _why_read_only(path: Path) -> str:
    try:
        if hasattr(os, "statvfs") and os.statvfs(path).f_flag & os.ST_RDONLY:
            return "its file system is mounted read-only"
        st = path.stat()
    except OSError as exc:
        return explain(exc)
    if not hasattr(os, "geteuid"):  # Windows: an ACL, not a mode, decides
        return f"{path} is not writable by this account (check the folder's permissions)"
    return (
        f"{path} (mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}) is not writable by uid "
        f"{os.geteuid()}"
    )


def _unreadable(exc: BaseException, what: str) -> OutboxError:
    return OutboxError(f"{what}: {explain(exc)}")


def _move_to_dead(
    conn: sqlite3.Connection, message_id: int, reason: str, ack_code: str | None, ack_text: str | None
) -> bool:
    """Move one queued message to the dead-letter table (same id, body and MSH-10), inside ``conn``'s
    open transaction."""
    for insert, delete in _TO_DEAD:  # a queued message, or one awaiting its application ACK
        cur = conn.execute(insert, (time.time(), reason, ack_code, ack_text, message_id))
        conn.execute(delete, (message_id,))
        if cur.rowcount > 0:
            return True
    return False


class Outbox:
    """The agent's durable queue. See the module docstring for the durability contract."""

    def __init__(self, data_dir: Path, *, max_bytes: int | None = None, create: bool = True) -> None:
        """Open (and by default create) ``data_dir/outbox.sqlite3``.

        ``max_bytes`` caps the database size (SQLite ``max_page_count``): beyond it :meth:`enqueue` raises
        :class:`OutboxFullError` exactly as on a full disk. ``create=False`` refuses to create a new file
        (used by the operator tools so a wrong ``--data-dir`` is reported instead of silently created).

        Refuses, with a one-line :class:`OutboxError` that says what is wrong and changes nothing, a path
        that is a directory, a file that is not an SQLite database or not an outbox, an outbox written by a
        newer version (schema it does not know), and a file or directory it cannot write.
        """
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / OUTBOX_FILE
        self._lock = threading.RLock()  # the write connection
        self._rlock = threading.Lock()  # the read connection
        self._flock = threading.Lock()  # the never-waiting delete connection
        self._sync: str | None = None
        if not create and not self.path.exists():
            raise OutboxError(f"no outbox at {self.path}")
        self._prepare_file()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open the outbox at {self.path}: {explain(exc)}") from None
        try:
            self._check_schema()
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"the outbox at {self.path} cannot use WAL mode (file system: {mode})")
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._set_sync("FULL")
            self._conn.executescript(_SCHEMA)
            self._migrate()
            if self._conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if max_bytes is not None:
                page = self._conn.execute("PRAGMA page_size").fetchone()[0]
                self._conn.execute(f"PRAGMA max_page_count={max(1, int(max_bytes) // int(page))}")
            # Reads use their own connection: in WAL mode they never wait for a writer (ours or another
            # process's), so status requests on the event loop stay instant.
            self._reader = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._reader.execute("PRAGMA query_only=1")
            self._fast = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            self._fast.execute("PRAGMA busy_timeout=0")
            self._fast.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            self._conn.close()
            raise OutboxError(f"cannot open the outbox at {self.path}: {explain(exc)}") from None
        except OutboxError:
            self._conn.close()
            raise
        # Acknowledged messages whose removal failed before the last stop (see ledger.py).
        self.ledger = DeliveredLedger(self.data_dir / LEDGER_FILE, writable=create)

    def _prepare_file(self) -> None:
        """Create the file (0600) or check the one that is there, before SQLite touches it."""
        path = self.path
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise OutboxError(f"{self.data_dir} is not a directory (it should hold the outbox)")
        try:
            host.private_dir(self.data_dir)
        except OSError as exc:
            raise OutboxError(f"cannot create the data directory {self.data_dir}: {explain(exc)}") from None
        try:
            st = path.lstat()
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise OutboxError(f"cannot open the outbox at {path}: {explain(exc)}") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise OutboxError(f"{path} is a directory, not an outbox file: move it away")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise OutboxError(f"{path} is not a regular file (a link or a device): refusing to use it")
        if st is not None and st.st_size >= 16:
            with open(path, "rb") as fh:
                magic = fh.read(16)
            if magic != b"SQLite format 3\0":
                raise OutboxError(
                    f"{path} is not an outbox of this version (not an SQLite database): "
                    "move it away or restore it; it was not changed"
                )
        where = path if st is not None else self.data_dir
        if not os.access(where, os.W_OK) or not os.access(self.data_dir, os.W_OK):
            raise OutboxError(f"the outbox at {path} is read-only: {_why_read_only(where)}")
        try:
            host.ensure_private_file(path)  # created private, or tightened
        except OSError as exc:
            raise OutboxError(f"cannot create the outbox at {path}: {explain(exc)}") from None

    def _check_schema(self) -> None:
        """Refuse (and leave unchanged) a database that is not an outbox this version knows."""
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {
            str(r[0]) for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"the outbox at {self.path} was written by a newer vitals-agent (outbox schema {version}; "
                f"this version knows {SCHEMA_VERSION}): not opened and not changed; run the newer version "
                "or move the file away"
            )
        if tables and ("outbox" not in tables or not tables <= _TABLES):
            raise OutboxError(
                f"{self.path} is not an outbox of this version (it holds tables "
                f"{', '.join(sorted(tables))}): not opened and not changed"
            )

    def _migrate(self) -> None:
        """Schema 1 -> 2: add the destination column (every existing message is for the EHR)."""
        for table in ("outbox", "dead_letter"):
            columns = {str(r[1]) for r in self._conn.execute(f"PRAGMA table_info({table})")}
            if "destination" not in columns:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN destination TEXT NOT NULL DEFAULT 'ehr'")
        self._conn.execute("CREATE INDEX IF NOT EXISTS outbox_destination ON outbox (destination, id)")

    # --- plumbing ------------------------------------------------------------------------------------

    def _set_sync(self, level: str) -> None:
        if self._sync != level:
            self._conn.execute(f"PRAGMA synchronous={level}")
            self._sync = level

    @contextlib.contextmanager
    def _tx(self, sync: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._set_sync(sync)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        """The read connection; SQLite errors become one-line :class:`OutboxError` exceptions."""
        with self._rlock:
            try:
                yield self._reader
            except sqlite3.Error as exc:
                raise _unreadable(exc, f"outbox {self.path}: cannot read {what}") from None

    @contextlib.contextmanager
    def _write(self, sync: str, what: str) -> Iterator[sqlite3.Connection]:
        """A write transaction (:meth:`_tx`); SQLite errors become one-line :class:`OutboxError` exceptions
        saying it ``cannot {what}``."""
        try:
            with self._tx(sync) as conn:
                yield conn
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: cannot {what}: {explain(exc)}") from None

    def close(self) -> None:
        with self._lock, self._rlock, self._flock:
            for conn in (self._reader, self._fast, self._conn):
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self.ledger.close()

    # --- the pipeline's side -------------------------------------------------------------------------

    def enqueue(self, **item: Unpack[QueueItem]) -> int:
        """Queue one message (:class:`QueueItem`); returns its id once it is committed durably (fsynced)."""
        try:
            with self._tx("FULL") as conn:
                return self._insert(conn, item)
        except sqlite3.Error as exc:
            raise self._store_failed(exc, item["control_id"]) from None

    def enqueue_group(self, items: Sequence[Mapping[str, Any]]) -> list[int | OutboxError]:
        """Queue readings that arrived together, each with the keyword arguments of :meth:`enqueue`, in one
        durable transaction (group commit: one fsync for all). Returns, per item, its id or the
        :class:`OutboxError` that refused it: when the group cannot be committed, each item is tried in a
        transaction of its own, so one item never costs the others their place."""
        if len(items) <= 1:  # alone: exactly enqueue() (the crash and fault tests hook that one)
            try:
                return [self.enqueue(**item) for item in items]
            except OutboxError as exc:
                return [exc]
        try:
            with self._tx("FULL") as conn:
                return [self._insert(conn, item) for item in items]
        except sqlite3.Error:
            pass  # below: each on its own, so one item's failure is only its own
        out: list[int | OutboxError] = []
        for item in items:
            try:
                out.append(self.enqueue(**item))
            except OutboxError as exc:
                out.append(exc)
        return out

    @staticmethod
    def _insert(conn: sqlite3.Connection, item: Mapping[str, Any]) -> int:
        """The statements of one :meth:`enqueue` (``item``: a :class:`QueueItem`), inside ``conn``'s open
        transaction. Returns the id of the row for ``item["destination"]``."""
        control_id, device_id = item["control_id"], item["device_id"]
        meta_text = _meta_text(item.get("meta"))
        park_reason = item.get("park_reason")
        now = time.time()
        row_id: int | None = None
        bodies = [(item.get("destination", "ehr"), item["body"]), *(item.get("also") or {}).items()]
        for where, payload in bodies:
            cur = conn.execute(
                _INSERT, (control_id, device_id, sqlite3.Binary(payload), meta_text, now, where)
            )
            row_id = row_id or cur.lastrowid
            if park_reason is not None and cur.lastrowid is not None:
                _move_to_dead(conn, cur.lastrowid, park_reason, None, None)
        if state := item.get("state"):
            conn.executemany(_UPSERT_STATE, [(device_id, k, v, now) for k, v in state.items()])
        if audit := item.get("audit"):
            conn.executemany(_INSERT_AUDIT, [(r.ts, r.body) for r in audit])
        assert row_id is not None
        return row_id

    def _store_failed(self, exc: sqlite3.Error, control_id: str) -> OutboxError:
        if _is_full(exc):
            return OutboxFullError(
                f"outbox {self.path} cannot store message {control_id}: {explain(exc)}; "
                "the reading was NOT queued"
            )
        return OutboxError(f"outbox {self.path} cannot store message {control_id}: {explain(exc)}")

    def enqueue_many(self, items: Iterable[Mapping[str, Any]]) -> list[int]:
        """Queue several messages in one durable transaction (all or none), e.g. a device's stored records.

        Each item has the keyword arguments of :meth:`enqueue` (``destination`` and ``also`` included).
        Returns the ids in order (of each item's first row).
        """
        ids: list[int] = []
        try:
            with self._tx("FULL") as conn:
                for item in items:
                    ids.append(self._insert(conn, item))
        except sqlite3.Error as exc:
            if _is_full(exc):
                raise OutboxFullError(
                    f"outbox {self.path} cannot store {len(ids) + 1} messages: {explain(exc)}; "
                    "none of them was queued"
                ) from None
            raise OutboxError(f"outbox {self.path} cannot store messages: {explain(exc)}") from None
        return ids

    def depth(self, destination: str | None = None) -> int:
        """Queued messages (rows), all or for one destination."""
        with self._read("the queue length") as conn:
            if destination is None:
                return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            row = conn.execute("SELECT COUNT(*) FROM outbox WHERE destination = ?", (destination,)).fetchone()
            return int(row[0])

    def oldest_created(self, destination: str | None = None) -> float | None:
        """Wall time (epoch seconds) the oldest queued message was created; None when none waits."""
        with self._read("the oldest message") as conn:
            if destination is None:
                row = conn.execute("SELECT MIN(created_at) FROM outbox").fetchone()
            else:
                row = conn.execute(
                    "SELECT MIN(created_at) FROM outbox WHERE destination = ?", (destination,)
                ).fetchone()
            return None if row[0] is None else float(row[0])

    def dead_count(self, destination: str | None = None) -> int:
        with self._read("the dead-letter count") as conn:
            if destination is None:
                return int(conn.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0])
            row = conn.execute(
                "SELECT COUNT(*) FROM dead_letter WHERE destination = ?", (destination,)
            ).fetchone()
            return int(row[0])

    # --- the sender's side ---------------------------------------------------------------------------

    def peek(
        self, limit: int = 64, *, after_id: int = 0, destination: str | None = None
    ) -> list[OutboxMessage]:
        """The oldest queued messages (id order), at most ``limit``, with ``id > after_id``; all, or those
        for one ``destination``."""
        with self._read("queued messages") as conn:
            if destination is None:
                rows = conn.execute(
                    _SELECT_QUEUED + " WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, limit),
                ).fetchall()
            else:
                rows = conn.execute(
                    _SELECT_QUEUED + " WHERE destination = ? AND id > ? ORDER BY id LIMIT ?",
                    (destination, after_id, limit),
                ).fetchall()
        return [_msg(r) for r in rows]

    def delete(
        self, message_id: int, control_id: str | None = None, *, audit: Sequence[AuditRecord] = ()
    ) -> bool:
        """Remove a delivered message (positive ACK). Cheap commit: see the module docstring.

        With ``control_id`` only a row with that MSH-10 is removed (a ledger entry from an earlier run).
        ``audit``: records committed with the removal (the ACK's ``message_sent``): a power cut that undoes
        the removal undoes them too, and the message is sent, and audited, again.
        """
        with self._write("NORMAL", f"remove delivered message {message_id}") as conn:
            removed = 0
            for table in ("outbox", "awaiting_ack"):  # constant names; values bound
                if control_id is None:
                    cur = conn.execute(f"DELETE FROM {table} WHERE id = ?", (message_id,))  # noqa: S608
                else:
                    cur = conn.execute(
                        f"DELETE FROM {table} WHERE id = ? AND control_id = ?",  # noqa: S608
                        (message_id, control_id),
                    )
                removed += cur.rowcount
            if audit:
                conn.executemany(_INSERT_AUDIT, [(r.ts, r.body) for r in audit])
        self.ledger.forget(message_id)
        return removed > 0

    # --- enhanced acknowledgement: committed, awaiting the application ACK --------------------------

    def await_app_ack(self, message_id: int) -> bool:
        """The receiver committed the message (``CA``) and owes an application ACK: move it from the queue
        to ``awaiting_ack`` (same id, body and MSH-10; never sent again). Cheap commit, as :meth:`delete`:
        a power cut may undo it, and then the message is sent again with its MSH-10 (at-least-once)."""
        with self._write("NORMAL", f"record message {message_id} as committed") as conn:
            cur = conn.execute(
                "INSERT INTO awaiting_ack (id, control_id, device_id, body, meta, created_at, attempts,"
                " committed_at, destination)"
                " SELECT id, control_id, device_id, body, meta, created_at, attempts, ?, destination"
                " FROM outbox WHERE id = ?",
                (time.time(), message_id),
            )
            conn.execute("DELETE FROM outbox WHERE id = ?", (message_id,))
        return cur.rowcount > 0

    def awaiting(self, destination: str | None = None) -> list[AwaitingMessage]:
        """Messages the receiver committed and owes an application ACK for, oldest first."""
        where, args = (" WHERE destination = ?", (destination,)) if destination else ("", ())
        with self._read("messages awaiting an application ACK") as conn:
            rows = conn.execute(_SELECT_AWAITING + where + " ORDER BY id", args).fetchall()
        return [_awaiting(r) for r in rows]

    def awaiting_ids(self, destination: str | None = None) -> set[int]:
        """The ids in ``awaiting_ack`` (the sender compares them with its own list: an operator may have
        re-queued or dead-lettered one)."""
        where, args = (" WHERE destination = ?", (destination,)) if destination else ("", ())
        with self._read("messages awaiting an application ACK") as conn:
            rows = conn.execute("SELECT id FROM awaiting_ack" + where, args).fetchall()  # noqa: S608
        return {int(r[0]) for r in rows}

    def retry_awaiting(self, message_id: int) -> bool:
        """Operator: send a message that awaits its application ACK again. It goes back to the queue at its
        original place with the same id, body and MSH-10 (the receiver can recognise the re-send), keeping
        its attempt count. False when it no longer awaits one (the ACK came meanwhile)."""
        with self._write("FULL", f"re-send message {message_id}") as conn:
            cur = conn.execute(
                "INSERT INTO outbox (id, control_id, device_id, body, meta, created_at, attempts, nacks,"
                " last_error, destination)"
                " SELECT id, control_id, device_id, body, meta, created_at, attempts, 0,"
                " 'operator re-send: the receiver committed it (CA) but sent no application ACK',"
                " destination FROM awaiting_ack WHERE id = ?",
                (message_id,),
            )
            conn.execute("DELETE FROM awaiting_ack WHERE id = ?", (message_id,))
        return cur.rowcount > 0

    def give_up_awaiting(self, message_id: int, reason: str) -> bool:
        """Operator: stop waiting for a message's application ACK; it moves to the dead-letter table (same
        id, body and MSH-10; ``outbox retry`` can queue it again). False when it no longer awaits one."""
        insert, delete = _TO_DEAD[1]  # from awaiting_ack only: a queued message is the sender's
        with self._write("FULL", f"dead-letter message {message_id}") as conn:
            cur = conn.execute(insert, (time.time(), reason, None, None, message_id))
            conn.execute(delete, (message_id,))
        return cur.rowcount > 0

    # --- acknowledged messages whose removal failed (ledger.py) ----------------------------------

    def remember_delivered(self, message_id: int, control_id: str) -> bool:
        """Record that the EHR acknowledged a message that could not be removed. True when durable."""
        return self.ledger.record(message_id, control_id)

    def delivered_pending(self) -> dict[int, str]:
        """Acknowledged messages (id -> MSH-10) still to be removed, also from before a restart."""
        return self.ledger.entries()

    def delete_nowait(self, message_id: int, *, audit: Sequence[AuditRecord] = ()) -> bool | None:
        """:meth:`delete` without ever waiting: ``None`` when the outbox is busy (another thread's commit,
        or another process's write lock), so an event loop can call it inline and fall back to a thread.

        Uses its own connection (``busy_timeout=0``, ``synchronous=NORMAL``) so the fast path costs three
        statements.
        """
        if not self._flock.acquire(blocking=False):
            return None
        try:
            conn = self._fast
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return None  # locked by our other connection or another process
            except sqlite3.Error as exc:
                raise OutboxError(
                    f"outbox {self.path}: cannot remove delivered message {message_id}: {explain(exc)}"
                ) from None
            try:
                cur = conn.execute("DELETE FROM outbox WHERE id = ?", (message_id,))
                if audit:
                    conn.executemany(_INSERT_AUDIT, [(r.ts, r.body) for r in audit])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
                    return None
                raise OutboxError(
                    f"outbox {self.path}: cannot remove delivered message {message_id}: {explain(exc)}"
                ) from None
        finally:
            self._flock.release()
        self.ledger.forget(message_id)
        return cur.rowcount > 0

    def mark_failure(
        self, message_id: int, error: str, *, negative: bool = False, attempted: bool = True
    ) -> tuple[int, int]:
        """Record a failure; returns ``(attempts, nacks)`` after it.

        ``attempted=False`` (no connection was made: the message never left) records the error only.
        """
        with self._write("NORMAL", f"update message {message_id}") as conn:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + ?, nacks = nacks + ?, last_error = ? WHERE id = ?",
                (1 if attempted else 0, 1 if negative else 0, error[:2000], message_id),
            )
            row = conn.execute("SELECT attempts, nacks FROM outbox WHERE id = ?", (message_id,)).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def dead_letter(
        self, message_id: int, reason: str, *, ack_code: str | None = None, ack_text: str | None = None
    ) -> bool:
        """Move a message to the dead-letter table (same id, body and MSH-10)."""
        with self._write("FULL", f"dead-letter message {message_id}") as conn:
            moved = _move_to_dead(conn, message_id, reason, ack_code, ack_text)
        return moved

    # --- operator tools ------------------------------------------------------------------------------

    def list_queued(self, limit: int = 1000) -> list[OutboxMessage]:
        return self.peek(limit)

    def list_dead(self, limit: int = 1000) -> list[DeadLetter]:
        with self._read("dead letters") as conn:
            rows = conn.execute(
                _SELECT_DEAD + " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [_dead(r) for r in rows]

    def has_control_id(self, control_id: str) -> bool:
        """True when a message with this MSH-10 is queued or dead-lettered (not yet delivered)."""
        with self._read("queued MSH-10s") as conn:
            row = conn.execute(
                "SELECT 1 FROM outbox WHERE control_id = ?"
                " UNION ALL SELECT 1 FROM dead_letter WHERE control_id = ?"
                " UNION ALL SELECT 1 FROM awaiting_ack WHERE control_id = ? LIMIT 1",
                (control_id, control_id, control_id),
            ).fetchone()
        return row is not None

    def get(self, message_id: int) -> OutboxMessage | DeadLetter | None:
        with self._read(f"message {message_id}") as conn:
            row = conn.execute(
                _SELECT_QUEUED + " WHERE id = ?",
                (message_id,),
            ).fetchone()
            if row:
                return _msg(row)
            row = conn.execute(
                _SELECT_DEAD + " WHERE id = ?",
                (message_id,),
            ).fetchone()
        return _dead(row) if row else None

    def find(self, control_id: str) -> OutboxMessage | DeadLetter | None:
        """The queued or dead-lettered message with this MSH-10, if any."""
        with self._rlock:
            row = self._reader.execute(_SELECT_QUEUED + " WHERE control_id = ?", (control_id,)).fetchone()
            if row:
                return _msg(row)
            row = self._reader.execute(_SELECT_DEAD + " WHERE control_id = ?", (control_id,)).fetchone()
        return _dead(row) if row else None

    def find_all(self, control_id: str) -> list[OutboxMessage | DeadLetter]:
        """Every row with this MSH-10, queued then dead (a reading for two destinations has two rows)."""
        with self._read(f"messages {control_id}") as conn:
            queued = conn.execute(
                _SELECT_QUEUED + " WHERE control_id = ? ORDER BY id", (control_id,)
            ).fetchall()
            dead = conn.execute(_SELECT_DEAD + " WHERE control_id = ? ORDER BY id", (control_id,)).fetchall()
        return [*(_msg(r) for r in queued), *(_dead(r) for r in dead)]

    def retry_dead(self, message_id: int | None = None) -> int:
        """Put one dead letter (or all, with ``None``) back in the queue at its original place.

        The message keeps its id, body and MSH-10; its attempt counters start again. Returns how many moved.
        """
        where, args = (" WHERE id = ?", (message_id,)) if message_id is not None else ("", ())
        with self._write("FULL", "retry") as conn:
            # ``where`` is one of two constant clauses; the id is a bound parameter
            cur = conn.execute(_RETRY_DEAD + where, args)
            conn.execute("DELETE FROM dead_letter" + where, args)  # noqa: S608
        return cur.rowcount

    def purge_dead(self, older_than_seconds: float) -> int:
        """Delete dead letters that were parked more than ``older_than_seconds`` ago."""
        cutoff = time.time() - older_than_seconds
        with self._write("FULL", "purge") as conn:
            cur = conn.execute("DELETE FROM dead_letter WHERE dead_at <= ?", (cutoff,))
        return cur.rowcount

    # --- the audit journal (vitals_agent.agent.storage.audit.AuditJournal) ---------------------------

    def audit_rows(self, after_id: int = 0, limit: int = 1000) -> list[tuple[int, AuditRecord]]:
        """Committed audit records with ``id > after_id``, in commit order."""
        with self._read("pending audit records") as conn:
            rows = conn.execute(
                "SELECT id, ts, body FROM audit_pending WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()
        return [(int(r[0]), AuditRecord(str(r[1]), str(r[2]))) for r in rows]

    def audit_done(self, upto_id: int) -> None:
        """Forget the audit records up to ``upto_id`` (the audit file has them on disk). No fsync: a
        forgetting undone by a power cut only means they are checked against the file again."""
        with self._write("NORMAL", "trim the audit journal") as conn:
            conn.execute("DELETE FROM audit_pending WHERE id <= ?", (upto_id,))

    # --- per-device state ----------------------------------------------------------------------------

    def get_state(self, device_id: str, key: str) -> str | None:
        with self._read("device state") as conn:
            row = conn.execute(
                "SELECT value FROM device_state WHERE device_id = ? AND key = ?", (device_id, key)
            ).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, device_id: str, key: str, value: str) -> None:
        """Store a value durably (fsynced before returning)."""
        try:
            with self._tx("FULL") as conn:
                conn.execute(_UPSERT_STATE, (device_id, key, value, time.time()))
        except sqlite3.Error as exc:
            if _is_full(exc):
                raise OutboxFullError(
                    f"outbox {self.path}: cannot store device state: {explain(exc)}"
                ) from None
            raise OutboxError(f"outbox {self.path}: cannot store device state: {explain(exc)}") from None
