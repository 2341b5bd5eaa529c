"""SunTech Advantage decoder: vectors from devices.md 2.5 and the public implementation's frame layout,
asserted against whole Readings; property tests; end to end through a pty and the serial transport."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import T0, FakeRuntime, failures_in, fixed_ctx, make_driver, start, stop
from vitals_agent.cli import main
from vitals_agent.drivers.base import DecodeFailure, DecoderOutput, driver_class
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.drivers.serial_transport import SerialTransport
from vitals_agent.drivers.suntech import (
    COMPLETE_FRAME,
    GET_BP_DATA,
    GET_CUFF_PRESSURE,
    MAX_LEN,
    PNEUMATICS_CLOSED,
    START_MEASUREMENT,
    SunTechDecoder,
    SunTechDriver,
    SunTechSimulator,
    encode_bp_data,
    encode_response,
)
from vitals_agent.errors import ChecksumError, DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import DeviceClass, DeviceIdentity, DeviceStatusEvent, Measurement, Reading

CTX = fixed_ctx("bp-1")
SUNTECH = DeviceIdentity(id="bp-1", manufacturer="SunTech Medical")

# A 24-byte BP-data response laid out field by field (systolic 115, diastolic 74, 30 beats, status 1,
# test codes, HR 85, MAP 88, error 0); the last byte makes the frame sum to 0 mod 256.
BP_FRAME = bytes.fromhex(
    "3E 18"  # start, length 24
    " 73 00 4A 00"  # systolic 115, diastolic 74 (u16 LE)
    " 1E 01"  # beats counted 30, BP status 1
    " 00 00 00 00 00 00 31 07"  # test codes
    " 55 00 58 00"  # heart rate 85, spare, MAP 88 (u16 LE)
    " 00 00 00"  # error code 0, spares
    " E9"  # checksum
)
CUFF_258 = bytes([0x3E, 0x05, 0x02, 0x01, 0xBA])  # cuff pressure 258 mmHg


def bp_reading(measurements: list[Measurement], raw: bytes, extra: dict[str, str] | None = None) -> Reading:
    return Reading(
        device=SUNTECH,
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=tuple(measurements),
        observed_at=T0,
        received_at=T0,
        extra=extra or {"bp_status": "0x01", "heart_beats": "30", "test_codes": "0000000000003107"},
        raw=raw,
    )


def mm(metric: str, v: int | None, reason: str | None = None) -> Measurement:
    unit = "/min" if metric == "pulse_rate" else "mm[Hg]"
    return Measurement(metric=metric, value=v, unit=unit, absent_reason=reason)


def test_frames_sum_to_zero() -> None:
    for frame in (BP_FRAME, CUFF_258, START_MEASUREMENT, GET_BP_DATA, GET_CUFF_PRESSURE, PNEUMATICS_CLOSED):
        assert sum(frame) % 256 == 0, frame.hex()
    assert bytes.fromhex("3A 20 A6") == START_MEASUREMENT
    assert bytes.fromhex("3A 79 03 00 4A") == GET_BP_DATA
    assert bytes.fromhex("3E 04 4B 73") == COMPLETE_FRAME


def test_bp_data_vector() -> None:
    assert SunTechDecoder(CTX).feed(BP_FRAME) == [
        bp_reading(
            [mm("bp_systolic", 115), mm("bp_diastolic", 74), mm("bp_mean", 88), mm("pulse_rate", 85)],
            BP_FRAME,
        )
    ]


def test_cuff_pressure_is_progress_only_and_completion_requests_the_result() -> None:
    decoder = SunTechDecoder(CTX)
    assert decoder.feed(CUFF_258) == []
    assert decoder.data_to_send() == b""
    assert decoder.feed(COMPLETE_FRAME) == [
        DeviceStatusEvent(note="SunTech measurement complete; result requested")
    ]
    assert decoder.data_to_send() == GET_BP_DATA
    assert decoder.data_to_send() == b""


def test_lost_result_is_requested_again_and_a_duplicate_answer_is_dropped() -> None:
    decoder = SunTechDecoder(CTX)
    assert decoder.poll_interval == 2.0
    decoder.poll()
    assert decoder.data_to_send() == b""  # nothing pending: polling sends nothing
    decoder.feed(COMPLETE_FRAME)
    assert decoder.data_to_send() == GET_BP_DATA
    sent = []
    for _ in range(8):  # the answer never comes: two retries, one every second poll, then give up
        decoder.poll()
        sent.append(decoder.data_to_send())
    assert sent == [b"", GET_BP_DATA, b"", GET_BP_DATA, b"", b"", b"", b""]
    # the first answer and a late answer to a retry: one reading
    out = decoder.feed(BP_FRAME + BP_FRAME)
    assert [type(o) for o in out] == [Reading]
    decoder.poll()
    assert decoder.data_to_send() == b""
    # a new measurement with the same values is a new reading
    out = decoder.feed(COMPLETE_FRAME + BP_FRAME)
    assert [type(o) for o in out] == [DeviceStatusEvent, Reading]


def test_error_code_gives_no_values_with_reason() -> None:
    frame = encode_bp_data(0, 0, 0, 0, error=3, status=0, beats=0)
    why = "measurement failed: SunTech error code 3"
    assert SunTechDecoder(CTX).feed(frame) == [
        bp_reading(
            [
                mm("bp_systolic", None, why),
                mm("bp_diastolic", None, why),
                mm("bp_mean", None, why),
                mm("pulse_rate", None, why),
            ],
            frame,
            extra={
                "bp_status": "0x00",
                "heart_beats": "0",
                "test_codes": "0000000000000000",
                "error_code": "3",
            },
        )
    ]


def test_encoder_matches_the_field_layout() -> None:
    frame = encode_bp_data(115, 74, 88, 85)
    assert frame[:14] == BP_FRAME[:14] and frame[16:-1] == BP_FRAME[16:-1] and sum(frame) % 256 == 0


def test_checksum_failure() -> None:
    bad = BP_FRAME[:-1] + b"\xe8"
    out = SunTechDecoder(CTX).feed(bad + BP_FRAME)
    (failure,) = failures_in(out)
    assert isinstance(failure.error, ChecksumError)
    assert str(failure.error).startswith("SunTech checksum mismatch: got 0xE8, computed 0xE9 (3E 18 73")
    assert failure.data == bad
    assert next(o for o in out if isinstance(o, Reading)).values() == {
        "bp_systolic": 115,
        "bp_diastolic": 74,
        "bp_mean": 88,
        "pulse_rate": 85,
    }


def test_truncated_frame_does_not_hold_the_next_one() -> None:
    decoder = SunTechDecoder(CTX)
    out = decoder.feed(BP_FRAME[:9] + COMPLETE_FRAME)
    assert isinstance(out[0], DecodeFailure) and isinstance(out[0].error, TruncatedError)
    assert str(out[0].error) == f"truncated SunTech frame: 9 bytes ({BP_FRAME[:9].hex(' ').upper()})"
    assert out[1:] == [DeviceStatusEvent(note="SunTech measurement complete; result requested")]
    assert decoder.data_to_send() == GET_BP_DATA


def test_garbage_and_unknown_frames() -> None:
    unknown = encode_response(b"\x01\x02\x03")
    out = SunTechDecoder(CTX).feed(b"\x00\xff\x3e\x00" + CUFF_258 + unknown + BP_FRAME)
    errs = [f.error for f in failures_in(out)]
    assert [type(e) for e in errs] == [DecodeError, UnsupportedError]
    assert str(errs[0]) == "SunTech: 4 bytes outside a frame (00 FF 3E 00)"
    assert len([o for o in out if isinstance(o, Reading)]) == 1


def test_garbage_fed_byte_by_byte_is_not_held_in_the_frame_buffer() -> None:
    # Garbage used to stay in the frame buffer (up to max_buffer) and be rescanned on every feed: quadratic
    # with 1-byte serial reads. Known garbage must leave the buffer at once, and still be reported.
    garbage = bytes(random.Random(7).choice([b for b in range(256) if b not in b":>"]) for _ in range(20_000))
    decoder = SunTechDecoder(CTX)
    out: list[DecoderOutput] = []
    for i in range(len(garbage)):
        out += decoder.feed(garbage[i : i + 1])
        assert len(decoder._buf) <= MAX_LEN
    assert len(failures_in(out)) == len(out)
    # the cap, as before
    assert [str(f.error) for f in failures_in(out)] == ["SunTech: no frame in 8126 bytes"] * 2
    assert b"".join(f.data for f in failures_in(out)) + decoder.pending() == garbage
    out = decoder.feed(BP_FRAME)
    assert str(failures_in(out)[0].error).startswith("SunTech: 3748 bytes outside a frame (")
    assert failures_in(out)[0].data == garbage[-3748:]
    assert out[1:] == [
        bp_reading(
            [mm("bp_systolic", 115), mm("bp_diastolic", 74), mm("bp_mean", 88), mm("pulse_rate", 85)],
            BP_FRAME,
        )
    ]


def test_truncated_at_end_of_input() -> None:
    out = SunTechDriver().decode_chunks([BP_FRAME[:10]], CTX)
    assert len(out) == 1 and isinstance(out[0], DecodeFailure) and isinstance(out[0].error, TruncatedError)


def test_driver_contract() -> None:
    cls = driver_class("suntech-advantage")
    assert cls is SunTechDriver
    assert (cls.transport, cls.continuous, cls.device_class) == ("serial", False, DeviceClass.BLOOD_PRESSURE)
    assert cls.serial_defaults is not None and cls.serial_defaults.baudrate == 9600


def test_simulator_protocol() -> None:
    sim = SunTechSimulator(systolic=128, diastolic=84, mean=99, heart_rate=67, steps=2)
    assert sim.periodic() == b""  # idle until started
    assert sim.on_request(START_MEASUREMENT[:2]) == b""
    assert sim.on_request(START_MEASUREMENT[2:]) == b""
    assert sim.periodic() == encode_response((80).to_bytes(2, "little"))
    assert sim.periodic() == encode_response((0).to_bytes(2, "little")) + COMPLETE_FRAME
    assert sim.on_request(GET_BP_DATA) == encode_bp_data(128, 84, 99, 67)


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
@settings(max_examples=150, deadline=None)
def test_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    decoder = SunTechDecoder(CTX)
    out: list[DecoderOutput] = []
    prev = 0
    for c in [*sorted(min(c, len(data)) for c in cuts), len(data)]:
        out += decoder.feed(data[prev:c])
        prev = c
    out += decoder.flush()
    for item in out:
        assert isinstance(item, Reading | DeviceStatusEvent | DecodeFailure)
        if isinstance(item, DecodeFailure):
            assert isinstance(item.error, DecodeError) and "\n" not in str(item.error)


RESULT = st.tuples(st.integers(40, 260), st.integers(20, 200), st.integers(30, 220), st.integers(30, 220))


@given(st.lists(st.tuples(st.integers(0, 300), RESULT), min_size=1, max_size=4), st.data())
@settings(max_examples=80, deadline=None)
def test_random_splits_give_the_same_outputs(
    sessions: list[tuple[int, tuple[int, int, int, int]]], data: st.DataObject
) -> None:
    stream = b"".join(
        encode_response(cuff.to_bytes(2, "little")) + COMPLETE_FRAME + encode_bp_data(s, d, m, h)
        for cuff, (s, d, m, h) in sessions
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    whole = SunTechDecoder(CTX).feed(stream)
    decoder = SunTechDecoder(CTX)
    pieces: list[DecoderOutput] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        pieces += decoder.feed(stream[prev:c])
        prev = c
    assert pieces == whole
    assert [r.values() for r in whole if isinstance(r, Reading)] == [
        {"bp_systolic": s, "bp_diastolic": d, "bp_mean": m, "pulse_rate": h} for _, (s, d, m, h) in sessions
    ]
    assert decoder.data_to_send() == GET_BP_DATA * len(sessions)


async def test_decode_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["decode", "suntech-advantage", "--hex", (BP_FRAME[:-1] + b"\x00").hex()]) == 1
    assert capsys.readouterr().err.startswith("error: SunTech checksum mismatch: got 0x00, computed 0xE9")
    assert await main(["decode", "suntech-advantage", "--hex", BP_FRAME[:12].hex()]) == 1
    assert capsys.readouterr().err.startswith("error: truncated record")
    assert await main(["decode", "suntech-advantage", "--hex", BP_FRAME.hex()]) == 0
    assert '"bp_systolic"' in capsys.readouterr().out


async def test_end_to_end_start_complete_fetch(pty_device: PtyDevice) -> None:
    """Start command -> cuff pressure frames -> K -> the decoder asks for the result -> BP data -> reading."""
    driver = make_driver("suntech-advantage", pty_device.link)
    rt = FakeRuntime(driver, device_id="bp-1", ctx=CTX)
    tr = SerialTransport(rt)
    sim = SunTechSimulator(systolic=128, diastolic=84, mean=99, heart_rate=67, interval=0.01, steps=3)
    sim_task = asyncio.create_task(sim.run(pty_device))
    task = start(tr)
    try:
        await rt.wait_until(lambda r: r.connected)
        await tr.write(START_MEASUREMENT)  # what `vitals-agent nibp-start` asks for
        (got,) = await rt.wait_readings(1)
    finally:
        await stop(task)
        sim_task.cancel()
    assert got == bp_reading(
        [mm("bp_systolic", 128), mm("bp_diastolic", 84), mm("bp_mean", 99), mm("pulse_rate", 67)],
        encode_bp_data(128, 84, 99, 67),
        extra={"bp_status": "0x01", "heart_beats": "30", "test_codes": "0000000000000000"},
    )
    assert bytes(sim.received) == START_MEASUREMENT + GET_BP_DATA
    assert rt.failures == []


CONFIG = """
[agent]
facility = "EXAMPLE_CLINIC"
location = "CLINIC^ROOM12"
data_dir = '{data}'
timezone = "America/Chicago"
[ehr]
host = "127.0.0.1"
port = 2575
[[devices]]
id = "bp-1"
driver = "suntech-advantage"
port = '{port}'
[[devices]]
id = "spo2-1"
driver = "masimo-ascii"
port = "/dev/ttyUSB0"
"""


async def test_nibp_start_command(
    pty_device: PtyDevice, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(CONFIG.format(data=tmp_path / "data", port=pty_device.link))
    assert await main(["nibp-start", "--config", str(cfg), "--device", "bp-1"]) == 0
    assert capsys.readouterr().out.strip() == f"start command sent to {pty_device.link}"
    assert await pty_device.read(1.0) == START_MEASUREMENT
    assert await main(["nibp-start", "--port", str(pty_device.link)]) == 0
    assert await pty_device.read(1.0) == START_MEASUREMENT
    capsys.readouterr()
    assert await main(["nibp-start", "--config", str(cfg), "--device", "spo2-1"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: device 'spo2-1' uses driver 'masimo-ascii', not 'suntech-advantage'"
    )
    assert await main(["nibp-start", "--config", str(cfg), "--device", "nope"]) == 1
    assert capsys.readouterr().err.strip() == f"error: no device 'nope' in {cfg}"
    assert await main(["nibp-start", "--port", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot open {tmp_path / 'missing'}") and "\n" not in err
