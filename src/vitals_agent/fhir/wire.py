"""FHIR JSON on the wire: compact UTF-8, decimals written exactly as measured.

A FHIR ``decimal`` keeps its precision (``36.60`` is not ``36.6``: the trailing zero is the device's
resolution). ``json.dumps`` and ``fhir.resources``' own serialiser write numbers through ``float``, which
drops it, so resources are built as plain dicts with :class:`~decimal.Decimal` values and written here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

_encode_str = json.JSONEncoder(ensure_ascii=False).encode


def _decimal(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"a FHIR decimal must be finite, not {value}")
    text = format(value, "f")
    return "0" if text in ("-0", "+0") else text


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_encode_str(value))
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, Decimal):
        out.append(_decimal(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_encode_str(str(key)))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif value is None:
        out.append("null")
    else:
        raise TypeError(f"cannot write {type(value).__name__} as FHIR JSON")


def dumps(value: Any) -> str:
    """Compact JSON for ``value`` (dicts, lists, str, int, bool, Decimal, None); Decimals verbatim."""
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def dumps_bytes(value: Any) -> bytes:
    return dumps(value).encode("utf-8")
