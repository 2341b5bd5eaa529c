"""Philips Sierra ECG XML (PageWriter TC/Touch, HeartStart MRx) decoder, versions 1.03 and 1.04.x
(devices.md 7.3). 1.04.x files are UTF-16 with a BOM; the XML declaration/BOM is honoured."""

from __future__ import annotations

import base64
import binascii
import struct
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import date, datetime, time
from typing import TypeVar

from vitals_agent.codes import device_codes
from vitals_agent.drivers.base import DecodeContext
from vitals_agent.drivers.ecg import aecg, xli
from vitals_agent.drivers.ecg.common import EcgDecoded, parse_int_text, patient_info, plausible, to_reading
from vitals_agent.drivers.ecg.xmlsafe import DEFAULT_MAX_XML_BYTES, child, children, local, parse_xml, text
from vitals_agent.errors import DecodeError, UnsupportedError
from vitals_agent.models import Reading

NS = "http://www3.medical.philips.com"

# globalmeasurements element -> metric key, per version: data/device_codes.toml (devices.md 7.3)
GLOBALS_104 = device_codes("philips-xml 1.04")
GLOBALS_103 = device_codes("philips-xml 1.03")
# documentinfo/documenttype values of Philips' own formats (SierraECG for 1.03, PhilipsECG for 1.04.x)
DOCUMENT_TYPES = frozenset({"SierraECG", "PhilipsECG"})
SEX = {"male": "M", "female": "F", "unknown": "U", "unspecified": "U"}


def document(data: bytes, *, max_bytes: int = DEFAULT_MAX_XML_BYTES) -> ET.Element:
    """The parsed document (root element checked), for :func:`parse_document` and :func:`waveforms`."""
    root = parse_xml(data, max_bytes=max_bytes, what="Philips XML")
    if local(root.tag) != "restingecgdata":
        raise UnsupportedError(f"not a Philips Sierra ECG file (root element {local(root.tag)!r})")
    return root


def parse(data: bytes, *, max_bytes: int = DEFAULT_MAX_XML_BYTES) -> EcgDecoded:
    return parse_document(document(data, max_bytes=max_bytes))


def parse_document(root: ET.Element) -> EcgDecoded:
    """The global measurements, statements, patient and device of a :func:`document`."""
    doc_type = text(child(root, "documentinfo", "documenttype")) or ""
    version = text(child(root, "documentinfo", "documentversion")) or ""
    if doc_type and doc_type not in DOCUMENT_TYPES:
        # e.g. MortaraECG: another vendor's file in Philips' outer shape; its fields mean other things.
        # (No documenttype at all names no other vendor: read by its version, as older exports omit it.)
        raise UnsupportedError(
            f"Files of type {doc_type} {version or '(no documentversion)'} are unsupported: "
            f"documenttype must be one of {', '.join(sorted(DOCUMENT_TYPES))}"
        )
    if version == "1.03":
        table, globals_elem = GLOBALS_103, child(root, "measurements", "globalmeasurements")
    elif version == "1.04" or version.startswith("1.04."):
        table, globals_elem = (
            GLOBALS_104,
            child(root, "interpretations", "interpretation", "globalmeasurements"),
        )
    else:
        raise UnsupportedError(
            f"Files of type {doc_type or 'Philips XML'} {version or '(no documentversion)'} are unsupported: "
            "Philips Sierra ECG XML versions 1.03 and 1.04.x are read"
        )
    out = EcgDecoded(format="philips-xml")
    if doc_type:
        out.extra["document_type"] = doc_type
    out.extra["document_version"] = version

    for tag, (metric, _unit) in table.items():
        elem = child(globals_elem, tag)
        if elem is None:
            continue
        raw = text(elem)
        value = parse_int_text(raw)
        if value is None:
            out.put(metric, None, reason=raw or "empty", raw=raw)
            continue
        why = plausible(metric, value)
        out.put(metric, None if why else value, reason=why or "", raw=raw)
        if elem.get("editedflag") == "True":
            out.extra[f"edited_{tag}"] = "true"

    _patient(root, out)
    _acquisition(root, out)
    interpretation = child(root, "interpretations", "interpretation")
    for statement in children(interpretation, "statement"):
        left = text(child(statement, "leftstatement"))
        right = text(child(statement, "rightstatement"))
        code = text(child(statement, "statementcode"))
        if left:
            n = len(out.statements) + 1
            out.statements.append(left)
            if right:
                out.extra[f"statement_{n}_reason"] = right
            if code:
                out.extra[f"statement_{n}_code"] = code
    severity = text(child(interpretation, "severity"))
    if severity:
        out.statements.append(severity)
    signature = text(child(interpretation, "mdsignatureline"))
    if signature:
        out.statements.append(signature)
    return out


def decode(data: bytes, ctx: DecodeContext, *, max_bytes: int = DEFAULT_MAX_XML_BYTES) -> Reading:
    return to_reading(parse(data, max_bytes=max_bytes), data, ctx)


# --------------------------------------------------------------------------------------------- waveforms

STANDARD_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def lead_samples(root: ET.Element) -> dict[str, list[int]]:
    """The rhythm leads of ``parsedwaveforms`` as stored integers (XLI or uncompressed), limb leads rebuilt;
    labels from ``leadlabels`` (1.04) or the standard 12-lead order (1.03)."""
    waves = child(root, "waveforms", "parsedwaveforms")
    if waves is None:
        raise DecodeError("Philips XML: no parsedwaveforms")
    if (waves.get("dataencoding") or "Base64") != "Base64":
        raise UnsupportedError(
            f"Philips XML: waveform encoding {waves.get('dataencoding')!r} is not supported"
        )
    try:
        raw = base64.b64decode("".join((waves.text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("Philips XML: parsedwaveforms is not valid Base64") from None
    method = waves.get("compression") or waves.get("compressmethod") or ""
    if waves.get("compressflag") == "False":
        method = ""
    if method == "XLI":
        leads = xli.rebuild_limb_leads(xli.decode(raw))
    elif not method or method.lower() == "uncompressed":
        count = int(waves.get("numberofleads") or 12)
        values = list(struct.unpack(f"<{len(raw) // 2}h", raw[: len(raw) // 2 * 2]))
        per = len(values) // count if count else 0
        leads = [values[k * per : (k + 1) * per] for k in range(count)]
    else:
        raise UnsupportedError(f"Philips XML: waveform compression {method!r} is not supported")
    labels = (waves.get("leadlabels") or "").split() or list(STANDARD_12)
    return dict(zip(labels, leads, strict=False))


def waveforms(root: ET.Element) -> aecg.Waveforms:
    """The rhythm leads in microvolts with their sample interval, for the report page."""
    samples_by_lead = lead_samples(root)
    signal = child(root, "dataacquisition", "signalcharacteristics")
    waves = child(root, "waveforms", "parsedwaveforms")
    rate = parse_int_text(
        text(child(signal, "samplingrate")) or (waves.get("samplespersecond") if waves is not None else None)
    )
    resolution = parse_int_text(
        (waves.get("resolution") if waves is not None else None)
        or text(child(signal, "signalresolution"))
        or text(child(signal, "resolution"))
    )
    if rate is None or rate <= 0 or resolution is None or resolution <= 0:
        raise DecodeError("Philips XML: no usable sampling rate or resolution for the waveforms")
    scale = float(resolution)
    leads = {name: [v * scale for v in samples] for name, samples in samples_by_lead.items()}
    return aecg.Waveforms(sample_interval=1 / float(rate), leads=leads)


T = TypeVar("T", date, time)


def _iso(parse: Callable[[str], T], value: str | None) -> T | None:
    """``value`` read by ``parse`` (``date.fromisoformat``...); None when absent or unreadable."""
    if not value:
        return None
    try:
        return parse(value.strip())
    except ValueError:
        return None


def _patient(root: ET.Element, out: EcgDecoded) -> None:
    general = child(root, "patient", "generalpatientdata")
    if general is None:
        return
    born = _iso(date.fromisoformat, text(child(general, "age", "dateofbirth")))
    sex = SEX.get((text(child(general, "sex")) or "").lower())
    out.patient = patient_info(
        text(child(general, "patientid")),
        text(child(general, "name", "lastname")),
        text(child(general, "name", "firstname")),
        born,
        sex,
    )
    years = text(child(general, "age", "years"))
    if years:
        out.extra["patient_age"] = f"{years} y"


def _acquisition(root: ET.Element, out: EcgDecoded) -> None:
    for name in ("dataacquisition", "reportinfo"):
        elem = child(root, name)
        if elem is None:
            continue
        day, clock = _iso(date.fromisoformat, elem.get("date")), _iso(time.fromisoformat, elem.get("time"))
        if day is not None:
            out.acquired = datetime.combine(day, clock or time(0, 0))
            break
    machine = child(root, "dataacquisition", "machine")
    if machine is not None:
        out.model = text(machine)
        out.serial_number = machine.get("machineid") or None
        parts = (machine.get("detaildescription") or "").split(":")
        if len(parts) >= 3:
            out.manufacturer = parts[0] or None
            out.firmware = parts[-1] or None
            out.extra["model_number"] = parts[1]
        elif parts[0]:
            out.manufacturer = parts[0]
    if out.manufacturer is None:
        out.manufacturer = "Philips"
