"""``[metrics]``: a Prometheus scrape of a running agent parses with prometheus-client's own parser, its
counters move as readings flow, and no label carries an MRN or a name. The listener is read-only, honours
its allow-list and serves HTTPS when given a certificate; an agent without ``[metrics]`` never loads
prometheus-client."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fake_ehr import Hl7Ehr, make_test_pki
from tests.kit import DOB, FAMILY, GIVEN, MRN, oximeter_reading, running_sender, until
from vitals_agent.agent.metrics import server as metrics_server
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.service import AgentService
from vitals_agent.config.metrics import MetricsConfig
from vitals_agent.config.schema import parse_config
from vitals_agent.errors import ConfigError


def config_for(tmp_path: Path, ehr_port: int, **metrics: Any) -> Any:
    return parse_config(
        {
            "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path / "d")},
            "control": {"enabled": False},
            "ehr": {
                "port": ehr_port,
                "ack_timeout_seconds": 2.0,
                "backoff_min_seconds": 0.01,
                "backoff_max_seconds": 0.05,
            },
            "alerts": {"disk_free_mb": 0},
            "metrics": {"listen": "127.0.0.1:0", **metrics},
            "devices": [
                {"id": "oxi-1", "driver": "masimo-ascii", "port": str(tmp_path / "tty0"), "report": "every"},
                {"id": "bp-1", "driver": "suntech-advantage", "port": str(tmp_path / "tty1")},
            ],
        }
    )


@pytest.fixture
async def agent(tmp_path: Path, ehr: Hl7Ehr) -> AsyncIterator[AgentService]:
    svc = AgentService(config_for(tmp_path, ehr.port))
    assert svc.metrics_server is not None
    await svc.metrics_server.start()
    try:
        yield svc
    finally:
        await svc.metrics_server.stop()
        svc.close()


async def scrape(svc: AgentService, method: str = "GET", path: str = "/metrics") -> tuple[int, str, str]:
    assert svc.metrics_server is not None
    url = f"http://127.0.0.1:{svc.metrics_server.port}{path}"
    async with aiohttp.ClientSession() as http, http.request(method, url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def spo2_reading(at: datetime, spo2: str, *, bad_pulse: bool = False) -> Any:
    return oximeter_reading(at, spo2=spo2, pulse="900" if bad_pulse else "72")


async def test_a_scrape_parses_and_its_counters_move_as_readings_flow(
    agent: AgentService, ehr: Hl7Ehr
) -> None:
    agent.patients.set(PatientDetails(mrn=MRN, family=FAMILY, given=GIVEN, birth_date=DOB), Origin("cli"))
    status, ctype, first = await scrape(agent)
    assert status == 200 and ctype.startswith("text/plain; version=")
    before = samples(first)
    info = ("vitals_agent_info", (("config_hash", _hash(agent)), ("version", _version())))
    assert before[info] == 1.0
    assert before[("vitals_agent_device_connected", (("device", "oxi-1"),))] == 0.0
    assert ("vitals_agent_readings_accepted_total", (("device", "oxi-1"), ("metric", "spo2"))) not in before
    sender = agent.senders["ehr"]
    now = datetime.now(UTC)
    async with running_sender(sender):  # type: ignore[arg-type]
        for i in range(3):
            await agent.pipeline.on_event(agent.runtimes["oxi-1"], spo2_reading(now, str(95 + i)))
        await agent.pipeline.on_event(agent.runtimes["oxi-1"], spo2_reading(now, "97", bad_pulse=True))
        await ehr.wait_for(4)
        await until(lambda: agent.outbox.depth() == 0, 10, "the outbox to drain")
        _, _, second = await scrape(agent)
    after = samples(second)
    oxi = (("device", "oxi-1"),)
    assert after[("vitals_agent_readings_accepted_total", (*oxi, ("metric", "spo2")))] == 4.0
    assert after[("vitals_agent_readings_accepted_total", (*oxi, ("metric", "pulse_rate_oximeter")))] == 3.0
    assert after[("vitals_agent_values_withheld_total", (*oxi, ("metric", "pulse_rate_oximeter")))] == 1.0
    ehr_l = (("destination", "ehr"),)
    assert after[("vitals_agent_messages_sent_total", ehr_l)] == 4.0
    assert after[("vitals_agent_messages_acked_total", (("code", "AA"), *ehr_l))] == 4.0
    assert after[("vitals_agent_messages_delivered_total", ehr_l)] == 4.0
    assert after[("vitals_agent_ack_latency_seconds_count", ehr_l)] == 4.0
    assert after[("vitals_agent_ack_latency_seconds_bucket", (*ehr_l, ("le", "+Inf")))] == 4.0
    assert after[("vitals_agent_outbox_depth", ehr_l)] == 0.0
    assert after[("vitals_agent_outbox_oldest_age_seconds", ehr_l)] == 0.0
    assert after[("vitals_agent_destination_up", ehr_l)] == 1.0
    assert 0.0 <= after[("vitals_agent_device_last_reading_age_seconds", oxi)] < 60
    assert after[("vitals_agent_decode_failures_total", (("device", "bp-1"),))] == 0.0
    # no patient data anywhere in the scrape: not in a label, not in a help text
    for secret in (MRN, FAMILY, GIVEN, DOB):
        assert secret not in second
    label_values = {v for (_, labels) in after for _, v in labels}
    assert label_values <= {
        "oxi-1",
        "bp-1",
        "spo2",
        "pulse_rate_oximeter",
        "ehr",
        "AA",
        "+Inf",
        _version(),
        _hash(agent),
    } | {k[1][-1][1] for k in after if k[0].endswith("_bucket")}


def _hash(svc: AgentService) -> str:
    from vitals_agent.agent.metrics.registry import config_hash

    return config_hash(svc.config)


def _version() -> str:
    from vitals_agent import __version__

    return __version__


async def test_the_listener_is_read_only(agent: AgentService) -> None:
    assert (await scrape(agent, "POST"))[0] == 405
    assert (await scrape(agent, "DELETE"))[0] == 405
    status, _, body = await scrape(agent, path="/api/patient")
    assert status == 404 and "/metrics" in body
    status, _, body = await scrape(agent, "HEAD")
    assert status == 200 and body == ""


async def test_a_client_outside_the_allow_list_gets_nothing(tmp_path: Path, ehr: Hl7Ehr) -> None:
    svc = AgentService(config_for(tmp_path, ehr.port, allow=["10.20.0.0/16"]))
    assert svc.metrics_server is not None
    await svc.metrics_server.start()
    try:
        with pytest.raises(aiohttp.ClientError):
            await scrape(svc)
        assert svc.metrics_server.refused >= 1 and svc.metrics_server.scrapes == 0  # aiohttp tries twice
    finally:
        await svc.metrics_server.stop()
        svc.close()
    svc = AgentService(config_for(tmp_path, ehr.port, allow=["127.0.0.0/8"]))
    assert svc.metrics_server is not None
    await svc.metrics_server.start()
    try:
        assert (await scrape(svc))[0] == 200
    finally:
        await svc.metrics_server.stop()
        svc.close()


async def test_https_with_a_certificate(tmp_path: Path, ehr: Hl7Ehr) -> None:
    pki = make_test_pki(tmp_path / "pki")
    svc = AgentService(
        config_for(tmp_path, ehr.port, cert_file=str(pki.server_cert), key_file=str(pki.server_key))
    )
    assert svc.metrics_server is not None
    await svc.metrics_server.start()
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        url = f"https://127.0.0.1:{svc.metrics_server.port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url, ssl=ctx) as resp:
            assert resp.status == 200
            assert "vitals_agent_info" in await resp.text()
    finally:
        await svc.metrics_server.stop()
        svc.close()


async def test_a_port_in_use_is_one_config_line(tmp_path: Path, ehr: Hl7Ehr) -> None:
    svc = AgentService(config_for(tmp_path, ehr.port))
    assert svc.metrics_server is not None
    await svc.metrics_server.start()
    try:
        taken = f"127.0.0.1:{svc.metrics_server.port}"
        other = AgentService(config_for(tmp_path / "b", ehr.port, listen=taken))
        assert other.metrics_server is not None
        try:
            with pytest.raises(ConfigError, match=r"metrics\.listen: cannot listen on 127\.0\.0\.1:\d+"):
                await other.metrics_server.start()
        finally:
            other.close()
    finally:
        await svc.metrics_server.stop()
        svc.close()


@pytest.mark.slow
def test_an_agent_without_metrics_never_loads_prometheus_client(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from vitals_agent.config.schema import parse_config\n"
        "from vitals_agent.agent.service import AgentService\n"
        f"c = parse_config({{'agent': {{'facility': 'X', 'data_dir': {str(tmp_path)!r}}},"
        " 'control': {'enabled': False}})\n"
        "s = AgentService(c)\n"
        "lazy = ('prometheus_client', 'aiohttp', 'smtplib', 'vitals_agent.agent.alerts.channels')\n"
        "print(sorted(m for m in sys.modules if m.startswith(lazy)))\n"
        "s.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_stop_that_comes_as_an_answer_is_sent_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The agent's stop cancels a keep-alive connection in the loop turn in which its answer finishes
    # sending: the stop must win (on Python 3.11 asyncio.wait_for dropped it, the connection waited for
    # the next request and the agent's stop waited with it, up to REQUEST_TIMEOUT).
    monkeypatch.setattr(metrics_server, "REQUEST_TIMEOUT", 300.0)  # longer than the wait below
    server = metrics_server.MetricsServer(MetricsConfig(listen="127.0.0.1:0"), lambda: b"up 1\n")
    await server.start()
    loop = asyncio.get_running_loop()
    drain = asyncio.StreamWriter.drain

    async def drain_as_the_stop_comes(writer: asyncio.StreamWriter) -> None:
        await drain(writer)
        sent: asyncio.Future[None] = loop.create_future()

        def sent_and_stop() -> None:
            sent.set_result(None)
            for task in server._tasks:  # what MetricsServer.stop does first
                task.cancel()

        loop.call_soon(sent_and_stop)
        await sent

    monkeypatch.setattr(asyncio.StreamWriter, "drain", drain_as_the_stop_comes)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")  # keep-alive (HTTP/1.1)
        answer = asyncio.ensure_future(reader.read())  # up to the server's close
        await until(answer.done, what="the stopped server to close the connection")
        assert answer.result().startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()
        await server.stop()
