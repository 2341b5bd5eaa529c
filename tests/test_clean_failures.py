"""Configuration and file-system problems through the real CLI: one line saying what to do, never a
traceback; ``run`` exits 78 (the unit's RestartPreventExitStatus) for them, every other command 1.

File permissions only bind an unprivileged process: as root the commands run with the DAC capabilities
dropped (setpriv), so a 0000 config or a 0555 folder refuses root the way it refuses a service user."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kit.toml import toml_str
from vitals_agent import host

pytestmark = pytest.mark.timeout(60)

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # Windows: no uids
DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-all"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    prefix = DROP_DAC if ROOT else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "vitals_agent", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def one_error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(autouse=True)
def _need_setpriv() -> None:
    if ROOT and shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop root's file-permission override")


def config(tmp_path: Path, data_dir: Path, extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nfacility = "F"\ndata_dir = {toml_str(data_dir)}\n[control]\nport = 0\n{extra}')
    return path


@pytest.mark.slow  # starts a process
@pytest.mark.skipif(
    host.WINDOWS, reason="POSIX modes and users (Windows: ACLs, checked in tests/test_host.py)"
)
def test_unwritable_data_dir(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    data = locked / "data"
    line = one_error_line(cli("run", "--config", str(config(tmp_path, data))), 78)
    assert line.startswith(f"error: agent.data_dir: cannot create {data}: permission denied: create it for ")
    assert "install -d -m 0700 -o " in line
    assert not data.exists()
    # check-config reports the same problem (and exits 1)
    result = cli("check-config", str(config(tmp_path, data)))
    assert result.returncode == 1
    assert result.stdout.startswith(f"agent.data_dir: {data} does not exist and ")
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow  # starts a process
def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a folder")
    line = one_error_line(cli("run", "--config", str(config(tmp_path, data))), 78)
    assert line == f"error: agent.data_dir: {data} is not a directory"


@pytest.mark.slow  # starts a process
@pytest.mark.skipif(not ROOT, reason="needs root to give the data_dir to another user (nobody)")
def test_foreign_owned_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    line = one_error_line(cli("run", "--config", str(config(tmp_path, data))), 78)
    assert line == (
        f"error: agent.data_dir: {data} belongs to nobody, but the agent runs as root: run the agent as "
        f"nobody (sudo -u nobody vitals-agent ...), or chown -R root: {data}"
    )
    assert list(data.iterdir()) == []


@pytest.mark.slow  # starts a process
@pytest.mark.skipif(
    host.WINDOWS, reason="POSIX modes and users (Windows: ACLs, checked in tests/test_host.py)"
)
def test_unreadable_config(tmp_path: Path) -> None:
    cfg = config(tmp_path, tmp_path / "data")
    os.chmod(cfg, 0)
    for args, status in (
        (("run", "--config"), 78),
        (("status", "--config"), 1),
        (("outbox", "list", "-c"), 1),
    ):
        line = one_error_line(cli(*args, str(cfg)), status)
        who = f"it is {_me()}:{_my_group()} mode 0; run as {_me()}"
        assert line == f"error: {cfg}: cannot read it: permission denied ({who})"
    result = cli("check-config", str(cfg))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{cfg}: cannot read it: permission denied")
    assert not (tmp_path / "data").exists()


@pytest.mark.slow  # starts a process
@pytest.mark.skipif(not host.HAS_NOFOLLOW_DIRS, reason="EKG folders: POSIX only (refused on Windows)")
def test_missing_config_and_missing_ekg_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    line = one_error_line(cli("run", "--config", str(missing)), 78)
    assert line == f"error: {missing}: file not found"
    folder = tmp_path / "ekg"
    cfg = config(
        tmp_path,
        tmp_path / "data",
        f'[[devices]]\nid = "ekg"\ndriver = "scp-ecg"\nfolder = {toml_str(folder)}\n',
    )
    result = cli("check-config", "--config", str(cfg))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"devices[0].folder: {folder} does not exist: create it, e.g. install -d -o {_me()} {folder}"
    ]
    assert result.stderr == ""


def _my_group() -> str:
    import grp

    return grp.getgrgid(os.getegid()).gr_name


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


@pytest.mark.slow  # starts a process
def test_control_port_held_by_another_program(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        cfg = tmp_path / "agent.toml"
        cfg.write_text(
            f'[agent]\nfacility = "F"\ndata_dir = {toml_str(tmp_path / "data")}\n[control]\nport = {port}\n'
        )
        line = one_error_line(cli("run", "--config", str(cfg)), 78)
        assert line == (
            f"error: control.port: 127.0.0.1:{port} is in use by another program "
            f"(`ss -ltnp 'sport = :{port}'` shows which): stop it, or set [control] port to another port "
            "(0 = any free port)"
        )
        line = one_error_line(cli("receive", "--port", str(port)), 1)
        assert line == f"error: cannot listen on 127.0.0.1:{port}: the port is in use by another program"
    # the agent released its lock on the way out: the data_dir is free for the next start
    from vitals_agent.agent.instance import acquire_instance_lock

    acquire_instance_lock(tmp_path / "data").release()


@pytest.mark.slow  # starts a process
def test_no_configuration_anywhere() -> None:
    from vitals_agent.commands import _options

    if _options.installed_config_path().exists():
        pytest.skip("this machine has an installed configuration (the default)")
    env = {k: v for k, v in os.environ.items() if k != _options.ENV_CONFIG}
    result = subprocess.run(
        [sys.executable, "-m", "vitals_agent", "status"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr == (
        "error: no configuration given: use --config FILE (or install one at /etc/vitals-agent/agent.toml)\n"
    )


async def test_serial_port_held_by_another_program(tmp_path: Path) -> None:
    import serial

    from tests.kit import FakeRuntime, fixed_ctx, make_driver
    from vitals_agent.drivers.pty import PtyDevice
    from vitals_agent.drivers.serial_transport import SerialTransport
    from vitals_agent.errors import TransportError

    with PtyDevice(tmp_path / "ttyRad8") as pty:
        other = serial.Serial(str(pty.link), exclusive=True)  # e.g. a terminal program, or another agent
        try:
            transport = SerialTransport(
                FakeRuntime(make_driver("masimo-ascii", pty.link), ctx=fixed_ctx("x"))
            )
            with pytest.raises(TransportError) as info:
                await transport._open(str(pty.link))
        finally:
            other.close()
    assert str(info.value) == (
        f"serial port {pty.link} is in use by another program (`fuser -v {pty.link}` shows which)"
    )
