"""The one fake :class:`~vitals_agent.drivers.base.DeviceRuntime`, and helpers to run a transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import structlog

from tests.kit.clock import T0
from vitals_agent.drivers.base import (
    DecodeContext,
    DecodeFailure,
    Driver,
    Transport,
    driver_class,
    utc_now,
)
from vitals_agent.errors import TransportError
from vitals_agent.models import DeviceEvent, DeviceIdentity, DeviceStatusEvent, Reading


def fixed_ctx(
    device_id: str = "dev-1", *, now: datetime | Callable[[], datetime] = T0, tz: tzinfo = UTC
) -> DecodeContext:
    """A decode context whose host clock says ``now`` (a datetime, or a clock such as FakeClock)."""
    clock = now if callable(now) else (lambda: now)
    return DecodeContext(device=DeviceIdentity(id=device_id), tz=tz, now=clock)


def make_driver(name: str, port: str | Path | None = None, **options: Any) -> Driver[Any]:
    """``name``'s driver with ``options`` (validated by its options model); ``port`` for serial drivers."""
    cls = driver_class(name)
    if port is not None:
        options["port"] = str(port)
    if "folder" in cls.options_model.model_fields:
        options.setdefault("folder", "/nonexistent/ecg-share")
    return cls(cls.options_model.model_validate(options))


class MemoryState:
    """The durable per-device store, in memory. Share one between runtimes to model an agent restart."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def set(self, key: str, value: str) -> None:
        self.data[key] = value


class FakeRuntime:
    """Records what a transport hands the agent, and lets a test wait for it.

    ``events`` (every emitted event, in order; pass a list to share it between runtimes, e.g. across a
    restart), ``failures``, ``counters``, ``connections`` (every ``set_connected`` call), ``connected``
    (the last state) and ``bytes_heard`` (the sum of ``heard()``). ``emit_delay`` simulates a slow outbox;
    ``after_emit`` runs after each accepted event (a test raises there to simulate a crash right after the
    durable hand-over).
    """

    def __init__(
        self,
        driver: Driver[Any],
        *,
        device_id: str = "dev-1",
        ctx: DecodeContext | None = None,
        now: Callable[[], datetime] | None = None,
        tz: tzinfo = UTC,
        state: MemoryState | None = None,
        settings: dict[str, Any] | None = None,
        events: list[DeviceEvent] | None = None,
        emit_delay: float = 0.0,
        after_emit: Callable[[DeviceEvent], None] | None = None,
    ) -> None:
        self._driver = driver
        self._ctx = ctx or DecodeContext(device=DeviceIdentity(id=device_id), tz=tz, now=now or utc_now)
        self._settings = settings
        self._state = state if state is not None else MemoryState()
        self._log = structlog.get_logger("tests.fake_runtime").bind(device=self.device_id)
        self.emit_delay = emit_delay
        self.after_emit = after_emit
        self.events: list[DeviceEvent] = events if events is not None else []
        self.failures: list[DecodeFailure] = []
        self.counters: dict[str, int] = {}
        self.connections: list[tuple[bool, str]] = []
        self.connected = False
        self.bytes_heard = 0  # what the transport reported with heard()
        self._changed = asyncio.Event()

    # ---- DeviceRuntime
    @property
    def device_id(self) -> str:
        return self._ctx.device.id

    @property
    def driver(self) -> Driver[Any]:
        return self._driver

    @property
    def settings(self) -> dict[str, Any]:
        if self._settings is not None:
            return self._settings
        return {"id": self.device_id, "driver": self._driver.name, **self._driver.options.model_dump()}

    @property
    def ctx(self) -> DecodeContext:
        return self._ctx

    @property
    def state(self) -> MemoryState:
        return self._state

    @property
    def log(self) -> Any:
        return self._log

    async def emit(self, event: DeviceEvent) -> None:
        if self.emit_delay:
            await asyncio.sleep(self.emit_delay)  # a slow outbox, not a wait for an effect
        self.events.append(event)
        self._changed.set()
        if self.after_emit is not None:
            self.after_emit(event)

    def decode_failed(self, failure: DecodeFailure) -> None:
        self.failures.append(failure)
        self._changed.set()

    def set_connected(self, connected: bool, detail: str = "") -> None:
        self.connected = connected
        self.connections.append((connected, detail))
        self._changed.set()

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n
        self._changed.set()

    def heard(self, n: int) -> None:
        self.bytes_heard += n

    # ---- test conveniences
    @property
    def readings(self) -> list[Reading]:
        return [e for e in self.events if isinstance(e, Reading)]

    @property
    def status(self) -> list[DeviceStatusEvent]:
        return [e for e in self.events if isinstance(e, DeviceStatusEvent)]

    async def wait_until(self, condition: Callable[[FakeRuntime], object], timeout: float = 10.0) -> None:
        """Wait until ``condition(self)`` holds (checked after every recorded change)."""

        async def _wait() -> None:
            while not condition(self):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)

    async def wait_readings(self, n: int, timeout: float = 10.0) -> list[Reading]:
        await self.wait_until(lambda rt: len(rt.readings) >= n, timeout)
        return self.readings


def start(transport: Transport) -> asyncio.Task[None]:
    """Run ``transport.run()`` in the background."""
    return asyncio.create_task(transport.run())


async def finish(task: asyncio.Task[None], timeout: float = 10.0) -> BaseException | None:
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


async def supervise(
    transport: Transport, retry: float = 0.05, failures: list[BaseException] | None = None
) -> None:
    """A minimal stand-in for the agent's supervisor: ``run()`` again ``retry`` seconds after every link
    failure (:class:`TransportError`), each one appended to ``failures``."""
    while True:
        try:
            await transport.run()
        except TransportError as exc:
            if failures is not None:
                failures.append(exc)
            await asyncio.sleep(retry)  # the supervisor's back-off


@contextlib.asynccontextmanager
async def running(transport: Transport) -> AsyncIterator[asyncio.Task[None]]:
    """``async with running(transport) as task:`` runs it for the block, then stops it."""
    task = start(transport)
    try:
        yield task
    finally:
        await stop(task)
