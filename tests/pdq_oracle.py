"""hl7apy STRICT validation of the ITI-21 messages (QBP^Q22^QBP_Q21 and RSP^K22^RSP_K21, HL7 v2.5).

hl7apy's v2.5 reference gives QPD-3 ("user parameters, varies") at most one occurrence, while ITI-21
(ITI TF-2a 3.21.4.1.2.2) defines QPD-3 as a *repeating* QIP field (``@PID.3.1^X~@PID.3.4.1^NS``). The
messages are therefore parsed and validated against a message profile that is hl7apy's own v2.5 reference
with exactly one change: QPD-3 may repeat. Everything else (segment order and cardinality, data types,
lengths, tables hl7apy checks) is STRICT v2.5.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from hl7apy import load_reference
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hl7apy.validation import Validator


def _repeating(ref: Any, segment: str, field: str) -> Any:
    """A copy of a message reference with ``segment``'s ``field`` allowed to repeat (also inside groups)."""
    kind, children = ref[0], ref[1]
    out = []
    for name, child_ref, cardinality, child_type in children:
        if name == segment:
            seg_kind, seg_children = child_ref[0], child_ref[1]
            seg_children = tuple((n, r, (c[0], -1) if n == field else c, t) for (n, r, c, t) in seg_children)
            child_ref = (seg_kind, seg_children, *child_ref[2:])
        elif child_type == "GRP":
            child_ref = _repeating(child_ref, segment, field)
        out.append((name, child_ref, cardinality, child_type))
    return (kind, tuple(out), *ref[2:])


@cache
def iti21_profile() -> dict[str, Any]:
    return {
        structure: _repeating(load_reference(structure, "Message", "2.5"), "QPD", "QPD_3")
        for structure in ("QBP_Q21", "RSP_K21")
    }


def validate_iti21(raw: bytes | str, structure: str) -> Any:
    """Parse and validate under STRICT; AssertionError naming the problem. Returns the hl7apy Message."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    assert "\n" not in text, "segments must be separated by CR only"
    assert text.startswith("MSH|^~\\&|"), "message must start with MSH|^~\\&|"
    profile = iti21_profile()
    try:
        message = parse_message(
            text,
            validation_level=VALIDATION_LEVEL.STRICT,
            find_groups=True,
            message_profile=profile,
        )
        Validator.validate(message, profile[structure])
    except Exception as exc:  # hl7apy raises many types; the test wants one clear failure
        raise AssertionError(f"ITI-21 oracle ({structure}): {type(exc).__name__}: {exc}") from None
    assert message.name == structure, f"message structure is {message.name}, expected {structure}"
    assert message.msh.msh_12.to_er7() == "2.5", "ITI-21 messages are HL7 v2.5"
    return message


def validate_qbp(raw: bytes | str) -> Any:
    message = validate_iti21(raw, "QBP_Q21")
    assert message.msh.msh_9.to_er7() == "QBP^Q22^QBP_Q21"
    assert message.qpd.qpd_1.to_er7() == "IHE PDQ Query"
    return message


def validate_rsp(raw: bytes | str) -> Any:
    message = validate_iti21(raw, "RSP_K21")
    assert message.msh.msh_9.to_er7() == "RSP^K22^RSP_K21"
    return message
