"""Command-line entry point: ``vitals-agent`` / ``python -m vitals_agent``.

Subcommands live in :mod:`vitals_agent.commands`, one module per group; each module's
``register(subparsers)`` adds its parsers and sets ``func`` to an ``async def handler(args) -> int``.
:func:`main` is the testable core (``await main([...])`` returns the exit code); :func:`run` is the
console script.

One error path for every command: a handler raises :class:`~vitals_agent.errors.VitalsAgentError` (or lets
an ``OSError`` from the file system through) and :func:`main` prints ``error: <one line>`` on stderr and
returns 1. ``run`` returns :data:`EXIT_CONFIG` instead for a configuration or data-directory problem, so the
systemd unit (``RestartPreventExitStatus=78``) does not restart into the same failure. A traceback means a
bug.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from vitals_agent import __version__, commands
from vitals_agent.commands import COMMANDS
from vitals_agent.commands._options import EXIT_CONFIG, EXIT_ERROR
from vitals_agent.errors import ConfigError, VitalsAgentError

__all__ = ["COMMANDS", "EXIT_CONFIG", "EXIT_ERROR", "build_parser", "main", "run"]

# Top-level help, grouped. A command missing here is listed under "other" (nothing is ever hidden).
COMMAND_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "run and service",
        ("run", "check-config", "status", "service", "config", "support-bundle", "audit", "demo"),
    ),
    ("devices", ("drivers", "ports", "scan", "pair", "nibp-start")),
    ("patient and review", ("patient", "clinician", "review", "manual")),
    ("delivery", ("outbox", "send-test", "interface-spec")),
    ("tools", ("decode", "simulate", "receive", "ecg-render")),
)


def _grouped_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> str:
    return _grouped({action.dest: action.help or "" for action in sub._choices_actions})


def _grouped(helps: dict[str, str]) -> str:
    width = max((len(name) for name in helps), default=10) + 2
    lines: list[str] = []
    grouped = {name for _, names in COMMAND_GROUPS for name in names}
    groups = [*COMMAND_GROUPS, ("other", tuple(sorted(set(helps) - grouped)))]
    for title, names in groups:
        present = [n for n in names if n in helps]
        if not present:
            continue
        lines.append(f"{title}:")
        for name in present:
            lines.append(f"  {name:<{width}}{helps[name]}")
        lines.append("")
    lines.append("`vitals-agent COMMAND --help` shows a command's options.")
    return "\n".join(lines)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser (every command module imported); ``only``: just that command's module, or none
    (``""``: top-level ``--help`` and ``--version``, from :data:`COMMANDS`)."""
    parser = argparse.ArgumentParser(
        prog="vitals-agent",
        description="Exam-room device integration: vital-sign devices to HL7 ORU^R01 (IHE PCD-01) over MLLP.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vitals-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="one of the commands below")
    sub.required = True
    if only is not None:
        if only:
            importlib.import_module(f"{commands.__name__}.{COMMANDS[only][0]}").register(sub)
        parser.epilog = _grouped({name: text for name, (_, text) in COMMANDS.items()})
        sub._choices_actions.clear()
        return parser
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(sub)
    parser.epilog = _grouped_commands(sub)
    sub._choices_actions.clear()  # the grouped list in the epilog replaces argparse's flat one
    return parser


def _status_for(args: argparse.Namespace, exc: VitalsAgentError) -> int:
    if isinstance(exc, ConfigError):
        status: int = getattr(args, "config_error_status", EXIT_ERROR)
        return status
    return EXIT_ERROR


def _os_error_line(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _command_in(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names when :data:`COMMANDS` knows it (``""``: none, e.g. ``--help``); None
    when it names something else (the whole parser then says what is wrong)."""
    first = next((a for a in argv if not a.startswith("-")), "")
    return first if first in COMMANDS or first == "" else None


async def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser(_command_in(args_list))
    args = parser.parse_args(args_list)
    from vitals_agent.logs import setup_logging  # structlog: not needed for --help

    # Tools print their own results; the library's INFO/DEBUG events would only repeat them (`run`,
    # `simulate` and `demo` set their own level).
    setup_logging("WARNING")
    try:
        code: int = await args.func(args)
    except VitalsAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _status_for(args, exc)
    except OSError as exc:  # the environment (a file, folder or port), not a bug: one line
        print(f"error: {_os_error_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code


def _ensure_std_streams() -> None:
    """A process started without standard handles has ``sys.stdin/stdout/stderr`` = None: a Windows
    service (the service control manager gives it none), ``pythonw``. Point them at the null device, so
    a print or the first logging setup cannot kill the process before it has a log of its own."""
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode, encoding="utf-8"))  # noqa: SIM115 - process-long


def run() -> None:
    _ensure_std_streams()
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
