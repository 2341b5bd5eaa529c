"""What the agent's two HTTP clients share: FHIR delivery (``net/fhir_http.py``) and the PDQm patient
lookup (``net/pdq.py``) each talk to one server at a configured base URL, over TLS as configured (else the
system's trust store), with a bearer token from a :class:`TokenSource`, and say in one line why aiohttp
failed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from vitals_agent.errors import ConfigError, ConnectFailedError


class TokenSource(Protocol):
    async def token(self, session: aiohttp.ClientSession) -> str | None: ...

    def invalidate(self) -> None: ...


class NoToken:
    async def token(self, session: aiohttp.ClientSession) -> str | None:
        return None

    def invalidate(self) -> None:
        return None


class FileToken:
    """A bearer token kept in a file by some other process, read for every request (so a rotated token is
    picked up). The one reader for ``[fhir] bearer_token_file`` (delivery) and ``[pdq] bearer_token_file``
    (the PDQm lookup): ``key`` names the setting in the one-line messages, ``error`` is the exception they
    come as (a connection failure for delivery, the lookup's "EHR not usable" for PDQm)."""

    def __init__(
        self,
        path: Path,
        *,
        key: str = "fhir.bearer_token_file",
        error: Callable[[str], Exception] = ConnectFailedError,
    ) -> None:
        self.path = path.expanduser()
        self.key = key
        self.error = error

    def checked(self) -> FileToken:
        """This reader, once its file is there (at start): :class:`ConfigError` naming ``key`` if not."""
        if not self.path.is_file():
            raise ConfigError([(self.key, f"{self.path} is not a readable file")])
        return self

    def read(self) -> str:
        """The token now (blocking: call it in a thread from the event loop)."""
        try:
            text = self.path.read_text("utf-8")
        except OSError as exc:
            raise self.error(f"cannot read {self.key} {self.path}: {exc.strerror or exc}") from None
        token = text.strip()
        if not token:
            raise self.error(f"{self.key} {self.path} is empty")
        return token

    async def token(self, session: aiohttp.ClientSession | None = None) -> str | None:
        return await asyncio.to_thread(self.read)

    def invalidate(self) -> None:
        return None


class ServerConfig(Protocol):
    """The settings an HTTP client reads from its section (``[fhir]``, ``[pdq]``)."""

    @property
    def base_url(self) -> str | None: ...

    @property
    def timeout_seconds(self) -> float: ...


C = TypeVar("C", bound=ServerConfig)


@dataclass(eq=False)
class HttpClient(Generic[C]):
    """A client of the server at ``config.base_url`` (which must be set)."""

    config: C
    _: KW_ONLY
    ssl_context: ssl.SSLContext | None = None  # None: verify the server with the system's trust store
    tokens: TokenSource = field(default_factory=NoToken)
    base_url: str = field(init=False)

    def __post_init__(self) -> None:
        assert self.config.base_url is not None
        self.base_url = self.config.base_url

    @property
    def peer(self) -> str:
        return self.base_url

    def _new_session(self, timeout: aiohttp.ClientTimeout, **connector: Any) -> aiohttp.ClientSession:
        """A session to the server; ``connector``: further :class:`aiohttp.TCPConnector` options."""
        tls = self.ssl_context if self.ssl_context is not None else True
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls, **connector), timeout=timeout)

    async def _headers(self, session: aiohttp.ClientSession, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` and, when :attr:`tokens` gives one, the bearer token."""
        token = await self.tokens.token(session)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers


def ssl_reason(exc: BaseException) -> str:
    """Why a TLS handshake failed, in a line (e.g. ``certificate verify failed``)."""
    inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc
    if isinstance(inner, ssl.SSLError) and inner.reason:
        return str(inner.reason).replace("_", " ").lower()
    return str(inner).splitlines()[0] if str(inner) else type(inner).__name__


def client_reason(exc: aiohttp.ClientError) -> str:
    """Why a request failed, in a line (no URL: the caller names the server)."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS: " + ssl_reason(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.strerror or str(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection before answering"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__
