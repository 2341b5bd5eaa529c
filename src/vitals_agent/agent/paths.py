"""Where the agent keeps its state, and the gateway's stable identity."""

from __future__ import annotations

import os
import secrets
import uuid
from datetime import tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from vitals_agent import host
from vitals_agent.config.schema import Config

GATEWAY_ID_FILE = "gateway-eui64"


def data_dir(config: Config, *, create: bool = True) -> Path:
    """The configured ``[agent] data_dir``, else the platform's data dir for the service user.

    With ``create`` the directory is made ready for the agent (see
    :func:`~vitals_agent.agent.instance.prepare_data_dir`: created 0700 or tightened, refused when it
    belongs to another user); raises :class:`~vitals_agent.agent.instance.DataDirError`.
    """
    return resolve_data_dir(config.agent.data_dir, create=create)


def resolve_data_dir(configured: Path | None, *, create: bool = True) -> Path:
    """:func:`data_dir` from the ``[agent] data_dir`` value alone (central configuration reads it from the
    local file before the whole configuration is known)."""
    path = (configured or host.default_data_dir()).expanduser()
    if create:
        from vitals_agent.agent.instance import prepare_data_dir

        path = prepare_data_dir(path)
    return path


def _eui64_from_mac(node: int) -> str | None:
    """OUI + FFFE + NIC part of a universally administered MAC (hl7-pcd01.md §3, MSH-3)."""
    first_octet = (node >> 40) & 0xFF
    if first_octet & 0x01 or first_octet & 0x02:  # multicast bit (random node) or locally administered
        return None
    mac = f"{node:012X}"
    return f"{mac[:6]}FFFE{mac[6:]}"


def gateway_eui64(config: Config, state_dir: Path, *, persist: bool = True) -> str:
    """The gateway EUI-64 for MSH-3: configured, else from the host MAC, else random and persisted.

    Stable per installation: the first value chosen is written to ``data_dir`` and reused (``persist``
    False: only read, for tools that must not write into the agent's ``data_dir``).
    """
    if config.agent.gateway_eui64:
        return config.agent.gateway_eui64
    stored = state_dir / GATEWAY_ID_FILE
    try:
        value = stored.read_text("ascii").strip().upper()
        if len(value) == 16 and all(c in "0123456789ABCDEF" for c in value):
            return value
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:  # e.g. not readable by this user: a tool that only reads makes do without it
        if persist:
            raise
    value = _eui64_from_mac(uuid.getnode()) or ("02" + secrets.token_hex(7).upper())
    if not persist:
        return value
    tmp = stored.with_suffix(".tmp")
    tmp.write_text(value + "\n", "ascii")
    os.replace(tmp, stored)
    return value


def device_zone(config: Config) -> tzinfo:
    """Zone of device clocks: the configured zone, else the system zone."""
    if config.agent.timezone:
        return ZoneInfo(config.agent.timezone)
    return system_zone()


def system_zone() -> tzinfo:
    return host.system_zone()
