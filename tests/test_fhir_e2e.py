"""FHIR beside HL7 end to end: a Masimo Rad-8 on a pseudo-terminal, the agent as a real process, python-hl7's
MLLP server as the EHR and the loopback FHIR server. Every reading reaches both; a kill -9 while a Bundle is
in flight loses nothing and duplicates nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e_helpers import AgentProcess, masimo_ascii1_line, write_config
from tests.fake_ehr import Hl7Ehr
from tests.fake_fhir import FakeFhir
from tests.fhir_oracle import check_bundle, observation_by_loinc
from tests.kit import until
from tests.oracle import validate_oru
from vitals_agent.drivers.pty import PtyDevice

pytestmark = pytest.mark.timeout(120)


def fhir_section(base_url: str, timeout: float = 5.0) -> str:
    return (
        "[fhir]\n"
        "enabled = true\n"
        f'base_url = "{base_url}"\n'
        'patient_identifier_system = "urn:oid:2.999.1"\n'
        f"timeout_seconds = {timeout}\n"
        "backoff_min_seconds = 0.05\n"
        "backoff_max_seconds = 0.5\n"
    )


def spo2_of(raw: bytes) -> int:
    return int(observation_by_loinc(check_bundle(raw), "2708-6")["valueQuantity"]["value"])


@pytest.mark.slow  # starts a process
async def test_both_destinations_get_every_reading(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
    now = datetime.now(UTC).replace(microsecond=0)
    values = ["096", "097", "095"]
    async with FakeFhir() as fhir:
        with PtyDevice(tmp_path / "ttyRad8") as pty:
            cfg = write_config(
                tmp_path / "agent.toml",
                data_dir=tmp_path / "data",
                ehr_port=ehr.port,
                devices=[{"id": "spo2", "driver": "masimo-ascii", "port": str(pty.link), "report": "every"}],
                extra=fhir_section(fhir.base_url),
            )
            agent = AgentProcess(cfg)
            try:
                await agent.wait_log(lambda: bool(agent.events("device.connected")), what="device.connected")
                for i, v in enumerate(values):
                    await pty.write(masimo_ascii1_line(now + timedelta(seconds=i), v, "070", "03.00"))
                messages = await ehr.wait_for(3)
                await fhir.wait_for(3)
                code, _ = agent.terminate()
            finally:
                agent.cleanup()
                await ehr.close()
    assert code == 0, agent.tail()
    orus = [validate_oru(m) for m in messages]
    assert [o.value("150456") for o in orus] == ["96", "97", "95"]
    # the same readings, under the same control ids, as transaction Bundles
    assert fhir.bundle_ids() == [o.control_id for o in orus]
    assert [spo2_of(a.raw) for a in fhir.arrivals] == [96, 97, 95]
    assert len(fhir.observations()) == 9  # SpO2, pulse rate, perfusion index per reading
    assert len(fhir.store.all("Device")) == 1 and len(fhir.store.all("Location")) == 1
    queued = agent.events("reading.queued")
    assert all(e["destinations"] == ["ehr", "fhir"] for e in queued)


@pytest.mark.slow  # starts a process
async def test_kill_9_while_a_bundle_is_in_flight_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    ehr = await Hl7Ehr().start()
    now = datetime.now(UTC).replace(microsecond=0)
    values = ["091", "092", "093"]
    async with FakeFhir(mode="STORE_SLOW") as fhir:  # stores the Bundle, then never answers in time
        fhir.delay = 60.0
        with PtyDevice(tmp_path / "ttyRad8") as pty:
            cfg = write_config(
                tmp_path / "agent.toml",
                data_dir=tmp_path / "data",
                ehr_port=ehr.port,
                devices=[{"id": "spo2", "driver": "masimo-ascii", "port": str(pty.link), "report": "every"}],
                extra=fhir_section(fhir.base_url, timeout=30.0),
            )
            agent = AgentProcess(cfg)
            try:
                await agent.wait_log(lambda: bool(agent.events("device.connected")), what="device.connected")
                for i, v in enumerate(values):
                    await pty.write(masimo_ascii1_line(now + timedelta(seconds=i), v, "070", "03.00"))
                await ehr.wait_for(3)  # the EHR has its ORUs: its destination does not wait for FHIR's
                await fhir.wait_for(1)  # the first Bundle is stored; its answer is still to come
                agent.kill()  # SIGKILL mid-send
            finally:
                agent.cleanup()
            fhir.mode = "OK"
            agent = AgentProcess(cfg)
            try:
                await until(lambda: len(fhir.store.all("Observation")) >= 9, timeout=30)
                await agent.wait_log(lambda: len(fhir.bundle_ids()) >= 3, what="all Bundles answered")
                code, _ = agent.terminate()
            finally:
                agent.cleanup()
                await ehr.close()
    assert code == 0, agent.tail()
    orus = [validate_oru(m) for m in ehr.messages]
    assert {o.value("150456") for o in orus} == {"91", "92", "93"}  # every reading (at least once)
    assert {o.control_id for o in orus} == set(fhir.bundle_ids()), "the same readings, the same ids"
    first = fhir.bundle_ids(None)[0]
    assert fhir.bundle_ids(None).count(first) == 2, "the Bundle in flight was sent again after the restart"
    identifiers = fhir.observation_identifiers()
    assert len(identifiers) == len(set(identifiers)) == 9, "no Observation twice"
    assert sorted(spo2_of(a.raw) for a in fhir.arrivals if a.status == 200) == [91, 92, 93]
