"""Logging: structlog, JSON lines when stderr is not a terminal (journald, files), readable on a terminal.

Operational logs never carry patient data at INFO or above: events name devices, control ids and
counts. Message content is logged only through :func:`vitals_agent.redact.redact_message`, which keeps
the MSH header and segment names and removes every value that could identify a patient.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog

_STDLIB_HANDLER = "vitals-agent"
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


def setup_logging(level: str = "INFO", *, stream: TextIO | None = None, json: bool | None = None) -> None:
    """Configure structlog (and stdlib logging, so library warnings go the same way)."""
    out = stream if stream is not None else sys.stderr
    as_json = (not out.isatty()) if json is None else json
    numeric = _LEVELS.get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # stdlib logging: one handler of ours on the root logger, pointed at the newest stream (the Windows
    # service sets up logging twice: for the command line, then for its log file). Like basicConfig, it
    # leaves a root logger alone that someone else (an embedding program, pytest) has handlers on.
    root = logging.getLogger()
    ours = next((h for h in root.handlers if h.get_name() == _STDLIB_HANDLER), None)
    if ours is None and root.handlers:
        return
    if ours is None:
        ours = logging.StreamHandler(out)
        ours.set_name(_STDLIB_HANDLER)
        ours.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        root.addHandler(ours)
    else:
        cast("logging.StreamHandler[TextIO]", ours).setStream(out)
    root.setLevel(max(numeric, logging.WARNING))
