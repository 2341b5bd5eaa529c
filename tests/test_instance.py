"""One agent per data_dir (a kernel lock), and a data_dir the agent can use: real processes, real files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e_helpers import AgentProcess, masimo_ascii1_line
from tests.fake_ehr import Hl7Ehr
from tests.kit.toml import toml_str
from tests.oracle import validate_oru
from vitals_agent import host
from vitals_agent.agent.instance import (
    LOCK_FILE,
    AlreadyRunningError,
    DataDirError,
    acquire_instance_lock,
    check_data_dir,
    prepare_data_dir,
)
from vitals_agent.drivers.pty import PtyDevice

pytestmark = pytest.mark.timeout(90)

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # Windows: no uids
NOBODY = 65534


def agent_config(path: Path, data: Path, ehr_port: int, pty: Path, ekg: Path) -> Path:
    path.write_text(
        f"""
[agent]
facility = "EXAMPLE_CLINIC"
location = "CLINIC^ROOM12"
data_dir = {toml_str(data)}
timezone = "UTC"
[ehr]
port = {ehr_port}
ack_timeout_seconds = 2
backoff_min_seconds = 0.05
backoff_max_seconds = 0.5
[control]
port = 0
[[devices]]
id = "spo2"
driver = "masimo-ascii"
port = "{pty}"
report = "every"
[[devices]]
id = "ekg"
driver = "scp-ecg"
folder = {toml_str(ekg)}
"""
    )
    return path


def snapshot(directory: Path) -> dict[str, tuple[int, int | None, bytes | None]]:
    """name -> (inode, mtime_ns, content) of the files a second agent would write; the stores the first
    agent keeps writing (outbox, audit) by inode only."""
    out: dict[str, tuple[int, int | None, bytes | None]] = {}
    for entry in sorted(directory.iterdir()):
        st = entry.stat()
        if entry.name in ("control.token", "control.json", LOCK_FILE, "gateway-eui64"):
            out[entry.name] = (st.st_ino, st.st_mtime_ns, entry.read_bytes())
        else:
            out[entry.name] = (st.st_ino, None, None)
    return out


def run_cli(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vitals_agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        user=user,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.slow  # starts a process
async def test_second_run_exits_1_naming_the_pid_and_leaves_the_first_untouched(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
    data, ekg = tmp_path / "data", tmp_path / "ekg"
    ekg.mkdir()
    now = datetime.now(UTC).replace(microsecond=0)
    with PtyDevice(tmp_path / "ttyRad8") as pty:
        cfg = agent_config(tmp_path / "agent.toml", data, ehr.port, pty.link, ekg)
        first = AgentProcess(cfg)
        try:
            await first.wait_log(lambda: (data / "control.json").exists(), what="control API up")
            await first.wait_log(lambda: bool(first.events("device.connected")), what="device.connected")
            await pty.write(masimo_ascii1_line(now, "097", "070", "04.69"))
            await ehr.wait_for(1)
            before = snapshot(data)
            ekg_before = sorted(p.name for p in ekg.iterdir())

            second = run_cli("run", "--config", str(cfg))

            assert second.returncode == 1
            assert second.stdout == ""
            assert second.stderr == (
                f"error: another vitals-agent (pid {first.proc.pid}) is already running on {data}; "
                "stop it first (as a service: systemctl stop vitals-agent)\n"
            )
            assert snapshot(data) == before  # token, endpoint, lock, outbox files: same inode and time
            assert sorted(p.name for p in ekg.iterdir()) == ekg_before
            # The first agent still answers with its token and still delivers, each message once.
            status = run_cli("status", "--json", "--config", str(cfg))
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["devices"][0]["id"] == "spo2"
            await pty.write(masimo_ascii1_line(now + timedelta(seconds=1), "096", "071", "04.10"))
            messages = await ehr.wait_for(2)
            ids = [validate_oru(m).control_id for m in messages]
            assert len(ids) == len(set(ids)) == 2
            code, _ = first.terminate()
            assert code == 0, first.tail()
        finally:
            first.cleanup()
            await ehr.close()


@pytest.mark.slow  # starts a process
async def test_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
    data, ekg = tmp_path / "data", tmp_path / "ekg"
    ekg.mkdir()
    with PtyDevice(tmp_path / "ttyRad8") as pty:
        cfg = agent_config(tmp_path / "agent.toml", data, ehr.port, pty.link, ekg)
        first = AgentProcess(cfg)
        try:
            await first.wait_log(lambda: (data / "control.json").exists(), what="control API up")
            first.kill()  # SIGKILL: no clean-up code runs; the kernel drops the lock with the process
            assert (data / LOCK_FILE).read_text().strip() == str(first.proc.pid)
            again = AgentProcess(cfg)
            try:
                await again.wait_log(lambda: bool(again.events("agent.starting")), what="restart")
                assert (data / LOCK_FILE).read_text().strip() == str(again.proc.pid)
                code, _ = again.terminate()
                assert code == 0, again.tail()
            finally:
                again.cleanup()
        finally:
            first.cleanup()
            await ehr.close()


def test_lock_in_process_and_release(tmp_path: Path) -> None:
    lock = acquire_instance_lock(tmp_path)
    try:
        # flock locks belong to the open file: a second open in the same process is refused too
        with pytest.raises(AlreadyRunningError) as info:
            acquire_instance_lock(tmp_path)
        assert info.value.pid == os.getpid()
    finally:
        lock.release()
    acquire_instance_lock(tmp_path).release()  # free again
    assert not lock.held


@pytest.mark.skipif(
    host.WINDOWS, reason="POSIX modes and users (Windows: ACLs, checked in tests/test_host.py)"
)
def test_data_dir_is_created_private_and_a_loose_one_is_tightened(tmp_path: Path) -> None:
    created = prepare_data_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(created.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    prepare_data_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(DataDirError, match=f"^agent.data_dir: {file} is not a directory$"):
        prepare_data_dir(file)
    assert check_data_dir(file) == f"{file} is not a directory"
    assert check_data_dir(tmp_path / "new") is None  # creatable


@pytest.mark.skipif(
    host.WINDOWS, reason="POSIX modes and users (Windows: ACLs, checked in tests/test_host.py)"
)
def test_a_file_of_another_user_in_the_data_dir_is_refused_with_the_chown_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service user (here: a pretended uid) finds a file that is not its own, e.g. a root-owned
    outbox left by a run as root: refused before anything is opened, with the command that fixes it."""
    import pwd

    from vitals_agent.agent import instance

    me = os.geteuid()
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "outbox.sqlite3").write_bytes(b"")
    (data / "audit.jsonl").write_bytes(b"")
    service_uid = NOBODY if me != NOBODY else NOBODY - 1
    monkeypatch.setattr(instance, "_current_uid", lambda: service_uid)
    owner = pwd.getpwuid(me).pw_name
    service = instance.user_name(service_uid)
    with pytest.raises(DataDirError) as info:
        prepare_data_dir(data)
    assert str(info.value) == (
        f"agent.data_dir: {data} belongs to {owner}, but the agent runs as {service}: "
        f"chown -R {service}: {data}"
    )
    if ROOT:  # give the folder to the pretended service user; the files stay root's
        os.chown(data, service_uid, service_uid)
        with pytest.raises(DataDirError) as info:
            prepare_data_dir(data)
        assert str(info.value) == (
            f"agent.data_dir: audit.jsonl and 1 more in {data} belong to root, not to {service} (left by a "
            f"run as another user?): chown -R {service}: {data}"
        )
    assert sorted(p.name for p in data.iterdir()) == ["audit.jsonl", "outbox.sqlite3"]
