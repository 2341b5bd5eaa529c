"""Issue #12 item 3: repeatable command-line options accumulate (``decode X --hex A --hex B``: both)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.e2e_helpers import masimo_ascii1_line
from vitals_agent.cli import build_parser, main

# Bluetooth PLX Continuous Measurement 0x2A5F, flags 0: SpO2 and pulse rate as SFLOAT (devices.md 5.1).
PLX_A = "00E8F384F3"  # SpO2 1000e-1 = 100 %, PR 900e-1 = 90 /min (SpeziBluetooth PLXTests.swift vector)
PLX_B = "0061004800"  # SpO2 97 %, PR 72 /min (built from the same layout)


def _values(out: str) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [{m["metric"]: m["value"] for m in row["measurements"]} for row in rows]


async def test_repeated_hex_decodes_every_payload_ble(capsys: pytest.CaptureFixture[str]) -> None:
    code = await main(
        ["decode", "ble-pulse-oximeter", "--characteristic", "2A5F", "--hex", PLX_A, "--hex", PLX_B]
    )
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert _values(out) == [
        {"spo2": 100.0, "pulse_rate_oximeter": 90.0},
        {"spo2": 97.0, "pulse_rate_oximeter": 72.0},
    ]


async def test_repeated_and_multi_valued_hex_mix(capsys: pytest.CaptureFixture[str]) -> None:
    code = await main(
        ["decode", "ble-pulse-oximeter", "--characteristic", "2A5F", "--hex", PLX_A, PLX_B, "--hex", PLX_A]
    )
    assert code == 0
    assert [v["spo2"] for v in _values(capsys.readouterr().out)] == [100.0, 97.0, 100.0]


async def test_repeated_hex_decodes_every_payload_serial(capsys: pytest.CaptureFixture[str]) -> None:
    first = masimo_ascii1_line(datetime(2026, 3, 11, 14, 0, 0), "096", "072", "05.10")
    second = masimo_ascii1_line(datetime(2026, 3, 11, 14, 0, 1), "097", "070", "04.69")
    code = await main(
        ["decode", "masimo-ascii", "--timezone", "UTC", "--hex", first.hex(), "--hex", second.hex()]
    )
    assert code == 0
    assert [v["spo2"] for v in _values(capsys.readouterr().out)] == [96.0, 97.0]


def _options(
    parser: argparse.ArgumentParser, path: str = "vitals-agent"
) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif action.option_strings:
            yield f"{path} {action.option_strings[-1]}", action


def test_every_repeatable_option_accumulates() -> None:
    """Walk every command's parser: an option that takes several values or may be given several times
    must accumulate (append/extend), never keep only the last occurrence."""
    offenders = []
    seen = []
    for where, action in _options(build_parser()):
        multi = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)
        accumulates = isinstance(action, argparse._AppendAction | argparse._ExtendAction)
        if multi or accumulates:
            seen.append(where)
        if multi and not accumulates:
            offenders.append(where)
    assert offenders == []
    assert {"vitals-agent decode --hex", "vitals-agent decode -o"} <= set(seen)  # the walk reaches them
