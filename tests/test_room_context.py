"""The room's two contexts, the patient and the signed-in clinician, share their persistence, activity and
expiry (agent/patient/room.py): the same behaviour for both, including what the clinician's copy lacked."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.kit import MRN, T0, FakeClock, events, manager
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.patient.clinician import ClinicianContextManager
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.storage.audit import AuditLog
from vitals_agent.config.review import ReviewConfig
from vitals_agent.models import Clinician

Room = Callable[[Path, FakeClock], Any]  # a context manager in the data dir with one context set


def patients(data_dir: Path, clock: FakeClock) -> Any:
    m = manager(data_dir, clock, patient_timeout_minutes=30)
    m.set(PatientDetails(mrn=MRN), Origin("cli"))
    return m


def clinicians(data_dir: Path, clock: FakeClock) -> Any:
    audit = AuditLog.in_dir(data_dir, now=clock)
    m = ClinicianContextManager(data_dir, ReviewConfig(), audit, clock=Clock.following(clock))
    m.set(Clinician(id="4711"), Origin("cli"))
    return m


ROOMS = [
    pytest.param("patient", patients, id="patient"),
    pytest.param("clinician", clinicians, id="clinician"),
]


@pytest.mark.parametrize(("kind", "room"), ROOMS)
def test_activity_that_cannot_be_saved_is_logged_once_and_saved_when_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, room: Room
) -> None:
    """The save is retried on every tick; the clinician context used to log each failed try (every
    second while the disk is full), the patient context only the first."""
    clock = FakeClock()
    m = room(tmp_path, clock)
    clock.advance(minutes=5)
    m.touch()

    def no_descriptors(*args: object, **kwargs: object) -> int:
        raise OSError(24, "Too many open files")

    with capture_logs() as logs, monkeypatch.context() as patch:
        patch.setattr(os, "open", no_descriptors)
        for _ in range(3):
            m.tick()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [f"{kind}.activity_not_saved"]
    m.tick()
    saved = json.loads((tmp_path / f"{kind}_context.json").read_text())
    assert saved["last_activity"] == (T0 + timedelta(minutes=5)).isoformat()


@pytest.mark.parametrize(("kind", "room"), ROOMS)
def test_an_unreadable_file_is_moved_aside_and_the_log_says_where(
    tmp_path: Path, kind: str, room: Room
) -> None:
    """The clinician context's warning used to name only the file it could not read."""
    (tmp_path / f"{kind}_context.json").write_text("{not json")
    with capture_logs() as logs:
        m = room(tmp_path, FakeClock())
    [moved] = tmp_path.glob(f"{kind}_context.json.damaged-*")
    [warning] = [e for e in logs if e["event"] == f"{kind}.context_file_moved_aside"]
    assert warning["moved_to"] == str(moved)
    assert [e["moved_to"] for e in events(tmp_path) if e["event"].endswith("_discarded")] == [str(moved)]
    m.close()
