"""USB identity matching (pyserial ListPortInfo fakes), `usb = ...` through the transport, `ports` command,
and the pty device itself."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest
from serial.tools.list_ports_common import ListPortInfo

from tests.kit import FakeRuntime, fixed_ctx, make_driver, start, stop
from vitals_agent import host
from vitals_agent.cli import main
from vitals_agent.commands import ports as ports_command
from vitals_agent.commands import support
from vitals_agent.drivers.base import SerialOptions
from vitals_agent.drivers.ports import PortInfo, UsbId, match_usb, resolve_usb, same_port
from vitals_agent.drivers.pty import PtyDevice, PtyUnpluggedError
from vitals_agent.drivers.serial_transport import SerialTransport
from vitals_agent.errors import DeviceNotFoundError, TransportError

LINE = (
    b"11/03/26 09:14:05 SN=0000123456 SPO2=096% BPM=072 PI=05.10% SPCO=--.-% SPMET=--.-% "
    b"DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n"
)


def _listing_loads() -> bool:
    try:
        import serial.tools.list_ports  # noqa: F401
    except (ImportError, AttributeError, OSError):
        return False
    return True


# pyserial's Windows listing needs cfgmgr32!CM_MapCrToWin32Err, which Wine 8 lacks (Windows has it).
NEEDS_LISTING = pytest.mark.skipif(not _listing_loads(), reason="pyserial's port listing cannot load here")


def fake_port(
    device: str, vid: int | None, pid: int | None, serial: str | None = None, **extra: Any
) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.serial_number = vid, pid, serial
    for key, value in extra.items():
        setattr(info, key, value)
    if vid is not None:
        info.apply_usb_info()
    return info


FTDI_A = fake_port("/dev/ttyUSB0", 0x0403, 0x6001, "A50285BI", manufacturer="FTDI", product="FT232R USB UART")
FTDI_B = fake_port("/dev/ttyUSB1", 0x0403, 0x6001, "AK05XYZ1", manufacturer="FTDI")
PROLIFIC = fake_port("/dev/ttyUSB2", 0x067B, 0x2303, None, manufacturer="Prolific")
BUILTIN = fake_port("/dev/ttyS0", None, None)
ALL = [FTDI_A, FTDI_B, PROLIFIC, BUILTIN]


def test_port_info_from_pyserial() -> None:
    info = PortInfo.from_pyserial(FTDI_A)
    assert info == PortInfo(
        device="/dev/ttyUSB0",
        usb=UsbId(0x0403, 0x6001, "A50285BI"),
        description="FT232R USB UART",
        manufacturer="FTDI",
        hwid="USB VID:PID=0403:6001 SER=A50285BI",
    )
    assert info.usb is not None and (info.usb.ids, str(info.usb)) == ("0403:6001", "0403:6001:A50285BI")
    assert PortInfo.from_pyserial(PROLIFIC).usb == UsbId(0x067B, 0x2303)  # no serial number reported
    assert PortInfo.from_pyserial(BUILTIN) == PortInfo(device="/dev/ttyS0")


def test_usb_id_parse() -> None:
    assert UsbId.parse("0403:6001") == UsbId(0x0403, 0x6001, None)
    assert UsbId.parse("067b:2303:XyZ") == UsbId(0x067B, 0x2303, "XyZ")
    assert str(UsbId.parse("067B:2303:XyZ")) == "067b:2303:XyZ"
    for bad in ("0403", "403:6001", "0403:60011", "zzzz:6001", "0403:6001:a:b"):
        with pytest.raises(ValueError, match="usb must be"):
            UsbId.parse(bad)


def test_match_usb() -> None:
    assert [p.device for p in match_usb("0403:6001", ALL)] == ["/dev/ttyUSB0", "/dev/ttyUSB1"]
    assert [p.device for p in match_usb("0403:6001:ak05xyz1", ALL)] == ["/dev/ttyUSB1"]  # serial: any case
    assert [p.device for p in match_usb("067B:2303", ALL)] == ["/dev/ttyUSB2"]
    assert match_usb("067b:2303:SOMESERIAL", ALL) == []  # the port reports no serial number
    assert match_usb("1a86:7523", ALL) == []


def test_resolve_usb_none_one_many() -> None:
    assert resolve_usb("0403:6001:A50285BI", ALL).device == "/dev/ttyUSB0"
    with pytest.raises(DeviceNotFoundError, match="no serial port with USB id 1a86:7523"):
        resolve_usb("1a86:7523", ALL)
    with pytest.raises(
        TransportError, match=r"matches 2 ports \(/dev/ttyUSB0, /dev/ttyUSB1\): add the serial"
    ):
        resolve_usb("0403:6001", ALL)


@pytest.mark.skipif(host.WINDOWS, reason="symlinked device nodes are POSIX; COM names: test_host.py")
def test_same_port_follows_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "ttyREAL"
    target.touch()
    link = tmp_path / "by-id-link"
    link.symlink_to(target)
    assert same_port(str(link), PortInfo(device=str(target)))
    assert not same_port(str(tmp_path / "other"), PortInfo(device=str(target)))
    assert not same_port("socket://127.0.0.1:7000", PortInfo(device=str(target)))


async def test_transport_finds_the_device_by_usb_identity(
    pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing = [BUILTIN, fake_port(str(pty_device.link), 0x0403, 0x6001, "A50285BI")]
    monkeypatch.setattr("serial.tools.list_ports.comports", lambda include_links=False: listing)
    rt = FakeRuntime(make_driver("masimo-ascii", usb="0403:6001:A50285BI"), ctx=fixed_ctx())
    tr = SerialTransport(rt)
    task = start(tr)
    await rt.wait_until(lambda r: r.connected)
    await pty_device.write(LINE)
    await rt.wait_readings(1)
    await stop(task)
    assert tr.url == str(pty_device.link)
    assert rt.readings[0].values()["spo2"] == 96


@NEEDS_LISTING
async def test_transport_usb_device_absent_or_ambiguous(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serial.tools.list_ports.comports", lambda include_links=False: ALL)
    absent = SerialTransport(FakeRuntime(make_driver("masimo-ascii", usb="1a86:7523")))
    with pytest.raises(DeviceNotFoundError):
        await absent.run()
    ambiguous = SerialTransport(FakeRuntime(make_driver("masimo-ascii", usb="0403:6001")))
    with pytest.raises(TransportError, match="add the serial number"):
        await ambiguous.run()


@NEEDS_LISTING
def test_support_bundle_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serial.tools.list_ports.comports", lambda include_links=False: [BUILTIN, FTDI_A])
    listed = json.loads(json.dumps(support._ports()))  # as ports.json has it
    assert listed == {
        "serial": [
            {"device": "/dev/ttyS0", "usb": None, "description": None, "manufacturer": None, "hwid": None},
            {
                "device": "/dev/ttyUSB0",
                "usb": {"vid": 0x0403, "pid": 0x6001, "serial_number": "A50285BI"},
                "description": "FT232R USB UART",
                "manufacturer": "FTDI",
                "hwid": "USB VID:PID=0403:6001 SER=A50285BI",
            },
        ]
    }


# ---------------------------------------------------------------------------------------------- ports command


def write_config(path: Path, devices: list[dict[str, str]]) -> Path:
    lines = ["[agent]", 'facility = "TEST"', ""]
    for dev in devices:
        lines.append("[[devices]]")
        lines.extend(f'{key} = "{value}"' for key, value in dev.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@NEEDS_LISTING
async def test_ports_command_shows_matching_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("serial.tools.list_ports.comports", lambda include_links=False: ALL)
    config = write_config(
        tmp_path / "agent.toml",
        [
            {"id": "spo2-a", "driver": "masimo-ascii", "usb": "0403:6001:A50285BI"},
            {"id": "spo2-b", "driver": "masimo-ascii", "port": "/dev/ttyUSB2"},
            {"id": "spo2-gone", "driver": "masimo-ascii", "usb": "1a86:7523"},
            {"id": "spo2-net", "driver": "masimo-ascii", "port": "socket://10.0.0.5:4001"},
        ],
    )
    code = await ports_command.cmd_ports(argparse.Namespace(config=config, json=True))
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == [  # sorted by device path
        {
            "device": "/dev/ttyS0",
            "usb": None,
            "serial_number": None,
            "description": None,
            "manufacturer": None,
            "matches": [],
        },
        {
            "device": "/dev/ttyUSB0",
            "usb": "0403:6001",
            "serial_number": "A50285BI",
            "description": "FT232R USB UART",
            "manufacturer": "FTDI",
            "matches": ["spo2-a"],
        },
        {
            "device": "/dev/ttyUSB1",
            "usb": "0403:6001",
            "serial_number": "AK05XYZ1",
            "description": "ttyUSB1",  # pyserial's description without a product string
            "manufacturer": "FTDI",
            "matches": [],
        },
        {
            "device": "/dev/ttyUSB2",
            "usb": "067b:2303",
            "serial_number": None,
            "description": "ttyUSB2",
            "manufacturer": "Prolific",
            "matches": ["spo2-b"],
        },
        {"device_id": "spo2-gone", "configured": "usb 1a86:7523", "state": "not present"},
        {
            "device_id": "spo2-net",
            "configured": "port socket://10.0.0.5:4001",
            "state": "on the network: raw TCP to terminal server 10.0.0.5 port 4001",
        },
    ]
    code = await ports_command.cmd_ports(argparse.Namespace(config=config, json=False))
    text = capsys.readouterr().out
    assert code == 0
    header, builtin, ftdi_a = text.splitlines()[:3]
    assert header.split() == ["PORT", "USB", "SERIAL", "DESCRIPTION", "MANUFACTURER", "DEVICE"]
    assert builtin.split() == ["/dev/ttyS0", "-", "-", "-", "-", "-"]
    assert ftdi_a.split() == [
        "/dev/ttyUSB0",
        "0403:6001",
        "A50285BI",
        "FT232R",
        "USB",
        "UART",
        "FTDI",
        "spo2-a",
    ]
    assert "spo2-gone: usb 1a86:7523: not present" in text


async def test_ports_command_bad_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "bad.toml", [{"id": "x", "driver": "masimo-ascii", "usb": "nope"}])
    assert await main(["ports", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err == "error: devices[0]: usb must be 'VID:PID' or 'VID:PID:SERIAL' with 4-digit hex ids\n"


def test_configured_serial_devices_reads_options(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "a.toml", [{"id": "a", "driver": "masimo-ascii", "port": "/dev/ttyUSB9"}]
    )
    [(device_id, options)] = ports_command.configured_serial_devices(config)
    assert device_id == "a" and isinstance(options, SerialOptions) and options.port == "/dev/ttyUSB9"


# ---------------------------------------------------------------------------------------------- PtyDevice


async def test_pty_device_link_unplug_replug(tmp_path: Path) -> None:
    link = tmp_path / "ttyX"
    device = PtyDevice(link).open()
    try:
        first = device.slave_name
        assert first is not None and os.readlink(link) == first
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        try:
            await device.write(b"abc\r\n")
            assert os.read(fd, 100) == b"abc\r\n"  # raw mode: no CR/LF translation, no echo
            os.write(fd, b"P\r")
            assert await device.read(1.0) == b"P\r"
            assert await device.read(0.05) == b""
        finally:
            os.close(fd)
        device.unplug()
        assert not device.plugged and not os.path.lexists(link)
        with pytest.raises(PtyUnpluggedError):
            await device.write(b"x")
        assert await device.read(0.01) == b""
        device.replug()
        assert device.plugged and os.readlink(link) == device.slave_name
    finally:
        device.close()
    assert not os.path.lexists(link)


async def test_pty_unplug_wakes_a_blocked_reader(tmp_path: Path) -> None:
    import asyncio

    device = PtyDevice(tmp_path / "ttyY").open()
    reader = asyncio.create_task(device.read(10.0))
    await asyncio.sleep(0)  # let the reader start and block (it registers with the loop at once)
    device.unplug()
    assert await asyncio.wait_for(reader, 2.0) == b""
    device.close()


def test_pty_close_leaves_a_foreign_file_alone(tmp_path: Path) -> None:
    link = tmp_path / "ttyZ"
    device = PtyDevice(link).open()
    link.unlink()
    link.write_text("someone else's file")
    device.close()
    assert link.read_text() == "someone else's file"
