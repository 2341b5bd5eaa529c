"""Patient data out of text: the one home for redaction, used by logs, the CLI and the status page.

* :func:`message_lines` / :func:`redact_message`: an outbound message reduced to what is safe to show an
  operator or write to a log. HL7 v2: the MSH segment as is (applications, facilities, time, type, control
  id, version: no patient data), every other segment as its name and size. A FHIR Bundle: its identifier
  and, per entry, the method and resource type.
* :func:`mask_mrn`: what a screen, a terminal or an error message may show of an MRN.
* :func:`scrub`: a secret (an MRN, a token) and its URL-quoted forms taken out of another library's
  message before it is passed on.
"""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

BULLET = "\u2022"
MASK = BULLET * 3


def message_lines(body: bytes | str) -> list[str]:
    """An HL7 v2 message or a FHIR Bundle as redacted lines (see the module docstring)."""
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else body
    if raw.lstrip().startswith(b"{"):
        return _bundle_lines(raw)
    lines: list[str] = []
    text = raw.decode("utf-8", "replace").replace("\r\n", "\r").replace("\n", "\r")
    for segment in text.split("\r"):
        if not segment:
            continue
        if segment.startswith("MSH"):
            lines.append(segment)
        else:
            lines.append(f"{segment[:3]}|… ({len(segment.encode())} bytes redacted)")
    return lines


def redact_message(body: bytes | str) -> str:
    """:func:`message_lines` on one line, for a log record."""
    return " / ".join(message_lines(body))


def _bundle_lines(body: bytes) -> list[str]:
    try:
        doc = json.loads(body)
        entries = doc.get("entry") or []
        ident = doc.get("identifier", {}).get("value", "?")
        lines = [f"Bundle {ident} ({doc.get('type')}, {len(entries)} entries)"]
        for entry in entries:
            request = entry.get("request") or {}
            kind = (entry.get("resource") or {}).get("resourceType", "?")
            lines.append(
                f"  {request.get('method', '?')} {kind}  … ({len(json.dumps(entry))} bytes redacted)"
            )
    except (ValueError, AttributeError, TypeError):
        return [f"… ({len(body)} bytes redacted: not a FHIR Bundle)"]
    return lines


def mask_mrn(mrn: str) -> str:
    """``•••902``: the last three characters of an MRN of seven or more, nothing of a shorter one (and
    never its length)."""
    mrn = mrn.strip()
    return MASK + mrn[-3:] if len(mrn) >= 7 else MASK


def scrub(text: str, secret: str) -> str:
    """``text`` with ``secret`` (as is, and URL-quoted) replaced by ``•••``."""
    secret = secret.strip()
    for form in {secret, quote(secret), quote_plus(secret)}:
        if form:
            text = text.replace(form, MASK)
    return text
