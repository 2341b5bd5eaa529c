"""Our HL7 escaper (hl7-pcd01.md section 2.1): the table, round trips, and no forged structure."""

from __future__ import annotations

import hl7
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vitals_agent.hl7.escape import escape, escape_structured, is_well_escaped, unescape

TABLE = [
    ("|", "\\F\\"),
    ("^", "\\S\\"),
    ("&", "\\T\\"),
    ("~", "\\R\\"),
    ("\\", "\\E\\"),
    ("\r", "\\X0D\\"),
    ("\n", "\\X0A\\"),
    ("\t", "\\X09\\"),
    ("\x0b", "\\X0B\\"),
    ("\x1c", "\\X1C\\"),
    ("\x00", "\\X00\\"),
    ("\x1f", "\\X1F\\"),
    ("\x7f", "\\X7F\\"),
    # C1 controls and the Unicode line/paragraph separators: the hex of their UTF-8 bytes (issue 10)
    ("\x85", "\\XC285\\"),
    ("\x80", "\\XC280\\"),
    ("\x9f", "\\XC29F\\"),
    ("A\u2028B", "A\\XE280A8\\B"),
    ("\u2029", "\\XE280A9\\"),
    ("\xa0", "\xa0"),  # no-break space: an ordinary character
    ("R&D", "R\\T\\D"),
    ("C:\\data", "C:\\E\\data"),
    ("O'Brien-Smith Jr.", "O'Brien-Smith Jr."),
    ("Zoë Müller €", "Zoë Müller €"),  # non-ASCII stays as characters (UTF-8 on the wire, MSH-18)
    ("", ""),
]

PY_HL7 = hl7.parse("MSH|^~\\&|A|B|C|D|20250101000000+0000||ORU^R01^ORU_R01|1|P|2.6\rPID|1")


@pytest.mark.parametrize(("text", "expected"), TABLE)
def test_escape_table(text: str, expected: str) -> None:
    assert escape(text) == expected
    assert unescape(expected) == text


def test_escape_is_one_pass() -> None:
    # the backslashes introduced for "|" must not be escaped again
    assert escape("\\|") == "\\E\\\\F\\"
    assert unescape("\\E\\\\F\\") == "\\|"


def test_python_hl7_escape_is_not_what_we_do() -> None:
    """Guard for the reason this module exists: python-hl7 0.4.5 writes CR as \\.br\\ (FT only)."""
    assert "\\.br\\" in PY_HL7.escape("a\rb")
    assert escape("a\rb") == "a\\X0D\\b"


def test_structured_keeps_separators_and_escapes_leaves() -> None:
    assert (
        escape_structured("CARDIO CLINIC^EXAM 3^^EXHOSP&2.999.1&ISO")
        == "CARDIO CLINIC^EXAM 3^^EXHOSP&2.999.1&ISO"
    )
    assert escape_structured("A|B^C~D\\E") == "A\\F\\B^C\\R\\D\\E\\E"
    assert escape_structured("EXHOSP^2.999.1^ISO", components=False) == "EXHOSP&2.999.1&ISO"
    assert escape_structured("X&Y", components=False) == "X&Y"


def test_unescape_reads_other_senders() -> None:
    assert unescape("a\\.br\\b") == "a\rb"
    assert unescape("\\XC3A9\\") == "é"  # multi-byte UTF-8 in one hex sequence
    assert unescape("a\\Zvendor\\b") == "ab"  # unknown sequences are dropped, as the standard allows
    assert unescape("bold \\H\\text\\N\\") == "bold text"
    assert unescape("lone \\ backslash") == "lone \\ backslash"


def test_well_escaped() -> None:
    assert is_well_escaped("a\\F\\b\\X0D0A\\")
    assert not is_well_escaped("a\\b")
    assert not is_well_escaped("\\X0d\\")  # lower-case hex is not what we write


def python_hl7_view(text: str) -> str:
    """What python-hl7 0.4.5 reads back: it takes each \\Xhh\\ byte for a code point, so the UTF-8
    bytes we write for C1 controls and U+2028/U+2029 come back as Latin-1 characters (its limitation;
    a UTF-8 receiver and our unescape read them right)."""
    return "".join(
        c.encode().decode("latin-1") if 0x80 <= ord(c) <= 0x9F or c in "\u2028\u2029" else c for c in text
    )


@given(st.text())
def test_round_trip_ours_and_python_hl7(text: str) -> None:
    escaped = escape(text)
    assert unescape(escaped) == text
    assert PY_HL7.unescape(escaped) == python_hl7_view(text)


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_random_text_never_forges_structure(values: list[str]) -> None:
    escaped = [escape(v) for v in values]
    for e in escaped:
        assert not set(e) & set("|^~&\r\n\x0b\x1c\x85\u2028\u2029")
        assert not any(0x80 <= ord(c) <= 0x9F for c in e)
        assert is_well_escaped(e)
    segment = "OBX|" + "|".join(escaped) + "|END"  # python-hl7 strips trailing whitespace of a message
    message = "MSH|^~\\&|A|B|C|D|20250101000000+0000||ORU^R01^ORU_R01|1|P|2.6\r" + segment
    parsed = hl7.parse(message)
    assert len(parsed) == 2, "no new segment"
    obx = parsed.segment("OBX")
    assert len(obx) == len(values) + 2, "no new field"
    assert str(obx[len(values) + 1]) == "END"
    for i, value in enumerate(values, start=1):
        field = obx[i]
        assert str(field) == escaped[i - 1]
        assert parsed.unescape(str(field)) == python_hl7_view(value)
        assert unescape(str(field)) == value


@given(st.text(st.sampled_from("ab\x85\u2028\u2029\x80\x9b\x9f\xa0\r|")))
def test_line_breaks_of_every_kind_never_reach_the_wire(text: str) -> None:
    escaped = escape(text)
    assert escaped.splitlines() == ([escaped] if escaped else [])  # str.splitlines knows them all
    assert unescape(escaped) == text
