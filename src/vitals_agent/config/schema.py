"""The configuration file: TOML, validated by pydantic, every problem reported as ``key.path: message``.

Top-level sections each live in their own module (``agent_section``, ``ehr``, ``patient``, ``control``);
``[[devices]]`` tables have common keys (below) plus the keys of their driver's options model, so a driver
adds its own keys without touching this file. Unknown keys are errors everywhere (typo protection).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vitals_agent.config.agent_section import AgentConfig
from vitals_agent.config.control import ControlConfig
from vitals_agent.config.ehr import EhrConfig
from vitals_agent.config.fhir import FhirConfig
from vitals_agent.config.patient import PatientConfig
from vitals_agent.drivers.base import DriverOptions, driver_class
from vitals_agent.errors import ConfigError, UnknownDriverError

ReportPolicy = Literal["every", "stable", "interval"]

COMMON_DEVICE_KEYS = frozenset(
    {"id", "driver", "report", "report_seconds", "enabled", "max_clock_skew_seconds", "description"}
)


class DeviceConfig(BaseModel):
    """One ``[[devices]]`` table. ``options`` holds the driver-specific keys, validated by the driver."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    driver: str
    report: ReportPolicy | None = None  # default: stable for continuous devices, every otherwise
    report_seconds: float = Field(10.0, gt=0)
    enabled: bool = True
    max_clock_skew_seconds: float | None = Field(None, gt=0)
    description: str = ""
    options: DriverOptions

    def report_policy(self) -> ReportPolicy:
        if self.report is not None:
            return self.report
        return "stable" if driver_class(self.driver).continuous else "every"

    def settings(self) -> dict[str, Any]:
        """Common keys and driver keys as one flat dict (what the config file said, with defaults)."""
        data = self.model_dump(exclude={"options"})
        data.update(self.options.model_dump())
        return data


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: AgentConfig
    ehr: EhrConfig = Field(default_factory=EhrConfig)
    patient: PatientConfig = Field(default_factory=PatientConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    fhir: FhirConfig = Field(default_factory=FhirConfig)
    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _destinations(self) -> Config:
        if self.fhir.enabled and self.fhir.patient_system(self.patient.assigning_authority) is None:
            raise ValueError(
                "[fhir] needs patient_identifier_system (the FHIR system of MRNs, e.g. urn:oid:2.999.1), "
                "or a [patient] assigning_authority with an ISO universal id"
            )
        return self

    @model_validator(mode="after")
    def _unique_ids(self) -> Config:
        seen: set[str] = set()
        for dev in self.devices:
            if dev.id in seen:
                raise ValueError(f"device id {dev.id!r} is used twice")
            seen.add(dev.id)
        return self


def _loc(prefix: str, loc: tuple[int | str, ...]) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] = f"{parts[-1]}[{item}]"
            else:
                parts.append(f"[{item}]")
        else:
            parts.append(str(item))
    return ".".join(parts) or "(top level)"


def _problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        loc = tuple(x for x in err["loc"] if x not in ("function-after[_where(), SerialOptions]",))
        out.append((_loc(prefix, loc), msg))
    return out


def _device(index: int, raw: object, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    where = f"devices[{index}]"
    if not isinstance(raw, dict):
        problems.append((where, "must be a table"))
        return None
    common = {k: v for k, v in raw.items() if k in COMMON_DEVICE_KEYS}
    specific = {k: v for k, v in raw.items() if k not in COMMON_DEVICE_KEYS}
    name = raw.get("driver")
    if not isinstance(name, str):
        problems.append((f"{where}.driver", "required: the driver name (see `vitals-agent drivers`)"))
        return None
    try:
        cls = driver_class(name)
    except UnknownDriverError as exc:
        problems.append((f"{where}.driver", str(exc)))
        return None
    try:
        options = cls.options_model.model_validate(specific)
    except ValidationError as exc:
        problems.extend(_problems(exc, where))
        return None
    return {**common, "options": options}


def parse_config(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document. Raises :class:`ConfigError` listing every problem."""
    problems: list[tuple[str, str]] = []
    doc = dict(data)
    raw_devices = doc.pop("devices", [])
    devices: list[dict[str, Any]] = []
    if not isinstance(raw_devices, list):
        problems.append(("devices", "must be an array of tables ([[devices]])"))
        raw_devices = []
    for i, raw in enumerate(raw_devices):
        dev = _device(i, raw, problems)
        devices.append(dev if dev is not None else {})
    try:
        # Validate devices individually first, so their errors carry the right index.
        for i, dev in enumerate(devices):
            if dev:
                try:
                    DeviceConfig.model_validate(dev)
                except ValidationError as exc:
                    problems.extend(_problems(exc, f"devices[{i}]"))
        config = Config.model_validate({**doc, "devices": [d for d in devices if d]})
    except ValidationError as exc:
        problems.extend(p for p in _problems(exc) if not p[0].startswith("devices["))
        config = None
    if problems or config is None:
        raise ConfigError(problems or [("(top level)", "invalid configuration")])
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file. Raises :class:`ConfigError` with every problem found."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([(str(path), "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([(str(path), f"cannot read: {exc}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(path), f"not valid TOML: {exc}")]) from None
    return parse_config(data)
