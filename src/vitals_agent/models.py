"""The data model every layer shares: device identity, measurements, readings, and device events.

Drivers produce these, the agent normalises and routes them, the HL7 layer turns them into messages.
Values are :class:`~decimal.Decimal` so that a device's resolution survives (``03.60`` stays ``3.60``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from vitals_agent.codes import tables


def eui64_digits(value: str) -> str:
    """An EUI-64 as written in HL7 (EI-3, MSH-3): ``0a:1b-...`` -> ``0A1B...`` (separators dropped,
    upper case); whether 16 hex digits remain is the caller's check (:func:`checked_eui64`)."""
    return value.replace(":", "").replace("-", "").upper()


def checked_eui64(value: str | None, problem: str) -> str | None:
    """:func:`eui64_digits` of a configured or reported EUI-64 (None stays None); ValueError ``problem``
    unless exactly 16 hexadecimal digits remain."""
    if value is None:
        return None
    digits = eui64_digits(value)
    if not re.fullmatch(r"[0-9A-F]{16}", digits):
        raise ValueError(problem)
    return digits


def device_text_lines(value: str | None) -> str | None:
    """Like :func:`device_text` for multi-line text (an EKG statement): each line break of any kind (CR LF,
    CR, NEL, U+2028, U+2029, VT, FF) becomes one ``\n`` (the message builders escape it), each line is
    cleaned, blank lines are dropped."""
    if value is None:
        return None
    return "\n".join(line for line in map(device_text, value.splitlines()) if line) or None


def device_text(value: str | None) -> str | None:
    """Text a device sent (its name, model, serial number, firmware, an EKG statement), made safe to show on
    the status page and to put in a message: the one sanitiser every driver's output goes through (the
    models below apply it, so no driver can forget it).

    NUL padding and whitespace of any kind (CR, LF, tab, NEL U+0085, U+2028/U+2029, no-break spaces)
    become one space; every other non-printable character -- C0 and C1 controls, DEL, escape sequences'
    ESC, format characters such as bidi overrides and zero-width spaces, unassigned and private-use code
    points -- is removed. Runs of spaces collapse; the result is trimmed; empty text is None."""
    if value is None:
        return None
    if value.isprintable() and "  " not in value and value == value.strip():
        return value or None  # the common case: nothing to do
    kept: list[str] = []
    for ch in value:
        if ch.isprintable():
            kept.append(ch)
        elif ch == "\x00" or ch.isspace():
            kept.append(" ")
    return " ".join("".join(kept).split()) or None


def in_zone(value: datetime, tz: tzinfo, error: Callable[[str], Exception]) -> datetime:
    """``value`` as wall time in ``tz``, for a message's time stamp (HL7 DTM, FHIR dateTime).

    Raises ``error(text)`` (the builder's own error type) for a naive time or one ``tz`` cannot express."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise error("timestamps must be timezone-aware")
    try:
        return value.astimezone(tz)
    except (OverflowError, ValueError):
        raise error(f"time stamp out of range: year {value.year}") from None


def _row_of(table: Callable[[], Container[str]], what: str) -> AfterValidator:
    """Checks that a key names a row of ``table()`` (a code table, read when a model is validated)."""

    def check(value: str) -> str:
        if value not in table():
            raise ValueError(f"unknown {what} {value!r}")
        return value

    return AfterValidator(check)


MetricKey = Annotated[str, _row_of(lambda: tables().metrics, "metric key")]
QualifierKey = Annotated[str, _row_of(lambda: tables().qualifiers, "qualifier")]


class DeviceClass(StrEnum):
    """What kind of device a reading came from; selects the MDS code (codes.md section 5)."""

    PULSE_OXIMETER = "pulse_oximeter"
    BLOOD_PRESSURE = "blood_pressure"
    THERMOMETER = "thermometer"
    SCALE = "scale"
    BODY_COMPOSITION = "body_composition"
    HEART_RATE = "heart_rate"
    ECG = "ecg"
    BARCODE = "barcode"
    MANUAL = "manual"  # values a clinician entered by hand (no device measured them)
    OTHER = "other"


class Flag(StrEnum):
    """Measurement flags. The upper-case ones are HL7 OBX-8 interpretation codes (TF-2 table B.8.5-6)."""

    QUESTIONABLE = "QUES"
    INVALID = "INV"
    NOT_AVAILABLE = "NAV"
    CALIBRATING = "CAL"
    TEST = "TEST"
    DEMO = "DEMO"
    EARLY = "EARLY"
    BUSY = "BUSY"
    ALARM_ACTIVE = "ALACT"
    ALARMS_INHIBITED = "ALINH"


class ReadingFlag(StrEnum):
    """Reading-level flags: facts about the whole reading, kept for audit and shown to technicians."""

    CLOCK_SKEW = "clock_skew"  # device time too far from host time: OBX-14 uses host time
    CLOCK_UNSET = "clock_unset"  # device reported no or an impossible time
    CLOCK_CORRECTED = "clock_corrected"  # stored record: device time shifted by the measured offset
    STORED_RECORD = "stored_record"  # taken while no host was connected, delivered later
    IMPLAUSIBLE_VALUE = "implausible_value"  # a value was outside the physiological range and not sent
    ALARM = "alarm"  # the device signalled an alarm
    SENSOR_OFF = "sensor_off"  # no values: sensor off / no sensor / searching
    LATE_ASSOCIATED = "late_associated"  # held until a patient was set
    TEST_DATA = "test_data"  # device in test/demo mode


class DeviceIdentity(BaseModel):
    """Who measured: the configured id plus whatever the device says about itself."""

    model_config = ConfigDict(frozen=True)

    id: str
    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = None
    eui64: str | None = None
    firmware: str | None = None
    address: str | None = None  # BLE address, serial port or folder: where it was reached

    @field_validator("manufacturer", "model", "serial_number", "firmware")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        return device_text(value)

    @field_validator("eui64")
    @classmethod
    def _eui64_form(cls, value: str | None) -> str | None:
        return checked_eui64(value, "EUI-64 must be 16 hexadecimal digits")

    def equipment_id(self, gateway_eui64: str) -> EquipmentId:
        """The one identity form (issue 17, hl7-pcd01.md §7.6): see :class:`EquipmentId`."""
        return equipment_id(self, gateway_eui64)

    def merged(self, other: DeviceIdentity) -> DeviceIdentity:
        """This identity with every field ``other`` knows filled in (the configured ``id`` is kept)."""
        data = self.model_dump()
        for key, value in other.model_dump().items():
            if key != "id" and value is not None:
                data[key] = value
        return DeviceIdentity(**data)


EQUIPMENT_ID_TYPE = "EUI-64"  # EI-4 of every device identity: the same for every device
EI_NAMESPACE_MAX = 20  # EI-2 is an HL7 IS value: at most 20 characters


@dataclass(frozen=True)
class EquipmentId:
    """One device's identity in the one form every message, row and page uses (an HL7 EI, unescaped):

    * ``entity`` (EI-1): the serial number the device reports; else its EUI-64 (a BLE device that states
      a System ID but no serial number); else the configured device id;
    * ``namespace`` (EI-2): the model the device reports (letters, digits, space, ``. _ -``; at most 20
      characters), empty when it reports none;
    * ``universal_id`` (EI-3): the device's own EUI-64 when it has one (BLE System ID), else the agent's
      (the gateway EUI-64, MSH-3): the authority under which EI-1 is unique;
    * ``universal_id_type`` (EI-4): ``EUI-64``, for every device.

    Examples: ``0000123456^^0A1B2CFFFE3D4E5F^EUI-64`` (a Masimo on serial),
    ``5110800123^UA-651BLE^00091FFFFE3D4E5F^EUI-64`` (a BLE cuff), ``scale-room7^^0A1B2CFFFE3D4E5F^EUI-64``
    (a scale that states no serial number).
    """

    entity: str
    namespace: str
    universal_id: str
    universal_id_type: str = EQUIPMENT_ID_TYPE

    @property
    def components(self) -> tuple[str, str, str, str]:
        return (self.entity, self.namespace, self.universal_id, self.universal_id_type)

    def text(self) -> str:
        """``EI-1^EI-2^EI-3^EI-4`` as shown to people (status page, interface spec); not HL7-escaped."""
        return "^".join(self.components)

    def temporary_key(self) -> str:
        """The device part of the temporary PID-3 of unbound readings: ``EI-1@EI-3``."""
        return f"{self.entity}@{self.universal_id}"


def _ei_namespace(model: str | None) -> str:
    if not model:
        return ""
    return re.sub(r"[^A-Za-z0-9 ._-]", "_", model)[:EI_NAMESPACE_MAX].strip()


def equipment_id(device: DeviceIdentity, gateway_eui64: str) -> EquipmentId:
    """``device``'s :class:`EquipmentId`; ``gateway_eui64`` is the agent's (16 hex digits)."""
    gateway = eui64_digits(gateway_eui64)
    entity = device.serial_number or device.eui64 or device.id
    return EquipmentId(entity, _ei_namespace(device.model), device.eui64 or gateway)


class Measurement(BaseModel):
    """One metric of a reading. ``value`` None means "no value" and ``absent_reason`` says why."""

    model_config = ConfigDict(frozen=True)

    metric: MetricKey
    value: Decimal | None
    unit: str
    flags: tuple[Flag, ...] = ()
    absent_reason: str | None = None
    site: str | None = None  # OBX-20 body site, e.g. "74262004^Oral cavity structure^SCT"
    method: str | None = None  # OBX-17 code, e.g. "ACALC"

    @field_serializer("value")
    def _value_json(self, value: Decimal | None) -> float | int | None:
        if value is None:
            return None
        return (
            int(value)
            if value == value.to_integral_value() and value.as_tuple().exponent == 0
            else float(value)
        )

    @property
    def mdc(self) -> int | None:
        return tables().metric(self.metric).mdc

    @property
    def loinc(self) -> str | None:
        return tables().metric(self.metric).loinc

    def text_value(self) -> str:
        """OBX-5 text: the value at the device's precision (no exponent notation)."""
        if self.value is None:
            raise ValueError(f"{self.metric} has no value")
        return format(self.value, "f")


class PatientInfo(BaseModel):
    """Patient demographics as a device (an EKG cart) or a context source knows them."""

    model_config = ConfigDict(frozen=True)

    mrn: str | None = None
    family_name: str | None = None
    given_name: str | None = None
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None  # F | M | U | O
    encounter: str | None = None


class Attachment(BaseModel):
    """An original file or rendered report to send as an ED OBX."""

    model_config = ConfigDict(frozen=True)

    name: str
    media_type: str  # e.g. "application/pdf"
    data: bytes

    @field_serializer("data")
    def _data_json(self, data: bytes) -> str:
        return f"<{len(data)} bytes>"


class Dropped(BaseModel):
    """A value the agent did not send, with the reason (special value, sentinel, implausible)."""

    model_config = ConfigDict(frozen=True)

    metric: str
    reason: str
    raw: str | None = None


# HL7 delimiters, control characters (C0, DEL, C1 including U+0085 NEL) and the Unicode line/paragraph
# separators: a receiver may take any of them for a line or field break.
_PERSON_FORBIDDEN = re.compile(r"[|^~\\&\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Lone surrogates: what Python makes of a byte that is not UTF-8 in a command-line argument.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def person_text(value: str | None, what: str, max_len: int) -> str | None:
    """A person's identifier or name part for an HL7 field (CX, XPN, XCN): stripped, None when empty.

    ValueError (never echoing the value) when it is longer than ``max_len``, not valid UTF-8, or holds a
    control character, line separator or HL7 delimiter. The one check for patients and clinicians."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > max_len:
        raise ValueError(f"{what} is longer than {max_len} characters")
    if _SURROGATE.search(value):
        raise ValueError(f"{what} is not valid UTF-8 text (check the terminal's character set)")
    if _PERSON_FORBIDDEN.search(value):
        raise ValueError(f"{what} contains a control character or one of | ^ ~ \\ &")
    return value


def required_person_text(value: str, what: str, max_len: int) -> str:
    """:func:`person_text` for a value that must be there (an MRN, a clinician id)."""
    cleaned = person_text(value, what, max_len)
    if cleaned is None:
        raise ValueError(f"{what} is empty")
    return cleaned


class Clinician(BaseModel):
    """The person taking or validating the vitals: HL7 OBX-16 / OBR-10 ``id^family^given``, FHIR
    ``performer``. The message never echoes a refused value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    family: str | None = None
    given: str | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return required_person_text(value, "clinician id", 32)

    @field_validator("family", "given")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return person_text(value, "clinician name", 60)

    def display(self) -> str:
        """``Anna Nurse (4711)``: for audit trails and a person at the screen."""
        name = " ".join(x for x in (self.given, self.family) if x)
        return f"{name} ({self.id})" if name else self.id


class Qualifier(BaseModel):
    """Coded context a clinician entered (BP position, arm, cuff size; temperature site; O2 delivery):
    ``key`` names a row of ``[qualifiers]`` in the metric table, ``answer`` one of its answers."""

    model_config = ConfigDict(frozen=True)

    key: QualifierKey
    answer: str

    @model_validator(mode="after")
    def _answer(self) -> Qualifier:
        answers = tables().qualifiers[self.key].answers
        if self.answer not in answers:
            raise ValueError(f"{self.key}: {self.answer!r} is not one of {', '.join(answers)}")
        return self


class Series(BaseModel):
    """A reading that is the mean of a measurement series (automated office blood pressure)."""

    model_config = ConfigDict(frozen=True)

    taken: int  # readings the series took
    averaged_at: tuple[datetime, ...]  # observation times of the readings in the mean, oldest first
    discarded_first: bool = False  # the series' first reading was sent but left out of the mean

    @property
    def count(self) -> int:
        return len(self.averaged_at)


class Reading(BaseModel):
    """One measurement session of one device (one MDS): what becomes one ORU^R01."""

    model_config = ConfigDict(frozen=True)

    device: DeviceIdentity
    device_class: DeviceClass
    measurements: tuple[Measurement, ...]
    observed_at: datetime  # time used for OBX-14 / OBR-7 (after clock policy)
    received_at: datetime  # host receive time
    device_time: datetime | None = None  # the device's own clock reading, unchanged
    flags: tuple[ReadingFlag, ...] = ()
    dropped: tuple[Dropped, ...] = ()
    statements: tuple[str, ...] = ()  # interpretation statements (EKG)
    source_patient: PatientInfo | None = None  # patient as the device knows it (EKG cart)
    attachments: tuple[Attachment, ...] = ()
    extra: dict[str, str] = Field(default_factory=dict)  # decoded values without a code; kept, not sent
    sequence: int | None = None  # device record sequence number (BLE stored records)
    raw: bytes = b""  # the frame(s) this reading came from, for audit
    # Once-only key (an EKG file's SHA-256): committed with the message in one outbox transaction; a
    # reading whose key is already recorded (or held) is not queued again, whatever crashed in between.
    dedupe_key: str | None = None
    qualifiers: tuple[Qualifier, ...] = ()  # coded context a clinician entered (manual entries)
    series: Series | None = None  # this reading is the mean of a series (its values are means)

    @field_validator("statements")
    @classmethod
    def _printable_statements(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(text for text in map(device_text_lines, value) if text)

    @field_validator("extra")
    @classmethod
    def _printable_extra(cls, value: dict[str, str]) -> dict[str, str]:
        if all(device_text(k) == k and (v == "" or device_text(v) == v) for k, v in value.items()):
            return value
        clean: dict[str, str] = {}
        for key, text in value.items():
            name = device_text(key)
            if name:
                clean[name] = device_text(text) or ""
        return clean

    @field_validator("observed_at", "received_at", "device_time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value

    @field_serializer("raw")
    def _raw_json(self, raw: bytes) -> str:
        return raw.hex()

    def values(self) -> dict[str, Decimal]:
        """Metric key -> value for the measurements that have one."""
        return {m.metric: m.value for m in self.measurements if m.value is not None}

    def with_updates(self, **changes: Any) -> Reading:
        return self.model_copy(update=changes)

    def identity_parts(self) -> list[str]:
        """What makes a reading *this* reading, stable across rebuilds: the device (id, EUI-64, serial),
        its class, when it was observed (UTC) and the device's sequence number. The ORU's filler order
        number and the FHIR identifiers both start from these."""
        d = self.device
        return [
            d.id,
            d.eui64 or "",
            d.serial_number or "",
            self.device_class.value,
            self.observed_at.astimezone(UTC).isoformat(),
            "" if self.sequence is None else str(self.sequence),
        ]


class PatientScan(BaseModel):
    """A wristband scan (barcode driver): sets the room's patient instead of producing a reading."""

    model_config = ConfigDict(frozen=True)

    device_id: str
    mrn: str
    raw: str
    received_at: datetime


class ClinicianScan(BaseModel):
    """A badge scan (barcode driver, ``clinician_pattern``): signs a clinician in instead of a patient."""

    model_config = ConfigDict(frozen=True)

    device_id: str
    clinician_id: str
    family: str | None = None
    given: str | None = None
    raw: str
    received_at: datetime


class DeviceStatusEvent(BaseModel):
    """Non-measurement facts a driver learns: battery level, identity from the device, progress."""

    model_config = ConfigDict(frozen=True)

    battery_percent: Annotated[int, Field(ge=0, le=100)] | None = None
    identity: DeviceIdentity | None = None
    note: str | None = None


DeviceEvent = Reading | PatientScan | ClinicianScan | DeviceStatusEvent
