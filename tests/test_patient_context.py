"""Patient context: set / touch / expiry / clear, persistence across restarts, and require_patient holding."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import (
    DOB,
    FAMILY,
    GIVEN,
    MRN,
    T0,
    FakeClock,
    event_names,
    events,
    manager,
    oximeter_reading,
)
from tests.private_files import assert_private
from vitals_agent.agent.patient.context import (
    PatientDetails,
    PatientError,
    reading_from_json,
    reading_to_json,
)
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.hl7.oru import MessageProfile, PatientIdentity, build_oru
from vitals_agent.models import PatientInfo, PatientScan, Reading, ReadingFlag

ALICE = PatientDetails(mrn=MRN, family=FAMILY, given=GIVEN, birth_date=DOB, sex="F", encounter="V77")


def strip(e: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in e.items() if k not in ("ts", "seq", "prev")}


# --------------------------------------------------------------------------------------------- context


def test_set_then_current_is_the_builder_identity_and_audited(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock)
    assert m.current() is None
    m.set(ALICE, Origin("cli", source="nurse1"))
    assert m.current() == PatientIdentity(
        mrn=MRN, family=FAMILY, given=GIVEN, birth_date=DOB, sex="F", encounter="V77", identifier_type="MR"
    )
    assert [strip(e) for e in events(tmp_path)] == [
        {
            "event": "context_set",
            "channel": "cli",
            "source": "nurse1",
            "patient": ALICE.model_dump(),
            "replaced_mrn": None,
            "expires_at": (T0 + timedelta(minutes=30)).isoformat(),
        }
    ]


def test_expires_after_timeout_without_readings_and_readings_keep_it_alive(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock, patient_timeout_minutes=30)
    m.set(ALICE, Origin("api"))
    clock.advance(minutes=29)
    assert m.route("oxi-1", oximeter_reading(clock.now)).patient == ALICE  # a reading touches the context
    clock.advance(minutes=29, seconds=59)
    assert m.current_details() == ALICE  # 29:59 since the last reading
    clock.advance(seconds=1)
    assert m.current_details() is None  # 30:00 of no readings
    route = m.route("oxi-1", oximeter_reading(clock.now))
    assert route.patient is None and not route.held  # default mode: unbound
    assert event_names(tmp_path) == ["context_set", "context_expired"]
    expired = strip(events(tmp_path)[1])
    assert expired == {
        "event": "context_expired",
        "channel": "expiry",
        "patient_mrn": MRN,
        "last_activity": (T0 + timedelta(minutes=29)).isoformat(),
        "idle_minutes": 30.0,
    }


def test_current_alone_does_not_extend_the_context(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock, patient_timeout_minutes=1)
    m.set(ALICE, Origin("api"))
    for _ in range(5):
        clock.advance(seconds=20)
        m.current()
    assert m.current() is None


def test_clear_ends_the_context(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock)
    m.set(ALICE, Origin("barcode", source="scanner-1"))
    assert m.clear(Origin("api")) is True
    assert m.current() is None
    assert m.clear(Origin("cli")) is False
    assert [strip(e) for e in events(tmp_path)][1:] == [
        {"event": "context_cleared", "channel": "api", "source": None, "patient_mrn": MRN, "was_set": True},
        {"event": "context_cleared", "channel": "cli", "source": None, "patient_mrn": None, "was_set": False},
    ]


def test_a_new_patient_replaces_the_old_one(tmp_path: Path) -> None:
    m = manager(tmp_path, FakeClock())
    m.set(ALICE, Origin("cli"))
    bob = PatientDetails(mrn="BOB0001")
    m.set(bob, Origin("barcode"))
    assert m.current_details() == bob
    assert events(tmp_path)[-1]["replaced_mrn"] == MRN


def test_context_survives_a_restart_until_it_expires(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock)
    m.set(ALICE, Origin("cli"))
    m.close()
    assert_private(tmp_path / "patient_context.json")
    clock.advance(minutes=10)
    again = manager(tmp_path, clock)
    assert again.current_details() == ALICE
    assert again.context() is not None and again.context().channel == "cli"  # type: ignore[union-attr]
    again.close()
    clock.advance(minutes=25)  # 35 min after the set, no reading: expired while the agent was down
    third = manager(tmp_path, clock)
    assert third.current_details() is None
    assert event_names(tmp_path) == ["context_set", "context_expired"]


def test_a_reading_opens_no_file_and_its_activity_is_saved_on_the_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 item 3: out of file descriptors, a bound reading is still filed (the touch is in memory)."""
    import os as _os

    clock = FakeClock()
    m = manager(tmp_path, clock, patient_timeout_minutes=30)
    m.set(ALICE, Origin("cli"))
    clock.advance(minutes=20)

    def no_descriptors(*args: object, **kwargs: object) -> int:
        raise OSError(24, "Too many open files")

    with monkeypatch.context() as patch:
        patch.setattr(_os, "open", no_descriptors)
        assert m.route("oxi-1", oximeter_reading(clock.now)).patient == ALICE
        m.tick()  # the save fails: logged, retried on the next tick; the context stays
    assert m.current_details() == ALICE
    saved = json.loads((tmp_path / "patient_context.json").read_text())
    assert saved["last_activity"] == T0.isoformat()  # not yet saved
    m.tick()
    saved = json.loads((tmp_path / "patient_context.json").read_text())
    assert saved["last_activity"] == (T0 + timedelta(minutes=20)).isoformat()
    # after a crash now, the restarted agent keeps the context until 30 min after that reading
    clock.advance(minutes=29)
    assert manager(tmp_path, clock).current_details() == ALICE


def test_close_saves_the_last_activity(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock, patient_timeout_minutes=30)
    m.set(ALICE, Origin("cli"))
    clock.advance(minutes=20)
    m.route("oxi-1", oximeter_reading(clock.now))
    m.close()
    clock.advance(minutes=29)
    assert manager(tmp_path, clock).current_details() == ALICE


def test_a_cleared_context_stays_cleared_after_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock)
    m.set(ALICE, Origin("cli"))
    m.clear(Origin("cli"))
    assert manager(tmp_path, clock).current_details() is None


def test_corrupt_state_file_starts_without_a_patient(tmp_path: Path) -> None:
    (tmp_path / "patient_context.json").write_text("{not json")
    m = manager(tmp_path, FakeClock())
    assert m.current() is None
    assert event_names(tmp_path) == ["context_discarded"]


async def test_scan_sets_the_patient_through_the_barcode_channel(tmp_path: Path) -> None:
    m = manager(tmp_path, FakeClock(), identifier_type="PI")
    await m.on_scan(PatientScan(device_id="scanner-1", mrn=MRN, raw=f"]C1{MRN}", received_at=T0))
    ctx = m.context()
    assert ctx is not None
    assert (ctx.patient, ctx.channel, ctx.source) == (
        PatientDetails(mrn=MRN, identifier_type="PI"),
        "barcode",
        "scanner-1",
    )
    assert event_names(tmp_path) == ["scan", "context_set"]
    assert strip(events(tmp_path)[0]) == {
        "event": "scan",
        "device_id": "scanner-1",
        "mrn": MRN,
        "raw": f"]C1{MRN}",
    }


async def test_unusable_scan_is_refused_and_audited(tmp_path: Path) -> None:
    m = manager(tmp_path, FakeClock())
    await m.on_scan(PatientScan(device_id="scanner-1", mrn="A|B", raw="A|B", received_at=T0))
    assert m.current() is None
    assert event_names(tmp_path) == ["scan_rejected"]


# --------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mrn": ""}, "mrn: MRN is empty"),
        ({"mrn": "SECRET|X"}, "mrn: MRN contains a control character or one of | ^ ~ \\ &"),
        ({"mrn": "X" * 65}, "mrn: MRN is longer than 64 characters"),
        ({"mrn": "M1", "birth_date": "19800230"}, "birth_date: date of birth is not a real date"),
        ({"mrn": "M1", "birth_date": "1980-02-01"}, "birth_date: date of birth must be YYYYMMDD"),
        ({"mrn": "M1", "birth_date": "29991231"}, "birth_date: date of birth is out of range"),
        ({"mrn": "M1", "sex": "X"}, "sex: sex must be one of F, M, U (or O, A, N)"),
        (
            {"mrn": "M1", "family": "SECRET^NAME"},
            "family: name contains a control character or one of | ^ ~ \\ &",
        ),
        ({"mrn": "M1", "nickname": "SECRET"}, "nickname: unknown field"),
        ({}, "mrn: required"),
        ({"mrn": 12345}, "mrn: must be a string"),
    ],
)
def test_bad_patient_data_is_refused_without_echoing_it(data: dict[str, object], message: str) -> None:
    with pytest.raises(PatientError) as info:
        PatientDetails.parse(data)
    assert str(info.value) == message
    assert "SECRET" not in str(info.value)


def test_cli_name_form_and_normalisation() -> None:
    p = PatientDetails.from_name(" M1 ", f"{FAMILY}^{GIVEN}", sex="f", birth_date=DOB)
    assert p == PatientDetails(mrn="M1", family=FAMILY, given=GIVEN, sex="F", birth_date=DOB)
    assert PatientDetails.from_name("M1", FAMILY) == PatientDetails(mrn="M1", family=FAMILY)


def test_to_info_gives_the_fhir_builder_every_demographic() -> None:
    p = PatientDetails(
        mrn="M1", family=FAMILY, given=GIVEN, birth_date=DOB, sex="F", encounter="V9", assigning_authority="H"
    )
    assert p.to_info() == PatientInfo(
        mrn="M1", family_name=FAMILY, given_name=GIVEN, birth_date=DOB, sex="F", encounter="V9"
    )


def test_masked_shows_only_the_last_two_characters_and_initials() -> None:
    assert ALICE.masked() == {"mrn": "\u2022" * 3 + "342", "name": "Q. Z."}
    assert PatientDetails(mrn="12345").masked() == {"mrn": "\u2022" * 3, "name": None}


# --------------------------------------------------------------------------------------------- holding


def test_without_require_patient_nothing_is_held(tmp_path: Path) -> None:
    m = manager(tmp_path, FakeClock())
    route = m.route("oxi-1", oximeter_reading())
    assert (route.patient, route.held) == (None, False)
    assert m.held.summary() == (0, None)


async def test_require_patient_holds_durably_and_releases_late_associated(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock, require_patient=True)
    first, second = oximeter_reading(T0, spo2="97.0"), oximeter_reading(T0 + timedelta(seconds=30), spo2="95")
    assert m.route("oxi-1", first).held
    clock.advance(seconds=30)
    assert m.route("oxi-1", second).held
    m.close()
    assert_private(tmp_path / "held.sqlite3")

    clock.advance(minutes=5)
    restarted = manager(tmp_path, clock, require_patient=True)  # the agent restarted in between
    assert restarted.held.summary() == (2, T0)
    sent: list[tuple[str, Reading, PatientDetails]] = []

    async def releaser(
        device_id: str, reading: Reading, patient: PatientDetails, control_id: str | None = None
    ) -> str | None:
        sent.append((device_id, reading, patient))
        return f"CTRL{len(sent)}"

    restarted.releaser = releaser
    await restarted.apply_set(ALICE, Origin("barcode", source="scanner-1"))
    expected = [
        ("oxi-1", r.with_updates(flags=(ReadingFlag.LATE_ASSOCIATED,)), ALICE) for r in (first, second)
    ]
    assert sent == expected
    assert sent[0][1].measurements[0].value == Decimal("97.0")  # precision survived the store
    assert restarted.held.summary() == (0, None)
    assert event_names(tmp_path) == [
        "reading_accepted",
        "reading_held",
        "reading_accepted",
        "reading_held",
        "context_set",
        "held_released",
        "held_released",
    ]
    trail = events(tmp_path)
    assert trail[0]["disposition"] == "held" and trail[0]["values"]["spo2"] == "97.0 %"
    assert [strip(e) for e in trail[5:]] == [
        {
            "event": "held_released",
            "held_id": 1,
            "device_id": "oxi-1",
            "control_id": "CTRL1",
            "patient_mrn": MRN,
            "held_at": T0.isoformat(),
        },
        {
            "event": "held_released",
            "held_id": 2,
            "device_id": "oxi-1",
            "control_id": "CTRL2",
            "patient_mrn": MRN,
            "held_at": (T0 + timedelta(seconds=30)).isoformat(),
        },
    ]
    # Bound now: the next reading goes straight to the patient.
    assert restarted.route("oxi-1", oximeter_reading(clock.now)).patient == ALICE


async def test_a_release_that_cannot_be_queued_stays_held(tmp_path: Path) -> None:
    m = manager(tmp_path, FakeClock(), require_patient=True)
    m.route("oxi-1", oximeter_reading())

    async def refuse(
        device_id: str, reading: Reading, patient: PatientDetails, control_id: str | None = None
    ) -> str | None:
        return None

    m.releaser = refuse
    await m.apply_set(ALICE, Origin("cli"))
    assert m.held.summary()[0] == 1
    assert "held_released" not in event_names(tmp_path)


async def test_held_readings_are_dropped_after_the_hold_timeout(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock, require_patient=True, hold_timeout_minutes=60)
    m.route("oxi-1", oximeter_reading(T0))
    clock.advance(minutes=59)
    m.tick()
    assert m.held.summary()[0] == 1
    clock.advance(minutes=1)
    m.tick()
    assert m.held.summary() == (0, None)
    dropped = strip(events(tmp_path)[-1])
    assert dropped == {
        "event": "held_dropped",
        "held_id": 1,
        "device_id": "oxi-1",
        "channel": "timeout",
        "reason": "no patient within 60 minutes",
        "held_at": T0.isoformat(),
        "observed_at": T0.isoformat(),
    }
    released: list[Reading] = []

    async def releaser(
        device_id: str, reading: Reading, patient: PatientDetails, control_id: str | None = None
    ) -> str | None:
        released.append(reading)
        return "X"

    m.releaser = releaser
    await m.apply_set(ALICE, Origin("cli"))
    assert released == []


async def test_expired_held_readings_are_not_released_even_without_a_tick(tmp_path: Path) -> None:
    clock = FakeClock()
    m = manager(tmp_path, clock, require_patient=True, hold_timeout_minutes=10)
    m.route("oxi-1", oximeter_reading(T0))
    clock.advance(minutes=11)
    got: list[Reading] = []

    async def releaser(
        device_id: str, reading: Reading, patient: PatientDetails, control_id: str | None = None
    ) -> str | None:
        got.append(reading)
        return "X"

    m.releaser = releaser
    await m.apply_set(ALICE, Origin("cli"))
    assert got == []
    assert event_names(tmp_path)[-1] == "held_dropped"


def test_operator_discards_held_readings(tmp_path: Path) -> None:
    m = manager(tmp_path, FakeClock(), require_patient=True)
    m.route("oxi-1", oximeter_reading())
    m.route("oxi-2", oximeter_reading(device_id="oxi-2"))
    assert m.discard_held(Origin("cli", source="tech")) == 2
    assert m.held.summary() == (0, None)
    assert [(e["event"], e.get("channel"), e.get("reason")) for e in events(tmp_path)[-2:]] == [
        ("held_dropped", "cli", "discarded by operator"),
        ("held_dropped", "cli", "discarded by operator"),
    ]


# --------------------------------------------------------------------------------------------- serialisation


@settings(max_examples=60, deadline=None)
@given(
    value=st.decimals(min_value=0, max_value=100, places=3, allow_nan=False),
    raw=st.binary(max_size=40),
    att=st.binary(max_size=40),
)
def test_held_reading_json_round_trip_is_lossless(value: Decimal, raw: bytes, att: bytes) -> None:
    reading = oximeter_reading()
    reading = reading.with_updates(
        measurements=(reading.measurements[0].model_copy(update={"value": value}), reading.measurements[1]),
        raw=raw,
        attachments=(reading.attachments[0].model_copy(update={"data": att}),),
        flags=(ReadingFlag.CLOCK_SKEW,),
        extra={"k": "v"},
    )
    back = reading_from_json(reading_to_json(reading))
    assert back == reading
    assert str(back.measurements[0].value) == str(value)


# --------------------------------------------------------------------------------------------- messages


def _profile() -> MessageProfile:
    return MessageProfile(
        facility="EXCLINIC",
        location="CARDIO^EXAM 3",
        gateway_eui64="0A1B2CFFFE3D4E5F",
        assigning_authority="EXCLINIC&2.999.1&ISO",
    )


async def test_set_makes_the_next_message_bound_and_clear_makes_it_unbound(tmp_path: Path) -> None:
    oracle = pytest.importorskip("tests.oracle")
    clock = FakeClock()
    m = manager(tmp_path, clock, require_patient=False)
    m.set(ALICE, Origin("cli"))
    route = m.route("oxi-1", oximeter_reading())
    assert route.patient is not None
    bound = oracle.validate_oru(
        build_oru(
            oximeter_reading(),
            _profile(),
            control_id="C1",
            created_at=T0,
            patient=route.patient.to_identity(),
        )
    )
    assert bound.pid.text(3, 1) == MRN and bound.pid.text(3, 5) == "MR"
    assert (bound.pid.text(5, 1), bound.pid.text(5, 2)) == (FAMILY, GIVEN)
    assert (bound.pid[7], bound.pid[8], bound.pid[31]) == (DOB, "F", "N")
    assert bound.pv1.text(19, 1) == "V77"

    m.clear(Origin("cli"))
    unbound = oracle.validate_oru(
        build_oru(oximeter_reading(), _profile(), control_id="C2", created_at=T0, patient=m.current())
    )
    assert unbound.pid[5] == "^^^^^^U" and unbound.pid[31] == "Y"
    assert MRN not in unbound.raw


async def test_released_reading_becomes_a_valid_late_associated_message(tmp_path: Path) -> None:
    oracle = pytest.importorskip("tests.oracle")
    m = manager(tmp_path, FakeClock(), require_patient=True)
    m.route("oxi-1", oximeter_reading())
    built: list[bytes] = []

    async def releaser(
        device_id: str, reading: Reading, patient: PatientDetails, control_id: str | None = None
    ) -> str | None:
        built.append(
            build_oru(
                reading,
                _profile(),
                control_id="C9",
                created_at=T0,
                patient=patient.to_identity(),
                late_associated=True,
            )
        )
        return "C9"

    m.releaser = releaser
    await m.apply_set(ALICE, Origin("api"))
    parsed = oracle.validate_oru(built[0])
    assert parsed.pid.text(3, 1) == MRN
    assert any(s.name == "NTE" and "late-associated" in s.raw for s in parsed.segments)
