"""Nonin DF8 / DF2 / DF7 decoders: vectors built from devices.md 5.4, asserted against whole Readings."""

from __future__ import annotations

import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.kit import T0, failures_in, fixed_ctx
from vitals_agent.cli import main
from vitals_agent.drivers.base import DecodeFailure, DecoderOutput, driver_class
from vitals_agent.drivers.nonin import (
    DF2Decoder,
    DF8Decoder,
    NoninDF2Driver,
    NoninDF8Driver,
    NoninSimulator,
    encode_df2_packet,
    encode_df8,
    select_format_command,
    set_time_command,
)
from vitals_agent.errors import ChecksumError, DecodeError, TruncatedError
from vitals_agent.models import (
    DeviceClass,
    DeviceIdentity,
    DeviceStatusEvent,
    Flag,
    Measurement,
    Reading,
    ReadingFlag,
)

CTX = fixed_ctx("ox-1")
NONIN = DeviceIdentity(id="ox-1", manufacturer="Nonin")


def spo2(v: int | None, *flags: Flag, reason: str | None = None) -> Measurement:
    return Measurement(metric="spo2", value=v, unit="%", flags=flags, absent_reason=reason)


def pr(v: int | None, *flags: Flag, reason: str | None = None) -> Measurement:
    return Measurement(metric="pulse_rate_oximeter", value=v, unit="/min", flags=flags, absent_reason=reason)


def reading(
    measurements: list[Measurement],
    raw: bytes,
    *,
    flags: tuple[ReadingFlag, ...] = (),
    extra: dict[str, str] | None = None,
    device: DeviceIdentity = NONIN,
) -> Reading:
    return Reading(
        device=device,
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=tuple(measurements),
        observed_at=T0,
        received_at=T0,
        flags=flags,
        extra=extra or {},
        raw=raw,
    )


def only_readings(out: list[DecoderOutput]) -> list[Reading]:
    return [o for o in out if isinstance(o, Reading)]


# ---------------------------------------------------------------------------------------------- DF8

MISSING_SPO2 = "device sent the missing-value code 127"
MISSING_HR = "device sent the missing-value code 511"
SNSA = "sensor alarm (SNSA): sensor off the finger, disconnected or faulty"


@pytest.mark.parametrize(
    ("hexframe", "expected"),
    [
        # devices.md 5.4 synthetic vectors
        ("80 48 61 00", [spo2(97), pr(72)]),
        ("81 16 5F 00", [spo2(95), pr(150)]),
        ("83 7F 7F 00", [spo2(None, reason=MISSING_SPO2), pr(None, reason=MISSING_HR)]),
        # HR 300 (HR8/HR7 bits), SpO2 100
        ("82 2C 64 00", [spo2(100), pr(300)]),
        # SpO2 missing only
        ("80 48 7F 00", [spo2(None, reason=MISSING_SPO2), pr(72)]),
    ],
)
def test_df8_vectors(hexframe: str, expected: list[Measurement]) -> None:
    raw = bytes.fromhex(hexframe)
    assert DF8Decoder(CTX).feed(raw) == [reading(expected, raw)]


def test_df8_status_bits() -> None:
    artf = bytes.fromhex("84 48 61 00")  # ARTF: values questionable
    snsa = bytes.fromhex("80 48 61 08")  # sensor alarm: the held value must not be reported
    lowbat_spa = bytes.fromhex("98 48 61 21")  # LPRF + MPRF, SPA + LOWBAT
    out = DF8Decoder(CTX).feed(artf + snsa + lowbat_spa)
    assert out == [
        reading([spo2(97, Flag.QUESTIONABLE), pr(72, Flag.QUESTIONABLE)], artf, extra={"status": "ARTF"}),
        reading(
            [spo2(None, reason=SNSA), pr(None, reason=SNSA)],
            snsa,
            flags=(ReadingFlag.SENSOR_OFF,),
            extra={"status": "SNSA"},
        ),
        reading(
            [spo2(97, Flag.QUESTIONABLE), pr(72, Flag.QUESTIONABLE)],
            lowbat_spa,
            extra={"status": "LPRF MPRF SPA LOWBAT", "low_battery": "true"},
        ),
    ]


def test_df8_resync_after_garbage_and_truncated_frame() -> None:
    good = bytes.fromhex("80 48 61 00")
    out = DF8Decoder(CTX).feed(b"\x01\x02\x03" + good + b"\x81\x16" + good)
    assert [type(o.error) for o in failures_in(out)] == [DecodeError, TruncatedError]
    assert str(failures_in(out)[0].error) == "DF8: 3 bytes outside frame sync (01 02 03)"
    assert str(failures_in(out)[1].error) == "truncated DF8 frame: 2 of 4 bytes (81 16)"
    assert failures_in(out)[1].data == b"\x81\x16"
    assert only_readings(out) == [reading([spo2(97), pr(72)], good)] * 2


def test_df8_garbage_fed_byte_by_byte_is_not_held_in_the_frame_buffer() -> None:
    # Garbage used to stay in the buffer (up to max_buffer) and be rescanned on every feed: quadratic with
    # 1-byte serial reads. Known garbage must leave the buffer at once, and still be reported.
    garbage = bytes(random.Random(8).randrange(0x80) for _ in range(20_000))
    decoder = DF8Decoder(CTX)
    out: list[DecoderOutput] = []
    for i in range(len(garbage)):
        out += decoder.feed(garbage[i : i + 1])
        assert len(decoder._buf) <= DF8Decoder.frame_len
    assert len(failures_in(out)) == len(out)
    # the cap, as before
    assert [str(f.error) for f in failures_in(out)] == ["DF8: no frame sync in 8189 bytes"] * 2
    assert b"".join(f.data for f in failures_in(out)) + decoder.pending() == garbage
    good = bytes.fromhex("80 48 61 00")
    out = decoder.feed(good)
    assert str(failures_in(out)[0].error).startswith("DF8: 3622 bytes outside frame sync (")
    assert failures_in(out)[0].data == garbage[-3622:]
    assert out[1:] == [reading([spo2(97), pr(72)], good)]


def test_df8_truncated_at_end_of_input() -> None:
    out = NoninDF8Driver().decode_chunks([bytes.fromhex("80 48 61")], CTX)
    assert len(out) == 1 and isinstance(out[0], DecodeFailure)
    assert isinstance(out[0].error, TruncatedError)


def test_set_time_command_matches_the_specification_example() -> None:
    assert set_time_command(datetime(2050, 12, 31, 14, 30, 15)) == bytes.fromhex(
        "02 72 06 32 0C 1F 0E 1E 0F 03"
    )
    assert select_format_command("df8") == bytes.fromhex("02 70 02 02 08 03")
    assert select_format_command("df7") == bytes.fromhex("02 70 02 02 07 03")


def test_configure_on_connect_selects_format_and_sets_local_clock() -> None:
    ctx = fixed_ctx("ox-1", tz=ZoneInfo("America/Chicago"))  # 2026-03-11 14:00 UTC = 09:00 CDT
    decoder = DF8Decoder(ctx, configure=True)
    assert decoder.commands_on_connect() == [
        bytes.fromhex("02 70 02 02 08 03"),
        bytes.fromhex("02 72 06 1A 03 0B 09 00 00 03"),
    ]
    frame = bytes.fromhex("80 48 61 00")
    out = decoder.feed(b"\x06\x15" + frame)
    assert out[:2] == [
        DeviceStatusEvent(note="Nonin acknowledged the data-format select"),
        DeviceStatusEvent(note="Nonin refused the clock set (NAK)"),
    ]
    assert out[2:] == [reading([spo2(97), pr(72)], frame)]
    # Without configure nothing is written and ACK bytes are just out-of-sync bytes.
    assert DF8Decoder(ctx).commands_on_connect() == []


# ---------------------------------------------------------------------------------------------- DF2 / DF7


def build_packet(
    fmt: str, hr: int, spo2_value: int, *, status: int = 0x02, chk_fix: dict[int, int] | None = None
) -> list[bytes]:
    """25 frames from the devices.md 5.4 layout, built independently of the driver's encoder."""
    floats = dict.fromkeys(range(1, 26), 0)
    floats[1], floats[2], floats[3], floats[4] = hr >> 7, hr & 0x7F, spo2_value, 0x33  # SREV 51
    floats[6], floats[7], floats[8] = 0x01, 0x02, 0x10  # timer 258, STAT2
    floats[9], floats[10], floats[11] = (
        spo2_value,
        spo2_value - 1,
        spo2_value - 2,
    )  # SpO2-D, fast, beat-to-beat
    floats[14], floats[15], floats[16] = hr >> 7, (hr + 1) & 0x7F, spo2_value  # E-HR, E-SpO2
    floats[20], floats[21] = hr >> 7, hr & 0x7F  # HR-D
    frames = []
    for n in range(1, 26):
        st = 0x80 | status | (1 if n == 1 else 0)
        head = (
            bytes([0x01, st, 100 + n, floats[n]]) if fmt == "df2" else bytes([st, 0x81, 100 + n, floats[n]])
        )
        chk = sum(head) % 256
        if chk_fix and n in chk_fix:
            chk = chk_fix[n]
        frames.append(head + bytes([chk]))
    return frames


def df2_extra(hr: int, s: int, **more: str) -> dict[str, str]:
    return {
        "hr_display": str(hr),
        "hr_extended": str(hr + 1),
        "spo2_display": str(s),
        "spo2_extended": str(s),
        "spo2_fast": str(s - 1),
        "spo2_beat_to_beat": str(s - 2),
        "timer": "258",
        "stat2": "0x10",
        **more,
    }


NONIN_FW = DeviceIdentity(id="ox-1", manufacturer="Nonin", firmware="51")


@pytest.mark.parametrize("fmt", ["df2", "df7"])
def test_df2_df7_packet(fmt: str) -> None:
    raw = b"".join(build_packet(fmt, 72, 97))
    assert DF2Decoder(CTX, fmt=fmt).feed(raw) == [
        reading([spo2(97), pr(72)], raw, extra=df2_extra(72, 97, status="GPRF"), device=NONIN_FW)
    ]


def test_df2_missing_values_and_sensor_alarm() -> None:
    missing = b"".join(build_packet("df2", 511, 127))
    alarm = b"".join(build_packet("df2", 72, 97, status=0x08 | 0x04))  # SNSA + red perfusion
    out = DF2Decoder(CTX).feed(missing + alarm)
    assert out == [
        reading(
            [spo2(None, reason=MISSING_SPO2), pr(None, reason=MISSING_HR)],
            missing,
            extra={
                **df2_extra(511, 127, status="GPRF"),
                "hr_display": "missing",
                "hr_extended": "384",  # the builder sends HR + 1 = 512: only 9 bits -> 384
                "spo2_display": "missing",
                "spo2_extended": "missing",
            },
            device=NONIN_FW,
        ),
        reading(
            [spo2(None, reason=SNSA), pr(None, reason=SNSA)],
            alarm,
            flags=(ReadingFlag.SENSOR_OFF,),
            extra=df2_extra(72, 97, status="SNSA RPRF"),
            device=NONIN_FW,
        ),
    ]


def test_df2_low_perfusion_is_questionable() -> None:
    raw = b"".join(build_packet("df2", 80, 93, status=0x04))  # red perfusion only
    (r,) = only_readings(DF2Decoder(CTX).feed(raw))
    assert r.measurements == (spo2(93, Flag.QUESTIONABLE), pr(80, Flag.QUESTIONABLE))


def test_df2_checksum_failure_drops_the_packet_and_resyncs() -> None:
    bad = build_packet("df2", 72, 97, chk_fix={5: 0x00})
    good = b"".join(build_packet("df2", 73, 96))
    out = DF2Decoder(CTX).feed(b"".join(bad) + good)
    (failure,) = failures_in(out)
    assert isinstance(failure.error, ChecksumError)
    computed = sum(bad[4][:4]) % 256
    assert str(failure.error) == (
        f"DF2 checksum mismatch: got 0x00, computed 0x{computed:02X} ({bad[4][:4].hex(' ').upper()} 00)"
    )
    assert [r.values() for r in only_readings(out)] == [{"spo2": 96, "pulse_rate_oximeter": 73}]


def test_df2_truncated_packet_and_frame() -> None:
    frames = build_packet("df2", 72, 97)
    good = b"".join(frames)
    out = DF2Decoder(CTX).feed(good + b"".join(frames[:10]) + good)
    assert [str(f.error) for f in failures_in(out)] == ["truncated DF2 packet: 10 of 25 frames"]
    assert isinstance(failures_in(out)[0].error, TruncatedError)
    assert len(only_readings(out)) == 2
    # A frame cut after 3 bytes, the next frame complete: the cut frame is a truncated frame.
    cut = b"".join(frames[:3]) + frames[3][:3] + b"".join(frames[4:])
    out = DF2Decoder(CTX).feed(cut + good)
    assert [type(f.error) for f in failures_in(out)] == [TruncatedError]
    assert str(failures_in(out)[0].error).startswith("truncated DF2 frame: 3 of 5 bytes")
    assert only_readings(out) == [
        reading([spo2(97), pr(72)], good, extra=df2_extra(72, 97, status="GPRF"), device=NONIN_FW)
    ]


def test_df2_stream_started_mid_packet_and_garbage() -> None:
    frames = build_packet("df7", 72, 97)
    good = b"".join(frames)
    # The agent opened the port in the middle of a packet, then line noise between packets.
    out = DF2Decoder(CTX, fmt="df7").feed(b"".join(frames[7:]) + b"\x00\x13\x37" + good)
    assert [type(f.error) for f in failures_in(out)] == [DecodeError]
    assert only_readings(out) == [
        reading([spo2(97), pr(72)], good, extra=df2_extra(72, 97, status="GPRF"), device=NONIN_FW)
    ]


def test_encoders_agree_with_the_independent_builder() -> None:
    assert encode_df8(72, 97) == bytes.fromhex("80 48 61 00")
    assert encode_df8(None, None) == bytes.fromhex("83 7F 7F 00")
    decoded = DF2Decoder(CTX).feed(encode_df2_packet(88, 94, firmware=51))
    assert [r.values() for r in only_readings(decoded)] == [{"spo2": 94, "pulse_rate_oximeter": 88}]


def test_driver_contract() -> None:
    df8, df2 = driver_class("nonin-df8"), driver_class("nonin-df2")
    assert (df8, df2) == (NoninDF8Driver, NoninDF2Driver)
    for cls in (df8, df2):
        assert cls.transport == "serial" and cls.continuous is True
        assert cls.device_class is DeviceClass.PULSE_OXIMETER
        assert cls.serial_defaults is not None
        assert (cls.serial_defaults.baudrate, cls.serial_defaults.parity, cls.serial_defaults.stopbits) == (
            9600,
            "N",
            1,
        )
    opts = df2.options_model.model_validate({"port": "/dev/ttyUSB0", "format": "df7", "configure": True})
    decoder = df2(opts).stream_decoder(CTX)
    assert isinstance(decoder, DF2Decoder) and decoder.fmt == "df7"
    assert decoder.commands_on_connect()[0] == bytes.fromhex("02 70 02 02 07 03")
    with pytest.raises(ValueError, match="format"):
        df2.options_model.model_validate({"port": "/dev/ttyUSB0", "format": "df13"})
    with pytest.raises(ValueError, match="unknown setting"):
        df8().simulator(bogus=1)


def test_simulator_answers_commands() -> None:
    sim = NoninSimulator(fmt="df8")
    assert sim.on_request(bytes.fromhex("02 70 02 02 02 03")) == b"\x06"
    assert sim.fmt == "df2"
    assert sim.on_request(bytes.fromhex("02 72 06 32 0C 1F 0E")) == b""  # partial command
    assert sim.on_request(bytes.fromhex("1E 0F 03")) == b"\x06"
    assert sim.clock == datetime(2050, 12, 31, 14, 30, 15)
    assert sim.on_request(bytes.fromhex("02 72 00 03")) == bytes.fromhex("02 F2 06 32 0C 1F 0E 1E 0F 03")
    assert sim.on_request(bytes.fromhex("02 70 02 02 0D 03")) == b"\x15"  # DF13 not simulated: NAK


async def test_decode_cli_reports_checksum_and_truncation(capsys: pytest.CaptureFixture[str]) -> None:
    frames = build_packet("df2", 72, 97, chk_fix={1: 0x00})
    assert await main(["decode", "nonin-df2", "--hex", frames[0].hex()]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: DF2 checksum mismatch: got 0x00, computed 0x")
    assert await main(["decode", "nonin-df8", "--hex", "80 48"]) == 1
    assert capsys.readouterr().err.strip().startswith("error: truncated record")
    assert await main(["decode", "nonin-df8", "--hex", "80486100"]) == 0
    out = capsys.readouterr().out
    assert '"spo2"' in out and "97" in out
