"""The control API's clinician-review endpoints (issue #16), beside the patient routes in routes.py.

API (bearer token; JSON)::

    GET    /api/clinician             {"clinician": {set, id, name, channel, source, set_at, expires_at}}
    PUT    /api/clinician             {"id", "name"? ("FAMILY^GIVEN") or "family"?, "given"?, "channel"?,
                                      "source"?}
    DELETE /api/clinician             sign the clinician out
    GET    /api/review                {"mode", "items": [...]} (patients masked; ?reveal=1 shows them,
                                      audited)
    POST   /api/review/confirm        {"ids": [1, 2]} or {"all": true}          (409 without a clinician)
    POST   /api/review/reject         {"id", "reason"}
    POST   /api/review/correct        {"id", "values": {"bp_systolic": "132"}}
    POST   /api/review/wrong-patient  {"id"}
    POST   /api/manual                {"values": {"resp_rate": "16", "pain": "3", "arm": "left_arm"}}

Page forms (the status page's session cookie plus its form token; answered with a redirect to the page,
or a short page saying why not): ``/review/confirm`` (``id`` or ``all``), ``/review/reject`` (``id``,
``reason``), ``/review/manual`` (one field per value), ``/clinician/set`` (``id``, ``family``, ``given``),
``/clinician/clear``. The channel recorded is ``api`` or ``page``; what a caller says about itself is its
claim (``client``, ``source``), next to the calling socket's operating-system user.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vitals_agent.agent.control.request import Request
from vitals_agent.agent.control.review_page import review_html
from vitals_agent.agent.patient.clinician import ClinicianContextManager, ClinicianError, parse_clinician
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.patient.review import (
    NoClinicianError,
    ReviewDesk,
    ReviewError,
    ReviewInputError,
)
from vitals_agent.agent.storage.audit import AuditLog

API_PATHS = frozenset(
    {
        "/api/clinician",
        "/api/review",
        "/api/review/confirm",
        "/api/review/reject",
        "/api/review/correct",
        "/api/review/wrong-patient",
        "/api/manual",
    }
)
PAGE_FORMS = frozenset(
    {"/review/confirm", "/review/reject", "/review/manual", "/clinician/set", "/clinician/clear"}
)
REJECT_REASONS = (
    "artefact (movement, talking)",
    "cuff or probe placement",
    "wrong cuff size",
    "repeat measurement taken",
    "not this patient's reading",
)


@dataclass(frozen=True)
class Answer:
    """What routes.py sends back: JSON, the page's redirect after a form, or a refusal (status, text)."""

    kind: Literal["json", "redirect", "refusal"]
    status: int = 200
    data: Any = None
    message: str = ""


class ReviewHttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def _status_of(exc: ReviewError | ClinicianError) -> int:
    if isinstance(exc, ReviewInputError | ClinicianError):
        return 400
    return 409  # the state does not allow it (no clinician, nothing waiting, already confirmed)


def _ids(body: Mapping[str, Any]) -> list[int] | None:
    if body.get("all") in (True, "1", "on", "true"):
        return None
    raw = body.get("ids", body.get("id"))
    values = raw if isinstance(raw, list) else [raw]
    out = []
    for value in values:
        if isinstance(value, bool) or value is None:
            raise ReviewHttpError(400, "give the review item id(s): ids [1, 2], or all")
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            raise ReviewHttpError(400, "review item ids are numbers") from None
    if not out:
        raise ReviewHttpError(400, "give the review item id(s): ids [1, 2], or all")
    return out


def _one_id(body: Mapping[str, Any]) -> int:
    ids = _ids({"id": body.get("id")})
    assert ids is not None
    return ids[0]


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ReviewHttpError(400, f"{key}: must be a string")
    return value


def _values(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise ReviewHttpError(400, 'values: a JSON object such as {"resp_rate": "16"}')
    out = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ReviewHttpError(400, f"{key}: the value must be a number or a word")
        out[key] = str(value)
    return out


class ReviewRoutes:
    """Answers the review endpoints; ``handle`` returns None for any other path."""

    def __init__(self, desk: ReviewDesk, audit: AuditLog) -> None:
        self.desk = desk
        self.clinicians: ClinicianContextManager = desk.clinicians
        self.audit = audit

    async def handle(
        self,
        request: Request,
        channel: str,
        *,
        origin: Callable[[Mapping[str, Any]], Origin],
        form: Mapping[str, str] | None = None,
    ) -> Answer | None:
        """``origin(body)``: who asks, with what the body says about the caller (``channel``, ``source``);
        ``form``: the page form's fields when this is a page form. None: not a review path."""
        path, method = request.path, request.method
        if path not in API_PATHS and path not in PAGE_FORMS:
            return None
        if form is not None and path in PAGE_FORMS and method == "POST":
            return await self._page(path, dict(form), origin({}))
        try:
            action = self._api(method, path, request, channel, origin)
            if action is None:
                return Answer("refusal", 405, message=f"{method} not allowed on {path}")
            return Answer("json", 200, await action)
        except ReviewHttpError as exc:
            return Answer("refusal", exc.status, message=exc.message)
        except (ReviewError, ClinicianError) as exc:
            return Answer("refusal", _status_of(exc), message=str(exc))

    def _api(
        self,
        method: str,
        path: str,
        request: Request,
        channel: str,
        origin: Callable[[Mapping[str, Any]], Origin],
    ) -> Awaitable[Any] | None:
        route = (method, path)
        if route == ("GET", "/api/clinician"):
            return _now({"clinician": self.clinicians.snapshot()})
        if route == ("GET", "/api/review"):
            return _now(self.listing(request.query.get("reveal") == "1", channel, request.caller))
        if method not in ("PUT", "POST", "DELETE"):
            return None
        body = request.json()
        who = origin(body)
        if route == ("PUT", "/api/clinician"):
            return _now(self.sign_in(body, who))
        if route == ("DELETE", "/api/clinician"):
            return _now(self.sign_out(who))
        if route == ("POST", "/api/review/confirm"):
            return self.confirm(body, who)
        if route == ("POST", "/api/review/reject"):
            return self.reject(body, who)
        if route == ("POST", "/api/review/correct"):
            return self.correct(body, who)
        if route == ("POST", "/api/review/wrong-patient"):
            return self.wrong_patient(body, who)
        if route == ("POST", "/api/manual"):
            return self.manual(body, who)
        return None

    async def _page(self, path: str, form: dict[str, str], who: Origin) -> Answer:
        try:
            if path == "/review/confirm":
                await self.confirm(form, who)
            elif path == "/review/reject":
                await self.reject(form, who)
            elif path == "/review/manual":
                values = {k: v for k, v in form.items() if k != "csrf"}
                await self.manual({"values": values}, who)
            elif path == "/clinician/set":
                self.sign_in(form, who)
            else:
                self.sign_out(who)
        except ReviewHttpError as exc:
            return Answer("refusal", exc.status, message=exc.message)
        except (ReviewError, ClinicianError) as exc:
            return Answer("refusal", _status_of(exc), message=str(exc))
        # sign-in and manual entries come from the page's entry mode: back to it, ready for the next
        back = "/?enter=1" if path in ("/clinician/set", "/review/manual") else "/#review"
        return Answer("redirect", 303, message=back)

    def panel(self, review: Any, *, form_token: str, now: Any, editing: bool) -> str:
        """The status page's review panel (masked patients)."""
        snapshot = review if isinstance(review, Mapping) else self.desk.snapshot()
        return review_html(
            snapshot,
            self.desk.list(),
            form_token=form_token,
            now=now,
            editing=editing,
            reasons=REJECT_REASONS,
        )

    # --- the actions -----------------------------------------------------------------------------------
    def listing(self, reveal: bool, channel: str, os_caller: Mapping[str, Any]) -> dict[str, Any]:
        items = self.desk.list(reveal=reveal)
        if reveal:
            shown = sorted({i["patient"]["mrn"] for i in items if i["patient"] and i["patient"]["mrn"]})
            self.audit.record("review_revealed", channel=channel, patient_mrns=shown, **os_caller)
        return {"mode": self.desk.mode, "items": items, "clinician": self.clinicians.snapshot()}

    def sign_in(self, body: Mapping[str, Any], who: Origin) -> dict[str, Any]:
        ident = _text(body, "id") or ""
        name = _text(body, "name")
        family, given = _text(body, "family"), _text(body, "given")
        if not (name or family or given):
            family, given = self.desk.config.roster_name(ident.strip())
        clinician = parse_clinician(ident, name, family=family or None, given=given or None)
        self.clinicians.set(clinician, who)
        return {"clinician": self.clinicians.snapshot()}

    def sign_out(self, who: Origin) -> dict[str, Any]:
        was_set = self.clinicians.clear(who)
        return {"cleared": was_set, "clinician": self.clinicians.snapshot()}

    async def confirm(self, body: Mapping[str, Any], who: Origin) -> dict[str, Any]:
        items = await self.desk.confirm(_ids(body), who)
        return {"confirmed": [i.id for i in items], "control_ids": [i.control_ids[-1] for i in items]}

    async def reject(self, body: Mapping[str, Any], who: Origin) -> dict[str, Any]:
        item = await self.desk.reject(_one_id(body), _text(body, "reason") or "", who)
        return {"rejected": item.id, "state": item.state, "status": item.status}

    async def correct(self, body: Mapping[str, Any], who: Origin) -> dict[str, Any]:
        item = await self.desk.correct(_one_id(body), _values(body.get("values")), who)
        return {"corrected": item.id, "status": item.status, "control_ids": list(item.control_ids)}

    async def wrong_patient(self, body: Mapping[str, Any], who: Origin) -> dict[str, Any]:
        item = await self.desk.wrong_patient(_one_id(body), who)
        return {
            "retracted": item.id,
            "status": item.status,
            "awaiting_patient": item.awaiting_patient,
            "control_ids": list(item.control_ids),
        }

    async def manual(self, body: Mapping[str, Any], who: Origin) -> dict[str, Any]:
        outcome = await self.desk.manual(_values(body.get("values")), who)
        return {"item": outcome.item_id, "attached": outcome.attached, "control_id": outcome.control_id}


async def _now(value: Any) -> Any:
    return value


__all__ = ["API_PATHS", "PAGE_FORMS", "REJECT_REASONS", "Answer", "NoClinicianError", "ReviewRoutes"]
