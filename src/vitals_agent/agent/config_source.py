"""Where the agent's configuration comes from: the local file, plus (with ``[agent] config_source``) the
signed central bundle merged over it; and the last good bundle, kept in the data folder.

:meth:`ConfigSource.pull` reads the local file again, fetches the bundle, checks its signature with the
local file's ``config_public_key``, refuses one older than the last good one (a replay), merges the layers
(:func:`~vitals_agent.config.central.merge_layers`) and validates the result as any configuration. Any
failure raises with a one-line reason, and nothing changes: the configuration in force stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from vitals_agent import log_events as ev
from vitals_agent.agent.paths import resolve_data_dir
from vitals_agent.agent.storage.audit import write_private
from vitals_agent.config.central import (
    Bundle,
    BundleError,
    LocalKeys,
    merge_layers,
    open_bundle,
    public_key_bytes,
)
from vitals_agent.config.schema import Config, local_keys, parse_config, read_document
from vitals_agent.errors import ConfigError, VitalsAgentError
from vitals_agent.net.config_fetch import FetchError, fetch_bundle

log = structlog.get_logger(__name__)

LAST_GOOD_FILE = "central-config.bundle"
FETCH_TIMEOUT = 20.0


class ConfigRefused(VitalsAgentError):
    """A new configuration that is not taken (the reason in one line); the one in force stays."""


@dataclass(frozen=True)
class Pulled:
    config: Config
    document: dict[str, Any]  # the merged TOML document (for diffs)
    bundle: Bundle | None = None  # None: the local file alone
    raw: bytes | None = field(default=None, repr=False)  # the bundle's bytes as fetched
    origin: str = "local"  # "local", "central" (fetched now) or "last good" (kept from before)


class ConfigSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.absolute().parent

    def _local(self) -> tuple[dict[str, Any], LocalKeys, Config | None, ConfigError | None]:
        """The local document, its local-only keys, and the local file alone as a configuration (None,
        with the reason, when it is incomplete: with a source it may hold little but the source)."""
        doc = read_document(self.path)
        keys = local_keys(doc, base_dir=self.base)
        try:
            return doc, keys, parse_config(doc, base_dir=self.base), None
        except ConfigError as exc:
            if keys.config_source is None:
                raise
            return doc, keys, None, exc

    def data_dir(self) -> Path:
        return resolve_data_dir(self._local()[1].data_dir, create=False)

    def _merge(self, doc: dict[str, Any], bundle: Bundle) -> tuple[dict[str, Any], Config]:
        merged = merge_layers(doc, bundle.layers)
        try:
            return merged, parse_config(merged, base_dir=self.base)
        except ConfigError as exc:
            first = "; ".join(f"{k}: {m}" for k, m in exc.problems[:3])
            more = f" (+{len(exc.problems) - 3} more)" if len(exc.problems) > 3 else ""
            raise ConfigRefused(f"the merged configuration is not valid: {first}{more}") from None

    @staticmethod
    def last_good_path(data_dir: Path) -> Path:
        return data_dir / LAST_GOOD_FILE

    def last_good(self, data_dir: Path, keys: LocalKeys) -> Bundle | None:
        """The bundle last applied (signature checked again), or None."""
        path = self.last_good_path(data_dir)
        if keys.config_public_key is None or not path.exists():
            return None
        try:
            return open_bundle(path.read_bytes(), public_key_bytes(keys.config_public_key))
        except (OSError, BundleError) as exc:
            log.warning(ev.CONFIG_LAST_GOOD_UNUSABLE, file=str(path), reason=str(exc))
            return None

    async def pull(self, data_dir: Path | None = None) -> Pulled:
        """The local file and, when it names a source, the central bundle merged over it. Raises
        :class:`ConfigRefused` (or :class:`ConfigError` for the local file itself)."""
        doc, keys, local, _problem = self._local()
        source = keys.config_source
        if source is None:
            assert local is not None
            return Pulled(local, doc)
        assert keys.config_public_key is not None
        try:
            raw = await fetch_bundle(source, ca_file=keys.config_ca_file, timeout=FETCH_TIMEOUT)
        except FetchError as exc:
            raise ConfigRefused(f"cannot fetch the central configuration: {exc}") from None
        try:
            bundle = open_bundle(raw, public_key_bytes(keys.config_public_key))
        except BundleError as exc:
            raise ConfigRefused(f"central configuration refused: {exc}") from None
        if data_dir is not None:
            good = self.last_good(data_dir, keys)
            if good is not None and bundle.serial < good.serial:
                raise ConfigRefused(
                    f"central configuration refused: serial {bundle.serial} is older than the one in force "
                    f"({good.serial}): a stale or replayed bundle"
                )
            if good is not None and bundle.serial == good.serial and bundle.digest != good.digest:
                raise ConfigRefused(
                    f"central configuration refused: serial {bundle.serial} is in force with other contents"
                )
        try:
            merged, config = self._merge(doc, bundle)
        except BundleError as exc:
            raise ConfigRefused(f"central configuration refused: {exc}") from None
        return Pulled(config, merged, bundle, raw, "central")

    def fallback(self, data_dir: Path) -> Pulled:
        """Without the source (unreachable, refused): the last good bundle over the local file, else the
        local file alone. Raises :class:`ConfigError` when neither makes a whole configuration."""
        doc, keys, local, problem = self._local()
        good = self.last_good(data_dir, keys)
        if good is not None:
            try:
                merged, config = self._merge(doc, good)
                return Pulled(config, merged, good, None, "last good")
            except (ConfigRefused, BundleError) as exc:
                log.warning(ev.CONFIG_LAST_GOOD_MISMATCH, reason=str(exc))
        if local is None:
            assert problem is not None
            raise ConfigError(
                [("agent.config_source", "no central configuration has been received yet, and the local file "
                  "alone is not a whole configuration"), *problem.problems]
            )  # fmt: skip
        return Pulled(local, doc)

    def save_good(self, data_dir: Path, pulled: Pulled) -> None:
        if pulled.raw is not None:
            write_private(self.last_good_path(data_dir), pulled.raw.decode())


def describe(pulled: Pulled) -> dict[str, Any]:
    """For the status: where the configuration in force came from (no secrets)."""
    bundle = pulled.bundle
    return {
        "origin": pulled.origin,
        "serial": bundle.serial if bundle else None,
        "issued_at": bundle.issued_at if bundle else None,
        "digest": bundle.digest[:16] if bundle else None,
        "layers": [layer.name for layer in bundle.layers] if bundle else [],
    }
