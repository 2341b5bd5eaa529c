"""Options every command shares, so ``--config`` means the same thing everywhere, and the way a command
declares its parser (:func:`add_command`, :func:`add_actions`, :func:`add_action`).

``--config FILE`` / ``-c FILE``: the agent's TOML configuration. When it is not given, the command uses
``$VITALS_AGENT_CONFIG``, else the installed configuration (``/etc/vitals-agent/agent.toml``) when it
exists, so on an installed workstation ``sudo -u vitals-agent vitals-agent status`` needs no option.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from vitals_agent import host
from vitals_agent.commands import COMMANDS
from vitals_agent.errors import ConfigError

if TYPE_CHECKING:
    from vitals_agent.config.schema import Config

ENV_CONFIG = "VITALS_AGENT_CONFIG"

EXIT_ERROR = 1  # any command: a one-line `error: ...` on stderr
EXIT_CONFIG = 78  # sysexits.h EX_CONFIG: `run` cannot start because of its configuration or data_dir

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace], Awaitable[int]]  # async def cmd_x(args) -> exit code


def add_command(sub: Subcommands, name: str, func: Handler) -> argparse.ArgumentParser:
    """The parser of ``vitals-agent NAME``, with its help from :data:`COMMANDS`; ``func`` runs it."""
    return add_action(sub, name, func, help=COMMANDS[name][1])


def add_actions(sub: Subcommands, name: str) -> Subcommands:
    """``vitals-agent NAME ACTION``: a command made of actions (``patient set``, ``patient show`` ...)."""
    parser = sub.add_parser(name, help=COMMANDS[name][1])
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)


def add_action(group: Subcommands, name: str, func: Handler, *, help: str) -> argparse.ArgumentParser:
    """The parser of an action (``vitals-agent patient NAME``); ``func`` runs it."""
    parser = group.add_parser(name, help=help)
    parser.set_defaults(func=func)
    return parser


def installed_config_path() -> Path:
    """Where ``deploy/install.sh`` puts the configuration on this platform."""
    return host.default_config_file()


def add_config_option(parser: argparse.ArgumentParser, *, help: str | None = None) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        help=help
        or f"the agent's TOML configuration (default: ${ENV_CONFIG}, else {installed_config_path()})",
    )


def config_path(args: argparse.Namespace, *, required: bool = True) -> Path | None:
    """The configuration file the user meant: ``--config``, ``$VITALS_AGENT_CONFIG``, the installed one.

    Raises :class:`ConfigError` (one line) when ``required`` and there is none.
    """
    given: Path | None = getattr(args, "config", None)
    if given is not None:
        return given
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    installed = installed_config_path()
    if installed.exists():
        return installed
    if required:
        raise ConfigError(
            [("", f"no configuration given: use --config FILE (or install one at {installed})")]
        )
    return None


def config_from(args: argparse.Namespace) -> Config:
    """Load and validate the configuration the command was given (raises ConfigError). With ``[agent]
    config_source`` that is what the agent runs on without fetching: the last good central bundle merged
    over the local file."""
    from vitals_agent.config.schema import load_config, local_keys, read_document  # pydantic: only here

    path = config_path(args)
    assert path is not None
    doc = read_document(path)
    if local_keys(doc, base_dir=path.absolute().parent).config_source is None:
        return load_config(path)
    from vitals_agent.agent.config_source import ConfigSource

    source = ConfigSource(path)
    return source.fallback(source.data_dir()).config
