"""The ``[ehr]`` section: where and how messages are delivered."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vitals_agent.config.hl7_values import hl7_value

ACK_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")


AckType = Literal["AL", "NE", "ER", "SU"]
HdName = Annotated[str, hl7_value(allow="^", what="NAMESPACE or NAMESPACE^UNIVERSAL-ID^TYPE")]  # MSH-5, MSH-6


class EhrConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool = True  # deliver HL7 v2 ORUs over MLLP (off: only [fhir] receives the readings)
    host: str = "127.0.0.1"
    port: int = Field(2575, ge=1, le=65535)
    connect_timeout_seconds: float = Field(10.0, gt=0)
    ack_timeout_seconds: float = Field(30.0, gt=0)
    backoff_min_seconds: float = Field(0.5, gt=0)
    backoff_max_seconds: float = Field(60.0, gt=0)
    # false: one connection per message (connect, send, ACK, close), for receivers that mishandle a
    # kept-open connection (Mirth's sender term; issue 17)
    keep_connection_open: bool = True
    # --- delivery: TLS and acknowledgement policy (hl7-pcd01.md §9.2) ---
    tls: bool = False
    tls_verify: bool = True  # verify the receiver's certificate and host name (only turn off for a lab)
    # (relative file names: against the config file's folder)
    ca_file: Path | None = Field(None, strict=False)  # PEM CA bundle for the receiver; default: system store
    cert_file: Path | None = Field(None, strict=False)  # client certificate (PEM) for mutual TLS
    key_file: Path | None = Field(
        None, strict=False
    )  # its private key (PEM, unencrypted); default: in cert_file
    server_name: str | None = None  # name to verify in the receiver's certificate (SNI); default: host
    max_attempts: int = Field(3, ge=1)  # AE/CE answers before a message is dead-lettered
    retry_negative: tuple[str, ...] = Field(
        ("AE", "CE"), strict=False
    )  # negative ACK codes retried; others dead-letter at once
    backlog_warning: int = Field(100, ge=1)  # WARNING when the queue reaches this depth (and each doubling)
    # MSH-3 namespace; universal id = gateway EUI-64
    sending_application: Annotated[str, hl7_value(what="MSH-3 namespace: one name")] = "VITALS_AGENT"
    receiving_application: HdName = ""  # MSH-5
    receiving_facility: HdName = ""  # MSH-6
    processing_id: Literal["P", "T", "D"] = "P"  # MSH-11: production, training/test, debugging
    accept_ack_type: AckType = "AL"  # MSH-15
    application_ack_type: AckType = "NE"  # MSH-16
    # enhanced mode (MSH-16 AL/SU/ER): after a CA, the application ACK is awaited this long, then the
    # message is reported overdue (ER: silence is success); it arrives on the same connection or here
    app_ack_timeout_seconds: float = Field(300.0, gt=0)
    app_ack_port: int | None = Field(None, ge=0, le=65535)  # inbound MLLP port for application ACKs (0: any)
    app_ack_host: str = "0.0.0.0"  # the address that port listens on
    # --- message shape (ORU builder, hl7-pcd01.md; see agent/pipeline/profile.py) ---
    hl7_version: Literal["2.6", "2.5.1"] = "2.6"  # MSH-12
    code_system: Literal["mdc", "loinc", "mdc+loinc"] = "mdc+loinc"  # OBX-3 primary (+ alternate)
    # canonical UCUM unit -> unit the site wants, e.g. {kg = "[lb_av]", Cel = "[degF]", cm = "[in_i]"}
    preferred_units: dict[str, str] = Field(default_factory=dict)
    hierarchy_rows: bool = True  # send the MDS device row (OBX-18 there) or put OBX-18 on every row
    # --- what the receiver can take (issue 17) ---
    charset: Literal["UNICODE UTF-8", "8859/1", "ASCII"] = "UNICODE UTF-8"  # MSH-18 and the encoding
    unrepresentable: Literal["escape", "marker"] = "escape"  # a character the charset cannot carry
    marker: str = Field("?", min_length=1, max_length=8)  # what replaces it with unrepresentable = "marker"
    max_message_bytes: int | None = Field(None, ge=1024)  # the receiver's limit, e.g. 99999
    oversize: Literal["drop-attachment", "dead-letter"] = "drop-attachment"  # a message over it

    @field_validator("marker")
    @classmethod
    def _marker(cls, value: str) -> str:
        if not value.isascii() or not value.isprintable() or any(c in value for c in "|^~\\&"):
            raise ValueError('printable ASCII without the HL7 delimiters | ^ ~ \\ &, e.g. "?"')
        return value

    @field_validator("preferred_units")
    @classmethod
    def _units(cls, value: dict[str, str]) -> dict[str, str]:
        from vitals_agent.hl7.units import check_preferences

        check_preferences(value)
        return value

    @field_validator("retry_negative", mode="before")
    @classmethod
    def _codes(cls, value: object) -> object:
        if isinstance(value, str):
            value = [c for c in value.replace(" ", ",").split(",") if c]
        if isinstance(value, list | tuple):
            codes = tuple(str(c).strip().upper() for c in value)
            bad = [c for c in codes if c not in ACK_CODES or c in ("AA", "CA")]
            if bad:
                raise ValueError(
                    f"unknown negative acknowledgement code(s) {', '.join(bad)}: use AE, AR, CE, CR"
                )
            return codes
        return value

    @model_validator(mode="after")
    def _backoff_bounds(self) -> EhrConfig:
        if self.backoff_min_seconds > self.backoff_max_seconds:
            raise ValueError("backoff_min_seconds must not exceed backoff_max_seconds")
        return self
