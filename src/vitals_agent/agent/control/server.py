"""The control API's server: HTTP/1.1 on loopback with h11 over asyncio streams, one request a connection.

On start it writes a fresh random token to ``data_dir/control.token`` (0600: readable only by the
service's user) and ``{"host", "port", "pid"}`` to ``data_dir/control.json``; requests are answered by
:class:`~vitals_agent.agent.control.routes.Routes`.

A flood of connections must not take the file descriptors the readings need (issue 10): at most
``max_connections`` are served at once (the rest get an immediate 503 and are closed), a whole request
must arrive within ``request_timeout`` seconds, and an answer that cannot be written within the same time
is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11
import structlog

from vitals_agent import log_events as ev
from vitals_agent.agent.control.common import ENDPOINT_FILE, TOKEN_FILE, StatusProvider, http_url
from vitals_agent.agent.control.request import HttpError, Request
from vitals_agent.agent.control.routes import MAX_BODY, Credentials, Response, Routes
from vitals_agent.agent.patient.context import PatientContextManager
from vitals_agent.agent.patient.review import ReviewDesk
from vitals_agent.agent.storage.audit import AuditLog, write_private

if TYPE_CHECKING:
    from vitals_agent.agent.patient.lookup import PatientLookup

log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 5.0
MAX_HEADER_BYTES = 16 * 1024
BACKLOG = 64  # connections the kernel queues while the agent is busy (they hold no agent descriptor)
ACCEPT_ERROR_PAUSE = 0.1
BUSY_LOG_INTERVAL = 60.0

_BUSY_BODY = json.dumps({"error": "the agent is busy (too many control connections); try again"}).encode()
# Sent without reading the request: the connection is over the cap and is closed at once.
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
) + _BUSY_BODY


def connection_cap(limit: int | None = None) -> int:
    """Concurrent control connections allowed: MAX_CONNECTIONS, fewer when the process may open few
    files (at most 1/16 of the soft RLIMIT_NOFILE, at least 4)."""
    if limit is None:
        try:
            import resource
        except ImportError:  # not a POSIX system
            return MAX_CONNECTIONS
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, limit // 16))


# ------------------------------------------------------------------------------------------ caller identity


def _proc_address(host: str, port: int) -> str:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host byte order, then the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    packed = socket.inet_pton(family, host.split("%")[0])
    words = [int.from_bytes(packed[i : i + 4], sys.byteorder) for i in range(0, len(packed), 4)]
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def socket_owner(peer: Any, local: Any) -> dict[str, Any]:
    """The operating-system user that owns the other end of a loopback TCP connection.

    Read from ``/proc/net/tcp`` or ``tcp6`` (Linux); ``{}`` when it cannot be found (other systems).
    Used for the audit record of a change, next to what the caller claims about itself."""
    if not isinstance(peer, tuple) or not isinstance(local, tuple):
        return {}
    try:
        theirs, ours = _proc_address(peer[0], peer[1]), _proc_address(local[0], local[1])
    except (OSError, ValueError, IndexError, TypeError):
        return {}
    table = "/proc/net/tcp6" if ":" in str(peer[0]) else "/proc/net/tcp"
    try:
        with open(table, encoding="ascii") as fh:
            for line in fh:
                cols = line.split()
                if len(cols) > 7 and cols[1] == theirs and cols[2] == ours:
                    uid = int(cols[7])
                    return {"uid": uid, "user": _user_name(uid)}
    except (OSError, ValueError):
        pass
    return {}


def _user_name(uid: int) -> str | None:
    try:
        import pwd
    except ImportError:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


# ------------------------------------------------------------------------------------------ server


class ControlServer:
    """The control API + status page for one running agent."""

    def __init__(
        self,
        data_dir: Path,
        patients: PatientContextManager,
        status: StatusProvider,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        audit: AuditLog | None = None,
        refresh_seconds: int = 5,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_connections: int | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        lookup: PatientLookup | None = None,
        review: ReviewDesk | None = None,
    ) -> None:
        self._handlers: set[asyncio.Task[Any]] = set()
        self.data_dir = data_dir
        self.host = host
        self.requested_port = port
        self.max_connections = max_connections if max_connections is not None else connection_cap()
        self.request_timeout = request_timeout
        self.clock = clock
        self.token = ""
        self.port = 0
        self.busy_refused = 0  # connections closed at once because max_connections were open
        self._busy_logged_at: float | None = None
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self.credentials = Credentials("", clock=clock)
        # start() gives the routes their token and the host names of the bound address
        self.routes = Routes(
            patients,
            status,
            self.credentials,
            allowed_hosts=frozenset(),
            audit=audit,
            refresh_seconds=refresh_seconds,
            now=now,
            lookup=lookup,
            review=review,
        )

    @property
    def token_path(self) -> Path:
        return self.data_dir / TOKEN_FILE

    @property
    def endpoint_path(self) -> Path:
        return self.data_dir / ENDPOINT_FILE

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._handlers)

    def allowed_hosts(self) -> frozenset[str]:
        """``Host`` values a request may carry: a loopback name with this server's port."""
        names = {"127.0.0.1", "localhost", "[::1]", f"[{self.host}]" if ":" in self.host else self.host}
        hosts = {f"{name}:{self.port}" for name in names}
        if self.port == 80:
            hosts |= names
        return frozenset(hosts)

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.token = self.credentials.token = secrets.token_urlsafe(32)
        write_private(self.token_path, self.token + "\n")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.create_server((self.host, self.requested_port), family=family, backlog=BACKLOG)
        listener.setblocking(False)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self.routes.allowed_hosts = self.allowed_hosts()
        self._acceptor = asyncio.create_task(self._accept_loop(listener), name="control-accept")
        write_private(
            self.endpoint_path, json.dumps({"host": self.host, "port": self.port, "pid": os.getpid()}) + "\n"
        )
        log.info(ev.CONTROL_LISTENING, url=self.url, max_connections=self.max_connections)

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        handlers = list(self._handlers)
        for handler in handlers:
            handler.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=0.5)
        with contextlib.suppress(FileNotFoundError):
            self.endpoint_path.unlink()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- connections -----------------------------------------------------------------------------------
    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accept one connection at a time; one over the cap is answered 503 and closed in the same step,
        so the agent never holds more than ``max_connections`` (+1) control sockets."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. EMFILE: the process is out of descriptors; do not spin
                log.warning(ev.CONTROL_ACCEPT_FAILED, error=exc.strerror or str(exc))
                await asyncio.sleep(ACCEPT_ERROR_PAUSE)
                continue
            if len(self._handlers) >= self.max_connections:
                self._refuse_busy(conn)
                continue
            task = asyncio.create_task(self._connection(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def _refuse_busy(self, conn: socket.socket) -> None:
        self.busy_refused += 1
        now = self.clock()
        if self._busy_logged_at is None or now - self._busy_logged_at >= BUSY_LOG_INTERVAL:
            self._busy_logged_at = now
            log.warning(
                ev.CONTROL_BUSY,
                max_connections=self.max_connections,
                refused=self.busy_refused,
            )
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(_BUSY)  # a few hundred bytes: the kernel takes them at once, or they are dropped
        conn.close()

    async def _connection(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()
            return
        flushed = False
        try:
            flushed = await self._serve(reader, writer)
        finally:
            # Free the descriptor now: a graceful close once the answer is in the kernel's hands, an
            # abort when it could not be written (a peer that does not read must not hold it).
            if flushed:
                writer.close()
            else:
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request, answer it. True when the answer was handed to the kernel in time."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            async with asyncio.timeout(self.request_timeout):
                request = await self._read_request(conn, reader, writer)
        except HttpError as exc:
            response = Response.json(exc.status, {"error": exc.message})
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
            response = Response.json(status, {"error": "malformed request"})
        except (TimeoutError, ConnectionError, OSError):
            return False  # idle, too slow or gone: close without a word
        else:
            response = await self.routes.handle(request)
        return await self._write(conn, writer, response)

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(8192))
            elif isinstance(event, h11.Request):
                head = event
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                if "transfer-encoding" in headers:
                    raise HttpError(411, "send a Content-Length body")
                if int(headers.get("content-length", "0")) > MAX_BODY:
                    raise HttpError(413, f"body larger than {MAX_BODY} bytes")
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
                return Request(
                    method=head.method.decode("ascii", "replace").upper(),
                    target=head.target.decode("ascii", "replace"),
                    headers={k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers},
                    body=bytes(body),
                    identify=functools.partial(socket_owner, peer, local),
                )
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError
            else:  # pragma: no cover - h11 has no other client events (PAUSED needs a second request)
                raise HttpError(400, "unexpected request")

    async def _write(self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> bool:
        headers = [
            *response.header_list(),
            ("Content-Length", str(len(response.body))),
            ("Connection", "close"),
        ]
        try:
            reason = HTTPStatus(response.status).phrase.encode()
        except ValueError:
            reason = b""
        try:
            data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
            data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"") if response.body else data
            data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:  # a state h11 cannot answer from: close instead
            return False
        try:
            writer.write(data)
            async with asyncio.timeout(self.request_timeout):
                await writer.drain()
        except (ConnectionError, OSError, TimeoutError):
            return False
        return True
