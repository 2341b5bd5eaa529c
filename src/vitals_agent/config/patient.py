"""The ``[patient]`` section: patient context per room (see the patient-context issue)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vitals_agent.config.hl7_values import check_hl7_value

# A wristband that carries only the MRN (letters, digits, '-', '.', '_'; up to 32 characters).
DEFAULT_MRN_PATTERN = r"(?P<mrn>[A-Za-z0-9][A-Za-z0-9._-]{0,31})"


def check_mrn_pattern(value: str) -> str:
    """A valid regex with a named group ``mrn`` or at least one group (group 1 is the MRN)."""
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    if "mrn" not in compiled.groupindex and compiled.groups < 1:
        raise ValueError("needs a named group (?P<mrn>...) or a capturing group for the MRN")
    return value


class PatientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # CX-4 of temporary (unbound) and bound PID-3: namespace&universal id&type, e.g. "EXCLINIC&2.999.1&ISO"
    assigning_authority: str = "VITALS_AGENT"
    patient_timeout_minutes: float = Field(30.0, gt=0)
    require_patient: bool = False
    # require_patient: a held reading not associated within this time is dropped (with an audit record)
    hold_timeout_minutes: float = Field(60.0, gt=0)
    # CX-5 identifier type of the bound PID-3 (MR = medical record number)
    identifier_type: str = "MR"
    # keyboard-wedge scans (`vitals-agent patient scan`): the whole scan must match; MRN = group "mrn" or 1
    mrn_pattern: str = DEFAULT_MRN_PATTERN

    @field_validator("assigning_authority")
    @classmethod
    def _authority(cls, value: str) -> str:
        return check_hl7_value(value, allow="^&", what="CX-4 is NAMESPACE&UNIVERSAL-ID&TYPE")

    @field_validator("identifier_type")
    @classmethod
    def _identifier_type(cls, value: str) -> str:
        if not (1 <= len(value) <= 5 and value.isascii() and value.isalpha() and value.isupper()):
            raise ValueError(f"must be 1 to 5 capital letters (HL7 table 0203, e.g. MR), not {value!r}")
        return value

    @field_validator("mrn_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return check_mrn_pattern(value)
