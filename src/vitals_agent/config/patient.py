"""The ``[patient]`` section: patient context per room (see the patient-context issue)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PatientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # CX-4 of temporary (unbound) and bound PID-3: namespace&universal id&type, e.g. "EXCLINIC&2.999.1&ISO"
    assigning_authority: str = "VITALS_AGENT"
    patient_timeout_minutes: float = Field(30.0, gt=0)
    require_patient: bool = False
