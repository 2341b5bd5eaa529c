"""The ``[pdq]`` section: confirm the patient against the EHR (IHE PDQ, ITI-21; or PDQm over FHIR).

Without a ``[pdq]`` section the agent trusts a scanned or typed MRN as it always did. With one, every
``patient set``, wristband scan and page entry first asks the EHR who the MRN is; a person confirms the
answer before the room is bound.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vitals_agent.config.rules import http_url, needs, oid_system


class PdqConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["v2", "fhir"] = "v2"  # v2: QBP^Q22 over MLLP (ITI-21); fhir: PDQm (ITI-78)
    # --- v2: the Patient Demographics Supplier's MLLP address, TLS keys as in [ehr] ---
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool = False
    tls_verify: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None  # client certificate (mutual TLS; also for fhir)
    key_file: Path | None = None
    server_name: str | None = None
    receiving_application: str = ""  # MSH-5 of the query (which patient source the supplier should ask)
    receiving_facility: str = ""  # MSH-6
    # --- fhir (PDQm): GET {base_url}/Patient?identifier={identifier_system}|{mrn} ---
    base_url: Annotated[str, http_url("https://ehr.example/fhir")] | None = None
    identifier_system: str | None = None  # default: urn:oid:<universal id of assigning_authority>
    bearer_token_file: Path | None = None  # a file holding the OAuth bearer token (0600)
    # --- both ---
    timeout_seconds: float = Field(5.0, gt=0, le=120)
    # The patient identifier domain (HD: "NAMESPACE&UNIVERSAL_ID&TYPE"). Sent in QPD-3 and required in the
    # answer's PID-3.4; empty: any domain the supplier answers with.
    assigning_authority: str = ""
    max_results: int = Field(10, ge=1, le=50)  # RCP-2 (v2) / _count (fhir)
    # EHR down, slow or answering AE/AR: "refuse" binds nothing; "typed" binds what was typed, unverified.
    pdq_fallback: Literal["refuse", "typed"] = "refuse"
    confirm_timeout_seconds: float = Field(120.0, gt=0)  # a pending confirmation ends after this

    @field_validator("assigning_authority")
    @classmethod
    def _authority(cls, value: str) -> str:
        if re.search(r"[|~\\\x00-\x1f]", value):
            raise ValueError("must be NAMESPACE&UNIVERSAL_ID&TYPE without | ~ \\ or control characters")
        return value.strip()

    @model_validator(mode="after")
    def _mode_keys(self) -> PdqConfig:
        if self.mode == "v2" and self.port is None:
            raise ValueError('port is required with mode = "v2" (the PDQ supplier\'s MLLP port)')
        if self.mode == "fhir":
            if self.base_url is None:
                raise ValueError('base_url is required with mode = "fhir"')
            if self.fhir_system() is None:
                raise ValueError(
                    'identifier_system is required with mode = "fhir" (or an assigning_authority '
                    "with an ISO universal id)"
                )
        needs(self, "key_file", "cert_file", " (a client key needs its certificate)")
        return self

    def fhir_system(self) -> str | None:
        """The FHIR identifier system searched in PDQm mode."""
        return self.identifier_system or oid_system(self.assigning_authority)
