"""Helpers shared by the agent's stores (outbox, held readings, state files): what a storage error means in
words an operator can act on, and moving a damaged file aside so the rest of the agent can run."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from vitals_agent import host
from vitals_agent.errors import VitalsAgentError

T = TypeVar("T")


class StoreError(VitalsAgentError):
    """A local store cannot be used right now (one line: which store and what is wrong)."""


class StoreDamagedError(StoreError):
    """A store whose file is damaged, not a database of ours, or of a schema this version does not know:
    it is moved aside (kept for inspection) and an empty one takes its place."""


def explain(exc: BaseException) -> str:
    """What a storage error means, in words an operator can act on (one line, no patient data)."""
    if isinstance(exc, OSError) and not isinstance(exc, sqlite3.Error):
        reasons = {
            errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.ENOSPC: "disk full",
            errno.EDQUOT: "disk quota exceeded",
            errno.EISDIR: "is a directory",
            errno.ENOTDIR: "a part of the path is not a directory",
            errno.EIO: "I/O error (failing disk?)",
        }
        if exc.errno == errno.EACCES and exc.filename is not None and os.path.isdir(exc.filename):
            return reasons[errno.EISDIR]  # Windows opens a folder as a file with "access denied"
        return reasons.get(exc.errno or 0, exc.strerror or str(exc))
    text = str(exc)
    low = text.lower()
    if "readonly" in low or "read-only" in low:
        return f"read-only: the file or its file system cannot be written ({text})"
    if "full" in low:
        return f"disk full ({text})"
    if "malformed" in low or "corrupt" in low:
        return f"the file is damaged ({text})"
    if "not a database" in low:
        return "not an SQLite database (overwritten or damaged)"
    if "locked" in low or "busy" in low:
        return f"locked by another process for too long ({text})"
    if "disk i/o" in low:
        return f"I/O error: failing disk, or the file was removed or replaced under the agent ({text})"
    if "unable to open" in low:
        return f"cannot be opened: missing, a directory, or no permission ({text})"
    if "not authorized" in low:
        return f"the operation was refused ({text})"
    return text


def is_damage(exc: BaseException) -> bool:
    """True for errors that mean the file itself is bad (not the disk, a lock or permissions)."""
    low = str(exc).lower()
    return "malformed" in low or "not a database" in low or "corrupt" in low


def move_aside(path: Path, *, when: datetime | None = None, sidecars: tuple[str, ...] = ()) -> Path:
    """Rename a damaged store to ``<name>.damaged-<UTC time>`` (with its SQLite side files), so it is
    kept for inspection and a fresh one can be created. Returns the new path. Raises OSError."""
    stamp = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.rename(path, target)
    for suffix in sidecars:
        side = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            os.rename(side, target.with_name(target.name + suffix))
    host.fsync_dir(path.parent)  # (Windows has no directory handle to flush: opening one fails there)
    return target


@dataclass(frozen=True)
class Discarded:
    """A state file that could not be read: moved aside to ``moved_to``, or left where it was when the
    move failed (``move_error`` says why)."""

    moved_to: Path | None
    move_error: str | None = None

    @property
    def moved_text(self) -> str | None:
        return str(self.moved_to) if self.moved_to else None


def read_state_file(path: Path, parse: Callable[[Any], T]) -> T | Discarded | None:
    """A JSON state file (a room's patient or clinician context): None when missing or ``null``; a file
    that is not valid JSON or that ``parse`` refuses is moved aside (kept for a look) and reported as
    :class:`Discarded`, for the caller to log and audit."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return None if data is None else parse(data)
    except (ValueError, KeyError, TypeError, ValidationError):
        try:
            return Discarded(move_aside(path))
        except OSError as exc:
            return Discarded(None, explain(exc))
