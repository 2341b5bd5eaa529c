"""Stop requests: how an operator or the system asks the running agent to stop.

POSIX: SIGTERM (systemd, kill) and SIGINT (Ctrl-C) through the event loop's signal handlers.
Windows console: Ctrl-C (SIGINT) and Ctrl-Break / console close (SIGBREAK); Python runs the handler in
the main thread and the proactor loop is woken through its wake-up socket, so the handler just sets the
event thread-safely. The Windows service sets the same event from its stop control
(:mod:`vitals_agent.host.winservice`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from types import FrameType


def install_stop_handlers(stop: asyncio.Event) -> Callable[[], None]:
    """Set ``stop`` on the platform's stop requests; returns a function that removes the handlers.
    Must run in the event loop's thread (the main thread for signals); elsewhere it does nothing."""
    loop = asyncio.get_running_loop()
    if sys.platform == "win32":
        previous: dict[int, object] = {}

        def handler(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(stop.set)

        for sig in (signal.SIGINT, signal.SIGBREAK):
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                previous[sig] = signal.signal(sig, handler)

        def restore_windows() -> None:
            for sig, old in previous.items():
                with contextlib.suppress(ValueError, OSError, TypeError):
                    signal.signal(sig, old)  # type: ignore[arg-type]

        return restore_windows

    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    def restore_posix() -> None:
        for sig in installed:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)

    return restore_posix


def install_reload_handler(reload: Callable[[], None]) -> Callable[[], None]:
    """Call ``reload`` on the platform's "read your configuration again" request: SIGHUP on POSIX
    (``systemctl reload``, ``kill -HUP``). Windows has no such signal: its service control handler calls
    the agent's ``request_reload`` itself (through ``loop.call_soon_threadsafe``). Returns a function that
    removes the handler."""
    loop = asyncio.get_running_loop()
    if sys.platform == "win32":
        return lambda: None
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, reload)

    def remove() -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)

    return remove
