"""Transport ``folder``: watch a share an EKG cart writes its files to.

A file is taken once it is completely written: its size and mtime are the same on two polls in a row, and
(SCP) it is as long as its header says. It is decoded, handed to the agent (``emit`` returns once the
reading is durably accepted), then moved to ``processed/``; a file that cannot be decoded goes to
``failed/`` with ``<name>.reason.txt`` (one line). The SHA-256 of every delivered file is written to the
device's state store *before* the move, so a file found again after a crash between the hand-over and the
move (or dropped twice) is moved without being sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from vitals_agent.drivers.base import DecodeFailure, DeviceRuntime, Transport, register_transport
from vitals_agent.drivers.ecg.drivers import EcgFileDriver
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
STATE_PREFIX = "ecg-file:"


def state_key(digest: str) -> str:
    return STATE_PREFIX + digest


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line[:limit] or "unknown error"


def unique_target(directory: Path, name: str) -> Path:
    """``directory/name``, or ``stem-N.ext`` when that exists already."""
    target = directory / name
    if not target.exists() and not (directory / f"{name}.reason.txt").exists():
        return target
    stem, dot, suffix = name.partition(".")
    for n in range(1, 100_000):
        candidate = directory / f"{stem}-{n}{dot}{suffix}"
        if not candidate.exists():
            return candidate
    raise OSError(f"no free name for {name} in {directory}")


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    changed_at: float  # monotonic time of the last change we saw


@dataclass(frozen=True)
class Outcome:
    """What happened to one file (for tests and status)."""

    name: str
    status: str  # "sent" | "duplicate" | "failed"
    detail: str = ""


async def deliver(
    runtime: DeviceRuntime, driver: EcgFileDriver, data: bytes, name: str, *, digest: str | None = None
) -> tuple[str, Reading | None, str]:
    """Decode ``data`` and hand the reading to the agent unless this exact file was delivered before.

    ``digest`` is the SHA-256 hex digest of ``data`` when the caller has it already.
    Returns ``(status, reading, detail)``: "sent", "duplicate" (already delivered: not sent again) or
    "failed" (DecodeError; ``detail`` is its one-line message). Errors of ``emit`` propagate."""
    dlog = runtime.log
    if digest is None:
        digest = hashlib.sha256(data).hexdigest()
    if runtime.state.get(state_key(digest)) is not None:
        dlog.info("ecg file already delivered, not sent again", sha256=digest[:16], bytes=len(data))
        return "duplicate", None, "already delivered"
    try:
        reading = await asyncio.to_thread(driver.decode_file, data, runtime.ctx, name)
    except DecodeError as exc:
        message = one_line(str(exc))
        failure = DecodeError(message, data[:64])
        runtime.decode_failed(DecodeFailure(failure))
        dlog.warning("ecg file refused", sha256=digest[:16], bytes=len(data), reason=message)
        return "failed", None, message
    try:
        await runtime.emit(reading)
    except RefusedError as exc:
        message = one_line(str(exc))
        dlog.warning("ecg file refused by the agent", sha256=digest[:16], reason=message)
        return "failed", None, message
    # Recorded right after the durable hand-over (no await in between): a restart never re-sends it.
    runtime.state.set(
        state_key(digest), json.dumps({"name": name, "bytes": len(data), "at": time.time()}, sort_keys=True)
    )
    dlog.info(
        "ecg file delivered", sha256=digest[:16], bytes=len(data), measurements=len(reading.measurements)
    )
    return "sent", reading, ""


@register_transport
class FolderTransport(Transport):
    name = "folder"

    def __init__(self, runtime: DeviceRuntime) -> None:
        super().__init__(runtime)
        self._seen: dict[str, _Seen] = {}
        self._stuck: dict[str, tuple[int, int]] = {}  # failed files that could not be moved: skip them
        self.outcomes: list[Outcome] = []

    # --------------------------------------------------------------------------------------- setup

    @property
    def driver(self) -> EcgFileDriver:
        driver = self.runtime.driver
        if not isinstance(driver, EcgFileDriver):
            raise ConfigError([("driver", f"{driver.name!r} cannot use the folder transport")])
        return driver

    @property
    def folder(self) -> Path:
        folder = self.driver.file_options.folder
        if not folder:
            raise ConfigError([(f"devices.{self.runtime.device_id}.folder", "required for a folder device")])
        return Path(folder).expanduser()

    def _prepare(self) -> Path:
        folder = self.folder
        if not folder.is_dir():
            raise DeviceNotFoundError(f"folder {folder} does not exist or is not a directory")
        try:
            (folder / PROCESSED).mkdir(exist_ok=True)
            (folder / FAILED).mkdir(exist_ok=True)
        except OSError as exc:
            raise DeviceNotFoundError(
                f"folder {folder}: cannot create processed/ and failed/: {exc}"
            ) from None
        return folder

    async def run(self) -> None:
        folder = await asyncio.to_thread(self._prepare)
        opts = self.driver.file_options
        self.runtime.set_connected(True, f"watching {folder}")
        try:
            while True:
                await self.poll_once()
                await asyncio.sleep(opts.poll_seconds)
        finally:
            self.runtime.set_connected(False, "stopped")

    # --------------------------------------------------------------------------------------- polling
    # All file-system calls run in a worker thread: a hung network share must not stall the agent.

    def _candidates(self, folder: Path) -> list[tuple[str, int, int]]:
        """(name, size, mtime_ns) of every regular file matching the pattern (not temp/hidden files)."""
        pattern = self.driver.pattern.lower()
        out = []
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise DeviceNotFoundError(f"folder {folder} is not readable: {exc}") from None
        for entry in entries:
            name = entry.name
            lower = name.lower()
            if name.startswith(".") or lower.endswith(TEMP_SUFFIXES):
                continue
            if not fnmatch.fnmatchcase(lower, pattern):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            out.append((name, st.st_size, st.st_mtime_ns))
        return sorted(out)

    def _scan(self) -> tuple[Path, list[tuple[str, int, int]]]:
        folder = self._prepare()
        return folder, self._candidates(folder)

    async def poll_once(self) -> list[Outcome]:
        """One pass over the folder; handles every file that is now complete. Returns what it did."""
        folder, candidates = await asyncio.to_thread(self._scan)
        now = time.monotonic()
        done: list[Outcome] = []
        present: set[str] = set()
        for name, size, mtime_ns in candidates:
            present.add(name)
            if self._stuck.get(name) == (size, mtime_ns):
                continue  # could not be moved away; retried once it changes (or after a restart)
            seen = self._seen.get(name)
            if seen is None or (seen.size, seen.mtime_ns) != (size, mtime_ns):
                self._seen[name] = _Seen(size, mtime_ns, now)
                continue  # new or still changing: look again next poll
            outcome = await self._handle(folder, folder / name, size, now - seen.changed_at)
            if outcome is not None:
                done.append(outcome)
                self.outcomes.append(outcome)
                self._seen.pop(name, None)
        for name in set(self._seen) - present:
            del self._seen[name]
        for name in set(self._stuck) - present:
            del self._stuck[name]
        return done

    @staticmethod
    def _peek(path: Path, size: int) -> tuple[bytes, bytes]:
        with path.open("rb") as fh:
            head = fh.read(64)
            fh.seek(max(0, size - 512))
            return head, fh.read(512)

    async def _handle(self, folder: Path, path: Path, size: int, stable_for: float) -> Outcome | None:
        driver = self.driver
        opts = driver.file_options
        name = path.name
        if size > opts.max_file_bytes:  # refused by size, never read
            reason = f"file too large ({size} bytes > max_file_bytes {opts.max_file_bytes})"
            self.runtime.decode_failed(DecodeFailure(DecodeError(reason)))
            return await self._fail(folder, path, reason)
        if size == 0:
            if stable_for < opts.incomplete_timeout_seconds:
                return None
            self.runtime.decode_failed(DecodeFailure(DecodeError("empty file")))
            return await self._fail(folder, path, "empty file")
        try:
            head, tail = await asyncio.to_thread(self._peek, path, size)
        except OSError as exc:
            self.runtime.log.debug("ecg file not readable yet", file=name, error=str(exc))
            return None
        expected = driver.expected_length(head)
        incomplete = (expected is not None and size < expected) or not driver.looks_complete(head, tail)
        if incomplete and stable_for < opts.incomplete_timeout_seconds:
            self.runtime.log.debug("ecg file incomplete, waiting", file=name, size=size, expected=expected)
            return None
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            self.runtime.log.debug("ecg file not readable yet", file=name, error=str(exc))
            return None
        if len(data) != size:
            self._seen.pop(name, None)  # changed while we read it: wait for it to settle again
            return None
        try:
            status, _reading, detail = await deliver(self.runtime, driver, data, name)
        except (OutboxError, RetryableError) as exc:
            self.runtime.log.warning("ecg reading not accepted, will retry", error=one_line(str(exc)))
            return None
        if status == "failed":
            return await self._fail(folder, path, detail)
        await asyncio.to_thread(self._move, path, folder / PROCESSED)
        return Outcome(name, status, detail)

    # --------------------------------------------------------------------------------------- moves

    def _move(self, path: Path, directory: Path) -> Path | None:
        try:
            target = unique_target(directory, path.name)
            os.replace(path, target)
        except OSError as exc:
            self.runtime.log.error(
                "cannot move ecg file", directory=directory.name, error=exc.strerror or type(exc).__name__
            )
            with contextlib.suppress(OSError):
                st = path.stat()
                self._stuck[path.name] = (st.st_size, st.st_mtime_ns)
            return None
        return target

    def _fail_sync(self, folder: Path, path: Path, reason: str) -> None:
        target = self._move(path, folder / FAILED)
        if target is not None:
            with contextlib.suppress(OSError):
                target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")

    async def _fail(self, folder: Path, path: Path, reason: str) -> Outcome:
        reason = one_line(reason)
        self.runtime.log.warning("ecg file moved to failed/", reason=reason)
        await asyncio.to_thread(self._fail_sync, folder, path, reason)
        return Outcome(path.name, "failed", reason)
