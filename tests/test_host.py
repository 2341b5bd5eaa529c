"""The platform layer (vitals_agent.host): the same checks on Linux and, in the Windows lane, under the
Windows CPython. Windows-only and POSIX-only cases say so in their skip reason."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from datetime import tzinfo
from pathlib import Path
from typing import Any

import pytest

from tests.private_files import assert_private, under_wine
from vitals_agent import host
from vitals_agent.agent.storage.audit import write_private
from vitals_agent.cli import main
from vitals_agent.host import files, readiness
from vitals_agent.host.serial import BlockingSerialLink, port_present, same_port_name
from vitals_agent.host.winservice import rotate_log, service_command

SRC = Path(__file__).resolve().parents[1] / "src" / "vitals_agent"
WINDOWS_ONLY = pytest.mark.skipif(not host.WINDOWS, reason="Windows only")
POSIX_ONLY = pytest.mark.skipif(host.WINDOWS, reason="POSIX only")


# ------------------------------------------------------------------------------------ one home for it


def test_core_code_never_checks_the_platform_outside_host() -> None:
    pattern = re.compile(
        r"\bsys\.platform\b|\bos\.name\b|\bplatform\.system\(|\bimport (fcntl|msvcrt|termios)\b"
    )
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.parent.name == "host" and path.parent.parent == SRC:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line.split("#", 1)[0]):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert offenders == [], "platform checks belong in vitals_agent/host:\n" + "\n".join(offenders)


def test_the_check_itself_finds_a_platform_test(tmp_path: Path) -> None:
    pattern = re.compile(r"\bsys\.platform\b")
    assert pattern.search('if sys.platform == "win32":')
    assert not pattern.search("sys.platforms_supported = 3")


# ------------------------------------------------------------------------------------ private files


def test_private_dir_and_files(tmp_path: Path) -> None:
    folder = files.private_dir(tmp_path / "a" / "data")
    assert_private(folder, directory=True)
    fd = files.open_private(folder / "secret", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"x")
    os.close(fd)
    assert (folder / "secret").read_bytes() == b"x"
    assert_private(folder / "secret")
    files.ensure_private_file(folder / "db")
    assert (folder / "db").stat().st_size == 0
    assert_private(folder / "db")


def test_write_private_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "token"
    write_private(target, "one\n")
    write_private(target, "two\n")
    assert target.read_text() == "two\n"
    assert [p.name for p in tmp_path.iterdir()] == ["token"]  # no temporary file left
    assert_private(target)


@POSIX_ONLY
def test_describe_access_posix(tmp_path: Path) -> None:
    path = tmp_path / "f"
    os.close(files.open_private(path, os.O_WRONLY | os.O_CREAT))
    assert files.describe_access(path) == ["owner rw-", "group ---", "other ---"]
    assert files.is_private(path)
    os.chmod(path, 0o640)
    assert not files.is_private(path)


@WINDOWS_ONLY
@pytest.mark.parametrize("directory", [False, True])
def test_private_dacl_is_owner_system_and_administrators_only(directory: bool) -> None:
    """The DACL the agent puts on private files and folders (the structure itself: Wine does not keep
    a DACL on a file, see test_private_file_acl_reads_back_from_disk): exactly the owner, SYSTEM and
    Administrators, each with full control and no one denied; a folder passes it on to its contents."""
    assert sys.platform == "win32"  # (and tells mypy that the rest is Windows code)
    import ntsecuritycon
    import win32security

    from tests.private_files import ADMINISTRATORS_SID, SYSTEM_SID, owner_sid

    make: Any = files.private_dacl  # type: ignore[attr-defined,unused-ignore]  # Windows only
    dacl = make(directory=directory)
    assert dacl.IsValid()
    aces = [dacl.GetAce(i) for i in range(dacl.GetAceCount())]
    sids = sorted(win32security.ConvertSidToStringSid(ace[2]) for ace in aces)
    assert sids == sorted({owner_sid(), SYSTEM_SID, ADMINISTRATORS_SID})
    assert all(ace[0][0] == win32security.ACCESS_ALLOWED_ACE_TYPE for ace in aces)
    assert all(ace[1] == ntsecuritycon.FILE_ALL_ACCESS for ace in aces)
    inherit = ntsecuritycon.OBJECT_INHERIT_ACE | ntsecuritycon.CONTAINER_INHERIT_ACE
    assert all(ace[0][1] == (inherit if directory else 0) for ace in aces)


@WINDOWS_ONLY
def test_private_file_acl_reads_back_from_disk(tmp_path: Path) -> None:
    if under_wine():
        pytest.skip("Wine does not store file ACLs: this readback needs a real Windows")
    path = tmp_path / "f"
    os.close(files.open_private(path, os.O_WRONLY | os.O_CREAT))
    lines = files.describe_access(path)
    assert lines[0] == "protected"
    assert len(lines) in (3, 4)  # owner (unless it is SYSTEM or an Administrator), SYSTEM, Administrators
    assert files.is_private(path)


# ------------------------------------------------------------------------------------ locations


def test_default_locations() -> None:
    data = host.default_data_dir()
    config = host.default_config_file()
    assert config.name == "agent.toml"
    if host.WINDOWS:
        program_data = Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData"))
        assert config == program_data / "vitals-agent" / "agent.toml"
        assert data == program_data / "vitals-agent" / "data"
    else:
        assert config == Path("/etc/vitals-agent/agent.toml")
        assert data.name == "vitals-agent"


def test_no_follow_folder_access_is_what_the_ekg_folders_need() -> None:
    """POSIX has openat+O_NOFOLLOW (the EKG folder drivers use it); Windows CPython has no dir_fd at all,
    so the configuration refuses EKG folders there (tests/test_check_config.py)."""
    assert host.HAS_NOFOLLOW_DIRS is (not host.WINDOWS)


def test_system_zone_is_a_zone() -> None:
    assert isinstance(host.system_zone(), tzinfo)


# ------------------------------------------------------------------------------------ stop, readiness


async def test_stop_request_sets_the_event() -> None:
    stop = asyncio.Event()
    remove = host.install_stop_handlers(stop)
    try:
        signal.raise_signal(signal.SIGBREAK if host.WINDOWS else signal.SIGTERM)  # type: ignore[attr-defined,unused-ignore]
        await asyncio.wait_for(stop.wait(), 5)
    finally:
        remove()
    assert stop.is_set()


def test_readiness_listeners_hear_ready_stopping_and_watchdog() -> None:
    heard: list[tuple[str, str]] = []
    remove = readiness.add_listener(lambda event, status: heard.append((event, status)))
    readiness.ready("running: 2 devices")
    readiness.watchdog()
    readiness.stopping()
    remove()
    readiness.ready("after removal")
    assert heard == [("ready", "running: 2 devices"), ("watchdog", ""), ("stopping", "")]


# ------------------------------------------------------------------------------------ serial


def test_port_names() -> None:
    if host.WINDOWS:
        assert same_port_name("COM5", "\\\\.\\com5")
        assert not same_port_name("COM5", "COM15")
        assert not port_present("COM250")
    else:
        assert same_port_name("/dev/null", "/dev/../dev/null")
        assert port_present("/dev/null")
        assert not port_present("/dev/does-not-exist")


@pytest.mark.skipif(not host.HAS_PTY, reason="needs a POSIX pseudo-terminal (Windows: tests/windows)")
async def test_blocking_link_reads_writes_and_closes_promptly(tmp_path: Path) -> None:
    from vitals_agent.drivers.pty import PtyDevice

    with PtyDevice(tmp_path / "tty") as device:
        link = await BlockingSerialLink.open(str(device.link), baudrate=9600)
        try:
            await device.write(b"SPO2=97\r\n")
            got = b""
            while not got.endswith(b"\r\n"):
                got += await asyncio.wait_for(link.read(), 5)
            assert got == b"SPO2=97\r\n"
            await link.write(b"\x02START\x03")
            echoed = b""
            while len(echoed) < 7:
                chunk = await device.read(5)
                assert chunk, "nothing written to the device"
                echoed += chunk
            assert echoed == b"\x02START\x03"
            pending = asyncio.ensure_future(link.read())  # blocks in the OS read: nothing is sent
            await asyncio.sleep(0)  # one turn of the loop: the read starts (and blocks in the OS)
            assert not pending.done()
        finally:
            await asyncio.wait_for(link.close(), 5)
        assert await asyncio.wait_for(pending, 5) == b""  # close woke the blocked reader


# ------------------------------------------------------------------------------------ COM apartment


@WINDOWS_ONLY
def test_pywin32_leaves_the_thread_in_the_mta_for_winrt() -> None:
    """pythoncom initialises COM in the importing thread at import; with com.use_mta() first, that
    thread is in the MTA bleak's WinRT backend needs. A second thread initialised as STA reads back as
    STA, so the check can tell the two apart."""
    assert sys.platform == "win32"
    import threading

    from vitals_agent.host import com

    if "pythoncom" in sys.modules:
        pytest.skip("pythoncom was imported earlier in this process; the import-time choice is made")
    seen: dict[str, str | None] = {}

    def import_here() -> None:
        com.use_mta()
        import pythoncom  # noqa: F401 - initialises COM in this thread
        import servicemanager  # noqa: F401 - what the service imports
        import win32service  # noqa: F401

        seen["after import"] = com.apartment()

    def sta_thread() -> None:
        import pythoncom

        pythoncom.CoInitializeEx(pythoncom.COINIT_APARTMENTTHREADED)
        try:
            seen["sta"] = com.apartment()
        finally:
            pythoncom.CoUninitialize()

    for target in (import_here, sta_thread):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join(30)
    assert seen["after import"] == "MTA"
    assert seen["sta"] in ("STA", "MAINSTA")  # the first STA of a process is the "main" STA


# ------------------------------------------------------------------------------------ service


def test_service_command_line_runs_this_python() -> None:
    program, arguments = service_command(Path("C:/ProgramData/vitals-agent/agent.toml"))
    assert program == sys.executable
    assert arguments.startswith("-m vitals_agent service host --config ")
    assert "agent.toml" in arguments


def test_log_rotation_keeps_three(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    for generation in range(5):
        log.write_text(f"{generation}" * 20)
        rotate_log(log, keep=3, max_bytes=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.log.1", "agent.log.2", "agent.log.3"]
    assert (tmp_path / "agent.log.1").read_text() == "4" * 20
    small = tmp_path / "small.log"
    small.write_text("x")
    rotate_log(small, keep=3, max_bytes=10)
    assert small.exists()


@POSIX_ONLY
@pytest.mark.parametrize("action", ["status", "reload"])
async def test_service_subcommands_say_they_are_for_windows(
    action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await main(["service", action]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: `vitals-agent service {action}` manages the Windows service")
    assert "\n" not in err
