"""The ``[patient]`` section: patient context per room (see the patient-context issue)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vitals_agent.config.hl7_values import hl7_value

# A wristband that carries only the MRN (letters, digits, '-', '.', '_'; up to 32 characters): the
# pattern and its check live with the scanner driver, which applies them.
from vitals_agent.drivers.barcode import DEFAULT_MRN_PATTERN, check_mrn_pattern

__all__ = ["DEFAULT_MRN_PATTERN", "PatientConfig", "check_mrn_pattern"]


class PatientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # CX-4 of temporary (unbound) and bound PID-3: namespace&universal id&type, e.g. "EXCLINIC&2.999.1&ISO"
    assigning_authority: Annotated[str, hl7_value(allow="^&", what="CX-4 is NAMESPACE&UNIVERSAL-ID&TYPE")] = (
        "VITALS_AGENT"
    )
    patient_timeout_minutes: float = Field(30.0, gt=0)
    require_patient: bool = False
    # require_patient: a held reading not associated within this time is dropped (with an audit record)
    hold_timeout_minutes: float = Field(60.0, gt=0)
    # CX-5 identifier type of the bound PID-3 (MR = medical record number)
    identifier_type: str = "MR"
    # keyboard-wedge scans (`vitals-agent patient scan`): the whole scan must match; MRN = group "mrn" or 1
    mrn_pattern: str = DEFAULT_MRN_PATTERN

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
