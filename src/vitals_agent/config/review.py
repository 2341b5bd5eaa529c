"""The ``[review]`` section (clinician review, issue #16) and a blood-pressure device's ``bp_protocol``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vitals_agent.models import Clinician

ReviewMode = Literal["auto", "confirm", "auto+confirm"]


class ReviewConfig(BaseModel):
    """How device readings reach the EHR with respect to a clinician's review.

    * ``auto`` (default): sent at once, OBX-11 ``R``, no clinician on the rows;
    * ``confirm``: readings wait, durably, in the review list until a signed-in clinician confirms them
      (sent with ``F`` and the clinician in OBX-16) or rejects them (never sent);
    * ``auto+confirm``: sent at once with ``R``; a confirmation sends the same observations again with
      ``F`` (same OBR-2/3, OBX-3 and OBX-4), so the EHR updates the result.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    mode: ReviewMode = "auto"
    # the signed-in clinician is signed out after this long without activity (and with the patient)
    clinician_timeout_minutes: float = Field(30.0, gt=0)
    # manual entries join a reading still waiting for review that was taken this recently (same visit)
    visit_window_minutes: float = Field(15.0, gt=0)
    # how long sent readings stay in the review list, so they can still be corrected or retracted
    keep_days: float = Field(7.0, gt=0)
    # badge id -> "FAMILY^GIVEN": names for badges that carry only the id (barcode clinician_pattern)
    clinicians: dict[str, str] = Field(default_factory=dict)

    @field_validator("clinicians")
    @classmethod
    def _roster(cls, value: dict[str, str]) -> dict[str, str]:
        for ident, name in value.items():
            if name.count("^") > 1:
                raise ValueError(f"{ident!r}: the name must be FAMILY^GIVEN")
            family, _, given = name.partition("^")
            try:
                Clinician(id=ident, family=family or None, given=given or None)
            except ValueError as exc:
                first = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
                raise ValueError(f"{ident!r}: {str(first).removeprefix('Value error, ')}") from None
        return value

    def roster_name(self, ident: str) -> tuple[str | None, str | None]:
        """(family, given) the roster gives for a badge id, or (None, None)."""
        name = self.clinicians.get(ident)
        if not name:
            return None, None
        family, _, given = name.partition("^")
        return family or None, given or None


class BpProtocol(BaseModel):
    """Automated office blood pressure: a series of ``readings`` measurements ``interval_seconds`` apart
    (the agent starts each one on a SunTech module; a BLE cuff's own series is collected as it comes); each
    reading is sent, then their mean, leaving the first out when ``discard_first``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    readings: int = Field(3, ge=2, le=10)
    interval_seconds: float = Field(60.0, ge=1, le=900)
    discard_first: bool = True

    @property
    def averaged(self) -> int:
        return self.readings - 1 if self.discard_first else self.readings
