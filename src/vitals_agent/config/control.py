"""The ``[control]`` section: the local control API and status page (loopback only)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ControlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    host: str = Field("127.0.0.1", pattern=r"^(127\.\d+\.\d+\.\d+|localhost|::1)$")
    port: int = Field(8765, ge=0, le=65535)  # 0 = pick a free port (written to data_dir/control.json)
