"""Real storage faults for tests: a small tmpfs in a private mount namespace (a disk that really fills up),
and a worker subprocess running the real Outbox and Sender on it (tests/storage_worker.py).

The tmpfs is mounted by a holder process (``unshare -m``, then ``sleep``); workers join its mount
namespace with ``nsenter``, and the test reaches the files through ``/proc/<holder>/root``. Needs root (CI
runs as root) and a kernel that allows mount namespaces; :func:`private_disk` skips the test otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kit.wait import until

WORKER = Path(__file__).with_name("storage_worker.py")


class PrivateDisk:
    """A tmpfs of ``size`` bytes at ``mountpoint``, visible only to the holder and to workers it starts."""

    def __init__(self, mountpoint: Path, size: int) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        script = 'mount -t tmpfs -o size="$2",mode=0700 tmpfs "$1" && echo mounted && exec sleep 3600'
        self.holder = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                str(mountpoint),
                str(size),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != b"mounted":
            self.holder.kill()
            err = self.holder.communicate()[1].decode(errors="replace").strip()
            pytest.skip(f"needs root and mount namespaces for a real full disk (unshare: {err or 'failed'})")

    @property
    def outside(self) -> Path:
        """The mount point as the test process reaches it."""
        return Path(f"/proc/{self.holder.pid}/root") / str(self.mountpoint).lstrip("/")

    def fill(self) -> int:
        """Fill the disk completely; returns the bytes written."""
        written = 0
        with open(self.outside / "filler", "wb", buffering=0) as fh:
            chunk = b"\0" * 65536
            while True:
                try:
                    n = fh.write(chunk)
                except OSError:
                    break
                if not n:
                    break
                written += n
            # the last partial blocks
            for size in (4096, 512, 1):
                with contextlib.suppress(OSError):
                    while fh.write(b"\0" * size):
                        written += size
        return written

    def free(self) -> None:
        (self.outside / "filler").unlink()

    def command(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv]

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(timeout=5)


@contextlib.contextmanager
def private_disk(mountpoint: Path, size: int = 2 * 1024 * 1024) -> Iterator[PrivateDisk]:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs util-linux unshare and nsenter for a real full disk")
    if os.geteuid() != 0:
        pytest.skip("needs root for a private tmpfs (a real full disk); CI runs as root")
    disk = PrivateDisk(mountpoint, size)
    try:
        yield disk
    finally:
        disk.close()


class Worker:
    """tests/storage_worker.py in a subprocess; its stdout lines are collected by a thread."""

    def __init__(self, command: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @classmethod
    def start(cls, disk: PrivateDisk | None, data_dir: Path, port: int, *args: str) -> Worker:
        argv = [sys.executable, str(WORKER), str(data_dir), str(port), *args]
        return cls(disk.command(*argv) if disk is not None else argv)

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in iter(stream.readline, b""):
            into.append(line.decode("utf-8", "replace").rstrip("\n"))

    def statuses(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def last(self) -> dict[str, Any]:
        statuses = self.statuses()
        return statuses[-1] if statuses else {}

    async def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        def seen() -> bool:
            if predicate():
                return True
            if self.proc.poll() is not None and not predicate():
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}) waiting for {what}: {self.tail()}"
                )
            return False

        await until(seen, timeout, what, interval=0.02, detail=self.tail)

    async def ready_then_go(self, before_go: Callable[[], object] | None = None) -> None:
        await self.wait(lambda: "ready" in self.lines, "ready")
        if before_go is not None:
            before_go()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def tail(self) -> str:
        return "\n".join(self.lines[-10:] + self.errors[-20:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
