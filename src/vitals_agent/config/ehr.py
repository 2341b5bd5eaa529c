"""The ``[ehr]`` section: where and how messages are delivered."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EhrConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(2575, ge=1, le=65535)
    connect_timeout_seconds: float = Field(10.0, gt=0)
    ack_timeout_seconds: float = Field(30.0, gt=0)
    backoff_min_seconds: float = Field(0.5, gt=0)
    backoff_max_seconds: float = Field(60.0, gt=0)
    sending_application: str = "VITALS_AGENT"  # MSH-3 namespace; universal id = gateway EUI-64
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    processing_id: str = Field("P", pattern="^[PTD]$")  # MSH-11
    accept_ack_type: str = "AL"  # MSH-15
    application_ack_type: str = "NE"  # MSH-16
