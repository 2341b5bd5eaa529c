"""The status page's review panel in headless Chromium (Debian ``chromium``; skipped with a reason without
it), driven with the keyboard only: Tab to a control, type, Enter. A clinician signs in on the page,
enters respiration, pain and the BP position, confirms the waiting reading; the EHR message carries all of
it. The panel fits a 1280x800 exam-room screen; screenshots go to ``test-artifacts/review_panel.png`` and
``test-artifacts/review_entry.png``."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.kit import MRN, FakeClock, events
from tests.review_helpers import ANNA, bp_reading, make_service, orus
from vitals_agent.agent.control import ControlServer
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian package 'chromium' is not installed"),
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WIDTH, HEIGHT = 1280, 800


@pytest.fixture
async def room(tmp_path: Path) -> AsyncIterator[tuple[AgentService, ControlServer]]:
    time = FakeClock()
    service = make_service(tmp_path, "confirm", time, control={"enabled": True, "port": 0})
    assert service.control is not None
    await service.control.start()
    service.patients.set(PatientDetails(mrn=MRN, family="QUIXOTEFAMILY", given="ZEBEDEEGIVEN"), Origin("api"))
    await service.pipeline.submit(service.runtimes["cuff"], bp_reading(time.now))
    try:
        yield service, service.control
    finally:
        await service.control.stop()
        service.close()


async def _layout(tab: Any) -> dict[str, Any]:
    result: dict[str, Any] = await tab.evaluate(
        "(() => { const r = document.querySelector('#review');"
        " const cell = document.querySelector('#review td');"
        " return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth,"
        " right: r.getBoundingClientRect().right, font: parseFloat(getComputedStyle(cell).fontSize),"
        " refresh: !!document.querySelector('meta[http-equiv=refresh]')}; })()"
    )
    return result


async def test_keyboard_only_sign_in_manual_entry_and_confirm(
    room: tuple[AgentService, ControlServer], tmp_path: Path
) -> None:
    from tests.cdp import browser

    service, server = room
    code = server.credentials.new_code()
    async with browser(WIDTH, HEIGHT) as tab:
        await tab.goto(f"{server.url}/?code={code}")
        await tab.wait_for("document.querySelector('#review')")
        text = await tab.evaluate("document.querySelector('#review').innerText")
        assert "No clinician signed in" in text and "Review mode confirm" in text
        assert MRN not in text and "\u2022" in text  # the patient masked
        layout = await _layout(tab)
        assert layout["scroll"] <= layout["inner"] == WIDTH  # no sideways scrolling at 1280x800
        assert layout["right"] <= WIDTH and layout["font"] >= 16 and layout["refresh"]
        ARTIFACTS.mkdir(exist_ok=True)
        await tab.screenshot(ARTIFACTS / "review_panel.png")

        # the sign-in link, by keyboard; the entry mode has no refresh and focuses the badge field
        await tab.tab_to(lambda f: f["tag"] == "a" and "sign in here" in f["text"])
        await tab.press("Enter")
        await tab.wait_for("location.search === '?enter=1' && document.readyState === 'complete'")
        assert (await _layout(tab))["refresh"] is False
        await tab.wait_for("document.activeElement.name === 'id'")  # autofocus on the badge field
        await tab.type("4711")
        await tab.press("Tab")
        await tab.type("NURSE")
        await tab.press("Tab")
        await tab.type("ANNA")
        await tab.press("Enter")
        await tab.wait_for(
            "document.querySelector('#manual') && document.activeElement.name === 'respiratory_rate'"
        )
        assert "ANNA NURSE (4711)" in await tab.evaluate("document.querySelector('#clinician').innerText")

        await tab.type("16")
        await tab.press("Tab")
        await tab.type("3")
        await tab.tab_to(lambda f: f["name"] == "bp_position")
        await tab.press("s")  # type-ahead in the select: "Sitting position"
        assert await tab.evaluate("document.activeElement.value") == "sitting"
        await tab.screenshot(ARTIFACTS / "review_entry.png")
        await tab.tab_to(lambda f: f["tag"] == "button" and f["text"] == "Send values")
        await tab.press("Enter")
        await tab.wait_for(  # back on the entry page, the values listed with the waiting reading
            "(document.querySelector('#review-waiting') || {innerText: ''}).innerText"
            ".includes('Resp 16 /min, Pain 3 /10, BP position Sitting position')"
        )
        assert service.outbox.list_queued() == []  # it joined the reading waiting for review

        await tab.tab_to(lambda f: f["label"].startswith("Confirm reading"))
        await tab.press("Enter")
        await tab.wait_for(
            "(document.querySelector('#review') || {innerText: ''}).innerText"
            ".includes('No reading is waiting')"
        )

    [oru] = orus(service)
    assert [o[1] for o in oru.all("OBR")] == ["1", "2"]
    assert oru.obx_by_code("150021")[11] == "F" and oru.obx_by_code("150021")[16] == "4711^NURSE^ANNA"
    assert oru.value("9279-1") == "16" and oru.value("72514-3") == "3"
    assert oru.obx_by_code("8361-8").text(5, 2) == "Sitting position"
    page_events = [e["event"] for e in events(tmp_path) if e.get("channel") == "page"]
    assert page_events == ["clinician_set", "manual_entered", "review_confirmed"]


async def test_reject_by_keyboard_needs_a_reason(room: tuple[AgentService, ControlServer]) -> None:
    from tests.cdp import browser

    service, server = room
    service.clinicians.set(ANNA, Origin("cli"))
    code = server.credentials.new_code()
    async with browser(WIDTH, HEIGHT) as tab:
        await tab.goto(f"{server.url}/?code={code}")
        await tab.wait_for("document.querySelector('#review-waiting')")
        await tab.tab_to(lambda f: f["tag"] == "select" and f["name"] == "reason")
        await tab.press("ArrowDown")  # the first reason
        await tab.tab_to(lambda f: f["label"].startswith("Reject reading"))
        await tab.press("Enter")
        await tab.wait_for(
            "(document.querySelector('#review') || {innerText: ''}).innerText"
            ".includes('No reading is waiting')"
        )
    [item] = service.review.list()
    assert (item["state"], item["reason"]) == ("rejected", "artefact (movement, talking)")
    assert orus(service) == []
