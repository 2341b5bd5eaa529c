"""The audit trail: an append-only JSON-lines file, mode 0600, every record fsync'd before returning.

This is the *only* place where patient identifiers are written. The operational log (structlog) names
devices, channels and control ids; the audit log says which patient a reading was filed to, who set or
cleared the room's patient context and through which channel (``cli``, ``api``, ``barcode``, ``expiry``),
and what the EHR answered for every message (MSH-10 and ACK code).

Each line is one JSON object: ``{"ts": ISO-8601 UTC, "seq": n, "event": name, ...fields}``. ``seq``
restarts at the number of lines already in the file, so it keeps counting across restarts. The file is
opened with ``O_APPEND`` and never rewritten or truncated by the agent; rotate it with an external tool
that copies and archives (``logrotate copytruncate`` is *not* appropriate for an audit trail: use
``create 0600`` + a restart, or leave it to grow: a busy room writes about 1 MB a month).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog

from vitals_agent import host
from vitals_agent.agent.storage.files import explain
from vitals_agent.errors import VitalsAgentError
from vitals_agent.host import lock as host_lock
from vitals_agent.models import Reading

log = structlog.get_logger(__name__)

AUDIT_FILE = "audit.jsonl"

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

    def __init__(self, path: Path, *, now: Callable[[], datetime] = _utc_now) -> None:
        self.path = path
        self._now = now
        self._lock = threading.Lock()
        try:
            host.private_dir(path.parent)
            fd = host.open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # an existing one: tightened
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {path}: {explain(exc)}") from None
        self._fd: int | None = fd
        self._seq = self._count_lines()
        self._size = os.fstat(fd).st_size  # where our last record ended: a bigger file had another writer

    @classmethod
    def in_dir(cls, data_dir: Path, *, now: Callable[[], datetime] = _utc_now) -> AuditLog:
        return cls(data_dir / AUDIT_FILE, now=now)

    def _count_lines(self) -> int:
        with open(self.path, "rb") as fh:
            return sum(1 for _ in fh)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record and fsync it. Returns the record as written. Raises :class:`AuditError`."""
        with self._lock:
            if self._fd is None:
                raise AuditError("audit log is closed")
            fd = self._fd
            try:
                # The agent and the operator tools (``vitals-agent outbox``) append to the same file: one
                # writer at a time, and ``seq`` recounted when another process wrote since our last record.
                host_lock.lock_exclusive(fd)
                size = os.fstat(fd).st_size
                if size != self._size:
                    self._seq = self._count_lines()
                self._seq += 1
                entry: dict[str, Any] = {"ts": self._now().astimezone(UTC).isoformat(), "seq": self._seq}
                entry["event"] = event
                entry.update(fields)
                line = (
                    json.dumps(entry, default=_default, ensure_ascii=False, sort_keys=False) + "\n"
                ).encode()
                written = 0
                while written < len(line):
                    written += os.write(fd, line[written:])
                os.fsync(fd)
                self._size = size + written
            except OSError as exc:
                log.error(
                    "audit record could not be written", audit_event=event, error=exc.strerror or str(exc)
                )
                raise AuditError(f"cannot write audit log {self.path}: {exc.strerror or exc}") from None
            finally:
                with contextlib.suppress(OSError):
                    host_lock.unlock(fd)
            return entry

    # --- typed helpers: the events the agent writes ------------------------------------------------

    def reading_accepted(
        self,
        *,
        device_id: str,
        control_id: str | None,
        reading: Reading,
        patient: Mapping[str, Any] | None,
        disposition: str,
        late_associated: bool = False,
    ) -> dict[str, Any]:
        """A reading the reporting policy selected. ``disposition``: ``bound``, ``unbound`` or ``held``."""
        return self.record(
            "reading_accepted",
            device_id=device_id,
            control_id=control_id,
            disposition=disposition,
            late_associated=late_associated,
            patient=dict(patient) if patient is not None else None,
            observed_at=reading.observed_at,
            received_at=reading.received_at,
            device=reading.device.model_dump(mode="json", exclude_none=True),
            values={
                m.metric: f"{format(m.value, 'f')} {m.unit}"
                for m in reading.measurements
                if m.value is not None
            },
            flags=[str(f) for f in reading.flags],
            dropped=[f"{d.metric}: {d.reason}" for d in reading.dropped],
        )

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
