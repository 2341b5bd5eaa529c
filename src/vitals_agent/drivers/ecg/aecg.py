"""HL7 v3 Annotated ECG (aECG) decoder (devices.md 7.2), on a hardened XML parser.

Global measurements are merged from two levels: the representative-beat annotation set first, then the
rhythm series' own annotation sets for whatever the first did not give (a TraceMasterVue export puts only
the heart rate on the representative beat and RR, PR, QRS, QT, QTc at the rhythm level); only when neither
level has any, the first beat annotation is read (marked beat-level). Annotations tied to a lead are
ignored; a 0 where 0 is impossible means "not computed".

Units: an interval value without a ``unit`` is not guessed to be milliseconds. HL7 v3's PQ data type
declares ``unit`` optional with the default ``1`` (dimensionless), which is not a duration, so such a value
is dropped with that reason — unless the site declares what its carts mean (``unitless_interval_unit =
"ms"`` on the ``aecg-xml`` device), which is then recorded in the reading (``extra``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from vitals_agent.codes import device_codes
from vitals_agent.drivers.base import DecodeContext
from vitals_agent.drivers.ecg.common import (
    AXES,
    EcgDecoded,
    parse_int_text,
    patient_info,
    plausible,
    to_reading,
)
from vitals_agent.drivers.ecg.xmlsafe import (
    DEFAULT_MAX_XML_BYTES,
    child,
    local,
    parse_xml,
    path_all,
    text,
)
from vitals_agent.errors import DecodeError, UnsupportedError
from vitals_agent.models import Reading

NS = "urn:hl7-org:v3"

# annotation code (standard and vendor codes) -> metric key: data/device_codes.toml (devices.md 7.2)
CODES = device_codes("aecg-xml")
STATEMENT_CODES = (
    "MDC_ECG_INTERPRETATION_STATEMENT",
    "MDC_ECG_INTERPRETATION_SUMMARY",
    "MDC_ECG_INTERPRETATION_COMMENT",
)
TIME_UNITS = {"ms": Decimal(1), "s": Decimal(1000), "us": Decimal("0.001")}
RATE_UNITS = {"bpm", "/min", "{beat}/min", "{beats}/min", "1/min"}
ANGLE_UNITS = {"deg", "°"}
SEX = {"M": "M", "F": "F", "UN": "U", "U": "U"}
UNITLESS_REASON = (
    "no unit: an HL7 PQ without a unit is dimensionless (unit '1'), not a duration; not guessed "
    "(a site whose carts mean ms sets unitless_interval_unit)"
)
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?$")


def parse_ts(value: str | None) -> datetime | None:
    """HL7 v3 TS (``YYYYMMDDHHMMSS[.fff][+ZZZZ]``): naive without a zone, None when unusable."""
    if not value:
        return None
    m = _TS.match(value.strip())
    if not m or m.group(2) is None or m.group(3) is None:
        return None
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    hour, minute, second = (int(g) if g else 0 for g in (m.group(4), m.group(5), m.group(6)))
    micro = int(Decimal(m.group(7)) * 1_000_000) if m.group(7) else 0
    try:
        dt = datetime(year, month, day, hour, minute, second, min(micro, 999_999))
    except ValueError:
        return None
    if m.group(8):
        sign = 1 if m.group(8)[0] == "+" else -1
        hours, minutes = int(m.group(8)[1:3]), int(m.group(8)[3:5])
        try:
            dt = dt.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
        except ValueError:
            return None
    return dt


def _code(annotation: ET.Element) -> str | None:
    code = child(annotation, "code")
    return code.get("code") if code is not None else None


def _has_lead(annotation: ET.Element) -> bool:
    for boundary in path_all(annotation, "support", "supportingROI", "component", "boundary"):
        code = child(boundary, "code")
        if code is not None and (code.get("code") or "").startswith("MDC_ECG_LEAD_"):
            return True
    return False


def _direct_annotations(annotation_set: ET.Element) -> list[ET.Element]:
    return path_all(annotation_set, "component", "annotation")


def _value(
    annotation: ET.Element, metric: str, unitless: str | None = None
) -> tuple[Decimal | None, str, str | None]:
    """(value in the metric's unit, reason when None, raw text). ``unitless``: the unit a site declared for
    interval values written without one (None: such values are refused)."""
    value = child(annotation, "value")
    if value is None:
        return None, "no value", None
    raw = value.get("value")
    unit = (value.get("unit") or "").strip()
    if raw is None or not raw.strip():
        return None, "no value", None
    number = parse_int_text(raw)
    if number is None:
        return None, "not a number", raw
    if metric in ("ecg_heart_rate", "ecg_atrial_rate"):
        if unit and unit not in RATE_UNITS:
            return None, f"unknown unit {unit!r}", raw
    elif metric in AXES:
        if unit and unit not in ANGLE_UNITS:
            return None, f"unknown unit {unit!r}", raw
    else:
        if not unit and unitless is None:
            return None, UNITLESS_REASON, raw
        factor = TIME_UNITS.get(unit or unitless or "")
        if factor is None:
            return None, f"unknown unit {unit!r}", raw
        if factor != 1:
            number = (number * factor).normalize()
            # "0.4 s" -> 400 (not 4E+2); a number beyond Decimal's 28 digits ("1E+999 s") stays as it is,
            # quantize would raise, and the bounds withhold it anyway
            if number == number.to_integral_value() and number.adjusted() < 28:
                number = number.quantize(Decimal(1))
    why = plausible(metric, number)
    if why:
        return None, why, raw
    return number, "", raw


@dataclass
class _Globals:
    values: dict[str, tuple[Decimal | None, str, str | None]] = field(default_factory=dict)
    vendor: dict[str, str] = field(default_factory=dict)
    unitless_used: bool = False  # an interval without a unit was read in the site's declared unit


def _collect(annotations: list[ET.Element], unitless: str | None = None) -> _Globals:
    found = _Globals()
    for ann in annotations:
        if _has_lead(ann):
            continue
        known = CODES.get(_code(ann) or "")
        if known is None:
            continue
        metric = known.metric
        if metric not in found.values or found.values[metric][0] is None:
            found.values[metric] = _value(ann, metric, unitless)
            if unitless and found.values[metric][0] is not None and _is_interval(metric) and not _unit(ann):
                found.unitless_used = True
        for sub in _direct_annotations(ann):  # vendor sub-values (e.g. Mindray QTcH under QTc)
            sub_code = _code(sub)
            sub_value = child(sub, "value")
            if sub_code and sub_value is not None and sub_value.get("value"):
                found.vendor[sub_code] = f"{sub_value.get('value')} {sub_value.get('unit') or ''}".strip()
    return found


def _merge(into: _Globals, found: _Globals) -> bool:
    """Add ``found``'s metrics that ``into`` lacks (or has only as dropped); True when any was used."""
    used = False
    for metric, entry in found.values.items():
        have = into.values.get(metric)
        if have is None or (have[0] is None and entry[0] is not None):
            into.values[metric] = entry
            used = True
    for code, value in found.vendor.items():
        into.vendor.setdefault(code, value)
    into.unitless_used = into.unitless_used or (used and found.unitless_used)
    return used


def _is_interval(metric: str) -> bool:
    return metric not in AXES and metric not in ("ecg_heart_rate", "ecg_atrial_rate")


def _unit(annotation: ET.Element) -> str:
    value = child(annotation, "value")
    return (value.get("unit") or "").strip() if value is not None else ""


def document(data: bytes, *, max_bytes: int = DEFAULT_MAX_XML_BYTES) -> ET.Element:
    """The parsed aECG document (root element checked): parse once, then :func:`parse_document` and
    :func:`document_waveforms` both read it."""
    root = parse_xml(data, max_bytes=max_bytes, what="aECG XML")
    if local(root.tag) != "AnnotatedECG":
        raise UnsupportedError(f"not an HL7 aECG file (root element {local(root.tag)!r})")
    return root


def parse(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_XML_BYTES, unitless_interval_unit: str | None = None
) -> EcgDecoded:
    return parse_document(document(data, max_bytes=max_bytes), unitless_interval_unit=unitless_interval_unit)


def parse_document(root: ET.Element, *, unitless_interval_unit: str | None = None) -> EcgDecoded:
    """The global measurements, statements, patient and device of a :func:`document`.

    ``unitless_interval_unit``: what the site declared interval values without a unit to be ("ms" or
    "s"); None refuses them (see the module doc)."""
    if unitless_interval_unit is not None and unitless_interval_unit not in TIME_UNITS:
        raise ValueError(f"unitless_interval_unit must be one of {sorted(TIME_UNITS)}")
    if root.tag.startswith("{") and not root.tag.startswith("{" + NS + "}"):
        raise UnsupportedError(f"aECG namespace {root.tag[1:].split('}')[0]!r} is not {NS!r}")
    out = EcgDecoded(format="aecg")
    _subject(root, out)
    effective = child(root, "effectiveTime")
    when = child(effective, "center")
    if when is None:
        when = child(effective, "low")
    out.acquired = parse_ts(when.get("value") if when is not None else None)
    series_list = path_all(root, "component", "series")
    series = series_list[0] if series_list else None
    _device(series, out)

    derived_sets = path_all(series, "derivation", "derivedSeries", "subjectOf", "annotationSet")
    rhythm_sets = path_all(series, "subjectOf", "annotationSet")
    unitless = unitless_interval_unit
    merged = _Globals()
    levels: list[str] = []
    for sets, level in ((derived_sets, "representative beat"), (rhythm_sets, "series")):
        found = _collect([a for s in sets for a in _direct_annotations(s)], unitless)
        if _merge(merged, found):
            levels.append(level)
    if not merged.values:
        beat = next(
            (a for s in rhythm_sets for a in _direct_annotations(s) if _code(a) == "MDC_ECG_BEAT"),
            None,
        )
        if beat is not None and _merge(merged, _collect(_direct_annotations(beat), unitless)):
            levels.append("beat")
    if levels:
        out.extra["measurement_level"] = " + ".join(levels)
    for metric, (number, reason, raw) in merged.values.items():
        out.put(metric, number, reason=reason, raw=raw)
    for vendor_code, vendor_value in merged.vendor.items():
        out.extra[f"vendor_{vendor_code}"] = vendor_value
    if merged.unitless_used:
        out.extra["unitless_interval_unit"] = f"{unitless} (declared by the site)"

    for ann in (a for s in derived_sets + rhythm_sets for a in _direct_annotations(s)):
        ann_code = _code(ann)
        if ann_code == "MDC_ECG_INTERPRETATION":
            for sub in _direct_annotations(ann):
                if _code(sub) in STATEMENT_CODES and (statement := text(child(sub, "value"))):
                    out.statements.append(statement)
        elif ann_code == "MDC_ECG_RHY" and "rhythm" not in out.extra:
            rhythm = child(ann, "value")
            if rhythm is not None and (name := rhythm.get("displayName") or rhythm.get("code")):
                out.extra["rhythm"] = name
    return out


def decode(
    data: bytes,
    ctx: DecodeContext,
    *,
    max_bytes: int = DEFAULT_MAX_XML_BYTES,
    unitless_interval_unit: str | None = None,
) -> Reading:
    decoded = parse(data, max_bytes=max_bytes, unitless_interval_unit=unitless_interval_unit)
    return to_reading(decoded, data, ctx)


def _subject(root: ET.Element, out: EcgDecoded) -> None:
    subject = child(
        root, "componentOf", "timepointEvent", "componentOf", "subjectAssignment", "subject", "trialSubject"
    )
    if subject is None:
        return
    ident = child(subject, "id")
    mrn = ident.get("extension") if ident is not None else None
    person = child(subject, "subjectDemographicPerson")
    if not mrn:
        mrn = text(child(person, "PatientID"))  # vendor element (Mindray / LIRYC)
    family = given = None
    name = child(person, "name")
    if name is not None:
        family = text(child(name, "family"))
        given = text(child(name, "given"))
        if family is None and given is None:
            family = text(name)
    gender = child(person, "administrativeGenderCode")
    sex = SEX.get((gender.get("code") or "").upper()) if gender is not None else None
    birth = child(person, "birthTime")
    born = parse_ts(birth.get("value") if birth is not None else None)
    out.patient = patient_info(mrn, family, given, born, sex)


def _device(series: ET.Element | None, out: EcgDecoded) -> None:
    author = child(series, "author", "seriesAuthor")
    device = child(author, "manufacturedSeriesDevice")
    out.model = text(child(device, "manufacturerModelName"))
    out.firmware = text(child(device, "softwareName"))
    out.serial_number = text(child(device, "SerialNumber")) or text(child(device, "serialNumber"))
    out.manufacturer = text(child(author, "manufacturerOrganization", "name"))


# --------------------------------------------------------------------------------------------- waveforms


@dataclass
class Waveforms:
    """The rhythm series' leads in microvolts, with the sample interval in seconds."""

    sample_interval: float
    leads: dict[str, list[float]]


def waveforms(data: bytes, *, max_bytes: int = DEFAULT_MAX_XML_BYTES) -> Waveforms:
    return document_waveforms(document(data, max_bytes=max_bytes))


def document_waveforms(root: ET.Element) -> Waveforms:
    """Lead samples of the first series (``origin + scale * digit``, in uV) for rendering."""
    series = child(root, "component", "series")
    interval: float | None = None
    leads: dict[str, list[float]] = {}
    for seq in path_all(series, "component", "sequenceSet", "component", "sequence"):
        code = (_code(seq) or "").strip()
        value = child(seq, "value")
        if value is None:
            continue
        if code in ("TIME_ABSOLUTE", "TIME_RELATIVE"):
            inc = child(value, "increment")
            if inc is not None:
                interval = _seconds(inc.get("value"), inc.get("unit"))
            continue
        if not code.startswith("MDC_ECG_LEAD_"):
            continue
        origin = _micro_volts(child(value, "origin"))
        scale = _micro_volts(child(value, "scale"))
        digits = text(child(value, "digits"))
        if scale is None or digits is None:
            continue
        try:
            samples = [(origin or 0.0) + scale * int(d) for d in digits.split()]
        except ValueError:
            raise DecodeError(f"aECG lead {code}: digits are not integers") from None
        leads[_lead_name(code)] = samples
    if interval is None or interval <= 0:
        raise DecodeError("aECG: no sample interval (GLIST increment) in the rhythm series")
    if not leads:
        raise DecodeError("aECG: no lead waveforms in the rhythm series")
    return Waveforms(sample_interval=interval, leads=leads)


_LEAD_NAMES = {"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}


def _lead_name(code: str) -> str:
    name = code.removeprefix("MDC_ECG_LEAD_")
    return _LEAD_NAMES.get(name.upper(), name)


def _seconds(value: str | None, unit: str | None) -> float | None:
    try:
        number = float(value or "")
    except ValueError:
        return None
    return {"s": 1.0, "ms": 0.001, "us": 1e-6}.get((unit or "s").strip(), 1.0) * number


def _micro_volts(elem: ET.Element | None) -> float | None:
    if elem is None:
        return None
    try:
        number = float(elem.get("value") or "")
    except ValueError:
        return None
    return {"uV": 1.0, "mV": 1000.0, "V": 1e6, "nV": 0.001}.get(
        (elem.get("unit") or "uV").strip(), 1.0
    ) * number
