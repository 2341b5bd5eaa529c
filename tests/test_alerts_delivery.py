"""Alerts end to end in one agent: the EHR down for the rule's N minutes gives exactly one alert on SMTP
(aiosmtpd, STARTTLS and AUTH required) and on a webhook (HMAC-signed), and one "cleared" when it is back.
Time for the rules is an injected clock; the EHR, the mail server and the webhook are real sockets."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.fake_ehr import Hl7Ehr, Pki, make_test_pki
from tests.kit import DOB, FAMILY, GIVEN, MRN, T0, free_port, oximeter_reading, running_sender, until
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService
from vitals_agent.config.schema import parse_config

HOLD_DOWN = 120
DOWN_FOR = 300


class Time:
    def __init__(self, start: datetime = T0) -> None:
        self.wall = start
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds

    def clock(self) -> Clock:
        return Clock(lambda: self.wall, lambda: self.mono)


@dataclass
class Mailbox:
    messages: list[tuple[bool, str, list[str], bytes]] = field(
        default_factory=list
    )  # (authed, from, to, data)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.content is not None and envelope.mail_from is not None
        data = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        self.messages.append((bool(session.authenticated), envelope.mail_from, list(envelope.rcpt_tos), data))
        return "250 OK"


def _login(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"alerts",
        b"s3cret",
    )
    return AuthResult(success=ok)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def smtp(pki: Pki) -> Iterator[tuple[Controller, Mailbox]]:
    box = Mailbox()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=pki.server_context(),
        require_starttls=True,
        authenticator=_login,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield controller, box
    finally:
        controller.stop()


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sock: socket.socket = site._server.sockets[0]  # type: ignore[union-attr]
    port = sock.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/alerts", got
    finally:
        await runner.cleanup()


async def test_ehr_down_for_n_minutes_gives_one_alert_and_one_clear_on_smtp_and_webhook(
    tmp_path: Path,
    pki: Pki,
    smtp: tuple[Controller, Mailbox],
    webhook: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    controller, box = smtp
    url, posts = webhook
    (tmp_path / "smtp.pw").write_text("s3cret\n")
    (tmp_path / "hook.key").write_text("hook-key-123")
    ehr_port = free_port()  # nobody listens: the EHR is down
    config = parse_config(
        {
            "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path / "d")},
            "control": {"enabled": False},
            "ehr": {
                "port": ehr_port,
                "connect_timeout_seconds": 1.0,
                "ack_timeout_seconds": 2.0,
                "backoff_min_seconds": 0.01,
                "backoff_max_seconds": 0.05,
            },
            "alerts": {
                "ehr_unreachable_seconds": DOWN_FOR,
                "hold_down_seconds": HOLD_DOWN,
                "disk_free_mb": 0,
                "smtp": {
                    "host": "127.0.0.1",
                    "port": controller.port,
                    "from": "vitals@clinic.test",
                    "to": ["it-oncall@clinic.test"],
                    "ca_file": str(pki.ca_cert),
                    "username": "alerts",
                    "password_file": str(tmp_path / "smtp.pw"),
                },
                "webhook": {"url": url, "hmac_key_file": str(tmp_path / "hook.key")},
            },
            "devices": [
                {"id": "oxi-1", "driver": "masimo-ascii", "port": str(tmp_path / "tty0"), "report": "every"}
            ],
        }
    )
    t = Time()
    svc = AgentService(config, clock=t.clock())
    try:
        assert svc.alerts is not None
        svc.alerts.outlets[0].delays = svc.alerts.outlets[1].delays = (0.05,)
        svc.patients.set(PatientDetails(mrn=MRN, family=FAMILY, given=GIVEN, birth_date=DOB), Origin("cli"))
        await svc.pipeline.on_event(svc.runtimes["oxi-1"], oximeter_reading(t.wall))
        sender = svc.senders["ehr"]
        async with running_sender(sender):  # type: ignore[arg-type]
            await until(lambda: sender.policy.failures >= 2, 10, "the sender to fail to connect")
            fired: list[str] = []
            for _ in range(DOWN_FOR // 30):  # the EHR stays down; checks every 30 s of rule time
                fired += [e.state for e in await svc.alerts.check()]
                t.advance(30)
            fired += [e.state for e in await svc.alerts.check()]
            assert fired == ["firing"]
            assert [a["alert"] for a in svc.status()["alerts"]] == ["ehr_unreachable"]
            for _ in range(10):  # still down: nothing more
                t.advance(30)
                assert await svc.alerts.check() == []
            await until(lambda: len(box.messages) == 1 and len(posts) == 1, 10, "the alert on both channels")
            async with Hl7Ehr(port=ehr_port) as ehr:  # the EHR comes back
                await ehr.wait_for(1)
                await until(lambda: sender.policy.failures == 0, 10, "delivery to resume")
                cleared: list[str] = []
                for _ in range(HOLD_DOWN // 30 + 1):
                    cleared += [e.state for e in await svc.alerts.check()]
                    t.advance(30)
                cleared += [e.state for e in await svc.alerts.check()]
                assert cleared == ["cleared"]
                await until(lambda: len(box.messages) == 2 and len(posts) == 2, 10, "the clear on both")
        assert svc.status()["alerts"] == []
    finally:
        if svc.alerts is not None:
            await svc.alerts.close()
        svc.close()

    mails = [message_from_bytes(data) for _, _, _, data in box.messages]
    assert all(authed for authed, _, _, _ in box.messages)  # AUTH after STARTTLS (the server requires both)
    assert [(frm, to) for _, frm, to, _ in box.messages] == [
        ("vitals@clinic.test", ["it-oncall@clinic.test"])
    ] * 2
    assert mails[0]["Subject"].startswith("[vitals-agent] ALERT CLINIC^ROOM12: EHR 127.0.0.1:")
    assert mails[1]["Subject"].startswith("[vitals-agent] CLEARED CLINIC^ROOM12: EHR 127.0.0.1:")
    bodies = [json.loads(body) for _, body in posts]
    assert [(b["alert"], b["state"], b["room"]) for b in bodies] == [
        ("ehr_unreachable", "firing", "CLINIC^ROOM12"),
        ("ehr_unreachable", "cleared", "CLINIC^ROOM12"),
    ]
    assert bodies[0]["counts"]["waiting"] == 1 and bodies[0]["counts"]["failed_attempts"] >= 2
    assert bodies[1]["counts"]["waiting"] == 0
    for headers, body in posts:
        want = "sha256=" + hmac.new(b"hook-key-123", body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Vitals-Signature"], want)
    # room, device and counts only: the patient filed in this room appears in none of it
    everything = b"".join(data for _, _, _, data in box.messages) + b"".join(body for _, body in posts)
    for secret in (MRN, FAMILY, GIVEN, DOB):
        assert secret.encode() not in everything


async def test_certificates_expiring_soon_alert_ours_and_the_ehrs(tmp_path: Path, pki: Pki) -> None:
    """The test PKI's certificates live 2 days: both the EHR's (seen at the TLS connect) and ours
    (the client certificate file) are "expiring in under 30 days"."""
    ehr = Hl7Ehr(ssl_context=pki.server_context())
    await ehr.start()
    config = parse_config(
        {
            "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path / "d")},
            "control": {"enabled": False},
            "ehr": {
                "port": ehr.port, "tls": True, "ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
                "key_file": str(pki.client_key), "backoff_min_seconds": 0.01, "backoff_max_seconds": 0.05,
            },
            "alerts": {"disk_free_mb": 0, "hold_down_seconds": 0},
            "devices": [
                {"id": "oxi-1", "driver": "masimo-ascii", "port": str(tmp_path / "tty0"), "report": "every"}
            ],
        }
    )  # fmt: skip
    t = Time(datetime.now(UTC))  # the certificates were made just now
    svc = AgentService(config, clock=t.clock())
    try:
        assert svc.alerts is not None
        await svc.pipeline.on_event(svc.runtimes["oxi-1"], oximeter_reading(t.wall))
        async with running_sender(svc.senders["ehr"]):  # type: ignore[arg-type]
            await ehr.wait_for(1)
        events = await svc.alerts.check()
        certs = {e.key: e for e in events if e.kind == "cert_expiry"}
        assert set(certs) == {"cert_expiry:EHR client certificate", "cert_expiry:EHR server certificate"}
        for event in certs.values():
            assert event.state == "firing" and 0 <= event.counts["days_left"] <= 2
            assert "expires in" in event.summary
    finally:
        svc.close()
        await ehr.stop()
