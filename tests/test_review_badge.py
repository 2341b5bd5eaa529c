"""Driver ``barcode`` with ``clinician_pattern``: a staff badge signs the clinician in; a wristband still
sets the patient; config errors are one line each."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import T0, fixed_ctx
from vitals_agent.config.schema import parse_config
from vitals_agent.drivers.barcode import BarcodeDriver, BarcodeOptions
from vitals_agent.drivers.base import DecodeFailure
from vitals_agent.errors import ConfigError
from vitals_agent.models import ClinicianScan, PatientScan

BADGE = r"STAFF:(?P<id>\d{3,8})(?:;(?P<family>[A-Z]+),(?P<given>[A-Z]+))?"


def decoder(badge: str | None = BADGE) -> object:
    options = BarcodeOptions(port="/dev/null", clinician_pattern=badge)
    return BarcodeDriver(options).stream_decoder(fixed_ctx("scan-1"))


def test_a_badge_is_a_clinician_scan_and_a_wristband_a_patient_scan() -> None:
    d = decoder()
    out = d.feed(b"STAFF:4711;NURSE,ANNA\r\nSTAFF:0815\r\nA123456\r\n")  # type: ignore[attr-defined]
    assert out == [
        ClinicianScan(
            device_id="scan-1", clinician_id="4711", family="NURSE", given="ANNA",
            raw="STAFF:4711;NURSE,ANNA", received_at=T0,
        ),
        ClinicianScan(device_id="scan-1", clinician_id="0815", raw="STAFF:0815", received_at=T0),
        PatientScan(device_id="scan-1", mrn="A123456", raw="A123456", received_at=T0),
    ]  # fmt: skip


def test_without_a_clinician_pattern_a_badge_is_just_an_unmatched_scan() -> None:
    [out] = decoder(None).feed(b"STAFF:4711;NURSE,ANNA\r\n")  # type: ignore[attr-defined]
    assert isinstance(out, DecodeFailure) and "4711" not in str(out.error)


def test_bad_clinician_patterns_are_config_errors() -> None:
    for pattern, words in (("STAFF:(", "not a valid regular expression"), ("STAFF:\\d+", "group")):
        doc = {
            "agent": {"facility": "X", "data_dir": "/tmp/x"},
            "devices": [{"id": "s", "driver": "barcode", "port": "/dev/null", "clinician_pattern": pattern}],
        }
        try:
            parse_config(doc)
        except ConfigError as exc:
            assert "devices[0].clinician_pattern" in str(exc) and words in str(exc)
        else:
            raise AssertionError(f"{pattern!r} accepted")


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_any_bytes_never_raise_with_a_badge_pattern(data: bytes) -> None:
    d = decoder()
    d.feed(data)  # type: ignore[attr-defined]
    d.feed(b"\r\n")  # type: ignore[attr-defined]
