"""The project's ORU^R01 oracle (testing.md section 5.2): hl7apy STRICT plus the PCD-01 checks it misses.

Usage::

    from tests.oracle import validate_oru

    parsed = validate_oru(raw)                      # bytes or str; AssertionError with a clear message if bad
    assert parsed.msh[10] == control_id             # raw (escaped) field text, HL7 numbering (MSH-1 = "|")
    assert parsed.pid.text(5, 1) == "O'BRIEN"       # unescaped component (1-based)
    obx = parsed.obx_by_code("150456")              # OBX whose OBX-3 code (primary or alternate) matches
    assert obx[5] == "97" and obx.text(6, 4) == "%"
    assert parsed.value("150456") == "97"           # shortcut: OBX-5 of that OBX

Checks (each failure names the segment and field):

* bytes: in the character set MSH-18 names (empty or ``UNICODE UTF-8``: UTF-8; ``8859/1``: ISO 8859-1;
  ``ASCII``: ASCII only), no 0x0B / 0x1C / LF / other control bytes, segments separated by CR only; MSH-18
  ``UNICODE UTF-8`` or ``8859/1`` when anything is non-ASCII;
* hl7apy ``parse_message(..., VALIDATION_LEVEL.STRICT, find_groups=True)`` and ``validate()`` (OBX-5 of
  ED/TX/FT rows longer than hl7apy's 999-character cap is shortened for hl7apy only, see ``_for_hl7apy``);
* segment order as sent == order after hl7apy's regrouping (catches OBX before OBR);
* MSH-9 ``ORU^R01^ORU_R01``, MSH-12 == ``version``, MSH-11 in table 0103, MSH-15/16 in table 0155 (or as
  given), MSH-21 has an EI with EI-3 = the PCD-01 OID and EI-4 ``ISO``, MSH-10 1..20 safe characters;
* every DTM (MSH-7, OBR-7/8, OBX-14/19, PV1-44/45, OBX-5 of DTM/TS rows) has seconds and a zone offset;
* PID-3 has an ID, PID-7 is a date, PID-8 in table 0001, PID-31 Y/N; PV1-2 in table 0004;
* OBR-1 runs 1..n, OBR-3 and OBR-4 present; OBX-1 runs 1..n over the message; OBX-2 in table 0125;
  OBX-11 in table 0085 (``F``/``C`` only with a clinician id in OBX-16); OBX-4 dotted numbers, unique
  under each OBR and in numeric dictionary order;
  device rows (trailing ``.0``) have OBX-11 ``X`` and no value;
* NM rows: OBX-5 a plain decimal (no NaN/Inf/exponent/empty), a UCUM unit from the codes.md allow-list in
  OBX-6 whose MDC unit code (if any) matches, and a value inside the metric's physiological range when
  OBX-3 names a known metric in its canonical unit (so device sentinels such as 2047, 511, 127 cannot pass
  where they are impossible); MDC code / RefId pairs must agree with the metric table;
* OBX-8 codes in table 0078 or the PCD-01 extensions; ED rows carry valid Base64;
* every leaf contains only well-formed escape sequences.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from vitals_agent.codes import tables
from vitals_agent.hl7.escape import is_well_escaped, unescape

PCD01_OID = "1.3.6.1.4.1.19376.1.6.1.1.1"


def _set(codes: str) -> frozenset[str]:
    return frozenset(codes.split())


# HL7 table 0125 per version (hl7apy ships the 2.5 list for 2.6 as well; 2.6 added CNE, CWE, DR, DTM ...)
_0125_COMMON = "AD CE CF CK CN CP CX DT ED FT MO NM PN RP SN ST TM TN TS TX XAD XCN XON XPN XTN"
TABLE_0125 = {"2.5.1": _set(_0125_COMMON), "2.6": _set(_0125_COMMON + " CNE CWE DR DTM NA")}
TABLE_0085 = _set("C D F I N O P R S U W X")
TABLE_0078 = _set("< > A AA B D H HH I L LL MS N R S U VS W")
PCD_FLAGS = _set(
    "INV QUES NAV CAL TEST DEMO EARLY BUSY ALACT ALINH NI NA OFF MSK OTH NAN PINF NINF PN PL PM PH SP ST SA"
)
TABLE_0001 = _set("F M O U A N")
TABLE_0004 = _set("E I O P R B U N C")
TABLE_0103 = _set("D P T")
TABLE_0155 = _set("AL NE ER SU")

UCUM_ALLOWED = frozenset(tables().units)  # codes.md section 2 (the canonical spellings only)
DTM = re.compile(r"^\d{14}(\.\d{1,4})?[+-]\d{4}$")
NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
CONTROL_ID = re.compile(r"^[A-Za-z0-9._-]{1,20}$")
SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


@dataclass
class Segment:
    """One segment as sent. ``seg[n]`` is the raw (escaped) text of field n (HL7 numbering)."""

    name: str
    fields: list[str]  # fields[0] = name; for MSH fields[1] = "|" and fields[2] = "^~\\&"
    raw: str

    def __getitem__(self, n: int) -> str:
        return self.fields[n] if 0 <= n < len(self.fields) else ""

    def repetitions(self, n: int) -> list[str]:
        value = self[n]
        if self.name == "MSH" and n <= 2:
            return [value]
        return value.split("~")

    def components(self, n: int, rep: int = 0) -> list[str]:
        """Unescaped components of field n (repetition ``rep``); subcomponents stay joined with ``&``."""
        reps = self.repetitions(n)
        if rep >= len(reps):
            return []
        return ["&".join(unescape(s) for s in c.split("&")) for c in reps[rep].split("^")]

    def text(self, n: int, component: int = 1, rep: int = 0) -> str:
        """Unescaped component (1-based) of field n; "" when absent."""
        comps = self.components(n, rep)
        return comps[component - 1] if component - 1 < len(comps) else ""


@dataclass
class ParsedOru:
    raw: str
    segments: list[Segment]
    message: Any = field(repr=False)  # the hl7apy Message

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def one(self, name: str) -> Segment:
        found = self.all(name)
        assert len(found) == 1, f"expected exactly one {name}, found {len(found)}"
        return found[0]

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.segments)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    @property
    def msh(self) -> Segment:
        return self.one("MSH")

    @property
    def pid(self) -> Segment:
        return self.one("PID")

    @property
    def pv1(self) -> Segment:
        return self.one("PV1")

    @property
    def obr(self) -> Segment:
        return self.one("OBR")

    @property
    def obx(self) -> list[Segment]:
        return self.all("OBX")

    @property
    def control_id(self) -> str:
        return self.msh[10]

    def obx_by_code(self, code: str) -> Segment:
        """The single OBX whose OBX-3 primary (CWE-1) or alternate (CWE-4) identifier is ``code``."""
        found = self.obx_all_by_code(code)
        assert len(found) == 1, f"expected one OBX with code {code}, found {len(found)}: {self.codes()}"
        return found[0]

    def obx_all_by_code(self, code: str) -> list[Segment]:
        return [s for s in self.obx if code in (s.text(3, 1), s.text(3, 4))]

    def value(self, code: str) -> str:
        return self.obx_by_code(code).text(5)

    def codes(self) -> list[str]:
        return [s.text(3, 1) for s in self.obx]

    def nte_after(self, segment: Segment) -> list[Segment]:
        """The NTE segments that directly follow ``segment``."""
        index = next(i for i, s in enumerate(self.segments) if s is segment)
        out = []
        for s in self.segments[index + 1 :]:
            if s.name != "NTE":
                break
            out.append(s)
        return out


def _fail(message: str) -> None:
    raise AssertionError(f"ORU oracle: {message}")


def _split(raw: str) -> list[Segment]:
    segments = []
    for text in raw.split("\r"):
        if not text:
            continue
        name = text[:3]
        if not SEGMENT_NAME.match(name):
            _fail(f"bad segment name in {text[:20]!r}")
        if name == "MSH":
            rest = text[9:].split("|") if len(text) > 8 else []
            fields = ["MSH", text[3:4], text[4:8], *rest]
        else:
            fields = text.split("|")
        segments.append(Segment(name, fields, text))
    return segments


_CHARSETS = {"": "utf-8", "UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "ASCII": "ascii"}


def _msh18(raw: bytes) -> str:
    """MSH-18 read from the bytes (the MSH segment's delimiters are ASCII in every charset we send)."""
    first = raw.split(b"\r", 1)[0]
    fields = first.split(b"|")
    value = fields[17] if len(fields) > 17 else b""
    return value.decode("ascii", errors="replace")


def _check_bytes(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        charset = _msh18(raw)
        if charset not in _CHARSETS:
            _fail(f"MSH-18 {charset!r} is not a character set we send (UNICODE UTF-8, 8859/1, ASCII)")
        try:
            text = raw.decode(_CHARSETS[charset])
        except UnicodeDecodeError as exc:
            codec = _CHARSETS[charset].upper()
            raise AssertionError(f"ORU oracle: not {codec} as MSH-18 says: {exc}") from None
    else:
        text = raw
    if "\x0b" in text or "\x1c" in text:
        _fail("raw MLLP framing byte (0x0B/0x1C) inside the message")
    if "\n" in text:
        _fail("LF found: segments must be separated by CR only")
    bad = [c for c in text if (ord(c) < 0x20 and c != "\r") or ord(c) == 0x7F]
    if bad:
        _fail(f"raw control character {bad[0]!r} inside the message")
    if not text.startswith("MSH|^~\\&|"):
        _fail("message must start with MSH|^~\\&|")
    if "\r\r" in text.rstrip("\r"):
        _fail("empty segment (CR CR)")
    return text


def _check_leaves(segments: list[Segment]) -> None:
    for seg in segments:
        for n, value in enumerate(seg.fields):
            if seg.name == "MSH" and n <= 2:
                continue
            for leaf in re.split(r"[\^~&]", value):
                if not is_well_escaped(leaf):
                    _fail(f"{seg.name}-{n}: malformed escape sequence in {leaf!r}")


def _dtm(where: str, value: str) -> None:
    if value and not DTM.match(value):
        _fail(f"{where} {value!r} is not YYYYMMDDHHMMSS[.S]+ZZZZ (offset and seconds required)")


def _eui_hd(where: str, value: str, first: int = 0) -> None:
    """HD (or the HD part of an EI) typed EUI-64 must carry 16 upper-case hex digits."""
    parts = value.split("^")[first:]
    if len(parts) >= 3 and parts[2] == "EUI-64" and not re.fullmatch(r"[0-9A-F]{16}", parts[1]):
        _fail(f"{where} universal id {parts[1]!r} is not an EUI-64 (16 upper-case hex digits)")


def _subid(where: str, value: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+)*", value):
        _fail(f"{where} OBX-4 {value!r} is not a dotted number")
    return tuple(int(p) for p in value.split("."))


def _metric_by_mdc(code: str) -> Any:
    for info in tables().metrics.values():
        if info.mdc is not None and str(info.mdc) == code:
            return info
    return None


def _metric_by_id(seg: Segment) -> Any:
    comps = seg.components(3)
    for i in (0, 3):
        if len(comps) > i + 2:
            code, system = comps[i], comps[i + 2]
            if system == "MDC":
                return _metric_by_mdc(code)
            if system == "99VITALS":
                return next((m for m in tables().metrics.values() if m.refid == code), None)
    return None


def _check_obx(seg: Segment, version: str, where: str) -> None:
    vt, status = seg[2], seg[11]
    if status not in TABLE_0085:
        _fail(f"{where} OBX-11 {status!r} not in table 0085")
    if vt and vt not in TABLE_0125[version]:
        _fail(f"{where} OBX-2 {vt!r} not in table 0125 (v{version})")
    if not vt and seg[5]:
        _fail(f"{where} OBX-5 given without OBX-2")
    if not vt and status != "X":
        _fail(f"{where} OBX-2 empty while OBX-11 is not X")
    comps3 = seg.components(3)
    if not comps3 or not comps3[0]:
        _fail(f"{where} OBX-3 empty")
    for i in (0, 3):
        if len(comps3) > i + 2 and comps3[i + 2] == "MDC":
            if not comps3[i].isdigit():
                _fail(f"{where} OBX-3 MDC code {comps3[i]!r} is not numeric")
            info = _metric_by_mdc(comps3[i])
            if info is not None and comps3[i + 1] and comps3[i + 1] != info.refid:
                _fail(
                    f"{where} OBX-3 MDC code {comps3[i]} paired with {comps3[i + 1]!r}, expected {info.refid}"
                )
    for flag in seg.repetitions(8) if seg[8] else []:
        if flag not in TABLE_0078 and flag not in PCD_FLAGS:
            _fail(f"{where} OBX-8 flag {flag!r} unknown")
    _dtm(f"{where} OBX-14", seg[14])
    _dtm(f"{where} OBX-19", seg[19])
    if seg[11] in ("F", "C") and not seg.text(16, 1):
        _fail(f"{where} OBX-11 {seg[11]} (validated / corrected) without the clinician in OBX-16")
    if vt == "NM":
        _check_numeric(seg, where)
    elif vt in ("DTM", "TS"):
        _dtm(f"{where} OBX-5", seg.text(5))
    elif vt == "ED":
        comps = seg[5].split("^")
        if len(comps) != 5 or comps[3] not in ("Base64", "Hex", "A") or not comps[1] or not comps[4]:
            _fail(f"{where} OBX-5 ED must be ^type^subtype^Base64^data")
        if comps[3] == "Base64":
            try:
                base64.b64decode(comps[4], validate=True)
            except (binascii.Error, ValueError):
                _fail(f"{where} OBX-5 ED data is not valid Base64")
    elif vt in ("ST", "TX", "FT") and not seg[5]:
        _fail(f"{where} OBX-5 text row without text")
    if len(comps3) >= 6 and comps3[5] == "" and comps3[3]:
        _fail(f"{where} OBX-3 alternate identifier without coding system")
    for rep in seg.repetitions(18) if seg[18] else []:
        parts = rep.split("^")
        if len(parts) >= 4 and parts[3] == "EUI-64" and not re.fullmatch(r"[0-9A-F]{16}", parts[2]):
            _fail(f"{where} OBX-18 EUI-64 {parts[2]!r} is not 16 upper-case hex digits")


def _check_numeric(seg: Segment, where: str) -> None:
    reps = seg.repetitions(5)
    if len(reps) != 1:
        _fail(f"{where} NM row with {len(reps)} values")
    value = reps[0]
    if not NUMBER.match(value):
        _fail(f"{where} OBX-5 {value!r} is not an NM number (no NaN, Inf, exponent or empty)")
    units = seg.components(6)
    ucum = None
    mdc_unit = None
    for i in (0, 3):
        if len(units) > i + 2:
            if units[i + 2] == "UCUM":
                ucum = units[i]
            elif units[i + 2] == "MDC":
                mdc_unit = units[i]
    if ucum is None:
        _fail(f"{where} OBX-6 {seg[6]!r} has no UCUM unit")
    if ucum not in UCUM_ALLOWED:
        _fail(f"{where} OBX-6 unit {ucum!r} is not valid UCUM from codes.md (e.g. mm[Hg], not mmHg)")
    unit_info = tables().units[str(ucum)]
    allowed_mdc = {str(unit_info.mdc)} | ({"264928"} if ucum == "/min" else set())
    if mdc_unit is not None and mdc_unit not in allowed_mdc:
        _fail(f"{where} OBX-6 MDC unit {mdc_unit} does not match UCUM {ucum}")
    info = _metric_by_id(seg)
    if info is not None and ucum == info.unit:
        try:
            number = Decimal(value)
        except InvalidOperation:  # pragma: no cover - NUMBER already matched
            number = Decimal("NaN")
        low = info.minimum if info.minimum is not None else number
        high = info.maximum if info.maximum is not None else number
        if not low <= number <= high:
            _fail(
                f"{where} OBX-5 {value} outside the possible range of {info.key} ({low}..{high}): a sentinel?"
            )


HL7APY_VARIES_MAX = 999  # hl7apy types every OBX-5 ("varies") as ST(999) under STRICT


def _for_hl7apy(segments: list[Segment]) -> str:
    """The message for hl7apy, with long ED/TX/FT values (PDFs, reports) shortened to a stub.

    hl7apy 1.3.5 STRICT caps every OBX-5 at 999 characters, which is not an HL7 rule (ED-5 and TX are far
    longer; a one-page PDF is ~100 KB of Base64). Those values are checked here instead (Base64 validity,
    escaping), and hl7apy still checks the structure and every other field of the row.
    """
    out = []
    for seg in segments:
        if seg.name == "OBX" and seg[2] in ("ED", "TX", "FT") and len(seg[5]) > HL7APY_VARIES_MAX:
            fields = list(seg.fields)
            if seg[2] == "ED":
                comps = fields[5].split("^")
                comps[-1] = comps[-1][:16]
                fields[5] = "^".join(comps)
            else:
                fields[5] = fields[5][:HL7APY_VARIES_MAX]
            out.append("|".join(fields))
        else:
            out.append(seg.raw)
    return "\r".join(out)


def validate_oru(
    raw: bytes | str,
    *,
    version: str = "2.6",
    accept_ack_type: str | None = None,
    application_ack_type: str | None = None,
) -> ParsedOru:
    """Validate one ORU^R01 as sent on the wire; return it split for easy assertions."""
    if hasattr(raw, "to_er7"):
        raw = raw.to_er7()
    elif not isinstance(raw, bytes | str):  # e.g. a python-hl7 Message
        raw = str(raw)
    text = _check_bytes(raw)
    segments = _split(text)
    if not segments or segments[0].name != "MSH":
        _fail("first segment must be MSH")
    if not text.isascii() and segments[0][18] not in ("UNICODE UTF-8", "8859/1"):
        _fail("non-ASCII content requires MSH-18 = UNICODE UTF-8 (or 8859/1 for ISO 8859-1 bytes)")
    _check_leaves(segments)

    try:
        strict = VALIDATION_LEVEL.STRICT
        message = parse_message(_for_hl7apy(segments), validation_level=strict, find_groups=True)
        message.validate()
    except Exception as exc:  # hl7apy raises many types; all mean "invalid"
        raise AssertionError(
            f"ORU oracle: hl7apy STRICT rejected the message: {type(exc).__name__}: {exc}"
        ) from None
    regrouped = [s[:3] for s in message.to_er7().split("\r") if s]
    sent = [s.name for s in segments]
    if regrouped != sent:
        _fail(f"segment order {sent} is not the ORU_R01 structure order {regrouped}")

    msh = segments[0]
    if msh[9] != "ORU^R01^ORU_R01":
        _fail(f"MSH-9 {msh[9]!r} != ORU^R01^ORU_R01")
    if msh.text(12) != version:
        _fail(f"MSH-12 {msh[12]!r} != {version}")
    if not CONTROL_ID.match(msh[10]):
        _fail(f"MSH-10 {msh[10]!r} must be 1-20 characters of [A-Za-z0-9._-]")
    if msh[11] not in TABLE_0103:
        _fail(f"MSH-11 {msh[11]!r} not in table 0103")
    for n, expected in ((15, accept_ack_type), (16, application_ack_type)):
        if msh[n] not in TABLE_0155:
            _fail(f"MSH-{n} {msh[n]!r} not in table 0155")
        if expected is not None and msh[n] != expected:
            _fail(f"MSH-{n} {msh[n]!r} != configured {expected!r}")
    if not any(
        len(p := rep.split("^")) >= 4 and p[2] == PCD01_OID and p[3] == "ISO" for rep in msh.repetitions(21)
    ):
        _fail(f"MSH-21 {msh[21]!r} lacks EI-3 = {PCD01_OID} with EI-4 ISO")
    _dtm("MSH-7", msh[7])
    if not msh[7]:
        _fail("MSH-7 empty")
    if not msh.text(3, 1):
        _fail("MSH-3 empty")
    _eui_hd("MSH-3", msh[3])

    for seg in segments:
        if seg.name == "PID":
            if not seg.text(3, 1):
                _fail("PID-3 has no identifier")
            if not seg[5]:
                _fail("PID-5 empty (use ^^^^^^U when no name is known)")
            if seg[7] and not re.fullmatch(r"\d{4}(\d{2}(\d{2})?)?", seg[7]):
                _fail(f"PID-7 {seg[7]!r} is not a date")
            if seg[8] and seg[8] not in TABLE_0001:
                _fail(f"PID-8 {seg[8]!r} not in table 0001")
            if seg[31] not in ("", "Y", "N"):
                _fail(f"PID-31 {seg[31]!r} must be Y or N")
        elif seg.name == "PV1":
            if seg[2] not in TABLE_0004:
                _fail(f"PV1-2 {seg[2]!r} not in table 0004")
            _dtm("PV1-44", seg[44])
            _dtm("PV1-45", seg[45])

    obr_count = 0
    obx_count = 0
    subids: list[tuple[int, ...]] = []
    for seg in segments:
        if seg.name == "OBR":
            obr_count += 1
            subids = []
            if seg[1] != str(obr_count):
                _fail(f"OBR-1 {seg[1]!r}, expected {obr_count}")
            if not seg.text(3, 1):
                _fail("OBR-3 filler order number empty")
            if not seg.text(4, 1):
                _fail("OBR-4 universal service id empty")
            _eui_hd("OBR-2", seg[2], first=1)
            _eui_hd("OBR-3", seg[3], first=1)
            _dtm("OBR-7", seg[7])
            _dtm("OBR-8", seg[8])
        elif seg.name == "OBX":
            obx_count += 1
            where = f"OBX #{obx_count}"
            if obr_count == 0:
                _fail(f"{where} before any OBR")
            if seg[1] != str(obx_count):
                _fail(f"{where} OBX-1 {seg[1]!r}, expected {obx_count}")
            sub = _subid(where, seg[4])
            if sub in subids:
                _fail(f"{where} OBX-4 {seg[4]} repeated under one OBR")
            if subids and sub < subids[-1]:
                _fail(f"{where} OBX-4 {seg[4]} out of dictionary order")
            subids.append(sub)
            if sub[-1] == 0 and (seg[11] != "X" or seg[2] or seg[5]):
                _fail(f"{where} device row {seg[4]} must have OBX-11 X and no OBX-2/OBX-5")
            _check_obx(seg, version, where)
    if obr_count == 0:
        _fail("no OBR")
    if obx_count == 0:
        _fail("no OBX")
    return ParsedOru(raw=text, segments=segments, message=message)
