"""Configuration values that go into MSH and PV1 as written: no HL7 delimiters where they are not structure.

The ORU builder escapes every leaf, so a stray ``|`` could not forge a field; but a facility or location
the site typed with a delimiter would reach the EHR as ``\\F\\`` and match nothing there. ``check-config``
refuses it instead, in words. ``^`` (component) and ``&`` (subcomponent) are allowed only where the
value's HL7 data type has that structure (``allow``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

_NAMES = {
    "|": "'|' (the HL7 field separator)",
    "~": "'~' (the HL7 repetition separator)",
    "\\": "'\\' (the HL7 escape character)",
    "^": "'^' (the HL7 component separator)",
    "&": "'&' (the HL7 subcomponent separator)",
    "\r": "a line break",
    "\n": "a line break",
}
_INVISIBLE = {"\u0085", "\u2028", "\u2029"}  # line breaks outside ASCII


def check_hl7_value(value: str, *, allow: str = "", what: str = "") -> str:
    """``value`` unchanged, or ValueError naming the first character it must not contain.

    ``allow`` lists the delimiters that are structure in this value (e.g. ``"^"`` for an HD).
    """
    for char in value:
        if char in _NAMES and char not in allow:
            hint = f" ({what})" if what else ""
            raise ValueError(f"must not contain {_NAMES[char]}{hint}")
        if (ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 or char in _INVISIBLE) and char not in allow:
            raise ValueError(f"must not contain the control character U+{ord(char):04X}")
    return value


def check_location(value: str) -> str:
    """PV1-3 (PL): components with ``^``; ``&`` only inside the HD components (4, 10 and 11)."""
    check_hl7_value(value, allow="^&")
    for index, component in enumerate(value.split("^"), start=1):
        if "&" in component and index not in (4, 10, 11):
            raise ValueError(
                f"must not contain '&' (the HL7 subcomponent separator) in component {index}: only the "
                "facility (4th component) is written as NAMESPACE&UNIVERSAL-ID&TYPE"
            )
    return value


def hl7_value(*, allow: str = "", what: str = "") -> AfterValidator:
    """:func:`check_hl7_value` as a field's validator: ``Annotated[str, hl7_value(allow="^", what=...)]``."""
    return AfterValidator(lambda value: check_hl7_value(value, allow=allow, what=what))


Location = Annotated[str, AfterValidator(check_location)]  # PV1-3, checked by :func:`check_location`
