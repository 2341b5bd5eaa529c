"""Where a networked serial device is: ``socket://HOST:PORT`` (raw TCP) or ``rfc2217://HOST:PORT`` (RFC
2217). Pure parsing, shared by the configuration check and the link (:mod:`vitals_agent.drivers.netserial`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

NETWORK_SCHEMES = {"socket": "raw TCP", "rfc2217": "RFC 2217"}


@dataclass(frozen=True)
class NetworkPort:
    """A terminal server's port: ``scheme`` (``socket`` or ``rfc2217``), host, TCP port."""

    scheme: str
    host: str
    port: int

    @property
    def kind(self) -> str:
        return NETWORK_SCHEMES[self.scheme]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def network_port(url: str) -> NetworkPort | None:
    """The terminal-server port a ``socket://`` or ``rfc2217://`` URL names; None for anything else.
    Raises ValueError (one line) for such a URL without a host or a valid TCP port."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in NETWORK_SCHEMES:
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or not 0 < port < 65536:
        raise ValueError(f"{url!r}: write {scheme}://HOST:PORT (the terminal server's address and TCP port)")
    return NetworkPort(scheme, parts.hostname, port)
