"""The metrics listener: a separate, read-only HTTP(S) port for Prometheus (h11 over asyncio streams).

Only ``GET``/``HEAD`` of the configured path are answered (``405`` for any other method, ``404`` for any
other path); nothing on this port changes anything. Clients outside ``allow`` are closed without an
answer; at most ``max_connections`` are served at once and a request must arrive within
:data:`REQUEST_TIMEOUT` seconds. Keep-alive is honoured (Prometheus reuses its connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import Callable

import h11
import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from vitals_agent import log_events as ev
from vitals_agent.config.metrics import MetricsConfig
from vitals_agent.errors import ConfigError
from vitals_agent.net.serving import close_server

log = structlog.get_logger(__name__)

REQUEST_TIMEOUT = 10.0
MAX_HEADER_BYTES = 16 * 1024
MAX_REQUESTS_PER_CONNECTION = 1000


def server_tls(config: MetricsConfig) -> ssl.SSLContext | None:
    if config.cert_file is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError([("metrics.cert_file", f"cannot use {config.cert_file}: {why}")]) from None
    return ctx


class MetricsServer:
    def __init__(self, config: MetricsConfig, render: Callable[[], bytes]) -> None:
        self.config = config
        self.render = render
        self.allow = config.networks()
        self.tls = server_tls(config)
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(config.max_connections)
        self._tasks: set[asyncio.Task[None]] = set()
        self.port: int | None = None
        self.scrapes = 0
        self.refused = 0

    async def start(self) -> None:
        host, port = self.config.address()
        try:
            self._server = await asyncio.start_server(
                self._client, host or None, port, ssl=self.tls, limit=MAX_HEADER_BYTES
            )
        except OSError as exc:
            raise ConfigError(
                [("metrics.listen", f"cannot listen on {self.config.listen}: {exc.strerror or exc}")]
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(ev.METRICS_LISTENING, listen=self.config.listen, port=self.port, tls=self.tls is not None)

    async def stop(self) -> None:
        server, self._server = self._server, None
        await close_server(server, self._tasks)

    def _allowed(self, peer: object) -> bool:
        if not self.allow:
            return True
        if not isinstance(peer, tuple) or not peer:
            return False
        try:
            addr = ipaddress.ip_address(str(peer[0]).split("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.allow)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            peer = writer.get_extra_info("peername")
            if not self._allowed(peer) or self._slots.locked():
                self.refused += 1
                log.debug(ev.METRICS_CLIENT_REFUSED, peer=str(peer[0]) if isinstance(peer, tuple) else None)
                return
            async with self._slots:
                await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, ssl.SSLError, h11.ProtocolError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            request = await self._next_request(conn, reader)
            if request is None:
                return
            status, body, ctype, extra = self._answer(request)
            headers = [
                ("Content-Type", ctype),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                *extra,
            ]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
            if request.method != b"HEAD":
                writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.drain()
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _next_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
        request: h11.Request | None = None
        async with asyncio.timeout(REQUEST_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(8192)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.EndOfMessage):
                    return request
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return None

    def _answer(self, request: h11.Request) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        if path != self.config.path:
            return (
                404,
                b"not found: the metrics are at " + self.config.path.encode() + b"\n",
                "text/plain",
                [],
            )
        if request.method not in (b"GET", b"HEAD"):
            return 405, b"read-only: GET only\n", "text/plain", [("Allow", "GET, HEAD")]
        self.scrapes += 1
        return 200, self.render(), CONTENT_TYPE_LATEST, []
