"""Automated office blood pressure (issue #16 part 5): the pure series rules (agent/pipeline/series.py) and
the pipeline around them (in process, injected clock): each reading sent, then the exact mean marked as a
mean of N with the times; discard_first; the agent starts the next measurement when the driver can; a
patient change, a missed deadline or an error reading end the series as documented. Every ORU goes through
the hl7apy STRICT oracle."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fake_ehr import Hl7Ehr
from tests.kit import MRN, T0, FakeClock, until
from tests.oracle import validate_oru
from tests.review_helpers import OTHER_MRN, bp_reading, orus, services
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.pipeline.series import (
    MAX_FAILED,
    MEASUREMENT_GRACE_SECONDS,
    BpSeries,
    counts,
    mean_value,
    series_mean,
)
from vitals_agent.agent.service import AgentService
from vitals_agent.config.review import BpProtocol
from vitals_agent.config.schema import parse_config
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.models import DeviceClass, DeviceIdentity, Measurement, Reading

__all__ = ["services"]  # the fixture

AOBP = BpProtocol(readings=3, interval_seconds=60.0, discard_first=True)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _failed(at: datetime) -> Reading:
    """A cuff error: no values, the reason instead."""
    return Reading(
        device=DeviceIdentity(id="cuff"),
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=(
            Measurement(metric="bp_systolic", value=None, unit="mm[Hg]", absent_reason="cuff error"),
            Measurement(metric="bp_diastolic", value=None, unit="mm[Hg]", absent_reason="cuff error"),
        ),
        observed_at=at,
        received_at=at,
    )


# --- the mean ------------------------------------------------------------------------------------------


def test_mean_is_exact_and_ties_go_to_even() -> None:
    assert mean_value([Decimal(118), Decimal(121), Decimal(124)]) == Decimal(121)
    assert mean_value([Decimal(120), Decimal(121)]) == Decimal(120)  # 120.5 -> 120 (even)
    assert mean_value([Decimal(121), Decimal(122)]) == Decimal(122)  # 121.5 -> 122 (even)
    assert mean_value([Decimal(120), Decimal(121), Decimal(121)]) == Decimal(121)  # 120.67
    assert str(mean_value([Decimal("36.55"), Decimal("36.6")])) == "36.58"  # 36.575 -> 36.58 (even)
    assert str(mean_value([Decimal("36.5"), Decimal("36.6")])) == "36.6"  # 36.55 -> 36.6 (even)
    with pytest.raises(ValueError, match="no values"):
        mean_value([])


@given(st.lists(st.decimals(min_value=0, max_value=400, places=1, allow_nan=False), min_size=1, max_size=10))
def test_mean_is_the_exact_mean_rounded_half_even(values: list[Decimal]) -> None:
    got = mean_value(values)
    exact = sum((Fraction(v) for v in values), Fraction(0)) / len(values)
    places = max(-int(v.as_tuple().exponent) for v in values)
    quantum = Fraction(1, 10**places)
    assert -int(got.as_tuple().exponent) <= max(places, 0)  # never finer than the inputs
    assert abs(Fraction(got) - exact) <= quantum / 2  # the nearest step of the inputs' precision
    if abs(Fraction(got) - exact) == quantum / 2:  # a tie: the even neighbour
        assert int(Fraction(got) / quantum) % 2 == 0
    assert min(values) <= got <= max(values)


@given(
    st.lists(st.integers(60, 250), min_size=3, max_size=3),
    st.lists(st.integers(30, 150), min_size=3, max_size=3),
)
def test_series_mean_averages_every_metric_of_every_reading(
    systolic: list[int], diastolic: list[int]
) -> None:
    readings = [
        bp_reading(_at(60 * i), systolic=str(s), diastolic=str(d), pulse="70")
        for i, (s, d) in enumerate(zip(systolic, diastolic, strict=True))
    ]
    mean = series_mean(readings, taken=3, discarded_first=False)
    values = {m.metric: m.value for m in mean.measurements}
    assert values["bp_systolic"] == mean_value([Decimal(s) for s in systolic])
    assert values["bp_diastolic"] == mean_value([Decimal(d) for d in diastolic])
    assert values["pulse_rate"] == Decimal(70)
    assert mean.series is not None and mean.series.averaged_at == tuple(r.observed_at for r in readings)
    assert mean.observed_at == readings[-1].observed_at and mean.series.count == 3


def test_a_metric_missing_from_one_reading_is_not_averaged() -> None:
    first = bp_reading(_at(0))
    second = bp_reading(_at(60)).model_copy(
        update={"measurements": bp_reading(_at(60)).measurements[:2]}  # no pulse this time
    )
    mean = series_mean([first, second], taken=2, discarded_first=False)
    assert [m.metric for m in mean.measurements] == ["bp_systolic", "bp_diastolic"]


# --- the series rules ------------------------------------------------------------------------------------


def test_discard_first_sends_the_mean_of_the_last_two() -> None:
    series = BpSeries(AOBP, can_start=True)
    assert series.offer(bp_reading(_at(0), systolic="150"), 0.0).started
    assert series.due(59.0) is None
    assert series.due(60.0) == "start" and series.due(61.0) is None  # once
    assert series.offer(bp_reading(_at(100), systolic="131"), 100.0).mean is None
    done = series.offer(bp_reading(_at(200), systolic="128"), 200.0)
    assert done.joined and done.mean is not None and not series.running
    values = {m.metric: m.value for m in done.mean.measurements}
    assert values["bp_systolic"] == Decimal(130)  # (131 + 128) / 2 = 129.5 -> 130 (even); 150 left out
    assert done.mean.series is not None
    assert (done.mean.series.taken, done.mean.series.averaged_at) == (3, (_at(100), _at(200)))
    assert done.mean.series.discarded_first and series.completed == 1


def test_without_discard_first_every_reading_counts() -> None:
    series = BpSeries(BpProtocol(readings=2, interval_seconds=30.0, discard_first=False), can_start=False)
    series.offer(bp_reading(_at(0), systolic="150"), 0.0)
    assert series.due(30.0) is None  # a BLE cuff: nothing to start, only awaited
    done = series.offer(bp_reading(_at(30), systolic="130"), 30.0)
    assert done.mean is not None and done.mean.measurements[0].value == Decimal(140)


def test_a_late_reading_abandons_the_series_and_starts_a_new_one() -> None:
    series = BpSeries(AOBP, can_start=True)
    series.offer(bp_reading(_at(0)), 0.0)
    late = 60.0 + MEASUREMENT_GRACE_SECONDS + 1
    outcome = series.offer(bp_reading(_at(late)), late)
    assert (outcome.abandoned, outcome.started, outcome.mean) == (1, True, None)
    assert series.taken == 1 and series.abandoned == 1


def test_the_deadline_passing_abandons_the_series() -> None:
    series = BpSeries(AOBP, can_start=True)
    series.offer(bp_reading(_at(0)), 0.0)
    assert series.due(60.0) == "start"
    assert series.due(60.0 + MEASUREMENT_GRACE_SECONDS + 0.5) == "abandon" and not series.running
    assert series.due(1000.0) is None


def test_an_error_reading_does_not_count_and_the_module_measures_again_at_once() -> None:
    series = BpSeries(AOBP, can_start=True)
    assert not counts(_failed(_at(0))) and counts(bp_reading(_at(0)))
    assert not series.offer(_failed(_at(0)), 0.0).joined and not series.running  # starts nothing
    series.offer(bp_reading(_at(1)), 1.0)
    assert series.due(2.0) is None
    assert not series.offer(_failed(_at(60)), 70.0).joined
    assert series.due(70.0) == "start" and series.failed == 1 and series.taken == 1
    assert series.deadline == 70.0 + MEASUREMENT_GRACE_SECONDS  # its result is due within the grace
    for k in range(MAX_FAILED - 1):
        assert series.offer(_failed(_at(80 + k)), 80.0 + k).abandoned == 0
    assert series.offer(_failed(_at(99)), 99.0).abandoned == 1 and not series.running  # one too many


def test_an_older_stored_record_is_not_a_step_of_the_series() -> None:
    series = BpSeries(AOBP, can_start=False)
    series.offer(bp_reading(_at(100)), 0.0)
    assert not series.offer(bp_reading(_at(50)), 1.0).joined and series.taken == 1


def test_stop_ends_the_series_without_a_mean() -> None:
    series = BpSeries(AOBP, can_start=True)
    assert series.stop() == 0
    series.offer(bp_reading(_at(0)), 0.0)
    series.offer(bp_reading(_at(60)), 60.0)
    assert series.stop() == 2 and not series.running and series.due(120.0) is None


@given(
    st.lists(st.sampled_from(["ok", "error", "late", "stop"]), max_size=12),
    st.integers(2, 5),
    st.booleans(),
)
def test_any_sequence_gives_a_mean_only_of_a_complete_series(steps: list[str], n: int, discard: bool) -> None:
    """A mean comes exactly when ``readings`` good readings came in time without a stop in between, and
    averages the right ones."""
    series = BpSeries(BpProtocol(readings=n, interval_seconds=60.0, discard_first=discard), can_start=True)
    mono, deadline, fails, means = 0.0, 0.0, 0, 0
    run: list[int] = []
    for i, step in enumerate(steps):
        if step == "stop":
            series.stop()
            run, fails = [], 0
            continue
        mono += 60.0 + (MEASUREMENT_GRACE_SECONDS + 1 if step == "late" else 0)
        if run and mono > deadline:
            run, fails = [], 0  # ran out of time: a new series (or none)
        reading = _failed(_at(mono)) if step == "error" else bp_reading(_at(mono), systolic=str(100 + i))
        outcome = series.offer(reading, mono)
        if step == "error":
            if run:
                fails += 1
                deadline = mono + MEASUREMENT_GRACE_SECONDS  # measured again at once
                if fails > MAX_FAILED:
                    run, fails = [], 0
        else:
            run.append(100 + i)
            deadline = mono + 60.0 + MEASUREMENT_GRACE_SECONDS
        if len(run) == n:
            averaged = run[1:] if discard else run
            assert outcome.mean is not None
            assert outcome.mean.measurements[0].value == mean_value([Decimal(v) for v in averaged])
            assert outcome.mean.series is not None and outcome.mean.series.count == len(averaged)
            means += 1
            run, fails = [], 0
        else:
            assert outcome.mean is None
        assert series.taken == len(run)
    assert series.completed == means


# --- in the agent ----------------------------------------------------------------------------------------


def _service(tmp_path: Path, time: FakeClock, driver: str, **protocol: Any) -> AgentService:
    from vitals_agent.agent.clock import Clock

    device: dict[str, Any] = {"id": "cuff", "driver": driver, "bp_protocol": {"readings": 3, **protocol}}
    device.update(
        {"port": "/dev/null"} if driver == "suntech-advantage" else {"address": "00:09:1F:12:34:56"}
    )
    doc = {
        "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path)},
        "control": {"enabled": False},
        "patient": {"assigning_authority": "EXCLINIC&2.999.1&ISO"},
        "devices": [device],
    }
    return AgentService(parse_config(doc), clock=Clock(wall=time, mono=time.monotonic))


def _set_patient(service: AgentService, mrn: str = MRN) -> None:
    service.patients.set(PatientDetails(mrn=mrn, family="QUIXOTEFAMILY", given="ZEBEDEEGIVEN"), Origin("api"))


class _Link:
    """The open link of a device, as the supervisor hands it to the runtime: records what is written (and
    when, on ``time``'s monotonic face)."""

    def __init__(self, time: FakeClock | None = None) -> None:
        self.written: list[bytes] = []
        self.written_at: list[float] = []
        self._time = time

    async def write(self, data: bytes) -> None:
        self.written.append(data)
        if self._time is not None:
            self.written_at.append(self._time.monotonic())


async def _cuff(service: AgentService, time: FakeClock, systolic: str) -> None:
    reading = bp_reading(time.now, systolic=systolic).model_copy(update={"device": DeviceIdentity(id="cuff")})
    await service.pipeline.on_event(service.runtimes["cuff"], reading)


async def test_the_agent_starts_each_measurement_and_sends_every_reading_and_the_mean(
    tmp_path: Path, services: list[AgentService]
) -> None:
    from vitals_agent.drivers.suntech import START_MEASUREMENT

    time = FakeClock()
    service = _service(tmp_path, time, "suntech-advantage", interval_seconds=60)
    services.append(service)
    link = _Link()
    service.runtimes["cuff"].transport = link
    _set_patient(service)
    await _cuff(service, time, "150")  # the clinician started the first one
    for systolic in ("131", "128"):
        time.advance(seconds=59)
        await service.pipeline.tick()
        assert link.written == [] if systolic == "131" else len(link.written) == 1
        time.advance(seconds=1)
        await service.pipeline.tick()
        await service.pipeline.tick()
        assert link.written[-1] == START_MEASUREMENT
        time.advance(seconds=40)  # the measurement takes a while
        await _cuff(service, time, systolic)
    assert len(link.written) == 2
    messages = orus(service)
    assert [m.value("150021") for m in messages] == ["150", "131", "128", "130"]
    mean = messages[-1]
    assert {r.text(17) for r in mean.obx if r[2] == "NM"} == {"ACALC"}  # calculated
    assert mean.obr[3] != messages[-2].obr[3]  # the mean is its own observation, not the last reading
    notes = [s[3] for s in mean.all("NTE")]
    assert any(
        "mean of 2 readings taken at" in n and "the first of the series' 3 readings" in n for n in notes
    )
    counters = service.runtimes["cuff"].status.counters
    assert (counters["bp_series_started"], counters["bp_series_completed"]) == (1, 1)


@pytest.mark.parametrize("interval", [1, 60])
async def test_the_next_measurement_starts_when_it_is_due_not_at_a_later_tick(
    tmp_path: Path, services: list[AgentService], interval: int
) -> None:
    # The once-a-second tick started a 1 s series' measurements up to 2 s apart; the agent now sleeps
    # until the start is due (self.sleep advances the fake clock by what it was asked to wait).
    import asyncio

    from vitals_agent.drivers.suntech import START_MEASUREMENT

    time = FakeClock()
    service = _service(tmp_path, time, "suntech-advantage", interval_seconds=interval)
    services.append(service)
    link = _Link(time)
    service.runtimes["cuff"].transport = link
    _set_patient(service)

    async def sleep(seconds: float) -> None:
        time.advance(seconds=seconds)

    service.pipeline.sleep = sleep
    starter = asyncio.create_task(service.pipeline.run_series_starts())
    try:
        for n, systolic in enumerate(("150", "131"), start=1):
            time.advance(seconds=0.4)  # the cuff's result comes between two ticks
            arrived = time.monotonic()
            await _cuff(service, time, systolic)
            await until(lambda n=n: len(link.written) == n, what=f"start {n} of the series")
            assert link.written_at[-1] == pytest.approx(arrived + interval)
    finally:
        starter.cancel()
        await asyncio.gather(starter, return_exceptions=True)
    assert link.written == [START_MEASUREMENT, START_MEASUREMENT]


async def test_a_patient_change_stops_the_series(tmp_path: Path, services: list[AgentService]) -> None:
    time = FakeClock()
    service = _service(tmp_path, time, "ble-blood-pressure", interval_seconds=60)
    services.append(service)
    _set_patient(service)
    await _cuff(service, time, "150")
    time.advance(seconds=60)
    await _cuff(service, time, "131")
    _set_patient(service)  # the same wristband again: the series goes on
    assert service.pipeline.series["cuff"].taken == 2
    time.advance(seconds=10)
    _set_patient(service, OTHER_MRN)  # another patient: stopped, no mean
    assert service.pipeline.series["cuff"].taken == 0
    time.advance(seconds=50)
    await _cuff(service, time, "128")  # the next patient's first reading
    messages = orus(service)
    assert [m.value("150021") for m in messages] == ["150", "131", "128"]
    assert [m.pid.text(3, 1) for m in messages] == [MRN, MRN, OTHER_MRN]
    assert service.pipeline.series["cuff"].taken == 1
    assert service.runtimes["cuff"].status.counters["bp_series_abandoned"] == 1


async def test_a_cleared_patient_stops_the_series_and_a_device_without_link_is_waited_for(
    tmp_path: Path, services: list[AgentService]
) -> None:
    time = FakeClock()
    service = _service(tmp_path, time, "suntech-advantage", interval_seconds=60)
    services.append(service)
    _set_patient(service)
    await _cuff(service, time, "150")
    time.advance(seconds=60)
    await service.pipeline.tick()  # no link open: the start is not written, the deadline will end it
    assert service.pipeline.series["cuff"].taken == 1
    service.patients.clear(Origin("api"))
    assert service.pipeline.series["cuff"].taken == 0
    assert len(orus(service)) == 1


def test_bp_protocol_is_for_blood_pressure_drivers_only() -> None:
    doc = {
        "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": "/tmp/x"},
        "devices": [{"id": "ox", "driver": "nonin-df8", "port": "/dev/null", "bp_protocol": {"readings": 3}}],
    }
    with pytest.raises(Exception, match="bp_protocol: only for blood-pressure drivers"):
        parse_config(doc)


# --- end to end: a SunTech module on a pseudo-terminal, the agent running, a real MLLP EHR -------------


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_suntech_series_end_to_end(tmp_path: Path, pty_device: PtyDevice, ehr: Hl7Ehr) -> None:
    """The clinician starts the first measurement; the agent starts the next two a second apart; the EHR
    gets the three readings and the mean of the last two (values from the simulated module)."""
    import asyncio

    from vitals_agent.drivers.suntech import START_MEASUREMENT, SunTechSimulator

    doc = {
        "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path / "d")},
        "control": {"enabled": False},
        "alerts": {"disk_free_mb": 0},
        "patient": {"assigning_authority": "EXCLINIC&2.999.1&ISO"},
        "ehr": {
            "port": ehr.port,
            "ack_timeout_seconds": 2.0,
            "backoff_min_seconds": 0.01,
            "backoff_max_seconds": 0.05,
        },
        "devices": [
            {
                "id": "nibp",
                "driver": "suntech-advantage",
                "port": str(pty_device.link),
                "bp_protocol": {"readings": 3, "interval_seconds": 1, "discard_first": True},
            }
        ],
    }
    service = AgentService(parse_config(doc))
    sim = SunTechSimulator(systolic=131, diastolic=83, mean=99, heart_rate=66, interval=0.02, steps=3)
    sim_task = asyncio.create_task(sim.run(pty_device))
    stop = asyncio.Event()
    run = asyncio.create_task(service.run(stop))
    try:
        await until(lambda: service.runtimes["nibp"].status.connected, 10, "the module's port to open")
        _set_patient(service)
        await service.runtimes["nibp"].start_measurement()  # what `vitals-agent nibp-start` does
        messages = await ehr.wait_for(4, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(run, 20)
        sim_task.cancel()
        service.close()
    parsed = [validate_oru(m) for m in messages]
    assert [p.value("150021") for p in parsed] == ["131", "131", "131", "131"]
    mean = parsed[3]
    assert {r.text(17) for r in mean.obx if r[2] == "NM"} == {"ACALC"}
    assert any("mean of 2 readings taken at" in s[3] for s in mean.all("NTE"))
    assert all(p.pid.text(3, 1) == MRN for p in parsed)
    assert bytes(sim.received).count(START_MEASUREMENT) == 3  # ours: the first and the two the agent started
