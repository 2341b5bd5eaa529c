"""The ``[fhir]`` section: a FHIR R4 server that receives every reading as a transaction Bundle.

It is a second destination beside ``[ehr]`` (HL7 v2 over MLLP): either or both may be enabled, and a
reading is done when every enabled destination has it. Authentication: a bearer token read from a file, or
SMART Backend Services (OAuth 2.0 client credentials with a signed JWT) when ``token_url``, ``client_id``
and ``private_key_file`` are set; with either, optionally mutual TLS (``cert_file``/``key_file``). TLS is
verified by default against the system trust store or ``ca_file``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vitals_agent.config.rules import http_url, needs, oid_system

DEFAULT_SCOPE = (
    "system/Observation.write system/Device.write system/Location.write system/DocumentReference.write"
    " system/Patient.read"
)
Url = Annotated[str, http_url("https://fhir.example.org/r4")]


class FhirConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    base_url: Url | None = None  # e.g. https://fhir.example.org/r4 (the transaction is POSTed here)
    # --- authentication ---
    bearer_token_file: Path | None = None  # a file holding the bearer token (0600), re-read on 401
    token_url: Url | None = None  # SMART Backend Services token endpoint
    client_id: str | None = None  # the registered client id (iss and sub of the JWT)
    private_key_file: Path | None = None  # PEM RSA or EC private key that signs the client assertion
    key_id: str | None = None  # "kid" of that key in the JWKS the server knows
    jwt_algorithm: Literal["RS384", "ES384"] | None = None  # default: from the key type
    scope: str = DEFAULT_SCOPE
    # --- TLS (https:// URLs; the same keys as [ehr]) ---
    tls_verify: bool = True  # verify the server's certificate and name (only turn off for a lab)
    ca_file: Path | None = None  # PEM CA bundle; default: the system trust store
    cert_file: Path | None = None  # client certificate (PEM) for mutual TLS
    key_file: Path | None = None  # its private key (PEM, unencrypted); default: inside cert_file
    # --- delivery ---
    connect_timeout_seconds: float = Field(10.0, gt=0)
    timeout_seconds: float = Field(30.0, gt=0)  # for the whole answer to one Bundle
    backoff_min_seconds: float = Field(0.5, gt=0)
    backoff_max_seconds: float = Field(60.0, gt=0)
    retry_after_max_seconds: float = Field(3600.0, gt=0)  # a longer Retry-After is capped to this
    backlog_warning: int = Field(100, ge=1)  # WARNING when this many Bundles wait (and each doubling)
    # --- content ---
    patient_identifier_system: str | None = None  # default: urn:oid:<[patient] assigning_authority OID>
    create_patient: bool = False  # create an unknown Patient (conditionally) instead of failing the Bundle
    attachments: bool = True  # EKG originals as DocumentReferences
    encounter_identifier_system: str | None = None  # visit numbers are sent only when this is set
    clinician_identifier_system: str = "urn:vitals-agent:clinician"

    @property
    def tls(self) -> bool:
        """TLS is on for an https:// base URL (the key [ehr]'s TLS helpers read)."""
        return bool(self.base_url and self.base_url.startswith("https://"))

    @property
    def smart(self) -> bool:
        """SMART Backend Services authorisation is configured."""
        return self.token_url is not None

    @field_validator(
        "patient_identifier_system", "encounter_identifier_system", "clinician_identifier_system"
    )
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", value):
            raise ValueError("must be an absolute URI, e.g. urn:oid:2.16.840.1.113883.3.999 or https://...")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FhirConfig:
        if self.enabled and self.base_url is None:
            raise ValueError("base_url is required when [fhir] is enabled")
        if self.backoff_min_seconds > self.backoff_max_seconds:
            raise ValueError("backoff_min_seconds must not exceed backoff_max_seconds")
        needs(self, "key_file", "cert_file", " (a client key needs its certificate)")
        smart_keys = {"client_id": self.client_id, "private_key_file": self.private_key_file}
        if self.token_url is not None:
            missing = [k for k, v in smart_keys.items() if v is None]
            if missing:
                raise ValueError(f"token_url (SMART Backend Services) needs {' and '.join(missing)} too")
            if self.bearer_token_file is not None:
                raise ValueError("set either bearer_token_file or token_url, not both")
        elif any(v is not None for v in smart_keys.values()):
            raise ValueError("client_id and private_key_file are used only with token_url")
        return self

    def patient_system(self, assigning_authority: str) -> str | None:
        """The Patient.identifier system of MRNs: configured, or ``urn:oid:`` of the authority's ISO id."""
        return self.patient_identifier_system or oid_system(assigning_authority)
