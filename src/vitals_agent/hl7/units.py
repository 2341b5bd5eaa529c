"""Exact unit conversion between the UCUM units of codes.md section 2, keeping the device's resolution.

Factors are exact by definition: 1 ``[lb_av]`` = 0.45359237 ``kg``; 1 ``[in_i]`` = 2.54 ``cm``;
°F = °C x 9/5 + 32; 1 ``mm[Hg]`` = 0.133322387415 ``kPa``; plus ``g``/``kg`` and ``m``/``cm``.

Precision rule (documented, codes.md section 2 "round to the resolution of the device in the target unit"):
the input's last decimal place is the device resolution (``70.50`` kg -> 0.01 kg). That step is converted
to the target unit and rounded to the *nearest power of ten on a log scale*; the result is rounded
(half up) to that many decimals, never fewer than 0. Examples::

    70.50 kg     -> 155.43 [lb_av]   (0.01 kg = 0.022 lb  -> 0.01 lb)
    155.4 [lb_av]-> 70.5 kg          (0.1 lb  = 0.045 kg  -> 0.1 kg)
    37.60 Cel    -> 99.68 [degF]     (0.01 °C = 0.018 °F  -> 0.01 °F)
    98.6 [degF]  -> 37.0 Cel         (0.1 °F  = 0.056 °C  -> 0.1 °C)
    175.0 cm     -> 68.9 [in_i]      (0.1 cm  = 0.039 in  -> 0.1 in)
    120 mm[Hg]   -> 16.0 kPa         (1 mmHg  = 0.133 kPa -> 0.1 kPa)

So the stated precision stays as close as a decimal can get to what the device resolved (within a factor
of about 3), neither inventing digits nor dropping them. A conversion to the same unit returns the value
unchanged. Pure functions, no I/O: the normaliser may reuse :func:`convert`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, localcontext

from vitals_agent.codes import tables
from vitals_agent.errors import VitalsAgentError

# dimension -> unit -> factor to the dimension's base unit (value_in_base = value * factor)
_LINEAR: dict[str, dict[str, Decimal]] = {
    "mass": {"kg": Decimal(1), "g": Decimal("0.001"), "[lb_av]": Decimal("0.45359237")},
    "length": {"cm": Decimal(1), "m": Decimal(100), "[in_i]": Decimal("2.54")},
    "pressure": {"kPa": Decimal(1), "mm[Hg]": Decimal("0.133322387415")},
}
_TEMPERATURE = ("Cel", "[degF]")
_NINE_FIFTHS = Decimal(9) / Decimal(5)


class UnitConversionError(VitalsAgentError, ValueError):
    """The two units cannot be converted into each other (different dimensions or unknown units)."""


def _dimension(unit: str) -> str | None:
    if unit in _TEMPERATURE:
        return "temperature"
    for name, units in _LINEAR.items():
        if unit in units:
            return name
    return None


def convertible(from_unit: str, to_unit: str) -> bool:
    """True when :func:`convert` supports ``from_unit`` -> ``to_unit`` (same unit included)."""
    if from_unit == to_unit:
        return True
    dim = _dimension(from_unit)
    return dim is not None and dim == _dimension(to_unit)


def supported_units() -> frozenset[str]:
    """Every UCUM unit that takes part in some conversion."""
    units = set(_TEMPERATURE)
    for group in _LINEAR.values():
        units.update(group)
    return frozenset(units)


def _scale(from_unit: str, to_unit: str) -> Decimal:
    """How much one step in ``from_unit`` is worth in ``to_unit``."""
    if from_unit in _TEMPERATURE:
        return _NINE_FIFTHS if from_unit == "Cel" else 1 / _NINE_FIFTHS
    dim = _LINEAR[_dimension(from_unit) or ""]
    return dim[from_unit] / dim[to_unit]


def convert(value: Decimal, from_unit: str, to_unit: str) -> Decimal:
    """``value`` in ``from_unit`` expressed in ``to_unit``, at the equivalent resolution (see module doc).

    Raises :class:`UnitConversionError` for unsupported pairs, a non-finite value, or a value whose
    exponent is out of any physical range (a malformed device FLOAT).
    """
    try:
        return _convert(value, from_unit, to_unit)
    except ArithmeticError:  # decimal.InvalidOperation / Overflow for absurd exponents (e.g. 1e127 degF)
        raise UnitConversionError(f"cannot convert {value} {from_unit} to {to_unit}: out of range") from None


def _convert(value: Decimal, from_unit: str, to_unit: str) -> Decimal:
    if not value.is_finite():
        raise UnitConversionError(f"cannot convert the non-finite value {value}")
    if from_unit == to_unit:
        return value
    if not convertible(from_unit, to_unit):
        raise UnitConversionError(f"cannot convert {from_unit!r} to {to_unit!r}")
    with localcontext() as ctx:
        ctx.prec = 40
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)  # finite values have an int exponent
        step = Decimal(1).scaleb(exponent) * _scale(from_unit, to_unit)
        decimals = max(0, -round(math.log10(step)))
        if from_unit == "Cel":
            result = value * _NINE_FIFTHS + 32
        elif from_unit == "[degF]":
            result = (value - 32) / _NINE_FIFTHS
        else:
            dim = _LINEAR[_dimension(from_unit) or ""]
            result = value * dim[from_unit] / dim[to_unit]
        return result.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def check_preferences(preferences: Mapping[str, str]) -> None:
    """The one check of ``[ehr] preferred_units`` (``{canonical unit = preferred unit}``): both units known
    to the metric tables and convertible into each other. Raises ValueError saying what is wrong."""
    known = tables().units
    for src, dst in preferences.items():
        for unit in (src, dst):
            if unit not in known:
                raise ValueError(f"{unit!r} is not a known UCUM unit (e.g. kg, [lb_av], Cel, [degF])")
        if not convertible(src, dst):
            raise ValueError(f"cannot convert {src} to {dst}")
