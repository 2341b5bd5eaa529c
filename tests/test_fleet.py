"""A fleet of 20 agents on loopback, each reading its own simulated oximeter (a pseudo-terminal), all
configured from one loopback HTTPS server with signed layered bundles (site, unit, room).

Under a steady stream of readings the site layer changes (MSH-6, and the EHR link's ACK timeout, so every
sender reconnects): every agent applies it within its poll interval, and every reading any device sent
reaches the EHR exactly once. Then a tampered bundle is published: every agent refuses it (half are asked
at once with SIGHUP, half find it at their poll) and keeps the last good configuration."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e_helpers import AgentProcess, masimo_ascii1_line
from tests.fake_ehr import Hl7Ehr, make_test_pki
from tests.kit.wait import until
from vitals_agent import host
from vitals_agent.config.central import make_bundle
from vitals_agent.drivers.pty import PtyDevice

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not host.HAS_PTY, reason="the simulated oximeters are POSIX pseudo-terminals"),
    pytest.mark.timeout(400),
]

AGENTS = 20
REFUSED = "config.refused"
POLL = 5.0  # [agent] config_poll_seconds (the smallest allowed)
LINE_EVERY = 0.25  # seconds between one device's readings


def site_layer(ehr_port: int, facility: str, ack_timeout: float) -> str:
    return f"""
[agent]
facility = "EXCLINIC"
timezone = "UTC"
[ehr]
port = {ehr_port}
receiving_facility = "{facility}"
ack_timeout_seconds = {ack_timeout}
backoff_min_seconds = 0.05
backoff_max_seconds = 0.5
[alerts]
disk_free_mb = 0
"""


UNIT = """
[ehr]
receiving_application = "VITALS_INBOUND"
"""


def room_layer(k: int, tty: Path) -> str:
    return f"""
[agent]
location = "CLINIC^ROOM{k:02d}"
[[devices]]
id = "spo2-{k:02d}"
driver = "masimo-ascii"
port = "{tty}"
report = "every"
"""


def logged(agent: AgentProcess, event: str) -> Callable[[], bool]:
    return lambda: bool(agent.events(event))


def fields(message: str, segment: str) -> list[str]:
    return next(s for s in message.split("\r") if s.startswith(segment + "|")).split("|")


async def test_twenty_agents_take_a_signed_layered_config_change_under_load(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    ehr = await Hl7Ehr().start()
    ttys = [tmp_path / f"tty{k:02d}" for k in range(AGENTS)]
    published: dict[str, bytes] = {}

    def publish(serial: int, facility: str, ack_timeout: float) -> None:
        site = site_layer(ehr.port, facility, ack_timeout)
        for k in range(AGENTS):
            layers = [("site", site), ("unit-3", UNIT), (f"room{k:02d}", room_layer(k, ttys[k]))]
            published[f"room{k:02d}.bundle"] = make_bundle(
                layers, key, serial=serial, issued_at=datetime.now(UTC)
            )

    async def serve(request: web.Request) -> web.Response:
        body = published.get(request.match_info["name"])
        return web.Response(body=body, content_type="application/json") if body else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/bundles/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site_server = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context())
    await site_server.start()
    https_port = site_server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    publish(1, "HOSP1", 2.0)

    devices = [PtyDevice(tty).open() for tty in ttys]
    agents: list[AgentProcess] = []
    written = [0] * AGENTS
    stop_writing = asyncio.Event()

    async def device(k: int) -> None:
        at = datetime.now(UTC).replace(microsecond=0)
        while not stop_writing.is_set():
            bpm = f"{60 + written[k] % 100:03d}"
            await devices[k].write(
                masimo_ascii1_line(at + timedelta(seconds=written[k]), "097", bpm, "05.00")
            )
            written[k] += 1
            await asyncio.sleep(LINE_EVERY)  # the device's pace

    try:
        for k in range(AGENTS):
            local = tmp_path / f"agent{k:02d}.toml"
            local.write_text(
                "[agent]\n"
                f'data_dir = "{tmp_path / f"data{k:02d}"}"\n'
                f'config_source = "https://127.0.0.1:{https_port}/bundles/room{k:02d}.bundle"\n'
                f'config_public_key = "{public}"\n'
                f'config_ca_file = "{pki.ca_cert}"\n'
                f"config_poll_seconds = {POLL}\n"
                "[control]\nenabled = false\n"
            )
            agents.append(AgentProcess(local))
        for agent in agents:
            await agent.wait_log(logged(agent, "device.connected"), 120, "device.connected")
        writers = [asyncio.create_task(device(k)) for k in range(AGENTS)]
        await ehr.wait_for(2 * AGENTS, timeout=60)

        # --- the site layer changes under load: MSH-6 and the EHR link (every sender reconnects)
        published_at = datetime.now(UTC)
        publish(2, "HOSP2", 3.0)
        for agent in agents:
            await agent.wait_log(logged(agent, "config.applied"), 4 * POLL + 30, "the change applied")
        applied = [datetime.fromisoformat(a.events("config.applied")[0]["timestamp"]) for a in agents]
        delays = sorted((at - published_at).total_seconds() for at in applied)
        for agent in agents:
            event = agent.events("config.applied")[0]
            assert event["senders_restarted"] == ["ehr"] and event["devices_restarted"] == [], agent.tail()
        assert delays[-1] <= POLL + 10, f"applied after {delays} s (poll every {POLL} s)"

        def rooms_on(facility: str) -> set[str]:
            return {fields(m, "PV1")[3] for m in ehr.messages if fields(m, "MSH")[5] == facility}

        await until(
            lambda: len(rooms_on("HOSP2")) == AGENTS,
            60,
            "every room on HOSP2",
            interval=0.1,
            detail=lambda: f"rooms on HOSP2: {sorted(rooms_on('HOSP2'))}",
        )

        # --- a tampered bundle: refused everywhere, the last good configuration stays
        for name, data in list(published.items()):
            envelope = json.loads(data)
            payload = base64.b64decode(envelope["payload"]).replace(b"HOSP2", b"EVIL9")
            published[name] = json.dumps({**envelope, "payload": base64.b64encode(payload).decode()}).encode()
        for agent in agents[: AGENTS // 2]:
            agent.proc.send_signal(signal.SIGHUP)  # "systemctl reload": now, not at the next poll
        for agent in agents:
            await agent.wait_log(logged(agent, REFUSED), 4 * POLL + 30, "the refusal")
            assert "signature does not verify" in agent.events(REFUSED)[0]["reason"]
        before = len(ehr.messages)
        await ehr.wait_for(before + AGENTS, timeout=60)

        stop_writing.set()
        await asyncio.gather(*writers)
        total = sum(written)
        messages = await ehr.wait_for(total, timeout=120)
        for agent in agents:
            code, _ = agent.terminate(timeout=10)
            assert code == 0, agent.tail()
    finally:
        stop_writing.set()
        for agent in agents:
            agent.cleanup()
        for dev in devices:
            dev.close()
        await runner.cleanup()
        await ehr.stop()

    # every reading exactly once: per room as many messages as lines its device wrote, no MSH-10 twice
    per_room = Counter(fields(m, "PV1")[3] for m in messages)
    assert per_room == Counter({f"CLINIC^ROOM{k:02d}": written[k] for k in range(AGENTS)})
    control_ids = [fields(m, "MSH")[9] for m in messages]
    assert len(control_ids) == len(set(control_ids)) == total
    assert not any(fields(m, "MSH")[5] == "EVIL9" for m in messages)
    assert all(fields(m, "MSH")[4] == "VITALS_INBOUND" for m in messages)  # the unit layer, all along
    spread = f"{delays[0]:.1f}-{delays[-1]:.1f} s"
    print(f"fleet: {total} readings from {AGENTS} agents; change applied after {spread}")
