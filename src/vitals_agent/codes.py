"""The metric and unit tables (``data/metrics.toml``) as typed, read-only lookups.

Metric keys are a public contract (``../shared/reference/codes.md``). The table is data, so that reviewing
or correcting a code is an edit to one TOML file, not to Python.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources

LOCAL_CODE_SYSTEM = "99VITALS"


@dataclass(frozen=True, slots=True)
class UnitInfo:
    ucum: str
    mdc: int
    refid: str
    aliases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MetricInfo:
    key: str
    name: str
    refid: str
    unit: str
    mdc: int | None
    loinc: str | None
    verified: str
    local: bool
    reportable: bool
    method: str | None
    unit_mdc: int | None
    minimum: Decimal | None
    maximum: Decimal | None

    @property
    def send_mdc(self) -> bool:
        """Whether OBX-3 carries the MDC code. Codes whose sources conflict (mark C) and unknown codes go
        as local codes. "P/C" rows (perfusion index, pulse amplitude index) follow codes.md's interim
        decision and are sent with their MDC code."""
        return self.mdc is not None and not self.local and self.verified.split(".")[0] != "C"


@dataclass(frozen=True, slots=True)
class CodeTables:
    version: str
    metrics: dict[str, MetricInfo]
    units: dict[str, UnitInfo]
    unit_aliases: dict[str, str]

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


@cache
def tables() -> CodeTables:
    raw = tomllib.loads(resources.files("vitals_agent").joinpath("data/metrics.toml").read_text("utf-8"))
    metrics = {
        key: MetricInfo(
            key=key,
            name=row["name"],
            refid=row["refid"],
            unit=row["unit"],
            mdc=row.get("mdc"),
            loinc=row.get("loinc"),
            verified=row.get("verified", "U.-"),
            local=bool(row.get("local", False)),
            reportable=bool(row.get("reportable", True)),
            method=row.get("method"),
            unit_mdc=row.get("unit_mdc"),
            minimum=_dec(row.get("min")),
            maximum=_dec(row.get("max")),
        )
        for key, row in raw["metrics"].items()
    }
    units = {
        ucum: UnitInfo(ucum=ucum, mdc=row["mdc"], refid=row["refid"], aliases=tuple(row.get("aliases", ())))
        for ucum, row in raw["units"].items()
    }
    aliases = {alias: ucum for ucum, info in units.items() for alias in info.aliases}
    return CodeTables(version=str(raw.get("version", "")), metrics=metrics, units=units, unit_aliases=aliases)
