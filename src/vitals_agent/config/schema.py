"""The configuration file: TOML, validated by pydantic, every problem reported as ``key.path: message``.

Top-level sections each live in their own module (``agent_section``, ``ehr``, ``patient``, ``control``,
``pdq``);
``[[devices]]`` tables have common keys (below) plus the keys of their driver's options model, so a driver
adds its own keys without touching this file. Unknown keys are errors everywhere (typo protection).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vitals_agent import host
from vitals_agent.config.agent_section import AgentConfig
from vitals_agent.config.alerts import AlertsConfig
from vitals_agent.config.audit import AuditConfig
from vitals_agent.config.central import LocalKeys
from vitals_agent.config.control import ControlConfig
from vitals_agent.config.ehr import EhrConfig
from vitals_agent.config.fhir import FhirConfig
from vitals_agent.config.metrics import MetricsConfig
from vitals_agent.config.patient import PatientConfig
from vitals_agent.config.pdq import PdqConfig
from vitals_agent.config.review import BpProtocol, ReviewConfig
from vitals_agent.drivers.base import DriverOptions, driver_class, local_path_keys
from vitals_agent.errors import ConfigError, UnknownDriverError

ReportPolicy = Literal["every", "stable", "interval"]

NO_EKG_FOLDERS = (
    f"EKG folders are not supported on {host.PLATFORM_NAME} yet (the agent reads and moves their files only "
    "without following links, relative to a folder handle, which is implemented for Linux only): send "
    "the EKGs over serial (driver scp-ecg-serial, no save_folder) or run the agent on Linux"
)

COMMON_DEVICE_KEYS = frozenset(
    {
        "id",
        "driver",
        "report",
        "report_seconds",
        "enabled",
        "max_clock_skew_seconds",
        "description",
        "silent_after_seconds",
        "bp_protocol",
    }
)


class DeviceConfig(BaseModel):
    """One ``[[devices]]`` table. ``options`` holds the driver-specific keys, validated by the driver."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, strict=True)

    id: str = Field(min_length=1)
    driver: str
    report: ReportPolicy | None = None  # default: stable for continuous devices, every otherwise
    report_seconds: float = Field(10.0, gt=0)
    enabled: bool = True
    max_clock_skew_seconds: float | None = Field(None, gt=0)
    description: str = ""
    # status shows "silent" after this long without a byte while the link is up; absent: the driver's
    # default (30 s for oximeters and heart-rate straps, none for spot-check devices); 0: never
    silent_after_seconds: float | None = Field(None, ge=0)
    # automated office blood pressure (blood-pressure drivers only): readings, interval_seconds, discard_first
    bp_protocol: BpProtocol | None = None
    options: DriverOptions = Field(strict=False)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not all(c.isascii() and (c.isalnum() or c in "._-") for c in value):
            raise ValueError(
                f"{value!r}: use letters, digits, '.', '_' and '-' only (the id goes into OBX-18)"
            )
        return value

    @model_validator(mode="after")
    def _bp_protocol(self) -> DeviceConfig:
        if self.bp_protocol is None or not self.driver:
            return self
        from vitals_agent.models import DeviceClass

        if driver_class(self.driver).device_class is not DeviceClass.BLOOD_PRESSURE:
            raise ValueError(
                f"bp_protocol: only for blood-pressure drivers (suntech-advantage, ble-blood-pressure), "
                f"not {self.driver!r}"
            )
        return self

    def report_policy(self) -> ReportPolicy:
        if self.report is not None:
            return self.report
        return "stable" if driver_class(self.driver).continuous else "every"

    def silence_limit(self) -> float | None:
        """Seconds of silence with the link up after which the device counts as silent (None: never)."""
        limit = self.silent_after_seconds
        if limit is None:
            limit = driver_class(self.driver).silent_after_seconds
        return limit or None

    def settings(self) -> dict[str, Any]:
        """Common keys and driver keys as one flat dict (what the config file said, with defaults)."""
        data = self.model_dump(exclude={"options"})
        data.update(self.options.model_dump())
        return data


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    agent: AgentConfig
    ehr: EhrConfig = Field(default_factory=EhrConfig)
    patient: PatientConfig = Field(default_factory=PatientConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    fhir: FhirConfig = Field(default_factory=FhirConfig)
    pdq: PdqConfig | None = None  # confirm the patient against the EHR (IHE PDQ); absent: trust the MRN
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _destinations(self) -> Config:
        if not (self.ehr.enabled or self.fhir.enabled):
            raise ValueError("no destination: enable [ehr] (HL7 v2) or [fhir] (FHIR R4), or both")
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


# pydantic's error types -> what to write in the file, in words (never a regular expression)
_TYPE_WORDS = {
    "bool_type": "must be true or false (without quotes)",
    "bool_parsing": "must be true or false (without quotes)",
    "int_type": "must be a whole number (without quotes)",
    "int_parsing": "must be a whole number (without quotes)",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number (without quotes)",
    "float_parsing": "must be a number (without quotes)",
    "string_type": "must be text in quotes",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "path_type": "must be a path in quotes",
    "missing": "required",
    "extra_forbidden": "unknown key",
    "string_pattern_mismatch": "has characters this key does not allow",
}


def _shown(value: object) -> str:
    if isinstance(value, str):
        return f'the text "{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _message(err: Any) -> str:
    kind = err["type"]
    if kind in _TYPE_WORDS:
        msg = _TYPE_WORDS[kind]
        if kind.endswith(("_type", "_parsing")) and kind not in ("missing",):
            msg += f", not {_shown(err.get('input'))}"
        return msg
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if msg.startswith("Input should be "):
        return "must be " + msg[len("Input should be ") :]
    if msg.startswith("String should have at least 1 character"):
        return "must not be empty"
    if msg.startswith("String should have "):
        return "must have " + msg[len("String should have ") :]
    return msg


def _problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        out.append((_loc(prefix, loc), _message(err)))
    return out


def _resolve(value: object, base: Path | None, *, only_dotted: bool = False) -> object:
    """A relative path string made absolute against ``base`` (the config file's folder)."""
    if base is None or not isinstance(value, str) or not value or "://" in value:
        return value
    if only_dotted and not value.startswith(("./", "../", ".\\", "..\\")):
        return value  # a serial port name such as COM3 or ttyUSB0 is not a path
    path = Path(value).expanduser()
    return value if path.is_absolute() else str(base / path)


def _device(
    index: int, raw: object, problems: list[tuple[str, str]], base: Path | None
) -> dict[str, Any] | None:
    """One ``[[devices]]`` table: common keys and driver keys validated side by side (every problem)."""
    where = f"devices[{index}]"
    if not isinstance(raw, dict):
        problems.append((where, "must be a table"))
        return None
    common = {k: v for k, v in raw.items() if k in COMMON_DEVICE_KEYS}
    specific = {k: v for k, v in raw.items() if k not in COMMON_DEVICE_KEYS}
    name = raw.get("driver")
    options: DriverOptions | None = None
    if not isinstance(name, str):
        problems.append((f"{where}.driver", "required: the driver name (see `vitals-agent drivers`)"))
    else:
        try:
            cls = driver_class(name)
        except UnknownDriverError as exc:
            problems.append((f"{where}.driver", str(exc)))
        else:
            for key in local_path_keys(cls.options_model):
                if key in specific:
                    specific[key] = _resolve(specific[key], base)
            if "port" in specific:
                specific["port"] = _resolve(specific["port"], base, only_dotted=True)
            try:
                options = cls.options_model.model_validate(specific)
            except ValidationError as exc:
                problems.extend(_problems(exc, where))
            if not host.HAS_NOFOLLOW_DIRS and raw.get("enabled", True) is not False:
                problems.extend(
                    (f"{where}.{key}", NO_EKG_FOLDERS)
                    for key in local_path_keys(cls.options_model)
                    if specific.get(key)
                )
    # The common keys are checked whatever the driver keys say (stand-in options when those failed).
    stand_in = options if options is not None else DriverOptions()
    try:
        DeviceConfig.model_validate(
            {**common, "driver": name if isinstance(name, str) else "", "options": stand_in}
        )
    except ValidationError as exc:
        problems.extend(p for p in _problems(exc, where) if p[0] != f"{where}.driver")
        return None
    return None if options is None else {**common, "options": options}


def _duplicate_ids(raw_devices: list[Any], problems: list[tuple[str, str]]) -> None:
    first: dict[str, int] = {}
    for i, raw in enumerate(raw_devices):
        dev_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(dev_id, str):
            continue
        if dev_id in first:
            problems.append(
                (
                    f"devices[{i}].id",
                    f"{dev_id!r} is already the id of devices[{first[dev_id]}]; ids must be unique",
                )
            )
        else:
            first[dev_id] = i


def _resolve_sections(doc: dict[str, Any], base: Path | None) -> dict[str, Any]:
    """Relative ``data_dir`` and TLS file names against the config file's folder."""
    out = dict(doc)
    for section, keys in (
        ("agent", ("data_dir", "config_source", "config_ca_file")),
        ("ehr", ("ca_file", "cert_file", "key_file")),
    ):
        table = out.get(section)
        if isinstance(table, dict):
            out[section] = {k: (_resolve(v, base) if k in keys else v) for k, v in table.items()}
    return out


def parse_config(data: dict[str, Any], *, base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML document. Raises :class:`ConfigError` listing every problem.

    ``base_dir``: the folder relative paths are taken from (the config file's folder); None leaves them as
    written.
    """
    problems: list[tuple[str, str]] = []
    doc = _resolve_sections(dict(data), base_dir)
    raw_devices = doc.pop("devices", [])
    if not isinstance(raw_devices, list):
        problems.append(("devices", "must be an array of tables ([[devices]])"))
        raw_devices = []
    devices = [_device(i, raw, problems, base_dir) for i, raw in enumerate(raw_devices)]
    _duplicate_ids(raw_devices, problems)
    config: Config | None = None
    try:
        if not problems:
            config = Config.model_validate({**doc, "devices": devices})
        else:  # the sections still get checked, so every problem is reported at once
            Config.model_validate({**doc, "devices": []})
    except ValidationError as exc:
        problems.extend(p for p in _problems(exc) if not p[0].startswith("devices["))
    if problems or config is None:
        raise ConfigError(problems or [("(top level)", "invalid configuration")])
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file. Raises :class:`ConfigError` with every problem found.

    Relative paths in it (``data_dir``, EKG ``folder``, TLS files, a ``port`` written ``./name``) are taken
    from the config file's folder, not from the current directory (which is ``/`` under systemd).
    This is the local file alone; with ``[agent] config_source`` the running agent merges the central
    layers over it (:mod:`vitals_agent.config.central`).
    """
    path = Path(path)
    return parse_config(read_document(path), base_dir=path.absolute().parent)


def local_keys(data: dict[str, Any], *, base_dir: Path | None = None) -> LocalKeys:
    """The local-only ``[agent]`` keys of a document (data folder, central source and its key).
    Raises :class:`ConfigError`."""
    agent = _resolve_sections(dict(data), base_dir).get("agent")
    try:
        return LocalKeys.model_validate(agent if isinstance(agent, dict) else {})
    except ValidationError as exc:
        raise ConfigError(_problems(exc, "agent")) from None


def read_document(path: Path) -> dict[str, Any]:
    """The parsed TOML of a configuration file (not validated). Raises :class:`ConfigError`."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([(str(path), "file not found")]) from None
    except PermissionError:
        raise ConfigError(
            [(str(path), f"cannot read it: permission denied ({_reader_hint(path)})")]
        ) from None
    except IsADirectoryError:
        raise ConfigError([(str(path), "is a folder, not a configuration file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([(str(path), f"not UTF-8 text (byte {exc.start})")]) from None
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read it: {exc.strerror or exc}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(path), f"not valid TOML: {exc}")]) from None


def _reader_hint(path: Path) -> str:
    """Who may read the file, for the error line."""
    try:
        import grp
        import pwd

        st = path.stat()
        owner = pwd.getpwuid(st.st_uid).pw_name
        group = grp.getgrgid(st.st_gid).gr_name
    except (ImportError, KeyError, OSError):
        return "run as a user who may read it"
    mode = f"{st.st_mode & 0o777:o}"
    if st.st_mode & 0o040 and group != owner:
        return f"it is {owner}:{group} mode {mode}; run as {owner} or as a member of group {group}"
    return f"it is {owner}:{group} mode {mode}; run as {owner}"
