"""Test vectors and a fake runtime for the ECG tests (no tests here).

The SCP-ECG encoder below is written from devices.md 7.1 independently of the decoder (its CRC is the
bit-by-bit form of CRC-CCITT, the decoder's is table-driven), so the synthetic records check the decoder
against the specification rather than against itself.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from tests.kit import T0, fixed_ctx, make_driver, shared_file
from vitals_agent.drivers.base import DecodeContext

FIXED_NOW = T0


def sample(*parts: str) -> Path:
    return shared_file("samples", *parts)


def ctx(device_id: str = "cart-1", *, tz: tzinfo = UTC, now: datetime = T0) -> DecodeContext:
    """The ECG tests' decode context: device ``cart-1``, host clock at :data:`T0`."""
    return fixed_ctx(device_id, tz=tz, now=now)


driver = make_driver


# ------------------------------------------------------------------------------------------- SCP-ECG


def crc_ccitt_bitwise(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def scp_section(sid: int, body: bytes, version: int = 20) -> bytes:
    reserved = b"SCPECG" if sid == 0 else b"\x00" * 6
    content = struct.pack("<HIBB6s", sid, 16 + len(body), version, version, reserved) + body
    return struct.pack("<H", crc_ccitt_bitwise(content)) + content


def scp_record(bodies: dict[int, bytes], version: int = 20) -> bytes:
    """A whole record: Section 0 with pointers for IDs 0-11 (and any others given), then the sections."""
    ids = sorted(set(range(12)) | set(bodies))
    sec0_len = 16 + 10 * len(ids)
    offset = 6 + sec0_len
    built: list[bytes] = []
    pointers = []
    for sid in ids:
        if sid == 0:
            pointers.append((0, sec0_len, 7))
        elif sid in bodies:
            sec = scp_section(sid, bodies[sid], version)
            pointers.append((sid, len(sec), offset + 1))
            offset += len(sec)
            built.append(sec)
        else:
            pointers.append((sid, 0, 0))
    sec0 = scp_section(0, b"".join(struct.pack("<HII", *p) for p in pointers), version)
    body = sec0 + b"".join(built)
    rest = struct.pack("<I", 6 + len(body)) + body
    return struct.pack("<H", crc_ccitt_bitwise(rest)) + rest


def refresh_crcs(record: bytes) -> bytes:
    """Recompute every section CRC reachable through Section 0 and then the record CRC (for mutation
    tests that want to get past the checksums)."""
    data = bytearray(record)
    if len(data) < 22:
        return bytes(data)

    def fix(offset: int) -> int | None:
        if offset + 16 > len(data):
            return None
        length = struct.unpack_from("<I", data, offset + 4)[0]
        if length < 16 or offset + length > len(data):
            return None
        struct.pack_into("<H", data, offset, crc_ccitt_bitwise(bytes(data[offset + 2 : offset + length])))
        return int(length)

    sec0_len = fix(6)
    if sec0_len:
        for pos in range(6 + 16, 6 + sec0_len - 9, 10):
            sid, length, index = struct.unpack_from("<HII", data, pos)
            if sid and length and index:
                fix(index - 1)
    length = min(struct.unpack_from("<I", data, 2)[0], len(data))
    struct.pack_into("<H", data, 0, crc_ccitt_bitwise(bytes(data[2:length])))
    return bytes(data)


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack("<BH", tag, len(value)) + value


def txt(text: str) -> bytes:
    return text.encode("latin-1") + b"\x00"


def scp_device_tag(model: str, serial: str, software: str, manufacturer: str) -> bytes:
    fixed = struct.pack("<HHHBB6sBBBBB", 0, 11, 51, 0, 255, model.encode("latin-1"), 0x14, 0xC0, 0, 0x08, 0)
    revision = b"A1\x00"
    return (
        fixed
        + b"\x00" * 16
        + bytes([len(revision)])
        + revision
        + txt(serial)
        + txt(software)
        + txt("scp-writer")
        + txt(manufacturer)
    )


def scp_section1(
    *,
    last: str = "Doe",
    first: str = "Jane",
    pid: str = "MRN-42",
    dob: tuple[int, int, int] = (1980, 2, 29),
    sex: int = 2,
    acquired: tuple[int, int, int, int, int, int] = (2026, 3, 11, 13, 45, 10),
    device: bytes | None = None,
) -> bytes:
    y, mo, d, h, mi, s = acquired
    return b"".join(
        [
            tlv(0, txt(last)),
            tlv(1, txt(first)),
            tlv(2, txt(pid)),
            tlv(5, struct.pack("<HBB", *dob)),
            tlv(8, bytes([sex])),
            tlv(14, device if device is not None else scp_device_tag("MAC55", "SN123", "1.2", "ACME")),
            tlv(25, struct.pack("<HBB", y, mo, d)),
            tlv(26, bytes([h, mi, s])),
            tlv(255, b""),
        ]
    )


def scp_section7(
    *,
    fiducials: tuple[int, int, int, int, int] = (100, 210, 260, 352, 660),
    axes: tuple[int, int, int] = (30, -15, 45),
    rr: int = 800,
    pp: int = 800,
    vent_rate: int = 75,
    atrial_rate: int = 75,
    qtc: int = 447,
    formula: int = 0,
    extra_blocks: int = 1,
) -> bytes:
    blocks = 1 + extra_blocks
    out = struct.pack("<BBHH", blocks, 0, rr, pp)
    out += struct.pack("<HHHHHhhh", *fiducials, *axes)
    out += struct.pack("<HHHHHhhh", *(29999,) * 5, 999, 999, 999) * extra_blocks
    out += struct.pack("<H", 0)  # no QRS complexes listed
    out += struct.pack("<HHHBH", vent_rate, atrial_rate, qtc, formula, 0)
    return out


def scp_section8(statements: Sequence[str], confirmed: int = 0) -> bytes:
    out = struct.pack("<BHBBBBB", confirmed, 2026, 3, 11, 13, 46, 0) + bytes([len(statements)])
    for i, statement in enumerate(statements, 1):
        raw = txt(statement)
        out += struct.pack("<BH", i, len(raw)) + raw
    return out


def scp_section10(leads: dict[int, Sequence[int]]) -> bytes:
    out = struct.pack("<HH", len(leads), 0)
    for lead_id, values in leads.items():
        raw = struct.pack(f"<{len(values)}h", *values)
        out += struct.pack("<HH", lead_id, len(raw)) + raw
    return out


def synthetic_scp(**section7: Any) -> bytes:
    return scp_record(
        {
            1: scp_section1(),
            7: scp_section7(**section7),
            8: scp_section8(["Sinus rhythm", "Normal ECG"]),
            10: scp_section10({1: [110, 160, 92, 400], 2: [108, 158, 29999, 398]}),
        }
    )


# ------------------------------------------------------------------------------------------- aECG


def _ann(code: str, value: str, unit: str | None) -> str:
    """One global-measurement annotation; ``unit`` None leaves the attribute out (HL7 default: '1')."""
    unit_attr = "" if unit is None else f' unit="{unit}"'
    return (
        f'<component><annotation><code code="{code}" codeSystem="2.16.840.1.113883.6.24"/>'
        f'<value xsi:type="PQ" value="{value}"{unit_attr}/></annotation></component>'
    )


def synthetic_aecg(
    *,
    measurements: Sequence[tuple[str, str, str | None]] = (
        ("MDC_ECG_HEART_RATE", "75", "bpm"),
        ("MDC_ECG_TIME_PD_P", "110", "ms"),
        ("MDC_ECG_TIME_PD_PR", "160", "ms"),
        ("MDC_ECG_TIME_PD_QRS", "92", "ms"),
        ("MDC_ECG_TIME_PD_QT", "0.4", "s"),
        ("MDC_ECG_TIME_PD_QTc", "447", "ms"),
        ("MDC_ECG_ANGLE_P_FRONT", "30", "deg"),
        ("MDC_ECG_ANGLE_QRS_FRONT", "-15", "deg"),
        ("MDC_ECG_ANGLE_T_FRONT", "45", "deg"),
    ),
    statements: Sequence[str] = ("Sinus rhythm", "Normal ECG"),
    rhythm_measurements: Sequence[tuple[str, str, str | None]] = (),  # the rhythm (series) level
    leads: dict[str, Sequence[int]] | None = None,
    increment: str = "0.002",
    effective: str = "20260311134510",
) -> bytes:
    anns = "".join(_ann(c, v, u) for c, v, u in measurements)
    rhythm_anns = "".join(_ann(c, v, u) for c, v, u in rhythm_measurements)
    interp = "".join(
        '<component><annotation><code code="MDC_ECG_INTERPRETATION_STATEMENT"/>'
        f'<value xsi:type="ST">{escape(s)}</value></annotation></component>'
        for s in statements
    )
    lead_xml = ""
    for lead, digits in (
        leads or {"MDC_ECG_LEAD_I": [0, 1, 2, 1, 0], "MDC_ECG_LEAD_II": [0, 2, 4, 2, 0]}
    ).items():
        lead_xml += (
            f'<component><sequence><code code="{lead}"/><value xsi:type="SLIST_PQ">'
            '<origin value="0" unit="uV"/><scale value="5" unit="uV"/>'
            f"<digits>{' '.join(str(d) for d in digits)}</digits></value></sequence></component>"
        )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <id root="1.2.3"/>
  <effectiveTime><center value="{effective}"/></effectiveTime>
  <componentOf><timepointEvent><componentOf><subjectAssignment><subject><trialSubject>
    <id root="1.2.3.4" extension="MRN-42"/>
    <subjectDemographicPerson>
      <name><family>Doe</family><given>Jane</given></name>
      <administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/>
      <birthTime value="19800229"/>
    </subjectDemographicPerson>
  </trialSubject></subject></subjectAssignment></componentOf></timepointEvent></componentOf>
  <component><series>
    <code code="RHYTHM"/>
    <author><seriesAuthor>
      <manufacturedSeriesDevice><manufacturerModelName>MAC55</manufacturerModelName>
        <softwareName>1.2</softwareName></manufacturedSeriesDevice>
      <manufacturerOrganization><name>ACME</name></manufacturerOrganization>
    </seriesAuthor></author>
    <component><sequenceSet>
      <component><sequence><code code="TIME_ABSOLUTE"/><value xsi:type="GLIST_TS">
        <head value="{effective}"/><increment value="{increment}" unit="s"/></value></sequence></component>
      {lead_xml}
    </sequenceSet></component>
    <derivation><derivedSeries><code code="REPRESENTATIVE_BEAT"/>
      <subjectOf><annotationSet>{anns}</annotationSet></subjectOf>
    </derivedSeries></derivation>
    <subjectOf><annotationSet>{rhythm_anns}
      <component><annotation><code code="MDC_ECG_INTERPRETATION"/>{interp}</annotation></component>
    </annotationSet></subjectOf>
  </series></component>
</AnnotatedECG>
""".encode()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<AnnotatedECG xmlns="urn:hl7-org:v3"><id root="&lol9;"/></AnnotatedECG>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "http://127.0.0.1:9/secret">]>
<restingecgdata xmlns="http://www3.medical.philips.com"><x>&xxe;</x></restingecgdata>
"""


# ------------------------------------------------------------------------------------------- Philips


def synthetic_philips_104(version: str = "1.04.01", *, qtcb: str = "412", encoding: str = "utf-16") -> bytes:
    text = f"""<?xml version="1.0" encoding="{encoding}"?>
<restingecgdata xmlns="http://www3.medical.philips.com">
  <documentinfo><documenttype>PhilipsECG</documenttype><documentversion>{version}</documentversion></documentinfo>
  <reportinfo date="2026-03-11" time="13:45:10"/>
  <dataacquisition date="2026-03-11" time="13:45:09">
    <machine machineid="US00001"
      detaildescription="Philips Medical Products:860315:A.07.07.07">PageWriter TC50</machine>
  </dataacquisition>
  <patient><generalpatientdata>
    <patientid>MRN-42</patientid><name><lastname>Doe</lastname><firstname>Jane</firstname></name>
    <age><dateofbirth>1980-02-29</dateofbirth></age><sex>Female</sex>
  </generalpatientdata></patient>
  <interpretations><interpretation>
    <globalmeasurements>
      <heartrate editedflag="False">64</heartrate><rrint editedflag="False">938</rrint>
      <atrialrate editedflag="False">Indeterminate</atrialrate><pdur editedflag="False">104</pdur>
      <print editedflag="False">164</print><qrsdur editedflag="False">102</qrsdur>
      <qtint editedflag="False">399</qtint><qtcb editedflag="False">{qtcb}</qtcb>
      <qtcf editedflag="False">408</qtcf><qtco methodname="Hodges" label="QTcH"/>
      <pfrontaxis editedflag="False">27</pfrontaxis><qrsfrontaxis editedflag="False">Failed</qrsfrontaxis>
      <tfrontaxis editedflag="False">80</tfrontaxis>
    </globalmeasurements>
    <mdsignatureline>Unconfirmed Diagnosis</mdsignatureline>
    <severity code="ON">- OTHERWISE NORMAL ECG -</severity>
    <statement><statementcode>SR</statementcode><leftstatement>Sinus rhythm</leftstatement>
      <rightstatement>normal P axis, V-rate 50-99</rightstatement></statement>
  </interpretation></interpretations>
</restingecgdata>
"""
    return text.encode(encoding)


def synthetic_philips_103() -> bytes:
    return b"""<?xml version="1.0" encoding="UTF-8"?>
<restingecgdata xmlns="http://www3.medical.philips.com">
  <documentinfo><documentversion>1.03</documentversion></documentinfo>
  <reportinfo date="2026-03-11" time="13:45:10"/>
  <dataacquisition date="2026-03-11" time="13:45:10">
    <machine machineid="0001" detaildescription="">HeartstartMRx</machine></dataacquisition>
  <patient><generalpatientdata><patientid>MRN-7</patientid><name><lastname></lastname><firstname></firstname></name>
    <age><years>50</years></age><sex>Male</sex></generalpatientdata></patient>
  <measurements><globalmeasurements>
    <atrialrate>41</atrialrate><meanventrate>41</meanventrate><meanprint>151</meanprint>
    <meanqrsdur>135</meanqrsdur><meanqtint>476</meanqtint><meanqtc>393</meanqtc>
    <pfrontaxis>66</pfrontaxis><qrsfrontaxis>-21</qrsfrontaxis><tfrontaxis>59</tfrontaxis>
  </globalmeasurements></measurements>
  <interpretations><interpretation>
    <mdsignatureline>Unconfirmed diagnosis</mdsignatureline>
    <severity code="AB">- ABNORMAL ECG -</severity>
    <statement><statementcode/><leftstatement>Sinus bradycardia</leftstatement>
      <rightstatement>rate&lt; 50</rightstatement></statement>
  </interpretation></interpretations>
</restingecgdata>
"""
