"""``deploy/install.sh`` into a throwaway root, as it runs on a fresh Debian machine (minus the live systemd).

The script runs for real: it creates the user and groups (in the root's own /etc with ``--prefix``), builds
the venv with Debian's Python and pip, links the command, installs config, data folder, unit and drop-in,
and enables the unit with ``systemctl --root``. Then the service user runs the installed command with the
installed configuration against a pseudo-terminal device and an MLLP receiver, and readings arrive. The
developer's real /etc is never touched. Needs root (users, ownership); skipped otherwise.

install.sh's pip resolves from a local wheelhouse (:func:`wheelhouse`) instead of the package index: the
same requirements, without reading ~30 index pages on every install and upgrade.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e_helpers import masimo_ascii1_line
from tests.fake_ehr import Hl7Ehr
from tests.oracle import validate_oru
from vitals_agent.drivers.pty import PtyDevice

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "deploy" / "install.sh"
DEBIAN_PYTHON = "/usr/bin/python3"  # install.sh's default
WHEELHOUSES = REPO / ".cache" / "install-wheelhouse"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not (hasattr(os, "geteuid") and os.geteuid() == 0),
        reason="needs root on Linux: install.sh creates a user and sets owners",
    ),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd (Debian: passwd package)"),
    pytest.mark.skipif(
        subprocess.run([DEBIAN_PYTHON, "-c", "import venv, ensurepip"], capture_output=True).returncode != 0
        if Path(DEBIAN_PYTHON).exists()
        else True,
        reason="needs Debian's /usr/bin/python3 with the venv module (apt install python3-venv)",
    ),
]


@dataclass
class Installed:
    root: Path
    output: str
    errors: str
    uid: int
    gid: int

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")


@functools.cache
def wheelhouse() -> Path:
    """Every wheel install.sh's pip needs (the build backend, the agent's dependencies), downloaded once by
    Debian's pip into the git-ignored ``.cache/install-wheelhouse`` and again only when pyproject.toml's
    requirements change. Resolving them against the package index cost each install ~6 s of CPU."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wants = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    key = hashlib.sha256(json.dumps([os.path.realpath(DEBIAN_PYTHON), wants]).encode()).hexdigest()[:16]
    folder = WHEELHOUSES / key
    if not folder.is_dir():
        WHEELHOUSES.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=WHEELHOUSES, prefix="partial-"))
        try:
            download = [DEBIAN_PYTHON, "-m", "pip", "download", "--quiet", "--dest", str(partial), *wants]
            done = subprocess.run(download, capture_output=True, text=True, timeout=500)
            assert done.returncode == 0, done.stdout + done.stderr
            with contextlib.suppress(OSError):  # a parallel run of the suite made it first
                partial.rename(folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    assert folder.is_dir(), f"no wheelhouse at {folder}"
    return folder


def run_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    local = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse())}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=500,
        env={**os.environ, **local},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result


def fresh_root(base: Path) -> Path:
    """What a fresh Debian has that install.sh relies on: the account files (with dialout) and systemd's
    own units (for `systemd-analyze verify`)."""
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\ndialout:*::\n")
    for name in ("shadow", "gshadow"):
        os.chmod(root / "etc" / name, 0o600)
    if SYSTEM_UNITS.is_dir():
        shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    return root


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    # Not pytest's tmp_path: that is private to root, and the service user must reach the venv.
    base = Path(tempfile.mkdtemp(prefix="vitals-install-"))
    os.chmod(base, 0o755)
    try:
        root = fresh_root(base)
        result = run_install(root)
        fields = next(
            line.split(":")
            for line in (root / "etc/passwd").read_text().splitlines()
            if line.startswith("vitals-agent:")
        )
        yield Installed(root, result.stdout, result.stderr, int(fields[2]), int(fields[3]))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def tree_digest(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under root: type, mode, owner, mtime and content hash (or link target)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                out[str(path.relative_to(root))] = ("link", os.readlink(path), st.st_uid)
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[str(path.relative_to(root))] = (
                    "file",
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    st.st_mtime_ns,
                    digest,
                )
            else:
                out[str(path.relative_to(root))] = ("dir", st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def group_members(root: Path, group: str) -> list[str]:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return [m for m in fields[3].split(",") if m]
    return []


async def readings_arrive(pty: PtyDevice, ehr: Hl7Ehr, agent: subprocess.Popen[bytes]) -> list[str]:
    """Write a Rad-8 line every half second until the EHR has a message (the agent opens the port when
    it is up; lines written before that are not read)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert agent.poll() is None, agent.communicate()[1].decode()
        await pty.write(masimo_ascii1_line(datetime.now(UTC).replace(microsecond=0), "097", "071", "04.20"))
        with contextlib.suppress(AssertionError):
            return await ehr.wait_for(1, timeout=0.5)
    raise AssertionError("no reading reached the EHR in 30 s")


def test_first_install_lays_out_everything(installed: Installed) -> None:
    p = installed.path
    passwd = (installed.root / "etc/passwd").read_text()
    assert (
        f"vitals-agent:x:{installed.uid}:{installed.gid}:vitals-agent service:/var/lib/vitals-agent:"
        in passwd
    )
    assert "vitals-agent" in group_members(installed.root, "dialout")
    assert "vitals-agent" in group_members(installed.root, "bluetooth")  # the group was created
    # the venv is Debian's Python, nothing in the system Python
    assert (p("/opt/vitals-agent/pyvenv.cfg")).read_text().count("/usr/bin") >= 1
    assert os.readlink(p("/usr/local/bin/vitals-agent")) == "../../../opt/vitals-agent/bin/vitals-agent"
    version = subprocess.run([p("/usr/local/bin/vitals-agent"), "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("vitals-agent ")
    config = p("/etc/vitals-agent/agent.toml")
    assert config.read_text() == (REPO / "deploy/agent.example.toml").read_text()
    st = config.stat()
    assert (oct(st.st_mode & 0o777), st.st_uid, st.st_gid) == ("0o640", 0, installed.gid)
    st = p("/var/lib/vitals-agent").stat()
    assert (oct(st.st_mode & 0o777), st.st_uid, st.st_gid) == ("0o700", installed.uid, installed.gid)
    unit = p("/etc/systemd/system/vitals-agent.service")
    assert unit.read_text() == (REPO / "deploy/vitals-agent.service").read_text()
    assert p("/etc/systemd/system/vitals-agent.service.d/50-config-paths.conf").is_file()
    if shutil.which("systemctl"):
        wants = p("/etc/systemd/system/multi-user.target.wants/vitals-agent.service")
        assert os.readlink(wants) == "/etc/systemd/system/vitals-agent.service"
    assert "systemd is not running here; once it is: systemctl start vitals-agent" in installed.output
    # the build raised no setuptools deprecation warning (pip prints a backend's warnings on stderr)
    assert "deprecat" not in (installed.output + installed.errors).lower()


def test_second_run_changes_nothing(installed: Installed) -> None:
    before = tree_digest(installed.root)
    again = run_install(installed.root)
    assert tree_digest(installed.root) == before
    assert "nothing to change: vitals-agent is installed and up to date" in again.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.skipif(not SYSTEM_UNITS.is_dir(), reason="systemd's own units are needed to verify a unit")
def test_installed_unit_verifies_clean_and_scores_at_most_4(installed: Installed) -> None:
    root = f"--root={installed.root}"
    result = subprocess.run(
        ["systemd-analyze", "verify", root, "vitals-agent.service"], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", root, "vitals-agent.service"],
        capture_output=True,
        text=True,
    )
    score = float(result.stdout.rsplit("vitals-agent.service: ", 1)[1].split()[0])
    assert score <= 4.0


async def test_service_user_runs_the_installed_agent_and_readings_arrive(installed: Installed) -> None:
    p = installed.path
    ehr = await Hl7Ehr().start()
    config = p("/etc/vitals-agent/agent.toml")
    original = config.read_text()
    try:
        with PtyDevice(installed.root / "ttyRad8") as pty:
            # like udev: the serial port belongs to group dialout, the service user is a member
            assert pty.slave_name is not None
            os.chown(pty.slave_name, 0, 20)
            os.chmod(pty.slave_name, 0o660)
            config.write_text(
                original.replace('"/var/lib/vitals-agent"', f'"{p("/var/lib/vitals-agent")}"')
                .replace("port = 2575", f"port = {ehr.port}")
                .replace('"/dev/ttyUSB0"', f'"{pty.link}"')
                .replace('report = "stable"', 'report = "every"')
                + "[control]\nport = 0\n"
            )
            check = subprocess.run(
                [p("/usr/local/bin/vitals-agent"), "check-config", "--config", str(config)],
                capture_output=True,
                text=True,
                user=installed.uid,
                group=installed.gid,
                extra_groups=[20],
            )
            assert (check.returncode, check.stdout) == (0, "ok: 1 device\n"), check.stdout + check.stderr
            agent = subprocess.Popen(
                [p("/usr/local/bin/vitals-agent"), "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                user=installed.uid,
                group=installed.gid,
                extra_groups=[20],
            )
            try:
                messages = await readings_arrive(pty, ehr, agent)
            finally:
                agent.terminate()
                _, err = agent.communicate(timeout=10)
            assert agent.returncode == 0, err.decode()
        oru = validate_oru(messages[0])
        assert oru.msh[4] == "EXAMPLE_CLINIC"
        data = p("/var/lib/vitals-agent")
        owners = {path.name: path.stat().st_uid for path in data.iterdir()}
        assert owners and set(owners.values()) == {installed.uid}, owners  # all the service user's
    finally:
        config.write_text(original)
        await ehr.close()


def test_config_is_never_overwritten_and_the_dropin_follows_it(installed: Installed) -> None:
    p = installed.path
    config = p("/etc/vitals-agent/agent.toml")
    original = config.read_text()
    edited = original + '\n[[devices]]\nid = "ekg"\ndriver = "scp-ecg"\nfolder = "/srv/ekg"\n'
    config.write_text(edited)
    try:
        result = run_install(installed.root)
        assert config.read_text() == edited
        dropin = p("/etc/systemd/system/vitals-agent.service.d/50-config-paths.conf").read_text()
        assert "ReadWritePaths=-/srv/ekg\n" in dropin
        assert "wrote /etc/systemd/system/vitals-agent.service.d/50-config-paths.conf" in result.stdout
    finally:
        config.write_text(original)
        run_install(installed.root)


def test_upgrade_keeps_data_and_config_and_asks_for_a_restart(installed: Installed) -> None:
    p = installed.path
    marker = p("/var/lib/vitals-agent/outbox.sqlite3")
    marker.write_bytes(b"queued readings")
    os.chown(marker, installed.uid, installed.gid)
    config_before = p("/etc/vitals-agent/agent.toml").read_text()
    p("/opt/vitals-agent/.source-digest").write_text("an older version\n")
    result = run_install(installed.root)
    assert "upgraded vitals-agent" in result.stdout
    assert "systemd is not running here; once it is: systemctl restart vitals-agent" in result.stdout
    assert marker.read_bytes() == b"queued readings"
    assert p("/etc/vitals-agent/agent.toml").read_text() == config_before
    marker.unlink()


def test_root_owned_leftovers_in_the_data_dir_are_given_back(installed: Installed) -> None:
    left = installed.path("/var/lib/vitals-agent/outbox.sqlite3-wal")
    left.unlink(missing_ok=True)
    left.write_text("")  # as root, e.g. a manual run
    try:
        result = run_install(installed.root)
        assert "gave /var/lib/vitals-agent back to vitals-agent" in result.stdout
        assert left.stat().st_uid == installed.uid
    finally:
        left.unlink()


def test_uninstall_keeps_config_and_data_and_purge_removes_them(installed: Installed) -> None:
    p = installed.path
    result = run_install(installed.root, "--uninstall")
    for gone in (
        "/opt/vitals-agent",
        "/usr/local/bin/vitals-agent",
        "/etc/systemd/system/vitals-agent.service",
        "/etc/systemd/system/vitals-agent.service.d",
        "/etc/systemd/system/multi-user.target.wants/vitals-agent.service",
    ):
        assert not os.path.lexists(p(gone)), gone
    assert p("/etc/vitals-agent/agent.toml").is_file()
    assert p("/var/lib/vitals-agent").is_dir()
    assert "vitals-agent:" in (installed.root / "etc/passwd").read_text()
    assert "kept /etc/vitals-agent (configuration), /var/lib/vitals-agent" in result.stdout
    run_install(installed.root, "--uninstall", "--purge")
    assert not p("/etc/vitals-agent").exists() and not p("/var/lib/vitals-agent").exists()
    assert "vitals-agent:" not in (installed.root / "etc/passwd").read_text()
