"""A small asyncio MLLP client (the framing is :mod:`vitals_agent.hl7.mllp`).

:class:`MllpClient` keeps one TCP (optionally TLS) connection to the receiver, sends one message at a time
and returns the raw payload of the answer frame. Every failure is one of two retryable errors:
:class:`~vitals_agent.errors.PeerUnavailableError` (refused, reset, closed, timed out, TLS failure) or
:class:`~vitals_agent.errors.AckProtocolError` (the answer is not an MLLP frame). After any failure the
connection is closed; the next :meth:`MllpClient.send` reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

import structlog

from vitals_agent import log_events as ev
from vitals_agent.errors import AckProtocolError, ConnectFailedError, PeerUnavailableError
from vitals_agent.hl7.mllp import DEFAULT_MAX_FRAME, MllpDeframer, frame

log = structlog.get_logger(__name__)


class ConnectionLostError(PeerUnavailableError):
    """The connection failed during an exchange. ``nothing_received``: not a byte of an answer had come."""

    def __init__(self, message: str, *, nothing_received: bool) -> None:
        self.nothing_received = nothing_received
        super().__init__(message)


@dataclass(eq=False)
class MllpClient:
    """One MLLP connection to the receiver, one message in flight.

    ``send()`` connects when needed (after a failure, or when the peer closed the connection after its
    last ACK, as hl7apy's server does), writes one frame and waits up to ``timeout`` seconds for one
    answer frame, whose payload it returns unparsed. Frames that arrived *before* the message was written
    cannot answer it and are discarded. :meth:`receive` reads a further frame on the same connection
    (e.g. the ``AA`` that follows a ``CA``).
    """

    host: str
    port: int
    _: KW_ONLY
    connect_timeout: float = 10.0
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME

    def __post_init__(self) -> None:
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._deframer = MllpDeframer(self.max_frame)
        self._frames: list[bytes] = []
        self._answers = 0  # frames received on the current connection
        self._lock = asyncio.Lock()
        self.connections = 0  # successful connects so far (for status and tests)
        self.peer_cert_expires: float | None = None  # the receiver's TLS certificate's notAfter (epoch)
        # frames that arrived outside an exchange (e.g. an application ACK after a commit ACK): handed
        # here before the next message is written or the connection is dropped; None discards them
        self.unsolicited: Callable[[bytes], None] | None = None

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    @property
    def _reusable(self) -> bool:
        """Connected, and the peer has not closed its side (EOF) yet."""
        return self.connected and self._reader is not None and not self._reader.at_eof()

    async def connect(self) -> None:
        """Open the connection if it is not open. Raises :class:`PeerUnavailableError`."""
        if self._reusable:
            return
        await self.close()
        kwargs: dict[str, object] = {"limit": 1 << 16}
        if self.ssl_context is not None:
            kwargs["ssl"] = self.ssl_context
            kwargs["server_hostname"] = self.server_hostname or self.host
            kwargs["ssl_handshake_timeout"] = self.connect_timeout
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, **kwargs)  # type: ignore[arg-type]
        except TimeoutError:
            raise ConnectFailedError(
                f"connecting to {self.peer} timed out after {self.connect_timeout:g} s"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectFailedError(
                f"TLS certificate of {self.peer} rejected: {exc.verify_message or exc.reason}"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectFailedError(f"TLS handshake with {self.peer} failed: {exc.reason or exc}") from None
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else (exc.strerror or exc.__class__.__name__)
            raise ConnectFailedError(f"cannot connect to {self.peer}: {why}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            _tune_socket(sock)
        tls = writer.get_extra_info("ssl_object")
        if isinstance(tls, ssl.SSLObject):
            self.peer_cert_expires = _not_after(tls)
        self._reader, self._writer = reader, writer
        self._deframer.reset()
        self._frames.clear()
        self._answers = 0
        self.connections += 1
        log.debug(ev.MLLP_CONNECTED, peer=self.peer, tls=self.ssl_context is not None)

    def _hand_over(self) -> None:
        frames, self._frames = self._frames, []
        if self.unsolicited is not None:
            for payload in frames:
                self.unsolicited(payload)

    def _detach(self) -> asyncio.StreamWriter | None:
        """Forget the connection and any half-read answer; return the writer to close."""
        writer, self._writer, self._reader = self._writer, None, None
        self._hand_over()
        self._deframer.reset()
        return writer

    async def close(self) -> None:
        writer = self._detach()
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()

    def abort(self) -> None:
        """Drop the connection at once (no TLS close_notify, no waiting)."""
        writer = self._detach()
        if writer is not None:
            writer.transport.abort()

    async def send(self, message: bytes, timeout: float) -> bytes:
        """Send one message and return the payload of the first frame that answers it."""
        data = frame(message)
        async with self._lock:
            reused = self._reusable
            try:
                return await self._exchange(data, timeout)
            except ConnectionLostError as exc:
                if not (reused and exc.nothing_received):
                    raise
                # The peer closed an idle connection (e.g. it closes after every ACK) and we only noticed
                # when writing: try once more on a fresh connection. At worst the receiver sees the same
                # MSH-10 twice, which delivery is allowed to do.
                log.debug(ev.MLLP_PEER_CLOSED_IDLE, peer=self.peer)
                return await self._exchange(data, timeout)

    async def receive(self, timeout: float) -> bytes:
        """Read one more frame on the current connection (no message is sent)."""
        async with self._lock:
            if not self.connected:
                raise PeerUnavailableError(f"not connected to {self.peer}")
            try:
                return await self._read_frame(time.monotonic() + timeout, timeout)
            except BaseException:
                self.abort()
                raise

    async def listen(self, timeout: float) -> bytes | None:
        """A frame the peer sends on its own on the open connection (no message is written), or None
        within ``timeout``, when not connected, or when the connection ends (it is then closed; the next
        :meth:`send` reconnects). Cancelling it keeps the connection and any partial frame."""
        if self._frames:
            return self._frames.pop(0)
        if not self._reusable:
            return None
        async with self._lock:
            reader = self._reader
            while not self._frames:
                if reader is None or reader is not self._reader:
                    return None
                try:
                    async with asyncio.timeout(timeout):
                        chunk = await reader.read(1 << 16)
                except TimeoutError:
                    return None
                except (OSError, ssl.SSLError):
                    self.abort()
                    return None
                if not chunk:
                    self.abort()
                    return None
                self._frames.extend(self._deframer.feed(chunk))
            return self._frames.pop(0)

    async def _exchange(self, data: bytes, timeout: float) -> bytes:
        await self.connect()
        assert self._writer is not None
        self._hand_over()  # anything that arrived before this message cannot answer it
        deadline = time.monotonic() + timeout
        try:
            try:
                self._writer.write(data)
                if self._writer.transport.get_write_buffer_size():  # not all handed to the kernel yet
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await self._writer.drain()
            except TimeoutError:
                raise PeerUnavailableError(
                    f"{self.peer} did not take the message within {timeout:g} s"
                ) from None
            except (OSError, ssl.SSLError) as exc:
                raise ConnectionLostError(
                    f"connection to {self.peer} lost while sending: {_why(exc)}", nothing_received=True
                ) from None
            return await self._read_frame(deadline, timeout)
        except BaseException:
            self.abort()
            raise

    async def _read_frame(self, deadline: float, timeout: float) -> bytes:
        assert self._reader is not None
        got_bytes = False
        garbage_before = self._deframer.garbage_bytes
        while not self._frames:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    chunk = await self._reader.read(1 << 16)
            except TimeoutError:
                if self._deframer.garbage_bytes > garbage_before and not self._deframer.pending:
                    raise AckProtocolError(
                        f"{self.peer} answered with bytes that are not an MLLP frame"
                    ) from None
                raise PeerUnavailableError(f"no ACK from {self.peer} within {timeout:g} s") from None
            except (OSError, ssl.SSLError) as exc:
                raise ConnectionLostError(
                    f"connection to {self.peer} lost before the ACK: {_why(exc)}",
                    nothing_received=not got_bytes,
                ) from None
            if not chunk:
                part = " in the middle of a frame" if self._deframer.pending else ""
                if self.ssl_context is not None and not got_bytes and not self._answers:
                    part += " (TLS: if it requires a client certificate, check ehr.cert_file/key_file)"
                raise ConnectionLostError(
                    f"{self.peer} closed the connection before the ACK{part}", nothing_received=not got_bytes
                )
            got_bytes = True
            self._frames.extend(self._deframer.feed(chunk))
        self._answers += 1
        return self._frames.pop(0)


def _not_after(tls: ssl.SSLObject) -> float | None:
    """When the peer's certificate expires (seconds since the epoch), for the certificate-expiry alert;
    also without verification (``tls_verify = false``), where only the DER form is available."""
    cert = tls.getpeercert()
    if cert and isinstance(cert.get("notAfter"), str):
        return float(ssl.cert_time_to_seconds(str(cert["notAfter"])))
    der = tls.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        from cryptography import x509

        return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
    except ValueError:
        return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {str(exc.reason or exc).replace('_', ' ').lower()}"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__


def _tune_socket(sock: socket.socket) -> None:
    """No Nagle delay for small frames; keepalive so a half-open idle link is noticed by the kernel."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
