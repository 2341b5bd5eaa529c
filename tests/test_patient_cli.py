"""``vitals-agent patient ...`` and ``vitals-agent status`` against a running control server."""

from __future__ import annotations

import io
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from tests.patient_helpers import DOB, FAMILY, GIVEN, MRN, Clock, events, make_reading, manager
from tests.test_control import MASKED, fake_status
from vitals_agent.agent.control import ControlServer
from vitals_agent.agent.patient_context import PatientContextManager, PatientDetails
from vitals_agent.cli import main
from vitals_agent.logs import setup_logging

WRISTBAND = r"\]C1(?P<mrn>MRN\d+)\^.*"


class Agent:
    def __init__(self, config: Path, patients: PatientContextManager, clock: Clock) -> None:
        self.config = config
        self.patients = patients
        self.clock = clock


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[io.StringIO]:
    """The in-process agent's log goes to a buffer, as a real agent's goes to its own stderr/journal."""
    buf = io.StringIO()
    setup_logging("INFO", stream=buf, json=True)
    yield buf
    structlog.reset_defaults()


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    data = tmp_path / "data"
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[agent]
facility = "EXCLINIC"
location = "CARDIO^EXAM 3"
data_dir = "{data}"

[patient]
patient_timeout_minutes = 30
require_patient = true
mrn_pattern = '{WRISTBAND}'
identifier_type = "MR"
"""
    )
    data.mkdir()
    clock = Clock()
    patients = manager(data, clock, require_patient=True)
    server = ControlServer(data, patients, fake_status, port=0, now=clock)
    await server.start()
    try:
        yield Agent(config, patients, clock)
    finally:
        await server.stop()
        patients.close()


async def test_set_show_reveal_clear(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(agent.config)
    code = await main(
        ["patient", "set", "--mrn", MRN, "--name", f"{FAMILY}^{GIVEN}", "--dob", DOB, "--sex", "F",
         "--encounter", "V1", "--config", cfg]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"Patient {MASKED} (Q. Z.): set via cli ")
    assert MRN not in out and FAMILY not in out
    assert agent.patients.current_details() == PatientDetails(
        mrn=MRN, family=FAMILY, given=GIVEN, birth_date=DOB, sex="F", encounter="V1"
    )

    assert await main(["patient", "show", "--config", cfg]) == 0
    assert MRN not in capsys.readouterr().out
    assert await main(["patient", "show", "--reveal", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Patient {MRN} ({FAMILY} {GIVEN}) born {DOB}, sex F, encounter V1: set via cli ")

    assert await main(["patient", "clear", "--config", cfg]) == 0
    assert capsys.readouterr().out == "patient context cleared\n"
    assert agent.patients.current() is None
    assert await main(["patient", "show", "--config", cfg]) == 0
    assert capsys.readouterr().out.startswith("No patient set: readings are HELD")

    trail = [(e["event"], e.get("channel")) for e in events(agent.patients.data_dir)]
    assert trail == [("context_set", "cli"), ("context_revealed", "api"), ("context_cleared", "cli")]


async def test_bad_input_is_one_line_without_the_value(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await main(
        ["patient", "set", "--mrn", "SECRET", "--dob", "SECRET12", "--config", str(agent.config)]
    )
    err = capsys.readouterr().err
    assert (code, err) == (1, "error: birth_date: date of birth must be YYYYMMDD\n")
    assert agent.patients.current() is None


async def test_keyboard_wedge_scan(
    agent: Agent, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"]C1{MRN}^DOE^JANE\n"))
    assert await main(["patient", "scan", "--config", str(agent.config)]) == 0
    assert capsys.readouterr().out.startswith(f"Patient {MASKED}: set via barcode keyboard at ")
    assert agent.patients.current_details() == PatientDetails(mrn=MRN)

    monkeypatch.setattr(sys, "stdin", io.StringIO("NOT A WRISTBAND\n"))
    assert await main(["patient", "scan", "--config", str(agent.config)]) == 1
    assert capsys.readouterr().err == "error: scan does not match mrn_pattern (15 characters)\n"

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"]C1MRN1^A\nbad\n]C1{MRN}^B\n"))
    assert await main(["patient", "scan", "--loop", "--config", str(agent.config)]) == 1  # one bad scan
    assert agent.patients.current_details() == PatientDetails(mrn=MRN)
    channels = [(e["event"], e.get("channel"), e.get("source")) for e in events(agent.patients.data_dir)]
    assert channels == [
        ("context_set", "barcode", "keyboard"),
        ("context_set", "barcode", "keyboard"),
        ("context_set", "barcode", "keyboard"),
    ]


async def test_status_command_prints_the_page_content(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    agent.patients.set(PatientDetails(mrn=MRN, family=FAMILY), "barcode", source="scan-1")
    agent.patients.route("oxi-1", make_reading())
    assert await main(["status", "--config", str(agent.config)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "vitals-agent 0.1.0  EXCLINIC CARDIO^EXAM 3"
    assert lines[3].startswith(f"Patient {MASKED} (Q.): set via barcode scan-1 at ")
    assert "Devices:" in lines
    assert "  oxi-1 [masimo]: connected (/dev/ttyUSB0)" in lines
    assert any(line.startswith("    last seen ") and line.endswith("decode errors 2") for line in lines)
    assert any(
        "last reading" in line and line.endswith("pulse_rate_oximeter 72 /min, spo2 97 %") for line in lines
    )
    assert "Outbox: 4 waiting, 1 dead letter(s)" in lines
    assert any(line.startswith("Last EHR error: connection refused (") for line in lines)
    assert MRN not in out and FAMILY not in out

    assert await main(["status", "--url", "--config", str(agent.config)]) == 0
    url = capsys.readouterr().out.strip()
    token = (agent.patients.data_dir / "control.token").read_text().strip()
    assert url.endswith(f"/?token={token}") and url.startswith("http://127.0.0.1:")


async def test_discard_held(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.patients.route("oxi-1", make_reading())
    assert await main(["patient", "discard-held", "--config", str(agent.config)]) == 0
    assert capsys.readouterr().out == "1 held reading(s) discarded\n"


async def test_agent_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nfacility = "F"\ndata_dir = "{tmp_path / "nothing"}"\n')
    assert await main(["patient", "show", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the agent is not running (no ") and err.count("\n") == 1
    assert await main(["status", "--config", str(config)]) == 1
