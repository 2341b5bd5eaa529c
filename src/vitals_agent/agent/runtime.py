"""The agent's side of a device: what a transport talks to (:class:`DeviceRuntime`), and its status.

A device's ``state`` in status is ``connected``, ``disconnected`` or ``silent``: the link is up (a serial
port open, a BLE link) but nothing has come from the device for ``silent_after_seconds`` (the device key,
else its driver's default; :meth:`DeviceConfig.silence_limit`). Silence is measured on the monotonic clock
from the last byte the transport delivered (:meth:`DeviceRuntimeImpl.heard`), the last decoded event or
failure, or the opening of the link, whichever is latest. The alert rule ``device_silent`` reads the same
state and the same monotonic age (:meth:`DeviceRuntimeImpl.quiet_seconds`), not a notion of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, asdict, dataclass, field
from datetime import datetime
from typing import Any

import structlog

from vitals_agent import log_events as ev
from vitals_agent.agent.clock import span
from vitals_agent.config.schema import DeviceConfig
from vitals_agent.drivers.base import DecodeContext, DecodeFailure, DeviceStateStore, Driver
from vitals_agent.errors import OverlongError, TransportError
from vitals_agent.models import DeviceEvent, DeviceIdentity, DeviceStatusEvent, Reading

log = structlog.get_logger(__name__)

HEX_LOG_BYTES = 4096  # of a failed frame or discarded line, logged in hex at DEBUG (a decoder keeps no more)


@dataclass
class DeviceStatus:
    """What the status page and ``vitals-agent status`` show for one device."""

    id: str
    driver: str
    connected: bool = False
    detail: str = ""
    last_seen: datetime | None = None
    last_reading_at: datetime | None = None
    last_reading: dict[str, str] = field(default_factory=dict)  # metric -> "value unit" (no patient data)
    readings: int = 0
    messages: int = 0
    decode_failures: int = 0
    discarded_lines: int = 0  # overlong lines/packets discarded whole (also counted in decode_failures)
    link_failures: int = 0
    battery_percent: int | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    # transport events by name (no patient data), e.g. EKG folders: files_failed, files_skipped
    counters: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["last_seen"] = self.last_seen.isoformat() if self.last_seen else None
        out["last_reading_at"] = self.last_reading_at.isoformat() if self.last_reading_at else None
        out["counters"] = dict(sorted(self.counters.items()))
        return out


CONNECTED = "connected"
DISCONNECTED = "disconnected"
SILENT = "silent"


@dataclass(eq=False)
class DeviceRuntimeImpl:
    """Implements :class:`vitals_agent.drivers.base.DeviceRuntime` for one configured device.

    ``mono`` is the monotonic clock silence is measured on (the service passes its :class:`Clock`'s)."""

    config: DeviceConfig
    driver: Driver[Any]
    ctx: DecodeContext
    state: DeviceStateStore
    sink: Callable[[DeviceRuntimeImpl, DeviceEvent], Awaitable[None]]
    _: KW_ONLY
    mono: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.identity = self.ctx.device
        self.status = DeviceStatus(id=self.config.id, driver=self.config.driver)
        self._log = log.bind(device=self.config.id, driver=self.config.driver)
        self.on_connected: list[Callable[[], None]] = []
        self._inflight: set[asyncio.Future[None]] = set()
        self.silent_after = self.config.silence_limit()
        self._heard_at = self.mono()  # the last sign of the device (or of the agent starting to look for it)
        self._silence_logged = False
        self.transport: object | None = None  # the link of the moment (set by the supervisor)

    # --- DeviceRuntime protocol -------------------------------------------------------------------
    @property
    def device_id(self) -> str:
        return self.config.id

    @property
    def settings(self) -> dict[str, Any]:
        return self.config.settings()

    @property
    def log(self) -> Any:
        return self._log

    async def emit(self, event: DeviceEvent) -> None:
        self.heard(0)
        self.status.last_seen = self.ctx.now()
        if isinstance(event, DeviceStatusEvent):
            if event.battery_percent is not None:
                self.status.battery_percent = event.battery_percent
            if event.identity is not None:
                self.learn_identity(event.identity)
        if isinstance(event, Reading):
            self.status.readings += 1
            event = event.with_updates(device=self.identity.merged(event.device))
            self.learn_identity(event.device)
        # Shielded: a device stopped meanwhile (a reload, the agent stopping) does not interrupt a reading
        # on its way into the outbox; :meth:`drain` waits for those.
        task = asyncio.ensure_future(self.sink(self, event))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        await asyncio.shield(task)

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for events already handed to the pipeline."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout)

    async def start_measurement(self) -> None:
        """Write the driver's start command to the open link. Raises :class:`TransportError` (one line)
        when the driver cannot start a measurement or the link is not open."""
        command = self.driver.start_command
        write = getattr(self.transport, "write", None)
        if command is None or write is None:
            raise TransportError(f"{self.config.driver} cannot be told to start a measurement")
        await write(command)

    def decode_failed(self, failure: DecodeFailure) -> None:
        self.heard(0)
        self.status.decode_failures += 1
        if isinstance(failure.error, OverlongError):
            self.status.discarded_lines += 1
        self.status.last_seen = self.ctx.now()
        # The bytes may be anything the device sent (a wristband: patient data); hex at DEBUG only.
        self._log.debug(
            ev.DEVICE_DECODE_FAILED,
            error=str(failure.error),
            kind=type(failure.error).__name__,
            hex=failure.data[:HEX_LOG_BYTES].hex(),
            bytes=len(failure.data),
            count=self.status.decode_failures,
        )

    def set_connected(self, connected: bool, detail: str = "") -> None:
        if connected and not self.status.connected:
            self._log.info(ev.DEVICE_CONNECTED, detail=detail)
        elif not connected and self.status.connected:
            self._log.info(ev.DEVICE_DISCONNECTED, detail=detail)
        self.status.connected = connected
        self.status.detail = detail
        if connected:
            self.heard(0)  # silence counts from the opening of the link
            self.status.last_seen = self.ctx.now()
            for hook in self.on_connected:
                hook()

    def count(self, key: str, n: int = 1) -> None:
        self.status.counters[key] = self.status.counters.get(key, 0) + n

    def heard(self, n: int) -> None:
        self._heard_at = self.mono()
        if self._silence_logged:
            self._silence_logged = False
            self._log.info(ev.DEVICE_TALKING_AGAIN)

    # --- silence ----------------------------------------------------------------------------------
    def quiet_seconds(self, mono: float | None = None) -> float:
        """Seconds since the device was last heard from, or since the link opened, or since the agent
        started looking for it (monotonic)."""
        return max(0.0, (self.mono() if mono is None else mono) - self._heard_at)

    def link_state(self, mono: float | None = None) -> str:
        """``connected``, ``disconnected``, or ``silent`` (link up, nothing for ``silent_after``)."""
        if not self.status.connected:
            return DISCONNECTED
        if self.silent_after is not None and self.quiet_seconds(mono) >= self.silent_after:
            return SILENT
        return CONNECTED

    def check_silence(self) -> None:
        """Log the start of a silence once (INFO, no patient data); :meth:`heard` logs its end."""
        if not self._silence_logged and self.link_state() == SILENT:
            self._silence_logged = True
            self._log.info(
                ev.DEVICE_SILENT, quiet_seconds=round(self.quiet_seconds()), silent_after=self.silent_after
            )

    def snapshot(self) -> dict[str, Any]:
        """:meth:`DeviceStatus.as_dict` with the device's ``state``, ``quiet_seconds`` and
        ``silent_after_seconds`` (the control API's ``DeviceSnapshot``)."""
        mono = self.mono()
        out = self.status.as_dict()
        state = self.link_state(mono)
        quiet = self.quiet_seconds(mono)
        out["state"] = state
        out["quiet_seconds"] = round(quiet, 1)
        out["silent_after_seconds"] = self.silent_after
        if state == SILENT:
            where = f"{self.status.detail} open, " if self.status.detail else ""
            out["detail"] = f"{where}nothing received for {span(quiet)}"
        return out

    # --- agent side -------------------------------------------------------------------------------
    def learn_identity(self, identity: DeviceIdentity) -> None:
        merged = self.identity.merged(identity)
        if merged != self.identity:
            self.identity = merged
            self.status.identity = {
                k: v for k, v in merged.model_dump().items() if v is not None and k != "id"
            }

    def record_sent(self, reading: Reading) -> None:
        self.status.messages += 1
        self.status.last_reading_at = reading.observed_at
        self.status.last_reading = {m.metric: f"{m.text_value()} {m.unit}" for m in reading.measurements}
