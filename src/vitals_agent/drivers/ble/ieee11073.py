"""IEEE 11073-20601 SFLOAT (16-bit) and FLOAT (32-bit) numbers as used by the Bluetooth health profiles.

``value = mantissa x 10^exponent`` with both parts two's complement. A handful of raw values with exponent
0 are *special* (NaN, NRes, ±INFINITY, reserved): they decode to :class:`Special`, never to a number
(devices.md §0 rule 3, §1.1, §1.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from vitals_agent.errors import TruncatedError

__all__ = [
    "FLOAT_SPECIALS",
    "SFLOAT_SPECIALS",
    "Number",
    "Special",
    "decode_float",
    "decode_sfloat",
    "encode_float",
    "encode_sfloat",
    "float_from_bytes",
    "sfloat_from_bytes",
]


class Special(StrEnum):
    """A special (non-numeric) IEEE 11073 value; the string is the absent-reason code we report."""

    NAN = "NaN"
    NRES = "NRes"
    POSITIVE_INFINITY = "+INFINITY"
    NEGATIVE_INFINITY = "-INFINITY"
    RESERVED = "reserved"


SFLOAT_SPECIALS: dict[int, Special] = {
    0x07FF: Special.NAN,
    0x0800: Special.NRES,
    0x07FE: Special.POSITIVE_INFINITY,
    0x0802: Special.NEGATIVE_INFINITY,
    0x0801: Special.RESERVED,
}
FLOAT_SPECIALS: dict[int, Special] = {
    0x007FFFFF: Special.NAN,
    0x00800000: Special.NRES,
    0x007FFFFE: Special.POSITIVE_INFINITY,
    0x00800002: Special.NEGATIVE_INFINITY,
    0x00800001: Special.RESERVED,
}
_SFLOAT_RAW = {v: k for k, v in SFLOAT_SPECIALS.items()}
_FLOAT_RAW = {v: k for k, v in FLOAT_SPECIALS.items()}


@dataclass(frozen=True, slots=True)
class Number:
    """A finite IEEE 11073 number. Equality is by *value* (``100x10^0 == 1000x10^-1``); the exponent is
    kept because it states the device's precision."""

    mantissa: int
    exponent: int

    @property
    def value(self) -> Decimal:
        return Decimal(self.mantissa).scaleb(self.exponent)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Number):
            return self.value == other.value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.value)


def _signed(raw: int, bits: int) -> int:
    return raw - (1 << bits) if raw & (1 << (bits - 1)) else raw


def _decode(
    raw: int, kind: str, specials: dict[int, Special], mantissa_bits: int, width: int
) -> Number | Special:
    """An IEEE 11073 number of ``width`` bits: signed exponent above a signed ``mantissa_bits`` mantissa."""
    if not 0 <= raw < 1 << width:
        raise ValueError(f"{kind} raw value must fit {width} bits")
    special = specials.get(raw)
    if special is not None:
        return special
    mantissa = _signed(raw & ((1 << mantissa_bits) - 1), mantissa_bits)
    return Number(mantissa, _signed(raw >> mantissa_bits, width - mantissa_bits))


def decode_sfloat(raw: int) -> Number | Special:
    """Decode a 16-bit SFLOAT given as an unsigned integer."""
    return _decode(raw, "SFLOAT", SFLOAT_SPECIALS, 12, 16)


def decode_float(raw: int) -> Number | Special:
    """Decode a 32-bit FLOAT given as an unsigned integer."""
    return _decode(raw, "FLOAT", FLOAT_SPECIALS, 24, 32)


def sfloat_from_bytes(data: bytes, offset: int = 0) -> Number | Special:
    if len(data) < offset + 2:
        raise TruncatedError("SFLOAT needs 2 bytes", bytes(data))
    return decode_sfloat(int.from_bytes(data[offset : offset + 2], "little"))


def float_from_bytes(data: bytes, offset: int = 0) -> Number | Special:
    if len(data) < offset + 4:
        raise TruncatedError("FLOAT needs 4 bytes", bytes(data))
    return decode_float(int.from_bytes(data[offset : offset + 4], "little"))


def encode_sfloat(value: Number | Special) -> bytes:
    """Encode to the 2 bytes on air (little-endian). Mantissas of special patterns are rejected."""
    if isinstance(value, Special):
        return _SFLOAT_RAW[value].to_bytes(2, "little")
    if not -2048 <= value.mantissa <= 2047 or not -8 <= value.exponent <= 7:
        raise ValueError(f"{value} does not fit an SFLOAT")
    raw = ((value.exponent & 0xF) << 12) | (value.mantissa & 0xFFF)
    if raw in SFLOAT_SPECIALS:
        raise ValueError(f"{value} collides with a special SFLOAT value")
    return raw.to_bytes(2, "little")


def encode_float(value: Number | Special) -> bytes:
    """Encode to the 4 bytes on air (little-endian)."""
    if isinstance(value, Special):
        return _FLOAT_RAW[value].to_bytes(4, "little")
    if not -(1 << 23) <= value.mantissa < (1 << 23) or not -128 <= value.exponent <= 127:
        raise ValueError(f"{value} does not fit a FLOAT")
    raw = ((value.exponent & 0xFF) << 24) | (value.mantissa & 0xFFFFFF)
    if raw in FLOAT_SPECIALS:
        raise ValueError(f"{value} collides with a special FLOAT value")
    return raw.to_bytes(4, "little")
