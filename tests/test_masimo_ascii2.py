"""Masimo ASCII 2 parsed by its own grammar where it differs from ASCII 1 (issue #12, "known gaps"): units,
the exception field, and PVI/SpHb/SpMet/SpCO when present.

Sources (public):
* Rad-8 Operator's Manual, "Trend data format" and "Sample trend output" (the Rad-8 lines below; also
  ../shared/samples/serial/masimo_rad8_trend_manual_example.txt).
* Rad-57 Operator's Manual, "Trend data format": SpO2 001-100, SpCO 001-099, pulse rate 001-240, PI
  00.00-20.00, exceptions as 3 hex digits; sample line ``07/21/04 09:56:12 SpO2=097 SpCO=001 PR=069
  PI=04.69 EXC=800:SET`` (masimo.manymanuals.fr, operators-manual-1795 p. 19).
* Rad-87 Operator's Manual section 7: trend packets "contain the date, time, SpO2, perfusion index,
  SpMet, SpCO, SpHb, PI, pulse rate, and alarm and exception values (in ASCII 2 format)"
  (manualshelf.com, rad87b, p. 93): ASCII 2 is the trend grammar and carries SpMet/SpCO/SpHb.
* MD PnP (mdpnp, LGPL) ``poxrad_discrete.h``: the Radical-5 and Radical-7 ASCII 1 example strings and
  the ALARM bit table (0x0020 alarm silenced, 0x0040 low battery).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from tests.kit import failures_in, fixed_ctx, readings_in
from vitals_agent.agent.pipeline.normalize import normalise
from vitals_agent.drivers.base import DecoderOutput
from vitals_agent.drivers.masimo import MasimoDecoder, parse_line
from vitals_agent.errors import TruncatedError, UnsupportedError
from vitals_agent.models import Reading, ReadingFlag

CTX = fixed_ctx("spo2-1")

# Rad-57 manual sample (SpCO in the ASCII 2 / trend grammar)
RAD57 = b"07/21/04 09:56:12 SpO2=097 SpCO=001 PR=069 PI=04.69 EXC=800:SET"
# Built from the Rad-87 manual's field list (no verbatim sample is public): every optional parameter
RAD87 = (
    b"11/03/26 09:14:05 SpO2=096 PR=072 PI=05.10 SpCO=02.0 SpMet=01.1 SpHb=13.4 PVI=012 ALARM=0000"
    b" EXC=800:SET"
)
# MD PnP poxrad_discrete.h, verbatim (ASCII 1)
RADICAL7 = (
    b"12/01/05 11:56:29 SN=0123456789 SPO2=098% BPM=240 PI=20.00% "
    b"SPCO=01.0% SPMET=00.5% DESAT=01 PIDELTA=-02 PVI=027 ALARM=0000 EXC=000820"
)
RADICAL5 = b"09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82% ALARM=20 EXC=800"
ASCII1 = (
    b"11/03/26 09:14:05 SN=0000123456 SPO2=096% BPM=072 PI=05.10% SPCO=--.-% SPMET=--.-% "
    b"DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800"
)


def decode(line: bytes, fmt: str = "auto") -> list[DecoderOutput]:
    return MasimoDecoder(CTX, fmt).feed(line + b"\r\n")  # type: ignore[arg-type]


def values(out: list[DecoderOutput]) -> dict[str, Decimal]:
    [reading] = readings_in(out)
    return reading.values()


def test_the_grammar_of_each_line() -> None:
    assert parse_line(RAD57.decode(), CTX).grammar == "ascii2"
    assert parse_line(RAD87.decode(), CTX).grammar == "ascii2"
    assert parse_line(RADICAL7.decode(), CTX).grammar == "ascii1"
    assert parse_line(RADICAL5.decode(), CTX).grammar == "ascii1"  # 3 EXC digits, upper-case keys


def test_rad57_sample_line_with_spco() -> None:
    # Rad-57 manual: SpO2 97 %, SpCO 1 %, PR 69, PI 4.69 (values without units)
    assert values(decode(RAD57, "ascii2")) == {
        "spo2": Decimal(97),
        "pulse_rate_oximeter": Decimal(69),
        "perfusion_index": Decimal("4.69"),
        "spco": Decimal(1),
    }


def test_rad87_ascii2_line_with_every_optional_parameter() -> None:
    [reading] = readings_in(decode(RAD87, "ascii2"))
    assert reading.values() == {
        "spo2": Decimal(96),
        "pulse_rate_oximeter": Decimal(72),
        "perfusion_index": Decimal("5.10"),
        "spco": Decimal("2.0"),
        "spmet": Decimal("1.1"),
        "sphb": Decimal("13.4"),
        "pvi": Decimal(12),
    }
    assert {m.metric: m.unit for m in reading.measurements}["sphb"] == "g/dL"
    out = normalise(reading, max_clock_skew=timedelta.max)
    assert out.dropped == () and out.values()["sphb"] == Decimal("13.4")


def test_ascii2_zeros_are_no_data_and_the_names_carry_the_exception() -> None:
    out = decode(b"09/21/08 09:56:18 SpO2=000 PR=000 PI=00.00 EXC=800:SET", "ascii2")
    assert readings_in(out) == [] and failures_in(out) == []
    [off] = readings_in(decode(b"09/21/08 09:56:20 SpO2=000 PR=000 PI=02.10 EXC=820:OffPat,SET"))
    assert off.values() == {"perfusion_index": Decimal("2.10")}
    assert ReadingFlag.SENSOR_OFF in off.flags and off.extra["EXC"] == "820:OffPat,SET"


def test_ascii2_exception_field_needs_its_names() -> None:
    [failure] = failures_in(decode(b"09/21/08 09:56:12 SpO2=097 PR=069 PI=04.69 EXC=800", "ascii2"))
    assert isinstance(failure.error, TruncatedError)
    assert str(failure.error) == "EXC must be 3 hex digits and the exception names in an ASCII 2 line"


def test_format_ascii2_takes_ascii2_and_refuses_ascii1() -> None:
    # before: format = "ascii2" refused every ASCII 2 (trend-grammar) line as "trend line"
    assert readings_in(decode(RAD57, "ascii2")) and readings_in(decode(RAD57, "trend"))
    [refused] = failures_in(decode(ASCII1, "ascii2"))
    assert isinstance(refused.error, UnsupportedError)
    assert str(refused.error) == "ASCII 1 line while format = 'ascii2'"
    [refused] = failures_in(decode(RAD57, "ascii1"))
    assert str(refused.error) == "ASCII 2 (trend) line while format = 'ascii1'"
    assert readings_in(decode(ASCII1, "ascii1")) and readings_in(decode(RAD87, "auto"))


def test_mdpnp_radical7_example() -> None:
    # EXC 0x820 = sensor off + SET: SpO2 and pulse rate suppressed; PI 20.00, SpCO 1.0, SpMet 0.5, PVI 27
    [reading] = readings_in(decode(RADICAL7, "ascii1"))
    assert reading.values() == {
        "perfusion_index": Decimal("20.00"),
        "spco": Decimal("1.0"),
        "spmet": Decimal("0.5"),
        "pvi": Decimal(27),
    }
    assert ReadingFlag.SENSOR_OFF in reading.flags
    assert reading.device.serial_number == "0123456789"
    assert (reading.extra["DESAT"], reading.extra["PIDELTA"]) == ("01", "-02")


def test_mdpnp_radical5_example_alarm_silenced_is_not_an_alarm() -> None:
    [reading] = readings_in(decode(RADICAL5, "ascii1"))
    assert reading.values() == {
        "spo2": Decimal(97),
        "pulse_rate_oximeter": Decimal(64),
        "perfusion_index": Decimal("11.82"),
    }
    # ALARM=20: bit 0x0020 "Alarm Silenced" (MD PnP alarmmessage()): kept as a status, not an alarm flag
    assert ReadingFlag.ALARM not in reading.flags and reading.extra["alarm_status"] == "alarm_silenced"
    [limit] = readings_in(decode(RADICAL5.replace(b"ALARM=20", b"ALARM=02")))
    assert ReadingFlag.ALARM in limit.flags  # 0x0002: SpO2 low alarm limit violated
    # a 4-digit ALARM goes with a 6-digit EXC: "EXC=800" there is a cut-short line
    [cut] = failures_in(decode(RADICAL5.replace(b"ALARM=20", b"ALARM=0002")))
    assert isinstance(cut.error, TruncatedError)


@pytest.mark.parametrize("line", [RAD57, RAD87, RADICAL7, RADICAL5, ASCII1])
def test_every_cut_of_a_line_is_never_a_different_reading(line: bytes) -> None:
    """A line cut short anywhere (then terminated) is a failure, nothing, or -- when the cut only lost
    trailing optional text -- never a value that the whole line does not have."""
    whole = {k: v for r in readings_in(decode(line)) for k, v in r.values().items()}
    for cut in range(18, len(line)):
        for reading in readings_in(decode(line[:cut])):
            assert isinstance(reading, Reading)
            for key, value in reading.values().items():
                assert key in whole and whole[key] == value, (cut, key)
