"""Alert channels on their own: syslog (UDP, RFC 5424), a webhook that fails first (retried), an SMTP
server without STARTTLS (refused with one line), the banner on the status page and in the terminal."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.kit import free_port, until
from vitals_agent.agent.alerts.channels import ChannelError, SmtpSender, SyslogSender
from vitals_agent.agent.alerts.monitor import AlertMonitor, configured_channels
from vitals_agent.agent.alerts.rules import Facts, LinkFacts
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.control import render_html, render_text
from vitals_agent.config.alerts import AlertsConfig, SmtpChannel, SyslogChannel


class Ticks:
    def __init__(self) -> None:
        self.mono = 0.0

    def clock(self) -> Clock:
        return Clock(lambda: datetime(2026, 3, 11, 14, tzinfo=UTC), lambda: self.mono)


def down(failing: bool) -> Facts:
    return Facts(links={"ehr": LinkFacts("10.0.0.9:2575", failing, 3 if failing else 0, 4, 0, None)})


def payload(state: str = "firing") -> dict[str, Any]:
    return {
        "version": "0.1.0", "gateway": "00AA", "facility": "EXCLINIC", "room": "ROOM12",
        "alert": "disk_free", "key": "disk_free", "state": state, "device": None,
        "counts": {"free_mb": 12}, "summary": "12 MB free", "since": "2026-03-11T14:00:00+00:00",
        "at": "2026-03-11T14:00:05+00:00",
    }  # fmt: skip


async def test_syslog_udp_gets_one_structured_line_per_change() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    try:
        port = sock.getsockname()[1]
        channel = SyslogSender(SyslogChannel(address=f"127.0.0.1:{port}", facility="local0"))
        await channel.send(payload())
        line = sock.recv(4096).decode()
    finally:
        sock.close()
    # <PRI> = local0 (16) * 8 + warning (4) = 132; version 1; structured data with room and counts
    assert line.startswith("<132>1 2026-03-11T14:00:05+00:00 ")
    assert '[alert@32473 alert="disk_free" state="firing" room="ROOM12" n_free_mb="12"] 12 MB free' in line


async def test_syslog_to_nowhere_is_one_line() -> None:
    channel = SyslogSender(SyslogChannel(address=f"127.0.0.1:{free_port()}", protocol="tcp"))
    with pytest.raises(ChannelError, match=r"^syslog 127\.0\.0\.1:\d+: \S"):  # one line: the OS says why
        await channel.send(payload())


@pytest.fixture
async def flaky_hook() -> AsyncIterator[tuple[str, list[int]]]:
    answers: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        status = 503 if not answers else 200
        answers.append(status)
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/h", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/h", answers
    finally:
        await runner.cleanup()


async def test_a_failed_webhook_is_retried_and_counted(flaky_hook: tuple[str, list[int]]) -> None:
    url, answers = flaky_hook
    ticks = Ticks()
    config = AlertsConfig(ehr_unreachable_seconds=10, hold_down_seconds=0, webhook={"url": url})  # type: ignore[arg-type]
    state = {"failing": True}

    async def gather() -> Facts:
        return down(state["failing"])

    monitor = AlertMonitor(config, gather, room="R", facility="F", gateway="G", clock=ticks.clock(),
                           retry_delays=(0.01, 0.01))  # fmt: skip
    await monitor.check()
    ticks.mono = 11
    assert [e.state for e in await monitor.check()] == ["firing"]
    await until(lambda: monitor.channel_status()["webhook"]["sent"] == 1, 10, "the retried webhook")
    assert answers == [503, 200]
    assert monitor.channel_status()["webhook"] == {"sent": 1, "failed": 0, "last_error": None}
    await monitor.close()


def test_no_channel_module_without_a_channel() -> None:
    assert configured_channels(AlertsConfig()) == []


async def test_smtp_without_starttls_is_refused_in_one_line(tmp_path: Path) -> None:
    class Box:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            return "250 OK"

    controller = Controller(Box(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        channel = SmtpSender(
            SmtpChannel.model_validate(
                {"host": "127.0.0.1", "port": controller.port, "from": "a@b.test", "to": ["c@d.test"]}
            )
        )
        with pytest.raises(ChannelError, match=r"^SMTP server 127\.0\.0\.1:\d+ does not offer STARTTLS$"):
            await channel.send(payload())
    finally:
        await asyncio.to_thread(controller.stop)


def test_the_banner_shows_on_the_page_and_in_the_terminal() -> None:
    now = datetime(2026, 3, 11, 14, 10, tzinfo=UTC)
    status = {
        "version": "0.1.0",
        "devices": [],
        "alerts": [
            {
                "alert": "ehr_unreachable",
                "device": None,
                "summary": "EHR 10.0.0.9:2575 unreachable <b>",
                "since": "2026-03-11T14:05:00+00:00",
                "counts": {},
            },
        ],
    }
    page = render_html(status, {"set": False}, now=now)
    assert '<div id="alerts" class="card" role="alert">' in page
    assert "EHR 10.0.0.9:2575 unreachable &lt;b&gt;, since " in page
    assert "ALERT: EHR 10.0.0.9:2575 unreachable <b>, since " in render_text(status, {"set": False}, now=now)
    assert 'id="alerts"' not in render_html({**status, "alerts": []}, {"set": False}, now=now)


def test_config_checks_channels() -> None:
    with pytest.raises(ValueError, match="not one mail address"):
        SmtpChannel.model_validate({"host": "h", "from": "nobody", "to": ["x@y.test"]})
    with pytest.raises(ValueError, match="host:port"):
        SyslogChannel(address="loghost")
    assert SyslogChannel(address="[::1]:514").target() == ("::1", 514)
    assert SyslogChannel(address="/dev/log").target() == "/dev/log"
