"""The HTTP side of FHIR delivery: POST a transaction Bundle to ``[fhir] base_url`` (aiohttp).

aiohttp because the agent already uses it (the PDQm lookup client), so there is one HTTP stack; it keeps
connections alive between Bundles and has per-phase timeouts.

:meth:`FhirClient.post` returns the server's :class:`HttpAnswer` (any status: the delivery policy reads it
with :func:`vitals_agent.fhir.answer.classify`) or raises

* :class:`~vitals_agent.errors.ConnectFailedError`: no connection (refused, unreachable, TLS handshake,
  the token endpoint unreachable): says nothing about the Bundle;
* :class:`~vitals_agent.errors.PeerUnavailableError`: connected, but no complete answer in
  ``timeout_seconds`` (reset, closed, silent).

Authorisation: a bearer token read from ``bearer_token_file`` before each request (so a rotated token is
picked up), or SMART Backend Services: a client-credentials grant with a client assertion (a JWT signed
with ``private_key_file``, RS384 or ES384, ``kid`` = ``key_id``), the access token cached until shortly
before it expires and fetched again after a 401. Messages name the server and what went wrong, never
the Bundle's content.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from vitals_agent import log_events as ev
from vitals_agent.config.fhir import FhirConfig
from vitals_agent.errors import ConfigError, ConnectFailedError, PeerUnavailableError
from vitals_agent.net.http_client import FileToken, HttpClient, NoToken, TokenSource, client_reason
from vitals_agent.net.tls import ssl_context_from

log = structlog.get_logger(__name__)

MEDIA_TYPE = "application/fhir+json"
MAX_ANSWER = 1024 * 1024  # an answer larger than this is read only this far (we need the status and text)
TOKEN_LIFETIME_MARGIN = 60.0  # fetch a new access token this long before the old one expires
ASSERTION_LIFETIME = 300  # seconds; SMART Backend Services allows at most five minutes


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed_ms: int


def load_signing_key(path: Path, algorithm: str | None) -> tuple[Any, str]:
    """The private key that signs the client assertion and its JWS algorithm (RS384 for RSA, ES384 for
    EC P-384/P-256 keys unless configured). Raises :class:`ConfigError` with a one-line reason."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key_path = path.expanduser()
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            [("fhir.private_key_file", f"cannot read {key_path}: {exc.strerror or exc}")]
        ) from None
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            [("fhir.private_key_file", f"{key_path} is encrypted (a service cannot type its pass phrase)")]
        ) from None
    except ValueError:
        raise ConfigError([("fhir.private_key_file", f"{key_path} holds no PEM private key")]) from None
    if isinstance(key, rsa.RSAPrivateKey):
        default = "RS384"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        default = "ES384"
    else:
        raise ConfigError([("fhir.private_key_file", f"{key_path}: use an RSA or EC key (RS384 / ES384)")])
    chosen = algorithm or default
    if chosen[:2] != default[:2]:
        raise ConfigError(
            [("fhir.jwt_algorithm", f"{chosen} does not fit the {default[:2]} key in {key_path}")]
        )
    return key, chosen


def client_assertion(
    *, client_id: str, token_url: str, key: Any, algorithm: str, key_id: str | None, now: float
) -> str:
    """The signed JWT of a SMART Backend Services token request (iss = sub = client id, aud = token URL)."""
    import jwt

    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": int(now) + ASSERTION_LIFETIME,
        "iat": int(now),
        "jti": secrets.token_hex(16),
    }
    headers = {"typ": "JWT", **({"kid": key_id} if key_id else {})}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


class SmartToken:
    """SMART Backend Services: an access token from ``token_url``, cached until shortly before expiry."""

    def __init__(self, config: FhirConfig, key: Any, algorithm: str, *, clock: Any = time.time) -> None:
        assert config.token_url is not None and config.client_id is not None
        self.token_url = config.token_url
        self.client_id = config.client_id
        self.key_id = config.key_id
        self.scope = config.scope
        self.key = key
        self.algorithm = algorithm
        self.timeout = config.timeout_seconds
        self.clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self.fetched = 0  # tokens fetched (status, tests)

    def invalidate(self) -> None:
        self._token = None

    async def token(self, session: aiohttp.ClientSession) -> str | None:
        async with self._lock:
            if self._token is not None and self.clock() < self._expires:
                return self._token
            self._token, lifetime = await self._fetch(session)
            self._expires = self.clock() + max(0.0, lifetime - TOKEN_LIFETIME_MARGIN)
            self.fetched += 1
            return self._token

    async def _fetch(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(
                client_id=self.client_id,
                token_url=self.token_url,
                key=self.key,
                algorithm=self.algorithm,
                key_id=self.key_id,
                now=self.clock(),
            ),
        }
        where = f"the token endpoint {self.token_url}"
        try:
            async with session.post(
                self.token_url,
                data=form,
                headers={"Accept": "application/json"},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                status = response.status
                body = await response.content.read(64 * 1024)
        except TimeoutError:
            raise ConnectFailedError(f"{where} did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise ConnectFailedError(f"cannot reach {where}: {client_reason(exc)}") from None
        try:
            answer = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            answer = {}
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise ConnectFailedError(
                f"{where} refused the client {self.client_id!r}: HTTP {status}"
                + (f" {error}" if isinstance(error, str) else "")
            )
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300.0
        return answer["access_token"], lifetime


@dataclass(eq=False)
class FhirClient(HttpClient[FhirConfig]):
    """One keep-alive HTTP session to the FHIR server; ``post`` sends one Bundle."""

    _session: aiohttp.ClientSession | None = field(default=None, init=False)
    _answered: bool = field(default=False, init=False)  # the last request got an HTTP answer
    _stale: bool = field(default=False, init=False)  # abort() was called: close the session first

    @property
    def connected(self) -> bool:
        """The server answered the last request (its connection is kept alive for the next)."""
        return self._answered and self._session is not None and not self._session.closed

    async def _open(self) -> aiohttp.ClientSession:
        if self._stale and self._session is not None:
            await self._session.close()
            self._session = None
        self._stale = False
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=self.config.timeout_seconds, sock_connect=self.config.connect_timeout_seconds
            )
            self._session = self._new_session(timeout, limit=2)
        return self._session

    async def post(self, body: bytes, *, request_id: str) -> HttpAnswer:
        """POST ``body`` (a transaction Bundle) to the base URL; the server's answer, whatever its status."""
        session = await self._open()
        self._answered = False
        headers = await self._headers(
            session,
            {
                "Content-Type": f"{MEDIA_TYPE}; charset=utf-8",
                "Accept": MEDIA_TYPE,
                "Prefer": "return=minimal",
                "X-Request-Id": request_id,
            },
        )
        started = time.monotonic()
        timeout = self.config.timeout_seconds
        try:
            async with session.post(
                self.base_url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                answer_headers = {k: v for k, v in response.headers.items()}
                answer = await response.content.read(MAX_ANSWER)
        except aiohttp.ClientConnectorError as exc:  # includes TLS handshake and certificate errors
            raise ConnectFailedError(
                f"cannot reach the FHIR server {self.base_url}: {client_reason(exc)}"
            ) from None
        except TimeoutError:
            raise PeerUnavailableError(
                f"the FHIR server {self.base_url} did not answer within {timeout:g} s"
            ) from None
        except aiohttp.ClientError as exc:  # reset, closed, malformed answer
            raise PeerUnavailableError(f"FHIR server {self.base_url}: {client_reason(exc)}") from None
        if status == 401:
            self.tokens.invalidate()
        self._answered = True
        return HttpAnswer(status, answer_headers, answer, int((time.monotonic() - started) * 1000))

    def abort(self) -> None:
        """Drop the kept-alive connection after an error: the next request starts a new session."""
        self._answered = False
        self._stale = True

    async def close(self) -> None:
        self._answered = False
        if self._session is not None:
            await self._session.close()
            self._session = None


def fhir_client(config: FhirConfig) -> FhirClient:
    """The client ``[fhir]`` describes. Raises :class:`ConfigError` for unusable TLS or key files."""
    assert config.base_url is not None
    ctx = ssl_context_from(config, section="fhir") if config.tls else None
    if not config.tls and (config.cert_file or config.ca_file):
        log.warning(ev.FHIR_HTTP_TLS_FILES_UNUSED)
    tokens: TokenSource
    if config.token_url is not None:
        assert config.private_key_file is not None
        key, algorithm = load_signing_key(config.private_key_file, config.jwt_algorithm)
        tokens = SmartToken(config, key, algorithm)
        if config.token_url.startswith("http://"):
            log.warning(ev.FHIR_TOKEN_URL_UNENCRYPTED)
    elif config.bearer_token_file is not None:
        tokens = FileToken(config.bearer_token_file).checked()
    else:
        tokens = NoToken()
    if not config.tls and not isinstance(tokens, NoToken):
        log.warning(ev.FHIR_BASE_URL_UNENCRYPTED)
    return FhirClient(config, ssl_context=ctx, tokens=tokens)
