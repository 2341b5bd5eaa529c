"""What the three ECG decoders share: the decoded-file record, value rules and the Reading it becomes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation

from vitals_agent.codes import tables
from vitals_agent.drivers.base import DecodeContext
from vitals_agent.errors import DecodeError
from vitals_agent.models import (
    Attachment,
    DeviceClass,
    DeviceIdentity,
    Dropped,
    Measurement,
    PatientInfo,
    Reading,
    ReadingFlag,
)

# Metric order of a reading (stable output, easy whole-object comparisons).
METRIC_ORDER: tuple[str, ...] = (
    "ecg_heart_rate",
    "ecg_atrial_rate",
    "ecg_rr_interval",
    "ecg_p_duration",
    "ecg_pr_interval",
    "ecg_qrs_duration",
    "ecg_qt_interval",
    "ecg_qtc_interval",
    "ecg_qtc_bazett",
    "ecg_qtc_fridericia",
    "ecg_p_axis",
    "ecg_qrs_axis",
    "ecg_t_axis",
)

AXES = frozenset({"ecg_p_axis", "ecg_qrs_axis", "ecg_t_axis"})

# Files larger than this keep ``Reading.raw`` empty (the original travels as an attachment if wanted).
RAW_KEEP_MAX = 64 * 1024


@dataclass
class EcgDecoded:
    """One decoded ECG file, before it becomes a Reading. Values are ms, degrees or per minute."""

    format: str  # "scp-ecg" | "aecg" | "philips-xml"
    values: dict[str, Decimal] = field(default_factory=dict)
    dropped: list[Dropped] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    patient: PatientInfo | None = None
    acquired: datetime | None = None  # naive = cart's local clock (ctx.tz), aware = zone from the file
    manufacturer: str | None = None
    model: str | None = None
    serial_number: str | None = None
    firmware: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def put(self, metric: str, value: Decimal | None, *, reason: str = "", raw: str | None = None) -> None:
        """Record a value, or (value None) a dropped metric with ``reason``. The first value wins."""
        if metric in self.values:
            return
        if value is None:
            if not any(d.metric == metric for d in self.dropped):
                self.dropped.append(Dropped(metric=metric, reason=reason or "not given", raw=raw))
            return
        self.dropped = [d for d in self.dropped if d.metric != metric]
        self.values[metric] = value


def parse_int_text(text: str | None) -> Decimal | None:
    """A vendor XML number ("84", "-21"); None for empty, "Failed", "Indeterminate" and other words."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    return value


def plausible(metric: str, value: Decimal) -> str | None:
    """Why ``value`` cannot be a real ``metric`` (0 ms interval, 0 /min rate), or None when it can be."""
    if metric in AXES:
        if not Decimal(-360) <= value <= Decimal(360):
            return f"axis {value} outside -360..360"
        return None
    if value <= 0:
        return "not computed (0)" if value == 0 else "negative"
    return None


def clean_text(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(value.replace("\x00", " ").split())
    return value or None


def patient_info(
    mrn: str | None,
    family: str | None,
    given: str | None,
    birth_date: date | None,
    sex: str | None,
) -> PatientInfo | None:
    """The cart's patient (``birth_date`` becomes YYYYMMDD), or None when the file names nobody."""
    info = PatientInfo(
        mrn=clean_text(mrn),
        family_name=clean_text(family),
        given_name=clean_text(given),
        birth_date=birth_date.strftime("%Y%m%d") if birth_date else None,
        sex=sex,
    )
    if info == PatientInfo():
        return None
    return info


def aware(acquired: datetime | None, tz: tzinfo) -> datetime | None:
    if acquired is None:
        return None
    if acquired.tzinfo is None:
        return acquired.replace(tzinfo=tz)
    return acquired


def to_reading(decoded: EcgDecoded, data: bytes, ctx: DecodeContext) -> Reading:
    """The Reading for one decoded file. ``observed_at`` is the acquisition time on the cart's clock
    (``ctx.tz`` when the file gives no zone); without a usable one, the host receive time."""
    received = ctx.now()
    device_time = aware(decoded.acquired, ctx.tz)
    # A cart file is store-and-forward: the acquisition time is when the ECG was taken, however late the
    # file arrives (STORED_RECORD keeps the pipeline's live-clock skew rule off it). A time in the future
    # or before 1990 is a cart clock that was never set: the host time is used instead.
    if device_time is None or device_time > received + timedelta(days=1) or device_time.year < 1990:
        observed, flags = received, (ReadingFlag.CLOCK_UNSET,)
    else:
        observed, flags = device_time, (ReadingFlag.STORED_RECORD,)
    measurements = tuple(
        Measurement(metric=m, value=decoded.values[m], unit=tables().metric(m).unit)
        for m in METRIC_ORDER
        if m in decoded.values
    )
    identity = ctx.device.merged(
        DeviceIdentity(
            id=ctx.device.id,
            manufacturer=clean_text(decoded.manufacturer),
            model=clean_text(decoded.model),
            serial_number=clean_text(decoded.serial_number),
            firmware=clean_text(decoded.firmware),
        )
    )
    extra = dict(decoded.extra)
    extra["format"] = decoded.format
    extra["source_sha256"] = hashlib.sha256(data).hexdigest()
    extra["source_bytes"] = str(len(data))
    return Reading(
        device=identity,
        device_class=DeviceClass.ECG,
        measurements=measurements,
        observed_at=observed,
        received_at=received,
        device_time=device_time,
        flags=flags,
        dropped=tuple(decoded.dropped),
        statements=tuple(s for s in (clean_text(x) for x in decoded.statements) if s),
        source_patient=decoded.patient,
        extra=extra,
        raw=data if len(data) <= RAW_KEEP_MAX else b"",
    )


def with_original(reading: Reading, data: bytes, name: str, media_type: str, max_bytes: int) -> Reading:
    """``reading`` with the original file attached, unless it is larger than ``max_bytes``."""
    if len(data) > max_bytes:
        extra = dict(reading.extra)
        extra["attachment_skipped"] = f"original file {len(data)} bytes > attach_max_bytes {max_bytes}"
        return reading.with_updates(extra=extra)
    attachment = Attachment(name=name, media_type=media_type, data=data)
    return reading.with_updates(attachments=(*reading.attachments, attachment))


def check_size(data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise DecodeError(f"file too large ({len(data)} bytes > limit {limit})")
    if not data:
        raise DecodeError("empty file")
