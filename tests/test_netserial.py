"""Serial devices behind terminal servers: raw TCP (``socket://``) and RFC 2217 (``rfc2217://``) links on
asyncio, against pyserial's own RFC 2217 server (serial.rfc2217.PortManager) as the independent peer."""

from __future__ import annotations

import asyncio
import re
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.kit import FakeRuntime, fixed_ctx, make_driver, printed, running, supervise, until
from tests.kit.netdev import FedDevice
from vitals_agent.drivers.base import SerialOptions, SerialSettings
from vitals_agent.drivers.netport import network_port
from vitals_agent.drivers.netserial import KEEPALIVE_IDLE
from vitals_agent.drivers.rfc2217 import COM_PORT, DONT, IAC, SB, SE, WILL, WONT, Rfc2217Codec
from vitals_agent.drivers.serial_transport import SerialTransport
from vitals_agent.errors import TransportError

ASCII1 = (
    "11/03/26 09:14:{i:02d} SN=0000123456 SPO2={s:03d}% BPM=072 PI=05.10% SPCO=--.-% SPMET=--.-% "
    "DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n"
)


def rad8(i: int, spo2: int) -> bytes:
    return ASCII1.format(i=i, s=spo2).encode()


def masimo(url: str, **options: object) -> tuple[FakeRuntime, SerialTransport]:
    runtime = FakeRuntime(make_driver("masimo-ascii", url, **options), device_id="spo2-1", ctx=fixed_ctx())
    return runtime, SerialTransport(runtime)


def spo2s(rt: FakeRuntime) -> list[int]:
    return [int(r.values()["spo2"]) for r in rt.readings]


# ------------------------------------------------------------------------------------------- addresses


def test_a_terminal_server_url_names_host_and_port() -> None:
    where = network_port("rfc2217://moxa-3.ward.example:4001")
    assert where is not None and (where.scheme, where.host, where.port) == (
        "rfc2217",
        "moxa-3.ward.example",
        4001,
    )
    assert where.kind == "RFC 2217" and where.url == "rfc2217://moxa-3.ward.example:4001"
    assert network_port("/dev/ttyUSB0") is None and network_port("loop://") is None


@pytest.mark.parametrize(
    "url", ["socket://moxa", "socket://:4001", "rfc2217://moxa:99999", "socket://moxa:x"]
)
def test_a_terminal_server_url_without_host_or_port_is_a_config_error(url: str) -> None:
    with pytest.raises(ValidationError, match="HOST:PORT"):
        SerialOptions(port=url)


# ------------------------------------------------------------------------------------------- the codec


@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=17), min_size=1, max_size=40))
def test_serial_data_survives_escaping_in_any_chunking(data: bytes, cuts: list[int]) -> None:
    codec = Rfc2217Codec(SerialSettings())
    wire = codec.escape(data)
    out = bytearray()
    pos = 0
    for cut in cuts * (len(wire) // max(1, sum(cuts)) + 1):
        out += codec.receive(wire[pos : pos + cut])
        pos += cut
        if pos >= len(wire):
            break
    assert bytes(out) == data
    assert codec.data_to_send() == b""  # plain data asks nothing of us


@given(st.binary(max_size=400))
def test_the_codec_never_raises_and_keeps_its_buffer_bounded(noise: bytes) -> None:
    codec = Rfc2217Codec(SerialSettings())
    codec.receive(noise)
    assert len(codec._sub) <= 64


def test_settings_go_out_once_the_server_agrees_and_confirmations_are_recorded() -> None:
    codec = Rfc2217Codec(SerialSettings(baudrate=19200, bytesize=7, parity="E", stopbits=2))
    codec.start()
    opening = codec.data_to_send()
    assert bytes((IAC, WILL, COM_PORT)) in opening
    assert SB not in opening  # nothing is set before the server accepts COM-PORT-OPTION
    codec.receive(bytes((IAC, 253, COM_PORT)))  # DO COM-PORT-OPTION
    sets = codec.data_to_send()
    assert bytes((IAC, SB, COM_PORT, 1, 0, 0, 0x4B, 0, IAC, SE)) in sets  # SET-BAUDRATE 19200
    assert bytes((IAC, SB, COM_PORT, 3, 3, IAC, SE)) in sets  # SET-PARITY even
    answer = bytes((IAC, SB, COM_PORT, 101, 0, 0, 0x4B, 0, IAC, SE, IAC, SB, COM_PORT, 102, 7, IAC, SE))
    answer += bytes((IAC, SB, COM_PORT, 103, 3, IAC, SE, IAC, SB, COM_PORT, 104, 2, IAC, SE))
    assert codec.receive(b"ab" + answer + b"cd") == b"abcd"
    assert codec.settled and codec.mismatches() == []
    assert codec.confirmed == {"baudrate": 19200, "datasize": 7, "parity": "E", "stopsize": 2}


def test_a_server_that_refuses_com_port_option_is_told_apart() -> None:
    codec = Rfc2217Codec(SerialSettings())
    codec.start()
    codec.receive(bytes((IAC, WONT, COM_PORT, IAC, 253, 1)))  # WONT COM-PORT, DO ECHO
    assert codec.refused and codec.settled
    assert codec.data_to_send().endswith(bytes((IAC, WONT, 1)))  # ECHO declined
    assert bytes((IAC, DONT)) not in codec.data_to_send()


# ------------------------------------------------------------------------------------------- the links


async def test_raw_tcp_readings_arrive_with_keepalive_on() -> None:
    device = await FedDevice("oxi").start()
    rt, tr = masimo(device.url)
    async with running(tr):
        await rt.wait_until(lambda r: r.connected)
        assert rt.connections[-1] == (True, f"{device.url} (raw TCP)")
        device.feed(rad8(1, 96), rad8(2, 97))
        await rt.wait_readings(2)
        link = tr._link
        assert link is not None
        sock: socket.socket = link._writer.get_extra_info("socket")  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE
    assert spo2s(rt) == [96, 97]
    await device.server.stop()


async def test_rfc2217_pushes_the_drivers_line_settings_and_the_devices_overrides() -> None:
    device = await FedDevice("oxi", rfc2217=True).start()
    rt, tr = masimo(device.url, baudrate=19200, parity="E")
    async with running(tr):
        await rt.wait_until(lambda r: r.connected)
        # pyserial's server applied what the agent asked: the override, and the driver's other defaults
        assert device.server.line_settings == {"baudrate": 19200, "bytesize": 8, "parity": "E", "stopbits": 1}
        assert rt.connections[-1] == (True, f"{device.url} (RFC 2217, 19200 8E1)")
        payload = rad8(3, 95)
        device.feed(payload, b"\xff\xff garbage with IAC bytes\r\n", rad8(4, 94))
        await rt.wait_readings(2)
    assert spo2s(rt) == [95, 94]
    assert rt.failures and rt.failures[0].data.startswith(b"\xff\xff")  # 0xFF arrived unescaped
    await device.server.stop()


async def test_a_raw_port_named_rfc2217_fails_with_what_to_do() -> None:
    async def telnet_refuser(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(64)
        writer.write(bytes((IAC, WONT, COM_PORT)))
        await writer.drain()
        await reader.read(64)

    server = await asyncio.start_server(telnet_refuser, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, tr = masimo(f"rfc2217://127.0.0.1:{port}")
    with pytest.raises(TransportError, match=r"refused RFC 2217.*socket://"):
        await tr.run()
    server.close()


async def test_a_terminal_server_restart_ends_the_link_and_it_comes_back() -> None:
    device = await FedDevice("oxi").start()
    rt, tr = masimo(device.url)
    failures: list[BaseException] = []
    task = asyncio.create_task(supervise(tr, retry=0.05, failures=failures))
    try:
        await rt.wait_until(lambda r: r.connected)
        device.feed(rad8(1, 91))
        await rt.wait_readings(1)
        await device.server.drop_all()
        await rt.wait_until(lambda r: not r.connected)
        device.feed(rad8(2, 92))  # waits in the device while the server is down
        await until(lambda: len(failures) >= 2, 10, "reconnects refused while the server is down")
        assert "cannot connect" in str(failures[-1]) and "raw TCP" in str(failures[-1])
        await device.server.restore()
        await rt.wait_readings(2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert spo2s(rt) == [91, 92]
    assert "lost: the other end closed the connection" in str(failures[0])
    await device.server.stop()


# ------------------------------------------------------------------------------------------- simulate


@pytest.mark.parametrize("flag", ["--tcp", "--rfc2217"])
async def test_simulate_serves_a_ward_of_devices_the_transport_reads(
    flag: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vitals_agent.cli import main
    from vitals_agent.commands import simulate

    monkeypatch.setattr(simulate, "setup_logging", lambda *a, **k: None)  # keep the session's logging
    sim = asyncio.create_task(
        main(["simulate", "masimo-ascii", flag, "0", "--count", "2", "--interval", "0.02", "--seconds", "30"])
    )
    _, out = await printed(capsys, r"(?s)(\w+://127\.0\.0\.1:\d+).*(\w+://127\.0\.0\.1:\d+)")
    urls = re.findall(r"\w+://127\.0\.0\.1:\d+", out)
    assert len(urls) == 2 and len(set(urls)) == 2
    assert all(url.startswith("rfc2217://" if flag == "--rfc2217" else "socket://") for url in urls)
    runtimes = []
    for url in urls:
        rt, tr = masimo(url)
        runtimes.append((rt, asyncio.create_task(tr.run())))
    for rt, _ in runtimes:
        got = await rt.wait_readings(3)
        assert all(r.device.manufacturer == "Masimo" and 90 <= r.values()["spo2"] <= 100 for r in got)
    for _, task in runtimes:
        task.cancel()
    await asyncio.gather(*(t for _, t in runtimes), return_exceptions=True)
    sim.cancel()
    await asyncio.gather(sim, return_exceptions=True)


async def test_simulate_on_a_port_in_use_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vitals_agent.cli import main
    from vitals_agent.commands import simulate

    monkeypatch.setattr(simulate, "setup_logging", lambda *a, **k: None)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert await main(["simulate", "masimo-ascii", "--tcp", str(port), "--seconds", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}: ") and err.count("\n") == 1
