"""Configuration -> the ORU builder's :class:`~vitals_agent.hl7.oru.MessageProfile` and the FHIR builder's
:class:`~vitals_agent.fhir.bundle.FhirProfile`."""

from __future__ import annotations

from datetime import UTC, tzinfo
from types import MappingProxyType
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from vitals_agent.config.schema import Config
from vitals_agent.hl7.oru import MessageProfile
from vitals_agent.models import eui64_digits

if TYPE_CHECKING:  # the FHIR builder loads only when [fhir] is enabled
    from vitals_agent.fhir.bundle import FhirProfile


def message_zone(config: Config) -> tzinfo:
    """The zone DTMs are written in: ``[agent] timezone`` (with its offset) when set, else UTC."""
    return ZoneInfo(config.agent.timezone) if config.agent.timezone else UTC


# The [ehr] message keys MessageProfile takes under the same name (hl7_version and preferred_units,
# which it takes as version and read-only, are passed on their own).
EHR_MESSAGE_KEYS = (
    "sending_application", "receiving_application", "receiving_facility", "processing_id",
    "accept_ack_type", "application_ack_type", "code_system", "hierarchy_rows",
    "charset", "unrepresentable", "marker", "max_message_bytes", "oversize",
)  # fmt: skip


def message_profile(config: Config, gateway_eui64: str) -> MessageProfile:
    """The receiver profile for this site: ``[agent]``, ``[ehr]`` and ``[patient]`` values; DTMs in
    :func:`message_zone`."""
    ehr = config.ehr
    return MessageProfile(
        facility=config.agent.facility,
        location=config.agent.location,
        gateway_eui64=eui64_digits(gateway_eui64),
        version=ehr.hl7_version,
        preferred_units=MappingProxyType(dict(ehr.preferred_units)),
        assigning_authority=config.patient.assigning_authority,
        tz=message_zone(config),
        **{name: getattr(ehr, name) for name in EHR_MESSAGE_KEYS},
    )


def fhir_profile(config: Config, gateway_eui64: str) -> FhirProfile:
    """The FHIR destination's profile: ``[fhir]`` content keys, the room and zone from ``[agent]``."""
    from vitals_agent.fhir.bundle import FhirProfile

    fhir = config.fhir
    system = fhir.patient_system(config.patient.assigning_authority)
    return FhirProfile(
        gateway_eui64=eui64_digits(gateway_eui64),
        patient_system=system or "urn:vitals-agent:mrn",
        location=config.agent.location,
        tz=message_zone(config),
        attachments=fhir.attachments,
        create_patient=fhir.create_patient,
        encounter_system=fhir.encounter_identifier_system,
        clinician_system=fhir.clinician_identifier_system,
    )
