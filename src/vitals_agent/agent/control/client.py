"""The control API's client (the CLI's ``status`` and ``patient`` commands): h11 over asyncio streams.

It finds the running agent through the files the agent wrote to its ``data_dir`` (``control.json``, the
0600 ``control.token``) and turns every way of not reaching it into one line: not running, not readable
by this user, busy, not answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11

from vitals_agent.agent.control.common import ENDPOINT_FILE, TOKEN_FILE, ControlError, http_url
from vitals_agent.host.process import process_gone

if TYPE_CHECKING:
    from vitals_agent.config.schema import Config

MAX_ANSWER = 4 * 1024 * 1024
BUSY_RETRIES = 3


def _agent_user_hint(path: Path) -> str:
    """``sudo -u OWNER vitals-agent ...``: the user that owns the agent's files, when it can be told."""
    for candidate in (path, path.parent):
        try:
            owner = candidate.owner()
        except (OSError, KeyError, NotImplementedError):
            continue
        return f" (e.g. sudo -u {owner} vitals-agent ...)"
    return ""


def _read_agent_file(path: Path) -> str:
    """A file the running agent wrote to its data_dir (mode 0600). Raises :class:`ControlError`."""
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise ControlError(f"the agent is not running (no {path})") from None
    except PermissionError:
        raise ControlError(
            f"cannot read {path}: run this as the agent's user{_agent_user_hint(path)}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ControlError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _process_gone(pid: int) -> bool:
    """True when no process has this id."""
    return process_gone(pid)


class ControlClient:
    """Talks to a running agent's control API."""

    def __init__(self, host: str, port: int, token: str, *, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout
        self.pid: int | None = None

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> ControlClient:
        endpoint = data_dir / ENDPOINT_FILE
        try:
            info = json.loads(_read_agent_file(endpoint))
            host, port = str(info["host"]), int(info["port"])
            pid = int(info.get("pid") or 0)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ControlError(f"{endpoint} is unreadable") from None
        if _process_gone(pid):
            raise ControlError(f"the agent is not running (process {pid} named in {endpoint} has exited)")
        client = cls(host, port, _read_agent_file(data_dir / TOKEN_FILE).strip())
        client.pid = pid or None
        return client

    @classmethod
    def from_config(cls, config: Config) -> ControlClient:
        """The client for the agent that runs with ``config`` (its ``data_dir``; never created here)."""
        from vitals_agent.agent.paths import data_dir

        return cls.from_data_dir(data_dir(config, create=False))

    @property
    def url(self) -> str:
        return http_url(self.host, self.port)

    async def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """One request. Returns (HTTP status, parsed JSON body). Raises :class:`ControlError`.

        The agent's busy answer (503 with Retry-After: its control connections are all taken) is tried
        again a few times; any other answer, a 503 from the request itself among them (the EHR could not
        be asked about the patient), is the answer: trying again would do it again."""
        for attempt in range(BUSY_RETRIES):
            status, data, busy = await self._request_once(method, path, body)
            if not busy or attempt == BUSY_RETRIES - 1:
                return status, data
            await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request_once(
        self, method: str, path: str, body: Mapping[str, Any] | None
    ) -> tuple[int, Any, bool]:
        """(HTTP status, parsed JSON body, whether it is the busy answer)."""
        payload = json.dumps(body).encode() if body is not None else b""
        conn = h11.Connection(h11.CLIENT)
        host = f"[{self.host}]" if ":" in self.host else self.host
        head = h11.Request(
            method=method,
            target=path,
            headers=[
                ("Host", f"{host}:{self.port}"),
                ("Authorization", f"Bearer {self.token}"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                ("Connection", "close"),
            ],
        )
        outgoing = conn.send(head) or b""
        if payload:
            outgoing += conn.send(h11.Data(data=payload)) or b""
        outgoing += conn.send(h11.EndOfMessage()) or b""
        status, busy = 0, False
        content = bytearray()
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(outgoing)
                    await writer.drain()
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            conn.receive_data(await reader.read(65536))
                        elif isinstance(event, h11.Response):
                            status = event.status_code
                            busy = status == 503 and any(name == b"retry-after" for name, _ in event.headers)
                        elif isinstance(event, h11.Data):
                            content += event.data
                            if len(content) > MAX_ANSWER:
                                raise ControlError(f"the agent at {self.url} sent an oversized answer")
                        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                            break
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
        except TimeoutError:
            raise ControlError(f"the agent at {self.url} did not answer in {self.timeout:g} s") from None
        except ConnectionRefusedError:
            raise ControlError(f"the agent is not running (nothing answers at {self.url})") from None
        except h11.RemoteProtocolError:
            raise ControlError(f"the agent at {self.url} sent a malformed answer") from None
        except OSError as exc:
            raise ControlError(f"cannot reach the agent at {self.url}: {exc.strerror or exc}") from None
        if not status:
            raise ControlError(f"the agent at {self.url} closed the connection without an answer")
        try:
            data = json.loads(content) if content else None
        except ValueError:
            data = None
        return status, data, busy

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """Like :meth:`request` but raises :class:`ControlError` with the server's message unless 200."""
        status, data = await self.request(method, path, body)
        if status != 200:
            message = data.get("error") if isinstance(data, dict) else None
            raise ControlError(message or f"the agent answered HTTP {status}")
        return data

    async def login_url(self) -> str:
        """The status page's address with a new single-use login code (valid for a minute)."""
        data = await self.call("POST", "/api/login-code")
        path = data.get("path") if isinstance(data, dict) else None
        if not isinstance(path, str) or not path.startswith("/?code="):
            raise ControlError(f"the agent at {self.url} gave no login code (is it an older version?)")
        return f"{self.url}{path}"
