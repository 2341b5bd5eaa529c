"""Serial devices on the network: a terminal server's port as a serial link, on asyncio (no threads).

Hospitals put serial devices on the network through terminal servers (Moxa NPort, Lantronix, Digi). A
device's ``port`` is then a URL:

* ``socket://HOST:PORT`` — raw TCP: the server passes the serial bytes through as they are; its serial
  line settings are set on the server itself (its web page), not by the agent.
* ``rfc2217://HOST:PORT`` — Telnet COM-PORT-OPTION (RFC 2217): the agent pushes the driver's line
  settings (with the device's overrides) when it connects, and the server confirms what it applied; a
  difference is logged as a warning (the device will likely send garbage) and shown in ``status``.

Both set TCP keepalive (idle :data:`KEEPALIVE_IDLE` s, then :data:`KEEPALIVE_COUNT` probes
:data:`KEEPALIVE_INTERVAL` s apart), so a terminal server that vanished without closing (power cut, cable)
ends the link within about 25 s instead of never, and TCP_NODELAY, so what the agent writes (a poll, an
ACK) leaves at once. When a link ends the agent's supervisor reconnects with capped, jittered back-off, as
for an unplugged USB adapter; nothing is read twice and a half-received frame is never a reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import structlog

from vitals_agent import log_events as ev
from vitals_agent.drivers.base import SerialSettings
from vitals_agent.drivers.netport import NetworkPort
from vitals_agent.drivers.rfc2217 import Rfc2217Codec
from vitals_agent.errors import TransportError

log = structlog.get_logger(__name__)

KEEPALIVE_IDLE = 10  # seconds of silence before the first probe
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
READ_SIZE = 4096
NEGOTIATE_TIMEOUT = 3.0  # seconds an RFC 2217 server gets to confirm the line settings
CLOSE_TIMEOUT = 2.0


def set_keepalive(sock: socket.socket) -> None:
    """TCP keepalive and no Nagle delay on a connected socket (options the platform lacks are skipped)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TcpLink:
    """``socket://``: the serial bytes as they are, on an asyncio stream."""

    def __init__(
        self, where: NetworkPort, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.where = where
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, where: NetworkPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.open_connection(where.host, where.port, limit=READ_SIZE * 4)
        except OSError as exc:
            raise TransportError(f"cannot connect to {where.url} ({where.kind}): {_reason(exc)}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            set_keepalive(sock)
        return reader, writer

    @classmethod
    async def open(cls, where: NetworkPort, settings: SerialSettings) -> TcpLink:
        return cls(where, *await cls.connect(where))

    def describe(self) -> str:
        return f"{self.where.url} ({self.where.kind})"

    async def read(self) -> bytes:
        return await self._reader.read(READ_SIZE)

    async def write(self, data: bytes) -> None:
        if self._writer.transport.is_closing():
            raise TransportError(f"connection to {self.where.url} is closed")
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        if not self._writer.transport.is_closing():
            self._writer.transport.abort()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._writer.wait_closed()


class Rfc2217Link(TcpLink):
    """``rfc2217://``: Telnet COM-PORT-OPTION; the line settings are pushed when it opens."""

    def __init__(
        self,
        where: NetworkPort,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        codec: Rfc2217Codec,
        early: bytes = b"",
    ) -> None:
        super().__init__(where, reader, writer)
        self.codec = codec
        self._early = early  # serial data that arrived during the negotiation

    @classmethod
    async def open(cls, where: NetworkPort, settings: SerialSettings) -> Rfc2217Link:
        reader, writer = await cls.connect(where)
        codec = Rfc2217Codec(settings)
        codec.start()
        early = bytearray()
        try:
            writer.write(codec.data_to_send())
            async with asyncio.timeout(NEGOTIATE_TIMEOUT):
                while not codec.settled:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        raise TransportError(f"{where.url} closed the connection while setting the line")
                    early += codec.receive(data)
                    writer.write(codec.data_to_send())
        except TimeoutError:
            if not codec.accepted:
                writer.transport.abort()
                raise TransportError(
                    f"{where.url} did not answer as an RFC 2217 port within {NEGOTIATE_TIMEOUT:g} s "
                    "(set the terminal server's port to RFC 2217 mode, or write socket:// for raw TCP)"
                ) from None
            log.warning(
                ev.SERIAL_SETTINGS_UNCONFIRMED,
                port=where.url,
                asked=codec.wanted(),
                confirmed=codec.confirmed,
            )
        except (OSError, TransportError, asyncio.CancelledError) as exc:  # cancelled: the agent stops
            writer.transport.abort()
            if not isinstance(exc, OSError):
                raise
            raise TransportError(f"{where.url}: {_reason(exc)}") from None
        if codec.refused:
            writer.transport.abort()
            raise TransportError(
                f"{where.url} refused RFC 2217 (COM-PORT-OPTION): set the terminal server's port to "
                "RFC 2217 mode, or write socket:// for raw TCP"
            )
        mismatches = codec.mismatches()
        if mismatches:
            log.warning(ev.SERIAL_SETTINGS_DIFFER, port=where.url, differs=mismatches)
        return cls(where, reader, writer, codec, bytes(early))

    def describe(self) -> str:
        confirmed = self.codec.confirmed
        if not self.codec.settled:
            return f"{self.where.url} (RFC 2217; line settings not confirmed)"
        parity = confirmed.get("parity", "?")
        line = f"{confirmed.get('baudrate')} {confirmed.get('datasize')}{parity}{confirmed.get('stopsize')}"
        differs = "; differs from the driver's!" if self.codec.mismatches() else ""
        return f"{self.where.url} (RFC 2217, {line}{differs})"

    async def read(self) -> bytes:
        if self._early:
            data, self._early = self._early, b""
            return data
        while True:
            raw = await self._reader.read(READ_SIZE)
            if not raw:
                return b""
            data = self.codec.receive(raw)
            reply = self.codec.data_to_send()
            if reply:
                self._writer.write(reply)
            if data:
                return data

    async def write(self, data: bytes) -> None:
        await super().write(self.codec.escape(data))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror else str(exc)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
