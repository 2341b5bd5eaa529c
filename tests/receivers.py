"""Independent MLLP receivers for the receiver-compatibility tests (issue 17 item 4).

* :class:`Hl7apyServer` — hl7apy's ``MLLPServer`` (socketserver threads; one message per connection, then it
  closes, as hl7apy does), parsing each message with hl7apy.
* :class:`NodeHl7Server` — ``node-hl7-server`` from the npm registry (pinned in ``tests/peers/
  package-lock.json``), run by Node.js from ``tests/peers/node_hl7_server.js``. :func:`node_peers` installs
  it once into the git-ignored ``.cache/node-peers`` (``npm ci``; installed again only when the lock file
  changes) and skips the calling test with a reason when Node.js or npm is missing (under ``CI`` that is a
  failure: ``.ci/run`` installs them).
* :class:`Stunnel` — Debian's ``stunnel4`` as a TLS front in front of a plain receiver, as sites put one in
  front of Mirth.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

from tests.kit import free_port, until_sync
from vitals_agent import host
from vitals_agent.host.lock import lock_exclusive

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO / "tests" / "peers"
NODE_DIR = REPO / ".cache" / "node-peers"
NODE_SCRIPT = PEERS / "node_hl7_server.js"
NODE_PACKAGE = "node-hl7-server"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") and not host.WINDOWS:  # (the Linux peers: none under the Windows CPython)
        pytest.fail(f"{reason} (CI: .ci/run installs it)")
    pytest.skip(reason)


def ack_for(message: str, code: str = "AA") -> str:
    """An ACK^R01^ACK for an ER7 message (its MSH-10 in MSA-2)."""
    fields = message.split("\r", 1)[0].split("|")
    control_id = fields[9] if len(fields) > 9 else ""
    return (
        f"MSH|^~\\&|EHR|HOSP|{fields[2] if len(fields) > 2 else ''}||20250314153013+0000||ACK^R01^ACK|"
        f"A{control_id}|P|2.6\rMSA|{code}|{control_id}\r"
    )


# --- hl7apy ---------------------------------------------------------------------------------------------


class _OruHandler(AbstractHandler):  # type: ignore[misc]
    def __init__(self, message: str, owner: Hl7apyServer) -> None:
        super().__init__(message)
        self.owner = owner

    def reply(self) -> str:
        parsed = parse_message(self.incoming_message, find_groups=False)
        control_id = parsed.msh.msh_10.value
        with self.owner.lock:
            self.owner.received.append(control_id)
        return "\x0b" + ack_for(self.incoming_message, self.owner.code) + "\x1c\r"


class Hl7apyServer:
    """hl7apy's MLLP server on 127.0.0.1 (any free port), in a thread; records each MSH-10."""

    def __init__(self, code: str = "AA") -> None:
        self.code = code
        self.received: list[str] = []
        self.lock = threading.Lock()
        handler = (_OruHandler, self)
        self.server = MLLPServer("127.0.0.1", 0, {"ORU^R01": handler, "ORU^R01^ORU_R01": handler}, timeout=5)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="hl7apy-mllp", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


# --- node-hl7-server --------------------------------------------------------------------------------------


def node_peers() -> Path:
    """The installed ``node_modules`` folder (installs it when needed); skips without Node.js / npm."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _skip_or_fail("needs Node.js and npm for node-hl7-server (Debian: apt-get install nodejs npm)")
    assert npm is not None
    lock = (PEERS / "package.json").read_bytes() + (PEERS / "package-lock.json").read_bytes()
    digest = hashlib.sha256(lock).hexdigest()
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    stamp = NODE_DIR / ".installed"
    modules = NODE_DIR / "node_modules"
    with open(NODE_DIR / ".install.lock", "w") as guard:
        lock_exclusive(guard.fileno())  # one install at a time (parallel runs of the suite)
        if stamp.exists() and stamp.read_text() == digest and (modules / NODE_PACKAGE).is_dir():
            return modules
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(PEERS / name, NODE_DIR / name)
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        except subprocess.TimeoutExpired:
            _skip_or_fail("npm ci did not finish within 300 s (no registry?)")
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            _skip_or_fail(f"npm could not install {NODE_PACKAGE} (tests/peers/package-lock.json): {last}")
        stamp.write_text(digest)
    return modules


class NodeHl7Server:
    """``node-hl7-server`` answering every message with ``code``; :attr:`received` lists each MSH-10 its
    handler saw, in order (a replayed message appears again)."""

    def __init__(self, modules: Path, code: str = "AA") -> None:
        self.modules = modules
        self.code = code
        self.port = 0
        self.received: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> Self:
        node = shutil.which("node")
        assert node is not None
        env = {**os.environ, "NODE_PATH": str(self.modules)}
        self._proc = await asyncio.create_subprocess_exec(
            node, str(NODE_SCRIPT), self.code,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        assert self._proc.stdout is not None
        async with asyncio.timeout(20):
            first = json.loads(await self._proc.stdout.readline() or b"{}")
        if "listening" not in first:
            err = b""
            if self._proc.stderr is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        err = await self._proc.stderr.read()
            raise AssertionError(f"node-hl7-server did not start: {first} {err.decode(errors='replace')}")
        self.port = int(first["listening"])
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            event: dict[str, Any] = json.loads(line)
            if "received" in event:
                async with self._changed:
                    self.received.append(str(event["received"]))
                    self._changed.notify_all()

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[str]:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(self.received) >= count)
        except TimeoutError:
            raise AssertionError(f"node-hl7-server saw {len(self.received)} of {count} messages") from None
        return list(self.received)

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()  # the script stops on stdin EOF
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


# --- stunnel4 ---------------------------------------------------------------------------------------------


def stunnel_binary() -> str:
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    if found is None:
        _skip_or_fail("needs stunnel4 (Debian: apt-get install stunnel4)")
    assert found is not None
    return found


@contextlib.contextmanager
def stunnel(backend_port: int, cert: Path, key: Path, workdir: Path) -> Iterator[int]:
    """``stunnel4`` accepting TLS on a free 127.0.0.1 port and forwarding plain TCP to ``backend_port``.
    Yields the TLS port once stunnel accepts connections."""
    binary = stunnel_binary()
    port = free_port()
    conf = workdir / "stunnel.conf"
    conf.write_text(
        "foreground = yes\n"
        "pid =\n"
        "debug = 4\n"
        f"output = {workdir / 'stunnel.log'}\n"
        "[mllp]\n"
        f"accept = 127.0.0.1:{port}\n"
        f"connect = 127.0.0.1:{backend_port}\n"
        f"cert = {cert}\n"
        f"key = {key}\n"
    )
    proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def listening() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"stunnel exited {proc.returncode}: {err[-500:]}")
        with socket.socket() as probe:
            probe.settimeout(0.05)
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        until_sync(listening, 10.0, "stunnel listening")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
