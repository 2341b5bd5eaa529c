"""The BLE session state machine on its own: no D-Bus, no bleak, a fake clock and a dict as the device's
memory. The fake-BlueZ tests (test_ble_transport.py, test_e2e_ble.py) prove the bleak wiring holds."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import structlog
from structlog.testing import capture_logs

from tests.fakebluez.payloads import NAN, blood_pressure
from tests.kit import FakeClock, MemoryState, fixed_ctx
from vitals_agent.drivers.base import DecodeFailure
from vitals_agent.drivers.ble import uuids as U
from vitals_agent.drivers.ble.clock import encode_date_time
from vitals_agent.drivers.ble.decoders import racp_request_all, racp_request_since
from vitals_agent.drivers.ble.drivers import BleOptions, BloodPressureDriver
from vitals_agent.drivers.ble.session import (
    IDENTITY_KEY,
    OFFSET_KEY,
    OK,
    SEQUENCE_KEY,
    Action,
    BleSession,
    Emit,
    Failed,
    Read,
    Record,
    Result,
    Subscribe,
    Write,
)
from vitals_agent.errors import TransportError
from vitals_agent.models import DeviceStatusEvent, Reading, ReadingFlag

HOST = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
CUFF = "00:09:1F:12:34:56"
INDICATE = frozenset({"indicate"})
READ = frozenset({"read"})
CLOCK = frozenset({"read", "write"})
CUFF_GATT: dict[str, frozenset[str]] = {
    U.BLOOD_PRESSURE_MEASUREMENT: INDICATE,
    U.INTERMEDIATE_CUFF_PRESSURE: frozenset({"notify"}),
    U.BLOOD_PRESSURE_FEATURE: READ,
    U.MANUFACTURER_NAME: READ,
    U.SERIAL_NUMBER: READ,
    U.BATTERY_LEVEL: READ,
    U.DATE_TIME: CLOCK,
}
DIS_VALUES = {
    U.MANUFACTURER_NAME: b"A&D Medical",
    U.SERIAL_NUMBER: b"5140300185",
    U.BATTERY_LEVEL: bytes([87]),
    U.BLOOD_PRESSURE_FEATURE: b"\x00\x00",
}
DEVICE_CLOCK = datetime(2026, 11, 28, 11, 58, 30)  # 90 s behind the host
GOOD = blood_pressure(128, 84, 99, 67, datetime(2026, 11, 28, 11, 50, 0))


def session(
    state: MemoryState | None = None, clock: FakeClock | None = None, **options: object
) -> BleSession:
    driver = BloodPressureDriver(BleOptions(address=CUFF, **options))  # type: ignore[arg-type]
    ctx = fixed_ctx("cuff-1", now=clock or FakeClock(HOST))
    return BleSession(
        driver, ctx, state if state is not None else MemoryState(), CUFF, structlog.get_logger()
    )


def play(
    steps: Generator[Action, Result, None], answers: Mapping[Action | str, Result] | None = None
) -> list[Action]:
    """Run a setup to its end, answering each action (by action, or by UUID for reads), OK by default;
    return the actions in order."""
    answers = answers or {}
    done: list[Action] = []
    try:
        action = next(steps)
        while True:
            done.append(action)
            answer = answers.get(action)
            if answer is None and isinstance(action, Read):
                answer = answers.get(action.uuid, Result(data=DIS_VALUES.get(action.uuid, b"")))
            action = steps.send(answer or OK)
    except StopIteration:
        return done


def test_setup_subscribes_first_then_reads_identity_then_sets_the_clock() -> None:
    state = MemoryState()
    s = session(state)
    actions = play(s.setup(CUFF_GATT), {U.DATE_TIME: Result(data=encode_date_time(DEVICE_CLOCK))})
    assert actions[:2] == [Subscribe(U.BLOOD_PRESSURE_MEASUREMENT), Subscribe(U.INTERMEDIATE_CUFF_PRESSURE)]
    reads = [a.uuid for a in actions if isinstance(a, Read)]
    dis = [U.MANUFACTURER_NAME, U.SERIAL_NUMBER, U.BLOOD_PRESSURE_FEATURE, U.BATTERY_LEVEL]
    assert reads == [*dis, U.DATE_TIME]
    (emit,) = [a for a in actions if isinstance(a, Emit)]
    assert isinstance(emit.event, DeviceStatusEvent) and emit.event.battery_percent == 87
    assert emit.event.identity is not None and emit.event.identity.serial_number == "5140300185"
    assert actions.index(emit) < actions.index(Read(U.DATE_TIME, "refusal"))  # identity before the clock
    host_local = encode_date_time(HOST.replace(tzinfo=None))  # the zone is UTC
    assert actions[-1] == Write(U.DATE_TIME, host_local, response=True, tolerate="any")
    assert s.offset == timedelta(seconds=90)
    assert state.data[OFFSET_KEY] == "0"  # the clock was set: the next connection starts from 0
    assert '"serial_number":"5140300185"' in state.data[IDENTITY_KEY]


def test_no_measurement_characteristic_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="offers none of the characteristics 2A35, 2A36"):
        play(session().setup({U.BATTERY_LEVEL: READ}))


def test_unreadable_identity_and_a_refused_clock_do_not_end_the_link() -> None:
    state = MemoryState()
    s = session(state, set_clock=False)
    with capture_logs() as logs:
        play(
            s.setup(CUFF_GATT),
            {U.SERIAL_NUMBER: Result(error="Not Permitted"), U.DATE_TIME: Result(error="Read Not Permitted")},
        )
    assert s.identity.serial_number is None and s.identity.manufacturer == "A&D Medical"
    assert s.offset is None and OFFSET_KEY not in state.data
    events = [e["event"] for e in logs]
    assert "ble.read_failed" in events and "ble.clock_read_refused" in events


def test_a_failed_clock_write_keeps_the_measured_offset() -> None:
    state = MemoryState()
    play(
        session(state).setup(CUFF_GATT),
        {
            U.DATE_TIME: Result(data=encode_date_time(DEVICE_CLOCK)),
            Write(U.DATE_TIME, encode_date_time(HOST.replace(tzinfo=None)), True, "any"): Result(
                error="busy"
            ),
        },
    )
    assert state.data[OFFSET_KEY] == "90"


def test_an_undecodable_clock_is_reported_and_not_used() -> None:
    s = session(set_clock=False)
    actions = play(s.setup(CUFF_GATT), {U.DATE_TIME: Result(data=b"\x01")})
    (failed,) = [a for a in actions if isinstance(a, Failed)]
    assert failed.failure.data == b"\x01" and s.offset is None


def test_racp_asks_for_everything_first_and_then_only_for_newer_sequences() -> None:
    gatt = {**CUFF_GATT, U.RACP: frozenset({"write", "indicate"}), U.BLOOD_PRESSURE_RECORD: INDICATE}
    state = MemoryState()
    first = session(state, set_clock=False)
    actions = play(first.setup(gatt))
    assert actions[-2:] == [Subscribe(U.RACP), Write(U.RACP, racp_request_all(), response=True)]
    assert first.racp_active
    state.data[SEQUENCE_KEY] = "516"
    actions = play(session(state, set_clock=False).setup(gatt))
    assert actions[-1] == Write(U.RACP, racp_request_since(517), response=True)
    without = play(session(state, set_clock=False, stored_records=False).setup(gatt))
    assert not [a for a in without if isinstance(a, Subscribe | Write) and a.uuid == U.RACP]


def test_a_record_is_handed_over_once_across_connections() -> None:
    state = MemoryState()
    s = session(state)
    play(s.setup(CUFF_GATT), {U.DATE_TIME: Result(data=encode_date_time(DEVICE_CLOCK))})
    record = s.receive(U.BLOOD_PRESSURE_MEASUREMENT, GOOD, HOST)
    assert isinstance(record, Record) and isinstance(record.event, Reading)
    assert record.event.values()["bp_systolic"] == Decimal(128)
    s.delivered(record)
    with capture_logs() as logs:
        assert s.receive(U.BLOOD_PRESSURE_MEASUREMENT, GOOD, HOST) is None  # the cuff sent it again
    assert [e["event"] for e in logs] == ["ble.duplicate_record_skipped"]
    again = session(state)  # the agent restarted; the cuff still remembers the record
    play(again.setup(CUFF_GATT), {U.DATE_TIME: Result(data=encode_date_time(DEVICE_CLOCK))})
    assert again.receive(U.BLOOD_PRESSURE_MEASUREMENT, GOOD, HOST) is None


def test_a_record_refused_before_delivery_is_offered_again() -> None:
    s = session()
    play(s.setup(CUFF_GATT))
    assert isinstance(s.receive(U.BLOOD_PRESSURE_MEASUREMENT, GOOD, HOST), Record)
    assert isinstance(s.receive(U.BLOOD_PRESSURE_MEASUREMENT, GOOD, HOST), Record)  # never delivered


def test_stored_or_live_follows_racp_and_the_corrected_age() -> None:
    clock = FakeClock(HOST)
    s = session(clock=clock, set_clock=False, live_seconds=120)
    play(s.setup(CUFF_GATT), {U.DATE_TIME: Result(data=encode_date_time(DEVICE_CLOCK))})
    # 11:58:00 device time + 90 s offset = 11:59:30: 30 s old, live
    fresh = blood_pressure(120, 80, 93, 70, datetime(2026, 11, 28, 11, 58, 0))
    live = s.receive(U.BLOOD_PRESSURE_MEASUREMENT, fresh, clock())
    assert isinstance(live, Record) and isinstance(live.event, Reading)
    assert ReadingFlag.STORED_RECORD not in live.event.flags
    clock.advance(minutes=10)  # the same record arriving ten minutes later was stored by the cuff
    late = s.receive(U.BLOOD_PRESSURE_MEASUREMENT, fresh, clock())
    assert isinstance(late, Record) and isinstance(late.event, Reading)
    assert ReadingFlag.STORED_RECORD in late.event.flags
    s.racp_active = True  # anything during a RACP transfer is stored
    during = s.receive(U.BLOOD_PRESSURE_MEASUREMENT, blood_pressure(1, 1, 1, 1, DEVICE_CLOCK), clock())
    assert isinstance(during, Record) and isinstance(during.event, Reading)
    assert ReadingFlag.STORED_RECORD in during.event.flags
    assert s.receive(U.RACP, bytes([0x06, 0x00, 0x01, 0x01]), clock()) is None  # success ends the transfer
    assert not s.racp_active


def test_failed_measurements_and_garbage() -> None:
    s = session()
    play(s.setup(CUFF_GATT))
    with capture_logs() as logs:
        assert s.receive(U.BLOOD_PRESSURE_MEASUREMENT, blood_pressure(NAN, NAN, NAN, NAN, HOST), HOST) is None
    assert [e["event"] for e in logs] == ["ble.failed_measurement_dropped"]
    failure = s.receive(U.BLOOD_PRESSURE_MEASUREMENT, b"\x16\x80", HOST)
    assert isinstance(failure, DecodeFailure) and failure.data == b"\x16\x80"
    assert isinstance(s.receive(U.RACP, b"\xff", HOST), DecodeFailure)


def test_sequence_numbers_only_grow() -> None:
    state = MemoryState()
    s = session(state)
    s.delivered(Record(DeviceStatusEvent(), None, 9))
    s.delivered(Record(DeviceStatusEvent(), None, 4))
    assert state.data[SEQUENCE_KEY] == "9"
