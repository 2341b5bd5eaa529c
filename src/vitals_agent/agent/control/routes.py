"""The control API's routes and its credentials: a request in, a response out, no sockets.

Endpoints (JSON unless noted)::

    GET    /?code=CODE         status page login: a single-use code (60 s) -> session cookie, 303 to /
    GET    /                   status page (HTML, refreshes itself; patient masked; /?reveal=1 shows it)
    POST   /api/login-code     a new single-use page login code {"code", "expires_in", "path"}
    GET    /api/status         the service's status snapshot + "patient" (masked)
    GET    /api/patient        {"patient": ...}  (?reveal=1 for the identifiers; audited)
    PUT    /api/patient        body {"mrn", "family"?, "given"?, "name"? ("FAMILY^GIVEN"), "birth_date"?,
                               "sex"?, "encounter"?, "channel"? ("api"|"cli"|"barcode"), "source"?}
                               -> {"patient": ..., "replaced": masked previous patient or null}
                               With [pdq] the MRN is looked up in the EHR first and nothing is bound
                               yet: {"outcome": "pending"|"fallback", "message", "pending"|"patient"},
                               or 404 (no such patient) / 503 (EHR not usable) {"outcome", "error"}
    POST   /api/patient/confirm  body {"pick"?}: bind the pending patient from the EHR's answer (409: none)
    POST   /api/patient/cancel   end a pending confirmation
    POST   /patient/confirm    the status page's Confirm (form: csrf, pick; session cookie) -> 303 to /
    POST   /patient/cancel     the status page's Cancel (form: csrf; session cookie) -> 303 to /
    DELETE /api/patient        clear the context (body {"channel"?, "source"?} optional)
    DELETE /api/held           discard every reading held for a patient (audited)

Credentials: every API request carries ``Authorization: Bearer <token>``. The status page never sees the
token: ``vitals-agent status --url`` asks for a login code (bearer), the browser trades it once for a
random session id in an HttpOnly, SameSite=Strict cookie, and the code is gone (used or 60 s old). The
session cookie is good for ``GET``, and for exactly two ``POST`` forms of the page -- Confirm and Cancel
of a pending patient confirmation -- which must also carry the page's form token (an HMAC of the session
under the API token: a cross-site form cannot know it, so no CSRF).

Audit: the channel recorded is the real one (``api`` for a bearer call, ``page`` for the status page);
what the caller says about itself (``channel`` -> ``client``, ``source``) is recorded as its claim, next to
the operating-system user that owns the calling socket when the server could find it.
"""

from __future__ import annotations

import hmac
import html
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import structlog

from vitals_agent import log_events as ev
from vitals_agent.agent.control.common import StatusProvider
from vitals_agent.agent.control.page import render_html
from vitals_agent.agent.control.request import HttpError, Request
from vitals_agent.agent.control.review_routes import API_PATHS as REVIEW_PATHS
from vitals_agent.agent.control.review_routes import PAGE_FORMS as REVIEW_FORMS
from vitals_agent.agent.control.review_routes import Answer, ReviewRoutes
from vitals_agent.agent.patient.context import (
    CHANNELS,
    PatientContextManager,
    PatientDetails,
    PatientError,
    PatientSnapshot,
    check_text,
)
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.patient.review import ReviewDesk
from vitals_agent.agent.storage.audit import CHANNEL_API, AuditLog
from vitals_agent.errors import VitalsAgentError

if TYPE_CHECKING:  # the [pdq] lookup (and its HL7 QBP/RSP codec) loads only when configured
    from vitals_agent.agent.patient.lookup import PatientLookup

log = structlog.get_logger(__name__)

COOKIE = "vitals_session"
LOGIN_CODE_SECONDS = 60.0
SESSION_SECONDS = 12 * 3600.0  # sliding: a page left open keeps its session while it refreshes
MAX_LOGIN_CODES = 16
MAX_SESSIONS = 32
MAX_BODY = 16 * 1024
CHANNEL_PAGE = "page"

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}

KNOWN_PATHS = frozenset(
    {
        "/",
        "/api/status",
        "/api/patient",
        "/api/held",
        "/api/login-code",
        "/api/patient/confirm",
        "/api/patient/cancel",
        "/patient/confirm",
        "/patient/cancel",
    }
)
PAGE_FORMS = frozenset({"/patient/confirm", "/patient/cancel"})  # the POSTs the page's session may make


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any, headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, json.dumps(data).encode(), "application/json", dict(headers or {}))

    @classmethod
    def html(cls, status: int, page: str, headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, page.encode(), "text/html; charset=utf-8", dict(headers or {}))

    def header_list(self) -> list[tuple[str, str]]:
        """Every header to send, security headers included (the server adds framing headers)."""
        return [("Content-Type", self.content_type), *SECURITY_HEADERS.items(), *self.headers.items()]


# ------------------------------------------------------------------------------------------ credentials


def _match(candidate: str, secrets_: Mapping[str, float]) -> str | None:
    """The stored secret equal to ``candidate`` (constant time per comparison), or None."""
    found = None
    for known in secrets_:
        if hmac.compare_digest(candidate.encode(), known.encode()):
            found = known
    return found


class Credentials:
    """The API's bearer token, the page's single-use login codes and its sessions (in memory only)."""

    def __init__(self, token: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token
        self._clock = clock
        self._codes: OrderedDict[str, float] = OrderedDict()  # code -> monotonic deadline
        self._sessions: OrderedDict[str, float] = OrderedDict()  # session id -> monotonic deadline

    def bearer(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        value = value.strip()
        return (
            scheme.lower() == "bearer"
            and bool(value)
            and bool(self.token)
            and hmac.compare_digest(value.encode(), self.token.encode())
        )

    def _expire(self) -> None:
        now = self._clock()
        for store in (self._codes, self._sessions):
            for key in [k for k, deadline in store.items() if deadline <= now]:
                del store[key]

    def new_code(self) -> str:
        self._expire()
        code = secrets.token_urlsafe(18)
        self._codes[code] = self._clock() + LOGIN_CODE_SECONDS
        while len(self._codes) > MAX_LOGIN_CODES:
            self._codes.popitem(last=False)
        return code

    def redeem(self, code: str) -> str | None:
        """Trade a live code for a new session id; the code is gone afterwards, whatever the answer."""
        self._expire()
        known = _match(code, self._codes)
        if known is None:
            return None
        del self._codes[known]
        session = secrets.token_urlsafe(32)
        self._sessions[session] = self._clock() + SESSION_SECONDS
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def form_token(self, session: str) -> str:
        """The page's form token for ``session`` (its Confirm and Cancel forms carry it)."""
        return hmac.new(self.token.encode(), b"form:" + session.encode(), "sha256").hexdigest()

    def form(self, session: str | None, token: str | None) -> bool:
        """A page form: a live session and that session's form token."""
        if not session or not token or not self.session(session):
            return False
        return hmac.compare_digest(token.encode(), self.form_token(session).encode())

    def session(self, session: str | None) -> bool:
        if not session:
            return False
        self._expire()
        known = _match(session, self._sessions)
        if known is None:
            return False
        self._sessions[known] = self._clock() + SESSION_SECONDS
        self._sessions.move_to_end(known)
        return True


# ------------------------------------------------------------------------------------------ routes


class Routes:
    """Answers one request. Never raises: errors become a JSON ``{"error": ...}`` with their status."""

    def __init__(
        self,
        patients: PatientContextManager,
        status: StatusProvider,
        credentials: Credentials,
        *,
        allowed_hosts: frozenset[str],
        audit: AuditLog | None = None,
        refresh_seconds: int = 5,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        lookup: PatientLookup | None = None,
        review: ReviewDesk | None = None,
    ) -> None:
        self.lookup = lookup
        self._shown: set[tuple[str, str]] = set()  # (session, pending since) whose details the page showed
        self.patients = patients
        self.status = status
        self.credentials = credentials
        self.allowed_hosts = allowed_hosts
        self.audit = audit if audit is not None else patients.audit
        self.refresh_seconds = refresh_seconds
        self.now = now
        # the clinician review's endpoints and page forms (review_routes.py), when the agent has a review
        self.review = ReviewRoutes(review, self.audit) if review is not None else None

    async def handle(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except HttpError as exc:
            return Response.json(exc.status, {"error": exc.message})
        except PatientError as exc:
            return Response.json(400, {"error": str(exc)})
        except VitalsAgentError as exc:  # e.g. the audit log cannot be written: one line, no data
            log.error(ev.CONTROL_REQUEST_FAILED, path=request.path, error=str(exc))
            return Response.json(500, {"error": str(exc)})
        except Exception as exc:  # a bug must not kill the server; no details to the client
            log.exception(ev.CONTROL_REQUEST_FAILED, path=request.path, error=type(exc).__name__)
            return Response.json(500, {"error": "internal error"})

    # --- checks ----------------------------------------------------------------------------------------
    def _channel_of(self, request: Request) -> str | None:
        """The real channel of an authorised request (``api`` or ``page``), None when not authorised."""
        if self.credentials.bearer(request.headers.get("authorization", "")):
            return CHANNEL_API
        # The page's session is good for reading, and for its own Confirm/Cancel forms with their token.
        if request.method == "GET" and self.credentials.session(request.cookie(COOKIE)):
            return CHANNEL_PAGE
        forms = PAGE_FORMS | REVIEW_FORMS if self.review is not None else PAGE_FORMS
        if request.method == "POST" and request.path in forms:
            token = _form(request).get("csrf")
            if self.credentials.form(request.cookie(COOKIE), token):
                return CHANNEL_PAGE
        return None

    async def _route(self, request: Request) -> Response:
        # DNS rebinding: the browser must have asked for this loopback address and port itself.
        if request.headers.get("host", "").lower() not in self.allowed_hosts:
            raise HttpError(421, "wrong Host: use 127.0.0.1, localhost or [::1] with the agent's port")
        if request.path == "/" and request.method == "GET" and "code" in request.query:
            return self._login(request.query["code"])
        channel = self._channel_of(request)
        if channel is None:
            return self._unauthorised(request)
        route = (request.method, request.path)
        if route == ("GET", "/"):
            reveal = request.query.get("reveal") == "1"
            patient = self._patient(reveal, channel, request)
            pending = self._page_pending(channel, request)
            session = request.cookie(COOKIE) or ""
            status = self.status()
            # typing into the review panel's forms: the same page without the refresh (review_page.py)
            editing = self.review is not None and request.query.get("enter") == "1"
            panel = ""
            if self.review is not None:
                panel = self.review.panel(
                    status.get("review"),
                    form_token=self.credentials.form_token(session),
                    now=self.now(),
                    editing=editing,
                )
            page = render_html(
                status,
                patient,
                refresh_seconds=self.refresh_seconds,
                now=self.now(),
                pending=pending,
                form_token=self.credentials.form_token(session) if pending is not None else None,
                notice=self.lookup.notice() if self.lookup is not None else None,
                review_panel=panel,
                refreshing=not editing,
            )
            return Response.html(200, page)
        if route == ("POST", "/api/login-code"):
            code = self.credentials.new_code()
            log.info(ev.CONTROL_LOGIN_CODE_ISSUED, expires_in=int(LOGIN_CODE_SECONDS))
            return Response.json(
                200, {"code": code, "expires_in": int(LOGIN_CODE_SECONDS), "path": f"/?code={code}"}
            )
        if route == ("GET", "/api/status"):
            data = dict(self.status())
            data["patient"] = self._patient(False, channel, request)
            if self.lookup is not None:
                data["pending"] = self._pending(False, channel, request)
                data["lookup_notice"] = self.lookup.notice()
            return Response.json(200, data)
        if route == ("GET", "/api/patient"):
            reveal = request.query.get("reveal") == "1"
            answer: dict[str, Any] = {"patient": self._patient(reveal, channel, request)}
            if self.lookup is not None:
                answer["pending"] = self._pending(reveal, channel, request)
            return Response.json(200, answer)
        if route == ("POST", "/api/patient/confirm"):
            return await self._confirm(request, channel, request.json())
        if route == ("POST", "/api/patient/cancel"):
            return await self._cancel(request, channel, request.json())
        if route == ("POST", "/patient/confirm"):
            return await self._page_form(self._confirm(request, channel, _form(request)))
        if route == ("POST", "/patient/cancel"):
            return await self._page_form(self._cancel(request, channel, {}))
        if route == ("PUT", "/api/patient"):
            return await self._put_patient(request, channel)
        if route == ("DELETE", "/api/patient"):
            origin = self._origin(channel, request.json(), request)
            if self.lookup is not None and self.lookup.pending() is not None:
                await self.lookup.cancel(origin)  # "no patient" also ends a confirmation that is waiting
            was_set = self.patients.clear(origin)
            return Response.json(200, {"cleared": was_set, "patient": self._patient(False, None, request)})
        if route == ("DELETE", "/api/held"):
            count = self.patients.discard_held(self._origin(channel, request.json(), request))
            return Response.json(200, {"discarded": count})
        if self.review is not None:
            page_form = channel == CHANNEL_PAGE and request.method == "POST"
            reviewed = await self.review.handle(
                request,
                channel,
                origin=lambda body: self._origin(channel, body, request),
                form=_form(request) if page_form else None,
            )
            if reviewed is not None:
                return _answer(reviewed, page=page_form)
        if request.path in KNOWN_PATHS or request.path in REVIEW_PATHS:
            raise HttpError(405, f"{request.method} not allowed on {request.path}")
        raise HttpError(404, "not found")

    def _login(self, code: str) -> Response:
        session = self.credentials.redeem(code)
        if session is None:
            log.info(ev.CONTROL_LOGIN_REFUSED)
            page = (
                "<!doctype html><title>vitals-agent</title><p>This login link has expired or was used "
                "already. Run <code>vitals-agent status --url</code> for a new one (it works once, "
                f"within {int(LOGIN_CODE_SECONDS)} s).</p>"
            )
            return Response.html(401, page, {"WWW-Authenticate": 'Bearer realm="vitals-agent"'})
        log.info(ev.CONTROL_LOGIN)
        cookie = f"{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/"
        return Response(303, b"", headers={"Location": "/", "Set-Cookie": cookie})

    def _unauthorised(self, request: Request) -> Response:
        log.info(ev.CONTROL_REQUEST_REFUSED, method=request.method, path=request.path)
        extra = {"WWW-Authenticate": 'Bearer realm="vitals-agent"'}
        if request.path == "/":
            page = (
                "<!doctype html><title>vitals-agent</title><p>Not authorised. Open the link printed by "
                "<code>vitals-agent status --url</code> (it works once, within "
                f"{int(LOGIN_CODE_SECONDS)} s).</p>"
            )
            return Response.html(401, page, extra)
        return Response.json(401, {"error": "unauthorized: send Authorization: Bearer <token>"}, extra)

    # --- patient ---------------------------------------------------------------------------------------
    @staticmethod
    def _origin(channel: str, body: Mapping[str, Any], request: Request) -> Origin:
        """Who asks: the ``channel`` it came through, what the caller says about itself (``client``,
        ``source``) and who the OS says it is."""
        claimed = body.get("channel", CHANNEL_API)
        if claimed not in CHANNELS:
            raise HttpError(400, f"channel must be one of {', '.join(sorted(CHANNELS))}")
        source = body.get("source")
        if source is not None and (not isinstance(source, str) or len(source) > 64):
            raise HttpError(400, "source must be a short string")
        if source is not None:
            try:
                check_text(source, "source")
            except ValueError as exc:
                raise HttpError(400, str(exc)) from None
        caller: dict[str, Any] = {}
        if claimed != CHANNEL_API:
            caller["client"] = claimed
        caller.update(request.caller)
        return Origin(channel, source, caller)

    def _patient(self, reveal: bool, channel: str | None, request: Request) -> PatientSnapshot:
        snap = self.patients.snapshot(self.now(), reveal=reveal)
        if reveal and snap["set"] and self.audit is not None:
            self.audit.record("context_revealed", channel=channel, patient_mrn=snap["mrn"], **request.caller)
        return snap

    async def _put_patient(self, request: Request, channel: str) -> Response:
        body = request.json()
        origin = self._origin(channel, body, request)
        fields = {k: v for k, v in body.items() if k not in {"channel", "source", "name"}}
        if "name" in body:
            name = body["name"]
            if not isinstance(name, str):
                raise HttpError(400, "name: must be a string FAMILY^GIVEN")
            family, _, given = name.partition("^")
            fields.setdefault("family", family or None)
            fields.setdefault("given", given or None)
        fields.setdefault("identifier_type", self.patients.config.identifier_type)
        details = PatientDetails.parse(fields)
        if self.lookup is not None:
            return await self._lookup(details, origin, request)
        previous = self.patients.current_details()
        await self.patients.apply_set(details, origin)
        replaced = previous.masked() if previous is not None and previous.mrn != details.mrn else None
        return Response.json(200, {"patient": self._patient(False, None, request), "replaced": replaced})

    # --- lookup then confirm ([pdq]) -------------------------------------------------------------------
    def _pending(self, reveal: bool, channel: str | None, request: Request) -> Any:
        if self.lookup is None:
            return None
        view = self.lookup.view(reveal=reveal)
        if reveal and view is not None and view["candidates"] and self.audit is not None:
            self.audit.record("pdq_revealed", channel=channel, typed_mrn=view["mrn"], **request.caller)
        return view

    def _page_pending(self, channel: str, request: Request) -> Any:
        """The page shows a pending confirmation in full (the person must read name and date of birth);
        the first time a session is shown an answer is audited (not every refresh)."""
        if self.lookup is None:
            return None
        view = self.lookup.view(reveal=True)
        if view is None:
            return None
        key = (request.cookie(COOKIE) or "", view["started_at"])
        if view["candidates"] and key not in self._shown and self.audit is not None:
            if len(self._shown) >= 256:
                self._shown.clear()
            self._shown.add(key)
            self.audit.record(
                "pdq_shown",
                channel=channel,
                typed_mrn=view["mrn"],
                count=len(view["candidates"]),
                **request.caller,
            )
        return view

    async def _lookup(self, details: PatientDetails, origin: Origin, request: Request) -> Response:
        assert self.lookup is not None
        outcome = await self.lookup.lookup(details, origin)
        data = outcome.as_dict()
        if outcome.kind == "pending":
            return Response.json(200, data)
        if outcome.kind == "fallback":
            data["patient"] = self._patient(False, None, request)
            return Response.json(200, data)
        data["error"] = outcome.message
        return Response.json(404 if outcome.kind == "none" else 503, data)

    async def _confirm(self, request: Request, channel: str, body: Mapping[str, Any]) -> Response:
        if self.lookup is None:
            raise HttpError(404, "patient confirmation is not configured (no [pdq] section)")
        origin = self._origin(channel, body, request)
        pick = body.get("pick")
        if isinstance(pick, str):
            if not pick.strip().isdigit():
                raise HttpError(400, "pick must be a number")
            pick = int(pick)
        if pick is not None and (not isinstance(pick, int) or isinstance(pick, bool)):
            raise HttpError(400, "pick must be a number")
        from vitals_agent.agent.patient.lookup import ConfirmError  # loaded: self.lookup is one

        try:
            await self.lookup.confirm(origin, pick=pick)
        except ConfirmError as exc:
            raise HttpError(409, str(exc)) from None
        return Response.json(200, {"confirmed": True, "patient": self._patient(False, None, request)})

    async def _cancel(self, request: Request, channel: str, body: Mapping[str, Any]) -> Response:
        if self.lookup is None:
            raise HttpError(404, "patient confirmation is not configured (no [pdq] section)")
        origin = self._origin(channel, body, request)
        cancelled = await self.lookup.cancel(origin)
        return Response.json(200, {"cancelled": cancelled, "patient": self._patient(False, None, request)})

    @staticmethod
    async def _page_form(action: Awaitable[Response]) -> Response:
        """A page form: done -> back to the page (303); refused -> a short page saying why, with a link."""
        try:
            await action
        except HttpError as exc:
            page = (
                '<!doctype html><meta charset="utf-8"><title>vitals-agent</title>'
                f'<p>{html.escape(exc.message)}</p><p><a href="/">Back to the status page</a></p>'
            )
            return Response.html(exc.status, page)
        return Response(303, b"", headers={"Location": "/"})


def page_refusal(status: int, message: str) -> Response:
    """A page form that was refused: a short page saying why, with the way back."""
    page = (
        '<!doctype html><meta charset="utf-8"><title>vitals-agent</title>'
        f'<p>{html.escape(message)}</p><p><a href="/" autofocus>Back to the status page</a></p>'
    )
    return Response.html(status, page)


def _answer(answer: Answer, *, page: bool) -> Response:
    if answer.kind == "refusal" and page:
        return page_refusal(answer.status, answer.message)
    if answer.kind == "json":
        return Response.json(answer.status, answer.data)
    if answer.kind == "redirect":
        return Response(303, b"", headers={"Location": answer.message or "/#review"})
    raise HttpError(answer.status, answer.message)


def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the page's forms), the last value of each field."""
    try:
        text = request.body[:MAX_BODY].decode("ascii")
    except UnicodeDecodeError:
        return {}
    return {k: v[-1] for k, v in parse_qs(text).items()}
