"""Issue 10 item 8: wall-clock steps, with an injected clock (a wall clock the test steps, a monotonic
clock it only moves forward), through the real pipeline, patient context, held store and outbox.

Before: a backward step of an hour dropped every reading for an hour ("taken before the current patient
was set") and stretched the patient context by an hour; a forward step dropped every held reading and
ended the context at once. Now ages are monotonic, stored times are clamped after a backward step, and the
step is logged once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.kit import MRN, events, oximeter_reading
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService
from vitals_agent.config.schema import parse_config

T0 = datetime(2026, 3, 11, 14, 0, 0, tzinfo=UTC)


class Time:
    """The test's two clocks: ``advance`` moves both (time passes), ``step`` moves only the wall clock."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds

    def step(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)

    def clock(self) -> Clock:
        return Clock(lambda: self.wall, lambda: self.mono)


@pytest.fixture
def time_() -> Time:
    return Time()


@pytest.fixture
def services() -> Iterator[list[AgentService]]:
    made: list[AgentService] = []
    yield made
    for s in made:
        s.close()


def service(tmp_path: Path, t: Time, made: list[AgentService], **patient: object) -> AgentService:
    config = parse_config(
        {
            "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path)},
            "control": {"enabled": False},
            "patient": {"patient_timeout_minutes": 30, "hold_timeout_minutes": 60, **patient},
            "devices": [
                {
                    "id": "oxi-1",
                    "driver": "masimo-ascii",
                    "port": str(tmp_path / "ttyNone"),
                    "report": "every",
                }
            ],
        }
    )
    svc = AgentService(config, clock=t.clock())
    made.append(svc)
    return svc


async def reading_now(svc: AgentService, t: Time) -> None:
    """A reading arrives now: stamped by the (possibly stepped) wall clock, as a driver does."""
    await svc.pipeline.on_event(svc.runtimes["oxi-1"], oximeter_reading(t.wall))


async def test_backward_step_does_not_drop_readings_or_stretch_the_context(
    tmp_path: Path, time_: Time, services: list[AgentService]
) -> None:
    svc = service(tmp_path, time_, services)
    await svc.pipeline.tick()  # the clock watch takes its first look
    svc.patients.set(PatientDetails(mrn=MRN), Origin("barcode"))
    time_.advance(10)
    with capture_logs() as logs:
        time_.step(-3600)  # NTP or an operator sets the clock back an hour
        await reading_now(svc, time_)
        await svc.pipeline.tick()
        await svc.pipeline.tick()
        time_.advance(60)
        await reading_now(svc, time_)
        await svc.pipeline.tick()
    assert svc.pipeline.dropped == 0
    assert svc.outbox.depth() == 2
    bound = [e for e in events(tmp_path) if e["event"] == "reading_accepted"]
    assert [e["disposition"] for e in bound] == ["bound", "bound"]
    steps = [e for e in logs if e["event"] == "clock.stepped"]
    assert [(e["direction"], e["seconds"], e["log_level"]) for e in steps] == [("back", 3600.0, "warning")]
    assert svc.status()["storage"]["clock"]["last_step_seconds"] == -3600.0
    # the stored times were clamped: nothing lies ahead of the wall clock any more
    saved = json.loads((tmp_path / "patient_context.json").read_text())
    assert datetime.fromisoformat(saved["set_at"]) <= time_.wall
    assert datetime.fromisoformat(saved["last_activity"]) <= time_.wall
    # 30 idle minutes of real (monotonic) time end the context: not an hour and a half
    time_.advance(30 * 60)
    await svc.pipeline.tick()
    assert svc.patients.context() is None
    assert [e["event"] for e in events(tmp_path)][-1] == "context_expired"


async def test_forward_step_keeps_the_context_and_the_held_readings(
    tmp_path: Path, time_: Time, services: list[AgentService]
) -> None:
    svc = service(tmp_path, time_, services, require_patient=True)
    await svc.pipeline.tick()
    await reading_now(svc, time_)  # no patient yet: held
    assert svc.patients.held.summary()[0] == 1
    time_.step(2 * 3600)  # the clock jumps two hours ahead (a VM resumed, a bad NTP source)
    await svc.pipeline.tick()
    assert svc.patients.held.summary()[0] == 1, "a forward step must not drop held readings"
    svc.patients.set(PatientDetails(mrn=MRN), Origin("barcode"))
    time_.advance(10)
    time_.step(3600)
    await svc.pipeline.tick()
    assert svc.patients.context() is not None, "nor end the patient context"
    await svc.patients.release_held()
    assert svc.outbox.depth() == 1 and svc.patients.held.summary()[0] == 0


async def test_held_readings_still_expire_after_the_hold_timeout_of_real_time(
    tmp_path: Path, time_: Time, services: list[AgentService]
) -> None:
    svc = service(tmp_path, time_, services, require_patient=True)
    await svc.pipeline.tick()
    await reading_now(svc, time_)
    time_.step(-7200)  # back two hours: the hold must not last three hours now
    await svc.pipeline.tick()
    time_.advance(59 * 60)
    await svc.pipeline.tick()
    assert svc.patients.held.summary()[0] == 1
    time_.advance(2 * 60)
    await svc.pipeline.tick()
    assert svc.patients.held.summary()[0] == 0
    dropped = [e for e in events(tmp_path) if e["event"] == "held_dropped"]
    assert [e["reason"] for e in dropped] == ["no patient within 60 minutes"]


async def test_a_reading_from_before_the_patient_is_still_dropped_across_a_backward_step(
    tmp_path: Path, time_: Time, services: list[AgentService]
) -> None:
    """The rule the wall-clock comparison was for still holds on the monotonic clock: a reading an
    interval policy kept back from before a wristband scan never goes to the new patient."""
    svc = service(tmp_path, time_, services)
    await svc.pipeline.tick()
    runtime = svc.runtimes["oxi-1"]
    early = oximeter_reading(time_.wall)
    arrived = svc.clock.mono()
    time_.advance(5)
    time_.step(-3600)  # after the step the early reading's wall time looks an hour *later* than the scan
    await svc.pipeline.tick()
    svc.patients.set(PatientDetails(mrn=MRN), Origin("barcode"))
    assert await svc.pipeline.accept(runtime, early, arrived=arrived) is None
    assert svc.pipeline.dropped == 1 and svc.outbox.depth() == 0


def test_clock_step_is_reported_once_per_step() -> None:
    t = Time()
    clock = t.clock()
    with capture_logs() as logs:
        assert clock.check_step() is None
        t.advance(1)
        assert clock.check_step() is None
        t.step(1.5)  # within the threshold: drift, not a step
        assert clock.check_step() is None
        t.step(-600)
        assert clock.check_step() == pytest.approx(-600)
        for _ in range(3):
            t.advance(1)
            assert clock.check_step() is None
        t.step(120)
        assert clock.check_step() == pytest.approx(120)
    assert [(e["event"], e["direction"]) for e in logs] == [
        ("clock.stepped", "back"),
        ("clock.stepped", "forward"),
    ]
    assert clock.snapshot()["last_step_seconds"] == pytest.approx(120)


def test_ages_from_stored_times_never_go_negative() -> None:
    t = Time()
    clock = t.clock()
    assert clock.mono_at(t.wall - timedelta(seconds=30)) == pytest.approx(t.mono - 30)
    assert clock.mono_at(t.wall + timedelta(hours=1)) == t.mono  # a stored time ahead of the clock: now
    assert clock.wall_at(t.mono - 30) == t.wall - timedelta(seconds=30)
