"""Keeps every device's link running: restart a failed transport with capped, jittered back-off.

The first failure in a row is logged at WARNING with its one-line reason; repeats of the same failure go
to DEBUG, so an unplugged device does not flood the journal. A link that stayed up for a while resets the
back-off.

A transport that *crashes* (an exception that is not one of the agent's own errors: a bug, or input that
hits one) is restarted on a separate, much longer back-off (1 s doubling to 5 min) that a connect does not
reset — only a run that stays up ``STABLE_AFTER`` seconds does. Its traceback is logged once per streak
(ERROR), later crashes at DEBUG; ``status`` shows the device as crashed, how often, and when it retries, so
a crash loop (e.g. one EKG file that trips a bug) neither spins nor hides.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable

import structlog

from vitals_agent import log_events as ev
from vitals_agent.agent.runtime import DeviceRuntimeImpl
from vitals_agent.drivers.base import transport_class
from vitals_agent.errors import TransportError, VitalsAgentError

log = structlog.get_logger(__name__)


class Backoff:
    """Capped exponential back-off with jitter (full jitter on the upper half)."""

    def __init__(self, initial: float = 0.25, cap: float = 4.0, factor: float = 2.0) -> None:
        self.initial, self.cap, self.factor = initial, cap, factor
        self.attempt = 0

    def next(self) -> float:
        base = min(self.cap, self.initial * self.factor**self.attempt)
        self.attempt += 1
        return base / 2 + random.random() * base / 2

    def reset(self) -> None:
        self.attempt = 0


def _innermost(exc: BaseException) -> str:
    """``module.py:LINE`` of the frame that raised ``exc`` (no message text: it may hold device data)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


class DeviceSupervisor:
    """Runs one device's transport until cancelled."""

    STABLE_AFTER = 30.0  # seconds a link must stay up before the back-off resets
    CRASH_BACKOFF_INITIAL = 1.0
    CRASH_BACKOFF_CAP = 300.0

    def __init__(self, runtime: DeviceRuntimeImpl, *, backoff_cap: float = 4.0) -> None:
        self.runtime = runtime
        self.backoff = Backoff(cap=backoff_cap)
        self.crash_backoff = Backoff(
            initial=self.CRASH_BACKOFF_INITIAL, cap=max(backoff_cap, self.CRASH_BACKOFF_CAP)
        )
        self.crash_streak = 0  # crashes in a row (reset by a run that stays up STABLE_AFTER seconds)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # the back-off wait (tests replace it)
        self._last_error: str | None = None

    async def run(self) -> None:
        rt = self.runtime
        cls = transport_class(rt.driver.transport)
        while True:
            started = time.monotonic()
            error: str | None = None
            try:
                transport = cls(rt)
                rt.transport = transport  # what the agent writes device commands through
                await transport.run()
                error = "link ended"
            except asyncio.CancelledError:
                rt.set_connected(False, "stopped")
                raise
            except TransportError as exc:
                error = str(exc) or type(exc).__name__
                if cls.routine_disconnect:
                    rt.set_connected(False, error)
                    log.debug(ev.DEVICE_LINK_ENDED, device=rt.device_id, detail=error)
                    self.backoff.reset()
                    await self.sleep(self.backoff.next())
                    continue
            except VitalsAgentError as exc:
                error = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug in a transport must not take the agent down
                stable = time.monotonic() - started > self.STABLE_AFTER
                await self.sleep(self._crashed(exc, stable))
                continue
            rt.set_connected(False, error or "")
            rt.status.link_failures += 1
            if time.monotonic() - started > self.STABLE_AFTER:
                self.backoff.reset()
                self._last_error = None
                self._end_crash_streak()
            if error != self._last_error:
                log.warning(ev.DEVICE_UNAVAILABLE, device=rt.device_id, error=error)
                self._last_error = error
            else:
                log.debug(ev.DEVICE_STILL_UNAVAILABLE, device=rt.device_id, error=error)
            await self.sleep(self.backoff.next())

    def _crashed(self, exc: Exception, stable: bool) -> float:
        """Count and report a crash; returns how long to wait before the next start."""
        rt = self.runtime
        if stable:
            self._end_crash_streak()
        self.crash_streak += 1
        delay = self.crash_backoff.next()
        # The exception's text may quote device data (a file name, a field): type and place only above DEBUG.
        where = _innermost(exc)
        rt.count("crashes")
        rt.status.link_failures += 1
        streak = f"{self.crash_streak} in a row, restart in {delay:.0f} s"
        rt.set_connected(False, f"crashed ({type(exc).__name__} at {where}); {streak}")
        level = log.error if self.crash_streak == 1 else log.debug
        level(
            "device task crashed; restarting with back-off",
            device=rt.device_id,
            error=type(exc).__name__,
            at=where,
            streak=self.crash_streak,
            retry_in=round(delay, 1),
        )
        log.debug(ev.DEVICE_CRASH_TRACEBACK, device=rt.device_id, exc_info=exc)
        return delay

    def _end_crash_streak(self) -> None:
        if self.crash_streak:
            log.info(ev.DEVICE_STABLE_AGAIN, device=self.runtime.device_id)
        self.crash_streak = 0
        self.crash_backoff.reset()

    def connected(self) -> None:
        """A link came up: the link back-off starts again (a crash streak does not: see the module doc)."""
        self.backoff.reset()
        self._last_error = None
