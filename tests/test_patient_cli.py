"""``vitals-agent patient ...`` and ``vitals-agent status`` against a running control server."""

from __future__ import annotations

import asyncio
import getpass
import io
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from tests.kit import DOB, FAMILY, GIVEN, MRN, FakeClock, events, manager, oximeter_reading
from tests.kit.toml import toml_str
from tests.test_control import MASKED, fake_status
from vitals_agent import host
from vitals_agent.agent.control import ControlServer
from vitals_agent.agent.patient.context import PatientContextManager, PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.cli import main
from vitals_agent.logs import setup_logging

WRISTBAND = r"\]C1(?P<mrn>MRN\d+)\^.*"


class Agent:
    def __init__(self, config: Path, patients: PatientContextManager, clock: FakeClock) -> None:
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
data_dir = '{data}'

[patient]
patient_timeout_minutes = 30
require_patient = true
mrn_pattern = '{WRISTBAND}'
identifier_type = "MR"
"""
    )
    data.mkdir()
    clock = FakeClock()
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
    assert out.startswith(f"Patient {MASKED} (Q. Z.): set via api (cli, {getpass.getuser()}) at ")
    assert MRN not in out and FAMILY not in out
    assert agent.patients.current_details() == PatientDetails(
        mrn=MRN, family=FAMILY, given=GIVEN, birth_date=DOB, sex="F", encounter="V1"
    )

    assert await main(["patient", "show", "--config", cfg]) == 0
    assert MRN not in capsys.readouterr().out
    assert await main(["patient", "show", "--reveal", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"Patient {MRN} ({FAMILY} {GIVEN}) born {DOB}, sex F, encounter V1: set via api (cli, "
    )

    assert await main(["patient", "clear", "--config", cfg]) == 0
    assert capsys.readouterr().out == "patient context cleared\n"
    assert agent.patients.current() is None
    assert await main(["patient", "show", "--config", cfg]) == 0
    assert capsys.readouterr().out.startswith("No patient set: readings are HELD")

    trail = [(e["event"], e.get("channel"), e.get("client")) for e in events(agent.patients.data_dir)]
    assert trail == [
        ("context_set", "api", "cli"),
        ("context_revealed", "api", None),
        ("context_cleared", "api", "cli"),
    ]


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
    assert capsys.readouterr().out.startswith(f"Patient {MASKED}: set via api (barcode, keyboard) at ")
    assert agent.patients.current_details() == PatientDetails(mrn=MRN)

    monkeypatch.setattr(sys, "stdin", io.StringIO("NOT A WRISTBAND\n"))
    assert await main(["patient", "scan", "--config", str(agent.config)]) == 1
    assert capsys.readouterr().err == "error: scan does not match mrn_pattern (15 characters)\n"

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"]C1MRN1^A\nbad\n]C1{MRN}^B\n"))
    assert await main(["patient", "scan", "--loop", "--config", str(agent.config)]) == 1  # one bad scan
    assert agent.patients.current_details() == PatientDetails(mrn=MRN)
    channels = [
        (e["event"], e.get("channel"), e.get("client"), e.get("source"))
        for e in events(agent.patients.data_dir)
    ]
    assert channels == [("context_set", "api", "barcode", "keyboard")] * 3


async def test_status_command_prints_the_page_content(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    agent.patients.set(PatientDetails(mrn=MRN, family=FAMILY), Origin("barcode", source="scan-1"))
    agent.patients.route("oxi-1", oximeter_reading())
    assert await main(["status", "--config", str(agent.config)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "vitals-agent 0.1.0  EXCLINIC CARDIO^EXAM 3"
    assert lines[3].startswith(f"Patient {MASKED} (Q.): set via barcode (scan-1) at ")
    assert "Devices:" in lines
    assert "  oxi-1 [masimo]: connected (/dev/ttyUSB0)" in lines
    assert any(line.startswith("    last seen ") and line.endswith("decode errors 2") for line in lines)
    assert any("last reading" in line and line.endswith("SpO2 97%, Pulse 72 /min") for line in lines)
    assert any(
        line.startswith("EHR 127.0.0.1:2575: UNREACHABLE (connection refused; last try ") for line in lines
    )
    assert "Outbox: 4 waiting, 1 dead letter(s)" in lines
    assert any(line.startswith("Last EHR error: connection refused (") for line in lines)
    assert MRN not in out and FAMILY not in out

    assert await main(["status", "--url", "--config", str(agent.config)]) == 0
    url = capsys.readouterr().out.strip()
    token = (agent.patients.data_dir / "control.token").read_text().strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?code=[A-Za-z0-9_-]{20,}", url), url
    assert token not in url


async def test_discard_held(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.patients.route("oxi-1", oximeter_reading())
    assert await main(["patient", "discard-held", "--config", str(agent.config)]) == 0
    assert capsys.readouterr().out == "1 held reading(s) discarded\n"


async def test_agent_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"[agent]\nfacility = \"F\"\ndata_dir = '{tmp_path / 'nothing'}'\n")
    assert await main(["patient", "show", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the agent is not running (no ") and err.count("\n") == 1
    assert await main(["status", "--config", str(config)]) == 1


async def run_cli(*args: str | bytes, prefix: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """The real console entry point in a subprocess (arguments may be raw bytes, as a terminal sends)."""
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "vitals_agent",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode("utf-8", "replace")


async def test_set_over_another_patient_says_it_replaced_one(
    agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(agent.config)
    assert await main(["patient", "set", "--mrn", MRN, "--name", f"{FAMILY}^{GIVEN}", "--config", cfg]) == 0
    assert "replaced" not in capsys.readouterr().out
    assert await main(["patient", "set", "--mrn", "MRN999888", "--config", cfg]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"replaced the room's previous patient {MASKED} (Q. Z.)"
    assert lines[1].startswith("Patient " + "\u2022" * 3 + "888: set via api (cli, ")
    assert events(agent.patients.data_dir)[-1]["replaced_mrn"] == MRN  # the full trail is in the audit


@pytest.mark.slow  # starts a Python process
@pytest.mark.skipif(host.WINDOWS, reason="raw bytes in argv are POSIX (Windows passes arguments as UTF-16)")
async def test_a_latin1_byte_in_the_name_is_one_line(agent: Agent) -> None:
    """A terminal in ISO 8859-1 sends 'Müller' as M \\xfc ller: not UTF-8; one line, nothing set."""
    code, out, err = await run_cli(
        "patient", "set", "--mrn", MRN, "--name", b"M\xfcller^Hans", "--config", str(agent.config)
    )
    assert (code, out) == (1, "")
    assert err == "error: family: name is not valid UTF-8 text (check the terminal's character set)\n"
    assert agent.patients.current() is None
    assert not events(agent.patients.data_dir)


@pytest.mark.parametrize("text", ["A\u2028B", "A\u0085B", "A\u009bB", "A\u2029B"])
async def test_line_separators_and_c1_controls_are_refused_at_the_cli(
    agent: Agent, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    code = await main(["patient", "set", "--mrn", MRN, "--name", f"{text}^X", "--config", str(agent.config)])
    assert (code, capsys.readouterr().err) == (
        1,
        "error: family: name contains a control character or one of | ^ ~ \\ &\n",
    )
    assert agent.patients.current() is None


@pytest.mark.slow  # starts a Python process
async def test_agent_gone_without_cleaning_up_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()
    (data / "control.json").write_text(f'{{"host": "127.0.0.1", "port": 9, "pid": {gone.pid}}}\n')
    (data / "control.token").write_text("x\n")
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nfacility = "F"\ndata_dir = {toml_str(data)}\n')
    assert await main(["status", "--config", str(config)]) == 1
    assert capsys.readouterr().err == (
        f"error: the agent is not running (process {gone.pid} named in {data / 'control.json'} has exited)\n"
    )


@pytest.mark.slow  # starts a Python process
@pytest.mark.skipif(host.WINDOWS, reason="POSIX users and modes (Windows: ACLs, tests/test_host.py)")
async def test_a_user_who_cannot_read_the_token_is_told_in_one_line(agent: Agent, tmp_path: Path) -> None:
    """The data_dir belongs to the agent's user (0700); the caller is someone else."""
    import pwd

    data = agent.patients.data_dir
    if os.geteuid() == 0:
        # root reads everything: give the files to another user and drop the override capabilities
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root needs setpriv (util-linux) to act as a user without access")
        for path in [data, *data.iterdir()]:
            os.chown(path, 65534, 65534)
        prefix: tuple[str, ...] = (setpriv, "--bounding-set", "-dac_override,-dac_read_search")
        owner = pwd.getpwuid(65534).pw_name
    else:
        data.chmod(0o000)
        prefix = ()
        owner = pwd.getpwuid(os.getuid()).pw_name
    try:
        for args in (("status",), ("status", "--url"), ("patient", "show")):
            code, out, err = await run_cli(*args, "--config", str(agent.config), prefix=prefix)
            assert (code, out) == (1, "")
            assert err == (
                f"error: cannot read {data / 'control.json'}: run this as the agent's user "
                f"(e.g. sudo -u {owner} vitals-agent ...)\n"
            )
    finally:
        data.chmod(0o700)
