"""Issue #12 item 6: control characters in device text (SCP-ECG device fields, BLE strings, any device
identity text) are stripped at the decoder boundary, by one sanitiser the models apply, so no driver's text
reaches a message or the status page raw."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracle import validate_oru
from tests.test_ecg_fixtures import ctx, scp_device_tag, scp_record, scp_section1, scp_section7, scp_section8
from vitals_agent.agent.runtime import DeviceStatus
from vitals_agent.drivers.ble import uuids as U
from vitals_agent.drivers.ble.drivers import identity_from_dis
from vitals_agent.drivers.ecg import scp
from vitals_agent.drivers.tanita import TanitaDecoder, encode_record
from vitals_agent.hl7.oru import MessageProfile, build_oru
from vitals_agent.models import DeviceIdentity, Reading, device_text, device_text_lines

CONTROLS = (
    "".join(map(chr, [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)])) + "\u2028\u2029\u202e\u200b\ufeff"
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("BC-418\x00\x00\x00", "BC-418"),  # NUL padding
        ("UA-651BLE\x07", "UA-651BLE"),  # BEL
        ("\x1b[31mACME\x1b[0m", "[31mACME[0m"),  # an escape sequence loses its ESC: printable, inert
        ("Omron\r\nHEM-7600T", "Omron HEM-7600T"),  # line breaks are spaces in a one-line field
        ("Model\x85X\u2028Y\u2029Z", "Model X Y Z"),  # NEL and Unicode line/paragraph separators
        ("SN\x9b12\x80", "SN12"),  # C1 controls
        ("evil\u202etxt.exe", "eviltxt.exe"),  # bidi override (display spoofing)
        ("zero\u200bwidth\ufeff", "zerowidth"),  # format characters
        ("  spaced\t\tout  ", "spaced out"),
        ("Müller Ω 1.2", "Müller Ω 1.2"),  # printable non-ASCII is kept
        ("\x00\x00", None),
        ("", None),
        (None, None),
    ],
)
def test_device_text(raw: str | None, clean: str | None) -> None:
    assert device_text(raw) == clean


def test_multiline_device_text_keeps_its_lines() -> None:
    assert device_text_lines("Sinus rhythm\r\n\x07Normal ECG\u2028\n\nBorderline\x85QT") == (
        "Sinus rhythm\nNormal ECG\nBorderline\nQT"
    )


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(), st.sampled_from(CONTROLS)), max_size=60))
def test_sanitised_text_is_printable_trimmed_and_stable(raw: str) -> None:
    text = device_text(raw)
    if text is None:
        return
    assert text.isprintable() and text == text.strip() and "  " not in text
    assert device_text(text) == text
    lines = device_text_lines(raw)
    assert lines is not None and all(line.isprintable() and line for line in lines.split("\n"))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(), st.sampled_from(CONTROLS)), max_size=40))
def test_every_identity_field_and_extra_is_sanitised_by_the_model(raw: str) -> None:
    identity = DeviceIdentity(id="d", manufacturer=raw, model=raw, serial_number=raw, firmware=raw)
    for value in (identity.manufacturer, identity.model, identity.serial_number, identity.firmware):
        assert value is None or value.isprintable()
    merged = DeviceIdentity(id="d").merged(identity)  # what the runtime learns for the status page
    assert merged == identity


def test_ble_device_information_strings() -> None:
    identity = identity_from_dis(
        "cuff",
        {
            U.MANUFACTURER_NAME: b"A&D\x1b[2J Medical\x00\x00",
            U.MODEL_NUMBER: b"UA-651BLE\r\n\x07",
            U.SERIAL_NUMBER: b"5140\xe2\x80\xae9876",  # UTF-8 U+202E (right-to-left override)
            U.FIRMWARE_REVISION: b"\x00\x00\x00",
        },
    )
    assert (identity.manufacturer, identity.model, identity.serial_number, identity.firmware) == (
        "A&D[2J Medical",
        "UA-651BLE",
        "51409876",
        None,
    )


def _scp_with_dirty_device_fields() -> bytes:
    device = scp_device_tag("MA\x07C55", "SN\x1b123", "1.2\x85b", "AC\x9bME\x00")
    return scp_record(
        {
            1: scp_section1(device=device),
            7: scp_section7(),
            8: scp_section8(["Sinus\x07 rhythm", "Normal\x85ECG\x1b"]),
        }
    )


def test_scp_ecg_device_fields_and_statements_are_printable_in_the_reading_and_the_message() -> None:
    reading = scp.decode(_scp_with_dirty_device_fields(), ctx())
    assert (reading.device.manufacturer, reading.device.model, reading.device.serial_number) == (
        "ACME",
        "MAC55",
        "SN123",
    )
    assert reading.device.firmware == "1.2 b"
    assert reading.statements == ("Sinus rhythm", "Normal ECG")
    profile = MessageProfile(facility="F", location="C^R", gateway_eui64="0011223344556677")
    raw = build_oru(reading, profile, control_id="C1", created_at=reading.received_at)
    text = raw.decode("utf-8")
    assert not [c for c in text if not c.isprintable() and c != "\r"]  # segments end in CR; nothing else
    validate_oru(raw)
    status = DeviceStatus(id="cart-1", driver="scp-ecg")
    status.identity = {k: v for k, v in reading.device.model_dump().items() if v is not None and k != "id"}
    assert all(str(v).isprintable() for v in status.as_dict()["identity"].values())


def test_tanita_model_and_unknown_keys() -> None:
    record = encode_record([("MO", '"BC\x07-418\x1b"'), ("Wk", "68.4"), ("X\x07Y", "a\x1fb")])
    [reading] = TanitaDecoder(ctx()).feed(record)
    assert isinstance(reading, Reading)
    assert reading.device.model == "BC-418"
    assert reading.values() == {"body_weight": Decimal("68.4")}
    assert reading.extra == {"XY": "a b"}
