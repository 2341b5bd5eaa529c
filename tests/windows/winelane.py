"""The Windows lane's Wine prefix: set it up (``python tests/windows/winelane.py setup``) and run Windows
programs in it from the Linux side (the lane's tests import this module).

``setup`` makes a fresh prefix at ``.windows/prefix`` (``WINEPREFIX``), keeps its wineserver running
(``wineserver -p``: Wine ends services ~3 s after the last ordinary Wine process otherwise), adds the
test-only ``bcryptprimitives.dll`` shim (Wine 8 lacks ``ProcessPrng``, which Rust-built wheels such as
pydantic-core import; Windows 10+ has it), unpacks ``dist/vitals-agent-windows-amd64.zip`` and runs its own
``install.cmd``, and copies the test tools and tests for the unit lane. ``teardown`` ends the prefix's
wineserver (and with it every Wine process of this prefix only).

Wine facts this module works around: Windows CPython under Wine cannot write to a regular file as stdout
or stderr (they must be pipes); ``net stop`` returns before the service has stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vitals_agent.drivers.pty import PtyDevice

ROOT = Path(__file__).resolve().parents[2]
WINDOWS_DIR = ROOT / ".windows"
PREFIX = Path(os.environ.get("VITALS_WINE_PREFIX") or WINDOWS_DIR / "prefix")
CACHE = WINDOWS_DIR / "cache"
ZIP = ROOT / "dist" / "vitals-agent-windows-amd64.zip"
TEST_SITE = WINDOWS_DIR / "build" / "testsite"
SHIM_SRC = ROOT / "packaging" / "windows" / "wine"

INSTALL_DIR = r"C:\Program Files\vitals-agent"
PYTHON = INSTALL_DIR + r"\python.exe"
CONFIG = r"C:\ProgramData\vitals-agent\agent.toml"
DATA_DIR = r"C:\ProgramData\vitals-agent\data"
TEST_DIR = r"C:\vitals-test"
SERVICES_LOG = WINDOWS_DIR / "build" / "services.log"


# Wine 8 lacks propsys.VariantToString, which CPython's _wmi (platform.uname() & co., asked by pytest's
# header, hypothesis and bleak's import) calls: Wine aborts the process (and hangs in its debugger). Without
# _wmi, platform falls back to the registry. A .pth line runs in every process of the installed CPython
# (the unit lane's pytest and the CLI processes its tests start); it is put into the test prefix only.
NO_WMI_PTH = "wine-lane-no-wmi.pth"
NO_WMI = "import sys; sys.modules.setdefault('_wmi', None)\n"

RUN_TESTS = """\
# The unit lane's pytest under the embeddable CPython (its ._pth file ignores PYTHONPATH).
import os, sys
here = os.path.dirname(os.path.abspath(__file__))
sys.path[0:0] = [os.path.join(here, "site"), os.path.join(here, "tests")]
os.chdir(here)
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""

WATCH_SERVICE = """\
# Watch a service's state from inside the prefix: one line per change, "<state> <pid>", then "exited"
# when the service's process has ended after a stop. Runs until it has seen the process end.
import sys, time, win32api, win32con, win32event, win32service
scm = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_CONNECT)
handle = win32service.OpenService(scm, sys.argv[1], win32service.SERVICE_QUERY_STATUS)
names = {1: "stopped", 2: "starting", 3: "stopping", 4: "running"}
print("watching", flush=True)
last, process, seen_running = None, None, False
while True:
    info = win32service.QueryServiceStatusEx(handle)
    state, pid = names.get(info["CurrentState"], str(info["CurrentState"])), info["ProcessId"]
    if pid and process is None:
        process = win32api.OpenProcess(win32con.SYNCHRONIZE, False, pid)
    if state != last:
        print(state, pid, flush=True)
        last = state
    seen_running = seen_running or state == "running"
    if seen_running and state == "stopped":
        if process is not None:
            win32event.WaitForSingleObject(process, 30000)
        print("exited", flush=True)
        break
    time.sleep(0.05)  # the sampling rate of the service state
"""


def drive_c() -> Path:
    return PREFIX / "drive_c"


def unix_path(windows_path: str) -> Path:
    """``C:\\x\\y`` in this prefix as a Linux path."""
    drive, _, rest = windows_path.partition(":")
    assert drive.upper() == "C", windows_path
    return drive_c().joinpath(*[p for p in rest.replace("\\", "/").split("/") if p])


def wine_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WINEPREFIX=str(PREFIX),
        WINEDEBUG=env.get("VITALS_WINEDEBUG", "-all"),
        WINEDLLOVERRIDES="mscoree,mshtml=",  # no Mono / Gecko install prompts
        PYTHONUNBUFFERED="1",
    )
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env.update(extra)
    return env


def wine(
    *args: str, timeout: float = 300, check: bool = True, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run ``wine ARGS`` to completion; stdout and stderr are pipes (Windows CPython needs that)."""
    proc = subprocess.run(
        ["wine", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=wine_env(**extra),
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"wine {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}")
    return proc


def python(
    *args: str, timeout: float = 300, check: bool = True, **extra: str
) -> subprocess.CompletedProcess[str]:
    """The installed embeddable CPython under Wine."""
    return wine(PYTHON, *args, timeout=timeout, check=check, **extra)


def agent(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``vitals-agent ARGS`` as installed in the prefix."""
    return python("-m", "vitals_agent", *args, timeout=timeout, check=check)


def popen_agent(*args: str, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["wine", PYTHON, "-m", "vitals_agent", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=wine_env(**extra),
        start_new_session=True,  # our own process group: signals go to this wine process only
    )


def prefix_ready() -> bool:
    return unix_path(PYTHON).exists()


def build_shim() -> Path:
    """The test prefix's bcryptprimitives.dll (cached), from packaging/windows/wine with binutils-mingw."""
    out = CACHE / "shim" / "bcryptprimitives.dll"
    sources = sorted(SHIM_SRC.iterdir())
    if out.exists() and all(out.stat().st_mtime >= s.stat().st_mtime for s in sources):
        return out
    work = out.parent
    work.mkdir(parents=True, exist_ok=True)
    tool = "x86_64-w64-mingw32-"
    subprocess.run(
        [tool + "dlltool", "-d", SHIM_SRC / "advapi32.def", "-l", work / "libadvapi32.a"], check=True
    )
    subprocess.run([tool + "as", "-o", work / "processprng.o", SHIM_SRC / "processprng.S"], check=True)
    subprocess.run(
        [
            tool + "ld", "--shared", "--no-insert-timestamp", "--no-seh", "-e", "0", "-o", out,
            SHIM_SRC / "bcryptprimitives.def", work / "processprng.o", work / "libadvapi32.a",
        ],
        check=True,
    )  # fmt: skip
    return out


def start_wineserver() -> None:
    """A persistent wineserver for this prefix (services outlive the commands that start them). One that
    is already running (``setup`` starts it persistent) makes ``wineserver -p`` exit 2: that is fine."""
    subprocess.run(
        ["wineserver", "-p"],
        env=wine_env(),
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def teardown() -> None:
    """End this prefix's wineserver and every Wine process in the prefix (no other prefix is touched)."""
    if PREFIX.exists():
        subprocess.run(["wineserver", "-k"], env=wine_env(), check=False, timeout=60)
        subprocess.run(["wineserver", "-w"], env=wine_env(), check=False, timeout=60)


def copy_shared(test_root: Path) -> None:
    """``../shared`` (samples, reference) beside the tests in the prefix when it is here, so the tests that
    read real samples run under the Windows CPython too (and, in CI, a skip for want of it fails there
    as it does on Linux: tests/kit/shared.py)."""
    from tests.kit.shared import SHARED

    target = test_root.parent / "shared"  # the copied tests' ../shared
    shutil.rmtree(target, ignore_errors=True)
    if SHARED.is_dir():
        shutil.copytree(SHARED, target, copy_function=shutil.copyfile, ignore=shutil.ignore_patterns("hooks"))
        for folder in [target, *(p for p in target.rglob("*") if p.is_dir())]:
            folder.chmod(0o755)  # (the source tree is read-only; the next setup removes this copy)


def setup() -> None:
    started = time.monotonic()
    if not ZIP.exists():
        raise SystemExit(f"{ZIP} is missing: run make windows-dist")
    teardown()
    shutil.rmtree(PREFIX, ignore_errors=True)
    PREFIX.mkdir(parents=True)
    print(f"winelane: creating a fresh Wine prefix at {PREFIX}", flush=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": wine_env()}
    # Initialise, and let everything of the initialisation end (with a persistent server from the start,
    # wineboot -i leaves two services.exe behind, and service queries then go to either).
    subprocess.run(["wineboot", "-i"], check=True, **quiet)  # type: ignore[call-overload]
    subprocess.run(["wineserver", "-w"], check=True, **quiet)  # type: ignore[call-overload]
    start_wineserver()
    # Start services.exe & co. now, with their Unix stdout/stderr on a pipe of their own that `cat`
    # copies into SERVICES_LOG, so a later `wine ... | reader` does not hand its pipe to services.exe
    # (the reader would wait for it forever). A service gets no Windows standard handles (sys.stdout and
    # sys.stderr are None in the agent's service process, as on Windows), but Wine's debug channels of
    # every process services.exe starts write to that Unix stderr: with +eventlog, Wine's ReportEvent
    # (a stub) traces each event-log line the service writes, which the service test reads.
    with open(SERVICES_LOG, "wb") as log:
        sink = subprocess.Popen(
            ["cat"], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.DEVNULL, start_new_session=True
        )
    assert sink.stdin is not None
    subprocess.run(
        ["wineboot"],
        check=True,
        stdout=sink.stdin,
        stderr=sink.stdin,
        env=wine_env(WINEDEBUG="-all,+eventlog"),
    )
    sink.stdin.close()  # services.exe holds the other copy; cat ends with the wineserver (teardown)
    shutil.copy(build_shim(), drive_c() / "windows" / "system32" / "bcryptprimitives.dll")
    staging = drive_c() / "vitals-install"
    with zipfile.ZipFile(ZIP) as zf:
        zf.extractall(staging)
    print("winelane: running install.cmd", flush=True)
    out = wine("cmd", "/c", r"C:\vitals-install\vitals-agent\install.cmd", timeout=300)
    print(out.stdout.strip(), flush=True)
    if not prefix_ready():
        raise SystemExit("install.cmd did not install python.exe")
    (unix_path(INSTALL_DIR) / "Lib" / "site-packages" / NO_WMI_PTH).write_text(NO_WMI)
    test_root = unix_path(TEST_DIR)
    shutil.rmtree(test_root, ignore_errors=True)
    test_root.mkdir(parents=True)
    shutil.copytree(TEST_SITE, test_root / "site")
    shutil.copytree(
        ROOT / "tests", test_root / "tests", ignore=shutil.ignore_patterns("__pycache__", "windows")
    )
    for folder in ("deploy", "docs"):  # the systemd unit's and the interface spec's tests read them
        shutil.copytree(ROOT / folder, test_root / folder)
    copy_shared(test_root)
    for name in ("pyproject.toml", "README.md"):  # (README: the log events table's test)
        shutil.copy(ROOT / name, test_root / name)
    (test_root / "run_tests.py").write_text(RUN_TESTS)
    (test_root / "watch_service.py").write_text(WATCH_SERVICE)
    print(f"winelane: prefix ready in {time.monotonic() - started:.1f} s", flush=True)


# ------------------------------------------------------------- the agent under Wine, COM ports on ptys


def write_config(ehr_port: int, ports: list[str], extra: str = "") -> None:
    lines = [
        "[agent]",
        'facility = "EXAMPLE_CLINIC"',
        'location = "CLINIC^ROOM12"',
        'timezone = "UTC"',
        "[ehr]",
        'host = "127.0.0.1"',
        f"port = {ehr_port}",
        "ack_timeout_seconds = 3",
        "backoff_min_seconds = 0.1",
        "backoff_max_seconds = 0.5",
        "[control]",
        "enabled = false",
        extra,
    ]
    for i, port in enumerate(ports):
        lines += [
            "[[devices]]",
            f'id = "spo2-{i}"',
            'driver = "masimo-ascii"',
            f'port = "{port}"',
            'report = "every"',
        ]
    unix_path(CONFIG).write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def com_ports(count: int, first: int = 5) -> Iterator[list[PtyDevice]]:
    """``count`` Linux ptys as COM{first}.. in the prefix (dosdevices links to the pty slaves)."""
    devices = []
    links = []
    try:
        for i in range(count):
            device = PtyDevice(WINDOWS_DIR / "build" / f"tty-com{first + i}").open()
            devices.append(device)
            link = PREFIX / "dosdevices" / f"com{first + i}"
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            assert device.slave_name is not None
            link.symlink_to(device.slave_name)
            links.append(link)
        yield devices
    finally:
        for link in links:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
        for device in devices:
            device.close()


class WineAgent:
    """``vitals-agent run`` under Wine; its JSON log lines collected."""

    def __init__(self) -> None:
        self.proc = popen_agent("run", "--config", CONFIG)
        self.log: list[dict[str, Any]] = []
        self.raw: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            text = line.decode("utf-8", "replace").rstrip()
            self.raw.append(text)
            with contextlib.suppress(json.JSONDecodeError):
                self.log.append(json.loads(text))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in list(self.log) if e.get("event") == name]

    async def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        from tests.kit.wait import (
            until,  # (here: this file also runs as a script, without tests/ on the path)
        )

        def seen() -> bool:
            if predicate():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"agent exited ({self.proc.returncode}) waiting for {what}:\n{self.tail()}"
                )
            return False

        await until(seen, timeout, what, interval=0.1, detail=self.tail)

    def tail(self) -> str:
        return "\n".join(self.raw[-30:])

    def ctrl_c(self) -> tuple[int, float]:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGINT)  # Wine delivers it to python.exe as Ctrl-C
        code = self.proc.wait(timeout=30)
        return code, time.monotonic() - start

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script: tests.kit.shared for copy_shared
    action = sys.argv[1] if len(sys.argv) > 1 else "setup"
    {"setup": setup, "teardown": teardown}[action]()
