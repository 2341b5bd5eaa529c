"""SCP-ECG (EN 1064 / ISO 11073-91064) record decoder: sections 0, 1, 7, 8 and 10 (devices.md 7.1).

Pure: bytes in, :class:`EcgDecoded` out. Every CRC (record and each present section) is checked, every
length is bounds-checked, and the standard's "not computed" values (29999 for times, 999 for axes, 0 for
rates) never become numbers.
"""

from __future__ import annotations

import struct
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

from vitals_agent.drivers.base import DecodeContext
from vitals_agent.drivers.ecg.common import EcgDecoded, check_size, patient_info, to_reading
from vitals_agent.errors import ChecksumError, DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import Reading

MEDIA_TYPE = "application/octet-stream"
NOT_COMPUTED = 29999
AXIS_UNDEFINED = 999
HEADER = 16
RECORD_HEADER = 6
# Protocol versions this decoder reads: 1.0-1.3 (10-13) and 2.0-3.0 (20-30). Tested on 2.0 only.
SUPPORTED_VERSIONS = frozenset({10, 11, 12, 13, *range(20, 31)})

# SCP lead codes (the standard's lead table) for the per-lead measurements of Section 10.
LEADS: dict[int, str] = {
    1: "I",
    2: "II",
    3: "V1",
    4: "V2",
    5: "V3",
    6: "V4",
    7: "V5",
    8: "V6",
    61: "III",
    62: "aVR",
    63: "aVL",
    64: "aVF",
}
# Section 10 value order (devices.md 7.1); the rest of the per-lead block is not named here.
LEAD_FIELDS: tuple[str, ...] = (
    "p_duration",
    "pr_interval",
    "qrs_duration",
    "qt_interval",
    "q_duration",
    "r_duration",
    "s_duration",
    "r2_duration",
    "s2_duration",
    "q_amplitude",
    "r_amplitude",
    "s_amplitude",
    "r2_amplitude",
    "s2_amplitude",
    "j_amplitude",
    "p_pos_amplitude",
    "p_neg_amplitude",
    "t_pos_amplitude",
    "t_neg_amplitude",
    "st_slope",
    "p_morphology",
    "t_morphology",
    "iso_qrs_onset",
    "iso_qrs_end",
    "intrinsicoid_deflection",
    "quality",
    "st_j20",
    "st_j60",
    "st_j80",
    "st_rr16",
    "st_rr8",
)
SEX = {0: "U", 1: "M", 2: "F", 9: "U"}
QTC_FORMULA = {0: "unknown", 1: "Bazett", 2: "Hodges"}


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _crc_table()


def crc_ccitt(data: bytes | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-CCITT as SCP-ECG uses it: poly 0x1021, init 0xFFFF, not reflected, no final XOR."""
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def record_length(header: bytes) -> int | None:
    """The record length an SCP header announces (bytes 2..5), or None when fewer than 6 bytes."""
    if len(header) < RECORD_HEADER:
        return None
    return int(struct.unpack_from("<I", header, 2)[0])


def header_problem(head: bytes, max_bytes: int) -> str | None:
    """Why a file cannot be an SCP-ECG record this agent reads, judged from its first 22 bytes alone (record
    length over ``max_bytes`` or impossible, section 0 not where it must be, unsupported version), or None.
    """
    length = record_length(head)
    if length is None:
        return None
    if length < RECORD_HEADER + HEADER:
        return f"SCP header: record length {length} is impossible (a record has at least 22 bytes)"
    if length > max_bytes:
        return (
            f"SCP header announces {length} bytes, more than max_file_bytes {max_bytes} "
            "(a non-compliant record length field, or a file too large for this agent)"
        )
    if len(head) >= RECORD_HEADER + HEADER:
        sid = struct.unpack_from("<H", head, RECORD_HEADER + 2)[0]
        if sid != 0:
            return f"not an SCP-ECG record: section 0 must follow the record header (found section ID {sid})"
        version = head[RECORD_HEADER + 9]
        if version not in SUPPORTED_VERSIONS:
            return f"SCP-ECG protocol version {version} is not supported"
    return None


class _Cursor:
    """Bounds-checked little-endian reader over one section's bytes."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data = data
        self.pos = 0
        self.where = where

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TruncatedError(
                f"{self.where}: needs {n} bytes at offset {self.pos}, has {self.remaining()}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def i16(self) -> int:
        return int(struct.unpack("<h", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])


def _text(raw: bytes) -> str | None:
    text = raw.split(b"\x00", 1)[0].decode("latin-1").strip()
    return text or None


def _date(raw: bytes) -> date | None:
    if len(raw) < 4:
        return None
    year, month, day = struct.unpack_from("<HBB", raw)
    try:
        return date(year, month, day) if year else None
    except ValueError:
        return None


def _time(raw: bytes) -> time | None:
    if len(raw) < 3:
        return None
    try:
        return time(raw[0], raw[1], raw[2])
    except ValueError:
        return None


def _sections(data: bytes) -> dict[int, bytes]:
    """Check the record and return each present section's bytes (header included) by ID."""
    if len(data) < RECORD_HEADER + HEADER:
        raise TruncatedError(f"SCP record too short ({len(data)} bytes)")
    stored_crc, length = struct.unpack_from("<HI", data, 0)
    if length < RECORD_HEADER + HEADER:
        raise DecodeError(
            f"non-compliant SCP-ECG record: its length field says {length} bytes (at least 22 are needed)"
        )
    if len(data) < length:
        raise _short_record(data, length)
    record = data[:length]  # trailing bytes after the record are ignored
    computed = crc_ccitt(memoryview(record)[2:])
    if computed != stored_crc:
        raise ChecksumError(f"SCP record CRC mismatch: stored {stored_crc}, computed {computed}")

    sec0 = _section(record, 0, RECORD_HEADER, None)
    cur = _Cursor(sec0[HEADER:], "section 0")
    pointers: list[tuple[int, int, int]] = []
    while cur.remaining() >= 10:
        sid, slen, index = cur.u16(), cur.u32(), cur.u32()
        pointers.append((sid, slen, index))
    ids = {p[0] for p in pointers}
    if not {0, 1}.issubset(ids):
        raise DecodeError(
            "non-compliant SCP-ECG record: section table lacks the pointers to sections 0 and 1"
        )
    out: dict[int, bytes] = {0: sec0}
    for sid, slen, index in pointers:
        if sid == 0 or slen == 0:
            continue
        if index < 1:
            raise DecodeError(
                f"non-compliant SCP-ECG record: section table gives section {sid} index {index}"
            )
        out[sid] = _section(record, sid, index - 1, slen)
    return out


def _table_end(data: bytes) -> int | None:
    """Where the last section section 0's table points to ends (bytes from the file start), or None when
    section 0 itself is not readable from ``data``."""
    if len(data) < RECORD_HEADER + HEADER:
        return None
    sid, slen = struct.unpack_from("<HI", data, RECORD_HEADER + 2)
    if sid != 0 or slen < HEADER or RECORD_HEADER + slen > len(data):
        return None
    end = RECORD_HEADER + slen
    table = data[RECORD_HEADER + HEADER : RECORD_HEADER + slen]
    for pos in range(0, len(table) - 9, 10):
        _, length, index = struct.unpack_from("<HII", table, pos)
        if length and index:
            end = max(end, int(index) - 1 + int(length))
    return int(end)


def _short_record(data: bytes, length: int) -> DecodeError:
    """The file is shorter than its record length field: truncated, or a length field that is wrong.

    Section 0's table tells them apart: when every section it points to lies inside the file, the file is
    whole and the length field is what is wrong (a non-compliant writer); otherwise bytes are missing."""
    end = _table_end(data)
    if end is not None and end <= len(data):
        crc_ok = crc_ccitt(memoryview(data)[2:end]) == struct.unpack_from("<H", data, 0)[0]
        return DecodeError(
            f"non-compliant SCP-ECG record: its length field (bytes 3-6) says {length} bytes, but its "
            f"section table ends at byte {end} of the {len(data)}-byte file"
            + ("" if crc_ok else ", and the record CRC over those bytes does not match")
        )
    where = f"; its section table reaches byte {end}" if end is not None else ""
    return TruncatedError(f"SCP record truncated: {len(data)} of {length} bytes{where}")


def _section(record: bytes, sid: int, offset: int, length: int | None) -> bytes:
    if offset + HEADER > len(record):
        raise TruncatedError(f"SCP section {sid} header outside the record")
    crc, hid, hlen = struct.unpack_from("<HHI", record, offset)
    if hid != sid:
        raise DecodeError(
            f"non-compliant SCP-ECG record: section table points to section {sid} at byte {offset + 1}, "
            f"which holds section ID {hid}"
        )
    if length is not None and hlen != length:
        raise DecodeError(
            f"non-compliant SCP-ECG record: section {sid} says it is {hlen} bytes, the section table {length}"
        )
    if hlen < HEADER:
        raise DecodeError(f"SCP section {sid}: length {hlen} is shorter than its header")
    if offset + hlen > len(record):
        raise TruncatedError(f"SCP section {sid} ends after the record ({offset + hlen} > {len(record)})")
    body = record[offset : offset + hlen]
    computed = crc_ccitt(memoryview(body)[2:])
    if computed != crc:
        raise ChecksumError(f"SCP section {sid} CRC mismatch: stored {crc}, computed {computed}")
    return body


def parse(data: bytes, *, max_bytes: int = 16 * 1024 * 1024) -> EcgDecoded:
    """Decode one SCP-ECG record. Raises only :class:`DecodeError` subclasses on bad input."""
    check_size(data, max_bytes)
    sections = _sections(data)
    for required, what in ((0, "pointers"), (1, "patient and acquisition data")):
        if required not in sections:
            raise DecodeError(f"SCP-ECG record has no section {required} ({what})")
    version = sections[0][9]  # protocol version byte of section 0's header
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedError(f"SCP-ECG protocol version {version} is not supported")
    out = EcgDecoded(format="scp-ecg")
    out.extra["scp_version"] = f"{version // 10}.{version % 10}"
    _section1(sections[1][HEADER:], out)
    if 7 in sections:
        _section7(sections[7][HEADER:], version, out)
    if 8 in sections:
        _section8(sections[8][HEADER:], out)
    if 10 in sections:
        _section10(sections[10][HEADER:], out)
    return out


def decode(data: bytes, ctx: DecodeContext, *, max_bytes: int = 16 * 1024 * 1024) -> Reading:
    return to_reading(parse(data, max_bytes=max_bytes), data, ctx)


# --------------------------------------------------------------------------------------------- section 1


def _section1(body: bytes, out: EcgDecoded) -> None:
    cur = _Cursor(body, "section 1")
    tags: dict[int, bytes] = {}
    while cur.remaining() >= 3:
        tag = cur.u8()
        length = cur.u16()
        if tag == 255:
            break
        value = cur.take(length)
        tags.setdefault(tag, value)  # the first occurrence counts
    family = _text(tags[0]) if 0 in tags else None
    given = _text(tags[1]) if 1 in tags else None
    mrn = _text(tags[2]) if 2 in tags else None
    dob = _date(tags[5]) if 5 in tags else None
    sex = SEX.get(tags[8][0]) if tags.get(8) else None
    out.patient = patient_info(mrn, family, given, dob, sex)
    if 4 in tags and len(tags[4]) >= 3:
        age, unit = struct.unpack_from("<HB", tags[4])
        if age and unit in (1, 2, 3, 4, 5):
            out.extra["patient_age"] = f"{age} {('y', 'mo', 'wk', 'd', 'h')[unit - 1]}"
    if 14 in tags:
        _device(tags[14], out)
    acq_date = _date(tags[25]) if 25 in tags else None
    acq_time = _time(tags[26]) if 26 in tags else None
    if acq_date is not None:
        acquired = datetime.combine(acq_date, acq_time or time(0, 0))
        if 34 in tags and len(tags[34]) >= 2:
            # [M] time zone: offset from UTC in minutes (int16); out-of-range values mean "not given"
            offset = struct.unpack_from("<h", tags[34])[0]
            if -14 * 60 <= offset <= 14 * 60:
                acquired = acquired.replace(tzinfo=timezone(timedelta(minutes=offset)))
        out.acquired = acquired
        if acq_time is None:
            out.extra["acquisition_time"] = "date only"
    for tag, key in ((16, "acquiring_institution"), (31, "ecg_sequence_number")):
        if tag in tags and (text := _text(tags[tag])):
            out.extra[key] = text


def _device(raw: bytes, out: EcgDecoded) -> None:
    """Tag 14: fixed part (devices.md 7.1) then NUL-separated strings."""
    if len(raw) < 19:
        return
    model = raw[8:14].split(b"\x00", 1)[0].decode("latin-1").strip()
    out.model = model or None
    out.extra["scp_device_id"] = str(struct.unpack_from("<H", raw, 4)[0])
    # 19 bytes fixed, 16 reserved, then a length-prefixed analysing-program revision, then strings
    rest = raw[19 + 16 :]
    if not rest:
        return
    rev_len = rest[0]
    strings = [s.decode("latin-1").strip() for s in rest[1 + rev_len :].split(b"\x00")]
    # serial number, firmware, SCP software, manufacturer; "unknown" or missing = not given
    usable = [s if s and s.lower() != "unknown" else None for s in strings[:4]]
    out.serial_number, out.firmware, software, out.manufacturer = usable + [None] * (4 - len(usable))
    if software:
        out.extra["scp_software"] = software


# --------------------------------------------------------------------------------------------- section 7


def _interval(metric: str, start: int, end: int, out: EcgDecoded) -> None:
    if NOT_COMPUTED in (start, end):
        out.put(metric, None, reason="not computed (29999)", raw=f"{start}/{end}")
    elif max(start, end) > NOT_COMPUTED:
        out.put(metric, None, reason="fiducial point out of range", raw=f"{start}/{end}")
    elif end <= start:
        out.put(metric, None, reason="onset after offset", raw=f"{start}/{end}")
    else:
        out.put(metric, Decimal(end - start))


def _axis(metric: str, value: int, out: EcgDecoded) -> None:
    if value == AXIS_UNDEFINED or not -360 <= value <= 360:
        out.put(
            metric,
            None,
            reason="undefined (999)" if value == AXIS_UNDEFINED else "out of range",
            raw=str(value),
        )
    else:
        out.put(metric, Decimal(value))


def _rate(metric: str, value: int, out: EcgDecoded) -> None:
    if value in (0, NOT_COMPUTED) or value > 1000:
        out.put(metric, None, reason="not given", raw=str(value))
    else:
        out.put(metric, Decimal(value))


def _section7(body: bytes, version: int, out: EcgDecoded) -> None:
    cur = _Cursor(body, "section 7")
    blocks = cur.u8()
    spikes = cur.u8()
    if version >= 20:
        avg_rr, avg_pp = cur.u16(), cur.u16()
        if avg_rr in (0, NOT_COMPUTED) or avg_rr > 6000:
            out.put("ecg_rr_interval", None, reason="not computed", raw=str(avg_rr))
        else:
            out.put("ecg_rr_interval", Decimal(avg_rr))
        if avg_pp not in (0, NOT_COMPUTED):
            out.extra["pp_interval_ms"] = str(avg_pp)
    if blocks == 0:
        return
    first = cur.take(16)
    p_on, p_off, qrs_on, qrs_off, t_off, p_axis, qrs_axis, t_axis = struct.unpack("<HHHHHhhh", first)
    cur.take(16 * (blocks - 1))
    _interval("ecg_p_duration", p_on, p_off, out)
    _interval("ecg_pr_interval", p_on, qrs_on, out)
    _interval("ecg_qrs_duration", qrs_on, qrs_off, out)
    _interval("ecg_qt_interval", qrs_on, t_off, out)
    _axis("ecg_p_axis", p_axis, out)
    _axis("ecg_qrs_axis", qrs_axis, out)
    _axis("ecg_t_axis", t_axis, out)
    out.extra["pacemaker_spikes"] = str(spikes)
    # pacemaker spikes: 4 bytes each, then 6 bytes each of spike information
    cur.take(4 * spikes)
    cur.take(6 * spikes)
    if cur.remaining() < 2:
        return  # older writers end here
    qrs_count = cur.u16()
    cur.take(qrs_count)
    if cur.remaining() < 7:
        return
    vent_rate, atrial_rate, qtc, formula = cur.u16(), cur.u16(), cur.u16(), cur.u8()
    _rate("ecg_heart_rate", vent_rate, out)
    _rate("ecg_atrial_rate", atrial_rate, out)
    qtc_metric = "ecg_qtc_bazett" if formula == 1 else "ecg_qtc_interval"
    if qtc in (0, NOT_COMPUTED) or qtc > 2000:
        out.put(qtc_metric, None, reason="not computed", raw=str(qtc))
    else:
        out.put(qtc_metric, Decimal(qtc))
    out.extra["qtc_formula"] = QTC_FORMULA.get(formula, f"code {formula}")


# --------------------------------------------------------------------------------------------- section 8


def _section8(body: bytes, out: EcgDecoded) -> None:
    cur = _Cursor(body, "section 8")
    confirmed = cur.u8()
    cur.take(4 + 3)  # date, time of the interpretation
    count = cur.u8()
    for _ in range(count):
        cur.u8()  # sequence number
        length = cur.u16()
        text = _text(cur.take(length))
        if text:
            out.statements.append(text)
    out.extra["interpretation_status"] = {0: "original", 1: "confirmed", 2: "overread, not confirmed"}.get(
        confirmed, f"code {confirmed}"
    )


# --------------------------------------------------------------------------------------------- section 10


def _section10(body: bytes, out: EcgDecoded) -> None:
    cur = _Cursor(body, "section 10")
    leads = cur.u16()
    cur.u16()  # manufacturer-specific
    for _ in range(leads):
        lead_id = cur.u16()
        length = cur.u16()
        raw = cur.take(length)
        name = LEADS.get(lead_id, f"lead{lead_id}")
        values = struct.unpack(f"<{len(raw) // 2}h", raw[: len(raw) // 2 * 2])
        for field_name, value in zip(LEAD_FIELDS, values, strict=False):
            if value in (NOT_COMPUTED, AXIS_UNDEFINED, -32768, 32767):
                continue
            out.extra[f"lead_{name}_{field_name}"] = str(value)
