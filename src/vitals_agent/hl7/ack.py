"""Parse the receiver's acknowledgement (``ACK^R01^ACK``, hl7-pcd01.md §9.1) with a small ER7 splitter.

Only what delivery needs is read: MSH-9/MSH-10 of the ACK, MSA-1 (code), MSA-2 (the MSH-10 being
acknowledged), MSA-3 (text) and every ERR segment (ERR-2 location, ERR-3 HL7 error code, ERR-4 severity,
ERR-5 application error code, ERR-7/8 diagnostic and user message). Be liberal: segments may be separated by
CR, LF or CR LF; trailing empty fields may be missing; unknown segments are ignored. Anything without an
MSH and an MSA with a code is an :class:`~vitals_agent.errors.AckProtocolError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from vitals_agent.errors import AckProtocolError
from vitals_agent.hl7.escape import ENCODING_CHARACTERS

ACCEPT_CODES = frozenset({"AA", "CA"})
ERROR_CODES = frozenset({"AE", "CE"})
REJECT_CODES = frozenset({"AR", "CR"})
KNOWN_CODES = ACCEPT_CODES | ERROR_CODES | REJECT_CODES

_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")


@dataclass(frozen=True)
class AckErrorDetail:
    """One ERR segment (components joined with ``^`` as sent, escapes resolved)."""

    location: str = ""  # ERR-2, e.g. OBX^2^5
    code: str = ""  # ERR-3, e.g. 207^Application internal error^HL70357
    severity: str = ""  # ERR-4: E, W, I
    application_code: str = ""  # ERR-5
    diagnostic: str = ""  # ERR-7
    user_message: str = ""  # ERR-8

    def describe(self) -> str:
        parts = [self.severity or "?", self.code or "no code"]
        if self.location:
            parts.append(f"at {self.location}")
        for extra in (self.application_code, self.diagnostic, self.user_message):
            if extra:
                parts.append(extra)
        return " ".join(parts)


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2: the MSH-10 this acknowledges
    text: str = ""  # MSA-3
    errors: tuple[AckErrorDetail, ...] = ()
    message_type: str = ""  # MSH-9 of the ACK
    ack_control_id: str = ""  # MSH-10 of the ACK itself

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPT_CODES

    @property
    def known(self) -> bool:
        return self.code in KNOWN_CODES

    def summary(self) -> str:
        """What is safe in an operational log: MSA-1 and the ERR-3 error codes, no free text (receivers
        echo patient names and ids in MSA-3 and ERR-8)."""
        codes = [e.code.split("^")[0] for e in self.errors if e.code]
        return self.code + (f" [{', '.join(codes)}]" if codes else "")

    def describe(self) -> str:
        """One line for the dead-letter table and DEBUG logs: code, MSA-3 and every ERR."""
        out = self.code
        if self.text:
            out += f": {self.text}"
        if self.errors:
            out += " [" + "; ".join(e.describe() for e in self.errors) + "]"
        return out


class _Encoding:
    def __init__(self, field: str, component: str, repetition: str, escape: str, sub: str) -> None:
        self.field = field
        self.component = component
        self.repetition = repetition
        self.escape = escape
        self.sub = sub

    def unescape(self, value: str) -> str:
        esc = self.escape
        if not esc or esc not in value:
            return value
        table = {"F": self.field, "S": self.component, "R": self.repetition, "E": esc, "T": self.sub}
        out: list[str] = []
        i = 0
        while i < len(value):
            ch = value[i]
            if ch == esc:
                end = value.find(esc, i + 1)
                if end > i:
                    seq = value[i + 1 : end]
                    if seq in table:
                        out.append(table[seq])
                    elif seq in (".br", "X0D", "X0A"):
                        out.append(" ")
                    # other sequences (highlighting, hex) are dropped: text is only logged
                    i = end + 1
                    continue
            out.append(ch)
            i += 1
        return "".join(out)

    def text(self, value: str) -> str:
        """A field value for humans: unescaped per component/subcomponent, separators kept as sent."""
        comps = value.split(self.component)
        return self.component.join(
            self.sub.join(self.unescape(s) for s in c.split(self.sub)) for c in comps
        ).strip()


def _field(fields: list[str], index: int) -> str:
    return fields[index] if index < len(fields) else ""


def parse_ack(payload: bytes) -> Ack:
    """Parse one ACK message (the payload of an MLLP frame). Raises :class:`AckProtocolError`."""
    if not payload:
        raise AckProtocolError("empty answer from the receiver")
    text = payload.decode("utf-8", errors="replace").lstrip("\r\n")
    if not text.startswith("MSH") or len(text) < 8:
        raise AckProtocolError("answer is not an HL7 message (no MSH segment)")
    sep = text[3]
    if sep.isalnum() or sep in "\r\n ":
        raise AckProtocolError("answer has an invalid MSH field separator")
    segments = [s for s in _SEGMENT_SPLIT.split(text) if s.strip()]
    msh = segments[0].split(sep)
    enc_chars = (_field(msh, 1) + ENCODING_CHARACTERS)[:4]  # missing ones default to the standard's
    enc = _Encoding(sep, enc_chars[0], enc_chars[1], enc_chars[2], enc_chars[3])
    # MSH-1 is the separator itself, so MSH-n is fields[n-1] in the split list.
    message_type = _field(msh, 8)
    ack_control_id = enc.unescape(_field(msh, 9))

    msa: list[str] | None = None
    errors: list[AckErrorDetail] = []
    for seg in segments[1:]:
        fields = seg.split(sep)
        name = fields[0].strip()
        if not _SEGMENT_ID.match(name):
            raise AckProtocolError(f"answer has a malformed segment name {name[:8]!r}")
        if name == "MSA" and msa is None:
            msa = fields
        elif name == "ERR":
            errors.append(
                AckErrorDetail(
                    location=enc.text(_field(fields, 2)),
                    code=enc.text(_field(fields, 3)),
                    severity=enc.text(_field(fields, 4)),
                    application_code=enc.text(_field(fields, 5)),
                    diagnostic=enc.text(_field(fields, 7)),
                    user_message=enc.text(_field(fields, 8)),
                )
            )
    if msa is None:
        raise AckProtocolError("answer has no MSA segment")
    code = _field(msa, 1).strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise AckProtocolError(f"answer has an invalid MSA-1 acknowledgement code {code[:8]!r}")
    control_id = enc.unescape(_field(msa, 2).split(enc.component)[0]).strip()
    if not control_id:
        raise AckProtocolError("answer has an empty MSA-2 (no message control id)")
    return Ack(
        code=code,
        control_id=control_id,
        text=enc.text(_field(msa, 3)),
        errors=tuple(errors),
        message_type=message_type,
        ack_control_id=ack_control_id,
    )


def commit_ack(
    for_control_id: str, code: str, sending_application: str, created_at: datetime, control_id: str
) -> bytes:
    """A short ``ACK`` (``MSA|<code>|<for_control_id>``) for a message an MLLP peer sent us on the inbound
    application-ACK port. Pure: the caller passes the time and the new MSH-10."""
    from vitals_agent.hl7.escape import escape
    from vitals_agent.hl7.oru import format_dtm

    msh = (
        f"MSH|{ENCODING_CHARACTERS}|{escape(sending_application)}||||{format_dtm(created_at)}||ACK^R01^ACK|"
        f"{control_id}|P|2.6"
    )
    return f"{msh}\rMSA|{code}|{escape(for_control_id)}\r".encode()
