"""Driver ``barcode``: wristband scans -> PatientScan; anything else -> a DecodeFailure not echoing it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import T0, FakeRuntime, fixed_ctx, make_driver, start, stop
from vitals_agent.config.schema import parse_config
from vitals_agent.drivers.barcode import BarcodeDriver, BarcodeOptions, extract_mrn
from vitals_agent.drivers.base import DecodeFailure, StreamDecoder, transport_class
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.errors import ConfigError, DecodeError, OverlongError, UnsupportedError
from vitals_agent.models import PatientScan

WRISTBAND = r"\]C1(?P<mrn>MRN\d{6,10})\^.*"  # AIM prefix, MRN, then a name part the agent ignores


def decoder(pattern: str | None = None, device_id: str = "scan-1") -> StreamDecoder:
    options = (
        BarcodeOptions(port="/dev/null", mrn_pattern=pattern) if pattern else BarcodeOptions(port="/dev/null")
    )
    return BarcodeDriver(options).stream_decoder(fixed_ctx(device_id))


def scan(mrn: str, raw: str, device_id: str = "scan-1") -> PatientScan:
    return PatientScan(device_id=device_id, mrn=mrn, raw=raw, received_at=T0)


def test_default_pattern_takes_a_plain_mrn_line() -> None:
    assert decoder().feed(b"A123456\r\n") == [scan("A123456", "A123456")]


def test_named_group_extracts_the_mrn_from_a_structured_wristband() -> None:
    out = decoder(WRISTBAND).feed(b"]C1MRN0012345^DOE^JANE\r")
    assert out == [scan("MRN0012345", "]C1MRN0012345^DOE^JANE")]


def test_group_one_is_used_without_a_named_group() -> None:
    out = decoder(r"PID:(\w+);.*").feed(b"PID:X99;ward=3\n")
    assert out == [scan("X99", "PID:X99;ward=3")]


def test_scans_split_across_reads_and_several_per_read() -> None:
    d = decoder()
    assert d.feed(b"AB12") == []
    assert d.feed(b"34\r\nCD5678\r\n") == [scan("AB1234", "AB1234"), scan("CD5678", "CD5678")]


def test_gs1_group_separator_is_ignored() -> None:
    assert decoder().feed(b"\x1dAB1234\r\n") == [scan("AB1234", "AB1234")]


def test_unmatched_scan_is_a_failure_that_does_not_echo_the_content() -> None:
    [failure] = decoder(WRISTBAND).feed(b"SOMEBODYSNAME^NOT-A-WRISTBAND\r\n")
    assert isinstance(failure, DecodeFailure)
    assert str(failure.error) == "scan does not match mrn_pattern (29 characters)"
    assert failure.data == b"SOMEBODYSNAME^NOT-A-WRISTBAND"  # kept for the DEBUG hex dump only


def test_binary_and_control_characters_are_refused() -> None:
    d = decoder()
    [bad_utf8] = d.feed(b"\xff\xfe12\r\n")
    [control] = d.feed(b"AB\x0712\r\n")
    assert isinstance(bad_utf8, DecodeFailure) and isinstance(bad_utf8.error, UnsupportedError)
    assert str(bad_utf8.error) == "scan is not UTF-8 text"
    assert isinstance(control, DecodeFailure) and str(control.error) == "scan contains control characters"


def test_overlong_garbage_is_discarded_whole() -> None:
    out = decoder().feed(b"X" * 300 + b"\r\nAB1234\r\n")
    assert isinstance(out[0], DecodeFailure) and isinstance(out[0].error, OverlongError)
    assert str(out[0].error) == "scan longer than 256 bytes (300 bytes): discarded up to its terminator"
    assert out[0].data == b"X" * 300  # the whole line, for the DEBUG hex dump
    assert out[1:] == [scan("AB1234", "AB1234")]  # the next line decodes


def test_extract_mrn_for_keyboard_wedge_input() -> None:
    assert extract_mrn(WRISTBAND, "]C1MRN0012345^DOE^JANE\n") == "MRN0012345"
    with pytest.raises(DecodeError, match=r"^empty scan$"):
        extract_mrn(WRISTBAND, "  \n")
    with pytest.raises(DecodeError, match="MRN group is empty"):
        extract_mrn(r"X(?P<mrn>\d*)", "X")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_never_raise(data: bytes) -> None:
    d = decoder(WRISTBAND)
    for item in d.feed(data + b"\r\n"):
        assert isinstance(item, PatientScan | DecodeFailure)
        if isinstance(item, PatientScan):
            assert re.fullmatch(r"MRN\d{6,10}", item.mrn)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x41, max_codepoint=0x5A), min_size=8, max_size=60))
def test_failure_messages_never_contain_the_scan(text: str) -> None:
    [failure] = decoder(WRISTBAND).feed(text.encode() + b"\r")
    assert isinstance(failure, DecodeFailure)
    assert text not in str(failure.error)


def test_config_validates_the_pattern() -> None:
    base = {"agent": {"facility": "F"}}
    ok = parse_config(
        {
            **base,
            "devices": [
                {"id": "scan-1", "driver": "barcode", "port": "/dev/ttyACM0", "mrn_pattern": WRISTBAND}
            ],
        }
    )
    assert ok.devices[0].options == BarcodeOptions(port="/dev/ttyACM0", mrn_pattern=WRISTBAND)
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                **base,
                "devices": [{"id": "s", "driver": "barcode", "port": "/dev/x", "mrn_pattern": "MRN\\d+"}],
            }
        )
    assert info.value.problems == [
        ("devices[0].mrn_pattern", "needs a named group (?P<mrn>...) or a capturing group for the MRN")
    ]
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "patient": {"mrn_pattern": "("}})
    assert info.value.problems[0][0] == "patient.mrn_pattern"
    assert info.value.problems[0][1].startswith("not a valid regular expression")


async def test_scans_over_a_real_pseudo_terminal(pty_device: PtyDevice, tmp_path: Path) -> None:
    pytest.importorskip("serial_asyncio_fast")
    driver = make_driver("barcode", pty_device.link, mrn_pattern=WRISTBAND)
    runtime = FakeRuntime(driver, device_id="scan-1", ctx=fixed_ctx("scan-1"))
    task = start(transport_class("serial")(runtime))
    try:
        await runtime.wait_until(lambda rt: rt.connected)
        await pty_device.write(b"]C1MRN0012345^DOE^JANE\r\nnot a wristband\r\n")
        await runtime.wait_until(lambda rt: len(rt.events) == 1 and len(rt.failures) == 1)
    finally:
        await stop(task)
    assert runtime.events == [scan("MRN0012345", "]C1MRN0012345^DOE^JANE")]
    assert str(runtime.failures[0].error) == "scan does not match mrn_pattern (15 characters)"
