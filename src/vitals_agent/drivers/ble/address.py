"""Bluetooth device addresses: the one pattern and the one spelling (upper case, colon separated)."""

from __future__ import annotations

import re

_ADDRESS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")


def parse_address(text: str) -> str:
    """``aa:bb:cc:dd:ee:ff`` -> ``AA:BB:CC:DD:EE:FF``; ValueError for anything else."""
    value = text.strip()
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"{text!r} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)")
    return value.upper()


def same_address(a: str, b: str) -> bool:
    """Whether two spellings name the same device (BlueZ reports upper case, users type either)."""
    return a.strip().upper() == b.strip().upper()
