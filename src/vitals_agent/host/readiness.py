"""Telling the service manager how the agent is doing: ready, stopping, still alive.

Linux: systemd's notify protocol (``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``; :mod:`.sdnotify`).
Windows: the service host registers a listener and turns "ready" into SERVICE_RUNNING and "stopping"
into SERVICE_STOP_PENDING. Both are no-ops when nobody listens (a console run).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

Listener = Callable[[str, str], None]  # (event: "ready" | "stopping" | "watchdog", status text)

_listeners: list[Listener] = []


def add_listener(listener: Listener) -> Callable[[], None]:
    """Call ``listener(event, status)`` on each notification; returns its remover."""
    _listeners.append(listener)

    def remove() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return remove


def _emit(event: str, status: str) -> None:
    for listener in list(_listeners):
        listener(event, status)


def _systemd(state: str) -> None:
    if sys.platform == "linux":
        from vitals_agent.host import sdnotify

        sdnotify.notify(state)


def ready(status: str) -> None:
    """The agent is up (devices started, sender running)."""
    _systemd("READY=1")
    _systemd(f"STATUS={status}")
    _emit("ready", status)


def status(text: str) -> None:
    """A one-line state for the service manager (``systemctl status``)."""
    _systemd(f"STATUS={text}")
    _emit("status", text)


def stopping() -> None:
    """The agent is shutting down (it will be done within the stop deadline)."""
    _systemd("STOPPING=1")
    _emit("stopping", "")


def watchdog_interval() -> float | None:
    """How often to call :func:`watchdog` (systemd's WatchdogSec / 2), or None when nobody watches."""
    if sys.platform == "linux":
        from vitals_agent.host import sdnotify

        return sdnotify.watchdog_interval()
    return None


def watchdog() -> None:
    _systemd("WATCHDOG=1")
    _emit("watchdog", "")
