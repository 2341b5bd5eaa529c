"""Fake EHR peers (testing.md §4) on 127.0.0.1, for anyone's tests.

Two independent implementations with the same API:

* :class:`Hl7Ehr` — python-hl7's ``hl7.mllp.start_hl7_server`` (the independent peer: its own MLLP reader,
  its own HL7 parser, ACKs made by ``Message.create_ack``).
* :class:`RawEhr` — a plain ``asyncio.start_server`` with a hand-written deframer and hand-made ACKs, for
  the protocol-breaking modes and as a second code base.

Both record every message they receive (:attr:`FakeEhr.received`, in arrival order, even when they then
misbehave) and answer according to a *mode*, chosen per message: first from :attr:`FakeEhr.plan` (a list
consumed one entry per message), then from :attr:`FakeEhr.per_id` (MSH-10 -> mode), else :attr:`mode`.

Modes: ``AA`` ``AE`` (with MSA-3 and an ERR segment) ``AR`` ``CA`` ``CE`` ``CR`` ``CA_AA`` (a CA then an
AA) ``CA_AE`` (a CA then an AE, on the same connection) ``CLOSE`` (close without answering) ``SILENT``
(never answer, keep the connection) ``GARBLE`` (an HTTP error line instead of MLLP) ``WRONG_ID`` (AA with
another MSA-2) ``SLOW`` (AA after :attr:`delay` s)
``RESET`` (half an ACK frame, then a TCP RST) ``HALF_OPEN`` (stop reading the socket, never answer, never
close) ``AA_CLOSE`` (AA, then close, like hl7apy's server) ``XX`` (an unknown MSA-1 code).
``close_after=N`` closes each connection after N answered messages. Refusing connections = :meth:`stop`.

Usage::

    async with Hl7Ehr(mode="AA") as ehr:
        ... connect to ehr.host, ehr.port ...
        await ehr.wait_for(3)
        assert ehr.control_ids == [...]
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import hl7
import hl7.mllp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MODES = frozenset(
    {
        "AA",
        "AE",
        "AR",
        "CA",
        "CE",
        "CR",
        "CA_AA",
        "CA_AE",
        "CLOSE",
        "SILENT",
        "GARBLE",
        "WRONG_ID",
        "SLOW",
        "RESET",
        "HALF_OPEN",
        "AA_CLOSE",
        "XX",
    }
)
AE_TEXT = "Observation rejected"
AE_ERR = "ERR||OBX^1^5|207^Application internal error^HL70357|E"
GARBAGE = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class Received:
    control_id: str
    raw: bytes  # the message as received (segments separated by CR)
    connection: int  # 1-based connection number on this peer


def msh10(raw: bytes) -> str:
    first = raw.split(b"\r", 1)[0].decode("utf-8", "replace")
    fields = first.split(first[3]) if len(first) > 3 else []
    return fields[9] if len(fields) > 9 else ""


def make_message(control_id: str, device: str = "dev-1", value: str = "97") -> bytes:
    """A small, well-formed ORU^R01 with the given MSH-10 (test traffic; no dependency on the builder)."""
    segs = [
        "MSH|^~\\&|VITALS_AGENT^0A1B2CFFFE3D4E5F^EUI-64|TEST_CLINIC|EHR|HOSP|20250314153012+0000||"
        f"ORU^R01^ORU_R01|{control_id}|P|2.6|||AL|NE||UNICODE UTF-8|en^English^ISO639||"
        "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
        "PID|||TEMP-1^^^VITALS_AGENT||UNKNOWN^UNKNOWN",
        f"OBR|1|{control_id}^VITALS_AGENT||182777000^monitoring of patient^SCT|||20250314152958+0000",
        f"OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.0.0.1|{value}|262688^MDC_DIM_PERCENT^MDC|||||R"
        f"|||20250314152958+0000||||{device}",
    ]
    return ("\r".join(segs) + "\r").encode()


def ack_bytes(control_id: str, code: str, *, text: str = "", err: str = "") -> bytes:
    """A hand-made ACK^R01^ACK (for :class:`RawEhr`)."""
    segs = [
        f"MSH|^~\\&|EHR|HOSP|VITALS_AGENT|TEST_CLINIC|20250314153013+0000||ACK^R01^ACK|ACK-{control_id}|P|2.6",
        f"MSA|{code}|{control_id}" + (f"|{text}" if text else ""),
    ]
    if err:
        segs.append(err)
    return ("\r".join(segs) + "\r").encode()


class FakeEhr:
    """Common part: modes, recording, start/stop, connection bookkeeping."""

    def __init__(
        self,
        mode: str = "AA",
        *,
        plan: Iterable[str] = (),
        per_id: dict[str, str] | None = None,
        delay: float = 0.5,
        close_after: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        for m in [mode, *plan, *(per_id or {}).values()]:
            if m not in MODES:
                raise ValueError(f"unknown fake EHR mode {m!r}")
        self.mode = mode
        self.plan = list(plan)
        self.per_id = dict(per_id or {})
        self.delay = delay
        self.close_after = close_after
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.received: list[Received] = []
        self.connections = 0
        self.handshake_failures = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()

    # --- API ---------------------------------------------------------------------------------------

    @property
    def control_ids(self) -> list[str]:
        return [r.control_id for r in self.received]

    @property
    def messages(self) -> list[str]:
        """Every message received, as text (segments separated by CR)."""
        return [r.raw.decode("utf-8", "replace") for r in self.received]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> Self:
        self._server = await self._serve()
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection (new connections are refused until start())."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._closing.set()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for t in pending:  # only if a handler is stuck: cancelling makes asyncio log noise
                t.cancel()
        self._closing = asyncio.Event()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def drop_connections(self) -> None:
        """Abort every open connection but keep listening."""
        for w in list(self._writers):
            w.transport.abort()

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[str]:
        """Wait until at least ``count`` messages have been received; return :attr:`messages`."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(self.received) >= count)
        except TimeoutError:
            raise AssertionError(
                f"EHR got {len(self.received)} of {count} messages within {timeout} s"
            ) from None
        return self.messages

    async def close(self) -> None:
        await self.stop()

    # --- internals ----------------------------------------------------------------------------------

    async def _serve(self) -> asyncio.Server:
        raise NotImplementedError

    def _mode_for(self, control_id: str) -> str:
        if self.plan:
            return self.plan.pop(0)
        return self.per_id.get(control_id, self.mode)

    async def _record(self, raw: bytes, conn: int) -> str:
        control_id = msh10(raw)
        async with self._changed:
            self.received.append(Received(control_id, raw, conn))
            self._changed.notify_all()
        return control_id

    def _ack(self, raw: bytes, control_id: str, code: str, *, text: str = "", err: str = "") -> bytes:
        raise NotImplementedError

    def _track(self, writer: asyncio.StreamWriter) -> int:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        return self.connections

    def _untrack(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.discard(task)

    async def _respond(
        self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader, raw: bytes, conn: int, answered: int
    ) -> bool:
        """Answer one message per its mode. Returns False when the connection must end."""
        control_id = await self._record(raw, conn)
        mode = self._mode_for(control_id)
        if mode in ("AA", "AR", "CA", "CE", "CR", "XX"):
            writer.write(_frame(self._ack(raw, control_id, mode)))
        elif mode == "AE":
            writer.write(_frame(self._ack(raw, control_id, "AE", text=AE_TEXT, err=AE_ERR)))
        elif mode in ("CA_AA", "CA_AE"):
            writer.write(_frame(self._ack(raw, control_id, "CA")))
            await writer.drain()
            await asyncio.sleep(0.01)  # (simulation) the application ACK comes a moment after the commit ACK
            if mode == "CA_AA":
                writer.write(_frame(self._ack(raw, control_id, "AA")))
            else:
                writer.write(_frame(self._ack(raw, control_id, "AE", text=AE_TEXT, err=AE_ERR)))
        elif mode == "WRONG_ID":
            writer.write(_frame(self._ack(raw, "NOT-" + control_id, "AA")))
        elif mode == "SLOW":
            await asyncio.sleep(self.delay)  # (simulation) a slow receiver
            writer.write(_frame(self._ack(raw, control_id, "AA")))
        elif mode == "AA_CLOSE":
            writer.write(_frame(self._ack(raw, control_id, "AA")))
            await writer.drain()
            return False
        elif mode == "CLOSE":
            return False
        elif mode == "SILENT":
            pass
        elif mode == "GARBLE":
            writer.write(GARBAGE)
        elif mode == "RESET":
            full = _frame(self._ack(raw, control_id, "AA"))
            writer.write(full[: len(full) // 2])
            await writer.drain()
            await asyncio.sleep(0.01)  # (simulation) the peer dies a moment after half the ACK went out
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        elif mode == "HALF_OPEN":
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            await self._closing.wait()  # hold the socket open until stop()
            return False
        await writer.drain()
        return not (self.close_after is not None and answered + 1 >= self.close_after)


def _frame(payload: bytes) -> bytes:
    return b"\x0b" + payload + b"\x1c\x0d"


class Hl7Ehr(FakeEhr):
    """The independent peer: python-hl7's asyncio MLLP server and ``create_ack``."""

    async def _serve(self) -> asyncio.Server:
        kwargs: dict[str, Any] = {}
        if self.ssl_context is not None:
            kwargs["ssl"] = self.ssl_context
        server: asyncio.Server = await hl7.mllp.start_hl7_server(
            self._client, self.host, self.port, encoding="utf-8", limit=32 << 20, **kwargs
        )
        return server

    async def _client(self, reader: Any, writer: Any) -> None:
        conn = self._track(writer)
        answered = 0
        try:
            while True:
                try:
                    message = await reader.readmessage()
                except (
                    asyncio.IncompleteReadError,
                    ConnectionError,
                    hl7.mllp.InvalidBlockError,
                    ssl.SSLError,
                ):
                    return
                raw = str(message).encode("utf-8")
                if not await self._respond(writer, reader, raw, conn, answered):
                    return
                answered += 1
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            self._untrack(writer)
            writer.close()

    def _ack(self, raw: bytes, control_id: str, code: str, *, text: str = "", err: str = "") -> bytes:
        message = hl7.parse(raw.decode("utf-8"))
        ack = message.create_ack(code)
        out = str(ack).rstrip("\r")
        lines = out.split("\r")
        lines = [
            (f"MSA|{code}|{control_id}" + (f"|{text}" if text else "")) if ln.startswith("MSA") else ln
            for ln in lines
        ]
        if err:
            lines.append(err)
        return ("\r".join(lines) + "\r").encode("utf-8")


class RawEhr(FakeEhr):
    """A hand-written MLLP peer (own deframing, hand-made ACKs) on ``asyncio.start_server``."""

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._client, self.host, self.port, ssl=self.ssl_context)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self._track(writer)
        answered = 0
        buf = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\x1c\x0d" in buf:
                    block, buf = buf.split(b"\x1c\x0d", 1)
                    start = block.find(b"\x0b")
                    if start < 0:
                        continue
                    if not await self._respond(writer, reader, block[start + 1 :], conn, answered):
                        return
                    answered += 1
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            self._untrack(writer)
            writer.close()

    def _ack(self, raw: bytes, control_id: str, code: str, *, text: str = "", err: str = "") -> bytes:
        return ack_bytes(control_id, code, text=text, err=err)


# --- a throw-away PKI for TLS tests (pyca/cryptography: the same PKI on Linux and under Windows) ---------
# Certificates as a strict verifier wants them (Python 3.13's VERIFY_X509_STRICT): P-256 keys, CAs with
# critical basicConstraints and keyUsage, leaves with SAN (servers), EKU, subject and authority key ids.


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing the server uses
    rogue_server_cert: Path  # a server certificate signed by other_ca
    rogue_server_key: Path

    def server_context(self, *, rogue: bool = False, require_client: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if rogue:
            ctx.load_cert_chain(self.rogue_server_cert, self.rogue_server_key)
        else:
            ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(self.ca_cert))
        return ctx


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.now(UTC)
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _ca(name: str, directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = _certificate(
        f"Test {name}", key, None, [(x509.BasicConstraints(ca=True, path_length=None), True), (usage, True)]
    )
    _write(directory, name, key, cert)
    return cert, key


def _leaf(
    name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], directory: Path, *, server: bool
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (usage, True),
        (
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        ),
    ]
    if server:
        names = [
            x509.DNSName("localhost"),
            x509.DNSName("ehr.test"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        extensions.append((x509.SubjectAlternativeName(names), False))
    _write(directory, name, key, _certificate(name, key, ca, extensions))


def make_test_pki(directory: Path) -> Pki:
    """Create a test CA, a server certificate for localhost/127.0.0.1/ehr.test, a client certificate, and a
    second CA with its own server certificate (for the "does not chain to the configured CA" case)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("ca", directory)
    other = _ca("otherca", directory)
    _leaf("server", ca, directory, server=True)
    _leaf("client", ca, directory, server=False)
    _leaf("rogue", other, directory, server=True)
    d = directory
    return Pki(
        ca_cert=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
        other_ca_cert=d / "otherca.crt",
        rogue_server_cert=d / "rogue.crt",
        rogue_server_key=d / "rogue.key",
    )
