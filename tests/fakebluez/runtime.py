"""A small in-memory :class:`~vitals_agent.drivers.base.DeviceRuntime` for transport tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import structlog

from vitals_agent.drivers.base import DecodeContext, DecodeFailure, Driver
from vitals_agent.models import DeviceEvent, DeviceIdentity, DeviceStatusEvent, Reading


class MemoryState:
    """The durable per-device store, in memory. Share one between runtimes to model an agent restart."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def set(self, key: str, value: str) -> None:
        self.data[key] = value


class FixedClock:
    """The host clock as the test wants it: ``now()`` returns ``at`` (aware, UTC)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@dataclass
class FakeRuntime:
    """Records what a transport hands the agent."""

    driver: Driver
    device_id: str = "cuff-1"
    state: MemoryState = field(default_factory=MemoryState)
    tz: tzinfo = UTC
    clock: Any = None
    events: list[DeviceEvent] = field(default_factory=list)
    failures: list[DecodeFailure] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    connected: list[tuple[bool, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ctx = DecodeContext(
            device=DeviceIdentity(id=self.device_id),
            tz=self.tz,
            now=self.clock or (lambda: datetime.now(UTC)),
        )
        self._changed = asyncio.Event()
        self.log = structlog.get_logger("tests.fakeruntime").bind(device=self.device_id)

    @property
    def settings(self) -> dict[str, Any]:
        return {"id": self.device_id, "driver": self.driver.name, **self.driver.options.model_dump()}

    @property
    def ctx(self) -> DecodeContext:
        return self._ctx

    async def emit(self, event: DeviceEvent) -> None:
        self.events.append(event)

    def decode_failed(self, failure: DecodeFailure) -> None:
        self.failures.append(failure)

    def set_connected(self, connected: bool, detail: str = "") -> None:
        self.connected.append((connected, detail))

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    @property
    def readings(self) -> list[Reading]:
        return [e for e in self.events if isinstance(e, Reading)]

    @property
    def status(self) -> list[DeviceStatusEvent]:
        return [e for e in self.events if isinstance(e, DeviceStatusEvent)]
