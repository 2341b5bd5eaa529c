"""The inbound MLLP port for application ACKs (``[ehr] app_ack_port``, enhanced acknowledgement mode).

An interface engine that answers a commit accept (``CA``) on the sending connection and sends the
application ACK later (``AA``/``AE``/``AR``, MSA-2 = our MSH-10) as a message of its own connects here.
Each frame is read as an ACK (:func:`~vitals_agent.hl7.ack.parse_ack`) and handed to ``on_ack`` (the EHR
sender, which matches MSA-2 to a message awaiting its application ACK). An ACK is not acknowledged in HL7,
but an MLLP sender usually waits for an answer to every message it sends, so each one gets a short commit
accept (``MSA|CA|<its MSH-10>``). A frame that is not an ACK is answered ``CR`` and counted.

Anyone who can reach the port can send an ACK: only an MSA-2 of a message that awaits one has an effect,
and MSH-10s are not guessable in practice (11 hex digits of time, 9 of randomness). Put the port on the
interface network only (``app_ack_host``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from vitals_agent import log_events as ev
from vitals_agent.errors import AckProtocolError
from vitals_agent.hl7.ack import Ack, commit_ack, parse_ack
from vitals_agent.hl7.mllp import DEFAULT_MAX_FRAME, MllpDeframer, frame
from vitals_agent.hl7.oru import new_control_id
from vitals_agent.net.serving import close_server

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class AckListener:
    """Listen on ``host:port`` (0: any free port; :attr:`port` is the real one after :meth:`start`)."""

    host: str
    port: int
    on_ack: Callable[[Ack], bool]
    _: KW_ONLY
    sending_application: str = "VITALS_AGENT"
    max_frame: int = DEFAULT_MAX_FRAME

    def __post_init__(self) -> None:
        self.counts = {"received": 0, "matched": 0, "unmatched": 0, "unreadable": 0}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        """Listen; raises ``OSError`` when the port cannot be had (the caller says what to do)."""
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info(ev.DELIVERY_APP_ACK_LISTENING, host=self.host, port=self.port)
        return self.port

    async def close(self) -> None:
        server, self._server = self._server, None
        await close_server(server, self._tasks)

    def status(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, **self.counts}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        deframer = MllpDeframer(self.max_frame)
        try:
            while chunk := await reader.read(1 << 16):
                for payload in deframer.feed(chunk):
                    writer.write(frame(self._answer(payload, peer)))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug(ev.DELIVERY_APP_ACK_CONNECTION_ENDED, peer=str(peer), error=str(exc))
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, payload: bytes, peer: object) -> bytes:
        self.counts["received"] += 1
        now = datetime.now(UTC)
        try:
            ack = parse_ack(payload)
        except AckProtocolError as exc:
            self.counts["unreadable"] += 1
            log.info(ev.DELIVERY_APP_ACK_NOT_AN_ACK, peer=str(peer), error=str(exc))
            return commit_ack("", "CR", self.sending_application, now, new_control_id())
        if self.on_ack(ack):
            self.counts["matched"] += 1
        else:
            self.counts["unmatched"] += 1
            log.info(
                ev.DELIVERY_APP_ACK_UNMATCHED,
                ack_for=ack.control_id,
                code=ack.code,
                peer=str(peer),
            )
        return commit_ack(ack.ack_control_id, "CA", self.sending_application, now, new_control_id())
