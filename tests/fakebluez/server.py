# mypy: disable-error-code="untyped-decorator,no-untyped-call"
"""A fake ``org.bluez`` (BlueZ's D-Bus API as bleak uses it) on a private bus, built on dbus-fast.

Runs in the test's event loop. bleak's real BlueZ backend talks to it over D-Bus exactly as it would to
bluetoothd (testing.md §2.3): object manager on ``/``, adapter ``/org/bluez/hci0`` with role ``central``,
devices with dict-typed advertisement data that keep re-advertising while discovery runs, ``Connect``
exporting GATT objects (paths ending in four hex digits) before ``ServicesResolved``, ``ReadValue`` /
``WriteValue`` (writes are recorded), ``StartNotify`` / ``StopNotify``, notifications as
``PropertiesChanged(Value)``, ``Disconnect`` and link loss, ``Pair``.

The test-control API is plain Python on :class:`FakeBlueZ` and :class:`FakePeripheral`: ``indicate``,
``on_write`` (e.g. answer RACP), ``drop_link``, ``fail_next_connect``, ``set_advertising``, and waits for
what the central did (``wait_notifying``, ``wait_write``).
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from dbus_fast import (
    BusType,
    DBusError,
    Message,
    MessageType,
    NameFlag,
    PropertyAccess,
    RequestNameReply,
    Variant,
)
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_property, method

from tests.fakebluez.gatt import PeripheralSpec, u16
from tests.kit.wait import until

Str = Annotated[str, DBusSignature("s")]
Bool = Annotated[bool, DBusSignature("b")]
ObjPath = Annotated[str, DBusSignature("o")]
StrList = Annotated[list[str], DBusSignature("as")]
Bytes = Annotated[bytes, DBusSignature("ay")]
Props = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
ManData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
Int16 = Annotated[int, DBusSignature("n")]
UInt16 = Annotated[int, DBusSignature("q")]
UInt32 = Annotated[int, DBusSignature("u")]

ADAPTER_PATH = "/org/bluez/hci0"
ERR = "org.bluez.Error."
WriteHandler = Callable[["FakePeripheral", bytes], Awaitable[None] | None]


def _ro() -> Any:
    return dbus_property(access=PropertyAccess.READ)


class Adapter1(ServiceInterface):
    def __init__(self, fake: "FakeBlueZ") -> None:
        super().__init__("org.bluez.Adapter1")
        self.fake = fake
        self.discovering = False
        self.clients: set[str] = set()  # unique bus names with a discovery session
        self.filter: dict[str, Any] = {}

    # StartDiscovery / StopDiscovery are answered in FakeBlueZ._discovery_handler: like BlueZ, discovery
    # sessions are per D-Bus client (a second StartDiscovery from the same client is InProgress, other
    # clients may discover at the same time), which needs the caller's bus name.

    @method()
    def SetDiscoveryFilter(self, properties: Props) -> None:
        self.filter = {k: v.value for k, v in properties.items()}

    @method()
    def GetDiscoveryFilters(self) -> StrList:
        return ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"]

    @method()
    def RemoveDevice(self, device: ObjPath) -> None:
        self.fake._remove_device(device)

    @_ro()
    def Address(self) -> Str:
        return "00:1A:7D:DA:71:13"

    @_ro()
    def AddressType(self) -> Str:
        return "public"

    @_ro()
    def Name(self) -> Str:
        return "fakebluez"

    @_ro()
    def Alias(self) -> Str:
        return "fakebluez"

    @_ro()
    def Powered(self) -> Bool:
        return True

    @_ro()
    def Discoverable(self) -> Bool:
        return False

    @_ro()
    def Pairable(self) -> Bool:
        return True

    @_ro()
    def Discovering(self) -> Bool:
        return self.discovering

    @_ro()
    def UUIDs(self) -> StrList:
        return [u16(0x1800), u16(0x1801), u16(0x180A)]

    @_ro()
    def Roles(self) -> StrList:
        return ["central", "peripheral"]


class Device1(ServiceInterface):
    def __init__(self, peripheral: "FakePeripheral") -> None:
        super().__init__("org.bluez.Device1")
        self.p = peripheral

    @method()
    async def Connect(self) -> None:
        await self.p._connect()

    @method()
    async def Disconnect(self) -> None:
        self.p.disconnect_requests += 1
        self.p._link_down()

    @method()
    async def Pair(self) -> None:
        await self.p._pair()

    @method()
    def CancelPairing(self) -> None:
        pass

    @_ro()
    def Address(self) -> Str:
        return self.p.spec.address

    @_ro()
    def AddressType(self) -> Str:
        return "public"

    @_ro()
    def Name(self) -> Str:
        return self.p.spec.name

    @_ro()
    def Alias(self) -> Str:
        return self.p.spec.name

    @_ro()
    def Adapter(self) -> ObjPath:
        return ADAPTER_PATH

    @_ro()
    def Connected(self) -> Bool:
        return self.p.connected

    @_ro()
    def ServicesResolved(self) -> Bool:
        return self.p.services_resolved

    @_ro()
    def Paired(self) -> Bool:
        return self.p.paired

    @_ro()
    def Bonded(self) -> Bool:
        return self.p.paired

    @dbus_property()
    def Trusted(self) -> Bool:
        return self.p.trusted

    @Trusted.setter  # type: ignore[no-redef]
    def Trusted(self, value: Bool) -> None:
        self.p.trusted = value

    @_ro()
    def Blocked(self) -> Bool:
        return False

    @_ro()
    def LegacyPairing(self) -> Bool:
        return False

    @_ro()
    def RSSI(self) -> Int16:
        return self.p.rssi

    @_ro()
    def UUIDs(self) -> StrList:
        if self.p.services_resolved:
            return [s.uuid for s in self.p.spec.services]
        return list(self.p.spec.advertised_uuids)

    @_ro()
    def ManufacturerData(self) -> ManData:
        return {k: Variant("ay", v) for k, v in self.p.spec.manufacturer_data.items()}

    @_ro()
    def ServiceData(self) -> Props:
        return {k: Variant("ay", v) for k, v in self.p.spec.service_data.items()}


class GattService1(ServiceInterface):
    def __init__(self, uuid: str, device_path: str) -> None:
        super().__init__("org.bluez.GattService1")
        self.uuid, self.device_path = uuid, device_path

    @_ro()
    def UUID(self) -> Str:
        return self.uuid

    @_ro()
    def Device(self) -> ObjPath:
        return self.device_path

    @_ro()
    def Primary(self) -> Bool:
        return True


class GattCharacteristic1(ServiceInterface):
    def __init__(self, peripheral: "FakePeripheral", uuid: str, service_path: str, handle: int) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self.p, self.uuid, self.service_path, self.handle = peripheral, uuid, service_path, handle
        self.notifying = False

    @property
    def spec_flags(self) -> list[str]:
        char = self.p.spec.char(self.uuid)
        assert char is not None
        return char.flags

    @method()
    def ReadValue(self, options: Props) -> Bytes:
        if "read" not in self.spec_flags:
            raise DBusError(ERR + "NotPermitted", "Read not permitted")
        char = self.p.spec.char(self.uuid)
        assert char is not None
        self.p.reads.append(self.uuid)
        self.p._signal(("read", self.uuid))
        offset = int(options["offset"].value) if "offset" in options else 0
        return char.value[offset:]

    @method()
    async def WriteValue(self, value: Bytes, options: Props) -> None:
        if not {"write", "write-without-response"} & set(self.spec_flags):
            raise DBusError(ERR + "NotPermitted", "Write not permitted")
        data = bytes(value)
        self.p.writes.setdefault(self.uuid, []).append(data)
        char = self.p.spec.char(self.uuid)
        assert char is not None
        char.value = data
        self.p._signal(("write", self.uuid))
        handler = self.p.write_handlers.get(self.uuid)
        if handler is not None:
            result = handler(self.p, data)
            if result is not None:
                # like a real device: the write is acknowledged, then the indications follow
                task = asyncio.ensure_future(result)
                self.p._tasks.add(task)
                task.add_done_callback(self.p._tasks.discard)

    @method()
    def StartNotify(self) -> None:
        if not {"notify", "indicate"} & set(self.spec_flags):
            raise DBusError(ERR + "NotSupported", "Operation is not supported")
        if self.notifying:
            return
        self.notifying = True
        self.emit_properties_changed({"Notifying": True})
        self.p._signal(("notify", self.uuid))

    @method()
    def StopNotify(self) -> None:
        if self.notifying:
            self.notifying = False
            self.emit_properties_changed({"Notifying": False})

    @_ro()
    def UUID(self) -> Str:
        return self.uuid

    @_ro()
    def Service(self) -> ObjPath:
        return self.service_path

    @_ro()
    def Flags(self) -> StrList:
        return self.spec_flags

    @_ro()
    def Value(self) -> Bytes:
        char = self.p.spec.char(self.uuid)
        return char.value if char is not None else b""

    @_ro()
    def Notifying(self) -> Bool:
        return self.notifying

    @_ro()
    def Handle(self) -> UInt16:
        return self.handle

    @_ro()
    def MTU(self) -> UInt16:
        return 185


class GattDescriptor1(ServiceInterface):
    def __init__(self, uuid: str, char_path: str) -> None:
        super().__init__("org.bluez.GattDescriptor1")
        self.uuid, self.char_path = uuid, char_path

    @method()
    def ReadValue(self, options: Props) -> Bytes:
        return b"\x00\x00"

    @_ro()
    def UUID(self) -> Str:
        return self.uuid

    @_ro()
    def Characteristic(self) -> ObjPath:
        return self.char_path

    @_ro()
    def Value(self) -> Bytes:
        return b"\x00\x00"

    @_ro()
    def Flags(self) -> StrList:
        return ["read", "write"]


class FakePeripheral:
    """One advertised device. Test-control methods are the public ones."""

    def __init__(self, fake: "FakeBlueZ", spec: PeripheralSpec) -> None:
        self.fake = fake
        self.spec = spec
        self.path = f"{ADAPTER_PATH}/dev_{spec.address.replace(':', '_').upper()}"
        self.device = Device1(self)
        self.exported = False
        self.advertising = True
        self.connected = False
        self.services_resolved = False
        self.paired = False
        self.trusted = False
        self.rssi = spec.rssi
        self.connect_count = 0
        self.disconnect_requests = 0
        self.reads: list[str] = []
        self.writes: dict[str, list[bytes]] = {}
        self.write_handlers: dict[str, WriteHandler] = {}
        self.on_connect: Callable[[FakePeripheral], Awaitable[None] | None] | None = None
        self._chars: dict[str, tuple[str, GattCharacteristic1]] = {}
        self._gatt_paths: list[str] = []
        self._connect_error: tuple[str, str] | None = None
        self._pair_error: tuple[str, str] | None = None
        self._events: list[tuple[str, str]] = []
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Future[Any]] = set()

    # --------------------------------------------------------------------------------- test control

    def fail_next_connect(
        self, error: str = ERR + "Failed", message: str = "Software caused connection abort"
    ) -> None:
        """Make the next ``Connect`` fail. With ``le-connection-abort-by-local`` the fake behaves like
        BlueZ (Connected goes true then false before the error), and bleak retries by itself."""
        self._connect_error = (error, message)

    def fail_pairing(
        self, error: str = ERR + "AuthenticationFailed", message: str = "Authentication Failed"
    ) -> None:
        self._pair_error = (error, message)

    def set_advertising(self, advertising: bool) -> None:
        self.advertising = advertising

    def on_write(self, uuid: str, handler: WriteHandler) -> None:
        """Call ``handler(peripheral, data)`` after each write to ``uuid`` (e.g. answer an RACP request)."""
        self.write_handlers[uuid] = handler

    def notifying(self, uuid: str) -> bool:
        entry = self._chars.get(uuid)
        return entry is not None and entry[1].notifying

    def indicate(self, uuid: str, data: bytes) -> None:
        """Send one notification/indication of ``uuid`` (only while the central has it enabled)."""
        entry = self._chars.get(uuid)
        if entry is None or not entry[1].notifying:
            raise RuntimeError(f"{uuid} is not notifying on {self.spec.address}")
        char = self.spec.char(uuid)
        assert char is not None
        char.value = bytes(data)
        entry[1].emit_properties_changed({"Value": bytes(data)})

    def drop_link(self) -> None:
        """Link loss: the device goes away without a Disconnect call."""
        self._link_down()

    async def wait_notifying(self, uuid: str, timeout: float = 10.0) -> None:
        await self._wait(lambda: self.notifying(uuid), timeout)

    async def wait_write(self, uuid: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        await self._wait(lambda: len(self.writes.get(uuid, [])) >= count, timeout)
        return self.writes[uuid]

    async def wait_read(self, uuid: str, timeout: float = 10.0) -> None:
        await self._wait(lambda: uuid in self.reads, timeout)

    async def wait_disconnected(self, timeout: float = 10.0) -> None:
        await self._wait(lambda: not self.connected, timeout)

    # --------------------------------------------------------------------------------- internals

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    def _signal(self, event: tuple[str, str]) -> None:
        self._events.append(event)

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.ensure_future(notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        if self._connect_error is not None:
            error, message = self._connect_error
            self._connect_error = None
            if message == "le-connection-abort-by-local":
                self.device.emit_properties_changed({"Connected": True})
                self.device.emit_properties_changed({"Connected": False})
            raise DBusError(error, message)
        if not self.advertising:
            self.device.emit_properties_changed({"Connected": True})
            self.device.emit_properties_changed({"Connected": False})
            raise DBusError(ERR + "Failed", "le-connection-abort-by-local")
        if self.connected:
            return
        self.connect_count += 1
        self.connected = True
        self.device.emit_properties_changed({"Connected": True})
        bus = self.fake.bus
        for service in self.spec.services:
            spath = f"{self.path}/service{service.handle:04x}"
            bus.export(spath, GattService1(service.uuid, self.path))
            self._gatt_paths.append(spath)
            for char in service.characteristics:
                cpath = f"{spath}/char{char.handle:04x}"
                iface = GattCharacteristic1(self, char.uuid, spath, char.handle)
                bus.export(cpath, iface)
                self._gatt_paths.append(cpath)
                self._chars[char.uuid] = (cpath, iface)
                for dhandle, duuid in char.descriptors:
                    dpath = f"{cpath}/desc{dhandle:04x}"
                    bus.export(dpath, GattDescriptor1(duuid, cpath))
                    self._gatt_paths.append(dpath)
        self.services_resolved = True
        self.device.emit_properties_changed(
            {"ServicesResolved": True, "UUIDs": [s.uuid for s in self.spec.services]}
        )
        self._signal(("connected", ""))
        if self.on_connect is not None:
            result = self.on_connect(self)
            if result is not None:
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _link_down(self) -> None:
        if not self.connected:
            return
        self.services_resolved = False
        self.device.emit_properties_changed({"ServicesResolved": False})
        self.connected = False
        self.device.emit_properties_changed({"Connected": False})
        for path in reversed(self._gatt_paths):
            self.fake.bus.unexport(path)
        self._gatt_paths.clear()
        self._chars.clear()
        self._signal(("disconnected", ""))

    async def _pair(self) -> None:
        if self.paired:
            raise DBusError(ERR + "AlreadyExists", "Already Exists")
        if self._pair_error is not None:
            error, message = self._pair_error
            raise DBusError(error, message)
        if not self.advertising and not self.connected:
            raise DBusError(ERR + "ConnectionAttemptFailed", "Page Timeout")
        self.paired = True
        self.device.emit_properties_changed({"Paired": True, "Bonded": True})


class FakeBlueZ:
    """``org.bluez`` on the private system bus. Use ``async with FakeBlueZ(address) as fake``."""

    def __init__(self, bus_address: str) -> None:
        self.bus_address = bus_address
        self.bus: MessageBus = MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM)
        self.adapter = Adapter1(self)
        self.peripherals: dict[str, FakePeripheral] = {}
        self.advertise_interval = 0.1
        self._adv_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "FakeBlueZ":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.bus.connect()
        self.bus.add_message_handler(self._discovery_handler)
        self.bus.export(ADAPTER_PATH, self.adapter)

        async def owned() -> bool:
            reply = await self.bus.request_name("org.bluez", NameFlag.DO_NOT_QUEUE)
            return reply in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER)

        # (the previous test's fake may still be letting go of the name)
        await until(owned, 2.0, "org.bluez on the private bus", interval=0.02)

    async def stop(self) -> None:
        self._stop_advertising_loop()
        for peripheral in self.peripherals.values():
            for task in list(peripheral._tasks):
                task.cancel()
        with contextlib.suppress(Exception):
            await self.bus.release_name("org.bluez")
        self.bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.bus.wait_for_disconnect(), 2)

    def add(self, spec: PeripheralSpec, known: bool = True) -> FakePeripheral:
        """Add an advertising peripheral. ``known``: BlueZ already has its object (seen before);
        otherwise the object appears (InterfacesAdded) the first time a discovery sees it."""
        peripheral = FakePeripheral(self, spec)
        self.peripherals[spec.address.upper()] = peripheral
        if known:
            self._export(peripheral)
        return peripheral

    def _export(self, peripheral: FakePeripheral) -> None:
        if not peripheral.exported:
            peripheral.exported = True
            self.bus.export(peripheral.path, peripheral.device)

    def __getitem__(self, address: str) -> FakePeripheral:
        return self.peripherals[address.upper()]

    def _discovery_handler(self, msg: Message) -> Message | None:
        if (
            msg.message_type != MessageType.METHOD_CALL
            or msg.path != ADAPTER_PATH
            or msg.interface != "org.bluez.Adapter1"
            or msg.member not in ("StartDiscovery", "StopDiscovery")
        ):
            return None
        sender = msg.sender or ""
        clients = self.adapter.clients
        if msg.member == "StartDiscovery":
            if sender in clients:
                return Message.new_error(msg, ERR + "InProgress", "Operation already in progress")
            clients.add(sender)
        else:
            if sender not in clients:
                return Message.new_error(msg, ERR + "Failed", "No discovery started")
            clients.discard(sender)
        discovering = bool(clients)
        if discovering != self.adapter.discovering:
            self.adapter.discovering = discovering
            self.adapter.emit_properties_changed({"Discovering": discovering})
            if discovering:
                self._start_advertising_loop()
            else:
                self._stop_advertising_loop()
        return Message.new_method_return(msg)

    def _remove_device(self, path: str) -> None:
        for address, peripheral in list(self.peripherals.items()):
            if peripheral.path == path:
                peripheral._link_down()
                self.bus.unexport(path)
                peripheral.exported = False
                del self.peripherals[address]
                return
        raise DBusError(ERR + "DoesNotExist", "Does Not Exist")

    def _start_advertising_loop(self) -> None:
        if self._adv_task is None or self._adv_task.done():
            self._adv_task = asyncio.ensure_future(self._advertise())

    def _stop_advertising_loop(self) -> None:
        if self._adv_task is not None:
            self._adv_task.cancel()
            self._adv_task = None

    async def _advertise(self) -> None:
        """Re-emit every advertising, unconnected device while discovering (bleak reports a device only
        on a signal received while it scans)."""
        tick = 0
        while self.adapter.discovering:
            tick += 1
            for peripheral in self.peripherals.values():
                if peripheral.advertising and not peripheral.exported:
                    self._export(peripheral)
                elif peripheral.advertising and not peripheral.connected:
                    peripheral.rssi = peripheral.spec.rssi - (tick % 3)
                    peripheral.device.emit_properties_changed(
                        {
                            "RSSI": peripheral.rssi,
                            "ManufacturerData": {
                                k: Variant("ay", v) for k, v in peripheral.spec.manufacturer_data.items()
                            },
                        }
                    )
            await asyncio.sleep(self.advertise_interval)  # (simulation) the advertising interval


__all__ = ["ADAPTER_PATH", "FakeBlueZ", "FakePeripheral", "Message"]
