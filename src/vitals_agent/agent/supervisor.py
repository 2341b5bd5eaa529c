"""Keeps every device's link running: restart a failed transport with capped, jittered back-off.

The first failure in a row is logged at WARNING with its one-line reason; repeats of the same failure go
to DEBUG, so an unplugged device does not flood the journal. A link that stayed up for a while resets the
back-off.
"""

from __future__ import annotations

import asyncio
import random
import time

import structlog

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


class DeviceSupervisor:
    """Runs one device's transport until cancelled."""

    STABLE_AFTER = 30.0  # seconds a link must stay up before the back-off resets

    def __init__(self, runtime: DeviceRuntimeImpl, *, backoff_cap: float = 4.0) -> None:
        self.runtime = runtime
        self.backoff = Backoff(cap=backoff_cap)
        self._last_error: str | None = None

    async def run(self) -> None:
        rt = self.runtime
        cls = transport_class(rt.driver.transport)
        while True:
            started = time.monotonic()
            error: str | None = None
            try:
                await cls(rt).run()
                error = "link ended"
            except asyncio.CancelledError:
                rt.set_connected(False, "stopped")
                raise
            except TransportError as exc:
                error = str(exc) or type(exc).__name__
                if cls.routine_disconnect:
                    rt.set_connected(False, error)
                    log.debug("device link ended", device=rt.device_id, detail=error)
                    self.backoff.reset()
                    await asyncio.sleep(self.backoff.next())
                    continue
            except VitalsAgentError as exc:
                error = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug in a transport must not take the agent down
                error = f"{type(exc).__name__}: {exc}"
                log.exception("device task crashed; restarting", device=rt.device_id)
            rt.set_connected(False, error or "")
            rt.status.link_failures += 1
            if time.monotonic() - started > self.STABLE_AFTER:
                self.backoff.reset()
                self._last_error = None
            if error != self._last_error:
                log.warning("device unavailable; will retry", device=rt.device_id, error=error)
                self._last_error = error
            else:
                log.debug("device still unavailable", device=rt.device_id, error=error)
            await asyncio.sleep(self.backoff.next())

    def connected(self) -> None:
        self.backoff.reset()
        self._last_error = None
