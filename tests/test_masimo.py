"""masimo-ascii decoder: vectors built from devices.md 5.3, asserted against whole expected objects."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from tests.kit import T0, failures_in, fixed_ctx, m, readings_in
from tests.kit.shared import shared_file
from vitals_agent.drivers.base import DecodeContext, DecoderOutput, driver_class
from vitals_agent.drivers.masimo import MasimoAsciiDriver, MasimoDecoder, MasimoOptions, Rad8Simulator
from vitals_agent.errors import DecodeError, OverlongError, TruncatedError, UnsupportedError
from vitals_agent.models import (
    DeviceClass,
    DeviceIdentity,
    DeviceStatusEvent,
    Flag,
    Measurement,
    Reading,
    ReadingFlag,
)

TZ = ZoneInfo("America/Chicago")

# devices.md 5.3, verbatim
ASCII1 = (
    b"11/03/26 09:14:05 SN=0000123456 SPO2=096% BPM=072 PI=05.10% SPCO=--.-% SPMET=--.-% "
    b"DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800"
)
# Radical-7 (OpenICE pattern: ... DESAT= PIDELTA= PVI= ALARM= EXC=), values invented
RADICAL7 = (
    b"11/03/26 09:14:06 SN=0000654321 SPO2=098% BPM=064 PI=03.60% SPCO=01.2% SPMET=00.8% "
    b"DESAT=-- PIDELTA=+-- PVI=014% ALARM=0000 EXC=000800"
)
# devices.md 5.3 / the Rad-8 manual's trend sample (own copy, built from the reference text)
TREND = [
    b"09/21/08 09:56:08 SpO2=000 PR=000 PI=00.00 EXC=820:OffPat,SET",
    b"09/21/08 09:56:10 SpO2=000 PR=000 PI=00.00 EXC=828:Search,OffPat,SET",
    b"09/21/08 09:56:12 SpO2=097 PR=069 PI=04.69 EXC=800:SET",
    b"09/21/08 09:56:14 SpO2=096 PR=074 PI=02.28 EXC=C00:LowSigIQ,SET",
    b"09/21/08 09:56:16 SpO2=098 PR=078 PI=03.64 EXC=800:SET",
    b"09/21/08 09:56:18 SpO2=000 PR=000 PI=00.00 EXC=800:SET",
    b"09/21/08 09:56:20 SpO2=000 PR=000 PI=00.00 EXC=820:OffPat,SET",
    b"09/21/08 09:56:22 SpO2=096 PR=078 PI=02.68 EXC=800:SET",
]

CTX = fixed_ctx("spo2-room12", tz=TZ)
MASIMO = DeviceIdentity(id="spo2-room12", manufacturer="Masimo")
RAD8 = DeviceIdentity(id="spo2-room12", manufacturer="Masimo", serial_number="0000123456")


def decode(*lines: bytes, ctx: DecodeContext = CTX, fmt: str = "auto") -> list[DecoderOutput]:
    decoder = MasimoDecoder(ctx, fmt)  # type: ignore[arg-type]
    return decoder.feed(b"".join(line + b"\r\n" for line in lines))


def at(text: str) -> datetime:
    return datetime.strptime(text, "%m/%d/%y %H:%M:%S").replace(tzinfo=TZ)


def reading(
    raw: bytes,
    measurements: list[Measurement],
    extra: dict[str, str],
    *,
    device: DeviceIdentity = RAD8,
    flags: tuple[ReadingFlag, ...] = (),
    device_time: datetime | None = None,
) -> Reading:
    stamp = device_time if device_time is not None else at(raw[:17].decode())
    return Reading(
        device=device,
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=tuple(measurements),
        observed_at=stamp,
        received_at=T0,
        device_time=stamp,
        flags=flags,
        extra=extra,
        raw=raw,
    )


LIVE_EXTRA = {"DESAT": "--", "PIDELTA": "+--", "ALARM": "0000", "EXC": "000800"}


# ---------------------------------------------------------------------------------------------- live lines


def test_ascii1_line_from_the_reference() -> None:
    assert decode(ASCII1) == [
        DeviceStatusEvent(identity=RAD8),
        reading(
            ASCII1,
            [m("spo2", "96", "%"), m("pulse_rate_oximeter", "72", "/min"), m("perfusion_index", "5.10", "%")],
            LIVE_EXTRA,
        ),
    ]


def test_zero_padded_values_keep_their_decimals() -> None:
    pi = readings_in(decode(ASCII1))[0].measurements[2]
    assert pi.value == Decimal("5.10")
    assert pi.text_value() == "5.10"  # two decimals survive: OBX-5 precision
    assert readings_in(decode(ASCII1))[0].device_time == datetime(2026, 11, 3, 9, 14, 5, tzinfo=TZ)


def test_radical7_line_with_pvi_spco_spmet() -> None:
    ident = DeviceIdentity(id="spo2-room12", manufacturer="Masimo", serial_number="0000654321")
    assert decode(RADICAL7) == [
        DeviceStatusEvent(identity=ident),
        reading(
            RADICAL7,
            [
                m("spo2", "98", "%"),
                m("pulse_rate_oximeter", "64", "/min"),
                m("perfusion_index", "3.60", "%"),
                m("spco", "1.2", "%"),
                m("spmet", "0.8", "%"),
                m("pvi", "14", "%"),
            ],
            LIVE_EXTRA,
            device=ident,
        ),
    ]


def line(
    spo2: str, bpm: str, pi: str, exc: str, alarm: str = "0000", stamp: str = "11/03/26 09:14:07"
) -> bytes:
    return (
        f"{stamp} SN=0000123456 SPO2={spo2}% BPM={bpm} PI={pi}% SPCO=--.-% SPMET=--.-% "
        f"DESAT=-- PIDELTA=+-- ALARM={alarm} EXC={exc}"
    ).encode()


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        ("000801", "no_sensor"),
        ("000802", "defective_sensor"),
        ("000820", "sensor_off"),
        ("000880", "unrecognised_sensor"),
    ],
)
def test_sensor_problems_suppress_spo2_and_pulse_even_when_numbers_are_sent(exc: str, reason: str) -> None:
    raw = line("097", "071", "02.00", exc)
    extra = {**LIVE_EXTRA, "EXC": exc, "exceptions": reason}
    assert readings_in(decode(raw)) == [
        reading(
            raw,
            [
                m("spo2", None, "%", reason=reason),
                m("pulse_rate_oximeter", None, "/min", reason=reason),
                m("perfusion_index", "2.00", "%"),
            ],
            extra,
            flags=(ReadingFlag.SENSOR_OFF,),
        )
    ]


def test_pulse_search_with_low_perfusion_keeps_pi_as_questionable() -> None:
    raw = line("---", "---", "00.45", "000C0C")
    extra = {**LIVE_EXTRA, "EXC": "000C0C", "exceptions": "low_perfusion,pulse_search,low_signal_iq"}
    assert readings_in(decode(raw)) == [
        reading(
            raw,
            [
                m("spo2", None, "%", reason="pulse_search"),
                m("pulse_rate_oximeter", None, "/min", reason="pulse_search"),
                m("perfusion_index", "0.45", "%", Flag.QUESTIONABLE),
            ],
            extra,
            flags=(ReadingFlag.SENSOR_OFF,),
        )
    ]


def test_line_without_any_value_gives_no_reading_and_no_failure() -> None:
    raw = line("---", "---", "--.--", "000820")
    assert decode(raw) == [DeviceStatusEvent(identity=RAD8)]
    decoder = MasimoDecoder(CTX)
    decoder.feed(ASCII1 + b"\r\n")
    assert decoder.feed(raw + b"\r\n") == []  # identity already announced: nothing at all


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        ("000804", "low_perfusion"),
        ("000810", "interference"),
        ("000840", "ambient_light"),
        ("000C00", "low_signal_iq"),
    ],
)
def test_questionable_bits_flag_every_value(exc: str, name: str) -> None:
    raw = line("094", "088", "00.80", exc)
    assert readings_in(decode(raw)) == [
        reading(
            raw,
            [
                m("spo2", "94", "%", Flag.QUESTIONABLE),
                m("pulse_rate_oximeter", "88", "/min", Flag.QUESTIONABLE),
                m("perfusion_index", "0.80", "%", Flag.QUESTIONABLE),
            ],
            {**LIVE_EXTRA, "EXC": exc, "exceptions": name},
        )
    ]


def test_alarm_nonzero_flags_the_reading() -> None:
    raw = line("088", "121", "01.10", "000800", alarm="0002")
    assert readings_in(decode(raw)) == [
        reading(
            raw,
            [
                m("spo2", "88", "%"),
                m("pulse_rate_oximeter", "121", "/min"),
                m("perfusion_index", "1.10", "%"),
            ],
            {**LIVE_EXTRA, "ALARM": "0002"},
            flags=(ReadingFlag.ALARM,),
        )
    ]


@pytest.mark.parametrize("stamp", ["--/--/-- --:--:--", "13/45/26 25:61:00", "02/30/26 10:00:00"])
def test_unset_or_impossible_device_clock_uses_host_time(stamp: str) -> None:
    raw = line("096", "072", "05.10", "000800", stamp=stamp)
    assert readings_in(decode(raw)) == [
        Reading(
            device=RAD8,
            device_class=DeviceClass.PULSE_OXIMETER,
            measurements=(
                m("spo2", "96", "%"),
                m("pulse_rate_oximeter", "72", "/min"),
                m("perfusion_index", "5.10", "%"),
            ),
            observed_at=T0,
            received_at=T0,
            device_time=None,
            flags=(ReadingFlag.CLOCK_UNSET,),
            extra=LIVE_EXTRA,
            raw=raw,
        )
    ]


def test_device_time_is_in_the_device_zone_including_dst() -> None:
    winter = readings_in(decode(line("096", "072", "05.10", "000800", stamp="01/15/26 12:00:00")))[0]
    summer = readings_in(decode(line("096", "072", "05.10", "000800", stamp="07/15/26 12:00:00")))[0]
    assert winter.device_time is not None and summer.device_time is not None
    assert winter.device_time.utcoffset() == timedelta(hours=-6)
    assert summer.device_time.utcoffset() == timedelta(hours=-5)


def test_serial_number_change_and_reset_reannounce_identity() -> None:
    decoder = MasimoDecoder(CTX)
    first = decoder.feed(ASCII1 + b"\r\n" + ASCII1 + b"\r\n")
    assert [type(o) for o in first] == [DeviceStatusEvent, Reading, Reading]
    swapped = decoder.feed(ASCII1.replace(b"0000123456", b"0000999999") + b"\r\n")
    assert swapped[0] == DeviceStatusEvent(
        identity=DeviceIdentity(id="spo2-room12", manufacturer="Masimo", serial_number="0000999999")
    )
    decoder.reset()
    assert isinstance(decoder.feed(ASCII1 + b"\r\n")[0], DeviceStatusEvent)


def test_line_without_serial_number_uses_configured_identity() -> None:
    raw = ASCII1.replace(b"SN=0000123456 ", b"")
    assert decode(raw) == [
        reading(
            raw,
            [m("spo2", "96", "%"), m("pulse_rate_oximeter", "72", "/min"), m("perfusion_index", "5.10", "%")],
            LIVE_EXTRA,
            device=MASIMO,
        )
    ]


# ---------------------------------------------------------------------------------------------- trend format

TREND_EXPECTED = [
    (TREND[2], ("97", "69", "4.69"), (), {"EXC": "800:SET"}),
    (
        TREND[3],
        ("96", "74", "2.28"),
        (Flag.QUESTIONABLE,),
        {"EXC": "C00:LowSigIQ,SET", "exceptions": "low_signal_iq"},
    ),
    (TREND[4], ("98", "78", "3.64"), (), {"EXC": "800:SET"}),
    (TREND[7], ("96", "78", "2.68"), (), {"EXC": "800:SET"}),
]


def expected_trend() -> list[Reading]:
    return [
        reading(
            raw,
            [
                m("spo2", spo2, "%", *flags),
                m("pulse_rate_oximeter", pr, "/min", *flags),
                m("perfusion_index", pi, "%", *flags),
            ],
            extra,
            device=MASIMO,
        )
        for raw, (spo2, pr, pi), flags, extra in TREND_EXPECTED
    ]


def test_trend_lines_zero_values_and_offpat_are_no_reading() -> None:
    out = decode(*TREND)
    assert failures_in(out) == []
    assert out == expected_trend()


def test_trend_zero_pulse_values_with_a_real_pi_are_absent_but_pi_kept() -> None:
    raw = b"09/21/08 09:56:30 SpO2=000 PR=000 PI=01.20 EXC=808:Search,SET"
    assert decode(raw) == [  # the exception names the reason better than "no data"
        reading(
            raw,
            [
                m("spo2", None, "%", reason="pulse_search"),
                m("pulse_rate_oximeter", None, "/min", reason="pulse_search"),
                m("perfusion_index", "1.20", "%"),
            ],
            {"EXC": "808:Search,SET", "exceptions": "pulse_search"},
            device=MASIMO,
            flags=(ReadingFlag.SENSOR_OFF,),
        )
    ]


def test_trend_sample_file_from_the_manual() -> None:
    sample = shared_file("samples", "serial", "masimo_rad8_trend_manual_example.txt")
    data = b"".join(
        raw + b"\n" for raw in sample.read_bytes().splitlines() if raw.strip() and not raw.startswith(b"#")
    )
    decoder = MasimoDecoder(CTX)
    out = decoder.feed(data)
    assert out == expected_trend()


def test_format_option_rejects_the_other_format() -> None:
    live_only = decode(TREND[2], fmt="ascii1")
    assert [type(f.error) for f in failures_in(live_only)] == [UnsupportedError]
    assert readings_in(live_only) == []
    trend_only = decode(ASCII1, fmt="trend")
    assert [type(f.error) for f in failures_in(trend_only)] == [UnsupportedError]
    # ASCII 2 is the trend grammar (tests/test_masimo_ascii2.py): an ASCII 1 line is the other format
    assert [str(f.error) for f in failures_in(decode(ASCII1, fmt="ascii2"))] == [
        "ASCII 1 line while format = 'ascii2'"
    ]
    assert readings_in(decode(TREND[2], fmt="ascii2"))[0].values()["spo2"] == Decimal(97)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"hello world", DecodeError),
        (b"SPO2=%%% BPM==", DecodeError),
        (ASCII1[:60], TruncatedError),  # cut short: no EXC
        (ASCII1[:-2], TruncatedError),  # EXC=0008: too few digits for a live line
        (ASCII1.replace(b"SPO2=096%", b"SPO2=9x6%"), DecodeError),
        (ASCII1.replace(b"SPO2=096%", b"SPO2=-96%"), DecodeError),
        (ASCII1.replace(b"BPM=072", b"BPM=072 BPM=072"), DecodeError),
        (ASCII1.replace(b"ALARM=0000", b"ALARM=zz"), DecodeError),
        (ASCII1.replace(b"EXC=000800", b"EXC=0008G0"), DecodeError),
        (ASCII1.replace(b"SN=0000123456", b"SN=00<>"), DecodeError),
        (ASCII1.replace(b"BPM=072 ", b"BPM=072 junk "), DecodeError),
        (ASCII1.replace(b"BPM=072 ", b""), TruncatedError),  # no pulse rate
        (ASCII1.replace(b"PI=05", b"PI=\xb05"), DecodeError),
        (ASCII1.replace(b" PI=", b"\tPI="), DecodeError),
        (TREND[2][:-4], TruncatedError),  # trend line cut inside EXC: "EXC=800" has no names
        (TREND[2].replace(b"EXC=800", b"EXC=80"), TruncatedError),
        (TREND[2].replace(b":SET", b":"), DecodeError),
    ],
)
def test_bad_lines_are_failures_never_readings(raw: bytes, error: type[DecodeError]) -> None:
    out = decode(raw)
    assert readings_in(out) == []
    assert len(failures_in(out)) == 1
    assert type(failures_in(out)[0].error) is error
    assert failures_in(out)[0].data  # the bytes are kept for the hex DEBUG log


def test_resync_on_time_stamp_after_garbage_without_line_end() -> None:
    out = MasimoDecoder(CTX).feed(b"\x00\xff@@garbage" + ASCII1 + b"\r\n")
    assert [f.data for f in failures_in(out)] == [b"\x00\xff@@garbage"]
    assert readings_in(out) == readings_in(decode(ASCII1))


def test_two_lines_run_together_by_lost_bytes_give_only_the_complete_one() -> None:
    second = ASCII1.replace(b"09:14:05", b"09:14:06")
    out = MasimoDecoder(CTX).feed(ASCII1[:50] + second + b"\r\n")
    assert len(failures_in(out)) == 1
    assert type(failures_in(out)[0].error) is TruncatedError
    assert [r.raw for r in readings_in(out)] == [second]


def test_overlong_line_is_a_failure_and_the_next_line_decodes() -> None:
    decoder = MasimoDecoder(CTX)
    assert decoder.feed(b"x" * 2000) == []  # discarding: reported once, at the terminator
    out = decoder.feed(b"\r\n" + ASCII1 + b"\r\n")
    [failure] = failures_in(out)
    assert isinstance(failure.error, OverlongError)
    assert str(failure.error) == "line longer than 512 bytes (2000 bytes): discarded up to its terminator"
    assert len(readings_in(out)) == 1


def test_decode_chunks_decodes_a_last_line_without_terminator() -> None:
    driver = MasimoAsciiDriver()
    out = driver.decode_chunks([ASCII1[:40], ASCII1[40:]], CTX)
    assert readings_in(out) == readings_in(decode(ASCII1))


# ------------------------------------------------------------------------------------------ driver/simulator


def test_driver_registration_and_defaults() -> None:
    cls = driver_class("masimo-ascii")
    assert cls is MasimoAsciiDriver
    assert cls.device_class is DeviceClass.PULSE_OXIMETER
    assert cls.transport == "serial" and cls.continuous is True
    assert cls.serial_defaults is not None
    assert (cls.serial_defaults.baudrate, cls.serial_defaults.bytesize, cls.serial_defaults.parity) == (
        9600,
        8,
        "N",
    )
    assert cls.serial_defaults.stopbits == 1
    opts = MasimoOptions.model_validate({"port": "/dev/ttyUSB0", "format": "trend", "baudrate": 19200})
    assert opts.line_settings(cls.serial_defaults).baudrate == 19200
    with pytest.raises(ValueError, match="format"):
        MasimoOptions.model_validate({"port": "/dev/ttyUSB0", "format": "ascii3"})


def test_simulator_lines_decode_to_plausible_readings_with_episodes() -> None:
    sim = Rad8Simulator(seed=7, episode_every=10)
    start = datetime(2026, 3, 11, 8, 0, 0)
    decoder = MasimoDecoder(fixed_ctx("sim"))
    outs: list[DecoderOutput] = []
    for i in range(300):
        outs.extend(decoder.feed(sim.next_line(start + timedelta(seconds=i))))
    assert failures_in(outs) == []
    got = readings_in(outs)
    assert 150 < len(got) < 300  # some lines were sensor-off / pulse-search episodes (no reading)
    for r in got:
        values = r.values()
        assert 90 <= values["spo2"] <= 100
        assert 50 <= values["pulse_rate_oximeter"] <= 120
        assert Decimal("0.5") <= values["perfusion_index"] <= 12
        assert r.device.serial_number == "0000123456"
    times = [r.device_time for r in got if r.device_time is not None]
    assert len(times) == len(got) and times == sorted(times)
    assert _lines(7, 20, start) == _lines(7, 20, start)  # deterministic with a seed
    assert _lines(7, 20, start) != _lines(8, 20, start)


def _lines(seed: int, n: int, at: datetime) -> list[bytes]:
    sim = Rad8Simulator(seed=seed, episode_every=10)
    return [sim.next_line(at) for _ in range(n)]


def test_simulator_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        MasimoAsciiDriver().simulator(interval=0)
