"""`vitals-agent scan` and `vitals-agent pair` against the fake BlueZ; Omron advertisement decoding."""

from __future__ import annotations

import re

import pytest

from tests.fakebluez.gatt import PeripheralSpec, and_ua651ble, omron_cuff, u16
from tests.fakebluez.server import FakeBlueZ
from vitals_agent.cli import main
from vitals_agent.drivers.ble.scan import OmronAdvertisement, OmronUser, decode_omron_advertisement
from vitals_agent.errors import DecodeError, TruncatedError


def test_omron_capture_decodes() -> None:
    # ble_monitor issue #1003 capture 0B FF 0E 02 | 01 01 D0 02 64 11 00 11 (after the company id)
    assert decode_omron_advertisement(bytes.fromhex("01 01 D0 02 64 11 00 11")) == OmronAdvertisement(
        users=(OmronUser(sequence=720, records=100), OmronUser(sequence=17, records=17)),
        time_not_set=False,
        pairing_mode=False,
        streaming=False,
        standard_services=False,
    )


def test_omron_flags_and_errors() -> None:
    adv = decode_omron_advertisement(bytes.fromhex("01 2C 05 00 03"))
    assert adv.users == (OmronUser(5, 3),)
    assert (adv.time_not_set, adv.pairing_mode, adv.streaming, adv.standard_services) == (
        True,
        True,
        False,
        True,
    )
    assert (
        adv.describe() == "user 1: 3 records (latest #5); clock not set; pairing mode; standard services mode"
    )
    with pytest.raises(TruncatedError):
        decode_omron_advertisement(bytes.fromhex("01 01 D0 02 64"))
    with pytest.raises(DecodeError, match="tag"):
        decode_omron_advertisement(bytes.fromhex("02 00 01 00 01"))


def headphones() -> PeripheralSpec:
    return PeripheralSpec("11:22:33:44:55:66", "Headphones", [], advertised_uuids=[u16(0x180F)], rssi=-40)


async def test_scan_lists_health_devices(fake_bluez: FakeBlueZ, capsys: pytest.CaptureFixture[str]) -> None:
    fake_bluez.add(and_ua651ble())
    fake_bluez.add(omron_cuff(), known=False)
    fake_bluez.add(headphones())
    assert await main(["scan", "--seconds", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # RSSI varies between advertisements (-58 .. -60 dBm in the fake)
    patterns = [
        r"00:09:1F:12:34:56   -(58|59|60) dBm  A&D_UA-651_3456  \[blood pressure\]",
        r"28:FF:B2:00:11:22   -(58|59|60) dBm  BLEsmart_00000116  \[blood pressure\]  "
        r"Omron: user 1: 100 records \(latest #720\); user 2: 17 records \(latest #17\)",
    ]
    assert len(lines) == 2
    assert all(any(re.fullmatch(p, line) for line in lines) for p in patterns), lines
    assert not any("Headphones" in x for x in lines)


async def test_scan_all_and_nothing(fake_bluez: FakeBlueZ, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["scan", "--seconds", "0.3"]) == 0
    assert capsys.readouterr().err == "no health devices seen in 0.3 s\n"
    fake_bluez.add(headphones())
    assert await main(["scan", "--seconds", "0.3", "--all"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("11:22:33:44:55:66") and "Headphones  [180F]" in line


async def test_pair_bonds_and_trusts(fake_bluez: FakeBlueZ, capsys: pytest.CaptureFixture[str]) -> None:
    cuff = fake_bluez.add(and_ua651ble(), known=False)  # BlueZ has to discover it first
    assert await main(["pair", "00:09:1f:12:34:56", "--seconds", "3"]) == 0
    assert capsys.readouterr().out == "00:09:1F:12:34:56 (A&D_UA-651_3456): paired, bonded and trusted\n"
    assert (cuff.paired, cuff.trusted, cuff.connected) == (True, True, False)
    assert not fake_bluez.adapter.discovering
    assert await main(["pair", "00:09:1F:12:34:56"]) == 0
    assert capsys.readouterr().out == "00:09:1F:12:34:56 (A&D_UA-651_3456): already paired\n"


async def test_pair_failures_are_one_line(fake_bluez: FakeBlueZ, capsys: pytest.CaptureFixture[str]) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    cuff.fail_pairing()
    assert await main(["pair", "00:09:1F:12:34:56"]) == 1
    assert capsys.readouterr().err == (
        "error: pairing with 00:09:1F:12:34:56 failed: "
        "authentication failed (wrong passkey, or the device refused)\n"
    )
    assert not cuff.paired

    assert await main(["pair", "00:09:1F:99:99:99", "--seconds", "0.3"]) == 1
    assert capsys.readouterr().err == (
        "error: 00:09:1F:99:99:99 not seen within 0.3 s; is it advertising (pairing mode)?\n"
    )
    assert await main(["pair", "not-an-address"]) == 2
    assert "is not a Bluetooth address" in capsys.readouterr().err
