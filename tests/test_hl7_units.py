"""Exact unit conversion with a documented precision rule (codes.md section 2)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vitals_agent.hl7.units import UnitConversionError, convert, convertible, supported_units


@pytest.mark.parametrize(
    ("value", "src", "dst", "expected"),
    [
        ("70.50", "kg", "[lb_av]", "155.43"),
        ("155.4", "[lb_av]", "kg", "70.5"),
        ("70", "kg", "[lb_av]", "154"),
        ("37.60", "Cel", "[degF]", "99.68"),
        ("37.6", "Cel", "[degF]", "99.7"),
        ("98.6", "[degF]", "Cel", "37.0"),
        ("-40", "Cel", "[degF]", "-40"),
        ("175.0", "cm", "[in_i]", "68.9"),
        ("68.9", "[in_i]", "cm", "175.0"),
        ("1.755", "m", "cm", "175.5"),
        ("120", "mm[Hg]", "kPa", "16.0"),
        ("16.0", "kPa", "mm[Hg]", "120"),
        ("72.345", "kg", "g", "72345"),
    ],
)
def test_conversions_and_precision(value: str, src: str, dst: str, expected: str) -> None:
    result = convert(Decimal(value), src, dst)
    assert format(result, "f") == expected


def test_exact_factors() -> None:
    # 1 lb = 0.45359237 kg exactly; with enough input digits nothing is lost
    assert convert(Decimal("1.00000000"), "[lb_av]", "kg") == Decimal("0.45359237")
    assert convert(Decimal("1.000"), "[in_i]", "cm") == Decimal("2.540")
    assert convert(Decimal("212.0"), "[degF]", "Cel") == Decimal("100.0")


def test_same_unit_is_identity() -> None:
    value = Decimal("03.60")
    assert convert(value, "%", "%") is value


def test_unsupported_pairs() -> None:
    assert not convertible("kg", "cm")
    assert not convertible("%", "1")
    assert convertible("Cel", "Cel")
    with pytest.raises(UnitConversionError, match="cannot convert 'kg' to 'cm'"):
        convert(Decimal(1), "kg", "cm")
    with pytest.raises(UnitConversionError, match="non-finite"):
        convert(Decimal("NaN"), "kg", "[lb_av]")
    assert {"kg", "[lb_av]", "Cel", "[degF]", "cm", "[in_i]", "mm[Hg]", "kPa"} <= supported_units()


@given(
    st.decimals(min_value=Decimal("0.5"), max_value=Decimal(500), places=2, allow_nan=False),
    st.sampled_from([("kg", "[lb_av]"), ("Cel", "[degF]"), ("cm", "[in_i]"), ("mm[Hg]", "kPa")]),
)
def test_round_trip_stays_within_one_step(value: Decimal, pair: tuple[str, str]) -> None:
    src, dst = pair
    there = convert(value, src, dst)
    back = convert(there, dst, src)
    step_there = Decimal(1).scaleb(int(there.as_tuple().exponent))
    # converting back lands within the resolution of the intermediate value (plus rounding of the last step)
    assert abs(back - value) <= step_there * 3 + Decimal(1).scaleb(int(back.as_tuple().exponent))
