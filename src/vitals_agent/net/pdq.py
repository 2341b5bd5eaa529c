"""Ask the EHR who an MRN belongs to, before a room is bound: PDQ (ITI-21, MLLP) or PDQm (FHIR, HTTPS).

:func:`pdq_client` builds the client ``[pdq]`` describes. ``await client.lookup(mrn)`` returns a
:class:`Lookup` (the candidates, possibly none) or raises one of:

* :class:`PdqUnavailableError`: the EHR could not be asked or did not answer in ``timeout_seconds``
  (refused, reset, TLS, timeout, an answer that is not an answer to this query);
* :class:`~vitals_agent.hl7.pdq.PdqRefusedError`: the EHR answered ``AE``/``AR`` (FHIR: an HTTP error).

The whole lookup (connect, send, answer) is bounded by ``timeout_seconds``. The MLLP exchange reuses the
delivery path's :class:`~vitals_agent.net.mllp.MllpClient`, one connection per lookup. A supplier that
answers in increments (ITI-21 incremental response: ``DSC-1`` a continuation pointer) is asked for the next
increment, on the same connection and within the same time, until ``max_results`` candidates are in or it
has no more; an increment that fails after the first keeps what came (the result says the EHR has more).
Messages name the supplier and what went wrong, never the MRN.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
import structlog

from vitals_agent import log_events as ev
from vitals_agent.config.pdq import PdqConfig
from vitals_agent.errors import DeliveryError, RetryableError
from vitals_agent.hl7.oru import new_control_id
from vitals_agent.hl7.pdq import (
    Authority,
    PdqError,
    PdqProtocolError,
    PdqQuery,
    PdqRefusedError,
    PdqResult,
    build_qbp,
    next_increment,
    parse_rsp,
)
from vitals_agent.net.http_client import (
    FileToken,
    HttpClient,
    NoToken,
    TokenSource,
    client_reason,
    ssl_reason,
)
from vitals_agent.net.mllp import MllpClient
from vitals_agent.net.tls import ssl_context_from
from vitals_agent.redact import scrub

log = structlog.get_logger(__name__)

MAX_FHIR_ANSWER = 4 * 1024 * 1024


class PdqUnavailableError(PdqError, RetryableError):
    """The EHR's patient lookup could not be reached or did not answer usably in time."""


@dataclass(frozen=True)
class Lookup:
    """One answered lookup: what was asked, under which query id, and what the EHR said."""

    mrn: str
    query_id: str  # MSH-10 of the QBP^Q22 (v2) or a request id (fhir): joins audit records
    result: PdqResult
    mode: str
    elapsed_ms: int
    increments: int = 1  # v2: answers read (the first and each continuation)


class PdqClient(Protocol):
    mode: str

    @property
    def peer(self) -> str: ...

    async def lookup(self, mrn: str) -> Lookup: ...


@dataclass(frozen=True)
class Sender:
    """Who the agent is in the query's MSH-3/MSH-4 (as in its ORUs)."""

    application: str  # e.g. "VITALS_AGENT^0011223344556677^EUI-64"
    facility: str
    processing_id: str = "P"


class MllpPdqClient:
    """ITI-21 over MLLP: one QBP^Q22 per lookup, the RSP^K22 read with :func:`parse_rsp`."""

    mode = "v2"

    def __init__(
        self, config: PdqConfig, sender: Sender, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        assert config.port is not None
        self.config = config
        self.sender = sender
        self.ssl_context = ssl_context
        self.authority = Authority.parse(config.assigning_authority)
        self.host = config.host
        self.port = config.port

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    async def lookup(self, mrn: str) -> Lookup:
        query = PdqQuery(
            mrn=mrn,
            control_id=new_control_id(),
            query_tag=new_control_id(),
            created_at=datetime.now(UTC),
            authority=self.authority,
            sending_application=self.sender.application,
            sending_facility=self.sender.facility,
            receiving_application=self.config.receiving_application,
            receiving_facility=self.config.receiving_facility,
            processing_id=self.sender.processing_id,
            limit=self.config.max_results,
        )
        timeout = self.config.timeout_seconds
        client = MllpClient(
            self.host,
            self.port,
            connect_timeout=timeout,
            ssl_context=self.ssl_context,
            server_hostname=self.config.server_name,
        )
        started = time.monotonic()
        deadline = started + timeout
        try:
            result = await self._ask(client, query, timeout)
            first_id, answers = query.control_id, [result]
            found = list(result.candidates)
            # ITI-21 incremental response: ask for the next increment while there is one and room for it
            while result.continuation and len(found) < self.config.max_results and result.candidates:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                query = next_increment(
                    query,
                    result,
                    control_id=new_control_id(),
                    created_at=datetime.now(UTC),
                    limit=self.config.max_results - len(found),
                )
                try:
                    result = await self._ask(client, query, left)
                except PdqError as exc:  # keep what came; the result says the EHR has more
                    log.info(ev.LOOKUP_INCREMENT_FAILED, error=str(exc), received=len(found))
                    break
                answers.append(result)
                found.extend(result.candidates)
        finally:
            client.abort()
        elapsed = int((time.monotonic() - started) * 1000)
        combined = PdqResult(
            status="OK" if found else "NF",
            candidates=tuple(found[: self.config.max_results]),
            more=len(found) > self.config.max_results or bool(result.continuation),
            outside_domain=sum(a.outside_domain for a in answers),
            continuation=result.continuation,
        )
        return Lookup(mrn, first_id, combined, self.mode, elapsed, increments=len(answers))

    async def _ask(self, client: MllpClient, query: PdqQuery, timeout: float) -> PdqResult:
        """One QBP^Q22 and its RSP^K22 on ``client`` (connecting when needed) within ``timeout``."""
        limit = self.config.timeout_seconds
        try:
            # The client's own deadlines (connect, answer) say best what went wrong; this one only bounds
            # the sum (a slow connect followed by a slow answer).
            async with asyncio.timeout(timeout + 0.25):
                payload = await client.send(build_qbp(query), timeout)
        except TimeoutError:
            raise PdqUnavailableError(
                f"the PDQ supplier at {self.peer} did not answer within {limit:g} s"
            ) from None
        except DeliveryError as exc:  # PeerUnavailableError, AckProtocolError (MLLP framing)
            raise PdqUnavailableError(f"PDQ supplier: {_reword(str(exc))}") from None
        try:
            return parse_rsp(payload, query)
        except PdqProtocolError as exc:
            raise PdqUnavailableError(f"PDQ supplier at {self.peer}: {exc}") from None


def _reword(message: str) -> str:
    """The MLLP client speaks of ACKs; a PDQ supplier sends an answer."""
    return message.replace("before the ACK", "before answering").replace("no ACK from", "no answer from")


@dataclass(eq=False)
class FhirPdqClient(HttpClient[PdqConfig]):
    """PDQm (ITI-78): ``GET [base]/Patient?identifier=system|mrn`` with a bearer token and/or mutual TLS."""

    mode = "fhir"
    system: str = field(init=False)  # the MRNs' identifier system
    authority: Authority | None = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        system = self.config.fhir_system()
        assert system is not None
        self.system = system
        self.authority = Authority.parse(self.config.assigning_authority)

    async def lookup(self, mrn: str) -> Lookup:
        # fhir.resources is loaded only in this mode (about 0.5 s and several MiB for its models)
        from vitals_agent.hl7.pdqm import MEDIA_TYPE, parse_bundle, search_url

        url = search_url(self.base_url, self.system, mrn, self.config.max_results)
        timeout = self.config.timeout_seconds
        request_id = new_control_id()
        started = time.monotonic()
        try:
            async with self._new_session(aiohttp.ClientTimeout(total=timeout)) as session:
                headers = await self._headers(session, {"Accept": MEDIA_TYPE, "X-Request-Id": request_id})
                async with session.get(url, headers=headers, allow_redirects=False) as response:
                    status = response.status
                    body = await response.content.read(MAX_FHIR_ANSWER + 1)
        except TimeoutError:
            raise PdqUnavailableError(
                f"the PDQm server {self.base_url} did not answer within {timeout:g} s"
            ) from None
        except aiohttp.ClientSSLError as exc:
            why = scrub(ssl_reason(exc), mrn)
            raise PdqUnavailableError(f"TLS with the PDQm server {self.base_url} failed: {why}") from None
        except aiohttp.ClientError as exc:
            why = scrub(client_reason(exc), mrn)
            raise PdqUnavailableError(f"cannot reach the PDQm server {self.base_url}: {why}") from None
        elapsed = int((time.monotonic() - started) * 1000)
        if status in (401, 403):
            raise PdqRefusedError(f"HTTP {status}", ("check pdq.bearer_token_file / client certificate",))
        if status >= 400:
            raise PdqRefusedError(f"HTTP {status}")
        if status != 200:
            raise PdqUnavailableError(f"the PDQm server {self.base_url} answered HTTP {status}, not 200")
        if len(body) > MAX_FHIR_ANSWER:
            raise PdqUnavailableError(f"the PDQm answer is larger than {MAX_FHIR_ANSWER // 1024 // 1024} MiB")
        try:
            result = parse_bundle(body, self.system, self.authority)
        except PdqProtocolError as exc:
            raise PdqUnavailableError(f"PDQm server {self.base_url}: {exc}") from None
        return Lookup(mrn, request_id, result, self.mode, elapsed)


def pdq_client(config: PdqConfig, sender: Sender) -> PdqClient:
    """The client for ``[pdq]``. Raises :class:`~vitals_agent.errors.ConfigError` for unusable TLS files."""
    if config.mode == "fhir":
        assert config.base_url is not None
        https = config.base_url.startswith("https://")
        if not https and (config.cert_file or config.bearer_token_file):
            log.warning(ev.PDQ_BASE_URL_UNENCRYPTED)
        ctx = ssl_context_from(config, section="pdq", force=True) if https else None
        tokens: TokenSource = NoToken()
        if config.bearer_token_file is not None:  # the same reader (and messages) as [fhir]'s
            path = config.bearer_token_file
            tokens = FileToken(path, key="pdq.bearer_token_file", error=PdqUnavailableError).checked()
        return FhirPdqClient(config, ssl_context=ctx, tokens=tokens)
    return MllpPdqClient(config, sender, ssl_context=ssl_context_from(config, section="pdq"))
