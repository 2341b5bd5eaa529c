"""One BLE connection's decisions, without I/O (sans-I/O, like h11): what to do on connect and what the
payloads that arrive mean.

:meth:`BleSession.setup` is a generator of :data:`Action` s: subscribe to the measurement characteristics
first (a cuff sends its records as soon as indications are enabled and stays only seconds), read Device
Information and the battery, read the device clock (its offset from the host), set it from the host, ask
for stored records through RACP where offered. The transport performs each action with bleak and sends
back a :class:`Result`; :class:`Emit` and :class:`Failed` hand an event or a decode failure to the agent.
:meth:`BleSession.receive` turns one notification into a :class:`Record` (or a failure, or nothing):
decoded, de-duplicated against what earlier connections sent, and marked stored or live; the transport
hands :attr:`Record.event` to the agent and then calls :meth:`BleSession.delivered`.

The host clock is the decode context's ``now`` and the per-device memory is the runtime's state store,
both injected: tests drive a session with a fake clock and a dict, without D-Bus.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from vitals_agent import log_events as ev
from vitals_agent.drivers.base import DecodeContext, DecodeFailure, DeviceStateStore
from vitals_agent.drivers.ble import uuids as U
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
from vitals_agent.errors import DecodeError, TransportError
from vitals_agent.models import DeviceEvent, DeviceIdentity, DeviceStatusEvent

SENT_KEY = "ble.sent"  # JSON list of record keys already handed to the agent (most recent last)
SEQUENCE_KEY = "ble.last_sequence"  # highest record sequence number handed to the agent
IDENTITY_KEY = "ble.identity"  # identity read from Device Information on an earlier connection
OFFSET_KEY = "ble.clock_offset"  # host - device clock in seconds, as left by the last connection
MAX_SENT_KEYS = 2000

DIS = (U.MANUFACTURER_NAME, U.MODEL_NUMBER, U.SERIAL_NUMBER, U.FIRMWARE_REVISION, U.SYSTEM_ID)

# ------------------------------------------------------------------------------------------- actions

Tolerate = Literal["nothing", "refusal", "any"]


@dataclass(frozen=True)
class Subscribe:
    """Enable notifications or indications of ``uuid``; a failure ends the link."""

    uuid: str


@dataclass(frozen=True)
class Read:
    """Read ``uuid``. ``tolerate``: which failures come back as a :class:`Result` (the rest end the link):
    ``"refusal"`` a GATT error answer, ``"any"`` any bleak error."""

    uuid: str
    tolerate: Tolerate = "nothing"


@dataclass(frozen=True)
class Write:
    uuid: str
    data: bytes
    response: bool
    tolerate: Tolerate = "nothing"


@dataclass(frozen=True)
class Emit:
    """Hand ``event`` to the agent."""

    event: DeviceEvent


@dataclass(frozen=True)
class Failed:
    """Report an undecodable payload (counted, logged in hex at DEBUG)."""

    failure: DecodeFailure


Action = Subscribe | Read | Write | Emit | Failed


@dataclass(frozen=True)
class Result:
    """What came of an action: the value read (reads), or the error it was allowed to fail with."""

    data: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


OK = Result()


@dataclass(frozen=True)
class Record:
    """A record to hand to the agent; after the hand-over, :meth:`BleSession.delivered` remembers it."""

    event: DeviceEvent
    key: str | None
    sequence: int | None


# ------------------------------------------------------------------------------------------- memory


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
    """The persistent set of record keys already sent for one device (the most recent MAX_SENT_KEYS)."""

    def __init__(self, state: DeviceStateStore) -> None:
        self._state = state
        raw = state.get(SENT_KEY)
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


# ------------------------------------------------------------------------------------------- session


class BleSession:
    """One connection to one device. ``log`` is the device's bound logger."""

    def __init__(
        self,
        driver: BleDriver[Any],
        ctx: DecodeContext,
        state: DeviceStateStore,
        address: str,
        log: Any,
    ) -> None:
        self.driver = driver
        self.options: BleOptions = driver.ble_options
        self.ctx = ctx
        self.state = state
        self.log = log
        self.identity = self._cached_identity(address)
        self.offset: timedelta | None = None  # host - device clock, measured now (before setting it)
        self.previous_offset = self._cached_offset()  # what the last connection left (0 once it set it)
        self.context: dict[str, bytes] = {}  # values read on connect (features, types) for the decoders
        self.racp_active = False
        self.sent = SentLog(state)

    # ------------------------------------------------------------------------------------- setup

    def setup(self, offered: Mapping[str, frozenset[str]]) -> Generator[Action, Result, None]:
        """The actions on connect, given the characteristics the device offers (UUID -> properties)."""
        # 1. subscribe first: a cuff sends its records as soon as indications are enabled
        subscribed = [
            uuid
            for uuid in self.driver.measurement_characteristics
            if {"notify", "indicate"} & offered.get(uuid, frozenset())
        ]
        if not subscribed:
            wanted = ", ".join(U.short_name(u) for u in self.driver.measurement_characteristics)
            raise TransportError(f"the device offers none of the characteristics {wanted}")
        for uuid in subscribed:
            yield Subscribe(uuid)
        self.log.debug(ev.BLE_SUBSCRIBED, characteristics=[U.short_name(u) for u in subscribed])

        # 2. identity (Device Information) and battery; one unreadable characteristic is not a lost link
        for uuid in (*DIS, *self.driver.extra_characteristics, U.BATTERY_LEVEL):
            if "read" in offered.get(uuid, frozenset()):
                result = yield Read(uuid, tolerate="any")
                if result.ok:
                    self.context[uuid] = result.data
                else:
                    self.log.debug(ev.BLE_READ_FAILED, characteristic=U.short_name(uuid), error=result.error)
        self.identity = self.identity.merged(identity_from_dis(self.ctx.device.id, self.context))
        self.state.set(IDENTITY_KEY, self.identity.model_dump_json())
        yield Emit(DeviceStatusEvent(identity=self.identity, battery_percent=self._battery()))

        # 3. device clock: measure the offset, then set it from the host
        yield from self._clock(offered)

        # 4. stored records through RACP
        if self.driver.racp_supported and self.options.stored_records and U.RACP in offered:
            yield Subscribe(U.RACP)
            last = self.state.get(SEQUENCE_KEY)
            if last is not None and U.BLOOD_PRESSURE_RECORD in offered:
                request = racp_request_since(int(last) + 1)
            else:
                request = racp_request_all()
            self.racp_active = True
            yield Write(U.RACP, request, response=True)
            self.log.debug(ev.BLE_RACP_REQUESTED, request=request.hex())

    def _battery(self) -> int | None:
        raw = self.context.get(U.BATTERY_LEVEL)
        if raw is None:
            return None
        try:
            return decode_battery_level(raw)
        except DecodeError:
            return None

    def _clock(self, offered: Mapping[str, frozenset[str]]) -> Generator[Action, Result, None]:
        clocks = [uuid for uuid in (U.DATE_TIME, U.CURRENT_TIME) if uuid in offered]
        if not clocks:
            return
        uuid = clocks[0]  # Date Time when the device has both
        props = offered[uuid]
        if "read" in props:
            result = yield Read(uuid, tolerate="refusal")
            if result.ok:
                yield from self._measure_offset(uuid, result.data)
            else:
                self.log.info(ev.BLE_CLOCK_READ_REFUSED, error=result.error)
        writable = {"write", "write-without-response"} & props
        clock_set = False
        if self.options.set_clock and writable:
            local = self.ctx.now().astimezone(self.ctx.tz)
            data = encode_date_time(local) if uuid == U.DATE_TIME else encode_current_time(local)
            result = yield Write(uuid, data, response="write" in props, tolerate="any")
            if result.ok:
                self.log.info(ev.BLE_CLOCK_SET, characteristic=U.short_name(uuid))
                clock_set = True
            else:
                self.log.warning(ev.BLE_CLOCK_SET_FAILED, error=result.error)
        if clock_set:
            self.state.set(OFFSET_KEY, "0")
        elif self.offset is not None:
            self.state.set(OFFSET_KEY, str(round(self.offset.total_seconds())))

    def _measure_offset(self, uuid: str, raw: bytes) -> Generator[Action, Result, None]:
        host = self.ctx.now()
        try:
            value = decode_date_time(raw) if uuid == U.DATE_TIME else decode_current_time(raw).date_time
        except DecodeError as exc:
            yield Failed(DecodeFailure(exc))
            return
        device_now = value.to_datetime(self.ctx.tz)
        if device_now is None:
            self.log.info(ev.BLE_DEVICE_CLOCK_UNSET, characteristic=U.short_name(uuid))
            return
        self.offset = host - device_now
        self.log.info(ev.BLE_DEVICE_CLOCK, offset_seconds=round(self.offset.total_seconds(), 1))

    # ------------------------------------------------------------------------------------- records

    def receive(self, uuid: str, data: bytes, received: datetime) -> Record | DecodeFailure | None:
        """What one notification means: a record to hand over, a failure to report, or nothing."""
        if uuid == U.RACP:
            try:
                response = decode_racp(data)
            except DecodeError as exc:
                return DecodeFailure(exc)
            self.racp_active = False
            self.log.info(ev.BLE_RACP_RESPONSE, result=response.text)
            return None
        try:
            record = self.driver.decode_measurement(uuid, data, self.context)
        except DecodeError as exc:
            return DecodeFailure.of(exc, data)
        if not record.reportable:
            if record.failed:
                self.log.info(ev.BLE_FAILED_MEASUREMENT_DROPPED, characteristic=record.characteristic)
            else:
                self.log.debug(
                    ev.BLE_NOT_REPORTED, characteristic=record.characteristic, reason=record.not_reported
                )
            return None
        key = record_key(self.identity, record)
        if key is not None and key in self.sent:
            self.log.info(ev.BLE_DUPLICATE_RECORD_SKIPPED, characteristic=record.characteristic)
            return None
        offset = self.offset if self.offset is not None else self.previous_offset
        stored = self.racp_active or record.from_storage or self._old(record, received, offset)
        event = record_to_event(
            record,
            self.ctx,
            received,
            identity=self.ctx.device.merged(self.identity),
            stored=stored,
            offset=offset if stored else None,
        )
        return Record(event, key, record.sequence)

    def delivered(self, record: Record) -> None:
        """The agent has the record (accepted, or refused for good): never hand it over again."""
        if record.key is not None:
            self.sent.add(record.key)
        if record.sequence is not None:
            last = self.state.get(SEQUENCE_KEY)
            if last is None or record.sequence > int(last):
                self.state.set(SEQUENCE_KEY, str(record.sequence))

    def _old(self, record: BleRecord, received: datetime, offset: timedelta | None) -> bool:
        """A record stamped (after correction) more than ``live_seconds`` before it arrived was stored."""
        if record.timestamp is None:
            return False
        stamped = record.timestamp.to_datetime(self.ctx.tz)
        if stamped is None:
            return False
        corrected = stamped + offset if offset is not None else stamped
        return (received - corrected).total_seconds() > self.options.live_seconds

    # ------------------------------------------------------------------------------------- memory

    def _cached_offset(self) -> timedelta | None:
        raw = self.state.get(OFFSET_KEY)
        try:
            return timedelta(seconds=int(raw)) if raw is not None else None
        except ValueError:
            return None

    def _cached_identity(self, address: str) -> DeviceIdentity:
        base = DeviceIdentity(id=self.ctx.device.id, address=address)
        raw = self.state.get(IDENTITY_KEY)
        if raw:
            try:
                cached = DeviceIdentity.model_validate_json(raw)
            except ValueError:
                return base
            if cached.address in (None, address):
                return base.merged(cached)
        return base
