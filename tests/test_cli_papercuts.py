"""Papercuts a new user met on the command line (#11 item 9), each as it is now."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_ehr import Hl7Ehr, make_message
from tests.kit import free_port, until
from tests.kit.toml import toml_str
from tests.private_files import under_wine
from vitals_agent.agent.delivery.sender import Sender
from vitals_agent.agent.storage.outbox import Outbox, OutboxMessage
from vitals_agent.cli import COMMAND_GROUPS, build_parser, main
from vitals_agent.commands.outbox import format_duration, parse_duration
from vitals_agent.config.ehr import EhrConfig
from vitals_agent.net.mllp import MllpClient

WINE_REFUSED = "Wine answers a refused loopback connect with WSAEINVAL (Windows: WSAECONNREFUSED)"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vitals_agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow  # starts a process
def test_top_level_help_is_grouped_and_lists_every_command_once() -> None:
    text = cli("--help").stdout
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings[-len(COMMAND_GROUPS) :] == [title for title, _ in COMMAND_GROUPS]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    listed = [
        line.split()[0] for line in text.split("run and service:")[1].splitlines() if line.startswith("  ")
    ]
    assert sorted(listed) == sorted(commands)
    assert (
        text.index("  run ") < text.index("  drivers ") < text.index("  patient ") < text.index("  outbox ")
    )


@pytest.mark.slow  # starts a process
def test_drivers_table_is_aligned() -> None:
    lines = cli("drivers").stdout.splitlines()
    transport, klass = lines[0].index("TRANSPORT"), lines[0].index("DEVICE CLASS")
    for line in lines:
        name, kind, device_class = line[:transport].rstrip(), line[transport:klass].rstrip(), line[klass:]
        assert " " not in name and name and kind and " " not in kind, line
        assert line[transport - 2 : transport] == "  " and line[klass - 2 : klass] == "  ", line
        assert device_class[0] != " ", line
    assert any(line.startswith("scp-ecg-serial ") for line in lines)


def test_durations_are_written_as_users_write_them() -> None:
    texts = ("7d", "12h", "90m", "45s", "2w", "36h")
    assert [format_duration(parse_duration(t)) for t in texts] == ["7d", "12h", "90m", "45s", "14d", "36h"]
    assert format_duration(1.5) == "1.5s"


async def test_outbox_show_takes_the_msh10_and_purge_says_7d(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ob = Outbox(tmp_path)
    ob.enqueue(control_id="ABC123", device_id="spo2", body=make_message("ABC123"))
    ob.enqueue(control_id="9", device_id="spo2", body=make_message("9"))  # an MSH-10 that looks like an id
    ob.close()
    assert await main(["outbox", "show", "ABC123", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "control_id: ABC123" in out and "|ABC123|P|2.6|" in out
    assert await main(["outbox", "show", "9", "--data-dir", str(tmp_path)]) == 0  # no row 9: the MSH-10
    assert "control_id: 9" in capsys.readouterr().out
    assert await main(["outbox", "purge", "--dead", "--older-than", "7d", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "purged 0 dead letter(s) older than 7d\n"


@pytest.mark.skipif(under_wine(), reason=WINE_REFUSED)
async def test_tries_count_delivery_attempts_not_refused_connections(tmp_path: Path) -> None:
    ob = Outbox(tmp_path)
    ob.enqueue(control_id="M1", device_id="spo2", body=make_message("M1"))
    port = free_port()  # nothing listens: every connection is refused
    ehr = EhrConfig(
        host="127.0.0.1",
        port=port,
        connect_timeout_seconds=1.0,
        backoff_min_seconds=0.01,
        backoff_max_seconds=0.02,
    )
    sender = Sender(ob, ehr)
    task = asyncio.create_task(sender.run())
    try:
        await until(lambda: isinstance(m := ob.get(1), OutboxMessage) and bool(m.last_error), timeout=10)
        item = ob.get(1)
        assert isinstance(item, OutboxMessage) and item.last_error and "refused" in item.last_error.lower()
        assert item.attempts == 0
    finally:
        await sender.stop(timeout=1.0)
        task.cancel()
        ob.close()


@pytest.mark.slow  # starts a process
def test_scan_without_bluez_names_the_system_bus(tmp_path: Path) -> None:
    result = cli("scan", "--seconds", "1", env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"})
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the system D-Bus / BlueZ (")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


async def test_receive_announces_itself_once(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    task = asyncio.create_task(main(["receive", "--port", str(port), "--count", "1"]))
    client = MllpClient("127.0.0.1", port, connect_timeout=5)
    await until(lambda: "listening on" in capsys.readouterr().out or task.done(), timeout=10)
    await client.send(make_message("R1"), 5)
    await client.close()
    assert await asyncio.wait_for(task, 10) == 0
    out = capsys.readouterr()
    assert "receiver.listening" not in out.out + out.err
    assert out.out.startswith("--- message 1 ---")


@pytest.mark.slow  # starts a process
async def test_send_test_prints_one_line_and_no_debug(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
    try:
        cfg = tmp_path / "agent.toml"
        cfg.write_text(
            f'[agent]\nfacility = "F"\ndata_dir = {toml_str(tmp_path / "data")}\n[ehr]\nport = {ehr.port}\n'
        )
        result = await asyncio.to_thread(cli, "send-test", "--config", str(cfg))
        port = ehr.port
    finally:
        await ehr.close()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [line] = result.stdout.splitlines()
    assert line.startswith(f"AA from 127.0.0.1:{port} (plain) for "), line
