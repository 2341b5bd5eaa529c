"""Lookup then confirm (agent/patient/lookup.py) against a real ITI-21 supplier over MLLP: pending,
confirmation from the EHR's answer, no match, EHR trouble with and without the typed fallback, several
matches, expiry, and readings held while a confirmation is pending (also across a restart)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_ehr import FakeEhr
from tests.kit import T0, FakeClock, events, free_port, manager, oximeter_reading
from tests.oracle import validate_oru
from tests.pdq_helpers import AUTHORITY, ODALYS, PdqSupplier
from vitals_agent.agent.patient.context import PatientContextManager, PatientDetails
from vitals_agent.agent.patient.lookup import ConfirmError, PatientLookup
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.storage.audit import AuditLog
from vitals_agent.config.pdq import PdqConfig
from vitals_agent.hl7.oru import MessageProfile, build_oru
from vitals_agent.hl7.pdq import Authority, PdqCandidate
from vitals_agent.models import Reading
from vitals_agent.net.pdq import Sender, pdq_client
from vitals_agent.redact import mask_mrn, scrub

SENDER = Sender(application="VITALS_AGENT^0A1B2CFFFE3D4E5F^EUI-64", facility="EXCLINIC")
PROFILE = MessageProfile(
    facility="EXCLINIC",
    location="CARDIO^EXAM 3",
    gateway_eui64="0A1B2CFFFE3D4E5F",
    assigning_authority="VITALS_AGENT",
)
TYPED = PatientDetails(mrn="ZQ4471902")


class Room:
    """A patient context manager + lookup whose released readings become ORUs (validated later)."""

    def __init__(self, data_dir: Path, clock: FakeClock, port: int, **kw: Any) -> None:
        pdq_keys = {k: kw.pop(k) for k in list(kw) if k in PdqConfig.model_fields}
        values: dict[str, Any] = {"port": port, "assigning_authority": AUTHORITY, "timeout_seconds": 1.0}
        self.config = PdqConfig(**{**values, **pdq_keys})
        self.audit = AuditLog.in_dir(data_dir, now=clock)
        self.patients: PatientContextManager = manager(data_dir, clock, self.audit, **kw)
        self.lookup = PatientLookup(
            self.patients, pdq_client(self.config, SENDER), self.config, self.audit, now=clock
        )
        self.sent: list[tuple[Reading, PatientDetails | None]] = []
        self.patients.releaser = self._release
        self.patients.unbound_releaser = self._release_unbound

    async def _release(
        self, device_id: str, reading: Reading, patient: PatientDetails, control_id: str | None
    ) -> str | None:
        self.sent.append((reading, patient))
        return control_id or "X"

    async def _release_unbound(self, device_id: str, reading: Reading, control_id: str | None) -> str | None:
        self.sent.append((reading, None))
        return control_id or "X"

    def oru(self, reading: Reading, patient: PatientDetails | None) -> Any:
        identity = patient.to_identity() if patient is not None else None
        return validate_oru(build_oru(reading, PROFILE, control_id="C1", created_at=T0, patient=identity))

    async def close(self) -> None:
        await self.lookup.close()
        self.patients.close()
        self.audit.close()


@contextlib.asynccontextmanager
async def room(tmp_path: Path, supplier: FakeEhr | None = None, **kw: Any) -> AsyncIterator[Room]:
    r = Room(tmp_path, kw.pop("clock", FakeClock()), supplier.port if supplier else free_port(), **kw)
    try:
        yield r
    finally:
        await r.close()


def names(data_dir: Path) -> list[str]:
    return [e["event"] for e in events(data_dir) if e["event"].startswith("pdq_")]


async def test_one_match_pending_then_confirm_binds_from_the_ehr_answer(tmp_path: Path) -> None:
    clock = FakeClock()
    async with PdqSupplier() as supplier, room(tmp_path, supplier, clock=clock) as r:
        outcome = await r.lookup.lookup(TYPED, Origin("cli", source="nurse"))
        assert outcome.kind == "pending"
        assert (
            outcome.message == "pending: O. Q., born 1961 \u2014 confirm with: vitals-agent patient confirm"
        )
        assert r.patients.current() is None
        # a reading while pending is held, not filed to anyone
        route = r.patients.route("oxi-1", oximeter_reading(T0))
        assert route.held and route.patient is None
        clock.advance(seconds=30)
        ctx = await r.lookup.confirm(Origin("cli", source="nurse"))
        assert ctx.verified == "ehr"
        assert ctx.patient == PatientDetails(
            mrn="ZQ4471902",
            family="QUIRKE",
            given="ODALYS",
            birth_date="19610923",
            sex="F",
            encounter="V778",
            identifier_type="MR",
            assigning_authority=AUTHORITY,
        )
        # the held reading went to the confirmed patient, late-associated
        ((_, held_patient),) = r.sent
        assert held_patient == ctx.patient
        # the next reading is bound, and its ORU names the EHR's patient
        route = r.patients.route("oxi-1", oximeter_reading(clock.now))
        assert route.patient == ctx.patient
        pid = r.oru(oximeter_reading(clock.now), route.patient).pid
        assert pid[3] == "ZQ4471902^^^EXCLINIC&2.999.1&ISO^MR"
        assert (pid[5], pid[7], pid[8]) == ("QUIRKE^ODALYS^^^^^L", "19610923", "F")
        assert r.oru(oximeter_reading(clock.now), route.patient).pv1.text(19) == "V778"
    assert names(tmp_path) == ["pdq_query", "pdq_answer", "pdq_confirmed"]
    answer = next(e for e in events(tmp_path) if e["event"] == "pdq_answer")
    assert answer["count"] == 1 and answer["channel"] == "cli" and "patient" not in answer
    assert next(e for e in events(tmp_path) if e["event"] == "context_set")["verified"] == "ehr"


async def test_no_match_binds_nothing_and_ends_the_previous_context(tmp_path: Path) -> None:
    async with PdqSupplier() as supplier, room(tmp_path, supplier) as r:
        r.patients.set(PatientDetails(mrn="OLD1234567"), Origin("cli"))
        outcome = await r.lookup.lookup(PatientDetails(mrn="ZQ0000902"), Origin("cli"))
        assert (outcome.kind, outcome.message) == (
            "none",
            "no patient with MRN \u2022\u2022\u2022902 in the EHR",
        )
        assert r.patients.current() is None
        assert r.lookup.pending() is None
        assert not r.patients.route("oxi-1", oximeter_reading()).held  # require_patient off: unbound
        # the page says why the scan bound nothing, until a newer lookup
        assert r.lookup.notice() == "no patient with MRN \u2022\u2022\u2022902 in the EHR"
        await r.lookup.lookup(TYPED, Origin("cli"))
        assert r.lookup.notice() is None
    assert names(tmp_path) == ["pdq_query", "pdq_answer", "pdq_query", "pdq_answer"]


@pytest.mark.parametrize("mode", ["AE", "SILENT", None])
async def test_ehr_trouble_refuses_by_default(tmp_path: Path, mode: str | None) -> None:
    async with contextlib.AsyncExitStack() as stack:
        supplier = await stack.enter_async_context(PdqSupplier(mode=mode)) if mode else None
        r = await stack.enter_async_context(room(tmp_path, supplier, timeout_seconds=0.3))
        outcome = await r.lookup.lookup(TYPED, Origin("api"))
        assert outcome.kind == "failed"
        assert outcome.message.startswith("patient lookup failed: ")
        assert outcome.message.endswith("; nothing was bound") and "\n" not in outcome.message
        assert "ZQ4471902" not in outcome.message
        assert r.patients.current() is None and r.lookup.pending() is None
    assert names(tmp_path) == ["pdq_query", "pdq_failed"]


async def test_typed_fallback_binds_what_was_typed_marked_unverified(tmp_path: Path) -> None:
    async with room(tmp_path, None, pdq_fallback="typed") as r:
        typed = PatientDetails(mrn="ZQ4471902", family="QUIRKE", given="ODALYS")
        outcome = await r.lookup.lookup(typed, Origin("cli"))
        assert outcome.kind == "fallback"
        assert outcome.message.startswith("bound UNVERIFIED as typed (O. Q.): the EHR could not be asked: ")
        ctx = r.patients.context()
        assert ctx is not None and ctx.patient == typed and ctx.verified == "unverified"
        assert r.patients.snapshot()["verified"] == "unverified"
    assert names(tmp_path) == ["pdq_query", "pdq_failed", "pdq_fallback"]
    assert next(e for e in events(tmp_path) if e["event"] == "context_set")["verified"] == "unverified"


async def test_no_match_is_never_a_fallback(tmp_path: Path) -> None:
    async with PdqSupplier() as supplier, room(tmp_path, supplier, pdq_fallback="typed") as r:
        outcome = await r.lookup.lookup(PatientDetails(mrn="ZQ0000902"), Origin("cli"))
        assert outcome.kind == "none" and r.patients.current() is None


async def test_several_matches_are_chosen_with_pick(tmp_path: Path) -> None:
    twin = PdqCandidate(
        mrn="ZQ4471902",
        authority=Authority.parse(AUTHORITY),
        family="QUIRKE",
        given="OLIVE",
        birth_date="19750412",
    )
    async with PdqSupplier([ODALYS, twin]) as supplier, room(tmp_path, supplier) as r:
        outcome = await r.lookup.lookup(TYPED, Origin("cli"))
        assert outcome.kind == "pending" and outcome.count == 2
        assert outcome.message.splitlines() == [
            "2 patients with MRN \u2022\u2022\u2022902 in the EHR:",
            "  1) O. Q., born 1961, F",
            "  2) O. Q., born 1975",
            "choose with: vitals-agent patient confirm --pick N",
        ]
        revealed = r.lookup.view(reveal=True)
        assert revealed is not None
        assert [c["name"] for c in revealed["candidates"]] == ["QUIRKE, ODALYS", "QUIRKE, OLIVE"]
        assert revealed["candidates"][1]["birth_date"] == "1975-04-12"
        with pytest.raises(ConfirmError, match=r"choose one with --pick 1\.\.2"):
            await r.lookup.confirm(Origin("cli"))
        with pytest.raises(ConfirmError, match=r"--pick must be 1\.\.2"):
            await r.lookup.confirm(Origin("cli"), pick=3)
        ctx = await r.lookup.confirm(Origin("cli"), pick=2)
        assert ctx.patient.given == "OLIVE" and ctx.patient.birth_date == "19750412"


async def test_cancel_sends_held_readings_unbound(tmp_path: Path) -> None:
    async with PdqSupplier() as supplier, room(tmp_path, supplier) as r:
        await r.lookup.lookup(TYPED, Origin("cli"))
        assert r.patients.route("oxi-1", oximeter_reading()).held
        assert await r.lookup.cancel(Origin("api", source="page"))
        ((_, patient),) = r.sent
        assert patient is None  # unbound
        assert r.patients.current() is None and r.lookup.pending() is None
        assert not await r.lookup.cancel(Origin("api"))
        with pytest.raises(ConfirmError, match="nothing is waiting"):
            await r.lookup.confirm(Origin("cli"))
    cancelled = [e for e in events(tmp_path) if e["event"] == "pdq_cancelled"]
    assert cancelled[0]["channel"] == "api" and cancelled[0]["reason"] == "cancelled"


async def test_expiry_keeps_held_readings_when_require_patient(tmp_path: Path) -> None:
    clock = FakeClock()
    async with PdqSupplier() as supplier, room(tmp_path, supplier, clock=clock, require_patient=True) as r:
        await r.lookup.lookup(TYPED, Origin("barcode"))
        assert r.patients.route("oxi-1", oximeter_reading(clock.now)).held
        clock.advance(seconds=121)
        r.lookup.tick()
        assert r.lookup.pending() is None
        with pytest.raises(ConfirmError, match="nothing is waiting"):
            await r.lookup.confirm(Origin("cli"))
        assert r.sent == [] and r.patients.held.summary()[0] == 1  # still held for the next patient
    expired = next(e for e in events(tmp_path) if e["event"] == "pdq_expired")
    assert expired["channel"] == "expiry"


async def test_confirm_after_expiry_says_so_and_releases_unbound(tmp_path: Path) -> None:
    clock = FakeClock()
    async with PdqSupplier() as supplier, room(tmp_path, supplier, clock=clock) as r:
        await r.lookup.lookup(TYPED, Origin("cli"))
        r.patients.route("oxi-1", oximeter_reading(clock.now))
        clock.advance(seconds=120)
        with pytest.raises(ConfirmError, match="expired after 120 s"):
            await r.lookup.confirm(Origin("cli"))
        assert [p for _, p in r.sent] == [None]
        assert r.patients.current() is None


async def test_pending_and_held_readings_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    async with PdqSupplier() as supplier:
        async with room(tmp_path, supplier, clock=clock) as r:
            await r.lookup.lookup(TYPED, Origin("cli"))
            assert r.patients.route("oxi-1", oximeter_reading(clock.now)).held
        clock.advance(seconds=10)
        async with room(tmp_path, supplier, clock=clock) as again:
            assert again.lookup.pending() is not None
            assert again.patients.route("oxi-1", oximeter_reading(clock.now)).held  # still holding
            ctx = await again.lookup.confirm(Origin("api"))
            assert ctx.patient.family == "QUIRKE"
            assert [p.mrn if p else None for _, p in again.sent] == ["ZQ4471902", "ZQ4471902"]


async def test_a_lookup_interrupted_by_a_restart_is_cancelled(tmp_path: Path) -> None:
    import json

    from vitals_agent.agent.patient.lookup import Pending

    pending = Pending(TYPED, "cli", None, T0, T0.replace(hour=23))
    (tmp_path / "patient_pending.json").write_text(json.dumps(pending.to_json()))
    async with room(tmp_path, None) as r:
        assert r.lookup.pending() is None
        assert not r.patients.route("oxi-1", oximeter_reading()).held
    assert names(tmp_path) == ["pdq_cancelled"]


def test_mask() -> None:
    assert mask_mrn("ZQ4471902") == "\u2022\u2022\u2022902"
    assert mask_mrn("123456") == "\u2022\u2022\u2022"


def test_http_error_text_never_carries_the_mrn() -> None:

    text = "400, message='Bad', url='https://ehr/fhir/Patient?identifier=urn%3Aoid%3A2.999.1%7CZQ+4471902'"
    assert "4471902" not in scrub(text, "ZQ 4471902")
    assert scrub("refused ZQ4471902", "ZQ4471902") == "refused \u2022\u2022\u2022"


async def test_a_wall_clock_step_neither_ends_nor_stretches_a_pending_confirmation(tmp_path: Path) -> None:
    from vitals_agent.agent.clock import Clock as AgentClock
    from vitals_agent.config.patient import PatientConfig

    wall = FakeClock()
    mono = [1000.0]
    clock = AgentClock(wall, lambda: mono[0])
    audit = AuditLog.in_dir(tmp_path, now=wall)
    patients = PatientContextManager(tmp_path, PatientConfig(), audit, clock=clock)
    async with PdqSupplier() as supplier:
        config = PdqConfig(port=supplier.port, assigning_authority=AUTHORITY)
        lookup = PatientLookup(patients, pdq_client(config, SENDER), config, audit, now=wall)
        try:
            await lookup.lookup(TYPED, Origin("cli"))
            wall.advance(hours=1)  # NTP step forward: not 120 s of waiting
            mono[0] += 1
            assert lookup.pending() is not None and patients.route("oxi-1", oximeter_reading(wall.now)).held
            mono[0] += 120  # two minutes really passed
            assert lookup.pending() is None and not lookup.is_pending(wall.now)
        finally:
            await lookup.close()
            patients.close()
            audit.close()
