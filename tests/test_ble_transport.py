"""The BLE transport with bleak's real BlueZ backend against the fake BlueZ (tests/fakebluez)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from tests.fakebluez.gatt import and_ua651ble, and_uc352ble, plx_oximeter, thermometer, u16
from tests.fakebluez.payloads import NAN, blood_pressure
from tests.fakebluez.scenarios import indicate_then_leave
from tests.fakebluez.server import FakeBlueZ, FakePeripheral
from tests.kit import FakeClock, FakeRuntime, MemoryState, until
from vitals_agent.drivers.base import driver_class
from vitals_agent.drivers.ble.clock import decode_current_time, decode_date_time, encode_date_time
from vitals_agent.drivers.ble.drivers import (
    BleOptions,
    BloodPressureDriver,
    PulseOximeterDriver,
    ThermometerDriver,
    ThermometerOptions,
    WeightScaleDriver,
)
from vitals_agent.drivers.ble.ieee11073 import Number, encode_float, encode_sfloat
from vitals_agent.drivers.ble.session import IDENTITY_KEY, OFFSET_KEY
from vitals_agent.drivers.ble.transport import BleTransport, ScanHub
from vitals_agent.errors import DeviceNotFoundError, TransportError
from vitals_agent.models import (
    DeviceClass,
    DeviceIdentity,
    DeviceStatusEvent,
    Measurement,
    Reading,
    ReadingFlag,
)

BPM = u16(0x2A35)
DATE_TIME = u16(0x2A08)
HOST_NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
CUFF = "00:09:1F:12:34:56"
FACTORY_CLOCK = datetime(2017, 1, 14, 10, 0, 0)  # what the never-set cuff clock says at HOST_NOW


bpm = blood_pressure


GOOD1 = bpm(128, 84, 99, 67, datetime(2017, 1, 13, 8, 0, 0))
GOOD2 = bpm(135, 88, 104, 72, datetime(2017, 1, 14, 9, 30, 0))
FAILED = [bpm(NAN, NAN, NAN, NAN, datetime(2017, 1, 13, 9, m, 0)) for m in (1, 2, 3)]
BATCH = [FAILED[0], GOOD1, FAILED[1], GOOD2, FAILED[2], GOOD2]  # most failed, one repeated

CUFF_IDENTITY = DeviceIdentity(
    id="cuff-1",
    manufacturer="A&D Medical",
    model="UA-651BLE",
    serial_number="5140300185",
    eui64="00091FFFFE123456",
    firmware="2.3",
    address=CUFF,
)


def expected_bp(raw: bytes, sys: int, dia: int, mean: int, pulse: int, device_time: datetime) -> Reading:
    offset = HOST_NOW - FACTORY_CLOCK.replace(tzinfo=UTC)
    return Reading(
        device=CUFF_IDENTITY,
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=(
            Measurement(metric="bp_systolic", value=Decimal(sys), unit="mm[Hg]"),
            Measurement(metric="bp_diastolic", value=Decimal(dia), unit="mm[Hg]"),
            Measurement(metric="bp_mean", value=Decimal(mean), unit="mm[Hg]"),
            Measurement(metric="pulse_rate", value=Decimal(pulse), unit="/min"),
        ),
        observed_at=device_time.replace(tzinfo=UTC) + offset,
        received_at=HOST_NOW,
        device_time=device_time.replace(tzinfo=UTC),
        flags=(ReadingFlag.STORED_RECORD, ReadingFlag.CLOCK_CORRECTED),
        extra={"measurement_status": "", "pulse_rate_range": "within_range"},
        raw=raw,
    )


def cuff_runtime(
    state: MemoryState | None = None, *, set_clock: bool = True, idle_seconds: float | None = None
) -> FakeRuntime:
    opts = BleOptions(
        address=CUFF, scan_seconds=5, connect_seconds=5, set_clock=set_clock, idle_seconds=idle_seconds
    )
    return FakeRuntime(
        BloodPressureDriver(opts), device_id="cuff-1", state=state or MemoryState(), now=FakeClock(HOST_NOW)
    )


async def session(
    runtime: FakeRuntime,
    peripheral: FakePeripheral,
    payloads: list[bytes],
    uuid: str = BPM,
    wait_read: str | None = None,
) -> None:
    """One connection: the cuff indicates ``payloads`` once subscribed and drops the link after the
    central has set its clock (as an A&D cuff does after a few seconds) or read ``wait_read``."""
    task = asyncio.ensure_future(BleTransport(runtime).run())
    await indicate_then_leave(peripheral, payloads, uuid, wait_read)
    with pytest.raises(TransportError, match="lost"):
        await asyncio.wait_for(task, 10)


async def test_stored_batch_one_reading_per_good_record(fake_bluez: FakeBlueZ) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    runtime = cuff_runtime()
    await session(runtime, cuff, BATCH)

    assert runtime.readings == [
        expected_bp(GOOD1, 128, 84, 99, 67, datetime(2017, 1, 13, 8, 0, 0)),
        expected_bp(GOOD2, 135, 88, 104, 72, datetime(2017, 1, 14, 9, 30, 0)),
    ]
    # the stored readings are placed on the host time line: 26 h and 30 min before "now"
    assert [r.observed_at for r in runtime.readings] == [
        HOST_NOW - timedelta(hours=26),
        HOST_NOW - timedelta(minutes=30),
    ]
    assert runtime.status[0] == DeviceStatusEvent(identity=CUFF_IDENTITY, battery_percent=87)
    # the cuff's clock was set from the host clock
    assert cuff.writes[DATE_TIME] == [bytes.fromhex("EA 07 0B 1C 0C 00 00")]
    assert decode_date_time(cuff.writes[DATE_TIME][0]).key() == "2026-11-28T12:00:00"
    assert runtime.connections == [(True, CUFF), (False, "link ended")]
    assert runtime.failures == []


async def test_dropped_link_and_restart_produce_no_duplicates(fake_bluez: FakeBlueZ) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    state = MemoryState()
    first = cuff_runtime(state)
    await session(first, cuff, [FAILED[0], GOOD1])  # the link drops in the middle of the batch
    assert [r.raw for r in first.readings] == [GOOD1]

    await session(first, cuff, BATCH)  # reconnect: the cuff sends everything again
    assert [r.raw for r in first.readings] == [GOOD1, GOOD2]

    restarted = cuff_runtime(state)  # agent restart: new runtime, same durable state
    await session(restarted, cuff, [*BATCH, GOOD1])
    assert restarted.readings == []
    assert restarted.status[0].identity == CUFF_IDENTITY

    good3 = bpm(118, 76, 90, 64, datetime(2017, 1, 14, 9, 59, 0))
    await session(restarted, cuff, [*BATCH, good3])
    assert [r.raw for r in restarted.readings] == [good3]
    assert cuff.connect_count == 4


async def test_live_reading_with_set_clock_uses_device_time(fake_bluez: FakeBlueZ) -> None:
    now_local = HOST_NOW.replace(tzinfo=None)
    cuff = fake_bluez.add(and_ua651ble(clock=encode_date_time(now_local)))
    runtime = cuff_runtime()
    live = bpm(121, 79, 93, 70, now_local - timedelta(seconds=20))
    await session(runtime, cuff, [live])
    (reading,) = runtime.readings
    assert reading.observed_at == HOST_NOW - timedelta(seconds=20)
    assert reading.device_time == HOST_NOW - timedelta(seconds=20)
    assert reading.flags == ()
    assert reading.values() == {
        "bp_systolic": Decimal(121),
        "bp_diastolic": Decimal(79),
        "bp_mean": Decimal(93),
        "pulse_rate": Decimal(70),
    }


async def test_set_clock_false_leaves_the_clock(fake_bluez: FakeBlueZ) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    runtime = cuff_runtime(set_clock=False)
    task = asyncio.ensure_future(BleTransport(runtime).run())
    await cuff.wait_notifying(BPM)
    cuff.indicate(BPM, GOOD1)
    await runtime.wait_readings(1)
    cuff.drop_link()
    with pytest.raises(TransportError):
        await task
    assert DATE_TIME not in cuff.writes
    assert DATE_TIME in cuff.reads  # the offset was still measured
    assert runtime.readings[0].flags == (ReadingFlag.STORED_RECORD, ReadingFlag.CLOCK_CORRECTED)


async def test_connect_failure_is_a_transport_error_then_recovers(fake_bluez: FakeBlueZ) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    cuff.fail_next_connect()
    runtime = cuff_runtime()
    with pytest.raises(
        TransportError, match=r"failed: \[org.bluez.Error.Failed\] Software caused connection abort$"
    ):
        await asyncio.wait_for(BleTransport(runtime).run(), 10)
    assert runtime.events == []
    await session(runtime, cuff, [GOOD1])
    assert len(runtime.readings) == 1


async def test_connection_abort_by_local_is_retried_by_bleak(fake_bluez: FakeBlueZ) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    cuff.fail_next_connect(message="le-connection-abort-by-local")
    runtime = cuff_runtime()
    await session(runtime, cuff, [GOOD1])
    assert [r.raw for r in runtime.readings] == [GOOD1]


async def test_device_not_advertising_is_not_found(fake_bluez: FakeBlueZ) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    cuff.set_advertising(False)
    runtime = FakeRuntime(
        BloodPressureDriver(BleOptions(address=CUFF, scan_seconds=0.3)),
        device_id="cuff-1",
        now=FakeClock(HOST_NOW),
    )
    with pytest.raises(DeviceNotFoundError, match=r"00:09:1F:12:34:56 not seen within 0.3 s"):
        await BleTransport(runtime).run()
    assert cuff.connect_count == 0


async def test_a_stop_that_comes_as_the_device_is_seen_stops_the_transport(
    fake_bluez: FakeBlueZ, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent's stop cancels the transport in the same loop turn as the scan sees the cuff: the sighting
    # must not win over the cancel (on Python 3.11 asyncio.wait_for let it, and the stopped transport
    # went on to connect to the cuff, past the agent's stop).
    cuff = fake_bluez.add(and_ua651ble())
    seen = ScanHub._seen
    task: asyncio.Task[None] | None = None

    def seen_as_the_stop_comes(hub: ScanHub, device: BLEDevice, adv: AdvertisementData) -> None:
        seen(hub, device, adv)
        if task is not None and not task.done():
            task.cancel()

    monkeypatch.setattr(ScanHub, "_seen", seen_as_the_stop_comes)
    runtime = cuff_runtime()
    task = asyncio.ensure_future(BleTransport(runtime).run())
    await until(task.done, what="the transport to stop")
    assert task.cancelled()
    assert cuff.connect_count == 0
    assert runtime.connections == []


async def test_a_stop_that_comes_as_the_link_is_disconnected_stops_the_transport(
    fake_bluez: FakeBlueZ, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cuff drops the link and the agent's stop comes in the loop turn in which the transport's
    # disconnect completes: the stop must win (on Python 3.11 asyncio.wait_for dropped it, run() raised
    # "lost" and the supervisor reconnected after its back-off, past the agent's stop).
    cuff = fake_bluez.add(and_ua651ble())
    runtime = cuff_runtime()
    task = asyncio.ensure_future(BleTransport(runtime).run())
    disconnect = BleakClient.disconnect
    loop = asyncio.get_running_loop()

    async def disconnect_as_the_stop_comes(client: BleakClient) -> None:
        await disconnect(client)
        done: asyncio.Future[None] = loop.create_future()

        def last_reply_and_stop() -> None:
            done.set_result(None)
            task.cancel()

        loop.call_soon(last_reply_and_stop)
        await done

    monkeypatch.setattr(BleakClient, "disconnect", disconnect_as_the_stop_comes)
    await indicate_then_leave(cuff, [GOOD1])
    await until(task.done, what="the transport to stop")
    assert task.cancelled()
    assert [r.raw for r in runtime.readings] == [GOOD1]


async def test_find_by_name_pattern_and_service(fake_bluez: FakeBlueZ) -> None:
    fake_bluez.add(and_uc352ble())  # a scale whose name does not match
    fake_bluez.add(and_ua651ble(address="00:09:1F:AA:BB:CC", name="A&D_UA-651_BBCC"))
    scale = fake_bluez.add(and_uc352ble(address="00:09:1F:00:00:01", name="A&D_UA-651_fake_scale"))
    runtime = FakeRuntime(
        BloodPressureDriver(BleOptions(name=r"^A&D_UA-651", scan_seconds=5)),
        device_id="cuff-1",
        now=FakeClock(HOST_NOW),
    )
    task = asyncio.ensure_future(BleTransport(runtime).run())
    cuff = fake_bluez["00:09:1F:AA:BB:CC"]
    await cuff.wait_notifying(BPM)
    cuff.indicate(BPM, GOOD1)
    await cuff.wait_write(DATE_TIME)
    cuff.drop_link()
    with pytest.raises(TransportError):
        await task
    assert scale.connect_count == 0  # the name matched but it offers no 0x1810
    assert runtime.readings[0].device.address == "00:09:1F:AA:BB:CC"
    assert runtime.readings[0].device.eui64 == "00091FFFFEAABBCC"


async def test_scale_weight_with_identity(fake_bluez: FakeBlueZ) -> None:
    scale = fake_bluez.add(and_uc352ble())
    runtime = FakeRuntime(
        WeightScaleDriver(BleOptions(address="00:09:1F:65:43:21", scan_seconds=5)),
        device_id="scale-1",
        now=FakeClock(HOST_NOW),
    )
    record = (
        b"\x0a"
        + (14000).to_bytes(2, "little")
        + encode_date_time(datetime(2017, 1, 14, 9, 0))
        + b"\xe5\x00\xd6\x06"
    )
    await session(runtime, scale, [record], uuid=u16(0x2A9D))
    (reading,) = runtime.readings
    assert reading.device.serial_number == "5150200033"
    assert reading.measurements == (
        Measurement(metric="body_weight", value=Decimal("70.000"), unit="kg"),
        Measurement(metric="bmi", value=Decimal("22.9"), unit="kg/m2", method="ACALC"),
        Measurement(metric="body_height", value=Decimal("1.750"), unit="m"),
    )
    assert reading.observed_at == HOST_NOW - timedelta(hours=1)


async def test_plx_stored_records_through_racp_and_current_time(fake_bluez: FakeBlueZ) -> None:
    oximeter = fake_bluez.add(plx_oximeter())
    oximeter.spec.set_value(u16(0x2A2B), bytes.fromhex("EA 07 0B 1C 0B 00 00 06 00 00"))  # 1 h slow
    racp = u16(0x2A52)
    spot = u16(0x2A5E)

    def stored(spo2: int, pr: int, at: datetime) -> bytes:
        return (
            b"\x03"
            + encode_sfloat(Number(spo2, 0))
            + encode_sfloat(Number(pr, 0))
            + encode_date_time(at)
            + (1 << 9 | 1 << 8).to_bytes(2, "little")  # from storage, fully qualified
        )

    records = [stored(97, 61, datetime(2026, 11, 28, 9, 0)), stored(95, 70, datetime(2026, 11, 28, 10, 0))]

    async def answer(p: FakePeripheral, request: bytes) -> None:
        assert request == b"\x01\x01"  # all records
        for record in records:
            p.indicate(spot, record)
        p.indicate(racp, b"\x06\x00\x01\x01")

    oximeter.on_write(racp, answer)
    runtime = FakeRuntime(
        PulseOximeterDriver(BleOptions(address=oximeter.spec.address, scan_seconds=5)),
        device_id="spo2-1",
        now=FakeClock(HOST_NOW),
    )
    task = asyncio.ensure_future(BleTransport(runtime).run())
    await oximeter.wait_write(racp)
    await oximeter.wait_notifying(u16(0x2A5F))
    await runtime.wait_readings(2)  # the stored records
    oximeter.indicate(u16(0x2A5F), bytes.fromhex("00 E8 F3 84 F3"))  # live, no time stamp
    await runtime.wait_readings(3)
    oximeter.drop_link()
    with pytest.raises(TransportError):
        await task

    stored_readings, live = runtime.readings[:2], runtime.readings[2:]
    assert [r.values() for r in stored_readings] == [
        {"spo2": Decimal(97), "pulse_rate_oximeter": Decimal(61)},
        {"spo2": Decimal(95), "pulse_rate_oximeter": Decimal(70)},
    ]
    assert [r.observed_at for r in stored_readings] == [
        datetime(2026, 11, 28, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 28, 11, 0, tzinfo=UTC),
    ]
    assert all(r.flags == (ReadingFlag.STORED_RECORD, ReadingFlag.CLOCK_CORRECTED) for r in stored_readings)
    assert [r.values() for r in live] == [{"spo2": Decimal(100), "pulse_rate_oximeter": Decimal(90)}]
    assert live[0].observed_at == HOST_NOW
    assert live[0].flags == ()
    assert runtime.status[0].identity is not None
    assert runtime.status[0].identity.serial_number == "502837"
    (clock_write,) = oximeter.writes[u16(0x2A2B)]
    assert decode_current_time(clock_write).date_time.key() == "2026-11-28T12:00:00"


async def test_thermometer_type_from_temperature_type_characteristic(fake_bluez: FakeBlueZ) -> None:
    probe = fake_bluez.add(thermometer())
    runtime = FakeRuntime(
        ThermometerDriver(ThermometerOptions(address=probe.spec.address, scan_seconds=5)),
        device_id="temp-1",
        now=FakeClock(HOST_NOW),
    )
    # no time stamp, no type byte: the type comes from 0x2A1D (mouth)
    await session(
        runtime, probe, [b"\x00" + encode_float(Number(3712, -2))], uuid=u16(0x2A1C), wait_read=u16(0x2A1D)
    )
    assert runtime.readings[0].measurements == (
        Measurement(
            metric="body_temperature_oral",
            value=Decimal("37.12"),
            unit="Cel",
            site="74262004^Oral cavity structure^SCT",
        ),
    )
    assert runtime.readings[0].observed_at == HOST_NOW


async def test_undecodable_payload_is_counted_not_fatal(fake_bluez: FakeBlueZ) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    runtime = cuff_runtime()
    await session(runtime, cuff, [b"\x16\x80\x00", GOOD1])
    assert [r.raw for r in runtime.readings] == [GOOD1]
    assert [f.data for f in runtime.failures] == [b"\x16\x80\x00"]
    # every indication counts as a sign of life for silent_after_seconds, undecodable ones too
    assert runtime.bytes_heard == 3 + len(GOOD1)


async def test_link_lost_before_setup_uses_identity_and_offset_from_last_time(fake_bluez: FakeBlueZ) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    state = MemoryState()
    first = cuff_runtime(state, set_clock=False)
    task = asyncio.ensure_future(BleTransport(first).run())
    await cuff.wait_notifying(BPM)
    await cuff.wait_read(DATE_TIME)
    await until(
        lambda: {IDENTITY_KEY, OFFSET_KEY} <= state.data.keys(), what="identity and clock offset saved"
    )
    cuff.drop_link()
    with pytest.raises(TransportError):
        await task

    second = cuff_runtime(state)
    task = asyncio.ensure_future(BleTransport(second).run())
    await cuff.wait_notifying(BPM)
    cuff.indicate(BPM, GOOD2)
    cuff.drop_link()  # gone before Device Information or the clock could be read
    with pytest.raises(TransportError):
        await task
    assert second.readings == [expected_bp(GOOD2, 135, 88, 104, 72, datetime(2017, 1, 14, 9, 30, 0))]
    assert DATE_TIME not in cuff.writes


async def test_stored_record_with_clock_far_ahead_and_no_offset_uses_host_time(fake_bluez: FakeBlueZ) -> None:
    scale = fake_bluez.add(and_uc352ble())
    scale.spec.services = [s for s in scale.spec.services if s.uuid != u16(0x181D)] + [
        type(s)(s.uuid, s.handle, [c for c in s.characteristics if c.uuid != DATE_TIME])
        for s in scale.spec.services
        if s.uuid == u16(0x181D)
    ]  # a scale without a readable clock
    runtime = FakeRuntime(
        WeightScaleDriver(BleOptions(address="00:09:1F:65:43:21", scan_seconds=5)),
        device_id="cuff-1",
        now=FakeClock(HOST_NOW),
    )
    ahead = b"\x02" + (14000).to_bytes(2, "little") + encode_date_time(datetime(2031, 1, 1, 0, 0))
    await session(runtime, scale, [ahead], uuid=u16(0x2A9D), wait_read=u16(0x2A19))
    (reading,) = runtime.readings
    assert (reading.observed_at, reading.flags) == (HOST_NOW, (ReadingFlag.CLOCK_UNSET,))
    assert reading.device_time == datetime(2031, 1, 1, tzinfo=UTC)


async def test_idle_link_is_closed_by_the_agent(fake_bluez: FakeBlueZ) -> None:
    cuff = fake_bluez.add(and_ua651ble())
    runtime = cuff_runtime(idle_seconds=0.3)
    task = asyncio.ensure_future(BleTransport(runtime).run())
    await cuff.wait_notifying(BPM)
    cuff.indicate(BPM, GOOD1)
    with pytest.raises(TransportError, match=r"closed after 0.3 s without data"):
        await asyncio.wait_for(task, 10)
    assert (cuff.disconnect_requests, cuff.connected) == (1, False)
    assert [r.raw for r in runtime.readings] == [GOOD1]


async def test_with_the_agents_runtime_and_config(fake_bluez: FakeBlueZ) -> None:
    """The transport driven through the agent's own DeviceRuntimeImpl and config parsing."""
    from vitals_agent.agent.runtime import DeviceRuntimeImpl
    from vitals_agent.config.schema import parse_config
    from vitals_agent.drivers.base import DecodeContext, transport_class

    config = parse_config(
        {
            "agent": {"facility": "TEST"},
            "devices": [{"id": "cuff-1", "driver": "ble-blood-pressure", "address": CUFF, "scan_seconds": 5}],
        }
    )
    device = config.devices[0]
    assert device.report_policy() == "every"
    driver = driver_class(device.driver)(device.options)
    sunk: list[object] = []

    async def sink(_rt: DeviceRuntimeImpl, event: object) -> None:
        sunk.append(event)

    runtime = DeviceRuntimeImpl(
        device,
        driver,
        DecodeContext(device=DeviceIdentity(id="cuff-1"), now=FakeClock(HOST_NOW)),
        MemoryState(),
        sink,
    )
    cuff = fake_bluez.add(and_ua651ble())
    task = asyncio.ensure_future(transport_class(driver.transport)(runtime).run())
    await indicate_then_leave(cuff, BATCH)
    with pytest.raises(TransportError, match="lost"):
        await asyncio.wait_for(task, 10)
    readings = [e for e in sunk if isinstance(e, Reading)]
    assert [r.raw for r in readings] == [GOOD1, GOOD2]
    assert all(r.device == CUFF_IDENTITY for r in readings)
    assert runtime.status.battery_percent == 87


async def test_two_devices_share_one_discovery_session(fake_bluez: FakeBlueZ) -> None:
    """BlueZ allows one discovery session per D-Bus client and bleak shares one connection per loop:
    concurrent transports must not each call StartDiscovery (the second would get InProgress)."""
    cuff = fake_bluez.add(and_ua651ble())
    scale = fake_bluez.add(and_uc352ble())
    cuff_rt = cuff_runtime()
    scale_rt = FakeRuntime(
        WeightScaleDriver(BleOptions(address=scale.spec.address, scan_seconds=5)),
        device_id="scale-1",
        now=FakeClock(HOST_NOW),
    )
    weight = b"\x02" + (14000).to_bytes(2, "little") + encode_date_time(datetime(2017, 1, 14, 9, 0))
    tasks = [asyncio.ensure_future(BleTransport(rt).run()) for rt in (cuff_rt, scale_rt)]
    await asyncio.gather(
        indicate_then_leave(cuff, [GOOD1]), indicate_then_leave(scale, [weight], u16(0x2A9D))
    )
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert [type(r) for r in results] == [TransportError, TransportError]
    assert all("lost" in str(r) for r in results)
    assert [r.raw for r in cuff_rt.readings] == [GOOD1]
    assert [r.raw for r in scale_rt.readings] == [weight]
    assert not fake_bluez.adapter.discovering
