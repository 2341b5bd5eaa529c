"""A small built-in MLLP receiver (a stand-in EHR) for ``vitals-agent receive`` and the demo.

This is the only module of the package that imports python-hl7 (``hl7``, ``hl7.mllp``). It listens with
``hl7.mllp.start_hl7_server`` (UTF-8), keeps each connection open for many messages, hands every message
to ``on_message`` as text (segments separated by CR, exactly as received) and answers with an ACK it
builds itself (python-hl7's ``create_ack`` writes MSH-7 without a zone offset)::

    MSH|^~\\&|<their MSH-5>|<their MSH-6>|<their MSH-3>|<their MSH-4>|<now+offset>||ACK^R01^ACK|<id>|P|2.6
    MSA|AA|<their MSH-10>

An ``AE``/``AR`` answer adds ``ERR|||207^Application internal error^HL70357|E``. A message that cannot be
parsed gets ``AR`` (MSA-2 empty when no MSH-10 could be read); a frame that is not MLLP closes the
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import hl7
import hl7.mllp
import structlog

from vitals_agent import log_events as ev
from vitals_agent.hl7.ack import ERROR_CODES, KNOWN_CODES, REJECT_CODES
from vitals_agent.hl7.escape import ENCODING_CHARACTERS
from vitals_agent.hl7.oru import format_dtm, new_control_id

log = structlog.get_logger(__name__)

ACK_CODES = KNOWN_CODES  # the codes ack.parse_ack knows are the ones this receiver may answer with
MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # EKG messages with PDF attachments are large

OnMessage = Callable[[str], Awaitable[None] | None]
# Builds the answer to a message other than a plain ACK (e.g. an RSP^K22 to a QBP^Q22); None = plain ACK.
Answerer = Callable[[str], str | None]


@dataclass
class ReceivedMessage:
    """What a receiver saw and answered (kept by :class:`ReceiverHandle` for tests and the CLI)."""

    message: str
    ack: str


@dataclass
class ReceiverHandle:
    """A running receiver. ``port`` is the real port (also when 0 was asked for)."""

    host: str
    port: int
    server: asyncio.AbstractServer
    received: list[ReceivedMessage] = field(default_factory=list)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def close(self) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.server.wait_closed()


def _field(segment: hl7.Segment, n: int) -> str:
    try:
        return str(segment(n))
    except (IndexError, KeyError):
        return ""


def build_ack(message: str, ack_code: str = "AA", *, now: datetime | None = None) -> str:
    """The ACK for ``message`` (ER7 text): sender/receiver swapped, MSA-2 = its MSH-10, MSH-7 with offset."""
    if ack_code not in ACK_CODES:
        raise ValueError(f"ACK code must be one of {sorted(ACK_CODES)}")
    created = format_dtm(now or datetime.now(UTC))
    sending = receiving = trigger = control = ""
    processing, version = "P", "2.6"
    try:
        parsed = hl7.parse(message)
        msh = parsed.segment("MSH")
    except Exception:  # a message python-hl7 cannot read: answer AR below
        log.debug(ev.RECEIVER_UNPARSABLE)
        ack_code = "AR"
    else:
        # python-hl7 numbers MSH fields like HL7 (MSH-1 is the field separator)
        sending = f"{_field(msh, 5)}|{_field(msh, 6)}"
        receiving = f"{_field(msh, 3)}|{_field(msh, 4)}"
        msh9 = _field(msh, 9).split("^")
        trigger = msh9[1] if len(msh9) > 1 else ""
        control = _field(msh, 10)
        processing = _field(msh, 11) or processing
        version = _field(msh, 12) or version
    if not sending.replace("|", ""):
        sending = "VITALS_RECEIVER|"
    if not receiving:
        receiving = "|"
    segments = [
        f"MSH|{ENCODING_CHARACTERS}|{sending}|{receiving}|{created}||ACK^{trigger or 'R01'}^ACK"
        f"|{new_control_id()}|{processing}|{version}",
        f"MSA|{ack_code}|{control}",
    ]
    if ack_code in ERROR_CODES | REJECT_CODES:
        segments.append("ERR|||207^Application internal error^HL70357|E")
    return "\r".join(segments) + "\r"


async def start_receiver(
    host: str,
    port: int,
    on_message: OnMessage,
    ack_code: str = "AA",
    *,
    on_exchange: Callable[[ReceivedMessage], None] | None = None,
    answer: Answerer | None = None,
) -> ReceiverHandle:
    """Listen for MLLP on ``host:port`` (0 = any free port); ACK every message with ``ack_code``.

    ``on_message`` gets each message (before the ACK is sent); ``on_exchange`` (optional) gets the message
    and the ACK after the ACK was written. ``answer`` (optional) may return the whole answer to a message
    (a query's response) instead of the ACK.
    """
    if ack_code not in ACK_CODES:
        raise ValueError(f"ACK code must be one of {sorted(ACK_CODES)}")
    handle: ReceiverHandle | None = None

    async def serve(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        task = asyncio.current_task()
        assert handle is not None and task is not None
        handle._tasks.add(task)
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    block: bytes = await reader.readblock()
                except asyncio.IncompleteReadError:
                    return  # peer closed
                except (hl7.mllp.InvalidBlockError, ValueError) as exc:
                    log.warning(ev.RECEIVER_NOT_MLLP, peer=str(peer), error=str(exc))
                    return
                text = block.decode("utf-8", errors="replace")
                reply: str | None = None
                if answer is not None:
                    try:
                        reply = answer(text)
                    except Exception as exc:  # the answerer's bug must not kill the server
                        log.error(ev.RECEIVER_ANSWER_FAILED, error=str(exc))
                ack = reply or build_ack(text, ack_code)
                try:
                    result = on_message(text)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:  # the callback's bug must not kill the server
                    log.error(ev.RECEIVER_ON_MESSAGE_FAILED, error=str(exc))
                exchange = ReceivedMessage(text, ack)
                handle.received.append(exchange)
                writer.writeblock(ack.encode("utf-8"))
                await writer.drain()
                if on_exchange is not None:
                    on_exchange(exchange)
        except ConnectionError:
            return
        finally:
            handle._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await hl7.mllp.start_hl7_server(serve, host, port, encoding="utf-8", limit=MAX_MESSAGE_BYTES)
    actual = server.sockets[0].getsockname()[1] if server.sockets else port
    handle = ReceiverHandle(host=host, port=int(actual), server=server)
    log.info(ev.RECEIVER_LISTENING, host=host, port=handle.port, ack=ack_code)
    return handle
