"""Central configuration: signed bundles of layered TOML files, and how the layers merge (pure).

A **bundle** is one JSON file::

    {"format": "vitals-agent-config/1",
     "payload": "<base64 of the payload bytes>",
     "signature": "<base64 Ed25519 signature of exactly those bytes>"}

and its payload is JSON: ``{"serial": 17, "issued_at": "2026-03-11T14:00:00+00:00", "layers":
[{"name": "site", "toml": "..."}, {"name": "unit-3", "toml": "..."}, {"name": "room12", "toml": "..."}]}``.
``vitals-agent config bundle`` writes one; the agent checks the signature with the public key of its own
local configuration (``[agent] config_public_key``) before reading anything inside.

**Merge rules** (:func:`merge_layers`): the local file first, then each layer in order; a later layer wins:

* a table merges key by key, recursively (``[ehr]`` in the unit layer changes only the keys it names);
* any other value, arrays included, replaces the earlier one;
* ``[[devices]]`` merge by ``id``: a device whose id an earlier layer has merges into it key by key, a
  new id is added after the others; ``enabled = false`` in a later layer turns a device off;
* keys that say where this agent's data and configuration come from are local only
  (:data:`LOCAL_ONLY`): a layer that sets one is refused.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from vitals_agent.config.rules import needs
from vitals_agent.errors import VitalsAgentError

BUNDLE_FORMAT = "vitals-agent-config/1"
LOCAL_ONLY = (
    ("agent", "data_dir"),
    ("agent", "config_source"),
    ("agent", "config_public_key"),
    ("agent", "config_poll_seconds"),
    ("agent", "config_ca_file"),
)
MAX_BUNDLE_BYTES = 4 * 1024 * 1024


def _checked_key(text: str) -> str:
    public_key_bytes(text)
    return text


# ``[agent] config_public_key``: checked where it is read (the local keys first, then the whole file)
PublicKey = Annotated[str, AfterValidator(_checked_key)]


class LocalKeys(BaseModel):
    """The local-only ``[agent]`` keys, read from the local file before the whole configuration is known
    (with central configuration the local file may hold little else)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    data_dir: Path | None = Field(None, strict=False)
    config_source: str | None = None
    config_public_key: PublicKey | None = None
    config_ca_file: Path | None = Field(None, strict=False)

    @model_validator(mode="after")
    def _signed(self) -> LocalKeys:
        needs(self, "config_source", "config_public_key", ": central configuration is always signed")
        return self


class BundleError(VitalsAgentError):
    """A bundle that is not taken: unsigned, tampered, malformed or stale (one line: the reason)."""


@dataclass(frozen=True)
class Layer:
    name: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Bundle:
    serial: int
    issued_at: str
    layers: tuple[Layer, ...]
    digest: str  # sha256 of the payload bytes (what was signed)


def public_key_bytes(text: str) -> bytes:
    """``[agent] config_public_key``: the raw 32-byte Ed25519 key, base64 (``ed25519:`` prefix allowed)."""
    value = text.strip().removeprefix("ed25519:")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "must be the base64 Ed25519 public key `vitals-agent config keygen` printed"
        ) from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return raw


def _b64(envelope: Mapping[str, Any], key: str) -> bytes:
    value = envelope.get(key)
    if not isinstance(value, str) or not value:
        raise BundleError(f"unsigned or malformed bundle: no {key!r}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"malformed bundle: {key!r} is not base64") from None


def open_bundle(data: bytes, public_key: bytes) -> Bundle:
    """Check the signature, then read the payload. Raises :class:`BundleError` with the reason."""
    import hashlib

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle too large ({len(data)} bytes, at most {MAX_BUNDLE_BYTES})")
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError("not a configuration bundle (not JSON): unsigned files are not accepted") from None
    if not isinstance(envelope, dict) or envelope.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"not a configuration bundle (format is not {BUNDLE_FORMAT!r})")
    payload = _b64(envelope, "payload")
    signature = _b64(envelope, "signature")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except InvalidSignature:
        raise BundleError(
            "signature does not verify with config_public_key: changed since signed, or another key signed it"
        ) from None
    try:
        body = json.loads(payload)
        serial = body["serial"]
        issued = body["issued_at"]
        raw_layers = body["layers"]
        if not isinstance(serial, int) or not isinstance(issued, str) or not isinstance(raw_layers, list):
            raise TypeError
        datetime.fromisoformat(issued)
        layers = []
        for item in raw_layers:
            name, text = item["name"], item["toml"]
            if not isinstance(name, str) or not isinstance(text, str):
                raise TypeError
            try:
                layers.append(Layer(name, tomllib.loads(text)))
            except tomllib.TOMLDecodeError as exc:
                raise BundleError(f"layer {name!r} is not valid TOML: {exc}") from None
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        raise BundleError("signed, but the payload is not a layer list this agent understands") from None
    return Bundle(serial, issued, tuple(layers), hashlib.sha256(payload).hexdigest())


def make_bundle(
    layers: Sequence[tuple[str, str]], private_key: Any, *, serial: int, issued_at: datetime
) -> bytes:
    """A signed bundle of ``(name, toml text)`` layers (each checked to be TOML)."""
    for name, text in layers:
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise BundleError(f"layer {name!r} is not valid TOML: {exc}") from None
    payload = json.dumps(
        {
            "serial": serial,
            "issued_at": issued_at.isoformat(),
            "layers": [{"name": name, "toml": text} for name, text in layers],
        },
        ensure_ascii=False,
    ).encode()
    envelope = {
        "format": BUNDLE_FORMAT,
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(private_key.sign(payload)).decode(),
    }
    return (json.dumps(envelope, indent=1) + "\n").encode()


# ------------------------------------------------------------------------------------------ merge


def _merge_tables(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key == "devices" and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_devices(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_tables(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_devices(base: list[Any], over: list[Any]) -> list[Any]:
    out = [copy.deepcopy(d) for d in base]
    index = {
        d.get("id"): i for i, d in enumerate(out) if isinstance(d, dict) and isinstance(d.get("id"), str)
    }
    for dev in over:
        dev_id = dev.get("id") if isinstance(dev, dict) else None
        if isinstance(dev_id, str) and dev_id in index:
            out[index[dev_id]] = _merge_tables(out[index[dev_id]], dev)
        else:
            if isinstance(dev_id, str):
                index[dev_id] = len(out)
            out.append(copy.deepcopy(dev))
    return out


def merge_layers(local: Mapping[str, Any], layers: Sequence[Layer]) -> dict[str, Any]:
    """The local document with every layer merged over it, in order (see the module's rules). Raises
    :class:`BundleError` when a layer sets a local-only key."""
    for layer in layers:
        for section, key in LOCAL_ONLY:
            table = layer.data.get(section)
            if isinstance(table, dict) and key in table:
                raise BundleError(
                    f"layer {layer.name!r} sets {section}.{key}, which only the local file may set"
                )
    merged: dict[str, Any] = copy.deepcopy(dict(local))
    for layer in layers:
        merged = _merge_tables(merged, layer.data)
    return merged


# ------------------------------------------------------------------------------------------ diff


SECRET_WORDS = ("password", "token", "secret", "hmac_key", "private_key")


def _shown(key: str, value: Any) -> str:
    if any(word in key for word in SECRET_WORDS) and not key.endswith("_file"):
        return "(hidden)"
    return json.dumps(value, default=str, ensure_ascii=False)


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"ehr.port": 2575, "devices[bp1].port": "/dev/ttyUSB0", ...}`` for a diff."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        where = f"{prefix}{key}"
        if key == "devices" and isinstance(value, list) and not prefix:
            for dev in value:
                if isinstance(dev, dict):
                    out.update(flatten(dev, f"devices[{dev.get('id')}]."))
        elif isinstance(value, dict):
            out.update(flatten(value, where + "."))
        else:
            out[where] = value
    return out


def diff_lines(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per key that differs (secrets hidden), sorted."""
    a, b = flatten(old), flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            lines.append(f"  - {key} (was {_shown(key, a[key])})")
        elif key not in a:
            lines.append(f"  + {key} = {_shown(key, b[key])}")
        elif a[key] != b[key]:
            lines.append(f"  ~ {key}: {_shown(key, a[key])} -> {_shown(key, b[key])}")
    return lines
