"""``vitals-agent config``: central configuration.

* ``config pull --check``: fetch the central bundle, check its signature and merge it over the local file
  exactly as the agent would, and show what would change (and which devices would restart).
* ``config pull``: the same, then ask the running agent to apply it now (SIGHUP; on Windows the service's
  reload control).
* ``config keygen --out KEY``: a new Ed25519 signing key (PEM, 0600) and the public key line for each
  agent's ``[agent] config_public_key``.
* ``config bundle --key KEY -o FILE LAYER.toml ...``: sign layers (site, unit, room: later wins) into
  one bundle to publish.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

from vitals_agent import host
from vitals_agent.commands._options import add_action, add_actions, add_config_option, config_path
from vitals_agent.errors import ConfigError, VitalsAgentError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = add_actions(sub, "config")

    pull = add_action(
        group, "pull", cmd_pull, help="fetch the central configuration and apply it now (--check: only show)"
    )
    add_config_option(pull)
    pull.add_argument("--check", action="store_true", help="show what would change; change nothing")

    keygen = add_action(
        group, "keygen", cmd_keygen, help="make an Ed25519 signing key and print its public key"
    )
    keygen.add_argument(
        "--out", type=Path, required=True, metavar="KEY.pem", help="where to write the private key"
    )

    bundle = add_action(
        group, "bundle", cmd_bundle, help="sign layered TOML files (site, unit, room) into one bundle"
    )
    bundle.add_argument("--key", type=Path, required=True, metavar="KEY.pem", help="the signing key (keygen)")
    bundle.add_argument("-o", "--out", type=Path, required=True, metavar="FILE", help="the bundle to write")
    bundle.add_argument(
        "--serial",
        type=int,
        help="bundle serial; agents refuse a lower one than in force (default: now, in s)",
    )
    bundle.add_argument("layers", nargs="+", type=Path, metavar="LAYER.toml", help="layers, first to last")


async def cmd_pull(args: argparse.Namespace) -> int:
    from vitals_agent.agent.config_source import ConfigRefused, ConfigSource, Pulled
    from vitals_agent.agent.reconfigure import plan
    from vitals_agent.config.central import diff_lines
    from vitals_agent.config.schema import read_document

    path = config_path(args)
    assert path is not None
    source = ConfigSource(path)
    folder = source.data_dir()  # data_dir is local-only: the same in every layer
    try:
        current: Pulled | None = source.fallback(folder)
    except ConfigError:  # nothing whole in force yet: compare with the local file's own lines
        current = None
    try:
        new = await source.pull(folder)
    except ConfigRefused as exc:
        raise VitalsAgentError(f"{exc}; the agent keeps the configuration in force") from None
    if new.bundle is None:
        print(f"no config_source in {path}: the agent uses this file alone")
    else:
        b = new.bundle
        print(
            f"{new.config.agent.config_source}: serial {b.serial}, issued {b.issued_at}, signature good, "
            f"layers: {', '.join(layer.name for layer in b.layers)}"
        )
    if current is None:
        against, before = "the local file alone (nothing received yet)", read_document(path)
    else:
        against = "the last good central configuration" if current.bundle else "the local file alone"
        before = current.document
    lines = diff_lines(before, new.document)
    if not lines:
        print(f"no change (compared with {against})")
        return 0
    print(f"would change (compared with {against}):")
    print("\n".join(lines))
    changes: tuple[tuple[str, list[str]], ...]
    if current is not None:
        steps = plan(current.config, new.config)
        changes = (
            ("devices restarted", steps.restart),
            ("devices added", steps.add),
            ("devices removed", steps.remove),
            ("senders reconnected", steps.senders),
            ("needs a restart of the agent", steps.restart_needed),
        )
    else:
        changes = (("devices started", [d.id for d in new.config.devices if d.enabled]),)
    for label, items in changes:
        if items:
            print(f"{label}: {', '.join(items)}")
    if args.check:
        return 0
    return _signal_agent(folder)


def _signal_agent(folder: Path) -> int:
    hup = getattr(signal, "SIGHUP", None)
    try:
        pid = int((folder / "agent.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    if hup is None:  # Windows: the service's reload control (SERVICE_CONTROL_PARAMCHANGE)
        return _reload_service()
    if pid <= 0:
        print("the running agent applies it at its next poll (or reload the service now)")
        return 0
    try:
        os.kill(pid, hup)
    except ProcessLookupError:
        print("the agent is not running: it applies this configuration when it starts")
        return 0
    except PermissionError:
        raise VitalsAgentError(
            f"not allowed to signal the agent (pid {pid}): "
            "run this as its user, or `sudo systemctl reload vitals-agent`"
        ) from None
    print(f"asked the running agent (pid {pid}) to apply it now")
    return 0


def _reload_service() -> int:
    from vitals_agent.host import winservice

    try:
        lines = winservice.reload()
    except VitalsAgentError as exc:
        print(f"the agent applies it when it starts or at its next poll ({exc})")
        return 0
    for line in lines:
        print(line)
    return 0


async def cmd_keygen(args: argparse.Namespace) -> int:
    return _keygen(args.out)


def _keygen(out: Path) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if out.exists():
        raise VitalsAgentError(f"{out} exists: refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = host.open_private(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    print(f"wrote {out} (keep it off the workstations); put this in each agent's [agent] section:")
    print(f'config_public_key = "{base64.b64encode(raw).decode()}"')
    return 0


async def cmd_bundle(args: argparse.Namespace) -> int:
    return _bundle(args)


def _bundle(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vitals_agent.config.central import make_bundle

    try:
        key = serialization.load_pem_private_key(args.key.read_bytes(), password=None)
    except OSError as exc:
        raise VitalsAgentError(f"{args.key}: {exc.strerror or exc}") from None
    except (ValueError, TypeError):
        raise VitalsAgentError(f"{args.key}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise VitalsAgentError(f"{args.key}: not an Ed25519 key (make one with `vitals-agent config keygen`)")
    layers = []
    for path in args.layers:
        try:
            layers.append((path.stem, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise VitalsAgentError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    serial = args.serial if args.serial is not None else int(time.time())
    data = make_bundle(layers, key, serial=serial, issued_at=datetime.now(UTC))
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, args.out)  # readers of a share never see half a bundle
    print(f"wrote {args.out}: serial {serial}, layers {', '.join(name for name, _ in layers)}")
    return 0
