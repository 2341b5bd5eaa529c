"""The local control API and the room status page: HTTP/1.1 on loopback, asyncio streams, bearer token.

On start the server writes a fresh random token to ``data_dir/control.token`` (0600: readable only by the
service's user) and ``{"host", "port", "pid"}`` to ``data_dir/control.json``. Every request must carry
``Authorization: Bearer <token>``; the one exception is the status page, which a browser opens once as
``/?token=<token>``: the answer sets an HttpOnly, SameSite=Strict cookie and redirects to ``/`` (so the token
leaves the address bar and history). The cookie is accepted for ``GET`` only, so a page can never change the
patient context on a user's behalf (no CSRF). Requests without valid credentials get 401 and no data.

Endpoints (JSON unless noted)::

    GET    /                   status page (HTML, refreshes itself; patient masked; /?reveal=1 shows it)
    GET    /api/status         the service's status snapshot + "patient" (masked)
    GET    /api/patient        {"patient": ...}  (?reveal=1 for the identifiers; audited)
    PUT    /api/patient        body {"mrn", "family"?, "given"?, "name"? ("FAMILY^GIVEN"), "birth_date"?,
                               "sex"?, "encounter"?, "channel"? ("api"|"cli"|"barcode"), "source"?}
    DELETE /api/patient        clear the context (body {"channel"?} optional)
    DELETE /api/held           discard every reading held for a patient (audited)

The status snapshot comes from a :data:`StatusProvider` the service supplies; its shape is
:class:`StatusSnapshot`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import html
import json
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict
from urllib.parse import parse_qs, urlsplit

import structlog

from vitals_agent.agent.audit import CHANNEL_API, AuditLog, write_private
from vitals_agent.agent.patient_context import (
    CHANNELS,
    PatientContextManager,
    PatientDetails,
    PatientError,
    PatientSnapshot,
)
from vitals_agent.errors import VitalsAgentError

if TYPE_CHECKING:
    from vitals_agent.config.schema import Config

log = structlog.get_logger(__name__)

TOKEN_FILE = "control.token"  # noqa: S105 - a file name, not a secret
ENDPOINT_FILE = "control.json"
COOKIE = "vitals_control"
MAX_BODY = 16 * 1024
MAX_HEADER_LINES = 64
READ_TIMEOUT = 10.0


# ------------------------------------------------------------------------------------------ snapshot schema


class DeviceSnapshot(TypedDict):
    """One device (``DeviceStatus.as_dict()`` in agent/runtime.py). Times are ISO-8601 strings."""

    id: str
    driver: str
    connected: bool
    detail: str
    last_seen: str | None
    last_reading_at: str | None
    last_reading: dict[str, str]  # metric -> "value unit" (no patient data)
    readings: int
    messages: int
    decode_failures: int
    link_failures: int
    battery_percent: int | None
    identity: dict[str, Any]


class OutboxSnapshot(TypedDict):
    depth: int  # messages waiting to be sent
    dead: int  # dead letters (refused by the EHR or given up)


class SenderSnapshot(TypedDict, total=False):
    connected: bool
    last_error: str | None  # one line, no patient data
    last_error_at: str | None
    last_ack_at: str | None
    sent: int


class StatusSnapshot(TypedDict):
    """What the service's status provider returns (``AgentService.status()``)."""

    version: str
    started_at: str | None
    facility: str
    location: str
    devices: list[DeviceSnapshot]
    outbox: OutboxSnapshot
    sender: SenderSnapshot
    refused: NotRequired[int]


StatusProvider = Callable[[], Mapping[str, Any]]
"""Returns a :class:`StatusSnapshot` (a plain dict of that shape is fine)."""


class ControlError(VitalsAgentError):
    """The control API could not be reached or refused the request."""


# ------------------------------------------------------------------------------------------ rendering


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def when(value: Any, now: datetime) -> str:
    """``13:05:02 (2 min ago)`` in the host's local time; ``never`` for None."""
    moment = _parse_time(value)
    if moment is None:
        return "never"
    local = moment.astimezone()
    seconds = (now - moment).total_seconds()
    if seconds < 0:
        rel = "in " + _span(-seconds)
    elif seconds < 5:
        rel = "just now"
    else:
        rel = _span(seconds) + " ago"
    return f"{local:%H:%M:%S} ({rel})"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 5400:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{int(seconds // 86400)} d"


def _reading_text(dev: Mapping[str, Any]) -> str:
    values = dev.get("last_reading") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(values.items())) if values else ""


def patient_line(p: Mapping[str, Any], now: datetime) -> str:
    """One line about the room's patient (masked unless the snapshot was revealed)."""
    if not p.get("set"):
        if p.get("require_patient"):
            line = "No patient set: readings are HELD until a patient is set (scan a wristband)"
        else:
            line = "No patient set: readings are sent unbound (by room)"
    else:
        who = str(p.get("mrn") or "")
        if p.get("name"):
            who += f" ({p['name']})"
        if p.get("revealed"):
            extra = [f"{k} {p[k]}" for k in ("birth_date", "sex", "encounter") if p.get(k)]
            if extra:
                who += " " + ", ".join(extra).replace("birth_date", "born")
        via = str(p.get("channel") or "?") + (f" {p['source']}" if p.get("source") else "")
        set_at, expires = when(p.get("set_at"), now), when(p.get("expires_at"), now)
        line = f"Patient {who}: set via {via} at {set_at}, expires {expires}"
    if p.get("held"):
        line += f"; {p['held']} held reading(s), oldest {when(p.get('oldest_held_at'), now)}"
    return line


def render_text(status: Mapping[str, Any], patient: Mapping[str, Any], now: datetime | None = None) -> str:
    """The terminal form of the status page (``vitals-agent status``)."""
    now = now or datetime.now(UTC)
    out = [
        f"vitals-agent {status.get('version', '?')}  {status.get('facility', '')} "
        f"{status.get('location', '')}".rstrip(),
        f"started {when(status.get('started_at'), now)}",
        "",
        patient_line(patient, now),
        "",
        "Devices:",
    ]
    devices = list(status.get("devices") or [])
    if not devices:
        out.append("  (none configured)")
    for dev in devices:
        state = "connected" if dev.get("connected") else "DISCONNECTED"
        detail = f" ({dev['detail']})" if dev.get("detail") else ""
        battery = f", battery {dev['battery_percent']}%" if dev.get("battery_percent") is not None else ""
        out.append(f"  {dev.get('id')} [{dev.get('driver')}]: {state}{detail}{battery}")
        out.append(
            f"    last seen {when(dev.get('last_seen'), now)}; decode errors {dev.get('decode_failures', 0)}"
        )
        reading = _reading_text(dev)
        out.append(
            f"    last reading {when(dev.get('last_reading_at'), now)}" + (f": {reading}" if reading else "")
        )
    outbox = status.get("outbox") or {}
    sender = status.get("sender") or {}
    out += [
        "",
        f"Outbox: {outbox.get('depth', 0)} waiting, {outbox.get('dead', 0)} dead letter(s)",
        "Last EHR error: "
        + (
            f"{sender['last_error']} ({when(sender.get('last_error_at'), now)})"
            if sender.get("last_error")
            else "none"
        ),
    ]
    return "\n".join(out) + "\n"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


@functools.cache
def _page_template() -> Template:
    """The status page template, read from the package once (the page reloads every few seconds)."""
    return Template(resources.files("vitals_agent.data").joinpath("status.html").read_text("utf-8"))


def render_html(
    status: Mapping[str, Any],
    patient: Mapping[str, Any],
    *,
    refresh_seconds: int = 5,
    now: datetime | None = None,
) -> str:
    """The status page. Every value is HTML-escaped; no script; refreshes with a meta refresh."""
    now = now or datetime.now(UTC)
    revealed = bool(patient.get("revealed"))
    # A revealed page falls back to the masked page after 30 s; the masked one just refreshes.
    refresh = f"{max(refresh_seconds, 30)};url=/" if revealed else f"{refresh_seconds};url=/"
    if not patient.get("set"):
        cls = "held" if patient.get("require_patient") else "unbound"
        action = ""
    else:
        cls = "bound"
        action = (
            '<a class="btn" href="/">Hide</a>' if revealed else '<a class="btn" href="/?reveal=1">Reveal</a>'
        )
    patient_html = (
        f'<div id="patient" class="card {cls}"><p>{_e(patient_line(patient, now))}</p>{action}</div>'
    )

    rows = []
    for dev in status.get("devices") or []:
        connected = bool(dev.get("connected"))
        state = "connected" if connected else "disconnected"
        detail = f'<br><span class="muted">{_e(dev["detail"])}</span>' if dev.get("detail") else ""
        battery = f"{_e(dev['battery_percent'])}%" if dev.get("battery_percent") is not None else "&ndash;"
        reading = _reading_text(dev)
        errors = int(dev.get("decode_failures") or 0)
        rows.append(
            f'<tr class="device" data-id="{_e(dev.get("id"))}">'
            f'<td><b>{_e(dev.get("id"))}</b><br><span class="muted">{_e(dev.get("driver"))}</span></td>'
            f'<td><span class="state"><span class="dot {state}"></span>{state}</span>{detail}</td>'
            f"<td>{_e(when(dev.get('last_seen'), now))}</td>"
            f"<td>{_e(when(dev.get('last_reading_at'), now))}"
            + (f'<br><span class="values">{_e(reading)}</span>' if reading else "")
            + "</td>"
            f'<td class="num{" warn" if errors else ""}">{errors}</td>'
            f'<td class="num">{battery}</td></tr>'
        )
    if not rows:
        rows.append('<tr><td colspan="6" class="muted">No devices configured</td></tr>')

    outbox = status.get("outbox") or {}
    sender = status.get("sender") or {}
    depth, dead = int(outbox.get("depth") or 0), int(outbox.get("dead") or 0)
    if sender.get("last_error"):
        at = when(sender.get("last_error_at"), now)
        ehr_error = f'{_e(sender["last_error"])} <span class="muted">{_e(at)}</span>'
    else:
        ehr_error = "none"
    delivery = (
        '<div id="delivery" class="card">'
        f'<div class="stat"><span class="big">{depth}</span> waiting in outbox</div>'
        f'<div class="stat{" bad" if dead else ""}"><span class="big">{dead}</span> dead letter(s)</div>'
        f'<div class="stat wide">Last EHR error: <span id="ehr-error">{ehr_error}</span></div>'
        "</div>"
    )
    return _page_template().substitute(
        refresh=_e(refresh),
        title=_e(f"vitals-agent {status.get('location') or status.get('facility') or ''}".strip()),
        facility=_e(status.get("facility") or ""),
        location=_e(status.get("location") or ""),
        version=_e(status.get("version") or "?"),
        started=_e(when(status.get("started_at"), now)),
        updated=_e(f"{now.astimezone():%H:%M:%S}"),
        patient=patient_html,
        device_rows="\n".join(rows),
        delivery=delivery,
    )


# ------------------------------------------------------------------------------------------ server


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


_REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    421: "Misdirected Request",
    500: "Internal Server Error",
}

_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}


class _Request:
    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        parts = urlsplit(target)
        self.path = parts.path or "/"
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.headers = headers
        self.body = body

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise _HttpError(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _HttpError(400, "body must be a JSON object")
        return data

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


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
    ) -> None:
        self._handlers: set[asyncio.Task[Any]] = set()
        self.data_dir = data_dir
        self.patients = patients
        self.status = status
        self.host = host
        self.requested_port = port
        self.audit = audit if audit is not None else patients.audit
        self.refresh_seconds = refresh_seconds
        self.now = now
        self.token = ""
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def token_path(self) -> Path:
        return self.data_dir / TOKEN_FILE

    @property
    def endpoint_path(self) -> Path:
        return self.data_dir / ENDPOINT_FILE

    @property
    def url(self) -> str:
        return _http_url(self.host, self.port)

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.token = secrets.token_urlsafe(32)
        write_private(self.token_path, self.token + "\n")
        self._server = await asyncio.start_server(self._handle, self.host, self.requested_port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        write_private(
            self.endpoint_path, json.dumps({"host": self.host, "port": self.port, "pid": os.getpid()}) + "\n"
        )
        log.info("control API listening", url=self.url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            handlers = list(self._handlers)
            for handler in handlers:
                handler.cancel()
            if handlers:
                await asyncio.wait(handlers, timeout=0.5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.endpoint_path.unlink()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- HTTP plumbing --------------------------------------------------------------------------------
    async def _read_request(self, reader: asyncio.StreamReader) -> _Request:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError
        try:
            method, target, version = line.decode("ascii").strip().split(" ")
        except (UnicodeDecodeError, ValueError):
            raise _HttpError(400, "malformed request line") from None
        if not version.startswith("HTTP/1."):
            raise _HttpError(400, "HTTP/1.x only")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise _HttpError(400, "malformed header")
            headers[name.strip().lower()] = value.strip()
        else:
            raise _HttpError(400, "too many headers")
        if "transfer-encoding" in headers:
            raise _HttpError(411, "send a Content-Length body")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _HttpError(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise _HttpError(413, f"body larger than {MAX_BODY} bytes")
        body = await reader.readexactly(length) if length else b""
        return _Request(method.upper(), target, headers, body)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection; tracked so that stop() can end it before the stores close."""
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._handle_connection(reader, writer)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(self._read_request(reader), READ_TIMEOUT)
            except _HttpError as exc:
                await self._send_json(writer, exc.status, {"error": exc.message})
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                return
            try:
                await self._dispatch(request, writer)
            except _HttpError as exc:
                await self._send_json(writer, exc.status, {"error": exc.message})
            except PatientError as exc:
                await self._send_json(writer, 400, {"error": str(exc)})
            except VitalsAgentError as exc:  # e.g. the audit log cannot be written: one line, no data
                log.error("control API request failed", path=request.path, error=str(exc))
                await self._send_json(writer, 500, {"error": str(exc)})
            except Exception as exc:  # a bug must not kill the server; no details to the client
                log.exception("control API request failed", path=request.path, error=type(exc).__name__)
                await self._send_json(writer, 500, {"error": "internal error"})
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Connection": "close",
            **_SECURITY_HEADERS,
            **(extra or {}),
        }
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode("latin-1") + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _send_json(
        self, writer: asyncio.StreamWriter, status: int, data: Any, extra: Mapping[str, str] | None = None
    ) -> None:
        await self._send(writer, status, json.dumps(data).encode(), "application/json", extra)

    # --- auth ------------------------------------------------------------------------------------------
    def _valid(self, candidate: str | None) -> bool:
        return bool(candidate) and bool(self.token) and hmac.compare_digest(candidate or "", self.token)

    def _authorised(self, request: _Request) -> bool:
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and self._valid(value.strip()):
            return True
        # The page's cookie is good for reading only: no state change can ride on it.
        return request.method == "GET" and self._valid(request.cookie(COOKIE))

    def _host_ok(self, request: _Request) -> bool:
        """Refuse other Host names (DNS rebinding): the browser must have asked for loopback itself."""
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in {"127.0.0.1", "localhost", "[::1]", self.host, f"[{self.host}]"} or name.startswith(
            "127."
        )

    # --- routes ----------------------------------------------------------------------------------------
    async def _dispatch(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        if not self._host_ok(request):
            raise _HttpError(421, "wrong Host")
        if request.path == "/" and request.method == "GET" and "token" in request.query:
            if not self._valid(request.query["token"]):
                await self._unauthorised(request, writer)
                return
            cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
            await self._send(writer, 303, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie})
            return
        if not self._authorised(request):
            await self._unauthorised(request, writer)
            return
        route = (request.method, request.path)
        if route == ("GET", "/"):
            reveal = request.query.get("reveal") == "1"
            patient = self._patient(reveal, "page")
            page = render_html(self.status(), patient, refresh_seconds=self.refresh_seconds, now=self.now())
            await self._send(writer, 200, page.encode(), "text/html; charset=utf-8")
        elif route == ("GET", "/api/status"):
            data = dict(self.status())
            data["patient"] = self._patient(False, CHANNEL_API)
            await self._send_json(writer, 200, data)
        elif route == ("GET", "/api/patient"):
            reveal = request.query.get("reveal") == "1"
            await self._send_json(writer, 200, {"patient": self._patient(reveal, CHANNEL_API)})
        elif route == ("PUT", "/api/patient"):
            await self._put_patient(request, writer)
        elif route == ("DELETE", "/api/patient"):
            body = request.json()
            channel, source = self._channel(body)
            was_set = self.patients.clear(channel, source=source)
            await self._send_json(writer, 200, {"cleared": was_set, "patient": self._patient(False, None)})
        elif route == ("DELETE", "/api/held"):
            body = request.json()
            channel, source = self._channel(body)
            count = self.patients.discard_held(channel, source=source)
            await self._send_json(writer, 200, {"discarded": count})
        elif request.path in {"/", "/api/status", "/api/patient", "/api/held"}:
            raise _HttpError(405, f"{request.method} not allowed on {request.path}")
        else:
            raise _HttpError(404, "not found")

    async def _unauthorised(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        log.info("control API request refused: no valid token", method=request.method, path=request.path)
        extra = {"WWW-Authenticate": 'Bearer realm="vitals-agent"'}
        if request.path == "/":
            page = (
                "<!doctype html><title>vitals-agent</title><p>Not authorised. Open the link printed by "
                "<code>vitals-agent status --url --config FILE</code>.</p>"
            )
            await self._send(writer, 401, page.encode(), "text/html; charset=utf-8", extra)
        else:
            await self._send_json(
                writer, 401, {"error": "unauthorized: send Authorization: Bearer <token>"}, extra
            )

    def _channel(self, body: Mapping[str, Any]) -> tuple[str, str | None]:
        channel = body.get("channel", CHANNEL_API)
        if channel not in CHANNELS:
            raise _HttpError(400, f"channel must be one of {', '.join(sorted(CHANNELS))}")
        source = body.get("source")
        if source is not None and (not isinstance(source, str) or len(source) > 64):
            raise _HttpError(400, "source must be a short string")
        return str(channel), source

    def _patient(self, reveal: bool, channel: str | None) -> PatientSnapshot:
        snap = self.patients.snapshot(self.now(), reveal=reveal)
        if reveal and snap["set"] and self.audit is not None:
            self.audit.record("context_revealed", channel=channel, patient_mrn=snap["mrn"])
        return snap

    async def _put_patient(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        body = request.json()
        channel, source = self._channel(body)
        fields = {k: v for k, v in body.items() if k not in {"channel", "source", "name"}}
        if "name" in body:
            name = body["name"]
            if not isinstance(name, str):
                raise _HttpError(400, "name: must be a string FAMILY^GIVEN")
            family, _, given = name.partition("^")
            fields.setdefault("family", family or None)
            fields.setdefault("given", given or None)
        fields.setdefault("identifier_type", self.patients.config.identifier_type)
        details = PatientDetails.parse(fields)
        await self.patients.apply_set(details, channel, source=source)
        await self._send_json(writer, 200, {"patient": self._patient(False, None)})


# ------------------------------------------------------------------------------------------ client


def _http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _read_agent_file(path: Path) -> str:
    """A file the running agent wrote to its data_dir (mode 0600). Raises :class:`ControlError`."""
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise ControlError(f"the agent is not running (no {path})") from None
    except PermissionError:
        raise ControlError(f"cannot read {path}: run this as the agent's user") from None


class ControlClient:
    """Talks to a running agent's control API (the CLI uses this)."""

    def __init__(self, host: str, port: int, token: str, *, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> ControlClient:
        endpoint = data_dir / ENDPOINT_FILE
        try:
            info = json.loads(_read_agent_file(endpoint))
            host, port = str(info["host"]), int(info["port"])
        except (ValueError, KeyError, TypeError):
            raise ControlError(f"{endpoint} is unreadable") from None
        return cls(host, port, _read_agent_file(data_dir / TOKEN_FILE).strip())

    @classmethod
    def from_config(cls, config: Config) -> ControlClient:
        """The client for the agent that runs with ``config`` (its ``data_dir``; never created here)."""
        from vitals_agent.agent.paths import data_dir

        return cls.from_data_dir(data_dir(config, create=False))

    @property
    def url(self) -> str:
        return _http_url(self.host, self.port)

    async def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """One request. Returns (HTTP status, parsed JSON body). Raises :class:`ControlError`."""
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(head.encode() + payload)
                    await writer.drain()
                    raw = await reader.read()
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
        except TimeoutError:
            raise ControlError(f"the agent at {self.url} did not answer in {self.timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"cannot reach the agent at {self.url}: {exc.strerror or exc}") from None
        head_bytes, _, content = raw.partition(b"\r\n\r\n")
        try:
            status = int(head_bytes.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise ControlError(f"the agent at {self.url} sent a malformed answer") from None
        try:
            data = json.loads(content) if content else None
        except ValueError:
            data = None
        return status, data

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """Like :meth:`request` but raises :class:`ControlError` with the server's message unless 200."""
        status, data = await self.request(method, path, body)
        if status != 200:
            message = data.get("error") if isinstance(data, dict) else None
            raise ControlError(message or f"the agent answered HTTP {status}")
        return data
