"""health-o-meter: the ESC-tag protocol (devices.md 4.5, manual example), whole expected Readings,
property tests, and end to end through a pty and the serial transport."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import T0, FakeRuntime, failures_in, fixed_ctx, m, make_driver, start, stop, until
from vitals_agent.cli import main
from vitals_agent.drivers.base import DecodeFailure, DecoderOutput, driver_class
from vitals_agent.drivers.health_o_meter import (
    HealthOMeterDecoder,
    HealthOMeterDriver,
    HealthOMeterOptions,
    HealthOMeterSimulator,
    encode_packet,
)
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.drivers.serial_transport import SerialTransport
from vitals_agent.errors import DecodeError, OverlongError, TruncatedError, UnsupportedError
from vitals_agent.models import (
    DeviceClass,
    DeviceIdentity,
    DeviceStatusEvent,
    Measurement,
    PatientInfo,
    Reading,
)

CTX = fixed_ctx("scale-2")
HOM = DeviceIdentity(id="scale-2", manufacturer="Health o meter")
# The manual's example, with the elided part ("...") left out.
MANUAL = b"\x1bR\x1bI1234567890\x1bW200.00\x1bNm\x1bE"


def hom_reading(
    measurements: list[Measurement],
    raw: bytes,
    *,
    patient: PatientInfo | None = None,
    extra: dict[str, str] | None = None,
) -> Reading:
    return Reading(
        device=HOM,
        device_class=DeviceClass.SCALE,
        measurements=tuple(measurements),
        observed_at=T0,
        received_at=T0,
        source_patient=patient,
        extra=extra or {},
        raw=raw,
    )


def decode(data: bytes, id_field: str = "ignore") -> list[DecoderOutput]:
    decoder = HealthOMeterDecoder(CTX, id_field=id_field)
    return decoder.feed(data) + decoder.flush()


def test_manual_example_and_the_id_field() -> None:
    assert decode(MANUAL + b"\r\n") == [hom_reading([m("body_weight", "200.00", "kg")], MANUAL)]
    assert decode(MANUAL, "patient") == [
        hom_reading([m("body_weight", "200.00", "kg")], MANUAL, patient=PatientInfo(mrn="1234567890"))
    ]
    (as_device,) = decode(MANUAL, "device")
    assert isinstance(as_device, Reading)
    assert as_device.device == DeviceIdentity(
        id="scale-2", manufacturer="Health o meter", serial_number="1234567890"
    )
    assert as_device.source_patient is None


def test_conventional_units_height_bmi_tare() -> None:
    raw = encode_packet("150.2", metric=False, height="68.5", bmi="22.5", tare="1.5")
    assert decode(raw) == [
        hom_reading(
            [
                m("body_weight", "150.2", "[lb_av]"),
                m("body_height", "68.5", "[in_i]"),
                m("bmi", "22.5", "kg/m2"),
            ],
            raw,
            extra={"tare": "1.5 lb"},
        )
    ]
    metric = encode_packet("70.4", metric=True, height="172.0", bmi="23.8")
    assert decode(metric)[0] == hom_reading(
        [m("body_weight", "70.4", "kg"), m("body_height", "172.0", "cm"), m("bmi", "23.8", "kg/m2")], metric
    )


def test_repeated_packets_are_one_weighing_until_unloaded() -> None:
    a, zero, b = encode_packet("200.00"), encode_packet("0.00"), encode_packet("200.00")
    out = decode(a + a + zero + b)
    assert [r.values() for r in out if isinstance(r, Reading)] == [{"body_weight": Decimal("200.00")}] * 2


def test_truncated_and_bad_packets() -> None:
    out = decode(
        b"junk" + MANUAL[:15] + encode_packet("80.1") + b"\x1bR\x1bW80.1\x1bE" + b"\x1bW1\x1bNx\x1bE"
    )
    errs = [f.error for f in failures_in(out)]
    assert [type(e) for e in errs] == [DecodeError, TruncatedError, TruncatedError, UnsupportedError]
    assert [str(e) for e in errs] == [
        "Health o meter: 4 bytes outside a packet (6A 75 6E 6B)",
        "truncated Health o meter packet: no end tag (ESC E)",
        "Health o meter packet has no units tag (N)",
        "Health o meter: unknown units 'x' (expected m or c)",
    ]
    assert [r.values() for r in out if isinstance(r, Reading)] == [{"body_weight": Decimal("80.1")}]
    (end,) = failures_in(decode(MANUAL[:-2]))
    assert isinstance(end.error, TruncatedError)


def test_endless_escs_inside_a_packet_are_capped_then_discarded_to_the_end_tag() -> None:
    # Repeated ESCs (empty tags) used to grow the packet buffer without bound and report nothing. Now the
    # packet is overlong: discarded whole up to its end tag, reported every MAX_DISCARD bytes meanwhile.
    decoder = HealthOMeterDecoder(CTX)
    out: list[DecoderOutput] = []
    chunk = b"\x1b" * 10_000
    for _ in range(200):  # 2,000,000 bytes
        out += decoder.feed(chunk)
        assert len(decoder._raw) <= decoder.max_buffer and len(decoder._discard_head) <= 4096
    fails = failures_in(out)
    assert len(fails) == 2_000_000 // 65536  # one per MAX_DISCARD bytes while no end tag comes
    assert all(isinstance(f.error, OverlongError) for f in fails)
    assert str(fails[0].error) == (
        "Health o meter packet longer than 8192 bytes (65536 bytes): no end tag (ESC E) yet: still discarding"
    )
    assert all(isinstance(o, DecodeFailure) for o in out)
    # The next ESC E ends the overlong packet (that packet is not decoded); the one after it decodes.
    ended = decoder.feed(MANUAL)
    assert [type(o) for o in ended] == [DecodeFailure]
    assert str(failures_in(ended)[0].error).endswith("discarded up to its end tag (ESC E)")
    after = decoder.feed(MANUAL)
    assert [o.measurements for o in after if isinstance(o, Reading)] == [(m("body_weight", "200.00", "kg"),)]
    assert failures_in(after) == []


def test_poll_and_contract() -> None:
    cls = driver_class("health-o-meter")
    assert cls is HealthOMeterDriver
    assert (cls.transport, cls.continuous, cls.device_class) == ("serial", False, DeviceClass.SCALE)
    assert HealthOMeterDecoder(CTX).poll_interval is None
    polled = cls(
        HealthOMeterOptions.model_validate({"port": "/dev/ttyS0", "poll_seconds": 3})
    ).stream_decoder(CTX)
    assert polled.poll_interval == 3
    polled.poll()
    assert polled.data_to_send() == b"Q"


async def test_decode_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["decode", "health-o-meter", "--hex", MANUAL[:20].hex()]) == 1
    assert capsys.readouterr().err.startswith("error: truncated record")
    assert await main(["decode", "health-o-meter", "--hex", MANUAL.hex()]) == 0
    assert '"body_weight"' in capsys.readouterr().out


@given(st.binary(max_size=400))
@settings(max_examples=200, deadline=None)
def test_random_bytes_never_raise(data: bytes) -> None:
    for item in decode(data):
        assert isinstance(item, Reading | DeviceStatusEvent | DecodeFailure)
        if isinstance(item, DecodeFailure):
            assert isinstance(item.error, DecodeError)


@given(st.lists(st.sampled_from(list("RIWHTBNE0123456789.mc \x1b")), max_size=120))
@settings(max_examples=200, deadline=None)
def test_tag_soup_never_raises(chars: list[str]) -> None:
    for item in decode("".join(chars).encode()):
        assert not isinstance(item, DecodeFailure) or isinstance(item.error, DecodeError)


@given(
    st.lists(st.decimals(min_value=Decimal("1"), max_value=Decimal("600"), places=2), min_size=1, max_size=4),
    st.data(),
)
@settings(max_examples=80, deadline=None)
def test_random_splits_give_the_same_readings(weights: list[Decimal], data: st.DataObject) -> None:
    stream = b"".join(encode_packet("0.00") + encode_packet(str(w), metric=False) * 2 for w in weights)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    whole = HealthOMeterDecoder(CTX).feed(stream)
    decoder = HealthOMeterDecoder(CTX)
    pieces: list[DecoderOutput] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        pieces += decoder.feed(stream[prev:c])
        prev = c
    assert pieces == whole
    assert [r.values()["body_weight"] for r in whole if isinstance(r, Reading)] == weights


async def test_end_to_end_polled(pty_device: PtyDevice) -> None:
    driver = make_driver("health-o-meter", pty_device.link, poll_seconds=0.02)
    rt = FakeRuntime(driver, device_id="scale-2", ctx=CTX)
    sim = HealthOMeterSimulator(weights=("185.40",), metric=False, height="70.0", stream=False)
    raw = encode_packet("185.40", metric=False, height="70.0")
    sim_task = asyncio.create_task(sim.run(pty_device))
    transport = SerialTransport(rt)
    task = start(transport)
    try:
        (got,) = await rt.wait_readings(1)
        # polled three more times and answered each time (the same weight): no new reading
        await until(lambda: transport.bytes_received >= 4 * len(raw), what="four answers")
    finally:
        await stop(task)
        sim_task.cancel()
    assert got == hom_reading(
        [m("body_weight", "185.40", "[lb_av]"), m("body_height", "70.0", "[in_i]")], raw
    )
    assert len(rt.readings) == 1 and rt.failures == []
