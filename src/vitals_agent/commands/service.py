"""``vitals-agent service ...``: the agent as an operating-system service.

    vitals-agent service sync-unit [--config FILE] [--unit-dir DIR] [--check | --print]

    vitals-agent service install [--config FILE] [--account DOMAIN\\USER] | remove | start | stop | reload
                         | status

``sync-unit`` (Linux, systemd) writes the unit's drop-in from the configuration: every folder the
configuration names becomes writable for the service (``ReadWritePaths=``). Run it as root after editing
the configuration, then restart the service. ``deploy/install.sh`` runs it too. (This module owns the
``service`` group: other platforms add their subcommands here.)

Windows: ``install`` (automatic start, restart on failure, LocalService or ``--account``), ``remove``,
``start``, ``stop`` (waits until the service has stopped), ``reload`` (read the configuration again: the
service control PARAMCHANGE, Windows' SIGHUP), ``status``; ``host`` is what the service
control manager runs (:mod:`vitals_agent.host.winservice`). On Linux they say to use systemd instead.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from vitals_agent import host
from vitals_agent.agent.systemd_unit import UNIT_DIR, UNIT_NAME, dropin_path, render_dropin, write_dropin
from vitals_agent.commands._options import (
    add_action,
    add_actions,
    add_config_option,
    config_path,
)
from vitals_agent.config.filesystem import local_paths
from vitals_agent.config.schema import load_config
from vitals_agent.errors import VitalsAgentError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ssub = add_actions(sub, "service")

    s = add_action(
        ssub,
        "sync-unit",
        cmd_sync_unit,
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
    _register_windows(ssub)


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


# ------------------------------------------------------------------------------------------ Windows


def _register_windows(ssub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = add_action(
        ssub, "install", cmd_install, help="install the Windows service (automatic start, restart on failure)"
    )
    a.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"configuration file (default: {host.default_config_file()})",
    )
    a.add_argument(
        "--account",
        metavar="DOMAIN\\USER",
        help="run as this account instead of NT AUTHORITY\\LocalService (password: "
        "$VITALS_AGENT_SERVICE_PASSWORD, else asked)",
    )

    add_action(ssub, "remove", cmd_remove, help="stop and remove the Windows service (data is kept)")
    a = add_action(ssub, "start", cmd_start, help="start the service and wait until it runs")
    a.add_argument("--timeout", type=float, default=30.0, metavar="S")
    a = add_action(ssub, "stop", cmd_stop, help="stop the service and wait until it has stopped")
    a.add_argument("--timeout", type=float, default=10.0, metavar="S")
    add_action(ssub, "reload", cmd_reload, help="ask the running service to read its configuration again")
    add_action(ssub, "status", cmd_status, help="the service's state, start type, account and command")
    a = add_action(ssub, "host", cmd_host, help=argparse.SUPPRESS)  # run by the service control manager
    a.add_argument("--config", type=Path, default=None)


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line)


async def cmd_install(args: argparse.Namespace) -> int:
    from vitals_agent.agent.paths import data_dir
    from vitals_agent.config.schema import load_config
    from vitals_agent.errors import ConfigError
    from vitals_agent.host import winservice

    config_path: Path = (args.config or host.default_config_file()).absolute()
    try:
        directory = data_dir(load_config(config_path), create=False)
    except (ConfigError, OSError):
        directory = host.default_data_dir()  # fix the config later; the service refuses to start until then
    password = None
    if args.account and host.WINDOWS:
        password = os.environ.get(winservice.PASSWORD_ENV)
        if password is None:
            if not sys.stdin.isatty():
                raise host.PlatformError(f"--account needs a password: set {winservice.PASSWORD_ENV}")
            password = getpass.getpass(f"password for {args.account}: ")
    _print(winservice.install(config_path, directory, args.account, password))
    return 0


async def cmd_remove(args: argparse.Namespace) -> int:
    from vitals_agent.host import winservice

    _print(winservice.remove())
    return 0


async def cmd_start(args: argparse.Namespace) -> int:
    from vitals_agent.host import winservice

    _print(winservice.start(args.timeout))
    return 0


async def cmd_stop(args: argparse.Namespace) -> int:
    from vitals_agent.host import winservice

    _print(winservice.stop(args.timeout))
    return 0


async def cmd_reload(args: argparse.Namespace) -> int:
    from vitals_agent.host import winservice

    _print(winservice.reload())
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    from vitals_agent.host import winservice

    state = winservice.status()
    _print(state.lines())
    return 0 if state.state == "running" else 3  # 3: "not running", as LSB status commands say


async def cmd_host(args: argparse.Namespace) -> int:
    from vitals_agent.host import winservice

    return winservice.host_service((args.config or host.default_config_file()).absolute(), _run_in_service)


def _run_in_service(svc: Any) -> int:
    """The agent on the Windows service's thread (called by :mod:`vitals_agent.host.winservice`): its own
    event loop, logging to ``data_dir\\logs\\agent.log``, readiness reported to the service manager, and
    started / stopped / fatal lines in the event log (no patient data). The configuration is the one
    ``run`` takes (with ``[agent] config_source``: the central bundle over the local file, else the last
    good one), read again on the service's reload control. Returns the exit code."""
    from vitals_agent.agent.config_source import ConfigSource
    from vitals_agent.agent.paths import resolve_data_dir
    from vitals_agent.agent.service import AgentService, startup_config
    from vitals_agent.config.schema import local_keys, read_document
    from vitals_agent.errors import ConfigError
    from vitals_agent.host import winservice
    from vitals_agent.logs import setup_logging

    ws: Any = winservice  # the Windows-only helpers (event_log, open_log) exist only there
    config_path = svc.config_path or host.default_config_file()

    def refused(exc: Exception) -> int:
        ws.event_log("error", f"not started: configuration {config_path}: {exc} (fix it, then start again)")
        return int(ws.EXIT_CONFIG)

    try:  # the data folder (for the log) from the local file: with a source, it may hold little more
        local = local_keys(read_document(config_path), base_dir=config_path.absolute().parent)
        directory = resolve_data_dir(local.data_dir)
    except (ConfigError, VitalsAgentError, OSError) as exc:
        return refused(exc)
    log_stream = ws.open_log(directory / "logs")
    setup_logging("info", stream=log_stream, json=True)
    source = ConfigSource(config_path)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    remove = host.readiness.add_listener(svc.ready)

    async def main() -> int:
        svc._stop = asyncio.Event()
        svc._loop = asyncio.get_running_loop()
        if svc._stop_requested.is_set():
            return 0
        try:
            pulled = await startup_config(source)
        except (ConfigError, OSError) as exc:
            return refused(exc)
        setup_logging(pulled.config.agent.log_level, stream=log_stream, json=True)
        try:
            service = AgentService(pulled.config, source=source, pulled=pulled)
        except (VitalsAgentError, OSError) as exc:
            ws.event_log("error", f"not started: {exc}")
            return int(ws.EXIT_CONFIG)
        svc._reload = service.request_reload
        ws.event_log("info", f"started: {len(service.runtimes)} devices, data in {service.data_dir}")
        return await service.run(svc._stop)

    try:
        code = loop.run_until_complete(main())
    finally:
        remove()
        svc._loop = None
        svc._reload = None
        loop.close()
    if code == 0:
        ws.event_log("info", "stopped")
    log_stream.flush()
    return code
