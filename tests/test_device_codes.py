"""The device vocabularies (``data/device_codes.toml``): what each device format calls a value, as metric
keys and units of the code tables, checked when the file is loaded."""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

import pytest

from vitals_agent.codes import DeviceCode, device_codes, parse_device_codes, tables
from vitals_agent.hl7.units import convertible

VOCABULARIES = ("masimo-ascii", "tanita", "aecg-xml", "philips-xml 1.04", "philips-xml 1.03")


def raw_file() -> dict[str, Any]:
    return tomllib.loads(
        resources.files("vitals_agent").joinpath("data/device_codes.toml").read_text("utf-8")
    )


def test_the_file_holds_the_vocabularies_the_drivers_read() -> None:
    assert tuple(raw_file()) == VOCABULARIES


@pytest.mark.parametrize("vocabulary", VOCABULARIES)
def test_every_unit_converts_to_its_metrics_canonical_unit(vocabulary: str) -> None:
    """The load checks the unit is a UCUM unit of the table; whether the normaliser can convert it is known
    above the code tables (hl7.units), so it is checked here."""
    for key, (metric, unit) in device_codes(vocabulary).items():
        assert convertible(unit, tables().metric(metric).unit), f"{vocabulary}.{key}: {unit}"


def test_a_row_without_a_unit_is_in_the_canonical_unit_and_one_with_a_unit_keeps_it() -> None:
    tanita = device_codes("tanita")
    assert tanita["Wk"] == DeviceCode("body_weight", "kg")
    assert tanita["Wp"] == DeviceCode("body_weight", "[lb_av]")
    assert list(tanita) == ["Wk", "Wp", "Hm", "MI", "FW"]  # file order: the first of Wk/Wp wins


def test_masimo_keys_are_upper_case_as_the_decoder_compares_them() -> None:
    assert all(key == key.upper() for key in device_codes("masimo-ascii"))


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("spo3", r"^tanita\.X: unknown metric key 'spo3'$"),
        ({"metric": "body_weight", "unit": "lb"}, r"^tanita\.X: 'lb' is not a UCUM unit of the unit table$"),
        ({"metric": "body_weight", "units": "kg"}, r"^tanita\.X: must be a metric key or"),
        ({"unit": "kg"}, r"^tanita\.X: must be a metric key or"),
        (7, r"^tanita\.X: must be a metric key or"),
    ],
)
def test_a_row_naming_no_metric_or_unit_of_the_code_tables_is_refused(row: object, problem: str) -> None:
    raw = raw_file()
    assert parse_device_codes(raw, tables())["tanita"]["Hm"] == DeviceCode("body_height", "cm")
    raw["tanita"]["X"] = row
    with pytest.raises(ValueError, match=problem):
        parse_device_codes(raw, tables())
