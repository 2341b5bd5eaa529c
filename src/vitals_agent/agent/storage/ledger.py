"""Acknowledged messages whose removal from the outbox has not succeeded yet (``outbox.delivered``).

After an ``AA`` the sender removes the message from the outbox. When that delete fails (disk full, a
read-only remount, a damaged page, a lock held too long) the message must still never be sent again: the
sender remembers its id in memory, and records it here so a restart remembers it too. On the next start
the sender removes every message listed here *before* sending anything.

The file is written where a full disk still lets it be written: it is created at its final size (64 slots
of 128 bytes, zero-filled and fsynced) while the disk has room, and afterwards only ever overwritten in
place, one slot per message, ``fdatasync``'d. Overwriting allocated blocks needs no free space on the usual
Linux file systems (ext4, xfs, tmpfs); on a copy-on-write file system or a read-only mount the write can
still fail, and then the id is kept in memory only (at-least-once delivery: a crash may then send that
message once more, with the same MSH-10).

Slot layout (little-endian): ``b"VAD1"`` | message id (int64) | control id length (uint8) | control id
(ASCII, up to 107 bytes, zero-padded) | CRC-32 of the bytes before it (uint32). A zeroed or torn slot is
ignored.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from pathlib import Path

import structlog

from vitals_agent import host
from vitals_agent import log_events as ev
from vitals_agent.host.files import NOFOLLOW
from vitals_agent.host.lock import read_at, write_at

log = structlog.get_logger(__name__)

LEDGER_FILE = "outbox.delivered"
SLOT = 128
SLOTS = 64
_MAGIC = b"VAD1"
_HEAD = struct.Struct("<4sqB")  # magic, message id, control id length
_MAX_ID = SLOT - _HEAD.size - 4


def _pack(message_id: int, control_id: str) -> bytes | None:
    raw = control_id.encode("ascii", "replace")
    if len(raw) > _MAX_ID:
        return None
    body = _HEAD.pack(_MAGIC, message_id, len(raw)) + raw.ljust(_MAX_ID, b"\0")
    return body + struct.pack("<I", zlib.crc32(body))


def _unpack(slot: bytes) -> tuple[int, str] | None:
    if len(slot) != SLOT or not slot.startswith(_MAGIC):
        return None
    body, crc = slot[:-4], struct.unpack("<I", slot[-4:])[0]
    if zlib.crc32(body) != crc:
        return None
    _, message_id, length = _HEAD.unpack_from(body)
    if length > _MAX_ID:
        return None
    raw = body[_HEAD.size : _HEAD.size + length]
    return message_id, raw.decode("ascii", "replace")


class DeliveredLedger:
    """The preallocated slot file. Thread-safe. Never raises on I/O: it answers whether a write held."""

    def __init__(self, path: Path, *, writable: bool = True) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._slots: dict[int, int] = {}  # message id -> slot index
        self.problem: str | None = None  # why the ledger cannot record (one line)
        self._entries: dict[int, str] = {}
        if writable:
            self._open()
        else:
            self._entries = self._read_only()

    @property
    def available(self) -> bool:
        """True when ids can be recorded durably."""
        return self._fd is not None

    def _open(self) -> None:
        try:
            fd = host.open_private(self.path, os.O_RDWR | os.O_CREAT | NOFOLLOW)
        except OSError as exc:
            self.problem = f"cannot open {self.path}: {exc.strerror or exc}"
            self._entries = self._read_only()
            return
        try:
            size = os.fstat(fd).st_size
            if size < SLOT * SLOTS:
                # Allocate every block now, while there is room: later writes only overwrite.
                write_at(fd, b"\0" * (SLOT * SLOTS - size), size)
                os.fsync(fd)
            data = read_at(fd, SLOT * SLOTS, 0)
        except OSError as exc:
            os.close(fd)
            self.problem = f"cannot prepare {self.path}: {exc.strerror or exc}"
            return
        self._fd = fd
        for index in range(SLOTS):
            entry = _unpack(data[index * SLOT : (index + 1) * SLOT])
            if entry is not None:
                self._entries[entry[0]] = entry[1]
                self._slots[entry[0]] = index

    def _read_only(self) -> dict[int, str]:
        try:
            data = self.path.read_bytes()
        except OSError:
            return {}
        out: dict[int, str] = {}
        for index in range(min(SLOTS, len(data) // SLOT)):
            entry = _unpack(data[index * SLOT : (index + 1) * SLOT])
            if entry is not None:
                out[entry[0]] = entry[1]
        return out

    def entries(self) -> dict[int, str]:
        """Message id -> MSH-10 of every acknowledged message not yet known to be removed."""
        with self._lock:
            return dict(self._entries)

    def record(self, message_id: int, control_id: str) -> bool:
        """Remember one acknowledged message durably. False when it could not be written (memory only)."""
        with self._lock:
            self._entries[message_id] = control_id
            if self._fd is None:
                return False
            if message_id in self._slots:
                return True
            used = set(self._slots.values())
            free = next((i for i in range(SLOTS) if i not in used), None)
            slot = _pack(message_id, control_id)
            if free is None or slot is None:
                return False
            try:
                write_at(self._fd, slot, free * SLOT)
                host.fsync_data(self._fd)
            except OSError as exc:
                if self.problem is None:
                    log.warning(ev.OUTBOX_DELIVERED_IN_MEMORY_ONLY, error=exc.strerror or str(exc))
                self.problem = f"cannot write {self.path}: {exc.strerror or exc}"
                return False
            self._slots[message_id] = free
            self.problem = None
            return True

    def forget(self, message_id: int) -> None:
        """The message is gone from the outbox: free its slot (not synced: a stale slot is harmless, the
        next start finds nothing to remove for it)."""
        with self._lock:
            self._entries.pop(message_id, None)
            index = self._slots.pop(message_id, None)
            if index is None or self._fd is None:
                return
            with contextlib.suppress(OSError):
                write_at(self._fd, b"\0" * SLOT, index * SLOT)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None
