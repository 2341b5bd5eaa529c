"""``check-config`` tells everything at once, in words; relative paths are the config file's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kit.toml import toml_str
from vitals_agent import host
from vitals_agent.cli import EXIT_CONFIG, build_parser, main
from vitals_agent.config.schema import NO_EKG_FOLDERS, load_config, parse_config
from vitals_agent.errors import ConfigError


def problems(data: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return dict(info.value.problems)


def test_a_bad_driver_key_and_a_bad_common_key_are_both_reported() -> None:
    found = problems(
        {
            "agent": {"facility": "F"},
            "devices": [
                {"id": "ox", "driver": "masimo-ascii", "port": "/dev/x", "parity": "X", "report": "sometimes"}
            ],
        }
    )
    assert found == {
        "devices[0].parity": "must be 'N', 'E', 'O', 'M' or 'S'",
        "devices[0].report": "must be 'every', 'stable' or 'interval'",
    }


def test_types_are_strict_and_said_in_words() -> None:
    found = problems(
        {
            "agent": {"facility": "F", "max_clock_skew_seconds": "120"},
            "ehr": {"port": "2575", "hierarchy_rows": "yes", "tls": 1},
            "control": {"enabled": "no"},
            "devices": [{"id": "ox", "driver": "masimo-ascii", "port": "/dev/x", "baudrate": "9600"}],
        }
    )
    assert found == {
        "agent.max_clock_skew_seconds": 'must be a number (without quotes), not the text "120"',
        "ehr.port": 'must be a whole number (without quotes), not the text "2575"',
        "ehr.hierarchy_rows": 'must be true or false (without quotes), not the text "yes"',
        "ehr.tls": "must be true or false (without quotes), not 1",
        "control.enabled": 'must be true or false (without quotes), not the text "no"',
        "devices[0].baudrate": 'must be a whole number (without quotes), not the text "9600"',
    }
    # a whole number where a number is wanted is fine
    config = parse_config({"agent": {"facility": "F", "max_clock_skew_seconds": 60}})
    assert config.agent.max_clock_skew_seconds == 60.0


def test_hl7_delimiters_are_refused_where_they_are_not_structure() -> None:
    found = problems(
        {
            "agent": {"facility": "CLINIC|X", "location": "CLINIC^ROOM&12"},
            "ehr": {
                "sending_application": "VITALS^AGENT",
                "receiving_facility": "EHR~2",
                "receiving_application": "EPIC\\X",
            },
            "patient": {"assigning_authority": "EX\rCLINIC", "identifier_type": "mr"},
        }
    )
    assert found == {
        "agent.facility": (
            "must not contain '|' (the HL7 field separator) "
            "(MSH-4 is NAMESPACE or NAMESPACE^UNIVERSAL-ID^TYPE)"
        ),
        "agent.location": (
            "must not contain '&' (the HL7 subcomponent separator) in component 2: only the facility "
            "(4th component) is written as NAMESPACE&UNIVERSAL-ID&TYPE"
        ),
        "ehr.sending_application": (
            "must not contain '^' (the HL7 component separator) (MSH-3 namespace: one name)"
        ),
        "ehr.receiving_facility": (
            "must not contain '~' (the HL7 repetition separator) (NAMESPACE or NAMESPACE^UNIVERSAL-ID^TYPE)"
        ),
        "ehr.receiving_application": (
            "must not contain '\\' (the HL7 escape character) (NAMESPACE or NAMESPACE^UNIVERSAL-ID^TYPE)"
        ),
        "patient.assigning_authority": "must not contain a line break (CX-4 is NAMESPACE&UNIVERSAL-ID&TYPE)",
        "patient.identifier_type": "must be 1 to 5 capital letters (HL7 table 0203, e.g. MR), not 'mr'",
    }
    # the structure the data types do have stays allowed
    config = parse_config(
        {
            "agent": {"facility": "CLINIC^2.999.1^ISO", "location": "CARDIO^EXAM 3^^EXHOSP&2.999.1&ISO"},
            "patient": {"assigning_authority": "EXCLINIC&2.999.1&ISO"},
        }
    )
    assert config.agent.location == "CARDIO^EXAM 3^^EXHOSP&2.999.1&ISO"


def test_messages_are_words_not_regular_expressions() -> None:
    found = problems(
        {
            "agent": {"facility": "F", "log_level": "LOUD"},
            "ehr": {"processing_id": "X", "accept_ack_type": "ALWAYS"},
            "control": {"host": "0.0.0.0"},
            "devices": [{"id": "spo2 room 12", "driver": "masimo-ascii", "port": "/dev/x"}],
        }
    )
    assert found == {
        "agent.log_level": "must be one of DEBUG, INFO, WARNING, ERROR (any case), not 'LOUD'",
        "ehr.processing_id": "must be 'P', 'T' or 'D'",
        "ehr.accept_ack_type": "must be 'AL', 'NE', 'ER' or 'SU'",
        "control.host": "must be a loopback address (127.0.0.1, localhost or ::1), not '0.0.0.0'",
        "devices[0].id": (
            "'spo2 room 12': use letters, digits, '.', '_' and '-' only (the id goes into OBX-18)"
        ),
    }
    for message in found.values():
        assert not re.search(r"pattern|\[A-Z|\^\(|\\d", message), message


def test_duplicate_ids_name_both_devices() -> None:
    found = problems(
        {
            "agent": {"facility": "F"},
            "devices": [
                {"id": "ox", "driver": "masimo-ascii", "port": "/dev/a"},
                {"id": "bp", "driver": "suntech-advantage", "port": "/dev/b"},
                {"id": "ox", "driver": "nonin-df8", "port": "/dev/c"},
            ],
        }
    )
    assert found == {"devices[2].id": "'ox' is already the id of devices[0]; ids must be unique"}


@pytest.mark.skipif(
    not host.HAS_NOFOLLOW_DIRS, reason="its configuration has EKG folders: POSIX only (refused on Windows)"
)
async def test_check_config_prints_every_problem_at_once_and_takes_config_either_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[agent]
facility = "A|B"
data_dir = {toml_str(tmp_path / "data")}
log_level = "debug"
[ehr]
port = "2575"
[[devices]]
id = "ox"
driver = "masimo-ascii"
port = "/dev/x"
baud = 9600
report_seconds = "10"
[[devices]]
id = "ekg"
driver = "scp-ecg"
folder = "missing-folder"
[[devices]]
id = "ox"
driver = "nonin-df8"
port = "/dev/y"
"""
    )
    assert await main(["check-config", "--config", str(cfg)]) == 1
    positional = capsys.readouterr().out
    assert await main(["check-config", str(cfg)]) == 1
    assert capsys.readouterr().out == positional
    assert positional.splitlines() == [
        "devices[0].baud: unknown key",
        'devices[0].report_seconds: must be a number (without quotes), not the text "10"',
        "devices[2].id: 'ox' is already the id of devices[0]; ids must be unique",
        "agent.facility: must not contain '|' (the HL7 field separator) "
        "(MSH-4 is NAMESPACE or NAMESPACE^UNIVERSAL-ID^TYPE)",
        'ehr.port: must be a whole number (without quotes), not the text "2575"',
    ]
    # fixed keys: now the files and folders are checked (the EKG folder is relative to the config)
    cfg.write_text(
        cfg.read_text().replace('"A|B"', '"A"').replace('"2575"', "2575").replace("baud = 9600\n", "")
    )
    cfg.write_text(cfg.read_text().replace('report_seconds = "10"', "report_seconds = 10"))
    cfg.write_text(
        cfg.read_text().replace('id = "ox"\ndriver = "nonin-df8"', 'id = "ox2"\ndriver = "nonin-df8"')
    )
    assert await main(["check-config", str(cfg)]) == 1
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(
        f"devices[1].folder: {tmp_path / 'missing-folder'} does not exist: create it, e.g. "
    )
    (tmp_path / "missing-folder").mkdir()
    assert await main(["check-config", str(cfg)]) == 0
    assert capsys.readouterr().out == "ok: 3 devices\n"
    if not Path("/etc/vitals-agent/agent.toml").exists():  # neither: the installed config, else one line
        assert await main(["check-config"]) == 1
        assert capsys.readouterr().err.startswith("error: no configuration given: use --config FILE")
    assert await main(["check-config", str(cfg), "--config", str(tmp_path / "other.toml")]) == 1
    assert capsys.readouterr().err == "error: give the configuration once: FILE or --config FILE\n"


@pytest.mark.skipif(
    not host.HAS_NOFOLLOW_DIRS, reason="its configuration has EKG folders: POSIX only (refused on Windows)"
)
def test_relative_paths_resolve_against_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    cfg = site / "agent.toml"
    cfg.write_text(
        """
[agent]
facility = "F"
data_dir = "state"
[ehr]
ca_file = "certs/ca.pem"
[[devices]]
id = "ekg"
driver = "scp-ecg-serial"
port = "./ttyCart"
save_folder = "../ekg-archive"
[[devices]]
id = "ekg2"
driver = "aecg-xml"
folder = "inbox"
[[devices]]
id = "ox"
driver = "masimo-ascii"
port = "ttyUSB0"
[[devices]]
id = "ox2"
driver = "masimo-ascii"
port = "socket://localhost:7000"
"""
    )
    monkeypatch.chdir("/")  # whatever the current folder (systemd's is /)
    config = load_config(Path(os.path.relpath(cfg, "/")))
    assert config.agent.data_dir == site / "state"
    assert config.ehr.ca_file == site / "certs/ca.pem"
    ekg, ekg2, ox, ox2 = (d.settings() for d in config.devices)
    assert ekg["port"] == str(site / "ttyCart")
    assert ekg["save_folder"] == str(site / "../ekg-archive")
    assert ekg2["folder"] == str(site / "inbox")
    assert ox["port"] == "ttyUSB0"  # a device name, not a path (COM3 on Windows)
    assert ox2["port"] == "socket://localhost:7000"
    absolute = parse_config({"agent": {"facility": "F", "data_dir": "/var/lib/x"}}, base_dir=site)
    assert absolute.agent.data_dir == Path("/var/lib/x")


@pytest.mark.slow  # starts a process
def test_run_uses_the_config_folder_not_the_current_one(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "agent.toml").write_text('[agent]\nfacility = "F"\ndata_dir = "state"\n[control]\nport = 0\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitals_agent",
            "send-test",
            "--config",
            "../site/agent.toml",
            "--timeout",
            "1",
        ],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in result.stderr
    assert not (elsewhere / "state").exists()
    assert not (site / "state").exists()  # send-test reads the agent's state, it never creates it


def test_log_level_in_any_case() -> None:
    args = build_parser().parse_args(["run", "--config", "x.toml", "--log-level", "debug"])
    assert args.log_level == "DEBUG"
    config = parse_config({"agent": {"facility": "F", "log_level": "Warning"}})
    assert config.agent.log_level == "WARNING"


async def test_ekg_folders_are_refused_in_one_line_where_links_cannot_be_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Windows: the EKG folder code needs no-follow access relative to a folder descriptor (POSIX only), so
    a configuration with an EKG folder is refused by check-config and by run (exit 78), never half-run."""
    monkeypatch.setattr(host, "HAS_NOFOLLOW_DIRS", False)
    (tmp_path / "inbox").mkdir()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[agent]\nfacility = "F"\ndata_dir = "state"\n[control]\nenabled = false\n'
        '[[devices]]\nid = "ekg"\ndriver = "scp-ecg"\nfolder = "inbox"\n'
        '[[devices]]\nid = "cart"\ndriver = "scp-ecg-serial"\nport = "COM4"\nsave_folder = "archive"\n'
        '[[devices]]\nid = "spare"\ndriver = "scp-ecg"\nfolder = "inbox"\nenabled = false\n'
        '[[devices]]\nid = "serial-only"\ndriver = "scp-ecg-serial"\nport = "COM5"\n'
    )
    assert await main(["check-config", str(cfg)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"devices[0].folder: {NO_EKG_FOLDERS}",
        f"devices[1].save_folder: {NO_EKG_FOLDERS}",
    ]
    assert NO_EKG_FOLDERS.startswith(f"EKG folders are not supported on {host.PLATFORM_NAME} yet")
    assert await main(["run", "--config", str(cfg)]) == EXIT_CONFIG
    assert "devices[0].folder: EKG folders are not supported" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()
    monkeypatch.setattr(host, "HAS_NOFOLLOW_DIRS", True)
    assert await main(["check-config", str(cfg)]) == 0
