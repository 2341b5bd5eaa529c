"""TLS for the MLLP link: an :class:`ssl.SSLContext` built from ``[ehr]`` (and ``[pdq]``, same keys).

Verification is on by default: the receiver's certificate must chain to ``ca_file`` (or the system trust
store when no ``ca_file`` is set) and carry ``server_name`` (default: ``host``). ``cert_file``/``key_file``
add a client certificate for mutual TLS. An unreadable or unusable file stops the agent at start-up with a
one-line :class:`~vitals_agent.errors.ConfigError` instead of failing on the first delivery.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Protocol

import structlog

from vitals_agent import log_events as ev
from vitals_agent.errors import ConfigError

log = structlog.get_logger(__name__)


class TlsSettings(Protocol):
    """The TLS keys ``[ehr]`` and ``[pdq]`` share."""

    @property
    def tls(self) -> bool: ...
    @property
    def tls_verify(self) -> bool: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def cert_file(self) -> Path | None: ...
    @property
    def key_file(self) -> Path | None: ...


def _readable(key: str, path: Path) -> Path:
    path = path.expanduser()
    try:
        with path.open("rb") as fh:
            head = fh.read(1)
    except OSError as exc:
        raise ConfigError([(key, f"cannot read {path}: {exc.strerror or exc}")]) from None
    if not head:
        raise ConfigError([(key, f"{path} is empty")])
    return path


def ssl_context_from(ehr: TlsSettings, *, section: str = "ehr", force: bool = False) -> ssl.SSLContext | None:
    """The client TLS context for ``[ehr]`` (or another ``section`` with the same keys), or ``None`` when
    ``tls`` is off (``force``: on regardless, e.g. for an https:// URL). Raises :class:`ConfigError`."""
    if not (ehr.tls or force):
        for name in ("ca_file", "cert_file", "key_file"):
            if getattr(ehr, name) is not None:
                log.warning(ev.TLS_OFF_FILES_IGNORED, section=section, key=f"{section}.{name}")
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ehr.ca_file is not None:
        ca = _readable(f"{section}.ca_file", ehr.ca_file)
        try:
            ctx.load_verify_locations(cafile=os.fspath(ca))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                [(f"{section}.ca_file", f"{ca} holds no usable PEM certificate ({_reason(exc)})")]
            ) from None
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if ehr.key_file is not None and ehr.cert_file is None:
        raise ConfigError([(f"{section}.key_file", "set cert_file too: a client key needs its certificate")])
    if ehr.cert_file is not None:
        cert = _readable(f"{section}.cert_file", ehr.cert_file)
        key = _readable(f"{section}.key_file", ehr.key_file) if ehr.key_file is not None else None
        try:
            ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key else None, password=_no_password)
        except ssl.SSLError as exc:
            where = f"{section}.key_file" if key else f"{section}.cert_file"
            raise ConfigError(
                [
                    (
                        where,
                        f"cannot use client certificate {cert}"
                        + (f" with key {key}" if key else "")
                        + f": {_reason(exc)}",
                    )
                ]
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(
                [(f"{section}.key_file", f"cannot load the client key: {_reason(exc)}")]
            ) from None
    if not ehr.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        log.warning(ev.TLS_VERIFY_OFF, section=section)
    return ctx


def _no_password() -> str:
    # An encrypted key cannot be used unattended; fail instead of prompting on a terminal.
    raise ValueError("the private key is encrypted (a service cannot type its pass phrase)")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
