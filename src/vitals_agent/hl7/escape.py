"""HL7 v2 escaping of text values (hl7-pcd01.md section 2.1), written here on purpose.

python-hl7's ``escape()`` is not used for output: it maps CR to ``\\.br\\`` whatever the data type, writes
space-padded lower-case hex for control bytes and hex-escapes Unicode code points. This module escapes one
*leaf* (component or subcomponent text) in a single pass, character by character:

=========  ==========
character  sent as
=========  ==========
``|``      ``\\F\\``
``^``      ``\\S\\``
``&``      ``\\T\\``
``~``      ``\\R\\``
``\\``     ``\\E\\``
0x00-0x1F, 0x7F  ``\\Xhh\\`` (two upper-case hex digits; CR = ``\\X0D\\``, LF = ``\\X0A\\``)
U+0080-U+009F    ``\\Xhhhh\\`` (C1 controls, NEL U+0085 among them: their UTF-8 bytes, ``\\XC285\\``)
U+2028, U+2029   ``\\XE280A8\\``, ``\\XE280A9\\`` (line and paragraph separators)
=========  ==========

Other non-ASCII characters are left alone: the message is sent as UTF-8 with MSH-18 ``UNICODE UTF-8``.
C1 controls and the Unicode separators are escaped because a receiver may take them for line breaks
(issue 10); they are written as the hex of their UTF-8 bytes, which :func:`unescape` and python-hl7 read
back.
Escape each leaf separately, then join with the delimiters; on receipt split first, then :func:`unescape`.
"""

from __future__ import annotations

import re
from collections.abc import Collection

FIELD_SEP = "|"
COMPONENT_SEP = "^"
REPETITION_SEP = "~"
ESCAPE_CHAR = "\\"
SUBCOMPONENT_SEP = "&"
ENCODING_CHARACTERS = "^~\\&"  # MSH-2, in this order (component, repetition, escape, subcomponent)

_NAMED = {"|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\\": "\\E\\"}
_TABLE: dict[int, str] = {ord(k): v for k, v in _NAMED.items()}
_TABLE.update({code: f"\\X{code:02X}\\" for code in [*range(0x20), 0x7F]})
_TABLE.update(
    {code: f"\\X{chr(code).encode().hex().upper()}\\" for code in [*range(0x80, 0xA0), 0x2028, 0x2029]}
)

_REVERSE = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}
_SEQUENCE = re.compile(r"\\([^\\]*)\\")


def escape(text: str) -> str:
    """Escape one leaf value (one pass; an escape introduced here is never escaped again)."""
    return text.translate(_TABLE)


def escape_structured(
    value: str, *, components: bool = True, subcomponents: Collection[int] | None = None
) -> str:
    """Escape a value a site wrote in ER7 form, keeping its structure.

    ``"CARDIO CLINIC^EXAM 3^^EXHOSP&2.999.1&ISO"`` keeps its ``^`` and ``&`` separators; every leaf is
    escaped (so ``|``, ``~``, ``\\`` and control characters inside a leaf cannot forge fields).
    ``subcomponents`` names the 1-based components whose data type has subcomponents (e.g. ``{4, 10, 11}``
    for a PL); in every other component ``&`` is data and escaped. ``None`` allows them everywhere, an
    empty set nowhere. With ``components=False`` the value is one component whose parts are subcomponents:
    ``^`` and ``&`` are both treated as subcomponent separators (an HD inside a CX, e.g. an assigning
    authority).
    """
    if not components:
        parts = re.split(r"[\^&]", value)
        return SUBCOMPONENT_SEP.join(escape(p) for p in parts)
    out = []
    for index, comp in enumerate(value.split(COMPONENT_SEP), start=1):
        if subcomponents is None or index in subcomponents:
            out.append(SUBCOMPONENT_SEP.join(escape(sub) for sub in comp.split(SUBCOMPONENT_SEP)))
        else:
            out.append(escape(comp))
    return COMPONENT_SEP.join(out)


def _hex(body: str) -> str | None:
    if len(body) % 2 or not body or not re.fullmatch(r"[0-9A-Fa-f]+", body):
        return None
    try:
        return bytes.fromhex(body).decode("utf-8")
    except UnicodeDecodeError:
        return bytes.fromhex(body).decode("latin-1")


def unescape(text: str) -> str:
    """Reverse :func:`escape` for one leaf (also ``\\.br\\`` -> CR, ``\\Xhh..\\`` multi-byte UTF-8).

    Unknown sequences (highlighting ``\\H\\``/``\\N\\``, other formatting commands) are dropped, as the
    standard allows; a lone escape character without a closing one is kept literally.
    """
    if ESCAPE_CHAR not in text:
        return text

    def repl(match: re.Match[str]) -> str:
        body = match.group(1)
        if body in _REVERSE:
            return _REVERSE[body]
        if body.startswith("X"):
            decoded = _hex(body[1:])
            return decoded if decoded is not None else ""
        if body == ".br":
            return "\r"
        return ""

    return _SEQUENCE.sub(repl, text)


_VALID_SEQUENCE = re.compile(r"\\(?:[FSTRE]|X(?:[0-9A-F]{2})+|\.br|\.sp|H|N)\\")


def is_well_escaped(leaf: str) -> bool:
    """True when every escape character in ``leaf`` belongs to a well-formed escape sequence."""
    return ESCAPE_CHAR not in _VALID_SEQUENCE.sub("", leaf)
