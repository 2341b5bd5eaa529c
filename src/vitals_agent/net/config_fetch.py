"""Fetch a central configuration bundle: an ``https://`` URL (aiohttp, imported at the first fetch) or a
path on a file share (``file://`` or a plain path). The bytes are returned unchecked: the caller verifies
the signature before trusting anything in them."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vitals_agent.config.central import MAX_BUNDLE_BYTES
from vitals_agent.errors import VitalsAgentError


class FetchError(VitalsAgentError):
    """The bundle could not be fetched (one line: where and why)."""


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_BUNDLE_BYTES + 1)
    except FileNotFoundError:
        raise FetchError(f"{path}: file not found") from None
    except OSError as exc:
        raise FetchError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise FetchError(f"{path}: larger than {MAX_BUNDLE_BYTES} bytes")
    return data


async def fetch_bundle(source: str, *, ca_file: Path | None = None, timeout: float = 20.0) -> bytes:
    if source.startswith("file://"):
        return await asyncio.to_thread(_read, Path(unquote(urlsplit(source).path)))
    if not source.startswith("https://"):
        return await asyncio.to_thread(_read, Path(source))
    import aiohttp

    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(source, ssl=ctx, headers={"Accept": "application/json"}) as resp,
        ):
            if resp.status != 200:
                raise FetchError(f"{source}: HTTP {resp.status}")
            data = await resp.content.read(MAX_BUNDLE_BYTES + 1)
    except aiohttp.ClientConnectorCertificateError as exc:
        raise FetchError(f"{source}: TLS certificate rejected ({exc.certificate_error})") from None
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
        raise FetchError(f"{source}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise FetchError(f"{source}: larger than {MAX_BUNDLE_BYTES} bytes")
    return data
