"""The metric and unit tables (``data/metrics.toml``) and the device vocabularies that map onto them
(``data/device_codes.toml``) as typed, read-only lookups.

Metric keys are a public contract (``../shared/reference/codes.md``). The tables are data, so that reviewing
or correcting a code is an edit to one TOML file, not to Python.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

LOCAL_CODE_SYSTEM = "99VITALS"


@dataclass(frozen=True, slots=True)
class UnitInfo:
    ucum: str
    mdc: int
    refid: str
    aliases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CodedInfo:
    """What every coded observation row (a metric, a panel) has: its names and its codes."""

    key: str
    name: str
    refid: str
    mdc: int | None
    loinc: str | None
    verified: str
    local: bool

    @property
    def send_mdc(self) -> bool:
        """Whether OBX-3 carries the MDC code. Codes whose sources conflict (mark C) and unknown codes go as
        local codes. "P/C" rows (perfusion index, pulse amplitude index) follow codes.md's interim
        decision and are sent with their MDC code."""
        return self.mdc is not None and not self.local and self.verified.split(".")[0] != "C"


@dataclass(frozen=True, slots=True)
class MetricInfo(CodedInfo):
    unit: str
    reportable: bool
    method: str | None
    unit_mdc: int | None
    minimum: Decimal  # plausible floor, canonical unit: a value below is withheld (normalise)
    maximum: Decimal  # plausible ceiling, canonical unit: a value above is withheld
    vital_sign: str | None = None  # FHIR R4 core Vital Signs profile name (bp, heartrate, bodytemp ...)
    vital_sign_loinc: str | None = None  # the LOINC code that profile requires, when `loinc` is narrower
    body_site: str | None = None  # site the metric implies, "code^display^SCT" (codes.md §3)
    manual: bool = False  # a clinician may enter it by hand (`vitals-agent manual`, the page's form)


@dataclass(frozen=True, slots=True)
class PanelInfo(CodedInfo):
    """An observation that groups metrics (the NIBP panel, the 12-lead EKG panel)."""

    vital_sign: str | None
    members: tuple[str, ...]  # metric keys, in table order
    required: tuple[str, ...]  # members always present (data-absent reason when the device gave none)
    statement_loinc: str | None  # code of the interpretation-statement component, when the panel has one
    statement_name: str | None


@dataclass(frozen=True, slots=True)
class Answer:
    """One coded answer of a qualifier: OBX-5 (CWE) ``code^display^system``."""

    key: str
    code: str
    display: str
    system: str  # HL7 coding system: SCT, HL70163, LN

    @property
    def cwe(self) -> str:
        return f"{self.code}^{self.display}^{self.system}"


@dataclass(frozen=True, slots=True)
class QualifierInfo:
    """Coded context a clinician enters by hand (BP position, arm, cuff size, temperature site, O2
    delivery): sent as a CWE observation; ``site`` answers also go to OBX-20 of the values they qualify."""

    key: str
    name: str
    refid: str
    loinc: str | None
    verified: str
    answers: dict[str, Answer]
    applies_to: str | None  # DeviceClass value of the readings it qualifies (blood_pressure ...)
    site: bool  # the answer is a body site: it becomes OBX-20 of the qualified values that have none


@dataclass(frozen=True, slots=True)
class DeviceTypeInfo:
    mdc: int
    refid: str


@dataclass(frozen=True, slots=True)
class CodeTables:
    version: str
    metrics: dict[str, MetricInfo]
    units: dict[str, UnitInfo]
    unit_aliases: dict[str, str]
    panels: dict[str, PanelInfo] = field(default_factory=dict)
    device_types: dict[str, DeviceTypeInfo] = field(default_factory=dict)  # DeviceClass value -> MDS code
    qualifiers: dict[str, QualifierInfo] = field(default_factory=dict)  # coded manual context

    def panel_of(self, metric: str) -> PanelInfo | None:
        """The panel a metric is a component of, if any."""
        return next((p for p in self.panels.values() if metric in p.members), None)

    def device_type(self, device_class: str) -> DeviceTypeInfo:
        """The MDS code for a device class (the multi-parameter monitor code when the class has none)."""
        return self.device_types.get(device_class) or self.device_types["other"]

    def metric(self, key: str) -> MetricInfo:
        try:
            return self.metrics[key]
        except KeyError:
            raise KeyError(f"unknown metric key {key!r}") from None

    def canonical_unit(self, unit: str) -> str | None:
        """The UCUM spelling for ``unit`` (already canonical, or a known alias), else None."""
        if unit in self.units:
            return unit
        return self.unit_aliases.get(unit)

    def unit_mdc(self, metric: MetricInfo, unit: str) -> UnitInfo:
        info = self.units[unit]
        if metric.unit_mdc is not None and unit == metric.unit:
            return UnitInfo(info.ucum, metric.unit_mdc, "MDC_DIM_RESP_PER_MIN", info.aliases)
        return info


def _dec(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _members(metrics: dict[str, MetricInfo], row: dict[str, object]) -> tuple[str, ...]:
    """A panel's member metrics in table order: those listed, and those whose key has its prefix."""
    listed = row.get("members", ())
    prefix = row.get("members_prefix")
    return tuple(
        key
        for key in metrics
        if (isinstance(listed, list) and key in listed)
        or (isinstance(prefix, str) and key.startswith(prefix))
    )


def _bounds(key: str, row: dict[str, object]) -> tuple[Decimal, Decimal]:
    """A metric's plausible floor and ceiling. Both are required (issue #12: an impossible value such as
    SpO2 9.8e-07 % must never reach the EHR), finite, and floor < ceiling."""
    low, high = _dec(row.get("min")), _dec(row.get("max"))
    if low is None or high is None:
        raise ValueError(f"metrics.{key}: needs both 'min' and 'max' (plausible floor and ceiling)")
    if not (low.is_finite() and high.is_finite() and low < high):
        raise ValueError(f"metrics.{key}: 'min' ({low}) must be below 'max' ({high})")
    return low, high


def _coded(key: str, row: dict[str, Any]) -> dict[str, Any]:
    """The :class:`CodedInfo` fields of a ``[metrics.KEY]`` or ``[panels.KEY]`` row."""
    return {
        "key": key,
        "name": row["name"],
        "refid": row["refid"],
        "mdc": row.get("mdc"),
        "loinc": row.get("loinc"),
        "verified": row.get("verified", "U.-"),
        "local": bool(row.get("local", False)),
    }


def _data(name: str) -> dict[str, Any]:
    return tomllib.loads(resources.files("vitals_agent").joinpath(f"data/{name}").read_text("utf-8"))


@cache
def tables() -> CodeTables:
    return parse_tables(_data("metrics.toml"))


def parse_tables(raw: dict[str, Any]) -> CodeTables:
    """The tables from the parsed TOML. Raises ValueError for a metric without plausible bounds."""
    bounds = {key: _bounds(key, row) for key, row in raw["metrics"].items()}
    metrics = {
        key: MetricInfo(
            **_coded(key, row),
            unit=row["unit"],
            reportable=bool(row.get("reportable", True)),
            method=row.get("method"),
            unit_mdc=row.get("unit_mdc"),
            minimum=bounds[key][0],
            maximum=bounds[key][1],
            vital_sign=row.get("vital_sign"),
            vital_sign_loinc=row.get("vital_sign_loinc"),
            body_site=row.get("body_site"),
            manual=bool(row.get("manual", False)),
        )
        for key, row in raw["metrics"].items()
    }
    qualifiers = {key: _qualifier(key, row) for key, row in raw.get("qualifiers", {}).items()}
    panels = {
        key: PanelInfo(
            **_coded(key, row),
            vital_sign=row.get("vital_sign"),
            members=_members(metrics, row),
            required=tuple(row.get("required", ())),
            statement_loinc=row.get("statement_loinc"),
            statement_name=row.get("statement_name"),
        )
        for key, row in raw.get("panels", {}).items()
    }
    device_types = {
        key: DeviceTypeInfo(mdc=row["mdc"], refid=row["refid"])
        for key, row in raw.get("device_types", {}).items()
    }
    units = {
        ucum: UnitInfo(ucum=ucum, mdc=row["mdc"], refid=row["refid"], aliases=tuple(row.get("aliases", ())))
        for ucum, row in raw["units"].items()
    }
    aliases = {alias: ucum for ucum, info in units.items() for alias in info.aliases}
    return CodeTables(
        version=str(raw.get("version", "")),
        metrics=metrics,
        units=units,
        unit_aliases=aliases,
        panels=panels,
        device_types=device_types,
        qualifiers=qualifiers,
    )


def _qualifier(key: str, row: dict[str, Any]) -> QualifierInfo:
    """One ``[qualifiers.KEY]`` row; every answer is ``code^display^system``."""
    answers: dict[str, Answer] = {}
    for name, text in row.get("answers", {}).items():
        parts = str(text).split("^")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"qualifiers.{key}.answers.{name}: must be 'code^display^system'")
        answers[name] = Answer(name, *parts)
    if not answers:
        raise ValueError(f"qualifiers.{key}: needs answers")
    return QualifierInfo(
        key=key,
        name=row["name"],
        refid=row["refid"],
        loinc=row.get("loinc"),
        verified=row.get("verified", "U.-"),
        answers=answers,
        applies_to=row.get("applies_to"),
        site=bool(row.get("site", False)),
    )


class DeviceCode(NamedTuple):
    """What a device's own name for a value stands for: a metric key, and the UCUM unit the device reports
    the value in (the metric's canonical unit unless its row says otherwise)."""

    metric: str
    unit: str


@cache
def _device_codes() -> dict[str, dict[str, DeviceCode]]:
    return parse_device_codes(_data("device_codes.toml"), tables())


def device_codes(vocabulary: str) -> dict[str, DeviceCode]:
    """One table of ``data/device_codes.toml`` (``masimo-ascii``, ``tanita``, ``aecg-xml``, ``philips-xml
    1.04`` ...): the device's name for a value -> :class:`DeviceCode`, in the file's order."""
    return _device_codes()[vocabulary]


def parse_device_codes(raw: dict[str, Any], codes: CodeTables) -> dict[str, dict[str, DeviceCode]]:
    """The vocabularies from the parsed TOML. Raises ValueError for a row whose metric is not in ``codes``
    or whose unit is not one of its UCUM units, spelt as there."""
    return {
        name: {key: _device_code(f"{name}.{key}", row, codes) for key, row in rows.items()}
        for name, rows in raw.items()
    }


def _device_code(where: str, row: object, codes: CodeTables) -> DeviceCode:
    """One row: ``"metric"`` or ``{ metric = "...", unit = "..." }``."""
    fields = {"metric": row} if isinstance(row, str) else row
    if not isinstance(fields, dict) or not {"metric"} <= fields.keys() <= {"metric", "unit"}:
        raise ValueError(f"{where}: must be a metric key or {{ metric = ..., unit = ... }}")
    metric = fields["metric"]
    if metric not in codes.metrics:
        raise ValueError(f"{where}: unknown metric key {metric!r}")
    unit = fields.get("unit", codes.metrics[metric].unit)
    if unit not in codes.units:
        raise ValueError(f"{where}: {unit!r} is not a UCUM unit of the unit table")
    return DeviceCode(metric, unit)
