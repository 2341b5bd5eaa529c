"""Command-line entry point: ``vitals-agent`` / ``python -m vitals_agent``.

Subcommands live in :mod:`vitals_agent.commands`, one module per group; each module's
``register(subparsers)`` adds its parsers and sets ``func`` to an ``async def handler(args) -> int``.
:func:`main` is the testable core (``await main([...])`` returns the exit code); :func:`run` is the
console script. Errors the agent expects are printed as one line; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from vitals_agent import __version__, commands
from vitals_agent.errors import VitalsAgentError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitals-agent",
        description="Exam-room device integration: vital-sign devices to HL7 ORU^R01 (IHE PCD-01) over MLLP.",
    )
    parser.add_argument("--version", action="version", version=f"vitals-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(sub)
    return parser


async def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        code: int = await args.func(args)
    except VitalsAgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def run() -> None:
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
