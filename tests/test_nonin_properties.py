"""Nonin decoders: property tests (hypothesis) and end to end through a real pty + the serial transport."""

from __future__ import annotations

import asyncio
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import T0, FakeRuntime, fixed_ctx, make_driver, start, stop, supervise
from vitals_agent.drivers.base import DecodeFailure, DecoderOutput, StreamDecoder
from vitals_agent.drivers.nonin import DF2Decoder, DF8Decoder, NoninSimulator, encode_df2_packet, encode_df8
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.drivers.serial_transport import SerialTransport
from vitals_agent.errors import DecodeError
from vitals_agent.models import DeviceClass, DeviceIdentity, DeviceStatusEvent, Measurement, Reading

CTX = fixed_ctx("ox-1")
HR = st.one_of(st.none(), st.integers(0, 300))
SPO2 = st.one_of(st.none(), st.integers(0, 100))


def decoders() -> list[StreamDecoder]:
    configured = DF8Decoder(CTX, configure=True)
    configured.commands_on_connect()  # now expects ACK/NAK bytes too
    return [DF8Decoder(CTX), configured, DF2Decoder(CTX), DF2Decoder(CTX, fmt="df7")]


def check_outputs(out: list[DecoderOutput]) -> None:
    for item in out:
        assert isinstance(item, Reading | DeviceStatusEvent | DecodeFailure)
        if isinstance(item, DecodeFailure):
            assert isinstance(item.error, DecodeError)
            assert str(item.error) and "\n" not in str(item.error)
        if isinstance(item, Reading):
            values = item.values()
            assert values.get("spo2", 0) <= 100  # 127 is never a value
            assert values.get("pulse_rate_oximeter", 0) < 511


@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
@settings(max_examples=150, deadline=None)
def test_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    for decoder in decoders():
        out: list[DecoderOutput] = []
        for chunk in split(data, cuts):
            out += decoder.feed(chunk)
        out += decoder.flush()
        check_outputs(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks, prev = [], 0
    for p in points:
        chunks.append(data[prev:p])
        prev = p
    chunks.append(data[prev:])
    return chunks


def expected_values(hr: int | None, spo2: int | None) -> dict[str, int]:
    out = {}
    if spo2 is not None:
        out["spo2"] = spo2
    if hr is not None:
        out["pulse_rate_oximeter"] = hr
    return out


@given(st.lists(st.tuples(HR, SPO2), min_size=1, max_size=6), st.lists(st.integers(0, 200), max_size=10))
@settings(max_examples=100, deadline=None)
def test_df8_random_splits_give_the_same_readings(
    values: list[tuple[int | None, int | None]], cuts: list[int]
) -> None:
    stream = b"".join(encode_df8(h, s) for h, s in values)
    whole = DF8Decoder(CTX).feed(stream)
    decoder = DF8Decoder(CTX)
    pieces = [o for chunk in split(stream, cuts) for o in decoder.feed(chunk)]
    assert pieces == whole
    assert [r.values() for r in whole if isinstance(r, Reading)] == [expected_values(h, s) for h, s in values]


@given(
    st.sampled_from(["df2", "df7"]),
    st.lists(st.tuples(HR, SPO2, st.binary(max_size=12)), min_size=1, max_size=3),
    st.lists(st.integers(0, 400), max_size=10),
)
@settings(max_examples=60, deadline=None)
def test_df2_random_splits_and_garbage_between_packets(
    fmt: str, packets: list[tuple[int | None, int | None, bytes]], cuts: list[int]
) -> None:
    # Garbage that cannot itself look like a frame start (0x01 for DF2, bit 7 for DF7).
    stream = b"".join(
        bytes(b for b in junk if b != 0x01 and b < 0x80) + encode_df2_packet(h, s, fmt=fmt)
        for h, s, junk in packets
    )
    whole = DF2Decoder(CTX, fmt=fmt).feed(stream)
    decoder = DF2Decoder(CTX, fmt=fmt)
    pieces = [o for chunk in split(stream, cuts) for o in decoder.feed(chunk)]
    assert [o for o in pieces if isinstance(o, Reading)] == [o for o in whole if isinstance(o, Reading)]
    got = [r.values() for r in whole if isinstance(r, Reading)]
    assert got == [expected_values(h, s) for h, s, _ in packets]


# ---------------------------------------------------------------------------------------------- pty


async def run_sim(sim: NoninSimulator, device: PtyDevice) -> asyncio.Task[None]:
    return asyncio.create_task(sim.run(device))


async def test_df8_end_to_end_with_configure(pty_device: PtyDevice) -> None:
    """The agent opens the port, selects DF8 and sets the clock; the simulated 9560 ACKs both and streams."""
    driver = make_driver("nonin-df8", pty_device.link, configure=True)
    rt = FakeRuntime(driver, device_id="ox-1", ctx=CTX)
    sim = NoninSimulator(fmt="df8", hr=72, spo2=97, interval=0.02)
    sim_task = await run_sim(sim, pty_device)
    task = start(SerialTransport(rt))
    try:
        await rt.wait_readings(3)
        await rt.wait_until(lambda r: sum(isinstance(e, DeviceStatusEvent) for e in r.events) == 2)
    finally:
        await stop(task)
        sim_task.cancel()
    assert sim.clock == datetime(2026, 3, 11, 14, 0, 0)  # fixed host clock, device zone UTC
    assert bytes(sim.received) == bytes.fromhex("02 70 02 02 08 03 02 72 06 1A 03 0B 0E 00 00 03")
    notes = [e.note for e in rt.events if isinstance(e, DeviceStatusEvent)]
    assert notes == ["Nonin acknowledged the data-format select", "Nonin acknowledged the clock set"]
    assert rt.readings[0] == Reading(
        device=DeviceIdentity(id="ox-1", manufacturer="Nonin"),
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=(
            Measurement(metric="spo2", value=97, unit="%"),
            Measurement(metric="pulse_rate_oximeter", value=72, unit="/min"),
        ),
        observed_at=T0,
        received_at=T0,
        raw=bytes.fromhex("80 48 61 00"),
    )
    assert rt.failures == []


async def test_df2_end_to_end_unplug_mid_packet(pty_device: PtyDevice) -> None:
    driver = make_driver("nonin-df2", pty_device.link)
    rt = FakeRuntime(driver, device_id="ox-1", ctx=CTX)
    tr = SerialTransport(rt)
    task = start(tr)
    try:
        await rt.wait_until(lambda r: r.connected)
        packet = encode_df2_packet(75, 98)
        await pty_device.write(packet + encode_df2_packet(76, 97)[:60])
        await rt.wait_until(lambda r: tr.bytes_received == len(packet) + 60)
        pty_device.unplug()
        await rt.wait_until(lambda r: not r.connected)
    finally:
        await stop(task)
    assert [r.values() for r in rt.readings] == [{"spo2": 98, "pulse_rate_oximeter": 75}]
    assert rt.failures == []  # the half packet was discarded on disconnect, not reported as a reading


async def test_replug_reconfigures_the_oximeter(pty_device: PtyDevice) -> None:
    """Unplug mid-frame, replug at the same path (a power-cycled device forgot nothing but may have lost the
    clock): the agent reopens, sends the format select and the clock again, and reads on."""
    driver = make_driver("nonin-df8", pty_device.link, configure=True)
    rt = FakeRuntime(driver, device_id="ox-1", ctx=CTX)
    tr = SerialTransport(rt)
    first = NoninSimulator(fmt="df8", hr=72, spo2=97, interval=0.02)
    sim_task = asyncio.create_task(first.run(pty_device))
    task = asyncio.create_task(supervise(tr))
    try:
        await rt.wait_readings(2)
        sim_task.cancel()
        await pty_device.write(encode_df8(60, 90)[:2])  # half a frame, then the cable goes
        pty_device.unplug()
        await rt.wait_until(lambda r: not r.connected)
        before = len(rt.readings)
        pty_device.replug()
        second = NoninSimulator(fmt="df8", hr=64, spo2=95, interval=0.02)
        sim_task = asyncio.create_task(second.run(pty_device))
        await rt.wait_until(lambda r: any(x.values().get("spo2") == 95 for x in r.readings))
    finally:
        await stop(task)
        sim_task.cancel()
    assert tr.connects == 2
    assert bytes(second.received).startswith(bytes.fromhex("02 70 02 02 08 03 02 72 06"))
    assert second.clock == datetime(2026, 3, 11, 14, 0, 0)
    after = [r.values() for r in rt.readings[before:]]
    assert {"spo2": 90, "pulse_rate_oximeter": 60} not in after  # the cut frame never became a reading
    assert all(v == {"spo2": 95, "pulse_rate_oximeter": 64} for v in after)
    assert [e.note for e in rt.events if isinstance(e, DeviceStatusEvent)].count(
        "Nonin acknowledged the data-format select"
    ) == 2
