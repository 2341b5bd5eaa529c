"""Transport ``folder``: watch a share an EKG cart writes its files to.

A file is taken once it is completely written: its size and mtime are the same on two polls in a row, and
(SCP) it is as long as its header says. It is decoded, handed to the agent (``emit`` returns once the
reading is durably accepted), then moved to ``processed/``; a file that cannot be decoded goes to
``failed/`` with ``<name>.reason.txt`` (one line). The SHA-256 of every delivered file is written to the
device's state store in the same outbox transaction as its message (``Reading.dedupe_key``), so a file
found again after a crash anywhere after that commit (or dropped twice) is moved without being sent again.

Whoever can write to the share is not trusted (see :mod:`.safefs`): every file is opened, created and moved
relative to directory descriptors without following links; links, FIFOs and other non-regular entries in
the folder (and ``processed/`` or ``failed/`` being links) are skipped and reported, never read or written
through; a file is read from the descriptor that was checked, never past ``max_file_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from vitals_agent import log_events as ev
from vitals_agent.drivers.base import DecodeFailure, DeviceRuntime, Transport, register_transport
from vitals_agent.drivers.ecg import safefs
from vitals_agent.drivers.ecg.drivers import HEAD_BYTES, EcgFileDriver, FolderEcgDriver
from vitals_agent.errors import (
    ConfigError,
    DecodeError,
    DeviceNotFoundError,
    OutboxError,
    RefusedError,
    RetryableError,
)
from vitals_agent.models import Reading

log = structlog.get_logger(__name__)

PROCESSED = "processed"
FAILED = "failed"
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~", ".reason.txt")
MAX_HANDOVER_ERRORS = 3  # unexpected errors handing one file over before it goes to failed/
STATE_PREFIX = "ecg-file:"


def state_key(digest: str) -> str:
    return STATE_PREFIX + digest


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line[:limit] or "unknown error"


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    changed_at: float  # monotonic time of the last change we saw


@dataclass(frozen=True)
class _Entry:
    """A regular file the scan found: name, size, mtime and identity (st_dev, st_ino)."""

    name: str
    size: int
    mtime_ns: int
    ident: tuple[int, int]


@dataclass
class _Dirs:
    """Descriptors of the watched folder and its ``processed/`` and ``failed/`` for one pass."""

    folder: int
    processed: int
    failed: int

    def close(self) -> None:
        for fd in (self.folder, self.processed, self.failed):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True)
class _Read:
    data: bytes
    ident: tuple[int, int]


@dataclass(frozen=True)
class _Refuse:
    reason: str
    ident: tuple[int, int]


@dataclass(frozen=True)
class Outcome:
    """What happened to one file (for tests and status)."""

    name: str
    status: str  # "sent" | "duplicate" | "failed"
    detail: str = ""


async def deliver(
    runtime: DeviceRuntime, driver: EcgFileDriver[Any], data: bytes, name: str, *, digest: str | None = None
) -> tuple[str, Reading | None, str]:
    """Decode ``data`` and hand the reading to the agent unless this exact file was delivered before.

    ``digest`` is the SHA-256 hex digest of ``data`` when the caller has it already.
    Returns ``(status, reading, detail)``: "sent", "duplicate" (already delivered: not sent again),
    "failed" (final for this file: it cannot be decoded, or the agent refused it; ``detail`` is a one-line
    reason) or "error" (an unexpected failure while handing it over: the caller may try again a few
    times, then fail the file). :class:`OutboxError` and :class:`RetryableError` propagate (not accepted
    now: try again later)."""
    dlog = runtime.log
    if digest is None:
        digest = hashlib.sha256(data).hexdigest()
    if runtime.state.get(state_key(digest)) is not None:
        dlog.info(ev.ECG_FILE_ALREADY_DELIVERED, sha256=digest[:16], bytes=len(data))
        return "duplicate", None, "already delivered"
    try:
        reading = await asyncio.to_thread(driver.decode_file, data, runtime.ctx, name)
    except DecodeError as exc:
        message = one_line(str(exc))
        runtime.decode_failed(DecodeFailure(DecodeError(message, data[:64])))
        return "failed", None, message
    except Exception as exc:  # a decoder bug: this file fails, the folder keeps going
        dlog.error(ev.ECG_DECODER_CRASHED, sha256=digest[:16], error=type(exc).__name__)
        dlog.debug(ev.ECG_DECODER_FAILURE, exc_info=exc)
        message = f"internal decoder error ({type(exc).__name__}); please report it with this file"
        runtime.decode_failed(DecodeFailure(DecodeError(message, data[:64])))
        return "failed", None, message
    try:
        # The key commits with the message in the agent's outbox (one transaction), so a crash between the
        # hand-over and the record below can never queue this content again under another MSH-10.
        await runtime.emit(reading.with_updates(dedupe_key=state_key(digest)))
    except RefusedError as exc:
        return "failed", None, f"refused by the agent: {one_line(str(exc))}"
    except (OutboxError, RetryableError):
        raise
    except Exception as exc:  # a bug behind emit: reported; the caller decides whether to try again
        dlog.error(ev.ECG_HANDOVER_CRASHED, sha256=digest[:16], error=type(exc).__name__)
        dlog.debug(ev.ECG_HANDOVER_FAILURE, exc_info=exc)
        return "error", None, f"internal error while handing the reading over ({type(exc).__name__})"
    # Recorded here too for readings that were held or dropped rather than queued (the queued ones are
    # recorded by the outbox transaction itself; that record, with its MSH-10, is kept).
    if runtime.state.get(state_key(digest)) is None:
        runtime.state.set(
            state_key(digest),
            json.dumps({"name": name, "bytes": len(data), "at": time.time()}, sort_keys=True),
        )
    dlog.info(
        ev.ECG_FILE_DELIVERED, sha256=digest[:16], bytes=len(data), measurements=len(reading.measurements)
    )
    return "sent", reading, ""


@register_transport
class FolderTransport(Transport):
    name = "folder"

    def __init__(self, runtime: DeviceRuntime) -> None:
        super().__init__(runtime)
        self._seen: dict[str, _Seen] = {}
        self._stuck: dict[str, tuple[int, int]] = {}  # failed files that could not be moved: skip them
        self._reported: set[str] = set()  # skipped entries already reported (WARNING once per name)
        self._errors: dict[str, int] = {}  # unexpected hand-over errors per file name
        self.outcomes: list[Outcome] = []
        self.passes = 0  # passes over the folder so far (tests wait on it)
        self.monotonic: Callable[[], float] = time.monotonic  # ages of half-written files (tests inject)

    # --------------------------------------------------------------------------------------- setup

    @property
    def driver(self) -> FolderEcgDriver[Any]:
        return self.require_driver(FolderEcgDriver)

    @property
    def folder(self) -> Path:
        folder = self.driver.folder_options.folder
        if not folder:
            raise ConfigError([(f"devices.{self.runtime.device_id}.folder", "required for a folder device")])
        return Path(folder).expanduser()

    def _open_dirs(self) -> _Dirs:
        """Open the folder, then ``processed/`` and ``failed/`` in it (created when missing, never a link)."""
        folder = self.folder
        try:
            folder_fd = safefs.open_dir(folder)
        except (FileNotFoundError, NotADirectoryError):
            raise DeviceNotFoundError(f"folder {folder} does not exist or is not a directory") from None
        except OSError as exc:
            raise DeviceNotFoundError(f"folder {folder} cannot be opened: {exc.strerror or exc}") from None
        fds: list[int] = []
        try:
            for sub in (PROCESSED, FAILED):
                try:
                    fds.append(safefs.open_subdir(folder_fd, sub))
                except safefs.UnsafeEntryError as exc:
                    self._report_skip(f"{sub}/", exc.kind, "folder")
                    raise DeviceNotFoundError(
                        f"folder {folder}: {sub}/ is a {exc.kind}, not a directory; not followed "
                        f"(replace it with a directory)"
                    ) from None
                except OSError as exc:
                    raise DeviceNotFoundError(
                        f"folder {folder}: cannot create processed/ and failed/: {exc.strerror or exc}"
                    ) from None
        except BaseException:
            for fd in (folder_fd, *fds):
                os.close(fd)
            raise
        return _Dirs(folder_fd, fds[0], fds[1])

    async def run(self) -> None:
        dirs = await asyncio.to_thread(self._open_dirs)
        dirs.close()
        opts = self.driver.folder_options
        self.runtime.set_connected(True, f"watching {self.folder}")
        try:
            while True:
                await self.poll_once()
                await asyncio.sleep(opts.poll_seconds)
        finally:
            self.runtime.set_connected(False, "stopped")

    # --------------------------------------------------------------------------------------- reporting

    def _report_skip(self, name: str, kind: str, where: str) -> None:
        """A link, FIFO or other non-regular entry: never followed or read; WARNING once per name, counted.
        File names may carry patient data: the name goes to DEBUG only."""
        if name in self._reported:
            return
        self._reported.add(name)
        self.runtime.count("files_skipped")
        self.runtime.log.warning(ev.ECG_ENTRY_SKIPPED, kind=kind, where=where)
        self.runtime.log.debug(ev.ECG_ENTRY_SKIPPED_DETAIL, file=name, kind=kind, where=where)

    # --------------------------------------------------------------------------------------- polling
    # All file-system calls run in a worker thread: a hung network share must not stall the agent.

    def _candidates(self, dirs: _Dirs) -> tuple[list[_Entry], set[str]]:
        """Every regular file matching the pattern (not temp/hidden files), and the names of links and other
        non-regular entries that match (reported and skipped)."""
        pattern = self.driver.pattern.lower()
        out = []
        skipped: set[str] = set()
        try:
            with os.scandir(dirs.folder) as it:
                entries = list(it)
        except OSError as exc:
            reason = exc.strerror or exc
            raise DeviceNotFoundError(f"folder {self.folder} is not readable: {reason}") from None
        for entry in entries:
            name = entry.name
            lower = name.lower()
            if name.startswith(".") or lower.endswith(TEMP_SUFFIXES):
                continue
            if not fnmatch.fnmatchcase(lower, pattern):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.add(name)
                self._report_skip(name, safefs.kind_of(st.st_mode), "folder")
                continue
            out.append(_Entry(name, st.st_size, st.st_mtime_ns, (st.st_dev, st.st_ino)))
        return sorted(out, key=lambda e: e.name), skipped

    def _scan(self) -> tuple[_Dirs, list[_Entry], set[str]]:
        dirs = self._open_dirs()
        try:
            return dirs, *self._candidates(dirs)
        except BaseException:
            dirs.close()
            raise

    async def poll_once(self) -> list[Outcome]:
        """One pass over the folder; handles every file that is now complete. Returns what it did."""
        dirs, candidates, skipped = await asyncio.to_thread(self._scan)
        try:
            return await self._pass(dirs, candidates, skipped)
        finally:
            dirs.close()
            self.passes += 1

    async def _pass(self, dirs: _Dirs, candidates: list[_Entry], skipped: set[str]) -> list[Outcome]:
        now = self.monotonic()
        done: list[Outcome] = []
        present: set[str] = set(skipped)
        for entry in candidates:
            name = entry.name
            present.add(name)
            if self._stuck.get(name) == (entry.size, entry.mtime_ns):
                continue  # could not be moved away; retried once it changes (or after a restart)
            seen = self._seen.get(name)
            if seen is None or (seen.size, seen.mtime_ns) != (entry.size, entry.mtime_ns):
                self._seen[name] = _Seen(entry.size, entry.mtime_ns, now)
                continue  # new or still changing: look again next poll
            outcome = await self._handle(dirs, entry, now - seen.changed_at)
            if outcome is not None:
                done.append(outcome)
                self.outcomes.append(outcome)
                self._seen.pop(name, None)
        for name in set(self._seen) - present:
            del self._seen[name]
        for name in set(self._stuck) - present:
            del self._stuck[name]
        for name in set(self._errors) - present:
            del self._errors[name]
        # forget reports of names that went away (planted links in processed/ and failed/ stay reported)
        self._reported = {n for n in self._reported if n in present or "/" in n}
        return done

    def _examine(self, dirs: _Dirs, entry: _Entry, stable_for: float) -> _Read | _Refuse | str | None:
        """Open the file safely and decide: its bytes (``_Read``), refuse it now (``_Refuse``), a skip
        reason (``str``: not a regular file any more) or None (not ready: look again later)."""
        driver = self.driver
        opts = driver.folder_options
        limit = opts.max_file_bytes
        try:
            handle = safefs.open_regular(dirs.folder, entry.name)
        except safefs.UnsafeEntryError as exc:
            return exc.kind  # swapped for a link or FIFO since the scan
        except OSError as exc:
            self.runtime.log.debug(ev.ECG_FILE_NOT_READABLE_YET, file=entry.name, error=str(exc))
            return None
        with handle:
            size = handle.st.st_size
            if size > limit:  # refused by size (as its descriptor says), never read
                return _Refuse(f"file too large ({size} bytes > max_file_bytes {limit})", handle.ident)
            if handle.ident != entry.ident or size != entry.size:
                self._seen.pop(entry.name, None)  # replaced since the scan: let it settle again
                return None
            if size == 0:
                if stable_for < opts.incomplete_timeout_seconds:
                    return None
                return _Refuse("empty file", handle.ident)
            head = handle.pread(HEAD_BYTES, 0)
            problem = driver.header_problem(head)
            if problem is not None:  # wrong from its header: failed now, not after the incomplete timeout
                return _Refuse(problem, handle.ident)
            tail = handle.pread(512, max(0, size - 512))
            expected = driver.expected_length(head)
            incomplete = (expected is not None and size < expected) or not driver.looks_complete(head, tail)
            if incomplete and stable_for < opts.incomplete_timeout_seconds:
                self.runtime.log.debug(ev.ECG_FILE_INCOMPLETE, file=entry.name, size=size, expected=expected)
                return None
            data = handle.read_at_most(limit)
        if len(data) > limit:
            return _Refuse(f"file too large (more than max_file_bytes {limit} bytes)", handle.ident)
        if len(data) != size:
            self._seen.pop(entry.name, None)  # changed while we read it: wait for it to settle again
            return None
        return _Read(data, handle.ident)

    async def _handle(self, dirs: _Dirs, entry: _Entry, stable_for: float) -> Outcome | None:
        driver = self.driver
        opts = driver.folder_options
        name = entry.name
        if entry.size > opts.max_file_bytes:  # refused by size, never opened
            reason = f"file too large ({entry.size} bytes > max_file_bytes {opts.max_file_bytes})"
            self.runtime.decode_failed(DecodeFailure(DecodeError(reason)))
            return await self._fail(dirs, name, entry.ident, reason)
        got = await asyncio.to_thread(self._examine, dirs, entry, stable_for)
        if got is None:
            return None
        if isinstance(got, str):
            self._seen.pop(name, None)
            self._report_skip(name, got, "folder")
            return None
        if isinstance(got, _Refuse):
            self.runtime.decode_failed(DecodeFailure(DecodeError(got.reason)))
            return await self._fail(dirs, name, got.ident, got.reason)
        try:
            status, _reading, detail = await deliver(self.runtime, driver, got.data, name)
        except (OutboxError, RetryableError) as exc:
            self.runtime.log.warning(ev.ECG_READING_NOT_ACCEPTED, error=one_line(str(exc)))
            return None
        if status == "error":
            errors = self._errors.get(name, 0) + 1
            self._errors[name] = errors
            if errors < MAX_HANDOVER_ERRORS:
                return None  # tried again next pass
            detail = f"{detail}, {errors} attempts"
            status = "failed"
        self._errors.pop(name, None)
        if status == "failed":
            return await self._fail(dirs, name, got.ident, detail)
        await asyncio.to_thread(self._move, dirs, name, got.ident, dirs.processed, PROCESSED)
        return Outcome(name, status, detail)

    # --------------------------------------------------------------------------------------- moves

    def _move(self, dirs: _Dirs, name: str, ident: tuple[int, int], dst: int, where: str) -> str | None:
        """Move the file we examined (``ident``) to ``where``; a name swapped meanwhile is left alone."""
        if not safefs.same_entry(dirs.folder, name, ident):
            self.runtime.log.debug(ev.ECG_FILE_REPLACED, file=name)
            self._seen.pop(name, None)
            return None
        reserve = safefs.REASON_SUFFIX if dst == dirs.failed else ""

        def planted(link: str) -> None:
            self._report_skip(f"{where}/{link}", "symbolic link", where)

        try:
            return safefs.move(dirs.folder, name, dst, reserve=reserve, on_link=planted)
        except OSError as exc:
            self.runtime.log.error(
                ev.ECG_FILE_NOT_MOVED, directory=where, error=exc.strerror or type(exc).__name__
            )
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=dirs.folder, follow_symlinks=False)
                self._stuck[name] = (st.st_size, st.st_mtime_ns)
            return None

    def _fail_sync(self, dirs: _Dirs, name: str, ident: tuple[int, int], reason: str) -> None:
        target = self._move(dirs, name, ident, dirs.failed, FAILED)
        if target is not None:
            write_reason(dirs.failed, target, reason)

    async def _fail(self, dirs: _Dirs, name: str, ident: tuple[int, int], reason: str) -> Outcome:
        reason = one_line(reason)
        self.runtime.count("files_failed")
        # INFO, one line, the reason only (decoder reasons name no patient data; the file name may)
        self.runtime.log.info(ev.ECG_FILE_FAILED, reason=reason)
        await asyncio.to_thread(self._fail_sync, dirs, name, ident, reason)
        return Outcome(name, "failed", reason)


def write_reason(failed_fd: int, target: str, reason: str) -> None:
    """``failed/<target>.reason.txt`` with the one-line reason: a new file, never through a link."""
    try:
        written = safefs.write_exact(failed_fd, target + safefs.REASON_SUFFIX, (reason + "\n").encode())
    except OSError as exc:
        written = False
        error = exc.strerror or type(exc).__name__
    else:
        error = "a file of that name appeared meanwhile (not overwritten)"
    if not written:
        log.warning(ev.ECG_REASON_NOT_WRITTEN, error=error)
