"""What a FHIR server's answer to a transaction Bundle means for delivery (pure: no I/O, no clock).

* ``2xx``: delivered (a transaction is all or nothing, so every entry was processed).
* ``408``, ``429``, ``5xx``: the server cannot take it *now*: retried with back-off, and no sooner than
  its ``Retry-After`` (seconds or an HTTP date; capped).
* ``401``: the credentials were not accepted: retried after the token is read or fetched again. Readings
  wait in order, as for a server that is down; the log says to check the credentials.
* ``3xx``, and ``404``/``405`` that are not a FHIR answer (no OperationOutcome): the base URL is wrong or
  a proxy is in the way. Retried like ``5xx`` so the readings wait until the configuration is fixed.
* Any other ``4xx``: the server refused *this* Bundle (invalid, unknown patient, conflicting match):
  dead-lettered at once with the OperationOutcome's text for an operator.

Timeouts, refused and reset connections never reach this module: they are link failures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MAX_TEXT = 2000


@dataclass(frozen=True)
class Delivered:
    status: int


@dataclass(frozen=True)
class Transient:
    """Try the same Bundle again later, not before ``retry_after`` seconds (None: the back-off decides)."""

    status: int
    reason: str
    retry_after: float | None = None
    auth: bool = False  # the credentials were refused: get a fresh token before the next try


@dataclass(frozen=True)
class Rejected:
    """The server refused this Bundle for good: dead-letter it with ``text`` (the OperationOutcome)."""

    status: int
    reason: str
    text: str


Verdict = Delivered | Transient | Rejected


def retry_after(value: str | None, now: datetime, *, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date), at most ``cap``."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), cap)


def outcome_text(body: bytes) -> str | None:
    """The issues of an OperationOutcome as one line (``severity code: diagnostics``), else None."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("resourceType") != "OperationOutcome":
        return None
    parts: list[str] = []
    for issue in doc.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
        text = issue.get("diagnostics") or (details or {}).get("text") or ""
        where = issue.get("expression") or issue.get("location") or []
        label = " ".join(str(x) for x in (issue.get("severity"), issue.get("code")) if x)
        line = f"{label}: {text}" if text else label
        if where and isinstance(where, list):
            line += f" (at {', '.join(str(w) for w in where[:3])})"
        parts.append(" ".join(line.split()))
    return "; ".join(p for p in parts if p)[:MAX_TEXT] or "OperationOutcome without issues"


def _plain(body: bytes) -> str:
    text = body[:MAX_TEXT].decode("utf-8", "replace")
    return " ".join(text.split())[:300]


def classify(
    status: int, headers: Mapping[str, str], body: bytes, now: datetime, *, retry_after_cap: float = 3600.0
) -> Verdict:
    """The verdict for one HTTP answer to a transaction Bundle (see the module docstring)."""
    if 200 <= status < 300:
        return Delivered(status)
    lower = {k.lower(): v for k, v in headers.items()}
    wait = retry_after(lower.get("retry-after"), now, cap=retry_after_cap)
    outcome = outcome_text(body)
    if status in (408, 429) or status >= 500:
        return Transient(status, f"HTTP {status}: the FHIR server cannot take it now", wait)
    if status == 401:
        return Transient(
            status, "HTTP 401: credentials refused (check [fhir] token or client key)", wait, True
        )
    if 300 <= status < 400:
        where = lower.get("location", "")
        return Transient(
            status, f"HTTP {status}: redirected{f' to {where}' if where else ''}: check base_url"
        )
    if status in (404, 405) and outcome is None:
        return Transient(status, f"HTTP {status} without a FHIR answer: check [fhir] base_url", wait)
    if 400 <= status < 500:
        return Rejected(status, f"rejected by the FHIR server (HTTP {status})", outcome or _plain(body))
    return Transient(status, f"HTTP {status}: unexpected answer", wait)
