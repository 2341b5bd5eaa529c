"""The ``serial`` transport: one serial device (a port path, a pyserial URL, or a USB identity) on asyncio.

``run()`` resolves the port, opens it with the driver's line settings (overridden by the config), writes the
decoder's connect commands, then feeds every byte received to the driver's pure decoder and hands the
results to the agent (:class:`~vitals_agent.drivers.base.DeviceRuntime`). It returns only by raising:

* :class:`~vitals_agent.errors.DeviceNotFoundError` at once when the port path or USB device is absent;
* :class:`~vitals_agent.errors.TransportError` when the port cannot be opened or the link is lost (unplug:
  pyserial raises ``SerialException``; a ``socket://`` peer closing ends the stream).

On any end of the link the decoder is reset, so a half-received frame never becomes a reading. The agent's
supervisor calls ``run()`` again with capped back-off (reopening by the same path, or re-resolving ``usb``).

Writing to the device (sans-I/O): the decoder queues bytes with ``StreamDecoder.send()`` (inside ``feed()``
or ``poll()``), sets ``poll_interval`` for polled devices; this transport writes ``commands_on_connect()``
after opening and whatever ``data_to_send()`` returns after every ``feed()``/``poll()``. Outside the decoder
(a CLI "start measurement" command), :meth:`SerialTransport.write` writes to the open port.

Paths use pyserial-asyncio-fast (event-driven). Terminal servers on the network (``socket://HOST:PORT``
raw TCP, ``rfc2217://HOST:PORT`` with the line settings pushed over RFC 2217) are asyncio streams with TCP
keepalive (:mod:`vitals_agent.drivers.netserial`): a ward of them costs no thread, on every platform. Other
pyserial URLs (``loop://``, ``spy://``) have no file descriptor to watch; they are served by a reader
thread. On Windows, ports (``COM5``) are read by :class:`vitals_agent.host.serial.BlockingSerialLink`: a
thread that sleeps in the OS read (pyserial-asyncio-fast would poll every 0.5 ms there).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import serial
import serial_asyncio_fast
import structlog

from vitals_agent import log_events as ev
from vitals_agent.drivers.base import (
    DecodeFailure,
    DecoderOutput,
    DeviceRuntime,
    SerialDriver,
    SerialOptions,
    SerialSettings,
    StreamDecoder,
    Transport,
    register_transport,
)
from vitals_agent.drivers.netport import network_port
from vitals_agent.drivers.netserial import Rfc2217Link, TcpLink
from vitals_agent.drivers.ports import resolve_usb
from vitals_agent.errors import DeviceNotFoundError, OutboxError, RefusedError, TransportError
from vitals_agent.host import serial as host_serial

log = structlog.get_logger(__name__)

READ_SIZE = 4096
OPEN_TIMEOUT = 5.0  # seconds: opening a local port is instant; a socket:// peer may not answer
CLOSE_TIMEOUT = 2.0


class _Link(Protocol):
    async def read(self) -> bytes: ...  # b"" = end of stream (peer closed)

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class _StreamLink:
    """pyserial-asyncio-fast: a device path or ``socket://``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, url: str, settings: SerialSettings, exclusive: bool) -> _StreamLink:
        kwargs: dict[str, Any] = settings.model_dump()  # baudrate, bytesize, parity, stopbits
        if exclusive:
            kwargs["exclusive"] = True  # flock: a second agent on the same port fails instead of sharing
        reader, writer = await serial_asyncio_fast.open_serial_connection(url=url, **kwargs)
        return cls(reader, writer)

    async def read(self) -> bytes:
        return await self._reader.read(READ_SIZE)

    async def write(self, data: bytes) -> None:
        if self._writer.transport.is_closing():
            raise TransportError("serial port is closed")
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()  # pending writes are meaningless once the link is gone
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()


class _ThreadLink:
    """Any other pyserial URL (no file descriptor to watch): blocking reads on a private thread."""

    def __init__(self, port: serial.SerialBase, executor: ThreadPoolExecutor) -> None:
        self._port = port
        self._executor = executor

    @classmethod
    async def open(cls, url: str, settings: SerialSettings) -> _ThreadLink:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serial-url")
        loop = asyncio.get_running_loop()
        try:
            port = await loop.run_in_executor(
                executor,
                lambda: serial.serial_for_url(url, **settings.model_dump(), timeout=0.05, write_timeout=2.0),
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(port, executor)

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            data: bytes = await loop.run_in_executor(self._executor, self._read_some)
            if data:
                return data

    def _read_some(self) -> bytes:
        """One byte (or nothing after the timeout), then whatever else is waiting: a read of READ_SIZE
        would sit out the whole timeout on a short frame."""
        data: bytes = self._port.read(1)
        waiting: int = getattr(self._port, "in_waiting", 0) if data else 0
        return data + self._port.read(min(waiting, READ_SIZE)) if waiting else data

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._port.write, data)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await loop.run_in_executor(self._executor, self._port.close)
        self._executor.shutdown(wait=False)


def _is_url(port: str) -> bool:
    return "://" in port


@register_transport
class SerialTransport(Transport):
    """Runs one serial device. See the module docstring for the contract."""

    name = "serial"

    def __init__(self, runtime: DeviceRuntime) -> None:
        super().__init__(runtime)
        driver = self.require_driver(SerialDriver)
        self.options: SerialOptions = driver.serial_options
        self.settings: SerialSettings = driver.line_settings()
        self.decoder: StreamDecoder = runtime.driver.stream_decoder(runtime.ctx)
        self.url: str | None = None  # the port last opened (resolved from usb, if configured so)
        self.bytes_received = 0
        self.connects = 0
        self._link: _Link | None = None

    @property
    def connected(self) -> bool:
        return self._link is not None

    # ---------------------------------------------------------------------------------------------- open

    def resolve_port(self) -> str:
        """The path or URL to open. Raises :class:`DeviceNotFoundError` when it is not there now."""
        if self.options.usb is not None:
            return resolve_usb(self.options.usb).device
        port = self.options.port
        if port is None:  # options validated offline (decoding only): there is no device to reach
            raise DeviceNotFoundError("no serial port configured (give 'port' or 'usb')")
        if not _is_url(port) and not host_serial.port_present(port):  # also a link to a vanished pty
            raise DeviceNotFoundError(f"serial port {port} does not exist")
        return port

    async def _open(self, url: str) -> _Link:
        scheme = url.split("://", 1)[0].lower() if _is_url(url) else ""
        try:
            where = network_port(url)
        except ValueError as exc:
            raise TransportError(str(exc)) from None
        if where is not None:  # a terminal server: asyncio stream (connect, keepalive, RFC 2217 settings)
            kind = Rfc2217Link if where.scheme == "rfc2217" else TcpLink
            try:
                async with asyncio.timeout(OPEN_TIMEOUT):
                    return await kind.open(where, self.settings)
            except TimeoutError:
                raise TransportError(f"connecting to {url} timed out after {OPEN_TIMEOUT:g} s") from None
        try:
            link: _Link
            async with asyncio.timeout(OPEN_TIMEOUT):
                if not scheme and not host_serial.EVENT_DRIVEN_PORTS:
                    link = await host_serial.BlockingSerialLink.open(url, **self.settings.model_dump())
                elif scheme == "":
                    link = await _StreamLink.open(url, self.settings, exclusive=not scheme)
                else:
                    link = await _ThreadLink.open(url, self.settings)
            return link
        except TimeoutError:
            raise TransportError(f"opening {url} timed out after {OPEN_TIMEOUT:g} s") from None
        except (serial.SerialException, OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError) or getattr(exc, "errno", None) == errno.ENOENT:
                raise DeviceNotFoundError(f"serial port {url} does not exist") from None
            if not scheme and not host_serial.port_present(url):  # after a failed open
                raise DeviceNotFoundError(f"serial port {url} does not exist") from None
            raise TransportError(_open_failure(url, exc)) from None

    # ---------------------------------------------------------------------------------------------- run

    async def run(self) -> None:
        url = self.resolve_port()
        link = await self._open(url)
        self.url = url
        self._link = link
        self.connects += 1
        self._discard_partial()
        describe = getattr(link, "describe", None)
        self.runtime.set_connected(True, describe() if describe is not None else url)
        self.runtime.log.debug(ev.SERIAL_OPENED, port=url, settings=self.settings.model_dump())
        poller: asyncio.Task[None] | None = None
        reason = "closed"
        try:
            for command in self.decoder.commands_on_connect():
                await self._write(link, command)
            await self._flush(link)
            if self.decoder.poll_interval:
                poller = asyncio.create_task(self._poll(link, self.decoder.poll_interval))
            while True:
                data = await link.read()
                if not data:
                    reason = "the other end closed the connection"
                    raise TransportError(f"serial link {url} lost: {reason}")
                self.bytes_received += len(data)
                self.runtime.heard(len(data))
                await self._dispatch(self.decoder.feed(data))
                await self._flush(link)
        except (serial.SerialException, OSError) as exc:
            reason = _one_line(exc)
            raise TransportError(f"serial link {url} lost: {reason}") from None
        except asyncio.CancelledError:
            reason = "stopped"
            raise
        finally:
            self._link = None
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(BaseException):
                    await poller
            self._discard_partial()  # a half-received frame is never a reading
            await link.close()
            self.runtime.set_connected(False, reason)
            self.runtime.log.debug(ev.SERIAL_CLOSED, port=url, reason=reason)

    def _discard_partial(self) -> None:
        self.decoder.reset()
        self.decoder.data_to_send()

    async def _dispatch(self, outputs: list[DecoderOutput]) -> None:
        for out in outputs:
            if isinstance(out, DecodeFailure):
                self.runtime.decode_failed(out)
            else:
                try:
                    await self.runtime.emit(out)
                except (OutboxError, RefusedError) as exc:
                    # Already logged and counted by the agent; a live device cannot re-send, and tearing
                    # the link down would lose what it sends next.
                    self.runtime.log.debug(ev.DEVICE_READING_NOT_ACCEPTED, error=str(exc))

    async def _write(self, link: _Link, data: bytes) -> None:
        if data:
            self.runtime.log.debug(ev.SERIAL_WRITE, port=self.url, hex=data.hex())
            await link.write(data)

    async def _flush(self, link: _Link) -> None:
        await self._write(link, self.decoder.data_to_send())

    async def _poll(self, link: _Link, interval: float) -> None:
        try:
            while True:
                self.decoder.poll()
                await self._flush(link)
                await asyncio.sleep(interval)
        except (serial.SerialException, OSError, TransportError) as exc:
            # The read loop sees the same failure (the link is gone); just stop polling.
            self.runtime.log.debug(ev.SERIAL_POLL_STOPPED, port=self.url, reason=_one_line(exc))

    # ---------------------------------------------------------------------------------------------- API

    async def write(self, data: bytes) -> None:
        """Write raw bytes to the device now (e.g. a "start measurement" command from the CLI).
        Raises :class:`TransportError` when the port is not open."""
        link = self._link
        if link is None:
            raise TransportError("the serial port is not open")
        try:
            await self._write(link, data)
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"write to {self.url} failed: {_one_line(exc)}") from None


def _open_failure(url: str, exc: BaseException) -> str:
    """One line that says what to do about a port that exists but cannot be opened."""
    text = _one_line(exc)
    if "exclusively lock" in text or getattr(exc, "errno", None) == errno.EBUSY:
        return f"serial port {url} is in use by another program (`fuser -v {url}` shows which)"
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES or "denied" in text:
        return (
            f"no permission to open serial port {url}: the agent's user must be in the port's group "
            "(dialout on Debian; deploy/install.sh adds vitals-agent to it)"
        )
    return f"cannot open {url}: {text}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
