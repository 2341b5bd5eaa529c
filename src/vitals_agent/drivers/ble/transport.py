"""The "ble" transport: bleak (BlueZ on Linux) to a Bluetooth health device.

One :meth:`BleTransport.run` is one connection: find the device (by address, or by advertised-name
pattern plus the driver's service), connect, subscribe to the measurement characteristics at once (cuffs
stay connected only seconds), read Device Information and the device clock, set the clock, ask for
stored records through RACP where offered, and hand every good record to the agent exactly once. When
the link ends, records already received are processed and :class:`~vitals_agent.errors.TransportError`
is raised; the agent's supervisor reconnects with back-off.

What was already sent is kept per device in ``runtime.state`` (key: identity + characteristic + device
time + values + sequence), so a reconnect, a restart or a device that re-sends old records produces no
duplicate. Records without a device time or sequence number (live streams) are not de-duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

import structlog
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError, BleakGATTProtocolError

from vitals_agent.drivers.base import DecodeFailure, DeviceRuntime, Transport, register_transport
from vitals_agent.drivers.ble import uuids as U
from vitals_agent.drivers.ble.address import same_address
from vitals_agent.drivers.ble.clock import (
    decode_current_time,
    decode_date_time,
    encode_current_time,
    encode_date_time,
)
from vitals_agent.drivers.ble.decoders import (
    BleRecord,
    decode_battery_level,
    decode_racp,
    racp_request_all,
    racp_request_since,
    record_to_event,
)
from vitals_agent.drivers.ble.drivers import BleDriver, BleOptions, identity_from_dis
from vitals_agent.errors import DecodeError, DeviceNotFoundError, RefusedError, TransportError
from vitals_agent.models import DeviceIdentity, DeviceStatusEvent

log = structlog.get_logger(__name__)

SENT_KEY = "ble.sent"  # JSON list of record keys already handed to the agent (most recent last)
SEQUENCE_KEY = "ble.last_sequence"  # highest record sequence number handed to the agent
IDENTITY_KEY = "ble.identity"  # identity read from Device Information on an earlier connection
OFFSET_KEY = "ble.clock_offset"  # host - device clock in seconds, as left by the last connection
MAX_SENT_KEYS = 2000

_DIS = (
    U.MANUFACTURER_NAME,
    U.MODEL_NUMBER,
    U.SERIAL_NUMBER,
    U.FIRMWARE_REVISION,
    U.SYSTEM_ID,
)
_ERRORS = (BleakError, asyncio.TimeoutError, EOFError, OSError)


def record_key(identity: DeviceIdentity, record: BleRecord) -> str | None:
    """The de-duplication key of a record, or None when it carries neither a device time nor a sequence
    number (then two equal values are two measurements)."""
    if record.timestamp is None and record.sequence is None:
        return None
    who = identity.eui64 or identity.serial_number or identity.address or identity.id
    values = ";".join(f"{m.metric}={m.value}{m.unit}:{m.absent_reason}" for m in record.measurements)
    stamp = record.timestamp.key() if record.timestamp is not None else "-"
    text = f"{who}|{record.characteristic}|{stamp}|{values}|{record.sequence}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class SentLog:
    """The persistent set of record keys already sent for one device."""

    def __init__(self, runtime: DeviceRuntime) -> None:
        self._state = runtime.state
        raw = self._state.get(SENT_KEY)
        try:
            keys = json.loads(raw) if raw else []
        except ValueError:
            keys = []
        self._keys: list[str] = [k for k in keys if isinstance(k, str)]
        self._set = set(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._set

    def add(self, key: str) -> None:
        self._keys.append(key)
        self._set.add(key)
        if len(self._keys) > MAX_SENT_KEYS:
            drop = self._keys[: len(self._keys) - MAX_SENT_KEYS]
            self._keys = self._keys[len(drop) :]
            self._set.difference_update(drop)
        self._state.set(SENT_KEY, json.dumps(self._keys))


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
            return await asyncio.wait_for(future, timeout)
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


@dataclass
class _Link:
    """What one connection learned: identity, clock offset, values read on connect."""

    identity: DeviceIdentity
    offset: timedelta | None = None  # host - device clock, measured on this connection (before setting it)
    previous_offset: timedelta | None = None  # what the last connection left (0 after it set the clock)
    context: dict[str, bytes] = field(default_factory=dict)
    racp_active: bool = False


@register_transport
class BleTransport(Transport):
    name = "ble"
    routine_disconnect = True

    def __init__(self, runtime: DeviceRuntime) -> None:
        super().__init__(runtime)
        driver = runtime.driver
        if not isinstance(driver, BleDriver):
            raise TypeError(f"the ble transport needs a BLE driver, not {driver.name}")
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
        link = _Link(identity=self._cached_identity(device.address), previous_offset=self._cached_offset())
        sent = SentLog(self.runtime)
        failure: BaseException | None = None
        idle = False
        try:
            await self._setup(client, link, queue)
            idle = await self._pump(queue, lost, link, sent)
        except _ERRORS as exc:
            failure = exc
        finally:
            try:
                await self._drain(queue, link, sent)  # what arrived before the link ended still counts
            finally:
                self.runtime.set_connected(False, "link ended")
                with contextlib.suppress(*_ERRORS):
                    await asyncio.wait_for(client.disconnect(), timeout=options.connect_seconds)
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
        self, client: BleakClient, link: _Link, queue: asyncio.Queue[tuple[str, bytes, datetime]]
    ) -> None:
        chars = {U.normalize_uuid(c.uuid): c for s in client.services for c in s.characteristics}
        now = self.runtime.ctx.now

        def make_callback(uuid: str) -> Any:
            def callback(_sender: BleakGATTCharacteristic, data: bytearray) -> None:
                queue.put_nowait((uuid, bytes(data), now()))

            return callback

        # 1. subscribe first: a cuff sends its records as soon as indications are enabled
        subscribed = []
        for uuid in self.driver.measurement_characteristics:
            char = chars.get(uuid)
            if char is not None and ({"notify", "indicate"} & set(char.properties)):
                await client.start_notify(char, make_callback(uuid))
                subscribed.append(U.short_name(uuid))
        if not subscribed:
            wanted = ", ".join(U.short_name(u) for u in self.driver.measurement_characteristics)
            raise TransportError(f"the device offers none of the characteristics {wanted}")
        self._log.debug("ble.subscribed", characteristics=subscribed)

        # 2. identity (Device Information) and battery
        values: dict[str, bytes] = {}
        for uuid in (*_DIS, *self.driver.extra_characteristics, U.BATTERY_LEVEL):
            char = chars.get(uuid)
            if char is not None and "read" in char.properties:
                try:
                    values[uuid] = bytes(await client.read_gatt_char(char))
                except BleakError as exc:  # one unreadable characteristic is not a lost link
                    self._log.debug("ble.read_failed", characteristic=U.short_name(uuid), error=str(exc))
        link.context = values
        read = identity_from_dis(self.runtime.device_id, values)
        link.identity = link.identity.merged(read)
        self.runtime.state.set(IDENTITY_KEY, link.identity.model_dump_json())
        battery = None
        if U.BATTERY_LEVEL in values:
            with contextlib.suppress(DecodeError):
                battery = decode_battery_level(values[U.BATTERY_LEVEL])
        await self.runtime.emit(DeviceStatusEvent(identity=link.identity, battery_percent=battery))

        # 3. device clock: measure the offset, then set it from the host
        await self._clock(client, chars, link)

        # 4. stored records through RACP
        racp = chars.get(U.RACP)
        if self.driver.racp_supported and self.options.stored_records and racp is not None:
            await client.start_notify(racp, make_callback(U.RACP))
            last = self.runtime.state.get(SEQUENCE_KEY)
            if last is not None and U.BLOOD_PRESSURE_RECORD in chars:
                request = racp_request_since(int(last) + 1)
            else:
                request = racp_request_all()
            link.racp_active = True
            await client.write_gatt_char(racp, request, response=True)
            self._log.debug("ble.racp_requested", request=request.hex())

    async def _clock(
        self, client: BleakClient, chars: Mapping[str, BleakGATTCharacteristic], link: _Link
    ) -> None:
        offered = [uuid for uuid in (U.DATE_TIME, U.CURRENT_TIME) if uuid in chars]
        if not offered:
            return
        uuid = offered[0]  # Date Time when the device has both
        char = chars[uuid]
        if "read" in char.properties:
            link.offset = await self._read_clock_offset(client, uuid, char)
        if self.options.set_clock and await self._set_clock(client, uuid, char):
            self.runtime.state.set(OFFSET_KEY, "0")
        elif link.offset is not None:
            self.runtime.state.set(OFFSET_KEY, str(round(link.offset.total_seconds())))

    async def _read_clock_offset(
        self, client: BleakClient, uuid: str, char: BleakGATTCharacteristic
    ) -> timedelta | None:
        """Host - device clock, from reading Date Time or Current Time; None when it is not known."""
        ctx = self.runtime.ctx
        try:
            raw = bytes(await client.read_gatt_char(char))
            host = ctx.now()
            value = decode_date_time(raw) if uuid == U.DATE_TIME else decode_current_time(raw).date_time
        except DecodeError as exc:
            self.runtime.decode_failed(DecodeFailure(exc))
            return None
        except BleakGATTProtocolError as exc:  # refused, not a lost link
            self._log.info("ble.clock_read_refused", error=_reason(exc))
            return None
        device_now = value.to_datetime(ctx.tz)
        if device_now is None:
            self._log.info("ble.device_clock_unset", characteristic=U.short_name(uuid))
            return None
        offset = host - device_now
        self._log.info("ble.device_clock", offset_seconds=round(offset.total_seconds(), 1))
        return offset

    async def _set_clock(self, client: BleakClient, uuid: str, char: BleakGATTCharacteristic) -> bool:
        """Write the host clock to Date Time or Current Time if it is writable; True when that worked."""
        if not {"write", "write-without-response"} & set(char.properties):
            return False
        ctx = self.runtime.ctx
        local = ctx.now().astimezone(ctx.tz)
        data = encode_date_time(local) if uuid == U.DATE_TIME else encode_current_time(local)
        try:
            await client.write_gatt_char(char, data, response="write" in char.properties)
        except BleakError as exc:
            self._log.warning("ble.set_clock_failed", error=_reason(exc))
            return False
        self._log.info("ble.clock_set", characteristic=U.short_name(uuid))
        return True

    # ------------------------------------------------------------------------------------------ records

    async def _pump(
        self,
        queue: asyncio.Queue[tuple[str, bytes, datetime]],
        lost: asyncio.Event,
        link: _Link,
        sent: SentLog,
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
                    await self._handle(*get.result(), link, sent)
                    continue
                get.cancel()
                return not done
        finally:
            lost_wait.cancel()

    async def _drain(
        self, queue: asyncio.Queue[tuple[str, bytes, datetime]], link: _Link, sent: SentLog
    ) -> None:
        while not queue.empty():
            await self._handle(*queue.get_nowait(), link, sent)

    async def _handle(self, uuid: str, data: bytes, received: datetime, link: _Link, sent: SentLog) -> None:
        self.runtime.heard(len(data))
        if uuid == U.RACP:
            try:
                response = decode_racp(data)
            except DecodeError as exc:
                self.runtime.decode_failed(DecodeFailure(exc))
                return
            link.racp_active = False
            self._log.info("ble.racp_response", result=response.text)
            return
        try:
            record = self.driver.decode_measurement(uuid, data, link.context)
        except DecodeError as exc:
            if not exc.data:
                exc.data = data
            self.runtime.decode_failed(DecodeFailure(exc))
            return
        if not record.reportable:
            if record.failed:
                self._log.info("ble.failed_measurement_dropped", characteristic=record.characteristic)
            else:
                self._log.debug(
                    "ble.not_reported", characteristic=record.characteristic, reason=record.not_reported
                )
            return
        key = record_key(link.identity, record)
        if key is not None and key in sent:
            self._log.info("ble.duplicate_record_skipped", characteristic=record.characteristic)
            return
        offset = link.offset if link.offset is not None else link.previous_offset
        stored = link.racp_active or record.from_storage or self._old(record, received, offset)
        event = record_to_event(
            record,
            self.runtime.ctx,
            received,
            identity=self.runtime.ctx.device.merged(link.identity),
            stored=stored,
            offset=offset if stored else None,
        )
        try:
            await self.runtime.emit(event)
        except RefusedError as exc:  # cannot ever become a message: do not ask for it again
            self.runtime.log.warning("BLE record refused by the agent", error=str(exc))
        if key is not None:
            sent.add(key)
        if record.sequence is not None:
            last = self.runtime.state.get(SEQUENCE_KEY)
            if last is None or record.sequence > int(last):
                self.runtime.state.set(SEQUENCE_KEY, str(record.sequence))

    def _old(self, record: BleRecord, received: datetime, offset: timedelta | None) -> bool:
        """A record stamped (after correction) more than ``live_seconds`` before it arrived was stored."""
        if record.timestamp is None:
            return False
        stamped = record.timestamp.to_datetime(self.runtime.ctx.tz)
        if stamped is None:
            return False
        corrected = stamped + offset if offset is not None else stamped
        return (received - corrected).total_seconds() > self.options.live_seconds

    def _cached_offset(self) -> timedelta | None:
        raw = self.runtime.state.get(OFFSET_KEY)
        try:
            return timedelta(seconds=int(raw)) if raw is not None else None
        except ValueError:
            return None

    def _cached_identity(self, address: str) -> DeviceIdentity:
        base = DeviceIdentity(id=self.runtime.device_id, address=address)
        raw = self.runtime.state.get(IDENTITY_KEY)
        if raw:
            try:
                cached = DeviceIdentity.model_validate_json(raw)
            except ValueError:
                return base
            if cached.address in (None, address):
                return base.merged(cached)
        return base


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__
