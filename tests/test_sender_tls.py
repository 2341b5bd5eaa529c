"""TLS on the MLLP link: configuration checks, verification, mutual TLS, against real TLS peers.

The test PKI is made with pyca/cryptography (tests/fake_ehr.make_test_pki), so this runs under the Windows
CPython too (the Wine lane).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.fake_ehr import Hl7Ehr, Pki, RawEhr, make_message, make_test_pki
from tests.kit import running_sender, until
from vitals_agent.agent.delivery.sender import Sender
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.config.ehr import EhrConfig
from vitals_agent.errors import ConfigError, PeerUnavailableError
from vitals_agent.hl7.ack import parse_ack
from vitals_agent.net.mllp import MllpClient
from vitals_agent.net.tls import ssl_context_from


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def tls_ehr(port: int, pki: Pki, **kw: Any) -> EhrConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "tls": True,
        "ca_file": pki.ca_cert,
        "connect_timeout_seconds": 2.0,
        "ack_timeout_seconds": 1.0,
        "backoff_min_seconds": 0.01,
        "backoff_max_seconds": 0.05,
    }
    values.update(kw)
    return EhrConfig(**values)


# --- configuration -----------------------------------------------------------------------------------


def test_tls_off_gives_no_context() -> None:
    assert ssl_context_from(EhrConfig()) is None


def test_context_verifies_by_default(pki: Pki) -> None:
    import ssl

    ctx = ssl_context_from(tls_ehr(1, pki))
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"ca_file": Path("/nonexistent/ca.pem")},
            f"ehr.ca_file: cannot read {Path('/nonexistent/ca.pem')}: No such file",
        ),
        ({"cert_file": "CERT", "key_file": Path("/nonexistent/k.pem")}, "ehr.key_file: cannot read"),
        (
            {"cert_file": Path("/nonexistent/c.pem")},
            f"ehr.cert_file: cannot read {Path('/nonexistent/c.pem')}",
        ),
        ({"key_file": "KEY"}, "ehr.key_file: set cert_file too"),
        ({"ca_file": "GARBAGE"}, "ehr.ca_file: "),
        ({"cert_file": "CERT", "key_file": "OTHERKEY"}, "ehr.key_file: cannot use client certificate"),
        ({"cert_file": "CERT", "key_file": "ENCRYPTED"}, "ehr.key_file: "),
        ({"ca_file": "EMPTY"}, "is empty"),
    ],
)
def test_unusable_files_refuse_to_start_with_one_line(
    pki: Pki, tmp_path: Path, overrides: dict[str, Any], expected: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    names = {
        "CERT": pki.client_cert,
        "KEY": pki.client_key,
        "OTHERKEY": pki.server_key,
        "GARBAGE": garbage,
        "EMPTY": empty,
        "ENCRYPTED": encrypted,
    }
    resolved = {k: names.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}
    with pytest.raises(ConfigError) as info:
        ssl_context_from(tls_ehr(1, pki, **resolved))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


# --- against TLS peers --------------------------------------------------------------------------------


async def test_verified_tls_delivery(outbox: Outbox, pki: Pki) -> None:
    async with Hl7Ehr(ssl_context=pki.server_context()) as ehr:
        cfg = tls_ehr(ehr.port, pki)
        outbox.enqueue(control_id="T0", device_id="d", body=make_message("T0"))
        outbox.enqueue(control_id="T1", device_id="d", body=make_message("T1"))
        sender = Sender(outbox, cfg, ssl_context=ssl_context_from(cfg))
        async with running_sender(sender):
            await until(lambda: outbox.depth() == 0)
            assert sender.status()["tls"] is True
    assert ehr.control_ids == ["T0", "T1"]


async def test_server_name_is_used_for_verification(outbox: Outbox, pki: Pki) -> None:
    async with RawEhr(ssl_context=pki.server_context()) as ehr:
        cfg = tls_ehr(ehr.port, pki, server_name="ehr.test")  # a SAN of the server certificate
        outbox.enqueue(control_id="N0", device_id="d", body=make_message("N0"))
        sender = Sender(outbox, cfg, ssl_context=ssl_context_from(cfg))
        async with running_sender(sender):
            await until(lambda: outbox.depth() == 0)
    assert ehr.control_ids == ["N0"]


@pytest.mark.parametrize(
    ("server", "overrides", "reason"),
    [
        ("rogue", {}, "TLS certificate of 127.0.0.1:{port} rejected: unable to get local issuer certificate"),
        ("good", {"server_name": "wrong.example"}, "rejected: Hostname mismatch"),
        ("good", {"ca_file": "OTHER"}, "rejected: unable to get local issuer certificate"),
    ],
)
async def test_unverifiable_peer_fails_with_one_line_and_nothing_is_sent(
    pki: Pki, server: str, overrides: dict[str, Any], reason: str
) -> None:
    if overrides.get("ca_file") == "OTHER":
        overrides = {**overrides, "ca_file": pki.other_ca_cert}
    async with RawEhr(ssl_context=pki.server_context(rogue=server == "rogue")) as ehr:
        cfg = tls_ehr(ehr.port, pki, **overrides)
        client = MllpClient(
            cfg.host, cfg.port, ssl_context=ssl_context_from(cfg), server_hostname=cfg.server_name
        )
        with pytest.raises(PeerUnavailableError) as info:
            await client.send(make_message("X0"), timeout=1)
        assert reason.format(port=ehr.port) in str(info.value)
        assert "\n" not in str(info.value)
    assert ehr.received == []


async def test_sender_keeps_message_queued_when_certificate_is_rejected(outbox: Outbox, pki: Pki) -> None:
    async with RawEhr(ssl_context=pki.server_context(rogue=True)) as ehr:
        cfg = tls_ehr(ehr.port, pki)
        outbox.enqueue(control_id="Q0", device_id="d", body=make_message("Q0"))
        sender = Sender(outbox, cfg, ssl_context=ssl_context_from(cfg))
        async with running_sender(sender):
            await until(lambda: sender.status()["consecutive_failures"] >= 2)
            assert "unable to get local issuer certificate" in sender.status()["last_error"]
    assert ehr.received == [] and outbox.depth() == 1


async def test_mutual_tls(outbox: Outbox, pki: Pki) -> None:
    server_ctx = pki.server_context(require_client=True)
    async with Hl7Ehr(ssl_context=server_ctx) as ehr:
        # without a client certificate the server refuses the handshake: one-line error, nothing delivered
        cfg = tls_ehr(ehr.port, pki)
        client = MllpClient(cfg.host, cfg.port, ssl_context=ssl_context_from(cfg), connect_timeout=2)
        with pytest.raises(PeerUnavailableError) as info:
            await client.send(make_message("U0"), timeout=1)
        # TLS 1.3: the server's alert comes after our handshake finished, so we may only see it close
        assert "certificate required" in str(info.value) or "check ehr.cert_file" in str(info.value)
        assert "\n" not in str(info.value)
        await client.close()
        assert ehr.received == []
        # with the client certificate it works
        cfg = tls_ehr(ehr.port, pki, cert_file=pki.client_cert, key_file=pki.client_key)
        client = MllpClient(cfg.host, cfg.port, ssl_context=ssl_context_from(cfg))
        ack = parse_ack(await client.send(make_message("U1"), timeout=2))
        await client.close()
    assert (ack.code, ack.control_id) == ("AA", "U1")
    assert ehr.control_ids == ["U1"]


async def test_verification_can_be_turned_off_for_a_lab(outbox: Outbox, pki: Pki) -> None:
    async with RawEhr(ssl_context=pki.server_context(rogue=True)) as ehr:
        cfg = tls_ehr(ehr.port, pki, tls_verify=False)
        client = MllpClient(cfg.host, cfg.port, ssl_context=ssl_context_from(cfg))
        ack = parse_ack(await client.send(make_message("L0"), timeout=2))
        await client.close()
    assert ack.control_id == "L0"
