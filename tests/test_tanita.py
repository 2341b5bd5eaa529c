"""tanita: KEY,VALUE records with the CS checksum (devices.md 4.5), whole expected Readings, property tests,
end to end through a pty and the serial transport."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import T0, FakeRuntime, failures_in, fixed_ctx, m, make_driver, start, stop
from vitals_agent.cli import main
from vitals_agent.drivers.base import DecodeFailure, DecoderOutput, driver_class
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.drivers.serial_transport import SerialTransport
from vitals_agent.drivers.tanita import TanitaDecoder, TanitaDriver, TanitaSimulator, encode_record
from vitals_agent.errors import ChecksumError, DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import DeviceClass, DeviceIdentity, DeviceStatusEvent, Measurement, Reading

CTX = fixed_ctx("bc-1")
# devices.md 4.5: synthetic record whose checksum (3F) was computed with the documented rule.
SYNTHETIC = b'{0,16,~0,1,~1,1,~2,1,MO,"BC-418",Bt,0,GE,2,AG,45,Hm,165.0,Pt,1.0,Wk,68.4,MI,25.1,FW,31.2,CS,3F'


def tanita_reading(measurements: list[Measurement], raw: bytes, extra: dict[str, str], model: str) -> Reading:
    return Reading(
        device=DeviceIdentity(id="bc-1", manufacturer="Tanita", model=model),
        device_class=DeviceClass.BODY_COMPOSITION,
        measurements=tuple(measurements),
        observed_at=T0,
        received_at=T0,
        extra=extra,
        raw=raw,
    )


def decode(data: bytes) -> list[DecoderOutput]:
    decoder = TanitaDecoder(CTX)
    return decoder.feed(data) + decoder.flush()


def test_synthetic_vector() -> None:
    assert decode(SYNTHETIC + b"\r\n") == [
        tanita_reading(
            [
                m("body_height", "165.0", "cm"),
                m("body_weight", "68.4", "kg"),
                m("bmi", "25.1", "kg/m2"),
                m("body_fat_pct", "31.2", "%"),
            ],
            SYNTHETIC,
            {"Bt": "0", "Pt": "1.0"},  # gender and age (keyed-in patient data) are not kept
            "BC-418",
        )
    ]


def test_pounds_and_body_composition_extras() -> None:
    raw = encode_record([("MO", '"WB-3000"'), ("Wp", "150.8"), ("fW", "21.4"), ("wW", "38.2"), ("ZF", "498")])
    assert decode(raw) == [
        tanita_reading(
            [m("body_weight", "150.8", "[lb_av]")],
            raw.rstrip(b"\r\n"),
            {"fW": "21.4", "wW": "38.2", "ZF": "498"},
            "WB-3000",
        )
    ]


def test_checksum_mismatch() -> None:
    bad = SYNTHETIC[:-2] + b"40"
    (f,) = failures_in(decode(bad + b"\r\n"))
    assert isinstance(f.error, ChecksumError)
    assert str(f.error) == "Tanita checksum mismatch: got 0x40, computed 0x3F"
    assert f.data == bad


def test_truncated_records() -> None:
    out = decode(SYNTHETIC[:40] + SYNTHETIC + b"\r\n" + SYNTHETIC[:-6] + b"\r\n" + SYNTHETIC[:-1] + b"\r\n")
    errs = [f.error for f in failures_in(out)]
    assert [type(e) for e in errs] == [TruncatedError, TruncatedError, TruncatedError]
    assert str(errs[0]) == "truncated Tanita record (40 bytes, no end)"
    assert str(errs[1]).startswith("truncated Tanita record: no checksum field (CS)")
    assert str(errs[2]) == "truncated Tanita record: checksum '3' incomplete"
    assert len([o for o in out if isinstance(o, Reading)]) == 1
    (end,) = failures_in(decode(SYNTHETIC[:50]))
    assert isinstance(end.error, TruncatedError)


def test_glitch_after_record_and_garbage() -> None:
    out = decode(SYNTHETIC + b"\r\n\x00\xff" + b"xyz" + SYNTHETIC + b"\r\n")
    assert [type(f.error) for f in failures_in(out)] == [DecodeError]  # "xyz" only: the glitch byte is noise
    assert len([o for o in out if isinstance(o, Reading)]) == 2


def test_dash_value_is_absent_and_keeps_the_rest_of_the_record() -> None:
    # "FW,-" (no body fat measured) used to throw the whole record away, weight included.
    record = b'{0,16,~0,1,~1,1,~2,1,MO,"BC-418",Wp,150.8,Hm,165.0,FW,-,CS,DD'
    assert f"{sum(record[: record.rindex(b'CS')]) & 0xFF:02X}" == "DD"  # the documented checksum rule
    no_fat = Measurement(
        metric="body_fat_pct", value=None, unit="%", absent_reason="device sent no value (FW,-)"
    )
    assert decode(record + b"\r\n") == [
        tanita_reading(
            [m("body_weight", "150.8", "[lb_av]"), m("body_height", "165.0", "cm"), no_fat],
            record,
            {},
            "BC-418",
        )
    ]
    blank = encode_record([("MO", '"SC-240"'), ("Wk", "70.1"), ("MI", " --.- ")])
    assert decode(blank) == [
        tanita_reading(
            [
                m("body_weight", "70.1", "kg"),
                Measurement(
                    metric="bmi", value=None, unit="kg/m2", absent_reason="device sent no value (MI,--.-)"
                ),
            ],
            blank.rstrip(b"\r\n"),
            {},
            "SC-240",
        )
    ]
    (f,) = failures_in(decode(encode_record([("Wk", "70.1"), ("FW", "-1-")])))  # not a number, not blank
    assert str(f.error) == "Tanita FW: '-1-' is not a number"


def test_record_without_weight() -> None:
    (f,) = failures_in(decode(encode_record([("MO", '"SC-240"'), ("Hm", "170.0")])))
    assert isinstance(f.error, UnsupportedError)


def test_contract() -> None:
    cls = driver_class("tanita")
    assert cls is TanitaDriver
    assert (cls.transport, cls.continuous, cls.device_class) == (
        "serial",
        False,
        DeviceClass.BODY_COMPOSITION,
    )
    assert cls.serial_defaults is not None and cls.serial_defaults.baudrate == 9600


async def test_decode_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["decode", "tanita", "--hex", (SYNTHETIC[:-2] + b"40\r\n").hex()]) == 1
    assert capsys.readouterr().err.strip() == "error: Tanita checksum mismatch: got 0x40, computed 0x3F"
    assert await main(["decode", "tanita", "--hex", SYNTHETIC[:30].hex()]) == 1
    assert capsys.readouterr().err.startswith("error: truncated record")
    assert await main(["decode", "tanita", "--hex", (SYNTHETIC + b"\r\n").hex()]) == 0
    assert '"body_fat_pct"' in capsys.readouterr().out


@given(st.binary(max_size=400))
@settings(max_examples=200, deadline=None)
def test_random_bytes_never_raise(data: bytes) -> None:
    for item in decode(data):
        assert isinstance(item, Reading | DeviceStatusEvent | DecodeFailure)
        if isinstance(item, DecodeFailure):
            assert isinstance(item.error, DecodeError)


@given(st.text('{0,~CSWkpHmMIFW"1234567890.ABCDEF\r\n', max_size=150))
@settings(max_examples=200, deadline=None)
def test_near_miss_text_never_raises(text: str) -> None:
    for item in decode(text.encode()):
        assert not isinstance(item, DecodeFailure) or isinstance(item.error, DecodeError)


VALUES = st.decimals(min_value=Decimal("10"), max_value=Decimal("250"), places=1)


@given(st.lists(st.tuples(VALUES, VALUES), min_size=1, max_size=4), st.data())
@settings(max_examples=80, deadline=None)
def test_random_splits_give_the_same_readings(
    records: list[tuple[Decimal, Decimal]], data: st.DataObject
) -> None:
    stream = b"".join(encode_record([("Wk", str(w)), ("Hm", str(h))]) + b"\x00" for w, h in records)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    whole = TanitaDecoder(CTX).feed(stream)
    decoder = TanitaDecoder(CTX)
    pieces: list[DecoderOutput] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        pieces += decoder.feed(stream[prev:c])
        prev = c
    assert pieces == whole
    assert [r.values() for r in whole if isinstance(r, Reading)] == [
        {"body_weight": w, "body_height": h} for w, h in records
    ]


async def test_end_to_end(pty_device: PtyDevice) -> None:
    driver = make_driver("tanita", pty_device.link)
    rt = FakeRuntime(driver, device_id="bc-1", ctx=CTX)
    sim = TanitaSimulator(weight="68.4", height="165.0", bmi="25.1", fat="31.2", interval=0.01, glitch=True)
    sim_task = asyncio.create_task(sim.run(pty_device))
    task = start(SerialTransport(rt))
    try:
        got = await rt.wait_readings(2)
    finally:
        await stop(task)
        sim_task.cancel()
    assert got[0] == tanita_reading(
        [
            m("body_height", "165.0", "cm"),
            m("body_weight", "68.4", "kg"),
            m("bmi", "25.1", "kg/m2"),
            m("body_fat_pct", "31.2", "%"),
        ],
        sim.record.rstrip(b"\r\n"),
        {"Bt": "0", "Pt": "1.0", "fW": "21.3", "MW": "47.1", "ZF": "512"},
        "BC-418",
    )
    assert rt.failures == []
