"""The review's control API and page forms over real HTTP (the agent's h11 server, the standard library's
http.client as the independent client): clinician sign-in, confirm, reject, correct, wrong patient, manual
entries; errors as one line with the right status; page forms only with the session and its form token."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.kit import MRN, FakeClock, events
from tests.oracle import validate_oru
from tests.review_helpers import bp_reading, make_service, orus, value_rows
from vitals_agent.agent.control import ControlClient, ControlError
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService


class Agent:
    def __init__(self, service: AgentService, time: FakeClock) -> None:
        self.service = service
        self.time = time
        assert service.control is not None
        self.server = service.control
        self.client = ControlClient(self.server.host, self.server.port, self.server.token)

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        return await self.client.call(method, path, body)

    async def take(self, **values: str) -> None:
        await self.service.pipeline.submit(self.service.runtimes["cuff"], bp_reading(self.time.now, **values))

    def _http(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=10)
        try:
            conn.request(
                method, path, body=body, headers={"Host": f"127.0.0.1:{self.server.port}", **headers}
            )
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    async def http(
        self, method: str, path: str, body: bytes = b"", **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.to_thread(self._http, method, path, body, headers)

    async def page_session(self) -> str:
        code = self.server.credentials.new_code()
        status, headers, _ = await self.http("GET", f"/?code={code}")
        assert status == 303
        return headers["set-cookie"].split(";")[0]  # vitals_session=...

    async def form(self, path: str, cookie: str, **fields: str) -> tuple[int, dict[str, str], bytes]:
        body = urlencode(fields).encode()
        return await self.http(
            "POST", path, body, Cookie=cookie, **{"Content-Type": "application/x-www-form-urlencoded"}
        )


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time, control={"enabled": True, "port": 0})
    assert service.control is not None
    await service.control.start()
    try:
        yield Agent(service, time)
    finally:
        await service.control.stop()
        service.close()


async def test_api_sign_in_confirm_reject_and_errors(agent: Agent, tmp_path: Path) -> None:
    agent.service.patients.set(PatientDetails(mrn=MRN), Origin("api"))
    await agent.take(systolic="121")
    await agent.take(systolic="251", diastolic="50")
    listing = await agent.call("GET", "/api/review")
    assert listing["mode"] == "confirm" and [i["waiting"] for i in listing["items"]] == [True, True]
    assert MRN not in json.dumps(listing)
    first, second = sorted(i["id"] for i in listing["items"])

    with pytest.raises(ControlError, match="needs a signed-in clinician"):
        await agent.call("POST", "/api/review/confirm", {"ids": [first]})
    with pytest.raises(ControlError, match="clinician id contains"):
        await agent.call("PUT", "/api/clinician", {"id": "47|11"})
    signed = await agent.call("PUT", "/api/clinician", {"id": "4711", "name": "NURSE^ANNA", "channel": "cli"})
    assert signed["clinician"]["name"] == "ANNA NURSE"

    with pytest.raises(ControlError, match="reason is required"):
        await agent.call("POST", "/api/review/reject", {"id": second, "reason": ""})
    with pytest.raises(ControlError, match="ids are numbers"):
        await agent.call("POST", "/api/review/confirm", {"ids": ["x"]})
    await agent.call("POST", "/api/review/reject", {"id": second, "reason": "artefact"})
    done = await agent.call("POST", "/api/review/confirm", {"all": True})
    assert done["confirmed"] == [first]
    [oru] = orus(agent.service)
    assert oru.value("150021") == "121" and {r[16] for r in value_rows(oru)} == {"4711^NURSE^ANNA"}

    revealed = await agent.call("GET", "/api/review?reveal=1")
    assert MRN in json.dumps(revealed)
    audit = [
        e for e in events(tmp_path) if e["event"] in ("review_revealed", "review_confirmed", "clinician_set")
    ]
    assert [(e["event"], e["channel"]) for e in audit] == [
        ("clinician_set", "api"),
        ("review_confirmed", "api"),
        ("review_revealed", "api"),
    ]
    assert audit[0]["client"] == "cli"  # what the caller said it was, beside the real channel


async def test_api_manual_correct_and_wrong_patient(agent: Agent) -> None:
    await agent.call("PUT", "/api/clinician", {"id": "4711"})
    with pytest.raises(ControlError, match="plausible range"):
        await agent.call("POST", "/api/manual", {"values": {"resp_rate": "400"}})
    with pytest.raises(ControlError, match="values: a JSON object"):
        await agent.call("POST", "/api/manual", {"values": ["resp_rate=16"]})
    sent = await agent.call("POST", "/api/manual", {"values": {"resp_rate": 16, "pain": "3"}})
    assert sent["attached"] is False and sent["control_id"]
    corrected = await agent.call("POST", "/api/review/correct", {"id": sent["item"], "values": {"pain": "4"}})
    assert corrected["status"] == "C"
    retracted = await agent.call("POST", "/api/review/wrong-patient", {"id": sent["item"]})
    assert retracted["awaiting_patient"] is True and retracted["status"] == "W"
    statuses = [[r[11] for r in value_rows(o)] for o in orus(agent.service)]
    assert statuses == [["F", "F"], ["F", "C"], ["W", "W"]]
    with pytest.raises(ControlError, match="not allowed"):
        await agent.call("DELETE", "/api/review")
    cleared = await agent.call("DELETE", "/api/clinician", {})
    assert cleared == {"cleared": True, "clinician": cleared["clinician"]} and not cleared["clinician"]["set"]


async def test_page_forms_need_the_session_and_its_form_token(agent: Agent, tmp_path: Path) -> None:
    await agent.take()
    [item] = agent.service.review.list()
    cookie = await agent.page_session()
    session = cookie.split("=", 1)[1]
    token = agent.server.credentials.form_token(session)

    status, _, _ = await agent.form("/clinician/set", cookie, id="4711", family="NURSE", given="ANNA")
    assert status == 401  # no form token: a cross-site form cannot sign anyone in
    status, _, _ = await agent.form("/clinician/set", "vitals_session=forged", csrf=token, id="4711")
    assert status == 401
    status, headers, _ = await agent.form(
        "/clinician/set", cookie, csrf=token, id="4711", family="NURSE", given="ANNA"
    )
    assert (status, headers["location"]) == (303, "/?enter=1")  # back to the entry forms
    status, _, body = await agent.form("/review/reject", cookie, csrf=token, id=str(item["id"]), reason="")
    assert status == 400 and b"reason is required" in body and b'href="/"' in body
    status, _, _ = await agent.form(
        "/review/manual", cookie, csrf=token, resp_rate="18", position="sitting", pain=""
    )
    assert status == 303
    status, _, _ = await agent.form("/review/confirm", cookie, csrf=token, id=str(item["id"]))
    assert status == 303
    [oru] = orus(agent.service)
    assert oru.value("9279-1") == "18" and oru.obx_by_code("150021")[11] == "F"
    assert validate_oru(oru.raw).obx_by_code("8361-8").text(5, 2) == "Sitting position"
    status, _, _ = await agent.form("/clinician/clear", cookie, csrf=token)
    assert status == 303 and agent.service.clinicians.current() is None
    page_events = [e for e in events(tmp_path) if e.get("channel") == "page"]
    assert [e["event"] for e in page_events] == [
        "clinician_set",
        "manual_entered",
        "review_confirmed",
        "clinician_cleared",
    ]
    # a GET with the session can read the list, never change it
    status, _, _ = await agent.http("POST", "/api/review/confirm", b'{"all": true}', Cookie=cookie)
    assert status == 401


def test_the_panel_escapes_everything_and_the_terminal_names_the_review() -> None:
    from datetime import UTC, datetime

    from vitals_agent.agent.control.page import review_line
    from vitals_agent.agent.control.review_page import review_html

    review = {
        "mode": "confirm",
        "pending": 1,
        "awaiting_confirmation": 0,
        "clinician": {"set": True, "id": "<i>1", "name": "<script>x</script>", "channel": "api"},
    }
    items = [
        {
            "id": 7,
            "device": "cuff<b>",
            "kind": "blood_pressure",
            "taken_at": "2026-03-11T14:00:00+00:00",
            "values": {"bp_systolic": "128 mm[Hg]"},
            "qualifiers": {},
            "manual": [],
            "patient": {"mrn": "\u2022\u202242", "name": "Q. <Z."},
            "waiting": True,
        }
    ]
    page = review_html(
        review, items, form_token="t&k", now=datetime.now(UTC), editing=False, reasons=("a<b",)
    )
    assert "<script>" not in page and "&lt;script&gt;" in page and "cuff&lt;b&gt;" in page
    assert 'value="t&amp;k"' in page and "a&lt;b" in page and "Q. &lt;Z." in page
    assert "Systolic 128 mmHg" in page and 'aria-label="Confirm reading 7"' in page
    assert (
        review_line(review) == "Review (confirm): 1 reading(s) waiting; clinician <script>x</script> (<i>1)"
    )
