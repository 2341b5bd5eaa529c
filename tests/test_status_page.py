"""The room status page: rendered by the control server, checked in a real headless Chromium.

Needs the Debian package ``chromium`` (skips cleanly without it). The screenshot is saved to
``test-artifacts/status_page.png``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import shutil
import signal
import struct
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.kit import FAMILY, GIVEN, MRN, FakeClock, manager, until
from tests.test_control import MASKED, fake_status
from vitals_agent.agent.control import ControlServer, StatusSnapshot, render_html, render_text
from vitals_agent.agent.patient.context import PatientContextManager, PatientDetails
from vitals_agent.agent.patient.origin import Origin

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
NOW = datetime(2026, 3, 11, 14, 0, 5, tzinfo=UTC)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian package 'chromium' is not installed")


def room_status() -> StatusSnapshot:
    status = fake_status()
    status["devices"] = [
        status["devices"][0],
        {
            "id": "bp-cuff",
            "driver": "ble_bp",
            "connected": False,
            "detail": "not advertising",
            "last_seen": "2026-03-11T13:41:12+00:00",
            "last_reading_at": "2026-03-11T13:40:50+00:00",
            "last_reading": {
                "bp_systolic": "128 mm[Hg]",
                "bp_diastolic": "82 mm[Hg]",
                "pulse_rate": "71 /min",
            },
            "readings": 3,
            "messages": 3,
            "decode_failures": 0,
            "link_failures": 4,
            "battery_percent": 40,
            "identity": {"manufacturer": "Acme"},
        },
        {
            "id": "thermo-<1>",  # must come out escaped
            "driver": "ble_thermo",
            "connected": True,
            "detail": "",
            "last_seen": "2026-03-11T14:00:01+00:00",
            "last_reading_at": None,
            "last_reading": {},
            "readings": 0,
            "messages": 0,
            "decode_failures": 0,
            "link_failures": 0,
            "battery_percent": 85,
            "identity": {},
        },
    ]
    return status


class Page:
    def __init__(self, server: ControlServer, patients: PatientContextManager) -> None:
        self.server = server
        self.patients = patients
        self.loads = 0


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    clock = FakeClock(NOW)
    patients = manager(tmp_path / "data", clock)
    patients.set(PatientDetails(mrn=MRN, family=FAMILY, given=GIVEN), Origin("barcode", source="scan-1"))
    holder: list[Page] = []

    def provider() -> StatusSnapshot:
        holder[0].loads += 1
        status = room_status()
        status["outbox"]["depth"] = holder[0].loads  # changes on every load: shows the refresh
        return status

    server = ControlServer(tmp_path / "data", patients, provider, port=0, now=clock, refresh_seconds=1)
    holder.append(Page(server, patients))
    await server.start()
    try:
        yield holder[0]
    finally:
        await server.stop()
        patients.close()


async def chromium(*args: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run headless Chromium to completion (its own process group, killed on timeout)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        return proc.returncode or 0, out.decode("utf-8", "replace")


def login_url(server: ControlServer) -> str:
    """What ``vitals-agent status --url`` prints: a single-use login code, never the token."""
    return f"{server.url}/?code={server.credentials.new_code()}"


# ----------------------------------------------------------------------------------------- rendering


def test_html_escapes_values_and_masks_the_patient(tmp_path: Path) -> None:
    patients = manager(tmp_path, FakeClock(NOW))
    patients.set(PatientDetails(mrn=MRN, family=FAMILY, given=GIVEN), Origin("cli"))
    html = render_html(room_status(), patients.snapshot(NOW), now=NOW)
    assert "thermo-&lt;1&gt;" in html and "thermo-<1>" not in html
    assert MASKED in html and "(Q. Z.)" in html
    assert MRN not in html and FAMILY not in html and GIVEN not in html
    assert '<meta http-equiv="refresh" content="5;url=/">' in html
    assert "<script" not in html
    revealed = render_html(room_status(), patients.snapshot(NOW, reveal=True), now=NOW)
    assert f"Patient {MRN} ({FAMILY} {GIVEN})" in revealed
    assert '<meta http-equiv="refresh" content="30;url=/">' in revealed  # back to masked after 30 s
    assert '<a class="btn" href="/">Hide</a>' in revealed


def test_html_without_a_patient_and_with_held_readings(tmp_path: Path) -> None:
    from tests.kit import oximeter_reading

    patients = manager(tmp_path, FakeClock(NOW), require_patient=True)
    patients.route("oxi-1", oximeter_reading(NOW))
    html = render_html(room_status(), patients.snapshot(NOW), now=NOW)
    assert '<div id="patient" class="card held">' in html
    assert "readings are HELD until a patient is set" in html
    assert f"1 held reading(s), oldest {NOW.astimezone():%H:%M:%S} (just now)" in html


# ----------------------------------------------------------------------------------------- browser


@needs_chromium
@pytest.mark.slow  # starts a browser
async def test_page_in_headless_chromium_shows_the_room(page: Page) -> None:
    code, dom = await chromium("--dump-dom", login_url(page.server))
    assert code == 0
    # the login redirect worked: the browser sent the cookie and got the page itself
    assert '<div id="patient" class="card bound">' in dom
    assert f"Patient {MASKED} (Q. Z.): set via barcode (scan-1)" in dom
    assert MRN not in dom and FAMILY not in dom and GIVEN not in dom
    for device in ('data-id="oxi-1"', 'data-id="bp-cuff"', 'data-id="thermo-&lt;1&gt;"'):
        assert device in dom
    assert '<span class="values">SpO2 97%, Pulse 72 /min</span>' in dom
    assert '<span class="values">Systolic 128 mmHg, Diastolic 82 mmHg, Pulse 71 /min</span>' in dom
    assert (
        '<span class="state"><span class="dot disconnected"></span>disconnected</span>'
        '<br><span class="muted">not advertising'
    ) in dom
    assert '<td class="num">40%</td>' in dom and '<td class="num">85%</td>' in dom
    assert '<td class="num warn">2</td>' in dom  # decode errors of oxi-1
    assert '<span class="big">1</span> dead letter(s)' in dom
    assert "waiting in outbox" in dom
    assert 'Last EHR error: <span id="ehr-error">connection refused' in dom
    assert '<div id="ehr" class="stat wide bad">EHR 127.0.0.1:2575: UNREACHABLE (connection refused; ' in dom


@needs_chromium
@pytest.mark.slow  # starts a browser
async def test_page_without_the_token_shows_nothing(page: Page) -> None:
    code, dom = await chromium("--dump-dom", f"{page.server.url}/")
    assert code == 0
    assert "Not authorised" in dom
    assert "oxi-1" not in dom and "EXCLINIC" not in dom and "\u2022" not in dom
    assert page.loads == 0


@needs_chromium
@pytest.mark.slow  # starts a browser
async def test_page_refreshes_itself_in_the_browser(page: Page) -> None:
    """A live headless browser left on the page reloads it (refresh_seconds=1) without any help."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            login_url(page.server),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            await until(lambda: page.loads >= 3, timeout=30, what="three loads of the page")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            await proc.wait()
    assert page.loads >= 3  # first load + at least two refreshes, each with the cookie


@needs_chromium
@pytest.mark.slow  # starts a browser
async def test_screenshot_of_the_status_page(page: Page) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / "status_page.png"
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    code, _ = await chromium(f"--screenshot={target}", "--window-size=1200,900", login_url(page.server))
    assert code == 0
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 900)
    assert len(data) > 20_000  # a rendered page, not a blank image
    assert page.loads >= 1


# ----------------------------------------------------------------------------------------- papercuts


def test_old_readings_show_their_date_and_todays_only_the_time(tmp_path: Path) -> None:
    status = room_status()
    old = datetime(2026, 3, 8, 9, 30, 0, tzinfo=UTC)
    status["devices"][1]["last_reading_at"] = old.isoformat()
    patients = manager(tmp_path, FakeClock(NOW))
    page = render_html(status, patients.snapshot(NOW), now=NOW)
    text = render_text(status, patients.snapshot(NOW), now=NOW)
    shown_old = f"{old.astimezone():%Y-%m-%d %H:%M:%S} (3 d ago)"
    assert shown_old in page and f"last reading {shown_old}: Systolic 128 mmHg" in text
    today = datetime.fromisoformat(status["devices"][0]["last_reading_at"] or "").astimezone()
    assert f"last reading {today:%H:%M:%S} (35 s ago): SpO2 97%, Pulse 72 /min" in text


@pytest.mark.parametrize(
    ("sender", "depth", "line", "reachable"),
    [
        # the last connection attempt failed: unreachable, even though nothing waits to be sent
        (
            {"peer": "ehr:2575", "connected": False, "consecutive_failures": 1, "last_error": "refused",
             "last_error_at": "2026-03-11T14:00:00+00:00", "last_ack_at": "2026-03-11T13:00:00+00:00"},
            0,
            "EHR ehr:2575: UNREACHABLE (refused; last try ",
            False,
        ),
        (
            {"peer": "ehr:2575", "connected": True, "consecutive_failures": 0, "last_error": "refused",
             "last_error_at": "2026-03-11T13:00:00+00:00", "last_ack_at": "2026-03-11T14:00:00+00:00"},
            0,
            "EHR ehr:2575: connected; last ACK ",
            True,
        ),
        (
            {"peer": "ehr:2575", "connected": False, "consecutive_failures": 0,
             "last_ack_at": "2026-03-11T14:00:00+00:00"},
            2,
            "EHR ehr:2575: idle; last ACK ",
            True,
        ),
        (
            {"peer": "ehr:2575", "connected": False},
            0,
            "EHR ehr:2575: not contacted yet (nothing to send)",
            True,
        ),
    ],
)  # fmt: skip
def test_ehr_state_follows_the_last_attempt_not_the_outbox(
    tmp_path: Path, sender: dict[str, object], depth: int, line: str, reachable: bool
) -> None:
    status = room_status()
    status["sender"] = sender  # type: ignore[typeddict-item]
    status["outbox"] = {"depth": depth, "dead": 0}
    patient = manager(tmp_path, FakeClock(NOW)).snapshot(NOW)
    text = render_text(status, patient, now=NOW)
    assert any(row.startswith(line) for row in text.splitlines()), text
    page = render_html(status, patient, now=NOW)
    css = "stat wide" if reachable else "stat wide bad"
    assert f'<div id="ehr" class="{css}">{html.escape(line)}' in page


def test_a_state_and_counters_the_runtime_reports_are_shown(tmp_path: Path) -> None:
    status = room_status()
    status["devices"][0]["state"] = "silent"
    status["devices"][0]["discarded_lines"] = 2
    status["devices"][2]["counters"] = {"files_skipped": 1, "files_failed": 3, "files_other": 0}
    status["refused"] = 2
    patient = manager(tmp_path, FakeClock(NOW)).snapshot(NOW)
    assert '<span class="state"><span class="dot other"></span>silent</span>' in render_html(
        status, patient, now=NOW
    )
    page = render_html(status, patient, now=NOW)
    assert '<span class="counts">overlong lines discarded 2</span>' in page
    assert '<span class="counts">files failed 3, files skipped 1</span>' in page
    text = render_text(status, patient, now=NOW)
    lines = text.splitlines()
    assert "  oxi-1 [masimo]: SILENT (/dev/ttyUSB0)" in lines
    assert "    overlong lines discarded 2" in lines and "    files failed 3, files skipped 1" in lines
    assert "2 reading(s) refused" in lines


@needs_chromium
@pytest.mark.slow  # starts a browser
async def test_a_login_link_works_once(page: Page) -> None:
    url = login_url(page.server)
    code, dom = await chromium("--dump-dom", url)
    assert code == 0 and 'data-id="oxi-1"' in dom
    code, dom = await chromium("--dump-dom", url)  # a second browser with the same link
    assert code == 0
    assert "expired or was used already" in dom and "oxi-1" not in dom
    assert page.server.token not in dom


def _refresh(page: str) -> str:
    start = page.index('http-equiv="refresh" content="') + len('http-equiv="refresh" content="')
    return page[start : page.index('"', start)]


def _pending(state: str, expires_in: float) -> dict[str, object]:
    from datetime import timedelta

    return {
        "state": state,
        "mrn": "ZQ4471902",
        "channel": "cli",
        "started_at": NOW.isoformat(),
        "expires_at": (NOW + timedelta(seconds=expires_in)).isoformat(),
        "more": False,
        "held": 0,
        "revealed": True,
        "candidates": [{"n": 1, "line": "Q. O.", "name": "QUIRKE, ODALYS", "birth_date": "1961-09-23"}],
    }


def test_no_refresh_while_a_patient_confirmation_is_shown() -> None:
    """A reload would reset the view of the person deciding; the page reloads once, just after the
    confirmation expires. While the EHR is still being asked it keeps refreshing (to show the answer)."""
    status, patient = room_status(), {"set": False}
    assert _refresh(render_html(status, patient, now=NOW)) == "5;url=/"
    confirm = render_html(status, patient, now=NOW, pending=_pending("confirm", 119.5), form_token="t")
    assert 'id="confirm-1"' in confirm
    assert _refresh(confirm) == "121;url=/"  # after the 120 s confirmation window, not every 5 s
    asking = render_html(status, patient, now=NOW, pending=_pending("lookup", 7.0), form_token="t")
    assert "Asking the EHR" in asking and _refresh(asking) == "5;url=/"
    almost = render_html(status, patient, now=NOW, pending=_pending("confirm", 1.0), form_token="t")
    assert _refresh(almost) == "5;url=/"  # never faster than the page's own interval
