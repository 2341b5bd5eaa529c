"""A process started without standard handles (a Windows service: the service control manager gives it
none; ``pythonw``; a daemon with fds 0-2 closed) has ``sys.stdout``/``sys.stderr`` = None. The command
line must still run (it once died in its first logging setup, so the Windows service never started)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from vitals_agent import host
from vitals_agent.logs import setup_logging

NO_STD_HANDLES = """\
import os, sys
for fd in (0, 1, 2):
    os.close(fd)
os.execv(sys.executable, [sys.executable, "-m", "vitals_agent", *sys.argv[1:]])
"""


@pytest.mark.slow  # starts a process
@pytest.mark.skipif(host.WINDOWS, reason="closes fds 0-2 before exec (POSIX); Windows: tests/windows service")
def test_the_command_line_runs_with_no_standard_handles(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nfacility = "F"\ndata_dir = "state"\n[control]\nenabled = false\n')
    ok = subprocess.run(
        [sys.executable, "-c", NO_STD_HANDLES, "check-config", str(config)], timeout=60, check=False
    )
    assert ok.returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent\n")
    # The one-line error goes to the null device; the exit status still says what happened (1, no crash).
    failed = subprocess.run(
        [sys.executable, "-c", NO_STD_HANDLES, "check-config", str(bad)], timeout=60, check=False
    )
    assert failed.returncode == 1


def test_stdlib_logging_follows_the_latest_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Windows service sets up logging for the command line, then again for its log file: library
    warnings (stdlib logging) must land in the log file, not in the first stream."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # pytest's own capture handlers: as in a real process
    monkeypatch.setattr(root, "level", root.level)
    first, second = io.StringIO(), io.StringIO()
    setup_logging("WARNING", stream=first)
    setup_logging("INFO", stream=second, json=True)
    logging.getLogger("some.library").warning("disk nearly full")
    assert "disk nearly full" not in first.getvalue()
    assert "WARNING some.library disk nearly full" in second.getvalue()
    assert len(root.handlers) == 1
