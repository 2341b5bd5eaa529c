"""FHIR delivery pieces: answer classification (pure), the aiohttp client with bearer / SMART / TLS auth
against the loopback FHIR server, and that server's transaction semantics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.fake_ehr import make_test_pki
from tests.fake_fhir import FakeFhir
from tests.kit import free_port
from tests.kit.toml import toml_str
from vitals_agent.config.fhir import FhirConfig
from vitals_agent.errors import ConfigError, ConnectFailedError, PeerUnavailableError
from vitals_agent.fhir.answer import Delivered, Rejected, Transient, classify, outcome_text, retry_after
from vitals_agent.fhir.bundle import FhirProfile, build_bundle
from vitals_agent.models import DeviceClass, DeviceIdentity, Measurement, PatientInfo, Reading
from vitals_agent.net.fhir_http import FhirClient, client_assertion, fhir_client, load_signing_key

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
OO = (
    b'{"resourceType":"OperationOutcome",'
    b'"issue":[{"severity":"error","code":"invalid","diagnostics":"bad code"}]}'
)


def _bundle(mrn: str | None = None, seconds: int = 0) -> bytes:
    at = NOW + timedelta(seconds=seconds)
    reading = Reading(
        device=DeviceIdentity(id="ox", eui64="0011223344556677"),
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=(
            Measurement(metric="spo2", value=Decimal("97"), unit="%"),
            Measurement(metric="pulse_rate_oximeter", value=Decimal("64"), unit="/min"),
        ),
        observed_at=at,
        received_at=at,
    )
    profile = FhirProfile(gateway_eui64="00000000000000AA", patient_system="urn:oid:2.999.1", location="R^12")
    patient = PatientInfo(mrn=mrn) if mrn else None
    return build_bundle(reading, profile, message_id=f"M{seconds}", created_at=at, patient=patient)


# --- classification ----------------------------------------------------------------------------------


def test_two_hundreds_deliver() -> None:
    assert classify(200, {}, b"{}", NOW) == Delivered(200)
    assert classify(201, {}, b"", NOW) == Delivered(201)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_busy_and_server_errors_are_retried_honouring_retry_after(status: int) -> None:
    verdict = classify(status, {"Retry-After": "7"}, b"", NOW)
    assert isinstance(verdict, Transient) and verdict.retry_after == 7.0 and not verdict.auth


def test_retry_after_forms() -> None:
    assert retry_after("120", NOW, cap=3600) == 120.0
    assert retry_after("Sat, 28 Nov 2026 12:00:30 GMT", NOW, cap=3600) == 30.0
    assert retry_after("Sat, 28 Nov 2026 11:00:00 GMT", NOW, cap=3600) == 0.0  # in the past
    assert retry_after("99999", NOW, cap=600) == 600.0
    assert retry_after("soon", NOW, cap=600) is None
    assert retry_after(None, NOW, cap=600) is None


def test_other_client_errors_dead_letter_with_the_operation_outcome() -> None:
    verdict = classify(400, {}, OO, NOW)
    assert isinstance(verdict, Rejected)
    assert verdict.text == "error invalid: bad code"
    assert isinstance(classify(422, {}, OO, NOW), Rejected)
    assert isinstance(classify(412, {}, b"plain words", NOW), Rejected)
    assert classify(412, {}, b"plain words", NOW).text == "plain words"  # type: ignore[union-attr]
    # a 404 that IS a FHIR answer (e.g. an unknown patient) is about this Bundle
    assert isinstance(classify(404, {}, OO, NOW), Rejected)


def test_configuration_problems_keep_readings_waiting() -> None:
    assert isinstance(classify(404, {}, b"<html>not found</html>", NOW), Transient)  # wrong base_url
    assert isinstance(classify(301, {"Location": "https://x/fhir"}, b"", NOW), Transient)
    auth = classify(401, {}, OO, NOW)
    assert isinstance(auth, Transient) and auth.auth


def test_operation_outcome_text() -> None:
    body = (
        b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"required",'
        b'"details":{"text":"subject\\n missing"},"expression":["Observation.subject"]},'
        b'{"severity":"warning","code":"informational"}]}'
    )
    assert (
        outcome_text(body)
        == "error required: subject missing (at Observation.subject); warning informational"
    )
    assert outcome_text(b'{"resourceType":"Bundle"}') is None
    assert outcome_text(b"\xff") is None


# --- the loopback server's transaction semantics -------------------------------------------------------


async def test_resent_bundle_creates_nothing_twice_and_unknown_patient_is_refused() -> None:
    async with FakeFhir() as server:
        server.add_patient("urn:oid:2.999.1", "0012345")
        client = FhirClient(FhirConfig(enabled=True, base_url=server.base_url))
        try:
            body = _bundle("0012345")
            first = await client.post(body, request_id="r1")
            again = await client.post(body, request_id="r2")
            assert first.status == again.status == 200
            assert len(server.observations()) == 2  # SpO2 and heart rate, once
            assert len(server.store.all("Device")) == 1 and len(server.store.all("Location")) == 1
            assert all(o["subject"]["reference"].startswith("Patient/") for o in server.observations())
            assert b'"201 Created"' in first.body and b'"201 Created"' not in again.body
            other = await client.post(_bundle("0012345", seconds=5), request_id="r3")
            assert other.status == 200 and len(server.observations()) == 4
            assert len(server.store.all("Device")) == 1  # the same device, not created again
            unknown = await client.post(_bundle("999", seconds=7), request_id="r4")
            verdict = classify(unknown.status, unknown.headers, unknown.body, NOW)
            assert isinstance(verdict, Rejected) and "matched 0 resources" in verdict.text
            assert len(server.observations()) == 4  # all or nothing
        finally:
            await client.close()


# --- client faults -----------------------------------------------------------------------------------


async def test_refused_timeout_and_reset_are_link_failures() -> None:
    client = FhirClient(FhirConfig(enabled=True, base_url=f"http://127.0.0.1:{free_port()}/fhir"))
    with pytest.raises(ConnectFailedError, match="cannot reach the FHIR server"):
        await client.post(_bundle(), request_id="x")
    await client.close()
    async with FakeFhir(mode="SLOW") as server:
        server.delay = 3.0
        client = FhirClient(FhirConfig(enabled=True, base_url=server.base_url, timeout_seconds=0.3))
        with pytest.raises(PeerUnavailableError, match=r"did not answer within 0\.3 s"):
            await client.post(_bundle(), request_id="x")
        server.mode = "RESET"
        with pytest.raises(PeerUnavailableError, match=r"closed the connection|FHIR server"):
            await client.post(_bundle(), request_id="x")
        await client.close()


async def test_bearer_token_file_is_read_for_every_request(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    async with FakeFhir(token="first") as server:
        client = fhir_client(FhirConfig(enabled=True, base_url=server.base_url, bearer_token_file=token_file))
        try:
            assert (await client.post(_bundle(), request_id="a")).status == 200
            server.token = "second"
            assert (await client.post(_bundle(seconds=1), request_id="b")).status == 401
            token_file.write_text("second")
            assert (await client.post(_bundle(seconds=1), request_id="c")).status == 200
            assert server.arrivals[-1].headers["Authorization"] == "Bearer second"
            assert server.arrivals[-1].headers["Content-Type"].startswith("application/fhir+json")
        finally:
            await client.close()
    with pytest.raises(ConfigError, match="bearer_token_file"):
        fhir_client(FhirConfig(enabled=True, base_url="http://x/fhir", bearer_token_file=tmp_path / "none"))


def _write_key(path: Path, key: Any) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


@pytest.mark.parametrize("kind", ["rsa", "ec"])
async def test_smart_backend_services_token_is_fetched_cached_and_renewed(tmp_path: Path, kind: str) -> None:
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP384R1())
    key_file = _write_key(tmp_path / "client.pem", key)
    async with FakeFhir(token="tok-1", smart_key=key.public_key(), client_id="agent-7") as server:
        config = FhirConfig(
            enabled=True,
            base_url=server.base_url,
            token_url=f"{server.root}/token",
            client_id="agent-7",
            private_key_file=key_file,
            key_id="k1",
        )
        client = fhir_client(config)
        try:
            for n in range(3):
                assert (await client.post(_bundle(seconds=n), request_id=f"r{n}")).status == 200
            assert server.tokens_issued == 1  # cached
            assert server.token_requests[0]["scope"] == config.scope
            server.token = "tok-2"  # the server revokes the old token
            assert (await client.post(_bundle(seconds=9), request_id="r9")).status == 401
            assert (await client.post(_bundle(seconds=9), request_id="r10")).status == 200
            assert server.tokens_issued == 2
        finally:
            await client.close()
    assert load_signing_key(key_file, None)[1] == ("RS384" if kind == "rsa" else "ES384")


async def test_smart_with_an_unknown_key_is_refused_by_the_token_endpoint(tmp_path: Path) -> None:
    known = ec.generate_private_key(ec.SECP384R1())
    other = _write_key(tmp_path / "other.pem", ec.generate_private_key(ec.SECP384R1()))
    async with FakeFhir(token="t", smart_key=known.public_key()) as server:
        client = fhir_client(
            FhirConfig(
                enabled=True,
                base_url=server.base_url,
                token_url=f"{server.root}/token",
                client_id="vitals-agent",
                private_key_file=other,
            )
        )
        try:
            with pytest.raises(
                ConnectFailedError, match="refused the client 'vitals-agent': HTTP 401 invalid_client"
            ):
                await client.post(_bundle(), request_id="x")
        finally:
            await client.close()
        assert not server.arrivals  # no Bundle went out without a token


def test_client_assertion_claims(tmp_path: Path) -> None:
    import jwt

    key = ec.generate_private_key(ec.SECP384R1())
    token = client_assertion(
        client_id="c1", token_url="https://auth/token", key=key, algorithm="ES384", key_id="kid9", now=1000.0
    )
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES384" and header["kid"] == "kid9"
    claims = jwt.decode(token, key.public_key(), algorithms=["ES384"], audience="https://auth/token",
                        options={"verify_exp": False})  # fmt: skip
    assert (claims["iss"], claims["sub"], claims["exp"] - claims["iat"]) == ("c1", "c1", 300)
    with pytest.raises(ConfigError, match="does not fit"):
        load_signing_key(_write_key(tmp_path / "k.pem", key), "RS384")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="no PEM private key"):
        load_signing_key(tmp_path / "junk.pem", None)


async def test_tls_is_verified_by_default_and_mutual_tls_works(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    async with FakeFhir(ssl_context=pki.server_context(require_client=True)) as server:
        good = FhirConfig(
            enabled=True,
            base_url=server.base_url,
            ca_file=pki.ca_cert,
            cert_file=pki.client_cert,
            key_file=pki.client_key,
        )
        client = fhir_client(good)
        try:
            assert (await client.post(_bundle(), request_id="a")).status == 200
        finally:
            await client.close()
        no_cert = fhir_client(FhirConfig(enabled=True, base_url=server.base_url, ca_file=pki.ca_cert))
        try:
            with pytest.raises((ConnectFailedError, PeerUnavailableError)):
                await no_cert.post(_bundle(), request_id="b")
        finally:
            await no_cert.close()
    async with FakeFhir(ssl_context=pki.server_context(rogue=True)) as rogue:
        client = fhir_client(FhirConfig(enabled=True, base_url=rogue.base_url, ca_file=pki.ca_cert))
        try:
            with pytest.raises(ConnectFailedError, match="TLS"):
                await client.post(_bundle(), request_id="c")
        finally:
            await client.close()
        assert not rogue.arrivals


def test_config_rules() -> None:
    with pytest.raises(ValueError, match="base_url is required"):
        FhirConfig(enabled=True)
    with pytest.raises(ValueError, match="needs client_id and private_key_file"):
        FhirConfig(enabled=True, base_url="https://f/r4", token_url="https://f/token")
    with pytest.raises(ValueError, match="either bearer_token_file or token_url"):
        FhirConfig(
            base_url="https://f/r4",
            token_url="https://f/token",
            client_id="c",
            private_key_file=Path("k"),
            bearer_token_file=Path("t"),
        )
    with pytest.raises(ValueError, match="absolute URI"):
        FhirConfig(patient_identifier_system="MRN")
    config = FhirConfig(enabled=True, base_url="https://f/r4/")
    assert config.base_url == "https://f/r4" and config.tls
    assert config.patient_system("EXCLINIC&2.999.1&ISO") == "urn:oid:2.999.1"
    assert config.patient_system("VITALS_AGENT") is None


# --- send-test --fhir ----------------------------------------------------------------------------------


def _agent_config(tmp_path: Path, base_url: str, extra: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        "[agent]\n"
        'facility = "TEST_CLINIC"\n'
        'location = "CLINIC^ROOM12"\n'
        f"data_dir = {toml_str(tmp_path / 'data')}\n"
        'gateway_eui64 = "0A1B2CFFFE3D4E5F"\n'
        'timezone = "Europe/Berlin"\n'
        "[patient]\n"
        'assigning_authority = "EXCLINIC&2.999.1&ISO"\n'
        "[fhir]\n"
        f'base_url = "{base_url}"\n'
        "timeout_seconds = 2\n" + extra
    )
    return path


async def test_send_test_fhir_delivers_a_tagged_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fhir_oracle import check_bundle, observation_by_loinc
    from vitals_agent.cli import main

    async with FakeFhir() as server:
        code = await main(["send-test", "--fhir", "--config", str(_agent_config(tmp_path, server.base_url))])
        out = capsys.readouterr().out
        assert code == 0, out
        assert out.startswith(f"HTTP 200 from {server.base_url} (plain) for Bundle ")
        assert out.rstrip().endswith("ms: delivered")
        doc = check_bundle(server.arrivals[0].raw)
        spo2 = observation_by_loinc(doc, "2708-6")
        assert spo2["meta"]["security"][0]["code"] == "HTEST"
        assert spo2["effectiveDateTime"][-6:] in ("+01:00", "+02:00")  # [agent] timezone
        assert len(server.observations()) == 2


async def test_send_test_fhir_reports_refusals_and_absence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vitals_agent.cli import main

    async with FakeFhir(mode="400") as server:
        config = _agent_config(tmp_path, server.base_url)
        assert await main(["send-test", "--fhir", "--config", str(config)]) == 1
        out = capsys.readouterr().out
        assert "HTTP 400" in out and "would be dead-lettered: error invalid: Observation.code" in out
        server.mode = "503"
        server.retry_after = "30"
        assert await main(["send-test", "--fhir", "--config", str(config)]) == 1
        assert "would be retried: HTTP 503" in capsys.readouterr().out
    config = _agent_config(tmp_path, f"http://127.0.0.1:{free_port()}/fhir")
    assert await main(["send-test", "--fhir", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the FHIR server") and "Traceback" not in err


async def test_check_config_names_fhir_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vitals_agent.cli import main

    path = tmp_path / "bad.toml"
    path.write_text('[agent]\nfacility = "F"\n[fhir]\nenabled = true\nbase_url = "https://fhir.test/r4"\n')
    assert await main(["check-config", str(path)]) == 1
    assert "[fhir] needs patient_identifier_system" in capsys.readouterr().out
    path.write_text('[agent]\nfacility = "F"\n[fhir]\nenabled = true\nbase_url = "ftp://x"\n')
    assert await main(["check-config", str(path)]) == 1
    assert "fhir.base_url: must be an http:// or https:// URL" in capsys.readouterr().out
    path.write_text(
        f'[agent]\nfacility = "F"\ndata_dir = {toml_str(tmp_path / "data")}\n[fhir]\nenabled = true\n'
        f'base_url = "https://f/r4"\npatient_identifier_system = "urn:oid:2.999.1"\n'
        f"bearer_token_file = {toml_str(tmp_path / 'missing.token')}\n"
    )
    assert await main(["check-config", str(path)]) == 1
    assert f"fhir.bearer_token_file: {tmp_path / 'missing.token'} does not exist" in capsys.readouterr().out
    (tmp_path / "missing.token").write_text("t")
    assert await main(["check-config", str(path)]) == 0
