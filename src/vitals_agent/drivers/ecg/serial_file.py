"""Transport ``ecg-serial-file``: a cart that sends each ECG as a file over RS-232.

File boundaries: an SCP-ECG record ends where the record length in its 6-byte header says; bytes that do
not start with a plausible SCP header end at an idle gap (``idle_gap_seconds`` of silence). The port is
opened exactly as the ``serial`` transport opens it (path, ``socket://`` URL or USB identity). Each file
is then delivered once (same SHA-256 de-duplication as the folder transport) and, with ``save_folder``,
kept in ``processed/`` or ``failed/`` (with a ``.reason.txt``), written as new files relative to
directory descriptors, never through a link (:mod:`.safefs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path

import structlog

from vitals_agent import log_events as ev
from vitals_agent.drivers.base import DeviceRuntime, register_transport
from vitals_agent.drivers.ecg import safefs
from vitals_agent.drivers.ecg.drivers import ScpEcgSerialDriver
from vitals_agent.drivers.ecg.folder import FAILED, PROCESSED, deliver, one_line, write_reason
from vitals_agent.drivers.serial_transport import SerialTransport
from vitals_agent.errors import OutboxError, RetryableError, TransportError

log = structlog.get_logger(__name__)


@register_transport
class SerialFileTransport(SerialTransport):
    name = "ecg-serial-file"

    def __init__(self, runtime: DeviceRuntime) -> None:
        super().__init__(runtime)
        self.file_driver = self.require_driver(ScpEcgSerialDriver)
        self.framer = self.file_driver.stream_decoder(runtime.ctx)  # the framer ``decode`` uses too
        self.files = 0

    async def run(self) -> None:
        url = self.resolve_port()
        link = await self._open(url)
        self.url = url
        self.connects += 1
        self.framer.reset()
        self.runtime.set_connected(True, url)
        queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()

        async def reader() -> None:
            try:
                while True:
                    data = await link.read()
                    await queue.put(data)
                    if not data:
                        return
            except Exception as exc:  # handed to the main loop, which raises TransportError
                await queue.put(exc)

        task = asyncio.create_task(reader())
        reason = "closed"
        opts = self.file_driver.options
        try:
            while True:
                wait = opts.record_timeout_seconds if self.framer.inside_record() else opts.idle_gap_seconds
                try:
                    async with asyncio.timeout(max(wait, opts.idle_gap_seconds)):
                        item = await queue.get()
                except TimeoutError:
                    rest = self.framer.idle()
                    if rest is not None:
                        await self._file(rest)
                    continue
                if isinstance(item, BaseException):
                    reason = one_line(str(item)) or type(item).__name__
                    raise TransportError(f"serial link {url} lost: {reason}")
                if not item:
                    reason = "the other end closed the connection"
                    raise TransportError(f"serial link {url} lost: {reason}")
                self.bytes_received += len(item)
                self.runtime.heard(len(item))
                for data in self.framer.frames(item):
                    await self._file(data)
        except asyncio.CancelledError:
            reason = "stopped"
            raise
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            self.framer.reset()  # a half-received file is never a reading
            await link.close()
            self.runtime.set_connected(False, reason)

    async def _file(self, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        name = f"{self.runtime.ctx.now():%Y%m%dT%H%M%S}-{digest[:12]}.scp"
        self.files += 1
        try:
            status, _reading, detail = await deliver(
                self.runtime, self.file_driver, data, name, digest=digest
            )
        except (OutboxError, RetryableError) as exc:
            # Not accepted: keep the bytes on disk (if configured) so nothing is lost silently.
            status, detail = "failed", f"not accepted by the agent: {one_line(str(exc))}"
        if status == "error":
            status = "failed"  # the bytes cannot be offered again: kept in failed/ (with save_folder)
        if status == "failed":
            self.runtime.count("files_failed")
            self.runtime.log.info(ev.ECG_RECEIVED_FILE_FAILED, reason=one_line(detail))
        self._save(data, name, status, detail)

    def _planted(self, name: str) -> None:
        """A link found where a file is to be saved: never written through; reported and counted."""
        self.runtime.count("files_skipped")
        self.runtime.log.warning(ev.ECG_SAVE_LINK_NOT_FOLLOWED, kind="symbolic link")
        self.runtime.log.debug(ev.ECG_SAVE_LINK_NOT_FOLLOWED, file=name)

    def _save(self, data: bytes, name: str, status: str, detail: str) -> None:
        folder = self.file_driver.options.save_folder
        if not folder:
            return
        sub = FAILED if status == "failed" else PROCESSED
        fds: list[int] = []
        try:
            Path(folder).expanduser().mkdir(parents=True, exist_ok=True)  # the configured path: trusted
            fds.append(safefs.open_dir(Path(folder).expanduser()))
            fds.append(safefs.open_subdir(fds[0], sub))
            reserve = safefs.REASON_SUFFIX if status == "failed" else ""
            target = safefs.write_new(fds[1], name, data, sync=True, reserve=reserve, on_link=self._planted)
            if status == "failed":
                write_reason(fds[1], target, one_line(detail))
        except safefs.UnsafeEntryError as exc:
            self.runtime.count("files_skipped")
            self.runtime.log.error(ev.ECG_SAVE_NOT_FOLLOWED, where=f"{sub}/", kind=exc.kind)
        except OSError as exc:
            self.runtime.log.error(ev.ECG_SAVE_FAILED, error=exc.strerror or type(exc).__name__)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
