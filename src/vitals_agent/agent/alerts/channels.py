"""Alert channels beyond the banner and the log: SMTP, webhook, syslog.

Each channel takes one alert payload (a JSON-ready dict with room, device and counts: never patient data)
and delivers it, raising :class:`ChannelError` with a one-line reason when it could not. The dispatcher
(:mod:`.monitor`) retries. This module is imported only when a channel is configured; aiohttp (the
webhook) only at the first webhook send.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import logging.handlers
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from vitals_agent.config.alerts import SmtpChannel, SyslogChannel, WebhookChannel
from vitals_agent.errors import VitalsAgentError

SIGNATURE_HEADER = "X-Vitals-Signature"
C = TypeVar("C", SmtpChannel, SyslogChannel)  # a blocking channel's configuration


class ChannelError(VitalsAgentError):
    """An alert could not be delivered on one channel (one line, no patient data)."""


class Channel(Protocol):
    name: str

    async def send(self, payload: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


def subject(payload: dict[str, Any]) -> str:
    state = "CLEARED" if payload["state"] == "cleared" else "ALERT"
    return f"[vitals-agent] {state} {payload['room']}: {payload['summary']}"


def text_body(payload: dict[str, Any]) -> str:
    lines = [
        subject(payload),
        "",
        f"room:     {payload['room']}",
        f"facility: {payload['facility']}",
        f"alert:    {payload['alert']} ({payload['state']})",
    ]
    if payload.get("device"):
        lines.append(f"device:   {payload['device']}")
    lines.append(f"since:    {payload['since']}")
    for name, value in payload.get("counts", {}).items():
        lines.append(f"{name + ':':<10}{value}")
    lines += ["", f"vitals-agent {payload['version']} on gateway {payload['gateway']}"]
    return "\n".join(lines) + "\n"


def _read_secret(path: Path, what: str) -> bytes:
    try:
        data = path.expanduser().read_bytes().strip()
    except OSError as exc:
        raise ChannelError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if not data:
        raise ChannelError(f"the {what} {path} is empty")
    return data


def _client_tls(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file.expanduser()) if ca_file else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _BlockingSender(Generic[C]):
    """A channel whose client library blocks (smtplib, a plain socket): each send runs in a worker thread."""

    name: str

    def __init__(self, config: C) -> None:
        self.config: C = config

    async def send(self, payload: dict[str, Any]) -> None:
        await asyncio.to_thread(self._send, payload)

    def _send(self, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class SmtpSender(_BlockingSender[SmtpChannel]):
    name = "smtp"

    def _send(self, payload: dict[str, Any]) -> None:
        cfg = self.config
        msg = EmailMessage()
        msg["Subject"] = subject(payload)
        msg["From"] = cfg.from_
        msg["To"] = ", ".join(cfg.to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=cfg.from_.rpartition("@")[2])
        msg["X-Vitals-Alert"] = f"{payload['alert']}; state={payload['state']}"
        msg.set_content(text_body(payload))
        password = (
            _read_secret(cfg.password_file, "SMTP password file").decode() if cfg.password_file else None
        )
        where = f"{cfg.host}:{cfg.port}"
        try:
            with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds) as smtp:
                smtp.ehlo()
                if cfg.starttls:
                    if not smtp.has_extn("starttls"):
                        raise ChannelError(f"SMTP server {where} does not offer STARTTLS")
                    smtp.starttls(context=_client_tls(cfg.tls_verify, cfg.ca_file))
                    smtp.ehlo()
                if cfg.username:
                    smtp.login(cfg.username, password or "")
                smtp.send_message(msg)
        except smtplib.SMTPAuthenticationError as exc:
            raise ChannelError(f"SMTP server {where} refused the login ({exc.smtp_code})") from None
        except smtplib.SMTPException as exc:
            raise ChannelError(f"SMTP server {where}: {type(exc).__name__}: {exc}") from None
        except (OSError, ssl.SSLError) as exc:
            raise ChannelError(f"cannot reach SMTP server {where}: {exc.strerror or exc}") from None


def signature(key: bytes, body: bytes) -> str:
    """The webhook signature header value: ``sha256=`` + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class WebhookSender:
    name = "webhook"

    def __init__(self, config: WebhookChannel) -> None:
        self.config = config
        self._session: Any = None

    async def send(self, payload: dict[str, Any]) -> None:
        import aiohttp  # only when a webhook is configured, at its first alert

        cfg = self.config
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": f"vitals-agent/{payload['version']}"}
        if cfg.hmac_key_file is not None:
            headers[SIGNATURE_HEADER] = signature(_read_secret(cfg.hmac_key_file, "webhook HMAC key"), body)
        if self._session is None:
            ssl_ctx = _client_tls(cfg.tls_verify, cfg.ca_file) if cfg.url.startswith("https:") else None
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=cfg.timeout_seconds),
                connector=aiohttp.TCPConnector(ssl=ssl_ctx if ssl_ctx is not None else False),
            )
        try:
            async with self._session.post(cfg.url, data=body, headers=headers) as resp:
                if not 200 <= resp.status < 300:
                    raise ChannelError(f"webhook answered HTTP {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ChannelError(f"webhook not reached: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


_FACILITIES = logging.handlers.SysLogHandler.facility_names


class SyslogSender(_BlockingSender[SyslogChannel]):
    name = "syslog"

    def _send(self, payload: dict[str, Any]) -> None:
        cfg = self.config
        severity = "info" if payload["state"] == "cleared" else "warning"
        pri = _FACILITIES[cfg.facility] << 3 | logging.handlers.SysLogHandler.priority_names[severity]
        data = {k: payload[k] for k in ("alert", "state", "room", "device") if payload.get(k) is not None}
        data.update({f"n_{k}": v for k, v in payload.get("counts", {}).items()})
        sd = " ".join(f'{k}="{_sd_escape(str(v))}"' for k, v in data.items())
        line = (
            f"<{pri}>1 {payload['at']} {socket.gethostname()} vitals-agent - ALERT "
            f"[alert@32473 {sd}] {payload['summary']}"
        )
        raw = line.encode("utf-8", "replace")
        target = cfg.target()
        try:
            if isinstance(target, str):
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    sock.connect(target)
                    sock.send(raw)
            else:
                kind = socket.SOCK_STREAM if cfg.protocol == "tcp" else socket.SOCK_DGRAM
                host, port = target
                info = socket.getaddrinfo(host, port, type=kind)[0]
                with socket.socket(info[0], kind) as sock:
                    sock.settimeout(10)
                    sock.connect(info[4])
                    # TCP: octet counting (RFC 6587), so a newline in a summary cannot split a record
                    sock.sendall(f"{len(raw)} ".encode() + raw if cfg.protocol == "tcp" else raw)
        except OSError as exc:
            raise ChannelError(f"syslog {cfg.address}: {exc.strerror or exc}") from None


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
