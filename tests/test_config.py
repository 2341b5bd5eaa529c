"""Config loading: the documented keys work, every problem is reported as `key.path: message`."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitals_agent.cli import main
from vitals_agent.config.schema import load_config, parse_config
from vitals_agent.errors import ConfigError

GOOD = """
[agent]
facility = "EXAMPLE_CLINIC"
location = "CLINIC^ROOM12"
data_dir = '{data}'
timezone = "America/Chicago"
[ehr]
host = "127.0.0.1"
port = 2575
[[devices]]
id = "spo2-room12"
driver = "masimo-ascii"
port = "/dev/ttyUSB0"
report = "stable"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text.replace("{data}", str(tmp_path / "data")))
    return path


def test_issue_example_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.agent.facility == "EXAMPLE_CLINIC"
    assert config.agent.location == "CLINIC^ROOM12"
    assert config.agent.timezone == "America/Chicago"
    assert (config.ehr.host, config.ehr.port) == ("127.0.0.1", 2575)
    [dev] = config.devices
    assert (dev.id, dev.driver, dev.report_policy()) == ("spo2-room12", "masimo-ascii", "stable")
    assert dev.settings()["port"] == "/dev/ttyUSB0"
    assert dev.report_seconds == 10


def test_continuous_device_defaults_to_stable_and_spot_check_to_every() -> None:
    config = parse_config(
        {
            "agent": {"facility": "F"},
            "devices": [{"id": "ox", "driver": "masimo-ascii", "port": "/dev/null"}],
        }
    )
    assert config.devices[0].report_policy() == "stable"


def problems_of(data: dict[str, object]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_unknown_keys_are_errors_everywhere() -> None:
    problems = problems_of(
        {
            "agent": {"facility": "F", "facilty": "typo"},
            "ehr": {"hots": "x"},
            "devices": [{"id": "ox", "driver": "masimo-ascii", "port": "/dev/x", "baud": 9600}],
        }
    )
    assert ("agent.facilty", "unknown key") in problems
    assert ("ehr.hots", "unknown key") in problems
    assert ("devices[0].baud", "unknown key") in problems


def test_every_problem_is_reported_with_its_path() -> None:
    problems = dict(
        problems_of(
            {
                "agent": {"location": "X", "timezone": "Mars/Olympus"},
                "ehr": {"port": 70000},
                "devices": [
                    {"id": "a", "driver": "no-such-driver"},
                    {"id": "b", "driver": "masimo-ascii"},
                    {"id": "c", "driver": "masimo-ascii", "port": "/dev/x", "report": "sometimes"},
                ],
            }
        )
    )
    assert problems["agent.facility"] == "required"
    assert "unknown time zone" in problems["agent.timezone"]
    assert "65535" in problems["ehr.port"]
    assert problems["devices[0].driver"].startswith("unknown driver 'no-such-driver'")
    assert "exactly one of 'port' or 'usb'" in problems["devices[1]"]
    assert "devices[2].report" in problems


def test_duplicate_device_ids_are_refused() -> None:
    problems = problems_of(
        {
            "agent": {"facility": "F"},
            "devices": [
                {"id": "ox", "driver": "masimo-ascii", "port": "/dev/a"},
                {"id": "ox", "driver": "masimo-ascii", "port": "/dev/b"},
            ],
        }
    )
    assert ("devices[1].id", "'ox' is already the id of devices[0]; ids must be unique") in problems


def test_bad_toml_and_missing_file_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[agent\nfacility="))
    assert "not valid TOML" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml")
    assert "file not found" in str(info.value)


async def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["check-config", str(write(tmp_path, GOOD))]) == 0
    assert capsys.readouterr().out == "ok: 1 device\n"
    bad = write(tmp_path, GOOD.replace('report = "stable"', 'report = "stable"\nparity = "X"\nfoo = 1'))
    assert await main(["check-config", str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "devices[0].foo: unknown key" in out
    assert any(line.startswith("devices[0].parity: ") for line in out)
    assert all("Traceback" not in line for line in out)
