"""A simulated device behind a simulated terminal server: a TCP port (raw, or RFC 2217) that plays a
driver's simulator for each connection, as a Moxa NPort's port plays the device wired to it.

``vitals-agent simulate DRIVER --tcp PORT`` / ``--rfc2217 PORT``, the tests and ``bench/bench_ward.py`` use
:class:`NetworkDevice`. RFC 2217 is served by pyserial's own server side (``serial.rfc2217.PortManager``),
an implementation independent of the agent's client: the line settings the client pushes are applied to
:class:`SimulatedLine` and kept in :attr:`NetworkDevice.line_settings`.

:meth:`NetworkDevice.drop_all` and :meth:`NetworkDevice.restore` play a terminal server that restarts:
every connection ends and, until restored, new ones are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

import structlog
from serial import rfc2217

from vitals_agent import log_events as ev
from vitals_agent.drivers.base import SerialSettings, Simulator

log = structlog.get_logger(__name__)

READ_SIZE = 4096


class SimulatedLine:
    """The serial side of a simulated terminal-server port: what RFC 2217 sets on it, modem lines idle."""

    def __init__(self) -> None:
        self.baudrate = 9600
        self.bytesize = 8
        self.parity = "N"
        self.stopbits: float = 1
        self.xonxoff = False
        self.rtscts = False
        self.dtr = True
        self.rts = True
        self.break_condition = False
        self.cts = self.dsr = self.cd = True
        self.ri = False

    def reset_input_buffer(self) -> None:
        """PURGE-DATA: nothing is buffered here."""

    def reset_output_buffer(self) -> None:
        """PURGE-DATA: nothing is buffered here."""

    def settings(self) -> dict[str, Any]:
        """The line settings (:class:`~vitals_agent.drivers.base.SerialSettings`' keys) as last set."""
        return {name: getattr(self, name) for name in SerialSettings.model_fields}


class StreamSimPort:
    """:class:`~vitals_agent.drivers.base.SimPort` on a TCP connection (raw or through RFC 2217). A closed
    connection raises :class:`ConnectionResetError` from :meth:`read`, which ends the simulator."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        rfc2217_line: SimulatedLine | None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.line = rfc2217_line
        self._manager: rfc2217.PortManager | None = None
        if rfc2217_line is not None:  # pyserial's server: negotiates options, applies line settings
            line: Any = rfc2217_line  # duck-typed: the attributes PortManager sets and reads
            network: Any = _Network(writer)
            self._manager = rfc2217.PortManager(line, network)
        self.bytes_written = 0

    async def write(self, data: bytes) -> None:
        payload = b"".join(self._manager.escape(data)) if self._manager is not None else data
        if self._writer.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self._writer.write(payload)
        await self._writer.drain()
        self.bytes_written += len(data)

    async def read(self, timeout: float) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                raw = await self._reader.read(READ_SIZE)
        except TimeoutError:
            return b""
        if not raw:
            raise ConnectionResetError("the client closed the connection")
        if self._manager is None:
            return raw
        return b"".join(self._manager.filter(raw))


class _Network:
    """The ``connection`` pyserial's PortManager writes its Telnet answers to (synchronously)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        if not self._writer.transport.is_closing():
            self._writer.write(data)


@dataclass(eq=False)
class NetworkDevice:
    """Serves ``factory()``'s simulator on a TCP port, one simulator per connection.

    ``rfc2217``: speak RFC 2217 (pyserial's server) instead of raw TCP. ``host`` is loopback by default.
    """

    factory: Callable[[], Simulator]
    _: KW_ONLY
    rfc2217: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    name: str = "device"

    def __post_init__(self) -> None:
        self.connections = 0  # accepted so far
        self._lines: list[SimulatedLine] = []  # RFC 2217: each connection's serial side
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def url(self) -> str:
        scheme = "rfc2217" if self.rfc2217 else "socket"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def line_settings(self) -> dict[str, Any] | None:
        """What the last RFC 2217 client set on the line (None: raw TCP, or nobody connected yet)."""
        return self._lines[-1].settings() if self._lines else None

    @property
    def connected(self) -> int:
        """Connections open now."""
        return len(self._sessions)

    async def start(self) -> NetworkDevice:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])  # the real port when 0 was asked
        return self

    async def restore(self) -> NetworkDevice:
        """Listen again on the same port (after :meth:`drop_all`)."""
        if self._server is None:
            await self.start()
        return self

    async def drop_all(self) -> None:
        """A terminal-server restart: stop listening and end every connection (what was written before
        is delivered first, as a closing TCP connection does)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task, writer in list(self._sessions.items()):
            with contextlib.suppress(Exception):
                writer.close()
            task.cancel()
        await self._settle()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def stop(self) -> None:
        await self.drop_all()

    async def _settle(self) -> None:
        tasks = list(self._sessions)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions[task] = writer
        self.connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        line = SimulatedLine() if self.rfc2217 else None
        if line is not None:
            self._lines = [*self._lines[-7:], line]
        port = StreamSimPort(reader, writer, rfc2217_line=line)
        try:
            await self._play(port)
        except (ConnectionError, OSError) as exc:
            log.debug(ev.SIMULATOR_CONNECTION_ENDED, device=self.name, reason=str(exc))
        except asyncio.CancelledError:  # drop_all()/stop(): asyncio's server callback expects a plain end
            log.debug(ev.SIMULATOR_CONNECTION_DROPPED, device=self.name)
        finally:
            self._sessions.pop(task, None)
            with contextlib.suppress(Exception):
                writer.close()

    async def _play(self, port: StreamSimPort) -> None:
        simulator = self.factory()
        await simulator.run(port)
