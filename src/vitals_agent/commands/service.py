"""``vitals-agent service ...``: the agent as an operating-system service.

    vitals-agent service sync-unit [--config FILE] [--unit-dir DIR] [--check | --print]

``sync-unit`` (Linux, systemd) writes the unit's drop-in from the configuration: every folder the
configuration names becomes writable for the service (``ReadWritePaths=``). Run it as root after editing
the configuration, then restart the service. ``deploy/install.sh`` runs it too. (This module owns the
``service`` group: other platforms add their subcommands here.)
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from vitals_agent.agent.systemd_unit import UNIT_DIR, UNIT_NAME, dropin_path, render_dropin, write_dropin
from vitals_agent.commands._options import add_config_option, config_path
from vitals_agent.config.filesystem import local_paths
from vitals_agent.config.schema import load_config
from vitals_agent.errors import VitalsAgentError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("service", help="the agent as a system service (systemd drop-in)")
    ssub = p.add_subparsers(dest="service_command", metavar="ACTION")
    ssub.required = True

    s = ssub.add_parser(
        "sync-unit",
        help="make the systemd unit fit the configuration (writable folders); run after config edits",
    )
    add_config_option(s)
    s.add_argument(
        "--unit-dir", type=Path, default=UNIT_DIR, metavar="DIR", help=f"unit folder (default {UNIT_DIR})"
    )
    s.add_argument("--unit", default=UNIT_NAME, help=f"unit name (default {UNIT_NAME})")
    what = s.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="change nothing; exit 1 if the drop-in is stale")
    what.add_argument("--print", action="store_true", help="print the drop-in instead of writing it")
    s.add_argument(
        "--no-reload", action="store_true", help="do not run `systemctl daemon-reload` after a change"
    )
    s.set_defaults(func=cmd_sync_unit)


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


async def cmd_sync_unit(args: argparse.Namespace) -> int:
    path = config_path(args)
    assert path is not None
    config = load_config(path)
    text = render_dropin(config, path.absolute())
    if args.print:
        print(text, end="")
        return 0
    target = dropin_path(args.unit_dir, args.unit)
    if args.check:
        try:
            current = target.read_text("utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            raise VitalsAgentError(f"{target} does not match {path}: run `vitals-agent service sync-unit`")
        print(f"{target} is up to date")
        return 0
    try:
        changed = write_dropin(target, text)
    except PermissionError:
        raise VitalsAgentError(
            f"cannot write {target}: permission denied (run as root: sudo vitals-agent service sync-unit)"
        ) from None
    for key, _kind, folder in local_paths(config):
        if not folder.expanduser().exists():
            print(f"note: {key} {folder} does not exist yet; the service waits for it", file=sys.stderr)
    if not changed:
        print(f"{target} is up to date")
        return 0
    print(f"wrote {target}")
    name = args.unit.removesuffix(".service")
    if args.unit_dir != UNIT_DIR:
        return 0
    if not args.no_reload and _systemd_running():
        await asyncio.to_thread(subprocess.run, ["systemctl", "daemon-reload"], check=False)
        print(f"apply it with: systemctl restart {name}")
    else:
        print(f"apply it with: systemctl daemon-reload && systemctl restart {name}")
    return 0
