"""Reusable helpers for serial driver and transport tests (any serial driver, not only Masimo).

* :class:`FakeRuntime` implements :class:`~vitals_agent.drivers.base.DeviceRuntime`: it records what a
  transport hands the agent (events, decode failures, connect/disconnect) and lets a test wait for it.
* :func:`pty_device` (fixture): a :class:`~vitals_agent.drivers.pty.PtyDevice` plugged in at
  ``tmp_path/"ttyDEV"``; the agent side opens ``pty_device.link``.
* :func:`fixed_ctx`: a deterministic :class:`DecodeContext` (fixed host clock and device time zone).
* :func:`serial_driver`: a driver instance configured for a port path.
* :func:`start` / :func:`finish`: run ``transport.run()`` as a task and collect how it ended.

Use in a test module::

    from tests.serial_helpers import FakeRuntime, fixed_ctx, pty_device, serial_driver  # noqa: F401
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import pytest
import structlog

from vitals_agent.drivers.base import DecodeContext, DecodeFailure, Driver, Transport, driver_class
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.models import DeviceEvent, DeviceIdentity, Reading

FIXED_NOW = datetime(2026, 3, 11, 14, 0, 0, tzinfo=UTC)


def fixed_ctx(
    device_id: str = "dev-1",
    *,
    now: datetime = FIXED_NOW,
    tz: tzinfo = UTC,
    options: Any = None,
) -> DecodeContext:
    """A context whose host clock always says ``now``."""
    return DecodeContext(device=DeviceIdentity(id=device_id), tz=tz, now=lambda: now, options=options)


def serial_driver(name: str, port: str | Path | None = None, **options: Any) -> Driver:
    """``name``'s driver configured with ``port`` (validated by the driver's options model)."""
    cls = driver_class(name)
    if port is not None:
        options["port"] = str(port)
    return cls(cls.options_model.model_validate(options))


class _State:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def set(self, key: str, value: str) -> None:
        self.data[key] = value


class FakeRuntime:
    """A :class:`DeviceRuntime` that records everything in lists. ``emit_delay`` simulates a slow outbox."""

    def __init__(
        self,
        driver: Driver,
        *,
        device_id: str = "dev-1",
        ctx: DecodeContext | None = None,
        settings: dict[str, Any] | None = None,
        emit_delay: float = 0.0,
    ) -> None:
        self._driver = driver
        self._device_id = device_id
        self._ctx = ctx or DecodeContext(device=DeviceIdentity(id=device_id), options=driver.options)
        self._settings = (
            settings if settings is not None else {"id": device_id, **driver.options.model_dump()}
        )
        self._state = _State()
        self._log = structlog.get_logger("tests.fake_runtime").bind(device=device_id)
        self.emit_delay = emit_delay
        self.events: list[DeviceEvent] = []
        self.failures: list[DecodeFailure] = []
        self.counters: dict[str, int] = {}
        self.connections: list[tuple[bool, str]] = []  # every set_connected call, in order
        self.connected = False
        self._changed = asyncio.Event()

    # ---- DeviceRuntime
    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def driver(self) -> Driver:
        return self._driver

    @property
    def settings(self) -> dict[str, Any]:
        return self._settings

    @property
    def ctx(self) -> DecodeContext:
        return self._ctx

    @property
    def state(self) -> _State:
        return self._state

    @property
    def log(self) -> Any:
        return self._log

    async def emit(self, event: DeviceEvent) -> None:
        if self.emit_delay:
            await asyncio.sleep(self.emit_delay)
        self.events.append(event)
        self._changed.set()

    def decode_failed(self, failure: DecodeFailure) -> None:
        self.failures.append(failure)
        self._changed.set()

    def set_connected(self, connected: bool, detail: str = "") -> None:
        self.connected = connected
        self.connections.append((connected, detail))
        self._changed.set()

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    # ---- test conveniences
    @property
    def readings(self) -> list[Reading]:
        return [e for e in self.events if isinstance(e, Reading)]

    async def wait_until(self, condition: Callable[[FakeRuntime], bool], timeout: float = 5.0) -> None:
        """Wait until ``condition(self)`` holds (checked after every recorded change)."""

        async def _wait() -> None:
            while not condition(self):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)

    async def wait_readings(self, n: int, timeout: float = 5.0) -> list[Reading]:
        await self.wait_until(lambda rt: len(rt.readings) >= n, timeout)
        return self.readings


def start(transport: Transport) -> asyncio.Task[None]:
    """Run ``transport.run()`` in the background."""
    return asyncio.create_task(transport.run())


async def finish(task: asyncio.Task[None], timeout: float = 5.0) -> BaseException | None:
    """Wait for a transport task to end by itself; return the exception it raised (None if it returned)."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except BaseException as exc:  # the test inspects it
        if isinstance(exc, TimeoutError) and not task.done():
            raise
        return exc
    return None


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel a transport task and wait for it to clean up."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


@pytest.fixture
def pty_device(tmp_path: Path) -> Iterator[PtyDevice]:
    """A simulated device plugged in at ``tmp_path/'ttyDEV'`` (closed and unlinked afterwards)."""
    device = PtyDevice(tmp_path / "ttyDEV").open()
    try:
        yield device
    finally:
        device.close()
