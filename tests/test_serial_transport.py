"""SerialTransport on real pseudo-terminals with pyserial (pyserial-asyncio-fast), through FakeRuntime."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.kit import FakeRuntime, finish, fixed_ctx, make_driver, start, stop, supervise, until
from vitals_agent.drivers.base import (
    DecodeContext,
    LineDecoder,
    SerialDriver,
    SerialOptions,
    SerialSettings,
    register_driver,
    transport_class,
)
from vitals_agent.drivers.masimo import Rad8Simulator
from vitals_agent.drivers.netserial import Rfc2217Link, TcpLink
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.drivers.serial_transport import SerialTransport, _ThreadLink
from vitals_agent.errors import DecodeError, DeviceNotFoundError, TransportError, TruncatedError
from vitals_agent.host import serial as host_serial
from vitals_agent.models import DeviceClass, DeviceEvent, DeviceStatusEvent, Reading

ASCII1 = (
    "{t} SN=0000123456 SPO2={s}% BPM={b} PI={p}% SPCO=--.-% SPMET=--.-% "
    "DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n"
)


def rad8(i: int, spo2: int = 96, bpm: int = 72, pi: str = "05.10") -> bytes:
    return ASCII1.format(t=f"11/03/26 09:14:{i:02d}", s=f"{spo2:03d}", b=f"{bpm:03d}", p=pi).encode()


def masimo(port: Path | str, **options: object) -> tuple[FakeRuntime, SerialTransport]:
    runtime = FakeRuntime(
        make_driver("masimo-ascii", port, **options), device_id="spo2-1", ctx=fixed_ctx("spo2-1")
    )
    return runtime, SerialTransport(runtime)


def spo2_values(readings: Iterable[Reading]) -> list[int]:
    return [int(r.values()["spo2"]) for r in readings]


async def test_registered_as_serial_transport() -> None:
    assert transport_class("serial") is SerialTransport


async def test_readings_arrive_and_stop_disconnects(pty_device: PtyDevice) -> None:
    rt, tr = masimo(pty_device.link)
    task = start(tr)
    await rt.wait_until(lambda r: r.connected)
    await pty_device.write(rad8(1, 96) + rad8(2, 97) + rad8(3, 95))
    got = await rt.wait_readings(3)
    assert spo2_values(got) == [96, 97, 95]
    assert got[0].device.serial_number == "0000123456"
    assert [r.raw for r in got] == [rad8(i, s).rstrip(b"\r\n") for i, s in ((1, 96), (2, 97), (3, 95))]
    assert rt.failures == []
    await stop(task)
    assert rt.connections == [(True, str(pty_device.link)), (False, "stopped")]


async def test_unplug_mid_frame_gives_no_half_reading_and_raises_transport_error(
    pty_device: PtyDevice,
) -> None:
    rt, tr = masimo(pty_device.link)
    task = start(tr)
    await rt.wait_until(lambda r: r.connected)
    half = rad8(2, 99)[:60]
    await pty_device.write(rad8(1, 96) + half)
    await rt.wait_until(lambda r: tr.bytes_received == len(rad8(1, 96)) + len(half))
    pty_device.unplug()
    error = await finish(task)
    assert isinstance(error, TransportError) and not isinstance(error, DeviceNotFoundError)
    assert "lost" in str(error)
    assert spo2_values(rt.readings) == [96]
    assert rt.failures == []  # the half frame was dropped by reset(), not decoded
    assert rt.connected is False
    # the supervisor's next attempt: the device is gone, so run() fails fast with DeviceNotFoundError
    t0 = time.monotonic()
    with pytest.raises(DeviceNotFoundError):
        await tr.run()
    assert time.monotonic() - t0 < 1.0


async def test_replug_at_same_path_reconnects_and_reads_again(pty_device: PtyDevice) -> None:
    rt, tr = masimo(pty_device.link)
    failures: list[BaseException] = []
    task = asyncio.create_task(supervise(tr, failures=failures))
    try:
        await rt.wait_until(lambda r: r.connected)
        await pty_device.write(rad8(1, 96) + rad8(2, 97)[:30])
        await rt.wait_readings(1)
        await rt.wait_until(lambda r: tr.bytes_received >= len(rad8(1)) + 30)
        pty_device.unplug()
        await rt.wait_until(lambda r: not r.connected)
        await until(lambda: len(failures) >= 4, what="a few failed attempts while unplugged")
        t0 = time.monotonic()
        pty_device.replug()
        await rt.wait_until(lambda r: r.connected)
        await pty_device.write(rad8(3, 94))
        await rt.wait_readings(2)
        took = time.monotonic() - t0
    finally:
        await stop(task)
    assert spo2_values(rt.readings) == [96, 94]  # the cut line 2 never became a reading
    assert rt.failures == []
    assert tr.connects == 2
    assert took < 5.0, f"reconnect after replug took {took:.2f} s"
    print(f"replug -> reading: {took * 1000:.0f} ms")


async def test_device_streaming_before_the_port_opens(pty_device: PtyDevice) -> None:
    sent: list[bytes] = []

    class Recorder:
        async def write(self, data: bytes) -> None:
            sent.append(data)
            await pty_device.write(data)

        async def read(self, timeout: float) -> bytes:
            return await pty_device.read(timeout)

    sim = asyncio.create_task(Rad8Simulator(interval=0.01, seed=3, episode_every=0).run(Recorder()))
    try:
        await until(lambda: len(sent) >= 10, what="lines piling up in the pty before anyone opens it")
        rt, tr = masimo(pty_device.link)
        task = start(tr)
        await rt.wait_readings(5)
        await stop(task)
    finally:
        await stop(sim)
    assert len(sent) > 5
    complete = {line.rstrip(b"\r\n") for line in sent}
    assert all(r.raw in complete for r in rt.readings)  # never a partial line as a reading
    assert len(rt.failures) <= 1  # at most the line the port opened in the middle of


async def test_garbage_like_a_wrong_baud_rate_is_counted_without_crash(pty_device: PtyDevice) -> None:
    rt, tr = masimo(pty_device.link)
    task = start(tr)
    await rt.wait_until(lambda r: r.connected)
    noise = random.Random(1).randbytes(6000)  # what 9600 baud looks like when the device sends at 19200
    await pty_device.write(noise)
    await pty_device.write(b"\r\n" + rad8(5, 98))
    await rt.wait_readings(1)
    assert not task.done()
    await stop(task)
    assert spo2_values(rt.readings) == [98]
    assert len(rt.failures) >= 1
    assert all(isinstance(f.error, DecodeError) and f.data for f in rt.failures)


async def test_bytes_lost_in_a_frame(pty_device: PtyDevice) -> None:
    rt, tr = masimo(pty_device.link)
    task = start(tr)
    await rt.wait_until(lambda r: r.connected)
    line1 = rad8(1, 91)
    lost_middle = line1[:40] + line1[70:]  # BPM and PI lost
    lost_tail = rad8(2, 92)[:55]  # tail and CR LF lost: runs into the next line
    await pty_device.write(lost_middle + lost_tail + rad8(3, 93) + rad8(4, 94))
    await rt.wait_readings(2)
    await stop(task)
    assert spo2_values(rt.readings) == [93, 94]
    assert [type(f.error) for f in rt.failures] == [TruncatedError, TruncatedError]


async def test_missing_port_raises_device_not_found_fast(tmp_path: Path) -> None:
    rt, tr = masimo(tmp_path / "ttyNOPE")
    t0 = time.monotonic()
    with pytest.raises(DeviceNotFoundError, match="does not exist"):
        await tr.run()
    assert time.monotonic() - t0 < 1.0
    assert rt.connections == []


async def test_stale_link_to_a_vanished_pty_is_device_not_found(pty_device: PtyDevice) -> None:
    pty_device.unplug(remove_link=False)
    assert pty_device.link.is_symlink()
    _, tr = masimo(pty_device.link)
    with pytest.raises(DeviceNotFoundError):
        await tr.run()


async def test_not_a_serial_port_is_a_transport_error(tmp_path: Path) -> None:
    regular = tmp_path / "not-a-tty"
    regular.write_text("hello")
    _, tr = masimo(regular)
    with pytest.raises(TransportError) as info:
        await tr.run()
    assert not isinstance(info.value, DeviceNotFoundError)
    assert "\n" not in str(info.value)


async def test_second_opener_of_the_same_port_is_refused(pty_device: PtyDevice) -> None:
    rt1, tr1 = masimo(pty_device.link)
    task = start(tr1)
    await rt1.wait_until(lambda r: r.connected)
    rt2, tr2 = masimo(pty_device.link)
    with pytest.raises(TransportError, match="is in use by another program"):
        await tr2.run()
    await pty_device.write(rad8(1, 96))
    await rt1.wait_readings(1)
    await stop(task)
    assert rt2.readings == []


async def test_socket_url_device(tmp_path: Path) -> None:
    accepted = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def device(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        accepted.set()

    server = await asyncio.start_server(device, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        rt, tr = masimo(f"socket://127.0.0.1:{port}")
        task = start(tr)
        await asyncio.wait_for(accepted.wait(), 5)
        writers[0].write(rad8(1, 97) + rad8(2, 98)[:40])
        await writers[0].drain()
        await rt.wait_readings(1)
        await rt.wait_until(lambda r: tr.bytes_received >= len(rad8(1)) + 40)
        writers[0].close()
        error = await finish(task)
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(error, TransportError)
    assert spo2_values(rt.readings) == [97]
    assert rt.failures == []


async def test_loop_url_uses_the_thread_link_and_write_api() -> None:
    rt, tr = masimo("loop://")
    task = start(tr)
    await rt.wait_until(lambda r: r.connected)
    await tr.write(rad8(7, 99))  # loop:// echoes what is written: the line comes back as a reading
    await rt.wait_readings(1)
    await stop(task)
    assert spo2_values(rt.readings) == [99]
    with pytest.raises(TransportError, match="not open"):
        await tr.write(b"x")


class _IdleLink:
    """A link that opened and never hears anything (what the agent gets from a silent device)."""

    def describe(self) -> str:
        return "idle"

    async def read(self) -> bytes:
        await asyncio.Event().wait()
        return b""

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("url", "link_class"),
    [("socket://127.0.0.1:9", TcpLink), ("rfc2217://127.0.0.1:9", Rfc2217Link), ("loop://", _ThreadLink)],
)
async def test_a_stop_that_comes_as_the_port_opens_stops_the_transport(
    url: str, link_class: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent's stop (SIGTERM) cancels the device task in the same loop turn as the open completes:
    # the open's result must not win over the cancel (on Python 3.11 asyncio.wait_for let it, and the
    # stop then waited its 2 s on a device reading on, and logged agent.tasks_not_stopped).
    opened: asyncio.Future[_IdleLink] = asyncio.get_running_loop().create_future()
    calls: list[str] = []

    async def open_link(*args: object, **kwargs: object) -> _IdleLink:
        calls.append(url)
        return await opened

    monkeypatch.setattr(link_class, "open", open_link)
    rt, tr = masimo(url)
    task = start(tr)
    await until(lambda: calls, what="the transport to start opening its port")
    opened.set_result(_IdleLink())
    task.cancel()
    await until(task.done, what="the transport to stop")
    assert task.cancelled()
    assert [state for state, _ in rt.connections if state] == []  # it never reported the link up


def _done_with_the_stop(inner: Awaitable[object], stop: Callable[[], object]) -> asyncio.Future[None]:
    """Done when ``inner`` is, in the loop turn in which ``stop()`` (the agent's stop) comes."""
    outer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def both(_: object) -> None:
        outer.set_result(None)
        stop()

    asyncio.ensure_future(inner).add_done_callback(both)
    return outer


@pytest.mark.parametrize("link", ["socket", "pty", "pty-blocking"])
async def test_a_stop_that_comes_as_a_lost_link_closes_stops_the_transport(
    link: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The device goes away and the agent's stop comes in the loop turn in which the transport's close of
    # the link completes: the stop must win (on Python 3.11 asyncio.wait_for dropped it, run() raised
    # "lost" and the supervisor reopened the port after its back-off, past the agent's stop).
    stop: list[Callable[[], object]] = []
    loop = asyncio.get_running_loop()
    if link == "socket":  # TcpLink: the terminal server hangs up at once
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        port: str | Path = f"socket://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    else:
        device: PtyDevice = request.getfixturevalue("pty_device")
        port = device.link
        server = None
    if link == "pty-blocking":  # BlockingSerialLink (what Windows uses for a COM port)
        monkeypatch.setattr(host_serial, "EVENT_DRIVEN_PORTS", False)
        run_in_executor = loop.run_in_executor

        def closing_with_the_stop(executor: Any, func: Callable[..., Any], *args: Any) -> Any:
            inner = run_in_executor(executor, func, *args)
            return _done_with_the_stop(inner, stop[0]) if func.__name__ == "close" else inner

        monkeypatch.setattr(loop, "run_in_executor", closing_with_the_stop)
    else:
        wait_closed = asyncio.StreamWriter.wait_closed
        monkeypatch.setattr(
            asyncio.StreamWriter, "wait_closed", lambda w: _done_with_the_stop(wait_closed(w), stop[0])
        )
    rt, tr = masimo(port)
    task = start(tr)
    stop.append(task.cancel)
    try:
        if server is None:  # the socket's server hangs up by itself
            await rt.wait_until(lambda r: r.connected)
            device.unplug()
        await until(task.done, what="the transport to end")
        assert task.cancelled()
    finally:
        if server is not None:
            server.close()


async def test_line_settings_come_from_driver_defaults_overridden_by_config(pty_device: PtyDevice) -> None:
    _, tr = masimo(pty_device.link, baudrate=19200, parity="E")
    assert tr.settings == SerialSettings(baudrate=19200, bytesize=8, parity="E", stopbits=1)
    _, tr = masimo(pty_device.link)
    assert tr.settings == SerialSettings(baudrate=9600, bytesize=8, parity="N", stopbits=1)


# ---------------------------------------------------------------------------------------------- write hook


class _PolledDecoder(LineDecoder):
    """A request/response device: asks for a value every poll, ACKs each answer."""

    poll_interval = 0.05

    def commands_on_connect(self) -> list[bytes]:
        return [b"INIT\r"]

    def poll_command(self) -> bytes | None:
        return b"\nP\r"

    def decode_line(self, line: bytes) -> list[DeviceEvent]:
        if not line.startswith(b"W "):
            raise DecodeError("not an answer")
        self.send(b"ACK\r")
        return [DeviceStatusEvent(note=line[2:].decode())]


@register_driver
class _PolledDriver(SerialDriver[SerialOptions]):
    name = "test-polled-lines"
    description = "test only: a polled line device"
    device_class = DeviceClass.OTHER

    def stream_decoder(self, ctx: DecodeContext) -> _PolledDecoder:
        return _PolledDecoder(ctx)


async def test_connect_commands_polls_and_decoder_replies_are_written(pty_device: PtyDevice) -> None:
    rt = FakeRuntime(make_driver("test-polled-lines", pty_device.link))
    tr = SerialTransport(rt)
    task = start(tr)
    received = b""
    deadline = time.monotonic() + 5
    while received.count(b"\nP\r") < 3 and time.monotonic() < deadline:
        received += await pty_device.read(0.5)
    assert received.startswith(b"INIT\r\nP\r")  # connect command first, then the first poll at once
    await pty_device.write(b"W 70.5 kg\r\n")
    await rt.wait_until(lambda r: len(r.events) == 1)
    while b"ACK\r" not in received and time.monotonic() < deadline:
        received += await pty_device.read(0.5)
    await stop(task)
    assert rt.events == [DeviceStatusEvent(note="70.5 kg")]
    assert b"ACK\r" in received
    # after the link ends, nothing queued is left over for the next connection
    assert tr.decoder.data_to_send() == b""


async def test_slow_outbox_keeps_every_reading_in_order(pty_device: PtyDevice) -> None:
    rt, tr = masimo(pty_device.link)
    rt.emit_delay = 0.005  # each emit waits for a "durable commit"
    task = start(tr)
    await rt.wait_until(lambda r: r.connected)
    spo2s = [90 + i % 10 for i in range(40)]
    await pty_device.write(b"".join(rad8(i, s) for i, s in enumerate(spo2s)))
    await rt.wait_readings(40)
    await stop(task)
    assert spo2_values(rt.readings) == spo2s
    assert rt.failures == []


async def test_random_chunking_over_the_pty_decodes_like_offline(pty_device: PtyDevice) -> None:
    rng = random.Random(42)
    stream = b"".join(rad8(i, 90 + rng.randrange(11), 60 + rng.randrange(40)) for i in range(30))
    offline = make_driver("masimo-ascii", pty_device.link).decode_chunks([stream], fixed_ctx("spo2-1"))
    rt, tr = masimo(pty_device.link)
    task = start(tr)
    await rt.wait_until(lambda r: r.connected)
    pos = 0
    while pos < len(stream):
        n = rng.randint(1, 200)
        await pty_device.write(stream[pos : pos + n])
        pos += n
        if rng.random() < 0.3:
            await asyncio.sleep(0.001)  # the device pauses between bursts
    await rt.wait_readings(30)
    await stop(task)
    assert rt.events == offline  # identity event + 30 readings, identical to decoding the file at once
    assert rt.failures == []
