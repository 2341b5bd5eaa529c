"""The "ble" transport: bleak (BlueZ on Linux) to a Bluetooth health device.

One :meth:`BleTransport.run` is one connection: find the device (by address, or by advertised-name
pattern plus the driver's service), connect, then do what the connection's
:class:`~vitals_agent.drivers.ble.session.BleSession` decides (subscribe, Device Information, clock,
RACP) and hand it every notification; the records it returns go to the agent exactly once. When the
link ends, records already received are processed and :class:`~vitals_agent.errors.TransportError` is
raised; the agent's supervisor reconnects with back-off. This module is the I/O (bleak); the decisions,
and what was already sent (kept per device in ``runtime.state``), are the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar

import structlog
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError, BleakGATTProtocolError

from vitals_agent import log_events as ev
from vitals_agent.drivers.base import DecodeFailure, DeviceRuntime, Transport, register_transport
from vitals_agent.drivers.ble import uuids as U
from vitals_agent.drivers.ble.address import same_address
from vitals_agent.drivers.ble.drivers import BleDriver, BleOptions
from vitals_agent.drivers.ble.session import (
    OK,
    Action,
    BleSession,
    Emit,
    Failed,
    Read,
    Result,
    Subscribe,
)
from vitals_agent.errors import DeviceNotFoundError, RefusedError, TransportError

log = structlog.get_logger(__name__)

_ERRORS = (BleakError, asyncio.TimeoutError, EOFError, OSError)


def _describe(options: BleOptions) -> str:
    return options.address or f"name ~ {options.name!r}"


DeviceFilter = Callable[[BLEDevice, AdvertisementData], bool]


class ScanHub:
    """One BlueZ discovery session shared by every transport of this process waiting for its device.

    BlueZ keeps one discovery session per D-Bus client: a second ``StartDiscovery`` from the same
    connection (bleak shares one per event loop) fails with ``InProgress``. So transports do not scan on
    their own; they register a filter here and the hub runs a single scanner while anyone waits.
    """

    _hubs: ClassVar[dict[tuple[asyncio.AbstractEventLoop, str | None], ScanHub]] = {}

    def __init__(self, adapter: str | None) -> None:
        self.adapter = adapter
        self._waiters: dict[int, tuple[DeviceFilter, asyncio.Future[BLEDevice]]] = {}
        self._scanner: BleakScanner | None = None
        self._lock = asyncio.Lock()
        self._next = 0

    @classmethod
    def for_adapter(cls, adapter: str | None) -> ScanHub:
        loop = asyncio.get_running_loop()
        for key in [k for k in cls._hubs if k[0].is_closed()]:
            del cls._hubs[key]
        hub = cls._hubs.get((loop, adapter))
        if hub is None:
            hub = cls._hubs[(loop, adapter)] = ScanHub(adapter)
        return hub

    async def find(self, match: DeviceFilter, timeout: float) -> BLEDevice | None:
        future: asyncio.Future[BLEDevice] = asyncio.get_running_loop().create_future()
        self._next += 1
        key = self._next
        self._waiters[key] = (match, future)
        try:
            await self._start()
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            del self._waiters[key]
            await self._stop_if_idle()

    def _seen(self, device: BLEDevice, adv: AdvertisementData) -> None:
        for match, future in list(self._waiters.values()):
            if not future.done() and match(device, adv):
                future.set_result(device)

    async def _start(self) -> None:
        async with self._lock:
            if self._scanner is None and self._waiters:
                bluez: Any = {"adapter": self.adapter} if self.adapter else {}
                scanner = BleakScanner(detection_callback=self._seen, bluez=bluez)
                await scanner.start()
                self._scanner = scanner

    async def _stop_if_idle(self) -> None:
        async with self._lock:
            if self._scanner is not None and not self._waiters:
                scanner, self._scanner = self._scanner, None
                with contextlib.suppress(*_ERRORS):
                    await scanner.stop()


async def find_device(options: BleOptions, service: str) -> BLEDevice | None:
    """Scan until the configured device advertises (by address; or by name pattern and service)."""
    if options.address is not None:
        address = options.address

        def match(device: BLEDevice, adv: AdvertisementData) -> bool:
            return same_address(device.address, address)

    else:
        pattern = re.compile(options.name or "")
        wanted = U.normalize_uuid(options.service or service)

        def match(device: BLEDevice, adv: AdvertisementData) -> bool:
            name = adv.local_name or device.name or ""
            return bool(pattern.search(name)) and wanted in {U.normalize_uuid(u) for u in adv.service_uuids}

    return await ScanHub.for_adapter(options.adapter).find(match, options.scan_seconds)


@register_transport
class BleTransport(Transport):
    name = "ble"
    routine_disconnect = True

    def __init__(self, runtime: DeviceRuntime) -> None:
        super().__init__(runtime)
        driver = self.require_driver(BleDriver)
        self.driver = driver
        self.options = driver.ble_options
        self._log = runtime.log if runtime.log is not None else log

    # ------------------------------------------------------------------------------------------ run

    async def run(self) -> None:
        options = self.options
        device = await self._find()
        lost = asyncio.Event()
        queue: asyncio.Queue[tuple[str, bytes, datetime]] = asyncio.Queue()
        bluez: Any = {"adapter": options.adapter} if options.adapter else {}
        client = BleakClient(
            device, disconnected_callback=lambda _c: lost.set(), timeout=options.connect_seconds, bluez=bluez
        )
        try:
            await client.connect()
        except _ERRORS as exc:
            raise TransportError(f"connecting to {device.address} failed: {_reason(exc)}") from exc
        self.runtime.set_connected(True, device.address)
        session = BleSession(self.driver, self.runtime.ctx, self.runtime.state, device.address, self._log)
        failure: BaseException | None = None
        idle = False
        try:
            await self._setup(client, session, queue)
            idle = await self._pump(queue, lost, session)
        except _ERRORS as exc:
            failure = exc
        finally:
            try:
                await self._drain(queue, session)  # what arrived before the link ended still counts
            finally:
                self.runtime.set_connected(False, "link ended")
                with contextlib.suppress(*_ERRORS):
                    async with asyncio.timeout(options.connect_seconds):
                        await client.disconnect()
        if idle:
            raise TransportError(
                f"BLE link to {device.address} closed after {options.idle_seconds:g} s without data"
            )
        if failure is not None and not lost.is_set():
            raise TransportError(f"BLE link to {device.address} failed: {_reason(failure)}") from failure
        raise TransportError(f"BLE link to {device.address} lost")

    async def _find(self) -> BLEDevice:
        try:
            device = await find_device(self.options, self.driver.service)
        except _ERRORS as exc:
            raise TransportError(f"scanning for {_describe(self.options)} failed: {_reason(exc)}") from exc
        if device is None:
            raise DeviceNotFoundError(
                f"{_describe(self.options)} not seen within {self.options.scan_seconds:g} s"
            )
        return device

    # ------------------------------------------------------------------------------------------ setup

    async def _setup(
        self, client: BleakClient, session: BleSession, queue: asyncio.Queue[tuple[str, bytes, datetime]]
    ) -> None:
        """Perform the session's setup actions with bleak, feeding each result back."""
        chars = {U.normalize_uuid(c.uuid): c for s in client.services for c in s.characteristics}
        offered = {uuid: frozenset(c.properties) for uuid, c in chars.items()}
        steps = session.setup(offered)
        try:
            action = next(steps)
            while True:
                action = steps.send(await self._perform(client, chars, action, queue))
        except StopIteration:
            return

    async def _perform(
        self,
        client: BleakClient,
        chars: Mapping[str, BleakGATTCharacteristic],
        action: Action,
        queue: asyncio.Queue[tuple[str, bytes, datetime]],
    ) -> Result:
        if isinstance(action, Emit):
            await self.runtime.emit(action.event)
            return OK
        if isinstance(action, Failed):
            self.runtime.decode_failed(action.failure)
            return OK
        char = chars[action.uuid]
        if isinstance(action, Subscribe):
            now, uuid = self.runtime.ctx.now, action.uuid

            def callback(_sender: BleakGATTCharacteristic, data: bytearray) -> None:
                queue.put_nowait((uuid, bytes(data), now()))

            await client.start_notify(char, callback)
            return OK
        tolerated: tuple[type[BaseException], ...] = {
            "nothing": (),
            "refusal": (BleakGATTProtocolError,),
            "any": (BleakError,),
        }[action.tolerate]
        try:
            if isinstance(action, Read):
                return Result(data=bytes(await client.read_gatt_char(char)))
            await client.write_gatt_char(char, action.data, response=action.response)
            return OK
        except tolerated as exc:
            return Result(error=_reason(exc))

    # ------------------------------------------------------------------------------------------ records

    async def _pump(
        self, queue: asyncio.Queue[tuple[str, bytes, datetime]], lost: asyncio.Event, session: BleSession
    ) -> bool:
        """Handle payloads until the link is lost (False) or stays idle for ``idle_seconds`` (True)."""
        lost_wait = asyncio.ensure_future(lost.wait())
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {get, lost_wait}, timeout=self.options.idle_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                if get in done:
                    await self._handle(*get.result(), session)
                    continue
                get.cancel()
                return not done
        finally:
            lost_wait.cancel()

    async def _drain(self, queue: asyncio.Queue[tuple[str, bytes, datetime]], session: BleSession) -> None:
        while not queue.empty():
            await self._handle(*queue.get_nowait(), session)

    async def _handle(self, uuid: str, data: bytes, received: datetime, session: BleSession) -> None:
        self.runtime.heard(len(data))
        outcome = session.receive(uuid, data, received)
        if outcome is None:
            return
        if isinstance(outcome, DecodeFailure):
            self.runtime.decode_failed(outcome)
            return
        try:
            await self.runtime.emit(outcome.event)
        except RefusedError as exc:  # cannot ever become a message: do not ask for it again
            self.runtime.log.warning(ev.BLE_RECORD_REFUSED, error=str(exc))
        session.delivered(outcome)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__
