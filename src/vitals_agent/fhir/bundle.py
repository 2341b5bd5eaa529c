"""The FHIR R4 builder: one :class:`~vitals_agent.models.Reading` -> one transaction Bundle (JSON bytes).

The FHIR counterpart of ``hl7/oru.py``: pure (no I/O, no clock: the caller passes ``message_id`` and
``created_at``), depending only on the models and the code tables, so a message can be rebuilt identically.
Every Bundle is checked against the ``fhir.resources`` R4B models before it is returned.

What a Bundle holds (all entries are conditional, so a re-sent Bundle creates nothing twice):

* **Observations**, one per metric, conforming to the FHIR R4 core Vital Signs profiles where the metric
  has one (``vital_sign`` in ``data/metrics.toml``): category ``vital-signs``, LOINC code (the profile's
  code first, a narrower LOINC and the MDC term as additional codings), UCUM ``valueQuantity``,
  ``effectiveDateTime`` with the site's offset, ``status`` as the caller says (``preliminary`` until a
  clinician has validated the values), ``performer`` when one did. Blood pressure is one panel (85354-9)
  with systolic, diastolic and mean components; resting EKG measurements one panel (34534-8) with a
  component per measurement and one for the interpretation statements. A value the device flagged
  invalid, unavailable or busy is sent as a ``dataAbsentReason``, never as a value.
* the **Device** (conditional create on its EUI-64 in the PHD form, else its serial number, else the
  configured id under this gateway), with model, manufacturer, firmware, MDS type and the room;
* the **Location** (the room, conditional create on ``[agent] location``) when one is configured;
* the **Patient** by conditional reference on the MRN (``Patient?identifier=system|mrn``) when the reading
  is bound, or created when absent with ``create_patient``; an unbound reading has no subject: it points to
  the Device, and the Device to the Location, so it can be associated by room;
* a **DocumentReference** per attachment (the EKG cart's original file, inline) when attachments are on.

A clinician's manual entry (``DeviceClass.MANUAL``: respiration rate, pain score...) has no Device entry
and no ``device`` reference; its Observations carry ``method`` = manual measurement (the v2 observation
method ``MMEAS`` the ORU uses). A series mean (automated office BP, ``Reading.series``) has ``method`` =
calculated (``ACALC``) and a note naming the readings averaged and their times.

Idempotency: each Observation has a stable identifier (``urn:uuid`` derived from the gateway, the device
identity, the observation time, the record sequence and the code) and is POSTed with ``ifNoneExist`` on it;
its ``fullUrl`` is that uuid. A *revision* (the same observations again, e.g. ``final`` after a
clinician's confirmation) is a conditional PUT on the same identifier, so the server updates instead of
adding.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any, Literal, Required, TypedDict, Unpack
from urllib.parse import quote

from vitals_agent.codes import LOCAL_CODE_SYSTEM, MetricInfo, PanelInfo, tables
from vitals_agent.errors import VitalsAgentError
from vitals_agent.fhir.wire import dumps_bytes
from vitals_agent.models import (
    Attachment,
    DeviceClass,
    DeviceIdentity,
    Flag,
    Measurement,
    PatientInfo,
    Reading,
    ReadingFlag,
    in_zone,
)

LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
V2_0163 = "http://terminology.hl7.org/CodeSystem/v2-0163"  # HL7 v2 table 0163 body site (LA, RA ...)
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"  # identifier type (SNO serial number)
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"  # HTEST: test health data
RFC3986 = "urn:ietf:rfc:3986"
# PHD IG: Device.identifier for an IEEE EUI-64 system id (value: 8 hex octets separated by hyphens)
EUI64_SYSTEM = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
CONTINUA_IDS = "http://hl7.org/fhir/uv/phd/CodeSystem/ContinuaDeviceIdentifiers"
VITAL_SIGNS = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
PROFILE_BASE = "http://hl7.org/fhir/StructureDefinition/"
# The agent's own naming systems (identifiers and local codes that have no public system).
AGENT_SYSTEM = "urn:vitals-agent"
LOCAL_CODES = f"{AGENT_SYSTEM}:code:{LOCAL_CODE_SYSTEM}"
MESSAGE_SYSTEM = f"{AGENT_SYSTEM}:message"
LOCATION_SYSTEM = f"{AGENT_SYSTEM}:location"
CLINICIAN_SYSTEM = f"{AGENT_SYSTEM}:clinician"
# Device.identifier in the one device identity form of OBX-18, the temporary PID-3 and the status page
# (issue 17): the value is the EI as text, ``EI-1^EI-2^EI-3^EI-4`` (unescaped), e.g.
# ``0000123456^^0A1B2CFFFE3D4E5F^EUI-64``, so ``Device?identifier=urn:vitals-agent:equipment|<OBX-18>``
# finds the Device an HL7 v2 message names.
EQUIPMENT_SYSTEM = f"{AGENT_SYSTEM}:equipment"
EQUIPMENT_TYPE_TEXT = "Device identity as in HL7 v2 OBX-18 (EI: serial^model^EUI-64^EUI-64)"
ATTACHMENT_TYPE = {"system": LOCAL_CODES, "code": "DEVICE_REPORT", "display": "Device report"}
# How a value was obtained, with the ORU's OBX-17 codes (IHE PCD TF-2 observation methods) under the
# agent's local code system (no FHIR code system carries them)
MANUAL_METHOD = {
    "coding": [{"system": LOCAL_CODES, "code": "MMEAS", "display": "manual-measurement"}],
    "text": "entered by a clinician",
}
MEAN_METHOD = {
    "coding": [{"system": LOCAL_CODES, "code": "ACALC", "display": "auto-calculation"}],
    "text": "mean of a measurement series",
}
# uuid5 namespace of the agent's stable resource identifiers (a fixed random value; never change it)
_NAMESPACE = uuid.UUID("6f1d3c52-9a0b-4d57-8f0e-3b1c5e2a7d94")

Status = Literal["preliminary", "final", "amended", "corrected", "entered-in-error"]
STATUSES: tuple[str, ...] = ("preliminary", "final", "amended", "corrected", "entered-in-error")
_SEX = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}
_ABSENT_FOR_FLAG = {Flag.INVALID: "error", Flag.NOT_AVAILABLE: "unknown", Flag.BUSY: "temp-unknown"}
_SITE_SYSTEMS = {"SCT": SNOMED, "SNM": SNOMED, "HL70163": V2_0163}
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class FhirBuildError(VitalsAgentError, ValueError):
    """The reading or profile cannot be turned into a valid Bundle (the text says why)."""


@dataclass(frozen=True)
class FhirProfile:
    """What the FHIR destination expects (from ``[agent]``, ``[patient]`` and ``[fhir]``)."""

    gateway_eui64: str
    patient_system: str = f"{AGENT_SYSTEM}:mrn"  # Patient.identifier.system of the MRN
    location: str = ""  # [agent] location (PL form, e.g. "CLINIC^ROOM12"); "" = no Location
    tz: tzinfo = UTC
    attachments: bool = True  # send attachments (EKG originals) as DocumentReferences
    create_patient: bool = False  # create the Patient (conditionally) instead of only referencing it
    encounter_system: str | None = None  # identifier system of the visit number; None: not sent
    clinician_system: str = CLINICIAN_SYSTEM  # identifier system of the performer's id

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9A-F]{16}", self.gateway_eui64):
            raise FhirBuildError("gateway EUI-64 must be 16 upper-case hexadecimal digits")
        for name in ("patient_system", "clinician_system"):
            if not _is_uri(getattr(self, name)):
                raise FhirBuildError(f"{name} must be an absolute URI (e.g. urn:oid:2.999.1), not empty")
        if self.encounter_system is not None and not _is_uri(self.encounter_system):
            raise FhirBuildError("encounter_system must be an absolute URI")


@dataclass(frozen=True)
class Performer:
    """The clinician who validated the values (FHIR ``performer``; a logical reference by identifier)."""

    id: str
    family: str | None = None
    given: str | None = None


def _is_uri(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", value))


# --- small helpers -------------------------------------------------------------------------------------


def fhir_datetime(value: datetime, tz: tzinfo = UTC) -> str:
    """``YYYY-MM-DDThh:mm:ss+hh:mm`` in ``tz`` (seconds, offset always present; UTC as ``+00:00``)."""
    return in_zone(value, tz, FhirBuildError).replace(microsecond=0).isoformat()


def _text(value: str | None) -> str | None:
    """A FHIR string: control characters removed, whitespace trimmed; None when nothing is left."""
    if value is None:
        return None
    cleaned = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", value).strip()
    return cleaned or None


def _token(system: str, value: str) -> str:
    """``system|value`` for a search URL, percent-encoded (``|`` in the value escaped as FHIR says)."""
    return quote(system, safe=":/.") + "|" + quote(value.replace("|", "\\|"), safe=":.-_")


def _stable_uuid(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, '|'.join(parts))}"


def _reading_key(reading: Reading, profile: FhirProfile, order_key: str = "") -> str:
    """What makes a reading *this* reading (as the ORU's filler order number): stable across rebuilds. A
    series mean differs from the series' last reading; ``order_key`` (a refile to another chart) makes new
    observations."""
    parts = [profile.gateway_eui64, *reading.identity_parts()]
    if reading.series is not None:
        parts.append("mean:" + ",".join(t.astimezone(UTC).isoformat() for t in reading.series.averaged_at))
    if order_key:
        parts.append(order_key)
    return "|".join(parts)


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _metric_code(info: MetricInfo) -> dict[str, Any]:
    """LOINC first (the Vital Signs profile's code, then a narrower one), then MDC, else the local code."""
    codings: list[dict[str, Any]] = []
    for code in (info.vital_sign_loinc, info.loinc):
        if code and all(c["code"] != code for c in codings):
            codings.append(_coding(LOINC, code))
    if info.send_mdc:
        codings.append(_coding(MDC, str(info.mdc), info.refid))
    else:
        codings.append(_coding(LOCAL_CODES, info.refid, info.name))
    return {"coding": codings, "text": info.name}


def _panel_code(panel: PanelInfo) -> dict[str, Any]:
    codings = [_coding(LOINC, panel.loinc)] if panel.loinc else []
    if panel.send_mdc:
        codings.append(_coding(MDC, str(panel.mdc), panel.refid))
    else:
        codings.append(_coding(LOCAL_CODES, panel.refid, panel.name))
    return {"coding": codings, "text": panel.name}


def _category(code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [_coding(OBSERVATION_CATEGORY, code, display)], "text": display}]


def _site(text: str | None) -> dict[str, Any] | None:
    """``code^display^SCT`` (OBX-20 form) -> CodeableConcept; an unknown system keeps only the text."""
    if not text:
        return None
    parts = [p.strip() for p in text.split("^")]
    code, display, system = [*parts, "", "", ""][:3]
    uri = _SITE_SYSTEMS.get(system.upper())
    label = _text(display) or _text(code)
    if uri and code:
        concept: dict[str, Any] = {"coding": [_coding(uri, code, _text(display))]}
        if label:
            concept["text"] = label
        return concept
    return {"text": label} if label else None


def _unit(m: Measurement, info: MetricInfo) -> str:
    unit = tables().canonical_unit(m.unit)
    if unit is None:
        raise FhirBuildError(f"{info.key}: unit {m.unit!r} is not a known UCUM unit")
    return unit


def _quantity(value: Decimal, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _value_fields(m: Measurement, info: MetricInfo) -> dict[str, Any]:
    """``valueQuantity``, or ``dataAbsentReason`` for a value the device flagged as not usable."""
    assert m.value is not None
    absent = next((_ABSENT_FOR_FLAG[f] for f in m.flags if f in _ABSENT_FOR_FLAG), None)
    if absent is not None:
        flags = ", ".join(f.value for f in m.flags)
        return {
            "dataAbsentReason": {"coding": [_coding(DATA_ABSENT, absent)], "text": f"device flags: {flags}"}
        }
    return {"valueQuantity": _quantity(m.value, _unit(m, info))}


def _absent(reason: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [_coding(DATA_ABSENT, "unknown")]}
    text = _text(reason)
    if text:
        out["text"] = text
    return out


def _sendable(reading: Reading) -> list[tuple[Measurement, MetricInfo]]:
    out = []
    for m in reading.measurements:
        info = tables().metric(m.metric)
        if m.value is None or not info.reportable or not m.value.is_finite():
            continue
        out.append((m, info))
    return out


def _statement_text(statements: Iterable[str]) -> str | None:
    lines = [line.strip() for s in statements for line in re.split(r"\r\n|\r|\n", s) if line.strip()]
    return _text("\n".join(lines))


# --- resources -----------------------------------------------------------------------------------------


@dataclass
class _Entry:
    full_url: str
    resource: dict[str, Any]
    request: dict[str, str]

    def json(self) -> dict[str, Any]:
        return {"fullUrl": self.full_url, "resource": self.resource, "request": self.request}


def _conditional_create(resource_type: str, system: str, value: str) -> dict[str, str]:
    return {"method": "POST", "url": resource_type, "ifNoneExist": f"identifier={_token(system, value)}"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _device_identifiers(device: DeviceIdentity, profile: FhirProfile) -> list[dict[str, Any]]:
    """Most specific first: the EUI-64 (PHD form), the serial number, the configured id on this gateway;
    the first is the conditional-create key. Last, the agent's one identity form (:data:`EQUIPMENT_SYSTEM`,
    the OBX-18 EI as text), the same on every Device whatever the key."""
    ids: list[dict[str, Any]] = []
    if device.eui64:
        octets = "-".join(device.eui64[i : i + 2] for i in range(0, 16, 2))
        ids.append(
            {
                "type": {"coding": [_coding(CONTINUA_IDS, "SYSID", "IEEE 11073 System Identifier")]},
                "system": EUI64_SYSTEM,
                "value": octets,
            }
        )
    serial = _text(device.serial_number)
    if serial:
        maker = _slug(" ".join(x for x in (device.manufacturer, device.model) if x))
        ids.append(
            {
                "type": {"coding": [_coding(V2_0203, "SNO", "Serial Number")]},
                "system": f"{AGENT_SYSTEM}:serial" + (f":{maker}" if maker else ""),
                "value": serial,
            }
        )
    ids.append({"system": f"{AGENT_SYSTEM}:device:{profile.gateway_eui64}", "value": device.id})
    ids.append(
        {
            "type": {"text": EQUIPMENT_TYPE_TEXT},
            "system": EQUIPMENT_SYSTEM,
            "value": device.equipment_id(profile.gateway_eui64).text(),
        }
    )
    return ids


def _location_entry(profile: FhirProfile) -> _Entry | None:
    location = _text(profile.location)
    if not location:
        return None
    name = " ".join(p for p in re.split(r"[\^&]", location) if p.strip()) or location
    resource = {
        "resourceType": "Location",
        "identifier": [{"system": LOCATION_SYSTEM, "value": location}],
        "status": "active",
        "name": name,
        "mode": "instance",
    }
    return _Entry(
        _stable_uuid("location", location),
        resource,
        _conditional_create("Location", LOCATION_SYSTEM, location),
    )


def _device_entry(reading: Reading, profile: FhirProfile, location: _Entry | None) -> _Entry:
    device = reading.device
    identifiers = _device_identifiers(device, profile)
    first = identifiers[0]
    dtype = tables().device_type(reading.device_class.value)
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "identifier": identifiers,
        "status": "active",
    }
    for key, value in (
        ("manufacturer", device.manufacturer),
        ("serialNumber", device.serial_number),
        ("modelNumber", device.model),
    ):
        text = _text(value)
        if text:
            resource[key] = text
    names = [{"name": device.id, "type": "user-friendly-name"}]
    model = _text(device.model)
    if model:
        names.append({"name": model, "type": "model-name"})
    resource["deviceName"] = names
    resource["type"] = {"coding": [_coding(MDC, str(dtype.mdc), dtype.refid)]}
    firmware = _text(device.firmware)
    if firmware:
        resource["version"] = [{"value": firmware}]
    if location is not None:
        resource["location"] = {"reference": location.full_url}
    return _Entry(
        _stable_uuid("device", first["system"], first["value"]),
        resource,
        _conditional_create("Device", first["system"], first["value"]),
    )


def _patient_entry(patient: PatientInfo, profile: FhirProfile) -> _Entry:
    mrn = patient.mrn or ""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {"coding": [_coding(V2_0203, "MR", "Medical record number")]},
                "system": profile.patient_system,
                "value": mrn,
            }
        ],
    }
    family, given = _text(patient.family_name), _text(patient.given_name)
    if family or given:
        name: dict[str, Any] = {"use": "official"}
        if family:
            name["family"] = family
        if given:
            name["given"] = [given]
        resource["name"] = [name]
    gender = _SEX.get((patient.sex or "").strip()[:1].upper())
    if gender:
        resource["gender"] = gender
    dob = (patient.birth_date or "").replace("-", "")
    if re.fullmatch(r"\d{8}", dob):
        resource["birthDate"] = f"{dob[:4]}-{dob[4:6]}-{dob[6:]}"
    return _Entry(
        _stable_uuid("patient", profile.patient_system, mrn),
        resource,
        _conditional_create("Patient", profile.patient_system, mrn),
    )


def _document_entry(
    attachment: Attachment,
    reading_key: str,
    reading: Reading,
    profile: FhirProfile,
    subject: dict[str, Any] | None,
    device: _Entry,
    created_at: datetime,
    security: list[dict[str, Any]] | None,
) -> _Entry:
    digest = hashlib.sha256(attachment.data).hexdigest()
    ident = _stable_uuid(reading_key, "document", digest)
    content_type = (
        attachment.media_type if re.fullmatch(r"[\w.+-]+/[\w.+-]+", attachment.media_type) else None
    )
    att: dict[str, Any] = {
        "contentType": content_type or "application/octet-stream",
        "data": base64.b64encode(attachment.data).decode("ascii"),
        "size": len(attachment.data),
        "hash": base64.b64encode(hashlib.sha1(attachment.data, usedforsecurity=False).digest()).decode(),
        "creation": fhir_datetime(reading.observed_at, profile.tz),
    }
    title = _text(attachment.name)
    if title:
        att["title"] = title
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [{"system": RFC3986, "value": ident}],
        "status": "current",
        "type": {"coding": [ATTACHMENT_TYPE], "text": title or "Device report"},
        "date": fhir_datetime(created_at, profile.tz),
        "author": [{"reference": device.full_url}],
        "content": [{"attachment": att}],
    }
    if security:
        resource["meta"] = {"security": security}
    if subject is not None:
        resource["subject"] = subject
    return _Entry(ident, resource, _conditional_create("DocumentReference", RFC3986, ident))


# --- the builder ---------------------------------------------------------------------------------------


class BundleOptions(TypedDict, total=False):
    """The keywords of :func:`build_bundle` (and :func:`bundle_dict`)."""

    message_id: Required[str]
    created_at: Required[datetime]
    # the patient the reading is filed to (None: the device's own patient with an id, e.g. an EKG cart's,
    # else unbound)
    patient: PatientInfo | None
    # the Observations' status (``preliminary`` = device data not yet validated by a person, ``final`` =
    # validated)
    status: Status
    performer: Performer | None  # the validating clinician
    revision: bool  # the observations were sent before: update them (conditional PUT) instead of creating
    late_associated: bool
    # mixed into the Observations' identifiers ("" = the reading's own): the same reading filed again as
    # *new* Observations (to another chart, after the first ones were marked entered-in-error)
    order_key: str


def build_bundle(reading: Reading, profile: FhirProfile, **options: Unpack[BundleOptions]) -> bytes:
    """The transaction Bundle for ``reading`` as compact UTF-8 JSON (see the module docstring)."""
    return validated_bytes(bundle_dict(reading, profile, **options))


def bundle_dict(
    reading: Reading,
    profile: FhirProfile,
    *,
    message_id: str,
    created_at: datetime,
    patient: PatientInfo | None = None,
    status: Status = "preliminary",
    performer: Performer | None = None,
    revision: bool = False,
    late_associated: bool = False,
    order_key: str = "",
) -> dict[str, Any]:
    """:func:`build_bundle` before validation and serialisation (values are Decimals)."""
    if not _MESSAGE_ID.match(message_id):
        raise FhirBuildError("message id must be 1-64 characters of A-Z a-z 0-9 . _ -")
    if status not in STATUSES:
        raise FhirBuildError(f"observation status must be one of {', '.join(STATUSES)}, not {status!r}")
    tz = profile.tz
    effective = fhir_datetime(reading.observed_at, tz)
    issued = fhir_datetime(created_at, tz)
    key = _reading_key(reading, profile, order_key)
    is_test = ReadingFlag.TEST_DATA in reading.flags or any(
        f in (Flag.TEST, Flag.DEMO) for m in reading.measurements for f in m.flags
    )
    security = [_coding(ACT_REASON, "HTEST", "test health records")] if is_test else None

    entries: list[_Entry] = []
    location = _location_entry(profile)
    if location is not None:
        entries.append(location)

    # subject: the bound patient, else the device's own patient (EKG cart) with an id, else none
    who = patient if patient is not None and _text(patient.mrn) else None
    if (
        who is None
        and patient is None
        and reading.source_patient is not None
        and _text(reading.source_patient.mrn)
    ):
        who = reading.source_patient
    subject: dict[str, Any] | None = None
    if who is not None:
        mrn = _text(who.mrn) or ""
        if profile.create_patient:
            patient_entry = _patient_entry(who.model_copy(update={"mrn": mrn}), profile)
            entries.append(patient_entry)
            subject = {"reference": patient_entry.full_url}
        else:
            subject = {"reference": f"Patient?identifier={_token(profile.patient_system, mrn)}"}
    elif patient is not None:
        raise FhirBuildError("the bound patient has an empty MRN")

    manual = reading.device_class is DeviceClass.MANUAL
    if manual and subject is None:
        raise FhirBuildError("a manual entry needs a patient: it has no device to be associated through")
    device: _Entry | None = None  # a clinician's manual entry has no device
    if not manual:
        device = _device_entry(reading, profile, location)
        entries.append(device)

    documents: list[_Entry] = []
    if profile.attachments and device is not None:
        for attachment in reading.attachments:
            documents.append(
                _document_entry(attachment, key, reading, profile, subject, device, created_at, security)
            )
    entries.extend(documents)

    notes: list[dict[str, str]] = []
    if late_associated or ReadingFlag.LATE_ASSOCIATED in reading.flags:
        notes.append({"text": "late-associated: held until a patient was set"})
    series = reading.series
    if series is not None:
        times = ", ".join(fhir_datetime(t, tz) for t in series.averaged_at)
        text = f"mean of {series.count} readings taken at {times}"
        if series.discarded_first:
            text += f"; the first of the series' {series.taken} readings was sent but not averaged"
        notes.append({"text": text})
    method = MANUAL_METHOD if manual else MEAN_METHOD if series is not None else None
    encounter_id = _text(who.encounter) if who is not None else None
    performers: list[dict[str, Any]] = []
    if performer is not None and _text(performer.id):
        ref: dict[str, Any] = {
            "identifier": {"system": profile.clinician_system, "value": _text(performer.id)}
        }
        display = " ".join(x for x in (_text(performer.given), _text(performer.family)) if x)
        if display:
            ref["display"] = display
        performers.append(ref)

    def observation(
        ident_key: str, code: dict[str, Any], category: tuple[str, str], vital_sign: str | None
    ) -> tuple[str, dict[str, Any]]:
        ident = _stable_uuid(key, ident_key)
        resource: dict[str, Any] = {"resourceType": "Observation"}
        meta: dict[str, Any] = {}
        if vital_sign and subject is not None:  # the profiles require a Patient subject
            meta["profile"] = [VITAL_SIGNS, PROFILE_BASE + vital_sign]
        if security:
            meta["security"] = security
        if meta:
            resource["meta"] = meta
        resource["identifier"] = [{"system": RFC3986, "value": ident}]
        resource["status"] = status
        resource["category"] = _category(*category)
        resource["code"] = code
        if subject is not None:
            resource["subject"] = subject
        if encounter_id and profile.encounter_system:
            resource["encounter"] = {
                "identifier": {"system": profile.encounter_system, "value": encounter_id}
            }
        resource["effectiveDateTime"] = effective
        resource["issued"] = issued
        if performers:
            resource["performer"] = performers
        if method is not None:
            resource["method"] = method
        if notes:
            resource["note"] = notes
        if device is not None:
            resource["device"] = {"reference": device.full_url}
        return ident, resource

    sendable = _sendable(reading)
    observations: list[tuple[str, dict[str, Any]]] = []
    vital = ("vital-signs", "Vital Signs")
    panels: dict[str, list[tuple[Measurement, MetricInfo]]] = {}
    singles: list[tuple[Measurement, MetricInfo]] = []
    for m, info in sendable:
        panel = tables().panel_of(m.metric)
        if panel is None:
            singles.append((m, info))
        else:
            panels.setdefault(panel.key, []).append((m, info))
    statements = _statement_text(reading.statements)
    statement_panel = next((p.key for p in tables().panels.values() if p.statement_loinc), None)
    if statements and statement_panel is not None:
        panels.setdefault(statement_panel, [])  # EKG statements go in the EKG panel, with or without values
    derived = [{"reference": d.full_url} for d in documents]

    for panel_key, members in panels.items():
        panel = tables().panels[panel_key]
        components: list[dict[str, Any]] = []
        for metric in panel.members:
            info = tables().metric(metric)
            found = next((m for m, _ in members if m.metric == metric), None)
            if found is not None:
                components.append({"code": _metric_code(info), **_value_fields(found, info)})
            elif metric in panel.required:
                absent = next((m for m in reading.measurements if m.metric == metric), None)
                reason = absent.absent_reason if absent is not None else "not reported by the device"
                components.append({"code": _metric_code(info), "dataAbsentReason": _absent(reason)})
        if panel.statement_loinc and statements:
            code = {
                "coding": [_coding(LOINC, panel.statement_loinc)],
                "text": panel.statement_name or "Interpretation",
            }
            components.append({"code": code, "valueString": statements})
            statements = None
        category = vital if panel.vital_sign else ("procedure", "Procedure")
        ident, resource = observation(panel_key, _panel_code(panel), category, panel.vital_sign)
        resource["component"] = components
        if derived:
            resource["derivedFrom"] = derived
        site = next((_site(m.site) for m, _ in members if m.site), None)
        if site:
            resource["bodySite"] = site
        observations.append((ident, resource))

    for m, info in singles:
        category = vital if info.vital_sign else ("exam", "Exam")
        ident, resource = observation(m.metric, _metric_code(info), category, info.vital_sign)
        resource.update(_value_fields(m, info))
        site = _site(m.site) or _site(info.body_site)
        if site:
            resource["bodySite"] = site
        if derived:
            resource["derivedFrom"] = derived
        observations.append((ident, resource))

    if not (observations or documents):
        raise FhirBuildError("the reading has no value, statement or attachment to send")

    for ident, resource in observations:
        if revision:
            request = {"method": "PUT", "url": f"Observation?identifier={_token(RFC3986, ident)}"}
        else:
            request = _conditional_create("Observation", RFC3986, ident)
        entries.append(_Entry(ident, resource, request))

    return {
        "resourceType": "Bundle",
        "identifier": {"system": MESSAGE_SYSTEM, "value": message_id},
        "type": "transaction",
        "entry": [e.json() for e in entries],
    }


def load_models() -> None:
    """Import the ``fhir.resources`` R4B models now (about 0.2 s, once) rather than on the first reading."""
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_fields  # noqa: B018 - touch the class: its schema is built on import


def validated_bytes(bundle: dict[str, Any]) -> bytes:
    """Check ``bundle`` against the ``fhir.resources`` R4B models, then serialise it (decimals exact)."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise FhirBuildError(f"invalid FHIR Bundle at {where}: {first['msg']}") from None
    return dumps_bytes(bundle)
