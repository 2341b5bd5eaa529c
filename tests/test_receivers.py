"""Issue 17 item 4: receiver compatibility, with real independent receivers.

The suite's messages (an ORU from every driver's sample reading) go through the real sender to hl7apy's MLLP
server, to node-hl7-server from the npm registry (with ``keep_connection_open`` true and false), and over
TLS through Debian's stunnel4 in front of python-hl7's server. Fault cases where the receiver allows them:
an AE/AR receiver (retried, then dead-lettered), a receiver that is down and comes back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.fake_ehr import Hl7Ehr, Pki, RawEhr, make_test_pki
from tests.kit import PROFILE, fast_ehr, running_sender, until
from tests.oracle import validate_oru
from tests.receivers import Hl7apyServer, NodeHl7Server, node_peers, stunnel, stunnel_binary
from vitals_agent.agent.delivery.sender import Sender
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.drivers.samples import drivers_with_readings, sample_readings
from vitals_agent.hl7.oru import build_oru
from vitals_agent.net.tls import ssl_context_from

CREATED = datetime(2025, 3, 14, 15, 30, 12, tzinfo=UTC)


def suite_messages() -> list[tuple[str, bytes]]:
    """One ORU per driver (its first sample reading), STRICT-valid."""
    out = []
    for n, driver in enumerate(drivers_with_readings(), start=1):
        control_id = f"RCV{n:04d}"
        body = build_oru(
            sample_readings(driver, f"dev-{n}")[0], PROFILE, control_id=control_id, created_at=CREATED
        )
        validate_oru(body)
        out.append((control_id, body))
    return out


def queue(outbox: Outbox, messages: list[tuple[str, bytes]]) -> list[str]:
    for control_id, body in messages:
        outbox.enqueue(control_id=control_id, device_id="dev", body=body)
    return [c for c, _ in messages]


@pytest.fixture(scope="module")
def node_modules() -> Path:
    return node_peers()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


async def test_hl7apy_server_receives_and_acks_the_suite(outbox: Outbox) -> None:
    ids = queue(outbox, suite_messages())
    with Hl7apyServer() as peer:
        sender = Sender(outbox, fast_ehr(peer.port, ack_timeout_seconds=5.0))
        async with running_sender(sender):
            await until(lambda: outbox.depth() == 0, 30.0, "every message acknowledged")
        assert peer.received == ids  # in order, each once (hl7apy closes after every ACK)
    assert sender.status()["delivered"] == len(ids) and outbox.dead_count() == 0


async def test_hl7apy_server_answering_ar_dead_letters(outbox: Outbox) -> None:
    ids = queue(outbox, suite_messages()[:2])
    with Hl7apyServer(code="AR") as peer:
        sender = Sender(outbox, fast_ehr(peer.port, ack_timeout_seconds=5.0))
        async with running_sender(sender):
            await until(lambda: outbox.dead_count() == 2, 30.0, "both dead-lettered")
        assert peer.received == ids
    assert {d.ack_code for d in outbox.list_dead()} == {"AR"}


@pytest.mark.slow
async def test_node_hl7_server_receives_the_suite_once_each_without_kept_connections(
    outbox: Outbox, node_modules: Path
) -> None:
    ids = queue(outbox, suite_messages())
    async with NodeHl7Server(node_modules) as peer:
        sender = Sender(outbox, fast_ehr(peer.port, ack_timeout_seconds=5.0, keep_connection_open=False))
        async with running_sender(sender):
            await until(lambda: outbox.depth() == 0, 60.0, "every message acknowledged")
        await peer.wait_for(len(ids))
        assert peer.received == ids  # every reading exactly once
        assert sender.client.connections == len(ids)  # one connection per message
    status = sender.status()
    assert status["duplicate_acks"] == 0 and status["delivered"] == len(ids)


@pytest.mark.slow
async def test_node_hl7_server_replays_a_kept_open_connection_and_the_agent_says_so(
    outbox: Outbox, node_modules: Path
) -> None:
    """The behaviour the issue found: node-hl7-server 2.5.0 handles every earlier message of a kept-open
    connection again with each new frame. The agent still delivers each message once from its side,
    counts the repeated ACKs and warns once, naming keep_connection_open."""
    ids = queue(outbox, suite_messages()[:5])
    with capture_logs() as logs:
        async with NodeHl7Server(node_modules) as peer:
            sender = Sender(outbox, fast_ehr(peer.port, ack_timeout_seconds=5.0))
            async with running_sender(sender):
                await until(lambda: outbox.depth() == 0, 30.0, "every message acknowledged")
            await peer.wait_for(15)
    assert sorted(set(peer.received)) == ids
    assert len(peer.received) == 15  # 1 + 2 + 3 + 4 + 5: the receiver's replays
    status = sender.status()
    assert status["delivered"] == 5 and status["duplicate_acks"] == 10
    warnings = [e for e in logs if e["log_level"] == "warning" and e["event"] == "delivery.receiver_replays"]
    assert len(warnings) == 1
    assert "keep_connection_open = false" in warnings[0]["fix"]


@pytest.mark.slow
async def test_node_hl7_server_answering_ae_is_retried_then_dead_lettered(
    outbox: Outbox, node_modules: Path
) -> None:
    ids = queue(outbox, suite_messages()[:1])
    async with NodeHl7Server(node_modules, code="AE") as peer:
        sender = Sender(outbox, fast_ehr(peer.port, ack_timeout_seconds=5.0, keep_connection_open=False))
        async with running_sender(sender):
            await until(lambda: outbox.dead_count() == 1, 30.0, "dead-lettered after max_attempts")
        assert peer.received == ids * 3  # max_attempts = 3
    [dead] = outbox.list_dead()
    assert dead.ack_code == "AE" and "AE 3 times" in dead.reason


async def test_stunnel4_tls_front_in_front_of_a_plain_receiver(
    outbox: Outbox, pki: Pki, tmp_path: Path
) -> None:
    stunnel_binary()
    ids = queue(outbox, suite_messages())
    async with Hl7Ehr() as plain:
        with stunnel(plain.port, pki.server_cert, pki.server_key, tmp_path) as tls_port:
            ehr = fast_ehr(
                tls_port, ack_timeout_seconds=5.0, tls=True, ca_file=pki.ca_cert, server_name="localhost"
            )
            sender = Sender(outbox, ehr, ssl_context=ssl_context_from(ehr))
            async with running_sender(sender):
                await until(lambda: outbox.depth() == 0, 30.0, "every message acknowledged over TLS")
            assert sender.status()["tls"] is True
        assert plain.control_ids == ids


async def test_stunnel4_front_with_the_receiver_down_keeps_the_messages_until_it_is_back(
    outbox: Outbox, pki: Pki, tmp_path: Path
) -> None:
    stunnel_binary()
    ids = queue(outbox, suite_messages()[:3])
    plain = Hl7Ehr()
    await plain.start()
    port = plain.port
    await plain.stop()  # stunnel accepts TLS, then cannot reach the receiver: the agent sees a drop
    with stunnel(port, pki.server_cert, pki.server_key, tmp_path) as tls_port:
        ehr = fast_ehr(
            tls_port, ack_timeout_seconds=2.0, tls=True, ca_file=pki.ca_cert, server_name="localhost"
        )
        sender = Sender(outbox, ehr, ssl_context=ssl_context_from(ehr))
        async with running_sender(sender):
            await until(lambda: sender.status()["consecutive_failures"] >= 2, 20.0, "failures while down")
            assert outbox.depth() == 3 and outbox.dead_count() == 0
            back = Hl7Ehr(port=port)
            await back.start()
            try:
                await until(lambda: outbox.depth() == 0, 30.0, "delivered once the receiver is back")
            finally:
                await back.close()
        assert back.control_ids[-3:] == ids


def test_suite_messages_cover_every_driver() -> None:
    assert len(suite_messages()) == len(drivers_with_readings())


async def test_keep_connection_open_false_connects_once_per_message(outbox: Outbox) -> None:
    ids = queue(outbox, suite_messages()[:4])
    async with RawEhr() as ehr:
        sender = Sender(outbox, fast_ehr(ehr.port, keep_connection_open=False))
        async with running_sender(sender):
            await until(lambda: outbox.depth() == 0, 20.0, "delivered")
        assert ehr.control_ids == ids
        assert [r.connection for r in ehr.received] == [1, 2, 3, 4]
    kept = Outbox(outbox.data_dir.parent / "kept")
    queue(kept, suite_messages()[:4])
    async with RawEhr() as ehr:
        sender = Sender(kept, fast_ehr(ehr.port))
        async with running_sender(sender):
            await until(lambda: kept.depth() == 0, 20.0, "delivered")
        assert [r.connection for r in ehr.received] == [1, 1, 1, 1]  # the default keeps it open
    kept.close()
