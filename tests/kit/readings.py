"""Readings, measurements and message profiles for tests (deterministic: the kit's clock, fixed ids)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from tests.kit.clock import T0
from vitals_agent.drivers.base import DecodeFailure, DecoderOutput
from vitals_agent.hl7.oru import MessageProfile
from vitals_agent.models import (
    Attachment,
    DeviceClass,
    DeviceIdentity,
    Flag,
    Measurement,
    Reading,
)

# Test patients: distinctive strings so a grep over logs cannot match anything else by accident.
MRN = "MRN4815162342"
FAMILY = "QUIXOTEFAMILY"
GIVEN = "ZEBEDEEGIVEN"
DOB = "19800229"

PROFILE = MessageProfile(
    facility="EXAMPLE_CLINIC",
    location="CARDIO CLINIC^EXAM 3^^EXHOSP&2.999.1&ISO",
    gateway_eui64="0A1B2CFFFE3D4E5F",
    receiving_application="EHR",
    receiving_facility="EXAMPLE_HOSP",
    assigning_authority="EXAMPLE_HOSP&2.999.1&ISO",
)
"""A complete ORU^R01 profile (MSH, PV1 location, assigning authority)."""


def profile(**change: Any) -> MessageProfile:
    """:data:`PROFILE` with some fields changed."""
    return MessageProfile(**{**PROFILE.__dict__, **change})


def m(
    metric: str,
    value: str | int | Decimal | None,
    unit: str,
    *flags: Flag,
    reason: str | None = None,
    **kw: Any,
) -> Measurement:
    """A measurement; ``value`` as text or int (exact Decimal), None with a ``reason`` (``absent_reason``).
    Flags come positionally or as ``flags=``; any other field (``site``, ``method``) as a keyword."""
    kw.setdefault("flags", flags)
    kw.setdefault("absent_reason", reason)
    return Measurement(metric=metric, value=None if value is None else Decimal(value), unit=unit, **kw)


def reading(device_class: DeviceClass, *measurements: Measurement, **kw: Any) -> Reading:
    """A reading of ``measurements`` observed and received at :data:`T0` by device ``dev-1`` (override any
    field with a keyword)."""
    kw.setdefault("device", DeviceIdentity(id="dev-1"))
    kw.setdefault("observed_at", T0)
    kw.setdefault("received_at", T0)
    return Reading(device_class=device_class, measurements=tuple(measurements), **kw)


def oximeter_reading(
    observed_at: datetime = T0, spo2: str = "97", pulse: str = "72", device_id: str = "oxi-1"
) -> Reading:
    """A pulse-oximeter reading with an identity, raw bytes and an attachment (every part a log or a
    message could leak)."""
    return Reading(
        device=DeviceIdentity(id=device_id, manufacturer="Acme", serial_number="SN123"),
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=(
            Measurement(metric="spo2", value=Decimal(spo2), unit="%"),
            Measurement(metric="pulse_rate_oximeter", value=Decimal(pulse), unit="/min"),
        ),
        observed_at=observed_at,
        received_at=observed_at,
        raw=b"\x02SPO2=97\x03",
        attachments=(Attachment(name="trace.bin", media_type="application/octet-stream", data=b"\x00\xff"),),
    )


def readings_in(outputs: Iterable[DecoderOutput]) -> list[Reading]:
    """The readings among a decoder's outputs."""
    return [o for o in outputs if isinstance(o, Reading)]


def failures_in(outputs: Iterable[DecoderOutput]) -> list[DecodeFailure]:
    """The decode failures among a decoder's outputs."""
    return [o for o in outputs if isinstance(o, DecodeFailure)]
