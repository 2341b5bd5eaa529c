"""IEEE 11073-20601 SFLOAT / FLOAT: worked values, every special value, property tests."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vitals_agent.drivers.ble.ieee11073 import (
    FLOAT_SPECIALS,
    SFLOAT_SPECIALS,
    Number,
    Special,
    decode_float,
    decode_sfloat,
    encode_float,
    encode_sfloat,
    float_from_bytes,
    sfloat_from_bytes,
)
from vitals_agent.errors import TruncatedError


@pytest.mark.parametrize(
    ("hex_bytes", "mantissa", "exponent", "value"),
    [
        ("BD F0", 189, -1, "18.9"),  # 0xF0BD, Nordic
        ("78 00", 120, 0, "120"),
        ("78 F1", 376, -1, "37.6"),
        ("FB 0F", -5, 0, "-5"),
        ("E8 F3", 1000, -1, "100.0"),
        ("64 00", 100, 0, "100"),
        ("00 00", 0, 0, "0"),
        ("FF 77", 2047, 7, "2.047E+10"),
        ("01 88", -2047, -8, "-2.047E-5"),
    ],
)
def test_sfloat_worked_values(hex_bytes: str, mantissa: int, exponent: int, value: str) -> None:
    number = sfloat_from_bytes(bytes.fromhex(hex_bytes))
    assert isinstance(number, Number)
    assert (number.mantissa, number.exponent) == (mantissa, exponent)
    assert number.value == Decimal(value)
    assert encode_sfloat(number) == bytes.fromhex(hex_bytes)


def test_non_canonical_encodings_compare_equal() -> None:
    assert sfloat_from_bytes(bytes.fromhex("E8 F3")) == sfloat_from_bytes(bytes.fromhex("64 00"))
    assert format(Number(1000, -1).value, "f") == "100.0"  # the device's precision is kept


@pytest.mark.parametrize(
    ("hex_bytes", "value"),
    [
        ("B0 0E 00 FE", "37.60"),
        ("DA 03 00 FF", "98.6"),
        ("FF FF FF 00", "-1"),
        ("FF FF 7F 7F", "8388607E+127"),
    ],
)
def test_float_worked_values(hex_bytes: str, value: str) -> None:
    number = float_from_bytes(bytes.fromhex(hex_bytes))
    assert isinstance(number, Number)
    assert number.value == Decimal(value)
    assert encode_float(number) == bytes.fromhex(hex_bytes)


@pytest.mark.parametrize(
    ("raw", "special"),
    [
        (0x07FF, Special.NAN),
        (0x0800, Special.NRES),
        (0x07FE, Special.POSITIVE_INFINITY),
        (0x0802, Special.NEGATIVE_INFINITY),
        (0x0801, Special.RESERVED),
    ],
)
def test_sfloat_specials_both_ways(raw: int, special: Special) -> None:
    assert decode_sfloat(raw) is special
    assert encode_sfloat(special) == raw.to_bytes(2, "little")


@pytest.mark.parametrize(
    ("raw", "special"),
    [
        (0x007FFFFF, Special.NAN),
        (0x00800000, Special.NRES),
        (0x007FFFFE, Special.POSITIVE_INFINITY),
        (0x00800002, Special.NEGATIVE_INFINITY),
        (0x00800001, Special.RESERVED),
    ],
)
def test_float_specials_both_ways(raw: int, special: Special) -> None:
    assert decode_float(raw) is special
    assert encode_float(special) == raw.to_bytes(4, "little")


def test_numbers_that_would_collide_with_specials_are_refused() -> None:
    for mantissa in (2047, -2048, 2046, -2046, -2047):
        with pytest.raises(ValueError, match="special"):
            encode_sfloat(Number(mantissa, 0))
    with pytest.raises(ValueError, match="does not fit"):
        encode_sfloat(Number(2048, 0))
    with pytest.raises(ValueError, match="does not fit"):
        encode_sfloat(Number(1, 8))
    with pytest.raises(ValueError, match="special"):
        encode_float(Number(0x7FFFFF, 0))
    with pytest.raises(ValueError, match="does not fit"):
        encode_float(Number(1 << 23, 0))


def test_short_input_is_truncated() -> None:
    with pytest.raises(TruncatedError):
        sfloat_from_bytes(b"\x01")
    with pytest.raises(TruncatedError):
        float_from_bytes(b"\x01\x02\x03")


sfloat_numbers = st.builds(Number, st.integers(-2048, 2047), st.integers(-8, 7)).filter(
    lambda n: not (n.exponent == 0 and (n.mantissa & 0xFFF) in SFLOAT_SPECIALS)
)
float_numbers = st.builds(Number, st.integers(-(1 << 23), (1 << 23) - 1), st.integers(-128, 127)).filter(
    lambda n: not (n.exponent == 0 and (n.mantissa & 0xFFFFFF) in FLOAT_SPECIALS)
)


@given(sfloat_numbers)
def test_sfloat_round_trip(number: Number) -> None:
    decoded = sfloat_from_bytes(encode_sfloat(number))
    assert isinstance(decoded, Number)
    assert (decoded.mantissa, decoded.exponent) == (number.mantissa, number.exponent)
    assert decoded.value == Decimal(number.mantissa) * Decimal(10) ** number.exponent


@given(float_numbers)
def test_float_round_trip(number: Number) -> None:
    decoded = float_from_bytes(encode_float(number))
    assert isinstance(decoded, Number)
    assert (decoded.mantissa, decoded.exponent) == (number.mantissa, number.exponent)
    assert decoded.value == number.value


@given(st.integers(0, 0xFFFF))
def test_every_sfloat_decodes_and_re_encodes_to_the_same_bytes(raw: int) -> None:
    decoded = decode_sfloat(raw)
    assert isinstance(decoded, Special) == (raw in SFLOAT_SPECIALS)
    assert encode_sfloat(decoded) == raw.to_bytes(2, "little")


@given(st.integers(0, 0xFFFFFFFF))
def test_every_float_decodes_and_re_encodes_to_the_same_bytes(raw: int) -> None:
    decoded = decode_float(raw)
    assert isinstance(decoded, Special) == (raw in FLOAT_SPECIALS)
    assert encode_float(decoded) == raw.to_bytes(4, "little")


@given(sfloat_numbers, st.integers(1, 3))
def test_scaled_encodings_are_equal_values(number: Number, shift: int) -> None:
    """m x 10^e == (m x 10^k) x 10^(e-k): equal by value whenever the scaled form fits."""
    scaled = Number(number.mantissa * 10**shift, number.exponent - shift)
    if -2048 <= scaled.mantissa <= 2047 and scaled.exponent >= -8:
        assert sfloat_from_bytes(encode_sfloat(scaled)) == sfloat_from_bytes(encode_sfloat(number))
