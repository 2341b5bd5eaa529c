"""The ORU^R01 builder: one :class:`~vitals_agent.models.Reading` -> one IHE PCD-01 message (ER7 bytes).

Rules: ``../shared/reference/hl7-pcd01.md`` sections 3-9 and ``codes.md``. The builder is pure (no I/O, no
clock: the caller passes ``control_id`` and ``created_at``), so a re-send can be rebuilt byte-identical.

Choices made here (documented for the EHR interface team):

* One OBR per reading, flattened containment tree (MDS row ``1.0.0.0`` + metrics ``1.0.0.n``), with a
  stable OBX-4 number per metric and device class (hl7-pcd01.md section 7.2 project table).
* OBR-2/OBR-3 EI-1 = gateway EUI-64 + observation time (UTC, seconds) + ``-`` + 8 hex digits of a digest of
  the device identity, exact observation time and record sequence: unique per reading and *stable* for
  the same reading (a rebuilt or corrected message keeps its filler order number).
* Device identity (OBX-18 of the MDS row, or of every row without ``hierarchy_rows``): one EI form for
  every driver and transport, ``EI-1^EI-2^EI-3^EI-4`` = serial (else EUI-64, else the configured id) ^
  model ^ the device's EUI-64 (else the gateway's) ^ ``EUI-64`` (:class:`~vitals_agent.models.EquipmentId`).
* Unbound reading (no patient, no cart patient with an id): mode 1 of section 4.1 -- PID-3
  ``TMP-<EI-1>@<EI-3>-<observed UTC>`` under the assigning authority with type ``PI``, PID-5
  ``^^^^^^U``, PID-31 ``Y``. Bound patient: PID-31 ``N`` (identity known, table 0136). Cart patient (EKG):
  PID-31 left empty (identity entered on a device, not confirmed by the agent).
* Late-associated readings get an NTE after the OBR (``NTE|1|L|late-associated: ...|RE^Remark^HL70364``).
* v2.5.1 has no OBX-20: the body site then goes to an NTE after that OBX. The device clock row is ``TS``
  instead of ``DTM`` there (2.5.1 table 0125 has no DTM).
* Local codes (no MDC term, or an MDC code marked C in codes.md) use ``<refid>^<name>^99VITALS`` and keep
  the LOINC code as the alternate, in every ``code_system`` mode.
* TEST/DEMO data is refused when MSH-11 is ``P`` (project policy, section 7.5), and so is a reading with
  nothing to send (no value, statement or attachment): :class:`MessageBuildError`.
* Clinician review (issue #16, :class:`ResultReview`): OBX-11 of every row that is not a device row or an
  unavailable value (``X``) is the review's status -- ``R`` device data nobody validated (the default),
  ``F`` validated by a clinician, ``C`` a correction (only the corrected metrics' rows; the others keep
  the status they had), ``W`` posted for the wrong patient / wrong. ``F`` and ``C`` need the clinician,
  who goes to OBX-16 (``id^family^given``) of every such row; the clinician who took the vitals, when
  known, to OBR-10. A re-sent review keeps OBR-2/3 and OBX-3/OBX-4, so the EHR updates the result.
* Manual entries (``DeviceClass.MANUAL``): no device rows and no OBX-18; fixed OBX-4 numbers (respiration
  rate 1, pain 2, height 3, O2 flow 4, then the coded qualifiers in table order) and CWE rows for the
  qualifiers. ``also=`` adds such readings to the message as further OBR groups (one ORU per visit).
* A series mean (automated office BP, ``Reading.series``): OBR-7/OBR-8 = the first and last averaged
  readings, no OBX-14 (the values belong to the interval), OBX-17 ``ACALC``, and an NTE naming N and
  the times. Its OBR-2/3 differ from the series' last reading's.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from types import MappingProxyType
from typing import Literal, Required, TypedDict, Unpack

import structlog

from vitals_agent import log_events as ev
from vitals_agent.codes import LOCAL_CODE_SYSTEM, MetricInfo, QualifierInfo, tables
from vitals_agent.errors import VitalsAgentError
from vitals_agent.hl7.escape import ENCODING_CHARACTERS, escape, escape_structured
from vitals_agent.hl7.units import UnitConversionError, check_preferences, convert
from vitals_agent.models import (
    Clinician,
    DeviceClass,
    DeviceIdentity,
    Flag,
    Measurement,
    Qualifier,
    Reading,
    ReadingFlag,
    in_zone,
)

log = structlog.get_logger(__name__)

PCD01_OID = "1.3.6.1.4.1.19376.1.6.1.1.1"
MESSAGE_PROFILE_ID = f"IHE_PCD_001^IHE PCD^{PCD01_OID}^ISO"  # MSH-21
MESSAGE_TYPE = "ORU^R01^ORU_R01"  # MSH-9
STANDING_ORDER = "182777000^monitoring of patient^SCT"  # OBR-4
DEVICE_CLOCK_CODE = "67975^MDC_ATTR_TIME_ABS^MDC"  # codes.md section 5 (code unverified, U)
# A device clock before this year is not a clock reading worth a DTM row (unset BLE clocks say year 0..5;
# a corrupted file can say year 1, which cannot even be shifted into every zone).
MIN_DEVICE_CLOCK_YEAR = 1900
INTERPRETATION_LOCAL = f"MDC_ECG_INTERPRETATION^EKG interpretation^{LOCAL_CODE_SYSTEM}"
INTERPRETATION_LOINC = "8601-7^EKG impression^LN"
ATTACHMENT_CODE = f"DEVICE_REPORT^Device report^{LOCAL_CODE_SYSTEM}"
ST_MAX = 199  # longer text goes as TX
_REMARK = "RE^Remark^HL70364"  # NTE-4 comment type (table 0364)
_PL_HD = frozenset({4, 10, 11})  # PL components that are HD/EI (subcomponents allowed)
_PL_IS = {
    1: "point of care",
    2: "room",
    3: "bed",
    5: "location status",
    6: "person location type",
    7: "building",
    8: "floor",
}
IS_MAX = 20  # HL7 2.6 length of the IS data type (enforced by hl7apy STRICT)
# Manual entries: stable OBX-4 numbers (then the qualifiers, in table order)
MANUAL_ORDER = ("respiratory_rate", "pain_score", "body_height", "oxygen_flow_rate")
MANUAL_METHOD = "MMEAS"  # TF-2 table B.8.6-2 manual-measurement: what marks a value a person entered

_MDS: dict[DeviceClass, tuple[int, str]] = {
    DeviceClass.PULSE_OXIMETER: (528388, "MDC_DEV_SPEC_PROFILE_PULS_OXIM"),
    DeviceClass.BLOOD_PRESSURE: (528391, "MDC_DEV_SPEC_PROFILE_BP"),
    DeviceClass.THERMOMETER: (528392, "MDC_DEV_SPEC_PROFILE_TEMP"),
    DeviceClass.SCALE: (528399, "MDC_DEV_SPEC_PROFILE_SCALE"),
    DeviceClass.BODY_COMPOSITION: (528399, "MDC_DEV_SPEC_PROFILE_SCALE"),
}
_MULTI_PARAM_MDS = (69965, "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS")

METHODS: dict[str, str] = {
    "UNSPEC": "mcat-unspec",
    "AMEAS": "auto-measurement",
    "MMEAS": "manual-measurement",
    "ASET": "auto-setting",
    "MSET": "manual-setting",
    "ACALC": "auto-calculation",
    "MCALC": "manual-calculation",
}

_X_FLAGS = frozenset({Flag.INVALID, Flag.NOT_AVAILABLE, Flag.BUSY})  # TF-2 table B.8.5-6: OBX-11 X
_SEXES = frozenset({"F", "M", "O", "A", "N", "U"})
_EUI64 = re.compile(r"^[0-9A-F]{16}$")


Charset = Literal["UNICODE UTF-8", "8859/1", "ASCII"]
CHARSETS: tuple[str, ...] = ("UNICODE UTF-8", "8859/1", "ASCII")  # MSH-18 (HL7 table 0211)
_CODECS = {"UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "ASCII": "ascii"}


class MessageBuildError(VitalsAgentError, ValueError):
    """The reading or profile cannot be turned into a conformant message (the text says why)."""


# --- profile and patient -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageProfile:
    """What the receiving EHR expects: header values, code system, units and shape options."""

    facility: str  # MSH-4 (HD, may be ER7-structured, e.g. "CLINIC^2.999.1^ISO")
    location: str  # PV1-3 (PL, ER7-structured, e.g. "CARDIO CLINIC^EXAM 3^^EXHOSP&2.999.1&ISO")
    gateway_eui64: str  # MSH-3 universal id, OBR-2/3
    sending_application: str = "VITALS_AGENT"
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"
    accept_ack_type: str = "AL"
    application_ack_type: str = "NE"
    version: Literal["2.6", "2.5.1"] = "2.6"
    code_system: Literal["mdc", "loinc", "mdc+loinc"] = "mdc+loinc"
    preferred_units: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    hierarchy_rows: bool = True
    assigning_authority: str = "VITALS_AGENT"
    tz: tzinfo = UTC
    patient_class: str = "U"  # PV1-2 (table 0004); U = unknown
    # --- what the receiver can take (issue 17) ---
    charset: Charset = "UNICODE UTF-8"  # MSH-18 and the encoding on the wire
    unrepresentable: Literal["escape", "marker"] = "escape"  # a character the charset cannot carry
    marker: str = "?"  # the visible replacement with unrepresentable = "marker"
    max_message_bytes: int | None = None  # the receiver's limit (None: none)
    oversize: Literal["drop-attachment", "dead-letter"] = "drop-attachment"

    def __post_init__(self) -> None:
        if not _EUI64.match(self.gateway_eui64):
            raise MessageBuildError("gateway EUI-64 must be 16 upper-case hexadecimal digits")
        if self.processing_id not in ("P", "D", "T"):
            raise MessageBuildError(f"processing id must be P, D or T, not {self.processing_id!r}")
        for name in ("accept_ack_type", "application_ack_type"):
            if getattr(self, name) not in ("AL", "NE", "ER", "SU"):
                raise MessageBuildError(f"{name} must be AL, NE, ER or SU")
        if self.version not in ("2.6", "2.5.1"):
            raise MessageBuildError(f"unsupported HL7 version {self.version!r}")
        if self.code_system not in ("mdc", "loinc", "mdc+loinc"):
            raise MessageBuildError(f"unknown code system {self.code_system!r}")
        if self.patient_class not in ("E", "I", "O", "P", "R", "B", "U"):
            raise MessageBuildError(f"patient class must be one of E I O P R B U, not {self.patient_class!r}")
        if self.charset not in CHARSETS:
            raise MessageBuildError(f"charset must be one of {', '.join(CHARSETS)}, not {self.charset!r}")
        if self.unrepresentable not in ("escape", "marker"):
            raise MessageBuildError("unrepresentable must be escape or marker")
        if not self.marker or not self.marker.isascii() or not self.marker.isprintable():
            raise MessageBuildError("the marker must be printable ASCII")
        if any(c in self.marker for c in "|^~\\&"):
            raise MessageBuildError("the marker must not contain an HL7 delimiter (| ^ ~ \\ &)")
        if self.max_message_bytes is not None and self.max_message_bytes < 1024:
            raise MessageBuildError("max_message_bytes must be at least 1024")
        if self.oversize not in ("drop-attachment", "dead-letter"):
            raise MessageBuildError("oversize must be drop-attachment or dead-letter")
        try:
            check_preferences(self.preferred_units)
        except ValueError as exc:
            raise MessageBuildError(f"unsupported unit preference: {exc}") from None
        self._check_lengths()

    def _check_lengths(self) -> None:
        """IS values (namespace ids, location parts) are limited to 20 characters (HL7 2.6, hl7apy STRICT)."""
        checks: list[tuple[str, str]] = [
            ("sending_application", self.sending_application),
            ("facility (namespace)", self.facility.split("^")[0]),
            ("receiving_application (namespace)", self.receiving_application.split("^")[0]),
            ("receiving_facility (namespace)", self.receiving_facility.split("^")[0]),
            ("assigning_authority (namespace)", re.split(r"[\^&]", self.assigning_authority)[0]),
        ]
        location = self.location.split("^")
        for index, name in _PL_IS.items():
            if index <= len(location):
                checks.append((f"location component {index} ({name})", location[index - 1]))
        if len(location) >= 4:
            checks.append(("location component 4 (facility namespace)", location[3].split("&")[0]))
        for what, value in checks:
            if len(escape(value)) > IS_MAX:
                raise MessageBuildError(f"{what} is longer than {IS_MAX} characters (HL7 IS data type)")


@dataclass(frozen=True)
class PatientIdentity:
    """The patient a reading is bound to (from a wristband scan, worklist pick or manual match)."""

    mrn: str
    family: str | None = None
    given: str | None = None
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None
    encounter: str | None = None
    identifier_type: str = "MR"
    assigning_authority: str | None = None  # CX-4 (HD, "NS&UID&TYPE"); None: the profile's


ResultStatus = Literal["R", "F", "C", "W"]
RESULT_STATUSES: tuple[str, ...] = ("R", "F", "C", "W")


@dataclass(frozen=True)
class ResultReview:
    """What a clinician's review says about the values (OBX-11, OBX-16, OBR-10). The default is device
    data nobody validated."""

    status: ResultStatus = "R"
    observer: Clinician | None = None  # OBX-16: who validated (required for F and C)
    collector: Clinician | None = None  # OBR-10: who took the vitals, when known
    corrected: frozenset[str] = frozenset()  # C: the metrics (or qualifiers) whose rows carry C
    unchanged: Literal["R", "F"] = "R"  # C: the status of the rows that were not corrected
    order_key: str = ""  # mixed into OBR-2/3: "" = the reading's own (a refile to another chart: new)

    def __post_init__(self) -> None:
        if self.status not in RESULT_STATUSES:
            raise MessageBuildError(f"result status must be one of R F C W, not {self.status!r}")
        if self.status in ("F", "C") and self.observer is None:
            raise MessageBuildError(f"result status {self.status} needs the validating clinician (OBX-16)")
        if self.unchanged not in ("R", "F"):
            raise MessageBuildError("rows not corrected keep R or F")

    def row_status(self, key: str) -> str:
        if self.status != "C" or not self.corrected or key in self.corrected:
            return self.status
        return self.unchanged


def xcn(person: Clinician) -> str:
    """An XCN ``id^family^given`` (each part escaped)."""
    parts = [escape(person.id), escape(person.family or ""), escape(person.given or "")]
    return "^".join(parts).rstrip("^")


def new_control_id() -> str:
    """A fresh MSH-10: 20 upper-case hex digits (11 of milliseconds since the epoch, 9 random)."""
    return f"{int(time.time() * 1000) & 0xFFFFFFFFFFF:011X}{secrets.randbits(36):09X}"


# --- formatting helpers --------------------------------------------------------------------------------


def format_dtm(value: datetime, tz: tzinfo = UTC) -> str:
    """``YYYYMMDDHHMMSS+ZZZZ`` in ``tz`` (seconds resolution, offset always present)."""
    local = in_zone(value, tz, MessageBuildError)
    offset = local.utcoffset()
    total = int(offset.total_seconds()) if offset is not None else 0
    sign = "+" if total >= 0 else "-"
    hours, rest = divmod(abs(total), 3600)
    return f"{local.year:04d}{local:%m%d%H%M%S}{sign}{hours:02d}{rest // 60:02d}"


def _utc14(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y%m%d%H%M%S}"


def _segment(name: str, fields: Mapping[int, str]) -> str:
    last = max((i for i, v in fields.items() if v), default=0)
    return "|".join([name, *(fields.get(i, "") for i in range(1, last + 1))])


def _join(*parts: str | None) -> str:
    return "^".join(p for p in parts if p)


def _birth_date(value: str | None) -> str:
    if not value:
        return ""
    digits = value.replace("-", "")
    if re.fullmatch(r"\d{8}", digits):
        return digits
    log.debug(ev.HL7_BIRTH_DATE_IGNORED)
    return ""


def _sex(value: str | None) -> str:
    if not value:
        return ""
    code = value.strip()[:1].upper()
    if code in _SEXES:
        return code
    log.debug(ev.HL7_SEX_IGNORED)
    return ""


def _name(family: str | None, given: str | None) -> str:
    if not (family or given):
        return "^^^^^^U"
    return f"{escape(_one_line(family or ''))}^{escape(_one_line(given or ''))}^^^^^L"


def _one_line(text: str) -> str:
    """Names and locations: line breaks (CR, LF, NEL, U+2028, U+2029) become spaces (hl7-pcd01.md
    section 2.1 rule 3)."""
    return re.sub(r"[\r\n\x85\u2028\u2029]+", " ", text).strip()


# --- the builder ---------------------------------------------------------------------------------------


@dataclass
class _Row:
    sub_id: tuple[int, ...]
    fields: dict[int, str]
    notes: list[str] = field(default_factory=list)


def _slots(device_class: DeviceClass) -> tuple[frozenset[str] | None, ...]:
    """Stable OBX-4 metric numbers per device class (None marks the device-clock slot)."""
    metrics = tables().metrics
    temps = frozenset(k for k in metrics if k.startswith("body_temperature"))
    if device_class is DeviceClass.BLOOD_PRESSURE:
        keys: list[frozenset[str] | None] = [
            frozenset({"bp_systolic"}),
            frozenset({"bp_diastolic"}),
            frozenset({"bp_mean"}),
            frozenset({"pulse_rate"}),
            None,
        ]
    elif device_class is DeviceClass.THERMOMETER:
        keys = [temps, frozenset(), frozenset(), frozenset(), None]
    elif device_class in (DeviceClass.SCALE, DeviceClass.BODY_COMPOSITION):
        keys = [
            frozenset({"body_weight"}),
            frozenset({"body_height"}),
            frozenset({"bmi"}),
            frozenset({"body_fat_pct"}),
            None,
        ]
    elif device_class is DeviceClass.PULSE_OXIMETER:
        keys = [
            frozenset({"spo2"}),
            frozenset({"pulse_rate_oximeter"}),
            frozenset({"perfusion_index", "pulse_amplitude_index"}),
            None,
        ]
    elif device_class is DeviceClass.ECG:
        keys = [frozenset({k}) for k in metrics if k.startswith("ecg_")]
        keys.append(None)
    elif device_class is DeviceClass.MANUAL:
        keys = [frozenset({k}) for k in MANUAL_ORDER]
        keys += [frozenset({f"q:{k}"}) for k in tables().qualifiers]
        keys.append(None)
    else:
        keys = [frozenset({k}) for k in metrics]
        keys.append(None)
    return tuple(keys)


def _numbering(reading: Reading, keys: list[str]) -> tuple[dict[int, int], int, int]:
    """OBX-4 metric numbers for ``keys`` (metric keys; ``q:KEY`` for qualifiers), by index; the clock
    number and the next free number."""
    slots = _slots(reading.device_class)
    taken: set[int] = set()
    numbers: dict[int, int] = {}
    for index, key in enumerate(keys):
        for pos, slot in enumerate(slots, start=1):
            if slot is not None and key in slot and pos not in taken:
                numbers[index] = pos
                taken.add(pos)
                break
    clock = next(pos for pos, slot in enumerate(slots, start=1) if slot is None)
    next_free = len(slots) + 1
    for index in range(len(keys)):
        if index not in numbers:
            numbers[index] = next_free
            next_free += 1
    return numbers, clock, next_free


def equipment(device: DeviceIdentity, profile: MessageProfile) -> str:
    """OBX-18 (EI) in ER7: the device's one identity form (:class:`~vitals_agent.models.EquipmentId`,
    hl7-pcd01.md §7.6): ``serial-or-id^model^EUI-64 (device's or the agent's)^EUI-64``."""
    ei = device.equipment_id(profile.gateway_eui64)
    return "^".join(escape(c) for c in ei.components)


def _observation_id(info: MetricInfo, system: str) -> str:
    mdc = f"{info.mdc}^{escape(info.refid)}^MDC" if info.send_mdc else None
    local = f"{escape(info.refid)}^{escape(info.name)}^{LOCAL_CODE_SYSTEM}"
    loinc = f"{escape(info.loinc)}^{escape(info.name)}^LN" if info.loinc else None
    primary = mdc or local
    if system == "loinc" and loinc:
        return f"{loinc}^{primary}"
    if system == "mdc" and mdc:
        return mdc
    return _join(primary, loinc)


def _qualifier_id(info: QualifierInfo, system: str) -> str:
    """OBX-3 of a qualifier row: the local code, the LOINC code as the alternate (first in ``loinc``)."""
    local = f"{escape(info.refid)}^{escape(info.name)}^{LOCAL_CODE_SYSTEM}"
    loinc = f"{escape(info.loinc)}^{escape(info.name)}^LN" if info.loinc else None
    if system == "loinc" and loinc:
        return f"{loinc}^{local}"
    return _join(local, loinc)


def _method(code: str | None) -> str:
    if not code:
        return ""
    code = code.strip()
    if code in METHODS:
        return f"{code}^{METHODS[code]}^MDC"
    return escape_structured(code, subcomponents=())


def _units(info: MetricInfo, unit: str) -> str:
    table = tables()
    if unit not in table.units:
        raise MessageBuildError(f"{info.key}: unit {unit!r} is not a known UCUM unit")
    u = table.unit_mdc(info, unit)
    return f"{u.mdc}^{escape(u.refid)}^MDC^{escape(u.ucum)}^{escape(u.ucum)}^UCUM"


def _value_and_unit(m: Measurement, info: MetricInfo, profile: MessageProfile) -> tuple[Decimal, str]:
    assert m.value is not None
    unit = tables().canonical_unit(m.unit) or m.unit
    target = profile.preferred_units.get(info.unit, unit)
    if target != unit:
        try:
            return convert(m.value, unit, target), target
        except UnitConversionError:
            log.debug(ev.HL7_UNIT_PREFERENCE_NOT_APPLICABLE, metric=m.metric, unit=unit, preferred=target)
    return m.value, unit


def _patient_segments(
    reading: Reading, profile: MessageProfile, patient: PatientIdentity | None
) -> tuple[str, str]:
    authority = escape_structured(profile.assigning_authority, components=False)
    pid: dict[int, str] = {}
    encounter: str | None = None
    cart = reading.source_patient
    if patient is not None:
        if not patient.mrn.strip():
            raise MessageBuildError("the bound patient has an empty MRN")
        own = patient.assigning_authority
        domain = escape_structured(own, components=False) if own else authority
        pid[3] = f"{escape(patient.mrn)}^^^{domain}^{escape(patient.identifier_type)}"
        pid[5] = _name(patient.family, patient.given)
        pid[7] = _birth_date(patient.birth_date)
        pid[8] = _sex(patient.sex)
        pid[31] = "N"
        encounter = patient.encounter
    elif cart is not None and cart.mrn:
        pid[3] = f"{escape(cart.mrn)}^^^{authority}^MR"
        pid[5] = _name(cart.family_name, cart.given_name)
        pid[7] = _birth_date(cart.birth_date)
        pid[8] = _sex(cart.sex)
        encounter = cart.encounter
    else:
        key = reading.device.equipment_id(profile.gateway_eui64).temporary_key()
        pid[3] = f"TMP-{escape(key)}-{_utc14(reading.observed_at)}^^^{authority}^PI"
        pid[5] = "^^^^^^U"
        pid[31] = "Y"
    pv1 = {2: profile.patient_class, 3: escape_structured(profile.location, subcomponents=_PL_HD)}
    if encounter:
        pv1[19] = escape(encounter)
    return _segment("PID", pid), _segment("PV1", pv1)


def _filler_order(reading: Reading, profile: MessageProfile, order_key: str = "") -> str:
    parts = reading.identity_parts()
    if reading.series is not None:  # the mean differs from the series' last reading
        parts.append("mean:" + ",".join(t.astimezone(UTC).isoformat() for t in reading.series.averaged_at))
    if order_key:
        parts.append(order_key)
    digest = hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:8].upper()
    gw = profile.gateway_eui64
    ns = escape(profile.sending_application)
    return f"{gw}{_utc14(reading.observed_at)}-{digest}^{ns}^{gw}^EUI-64"


def _statement_lines(statements: tuple[str, ...]) -> list[str]:
    lines: list[str] = []
    for statement in statements:
        lines.extend(line.strip() for line in re.split(r"\r\n|\r|\n", statement) if line.strip())
    return lines


def _series_note(reading: Reading, tz: tzinfo) -> str | None:
    series = reading.series
    if series is None:
        return None
    times = ", ".join(format_dtm(t, tz) for t in series.averaged_at)
    text = f"mean of {series.count} readings taken at {times}"
    if series.discarded_first:
        text += f"; the first of the series' {series.taken} readings was sent but not averaged"
    return text


def _is_test(reading: Reading) -> bool:
    return ReadingFlag.TEST_DATA in reading.flags or any(
        f in (Flag.TEST, Flag.DEMO) for m in reading.measurements for f in m.flags
    )


@dataclass(frozen=True)
class _Group:
    """What every OBX row of one ORDER_OBSERVATION group shares."""

    reading: Reading
    profile: MessageProfile
    review: ResultReview

    @property
    def v26(self) -> bool:
        return self.profile.version == "2.6"

    @property
    def manual(self) -> bool:
        return self.reading.device_class is DeviceClass.MANUAL

    @property
    def device_id(self) -> str:
        """OBX-18 of the device (MDS) row."""
        return "" if self.manual else equipment(self.reading.device, self.profile)

    @property
    def metric_equipment(self) -> str:
        """OBX-18 of every other row: only when there is no MDS row to carry it."""
        return "" if self.profile.hierarchy_rows else self.device_id

    @property
    def obx14(self) -> str:
        """Observation time of the rows; a series' rows carry none (OBR-7/8 give its span)."""
        return (
            "" if self.reading.series is not None else format_dtm(self.reading.observed_at, self.profile.tz)
        )

    def row(self, number: int, fields: dict[int, str], key: str, notes: list[str] | None = None) -> _Row:
        """A metric-level row (OBX-4 ``1.0.0.number``), with the review's OBX-11/16 unless it is an X row."""
        if fields.get(11) != "X":
            fields[11] = self.review.row_status(key)
            fields[16] = xcn(self.review.observer) if self.review.observer is not None else ""
        return _Row((1, 0, 0, number), fields, notes or [])


def _sendable(reading: Reading) -> list[tuple[Measurement, MetricInfo]]:
    """The measurements that become NM rows: a finite value of a reportable metric."""
    sendable: list[tuple[Measurement, MetricInfo]] = []
    for m in reading.measurements:
        info = tables().metric(m.metric)
        if m.value is None or not info.reportable:
            continue
        if not m.value.is_finite():
            log.warning(ev.HL7_NON_FINITE_VALUE, metric=m.metric)
            continue
        sendable.append((m, info))
    return sendable


def _mds_row(g: _Group) -> _Row:
    """The device (MDS) row: OBX-11 ``X``, the device identity in OBX-18."""
    code, refid = _MDS.get(g.reading.device_class, _MULTI_PARAM_MDS)
    return _Row((1, 0, 0, 0), {3: f"{code}^{refid}^MDC", 11: "X", 18: g.device_id})


def _metric_row(g: _Group, m: Measurement, info: MetricInfo, number: int) -> _Row:
    """One NM row; the body site goes to OBX-20 (v2.6) or to an NTE (v2.5.1)."""
    value, unit = _value_and_unit(m, info, g.profile)
    method = "ACALC" if g.reading.series is not None else (m.method or info.method)
    fields = {
        2: "NM",
        3: _observation_id(info, g.profile.code_system),
        5: format(value, "f"),
        6: _units(info, unit),
        8: "~".join(escape(f.value) for f in m.flags),
        11: "X" if any(f in _X_FLAGS for f in m.flags) else "R",
        14: g.obx14,
        17: _method(method),
        18: g.metric_equipment,
    }
    row = g.row(number, fields, m.metric)
    if m.site:
        if g.v26:
            fields[20] = escape_structured(m.site, subcomponents=())
        else:
            row.notes.append(f"Observation site: {m.site.replace('^', ' ').strip()}")
    return row


def _qualifier_row(g: _Group, q: Qualifier, info: QualifierInfo, number: int) -> _Row:
    """One coded context row of a manual entry (position, arm, cuff, site, O2 delivery)."""
    answer = info.answers[q.answer]
    fields = {
        2: "CWE" if g.v26 else "CE",
        3: _qualifier_id(info, g.profile.code_system),
        5: f"{escape(answer.code)}^{escape(answer.display)}^{escape(answer.system)}",
        14: g.obx14,
        17: _method(MANUAL_METHOD),
    }
    return g.row(number, fields, q.key)


def _device_clock_row(g: _Group, number: int) -> _Row | None:
    """The device's own clock reading (MDC_ATTR_TIME_ABS), when it was set at all."""
    device_time = g.reading.device_time
    if device_time is None or device_time.year < MIN_DEVICE_CLOCK_YEAR:
        return None
    fields = {
        2: "DTM" if g.v26 else "TS",
        3: DEVICE_CLOCK_CODE,
        5: format_dtm(device_time, g.profile.tz),
        11: "R",
        14: format_dtm(g.reading.received_at, g.profile.tz),
        18: g.metric_equipment,
    }
    return g.row(number, fields, "device_clock")


def _statement_rows(g: _Group, statements: list[str], first: int) -> list[_Row]:
    """EKG interpretation statements, one ST (or TX, when long) row per line."""
    if g.profile.code_system == "loinc":
        code = f"{INTERPRETATION_LOINC}^{INTERPRETATION_LOCAL}"
    else:
        code = f"{INTERPRETATION_LOCAL}^{INTERPRETATION_LOINC}"
    return [
        g.row(
            number,
            {
                2: "ST" if len(line) <= ST_MAX else "TX",
                3: code,
                5: escape(line),
                14: g.obx14,
                18: g.metric_equipment,
            },
            "ecg_interpretation",
        )
        for number, line in enumerate(statements, start=first)
    ]


def _attachment_rows(g: _Group, first: int) -> list[_Row]:
    """Each attachment as an ED row (Base64), its file name in an NTE."""
    rows = []
    for number, attachment in enumerate(g.reading.attachments, start=first):
        kind, _, subtype = attachment.media_type.partition("/")
        data = base64.b64encode(attachment.data).decode("ascii")
        fields = {
            2: "ED",
            3: ATTACHMENT_CODE,
            5: f"^{escape(kind)}^{escape(subtype)}^Base64^{data}",
            14: g.obx14,
            18: g.metric_equipment,
        }
        rows.append(g.row(number, fields, "attachment", [f"Attachment: {attachment.name}"]))
    return rows


def _group(
    reading: Reading, profile: MessageProfile, review: ResultReview
) -> tuple[str, list[str], list[_Row]]:
    """One ORDER_OBSERVATION group: OBR-2/3 (the filler number), the NTE texts after the OBR and the OBX
    rows (without OBX-1, which runs over the whole message)."""
    g = _Group(reading, profile, review)
    sendable = _sendable(reading)
    qualifiers = [(q, tables().qualifiers[q.key]) for q in reading.qualifiers]
    statements = _statement_lines(reading.statements)
    if not (sendable or qualifiers or reading.attachments or statements):
        raise MessageBuildError("the reading has no value, statement or attachment to send")
    keys = [m.metric for m, _ in sendable] + [f"q:{q.key}" for q, _ in qualifiers]
    numbers, clock_number, next_free = _numbering(reading, keys)

    rows = [_mds_row(g)] if profile.hierarchy_rows and not g.manual else []
    rows += [_metric_row(g, m, info, numbers[i]) for i, (m, info) in enumerate(sendable)]
    rows += [_qualifier_row(g, q, info, numbers[len(sendable) + i]) for i, (q, info) in enumerate(qualifiers)]
    clock = _device_clock_row(g, clock_number)
    rows += [clock] if clock is not None else []
    rows += _statement_rows(g, statements, next_free)
    rows += _attachment_rows(g, next_free + len(statements))
    rows.sort(key=lambda r: r.sub_id)

    notes = []
    if ReadingFlag.LATE_ASSOCIATED in reading.flags:
        notes.append("late-associated: held until patient was set")
    series_note = _series_note(reading, profile.tz)
    if series_note:
        notes.append(series_note)
    return _filler_order(reading, profile, review.order_key), notes, rows


# --- segments ------------------------------------------------------------------------------------------


def _nte_segment(note_id: int, note: str) -> str:
    return _segment("NTE", {1: str(note_id), 2: "L", 3: escape(_one_line(note)), 4: _REMARK})


def _obr_segment(index: int, reading: Reading, filler: str, profile: MessageProfile, collector: str) -> str:
    """OBR of group ``index`` (0-based): a series spans OBR-7 to OBR-8; OBR-10 is who took the vitals."""
    tz = profile.tz
    series = reading.series
    start = format_dtm(series.averaged_at[0], tz) if series else format_dtm(reading.observed_at, tz)
    end = format_dtm(series.averaged_at[-1], tz) if series else ""
    fields = {1: str(index + 1), 2: filler, 3: filler, 4: STANDING_ORDER, 7: start, 8: end, 10: collector}
    return _segment("OBR", fields)


def _obx_segments(row: _Row, set_id: int) -> list[str]:
    """The OBX of ``row`` (OBX-1 = ``set_id``, OBX-4 its sub-id) and its NTEs."""
    row.fields[1] = str(set_id)
    row.fields[4] = ".".join(str(n) for n in row.sub_id)
    return [_segment("OBX", row.fields), *(_nte_segment(i, n) for i, n in enumerate(row.notes, start=1))]


def _msh_segment(profile: MessageProfile, control_id: str, created_at: datetime, body: list[str]) -> str:
    """MSH; MSH-18 names the profile's charset, or for UTF-8 says so only when the header or the body
    holds anything beyond ASCII (ASCII needs no MSH-18, the HL7 default)."""
    header_values = (
        profile.facility,
        profile.receiving_application,
        profile.receiving_facility,
        profile.sending_application,
    )
    if profile.charset == "UNICODE UTF-8":
        non_ascii = not all(s.isascii() for s in [*body, *header_values])
        charset = "UNICODE UTF-8" if non_ascii else ""
    else:
        charset = profile.charset
    msh = {
        3: f"{escape(profile.sending_application)}^{profile.gateway_eui64}^EUI-64",
        4: escape_structured(profile.facility, subcomponents=()),
        5: escape_structured(profile.receiving_application, subcomponents=()),
        6: escape_structured(profile.receiving_facility, subcomponents=()),
        7: format_dtm(created_at, profile.tz),
        9: MESSAGE_TYPE,
        10: control_id,
        11: profile.processing_id,
        12: profile.version,
        15: profile.accept_ack_type,
        16: profile.application_ack_type,
        18: charset,
        21: MESSAGE_PROFILE_ID,
    }
    return f"MSH|{ENCODING_CHARACTERS}|" + _segment("MSH", msh).split("|", 3)[3]


@dataclass(frozen=True)
class OruMessage:
    """A built message and what had to give way for the receiver (counted by the pipeline)."""

    body: bytes  # the encoded message (``profile.charset``), segments ending in CR
    escaped: int = 0  # characters the charset cannot carry, sent as HL7 hex escapes (\\Xhh..\\)
    replaced: int = 0  # ... replaced with the profile's marker (unrepresentable = "marker")
    dropped_attachments: tuple[str, ...] = ()  # attachments left out to stay under max_message_bytes


class OruOptions(TypedDict, total=False):
    """The keywords of :func:`build_oru` (and :func:`oru_message`)."""

    control_id: Required[str]  # MSH-10
    created_at: Required[datetime]  # MSH-7
    patient: PatientIdentity | None  # PID/PV1 (None: unbound)
    late_associated: bool
    review: ResultReview | None  # OBX-11/OBX-16/OBR-10 (default: ``R``, nobody validated)
    # Further readings (a clinician's manual entries of the same visit) as further OBR groups of the same
    # message; the patient is the first reading's.
    also: Sequence[Reading]


def build_oru(reading: Reading, profile: MessageProfile, **options: Unpack[OruOptions]) -> bytes:
    """The ER7 message for ``reading``: segments each ending in CR, encoded as ``profile.charset`` says.
    :func:`oru_message` says what had to give way (escaped characters, attachments)."""
    return oru_message(reading, profile, **options).body


def oru_message(
    reading: Reading,
    profile: MessageProfile,
    *,
    control_id: str,
    created_at: datetime,
    patient: PatientIdentity | None = None,
    late_associated: bool = False,
    review: ResultReview | None = None,
    also: Sequence[Reading] = (),
) -> OruMessage:
    """:func:`build_oru` with the counts: characters escaped or replaced for the charset, attachments
    dropped for ``max_message_bytes`` (``oversize = "drop-attachment"``: the message is built again
    without its attachments and with an NTE after the OBR naming each one and why)."""
    if not control_id or len(control_id) > 20 or not re.fullmatch(r"[A-Za-z0-9._-]+", control_id):
        raise MessageBuildError("control id must be 1-20 characters of A-Z a-z 0-9 . _ -")
    review = review or ResultReview()
    readings = [reading, *also]
    if any(_is_test(r) for r in readings) and profile.processing_id == "P":
        raise MessageBuildError("test/demo data must not be sent with processing id P (use D)")
    args = (profile, control_id, created_at, patient, late_associated, review)
    text = _message_text(readings, *args)
    body, escaped, replaced = encode_message(text, profile)
    limit = profile.max_message_bytes
    attached = [(a.name, len(a.data)) for r in readings for a in r.attachments]
    if limit is None or len(body) <= limit or profile.oversize != "drop-attachment" or not attached:
        return OruMessage(body, escaped, replaced)
    notes = [
        f"attachment {name} ({size} bytes) not sent: the message would be {len(body)} bytes, over the "
        f"receiver's limit of {limit} bytes (max_message_bytes)"
        for name, size in attached
    ]
    bare = [r.with_updates(attachments=()) for r in readings]
    if not any(_has_content(r) for r in bare):  # nothing but the attachment: send it, the link refuses it
        return OruMessage(body, escaped, replaced)
    text = _message_text(bare, *args, dropped=notes)
    body, escaped, replaced = encode_message(text, profile)
    return OruMessage(body, escaped, replaced, tuple(name for name, _ in attached))


def _has_content(reading: Reading) -> bool:
    return bool(
        reading.qualifiers
        or _statement_lines(reading.statements)
        or any(m.value is not None and m.value.is_finite() for m in reading.measurements)
    )


def encode_message(text: str, profile: MessageProfile) -> tuple[bytes, int, int]:
    """``text`` in ``profile.charset``: ``(bytes, escaped, replaced)``. A character the charset cannot
    carry becomes the HL7 hex escape of its UTF-8 bytes (``é`` -> ``\\XC3A9\\``), or the marker with
    ``unrepresentable = "marker"``; each is counted, none is dropped. Delimiters and escape sequences are
    ASCII, so this works on the whole message."""
    codec = _CODECS[profile.charset]
    try:
        return text.encode(codec), 0, 0
    except UnicodeEncodeError:
        pass
    out: list[str] = []
    escaped = replaced = 0
    for ch in text:
        try:
            ch.encode(codec)
        except UnicodeEncodeError:
            if profile.unrepresentable == "marker":
                out.append(profile.marker)
                replaced += 1
            else:
                out.append(f"\\X{ch.encode('utf-8').hex().upper()}\\")
                escaped += 1
            continue
        out.append(ch)
    return "".join(out).encode(codec), escaped, replaced


def _message_text(
    readings: Sequence[Reading],
    profile: MessageProfile,
    control_id: str,
    created_at: datetime,
    patient: PatientIdentity | None,
    late_associated: bool,
    review: ResultReview,
    *,
    dropped: Sequence[str] = (),
) -> str:
    reading = readings[0]
    body = list(_patient_segments(reading, profile, patient))
    collector = xcn(review.collector) if review.collector is not None else ""
    set_id = 0
    for index, group in enumerate(readings):
        filler, notes, rows = _group(group, profile, review)
        body.append(_obr_segment(index, group, filler, profile, collector))
        if index == 0 and late_associated and ReadingFlag.LATE_ASSOCIATED not in group.flags:
            notes.insert(0, "late-associated: held until patient was set")
        if index == 0:
            notes.extend(dropped)
        body += [_nte_segment(note_id, note) for note_id, note in enumerate(notes, start=1)]
        for row in rows:
            set_id += 1
            body += _obx_segments(row, set_id)
    header = _msh_segment(profile, control_id, created_at, body)
    return "".join(s + "\r" for s in [header, *body])
