"""Per-model quirks: BLE devices that do not follow their profile to the letter (issue #12 item 5).

A device's quirks are looked up from what it says about itself in Device Information (Manufacturer Name
0x2A29, Model Number 0x2A24, read on connect) or, for a device whose Device Information is missing or
unreadable, from its ``model = "..."`` configuration key. The table is data: adding a model is adding a
row, with the source that documents the deviation. A device that matches no row is decoded by the
profile as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class BpQuirks:
    """How a blood-pressure cuff's Blood Pressure Measurement (0x2A35) differs from BLS 1.0/1.1."""

    key: str
    description: str
    pulse_big_endian: bool = False  # the pulse-rate SFLOAT is sent most significant byte first
    status_big_endian: bool = False  # the measurement-status u16 is sent most significant byte first
    user_byte_always: bool = False  # a user-id byte is sent whether or not flag bit 3 announces it


@dataclass(frozen=True)
class _Rule:
    model: re.Pattern[str]
    manufacturer: re.Pattern[str]  # must match when the device names its manufacturer
    quirks: BpQuirks


BEURER_BM85 = BpQuirks(
    key="beurer-bm85",
    description="Beurer BM85 family: pulse rate and status big-endian, a user byte always present",
    pulse_big_endian=True,
    status_big_endian=True,
    user_byte_always=True,
)

# Source of the BM85 row: issue #12 ("the Beurer BM85 family sends pulse and status big-endian and always a
# user byte; today the pulse is dropped and a 'body movement' status is invented"), checked against the
# bytes in tests/test_ble_quirks.py. Model numbers as Beurer prints them: "BM85", "BM 85", "BM-85".
_BP_RULES: tuple[_Rule, ...] = (
    _Rule(
        model=re.compile(r"^(?:beurer\s+)?bm[\s-]?85(?![0-9])", re.I),
        manufacturer=re.compile(r"beurer", re.I),
        quirks=BEURER_BM85,
    ),
)


def bp_quirks(manufacturer: str | None, model: str | None) -> BpQuirks | None:
    """The quirks of the cuff with this Device Information (or configured ``model``), if it has any."""
    if not model:
        return None
    for rule in _BP_RULES:
        if rule.model.search(model.strip()) and (not manufacturer or rule.manufacturer.search(manufacturer)):
            return rule.quirks
    return None
