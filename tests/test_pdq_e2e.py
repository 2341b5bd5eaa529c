"""Lookup then confirm, end to end: the agent as a real process with ``[pdq]``, a Masimo on a
pseudo-terminal, the real CLI over the control API, python-hl7's MLLP servers as the EHR and as the PDQ
supplier, every ORU checked by the STRICT oracle and the query by the ITI-21 oracle; the status page's
Confirm in a real headless Chromium."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_helpers import AgentProcess, cli, masimo_ascii1_line
from tests.fake_ehr import Hl7Ehr
from tests.kit.toml import toml_str
from tests.oracle import validate_oru
from tests.pdq_helpers import AUTHORITY, PdqSupplier
from tests.pdq_oracle import validate_qbp
from vitals_agent.agent.storage.audit import read_audit
from vitals_agent.drivers.pty import PtyDevice

pytestmark = pytest.mark.timeout(120)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
MRN = "ZQ4471902"
SECRETS = (MRN, "QUIRKE", "ODALYS", "19610923", "1961-09-23", "ZQ0000902")


def write_config(path: Path, data_dir: Path, ehr_port: int, pdq_port: int, oxi: Path, **pdq: Any) -> Path:
    lines = [
        "[agent]",
        'facility = "EXAMPLE_CLINIC"',
        'location = "CLINIC^ROOM12"',
        f"data_dir = {toml_str(data_dir)}",
        'timezone = "UTC"',
        "[ehr]",
        'host = "127.0.0.1"',
        f"port = {ehr_port}",
        "ack_timeout_seconds = 2",
        "backoff_min_seconds = 0.05",
        "backoff_max_seconds = 0.5",
        "[control]",
        "port = 0",
        "[patient]",
        'assigning_authority = "LOCAL&2.999.77&ISO"',
        "[pdq]",
        'host = "127.0.0.1"',
        f"port = {pdq_port}",
        'receiving_application = "PDQ_SUPPLIER"',
        f'assigning_authority = "{AUTHORITY}"',
        *(f"{key} = {json.dumps(value)}" for key, value in pdq.items()),
        "[[devices]]",
        'id = "spo2-room12"',
        'driver = "masimo-ascii"',
        f'port = "{oxi}"',
        'report = "every"',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Room:
    agent: AgentProcess
    ehr: Hl7Ehr
    supplier: PdqSupplier
    oxi: PtyDevice
    config: Path
    data: Path
    now: datetime
    sent: int = 0

    async def reading(self, spo2: str = "097") -> None:
        self.sent += 1
        await self.oxi.write(
            masimo_ascii1_line(self.now + timedelta(seconds=self.sent), spo2, "070", "04.69")
        )

    async def held(self, count: int) -> None:
        await self.agent.wait_log(
            lambda: len(self.agent.events("held.until_confirmed")) >= count,
            what=f"{count} reading(s) held",
        )

    def audit(self) -> list[dict[str, Any]]:
        return list(read_audit(self.data / "audit.jsonl"))

    def assert_log_has_no_patient_data(self) -> None:
        for line in self.agent.raw_log:
            for secret in SECRETS:
                assert secret not in line, f"patient data in the operational log: {line}"

    async def patient(self, *args: str) -> tuple[int, str, str]:
        return await cli("patient", *args, "--config", str(self.config))


@contextlib.asynccontextmanager
async def room(tmp_path: Path, supplier: PdqSupplier | None = None, **pdq: Any) -> AsyncIterator[Room]:
    ehr = await Hl7Ehr().start()
    supplier = supplier or PdqSupplier()
    data = tmp_path / "data"
    async with supplier:
        with PtyDevice(tmp_path / "ttyRad8") as oxi:
            cfg = write_config(tmp_path / "agent.toml", data, ehr.port, supplier.port, oxi.link, **pdq)
            agent = AgentProcess(cfg)
            r = Room(agent, ehr, supplier, oxi, cfg, data, datetime.now(UTC).replace(microsecond=0))
            try:
                await agent.wait_log(lambda: bool(agent.events("device.connected")), what="device.connected")
                await agent.wait_log(lambda: (data / "control.json").exists(), what="control API")
                yield r
            finally:
                r.agent.cleanup()
                await ehr.close()


def assert_bound_to_odalys(raw: str) -> None:
    parsed = validate_oru(raw)
    pid = parsed.pid
    assert pid[3] == "ZQ4471902^^^EXCLINIC&2.999.1&ISO^MR"  # the EHR's domain, not [patient]'s
    assert (pid[5], pid[7], pid[8], pid[31]) == ("QUIRKE^ODALYS^^^^^L", "19610923", "F", "N")
    assert parsed.pv1.text(19) == "V778"


@pytest.mark.slow  # starts a process
async def test_set_then_confirm_binds_the_room_from_the_ehrs_answer(tmp_path: Path) -> None:
    async with room(tmp_path) as r:
        code, out, err = await r.patient("set", "--mrn", MRN)
        assert (code, err) == (0, "")
        assert out == "pending: O. Q., born 1961 \u2014 confirm with: vitals-agent patient confirm\n"
        # the supplier got one ITI-21 query, STRICT-valid, naming the typed MRN in the configured domain
        (query,) = r.supplier.received
        qbp = validate_qbp(query.raw)
        assert qbp.qpd.qpd_3[0].to_er7() == f"@PID.3.1^{MRN}"
        assert qbp.msh.msh_5.to_er7() == "PDQ_SUPPLIER"

        # a reading while the confirmation is pending is held, not filed to anyone
        await r.reading("096")
        await r.held(1)
        assert r.ehr.messages == []
        code, out, _ = await r.patient("show")
        assert "Waiting for confirmation: O. Q., born 1961" in out and MRN not in out

        code, out, err = await r.patient("confirm")
        assert (code, err) == (0, "") and "confirmed against the EHR" in out and MRN not in out
        # the held reading goes to the confirmed patient (late-associated), then the next one too
        (held,) = await r.ehr.wait_for(1)
        assert_bound_to_odalys(held)
        assert "late-associated" in held
        await r.reading("097")
        messages = await r.ehr.wait_for(2)
        assert_bound_to_odalys(messages[1])
        assert "|97|" in messages[1]

        events = {e["event"]: e for e in r.audit()}
        assert events["pdq_query"]["channel"] == "api" and events["pdq_query"]["client"] == "cli"
        assert events["pdq_answer"]["count"] == 1 and "patient" not in events["pdq_answer"]
        assert events["pdq_confirmed"]["patient"]["family"] == "QUIRKE"
        assert events["context_set"]["verified"] == "ehr"
        r.assert_log_has_no_patient_data()


@pytest.mark.parametrize(
    ("mrn", "mode", "message"),
    [
        ("ZQ0000902", "AA", "no patient with MRN \u2022\u2022\u2022902 in the EHR"),
        (MRN, "SILENT", "patient lookup failed: PDQ supplier: no answer from 127.0.0.1:"),
        (MRN, "AE", "patient lookup failed: the EHR could not answer the patient query (AE [207])"),
    ],
)
@pytest.mark.slow  # starts a process
async def test_no_match_silence_and_ae_bind_nothing(
    tmp_path: Path, mrn: str, mode: str, message: str
) -> None:
    async with room(tmp_path, PdqSupplier(mode=mode), timeout_seconds=1) as r:
        code, out, err = await r.patient("set", "--mrn", mrn)
        assert (code, out) == (1, "")
        assert err.startswith(message) and err.count("\n") == 1, err
        assert mrn not in err
        assert len(r.supplier.received) == 1  # asked once: a failed lookup is not tried again
        code, out, _ = await r.patient("show")
        assert out.startswith("No patient set")
        code, _, err = await r.patient("confirm")
        assert code == 1 and "nothing is waiting for confirmation" in err
        # the next reading goes out unbound (by room), never to the refused patient
        await r.reading()
        (raw,) = await r.ehr.wait_for(1)
        parsed = validate_oru(raw)
        assert parsed.pid[31] == "Y" and mrn not in raw
        r.assert_log_has_no_patient_data()


@pytest.mark.slow  # starts a process
async def test_typed_fallback_binds_unverified(tmp_path: Path) -> None:
    async with room(tmp_path, PdqSupplier(mode="AE"), pdq_fallback="typed") as r:
        code, out, err = await r.patient("set", "--mrn", MRN, "--name", "QUIRKE^ODALYS")
        assert code == 0
        assert err.startswith("bound UNVERIFIED as typed (O. Q.): the EHR could not be asked: ")
        assert "UNVERIFIED" in out
        await r.reading()
        (raw,) = await r.ehr.wait_for(1)
        assert validate_oru(raw).pid[3] == "ZQ4471902^^^LOCAL&2.999.77&ISO^MR"  # as typed, [patient]'s domain
        assert [e["verified"] for e in r.audit() if e["event"] == "context_set"] == ["unverified"]


@pytest.mark.slow  # starts a process
async def test_held_readings_survive_a_restart_while_confirmation_is_pending(tmp_path: Path) -> None:
    async with room(tmp_path) as r:
        assert (await r.patient("set", "--mrn", MRN))[0] == 0
        await r.reading("095")
        await r.held(1)
        code, _ = r.agent.terminate()
        assert code == 0
        r.agent = AgentProcess(r.config)
        await r.agent.wait_log(lambda: bool(r.agent.events("device.connected")), what="restarted")
        await r.agent.wait_log(lambda: (r.data / "control.json").exists(), what="control API")
        code, out, _ = await r.patient("show")
        assert "Waiting for confirmation: O. Q., born 1961" in out
        await r.reading("096")  # still pending after the restart: held too
        await r.held(1)
        assert r.ehr.messages == []
        assert (await r.patient("confirm"))[0] == 0
        messages = await r.ehr.wait_for(2)
        for raw in messages:
            assert_bound_to_odalys(raw)
        assert sorted(validate_oru(m).obx_by_code("150456")[5] for m in messages) == ["95", "96"]


@pytest.mark.slow  # starts a process
async def test_several_matches_are_chosen_with_pick(tmp_path: Path) -> None:
    from tests.pdq_helpers import ODALYS
    from vitals_agent.hl7.pdq import PdqCandidate

    twin = PdqCandidate(
        mrn=MRN, authority=ODALYS.authority, family="QUIRKE", given="OLIVE", birth_date="19750412", sex="F"
    )
    async with room(tmp_path, PdqSupplier([ODALYS, twin])) as r:
        code, out, _ = await r.patient("set", "--mrn", MRN)
        assert code == 0
        assert out.splitlines() == [
            "2 patients with MRN \u2022\u2022\u2022902 in the EHR:",
            "  1) O. Q., born 1961, F",
            "  2) O. Q., born 1975, F",
            "choose with: vitals-agent patient confirm --pick N",
        ]
        code, _, err = await r.patient("confirm")
        assert code == 1 and "choose one with --pick 1..2" in err
        assert (await r.patient("confirm", "--pick", "2"))[0] == 0
        await r.reading()
        (raw,) = await r.ehr.wait_for(1)
        assert validate_oru(raw).pid[5] == "QUIRKE^OLIVE^^^^^L"


@pytest.mark.slow  # starts a process
async def test_cancel_binds_nothing(tmp_path: Path) -> None:
    async with room(tmp_path) as r:
        assert (await r.patient("set", "--mrn", MRN))[0] == 0
        await r.reading()
        await r.held(1)
        code, out, _ = await r.patient("cancel")
        assert (code, out) == (0, "confirmation cancelled; nothing was bound\n")
        (raw,) = await r.ehr.wait_for(1)  # require_patient is off: the held reading goes out unbound
        assert validate_oru(raw).pid[31] == "Y" and MRN not in raw
        # "patient clear" also ends a confirmation that is waiting
        assert (await r.patient("set", "--mrn", MRN))[0] == 0
        assert (await r.patient("clear"))[0] == 0
        _, out, _ = await r.patient("show")
        assert out.startswith("No patient set") and "Waiting" not in out
        assert [e["event"] for e in r.audit() if e["event"] == "pdq_cancelled"] == ["pdq_cancelled"] * 2


# ------------------------------------------------------------------------------------------ the page


@pytest.mark.skipif(
    __import__("shutil").which("chromium") is None and __import__("shutil").which("chromium-browser") is None,
    reason="Debian package 'chromium' is not installed",
)
@pytest.mark.slow  # starts a process
async def test_the_page_shows_the_ehrs_patient_and_confirm_binds(tmp_path: Path) -> None:
    from tests.cdp import browser

    async with room(tmp_path) as r:
        assert (await r.patient("set", "--mrn", MRN))[0] == 0
        code, url, _ = await cli("status", "--url", "--config", str(r.config))
        assert code == 0
        async with browser() as tab:
            await tab.goto(url.strip())
            await tab.wait_for("document.querySelector('#pending')")
            text = await tab.evaluate("document.querySelector('#pending').innerText")
            assert "QUIRKE, ODALYS" in text and "1961-09-23" in text and "female (F)" in text
            assert await tab.evaluate("!!document.querySelector('#confirm-1')")
            assert await tab.evaluate("!!document.querySelector('#cancel')")
            # no reload while the person decides (it would reset their view): the page's live meta
            # refresh waits for the end of the confirmation window (confirm_timeout_seconds 120)
            refresh = await tab.evaluate("document.querySelector('meta[http-equiv=refresh]').content")
            assert 100 < int(refresh.split(";")[0]) <= 122, refresh
            ARTIFACTS.mkdir(exist_ok=True)
            await tab.screenshot(ARTIFACTS / "pdq_confirm_page.png")
            await tab.click("#confirm-1")
            await tab.wait_for("!document.querySelector('#pending')")
            patient = await tab.evaluate("document.querySelector('#patient').innerText")
            assert "confirmed against the EHR" in patient
            refresh = await tab.evaluate("document.querySelector('meta[http-equiv=refresh]').content")
            assert refresh == "5;url=/"  # bound: the page refreshes as usual again
            await tab.screenshot(ARTIFACTS / "pdq_confirmed_page.png")
        await r.reading()
        (raw,) = await r.ehr.wait_for(1)
        assert_bound_to_odalys(raw)
        confirmed = next(e for e in r.audit() if e["event"] == "pdq_confirmed")
        assert confirmed["channel"] == "page"
        assert any(e["event"] == "pdq_shown" and e["channel"] == "page" for e in r.audit())
        r.assert_log_has_no_patient_data()


@pytest.mark.slow  # starts a process
async def test_a_page_form_without_its_token_changes_nothing(tmp_path: Path) -> None:
    import http.client
    from urllib.parse import urlsplit

    async with room(tmp_path) as r:
        assert (await r.patient("set", "--mrn", MRN))[0] == 0
        code, url, _ = await cli("status", "--url", "--config", str(r.config))
        assert code == 0
        parts = urlsplit(url.strip())
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        conn.request("GET", f"{parts.path}?{parts.query}")
        resp = conn.getresponse()
        resp.read()
        cookie = (resp.getheader("Set-Cookie") or "").split(";")[0]
        for body in ("pick=1", "pick=1&csrf=forged"):
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
            headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
            conn.request("POST", "/patient/confirm", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 401
        _, out, _ = await r.patient("show")
        assert "Waiting for confirmation" in out
