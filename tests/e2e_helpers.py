"""Helpers for end-to-end tests: the agent as a real subprocess (tests marked ``slow``); the EHR is
tests.fake_ehr.Hl7Ehr (python-hl7's MLLP server)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.kit.wait import until
from tests.private_files import under_wine
from vitals_agent.cli import main


class AgentProcess:
    """``python -m vitals_agent run --config FILE`` in a subprocess; its JSON log lines are collected."""

    def __init__(
        self,
        config: Path,
        *,
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        open_files: tuple[int, int] | None = None,
    ) -> None:
        """``open_files``: the agent's (soft, hard) RLIMIT_NOFILE, set before it starts."""
        self.config = config
        self.log: list[dict[str, Any]] = []
        self.raw_log: list[str] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}

        def limit_files() -> None:
            import resource

            assert open_files is not None
            resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vitals_agent", "run", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=limit_files if open_files is not None else None,
            # Windows: its own process group, so a Ctrl-Break reaches the agent alone (terminate()).
            creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.raw_log.append(text)
            with contextlib.suppress(json.JSONDecodeError):
                self.log.append(json.loads(text))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [entry for entry in list(self.log) if entry.get("event") == name]

    async def wait_log(
        self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "", interval: float = 0.05
    ) -> None:
        """Wait until ``predicate()`` (usually on :attr:`log`); fail at once when the agent exits first."""

        def seen() -> bool:
            if predicate():
                return True
            if self.proc.poll() is not None:
                exited = f"agent exited ({self.proc.returncode}) waiting for {what}"
                raise AssertionError(f"{exited}:\n{self.tail()}")
            return False

        await until(seen, timeout, what, interval, detail=self.tail)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.raw_log[-n:])

    def terminate(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM (Ctrl-Break on Windows: what a console stop is there); returns (exit code, seconds)."""
        start = time.monotonic()
        self.proc.send_signal(getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM))
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL; TerminateProcess on Windows
        self.proc.wait(timeout=5)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


async def cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """``vitals-agent ARGS`` against a running agent: (exit code, standard output, standard error).

    In this process (``await main(argv)``, what the console script runs), not a fresh interpreter: the
    tests that use it are about the agent process and the control API, and each interpreter start cost
    0.3 s of CPU. The CLI as its own process (exit codes, streams, a user who cannot read the token) is
    tested in tests/test_patient_cli.py, test_cli_papercuts.py and test_clean_failures.py."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = await asyncio.wait_for(main(list(args)), timeout)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


# Under Wine the tests run without a console, so Ctrl-Break cannot be sent to the agent
# (GenerateConsoleCtrlEvent fails with ERROR_INVALID_ACCESS): a test that stops it with terminate() skips
# there. The Windows lane (tests/windows) stops the agent under Wine with Ctrl-C sent from Linux.
STOPS_THE_AGENT = pytest.mark.skipif(
    under_wine(), reason="stops the agent with Ctrl-Break: Wine gives the test runner no console"
)


def outbox_depth(data_dir: Path) -> int:
    """Messages in the agent's outbox (read-only, beside the running agent); -1 before it exists."""
    path = data_dir / "outbox.sqlite3"
    if not path.exists():
        return -1
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def masimo_ascii1_line(
    at: datetime, spo2: str, bpm: str, pi: str, *, serial: str = "0000123456", exc: str = "000800"
) -> bytes:
    """One Rad-8 ASCII 1 line as devices.md §5.3 shows it (device clock first, CR LF at the end)."""
    stamp = at.strftime("%m/%d/%y %H:%M:%S")
    return (
        f"{stamp} SN={serial} SPO2={spo2}% BPM={bpm} PI={pi}% SPCO=--.-% SPMET=--.-% "
        f"DESAT=-- PIDELTA=+-- ALARM=0000 EXC={exc}\r\n"
    ).encode("ascii")


def write_config(
    path: Path,
    *,
    data_dir: Path,
    ehr_port: int,
    devices: list[dict[str, Any]],
    extra: str = "",
    control_port: int | None = None,
    log_level: str = "INFO",
) -> Path:
    """``control_port``: enable the control API on that port (0: any free port, see control.json)."""
    lines = [
        "[agent]",
        'facility = "EXAMPLE_CLINIC"',
        f'log_level = "{log_level}"',
        'location = "CLINIC^ROOM12"',
        f"data_dir = '{data_dir}'",  # a TOML literal string: Windows paths keep their backslashes
        'timezone = "UTC"',
        "[ehr]",
        'host = "127.0.0.1"',
        f"port = {ehr_port}",
        "ack_timeout_seconds = 2",
        "backoff_min_seconds = 0.05",
        "backoff_max_seconds = 0.5",
        "[control]",
        "enabled = false" if control_port is None else f"enabled = true\nport = {control_port}",
        extra,
    ]
    for dev in devices:
        lines.append("[[devices]]")
        for key, value in dev.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path
