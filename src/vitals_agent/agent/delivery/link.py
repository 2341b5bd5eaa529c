"""What the sender's loop needs from a destination: one message out, one :class:`Answer` back.

The loop (:class:`~vitals_agent.agent.delivery.sender.QueueSender`) and its policy are the same for every
destination; a *link* is the protocol part: HL7 v2 over MLLP (:class:`~vitals_agent.agent.delivery.sender.
MllpLink`) or a FHIR server over HTTP (:class:`~vitals_agent.agent.delivery.fhir_sender.FhirLink`).

A link either returns the receiver's :class:`Answer` (accepted, or a negative code the policy judges:
retried, or dead-lettered with ``text``) or raises a link failure: :class:`~vitals_agent.errors.
ConnectFailedError` (no connection: says nothing about the message), another
:class:`~vitals_agent.errors.PeerUnavailableError` or :class:`~vitals_agent.errors.AckProtocolError`
(connected, but no usable answer), or :class:`~vitals_agent.errors.RetryLaterError` (the receiver said
"not now", perhaps with how long to wait).
"""

from __future__ import annotations

import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from vitals_agent.agent.storage.outbox import OutboxMessage


@dataclass(frozen=True)
class Answer:
    """A receiver's answer to one message, in the policy's terms."""

    accepted: bool
    code: str  # MSA-1 (AA, AE ...) or the HTTP status ("201", "400" ...)
    known: bool  # a code the protocol defines (an unknown MSA-1 is dead-lettered as such)
    text: str  # the receiver's own words (MSA-3/ERR, the OperationOutcome): stored, never logged above DEBUG
    summary: str  # codes only: safe for the log at any level


class LinkClient(Protocol):
    """What a link needs of its protocol client (MLLP, HTTP)."""

    ssl_context: ssl.SSLContext | None

    @property
    def peer(self) -> str: ...

    @property
    def connected(self) -> bool: ...

    def abort(self) -> None: ...

    async def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=LinkClient)


class Link(ABC, Generic[ClientT]):
    """One destination's protocol part. This base is what every link's client does for it: the peer, the
    connection, TLS, abort and close. Subclasses add :meth:`exchange` (and :meth:`refusal` when some
    messages can never be sent)."""

    def __init__(self, client: ClientT) -> None:
        self.client = client

    @property
    def peer(self) -> str:
        return self.client.peer

    @property
    def connected(self) -> bool:
        return self.client.connected

    @property
    def tls(self) -> bool:
        return self.client.ssl_context is not None

    def refusal(self, msg: OutboxMessage) -> str | None:
        """Why this message can never be sent over this link (it is dead-lettered), or None."""
        return None

    @abstractmethod
    async def exchange(self, msg: OutboxMessage, was_acked: Callable[[str], bool]) -> Answer:
        """Send ``msg`` and return the answer to it; raise a link failure when there is none.
        ``was_acked``: whether a control id was acknowledged a moment ago (a late duplicate answer)."""

    def abort(self) -> None:
        """Drop the connection now (after an error; the next exchange reconnects)."""
        self.client.abort()

    async def close(self) -> None:
        await self.client.close()
