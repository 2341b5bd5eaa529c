"""Waiting on a condition instead of sleeping for an effect.

A test that needs something to have happened waits until it has (checked often, with a generous timeout),
never a fixed time: a sleep is either too short on a loaded CI machine or wasted time everywhere else.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Callable

import pytest

INTERVAL = 0.01  # seconds between checks


async def until(
    predicate: Callable[..., object],
    timeout: float = 10.0,
    what: str = "",
    interval: float = INTERVAL,
    detail: Callable[[], str] | None = None,
) -> None:
    """Return once ``predicate()`` is true; fail the test (naming ``what``, then ``detail()``, e.g. a
    process's last log lines) after ``timeout`` seconds. ``predicate`` may be a coroutine function (e.g. one
    that makes a transport poll once, then checks); it may raise to end the wait early (a process that
    exited will never get there)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(timeout, what or str(predicate), detail))
        await asyncio.sleep(interval)  # the poll interval of this wait on a condition


def until_sync(
    predicate: Callable[..., object],
    timeout: float = 10.0,
    what: str = "",
    detail: Callable[[], str] | None = None,
) -> None:
    """:func:`until` for code without an event loop (threads, subprocesses)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(timeout, what or str(predicate), detail))
        time.sleep(INTERVAL)  # the poll interval of this wait on a condition


def _timed_out(timeout: float, what: str, detail: Callable[[], str] | None) -> str:
    return f"timed out after {timeout} s waiting for {what}" + (f":\n{detail()}" if detail else "")


async def printed(
    capsys: pytest.CaptureFixture[str], pattern: str, timeout: float = 10.0
) -> tuple[re.Match[str], str]:
    """Wait until what the code under test printed matches ``pattern``; return the match and the output
    so far (read from ``capsys``, so the caller keeps reading where this stopped)."""
    out = ""
    found: re.Match[str] | None = None

    def seen() -> bool:
        nonlocal out, found
        out += capsys.readouterr().out
        found = re.search(pattern, out)
        return found is not None

    await until(seen, timeout, what=f"output matching {pattern!r}")
    assert found is not None
    return found, out
