"""The patient lookup clients against real peers: ITI-21 over MLLP (python-hl7's server, plain and TLS)
and PDQm against a loopback FHIR endpoint (aiohttp's web server, bearer token and mutual TLS)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.fake_ehr import Pki, make_test_pki
from tests.kit import free_port, printed
from tests.kit.toml import toml_str
from tests.pdq_helpers import AUTHORITY, ODALYS, FhirEndpoint, PdqSupplier, patient_resource
from tests.pdq_oracle import validate_qbp
from vitals_agent.config.pdq import PdqConfig
from vitals_agent.errors import ConfigError
from vitals_agent.hl7.pdq import Authority, PdqCandidate, PdqRefusedError
from vitals_agent.net.pdq import PdqUnavailableError, Sender, pdq_client

SENDER = Sender(application="VITALS_AGENT^0011223344556677^EUI-64", facility="CLINIC")


def v2(port: int, **kw: Any) -> PdqConfig:
    values: dict[str, Any] = {
        "port": port,
        "assigning_authority": AUTHORITY,
        "receiving_application": "PDQ_SUPPLIER",
        "timeout_seconds": 2.0,
    }
    values.update(kw)
    return PdqConfig(**values)


async def test_v2_lookup_finds_the_patient_with_a_strict_valid_query() -> None:
    async with PdqSupplier() as supplier:
        client = pdq_client(v2(supplier.port), SENDER)
        lookup = await client.lookup("ZQ4471902")
    assert lookup.result.candidates == (ODALYS,)
    assert lookup.mode == "v2"
    (received,) = supplier.received
    msg = validate_qbp(received.raw)
    assert msg.msh.msh_10.to_er7() == lookup.query_id
    assert "@PID.3.1^ZQ4471902" in msg.qpd.to_er7()
    assert "@PID.3.4.1^EXCLINIC" in msg.qpd.to_er7()
    assert msg.msh.msh_5.to_er7() == "PDQ_SUPPLIER"


def _twins(n: int) -> list[PdqCandidate]:
    auth = Authority.parse(AUTHORITY)
    return [
        PdqCandidate(mrn="ZQ4471902", authority=auth, family="QUIRKE", given=f"CHILD{i}") for i in range(n)
    ]


async def test_v2_follows_the_continuation_up_to_max_results() -> None:
    """A supplier that answers two patients at a time: the client asks for the next increment (same
    QPD-2 tag, DSC-1 the pointer, fresh MSH-10) until it has all of them."""
    async with PdqSupplier(_twins(5), page_size=2) as supplier:
        lookup = await pdq_client(v2(supplier.port, max_results=10), SENDER).lookup("ZQ4471902")
    assert [c.given for c in lookup.result.candidates] == [f"CHILD{i}" for i in range(5)]
    assert not lookup.result.more and lookup.increments == 3
    queries = [validate_qbp(r.raw) for r in supplier.received]  # hl7apy STRICT, each one
    ids = [q.msh.msh_10.to_er7() for q in queries]
    assert ids[0] == lookup.query_id and len(set(ids)) == 3
    assert {q.qpd.qpd_2.to_er7() for q in queries} == {supplier.directory.queries[0].query_tag}
    assert [r.continuation for r in supplier.directory.queries] == [
        "",
        f"{supplier.directory.queries[0].query_tag}-2",
        f"{supplier.directory.queries[0].query_tag}-4",
    ]
    assert [r.limit for r in supplier.directory.queries] == [10, 8, 6]  # RCP-2: what is still wanted
    assert supplier.connections == 1  # the increments on the lookup's one connection


async def test_v2_continuation_stops_at_max_results_and_says_the_ehr_has_more() -> None:
    async with PdqSupplier(_twins(5), page_size=2) as supplier:
        lookup = await pdq_client(v2(supplier.port, max_results=3), SENDER).lookup("ZQ4471902")
    assert [c.given for c in lookup.result.candidates] == ["CHILD0", "CHILD1", "CHILD2"]
    assert lookup.result.more and lookup.increments == 2
    assert [r.limit for r in supplier.directory.queries] == [3, 1]


async def test_v2_a_failed_increment_keeps_what_came() -> None:
    async with PdqSupplier(_twins(5), page_size=2, plan=["AA", "AE"]) as supplier:
        lookup = await pdq_client(v2(supplier.port, max_results=10), SENDER).lookup("ZQ4471902")
    assert [c.given for c in lookup.result.candidates] == ["CHILD0", "CHILD1"]
    assert lookup.result.more and lookup.increments == 1 and len(supplier.received) == 2


async def test_v2_unknown_mrn_is_an_empty_answer() -> None:
    async with PdqSupplier() as supplier:
        lookup = await pdq_client(v2(supplier.port), SENDER).lookup("ZQ0000000")
    assert lookup.result.candidates == ()
    assert lookup.result.status == "NF"


async def test_v2_several_patients() -> None:
    twin = PdqCandidate(mrn="ZQ4471902", authority=Authority.parse(AUTHORITY), family="QUIRKE", given="OLIVE")
    async with PdqSupplier([ODALYS, twin]) as supplier:
        lookup = await pdq_client(v2(supplier.port), SENDER).lookup("ZQ4471902")
    assert [c.given for c in lookup.result.candidates] == ["ODALYS", "OLIVE"]


@pytest.mark.parametrize("mode", ["AE", "AR"])
async def test_v2_error_answers_are_refusals(mode: str) -> None:
    async with PdqSupplier(mode=mode) as supplier:
        with pytest.raises(PdqRefusedError, match=mode) as info:
            await pdq_client(v2(supplier.port), SENDER).lookup("ZQ4471902")
    assert "ZQ4471902" not in str(info.value)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("SILENT", "no answer from 127.0.0.1:[0-9]+ within 0.3 s"),
        ("CLOSE", "closed the connection before answering"),
        ("WRONG_ID", "MSA-2 does not match"),
        ("GARBLE", "not an MLLP frame"),
    ],
)
async def test_v2_supplier_failures_are_unavailable(mode: str, message: str) -> None:
    async with PdqSupplier(mode=mode) as supplier:
        with pytest.raises(PdqUnavailableError, match=message) as info:
            await pdq_client(v2(supplier.port, timeout_seconds=0.3), SENDER).lookup("ZQ4471902")
    assert "\n" not in str(info.value) and "ZQ4471902" not in str(info.value)


async def test_v2_supplier_down() -> None:
    with pytest.raises(PdqUnavailableError, match="cannot connect"):
        await pdq_client(v2(free_port()), SENDER).lookup("ZQ4471902")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


async def test_v2_over_mutual_tls(pki: Pki) -> None:
    ctx = pki.server_context(require_client=True)
    async with PdqSupplier(ssl_context=ctx) as supplier:
        config = v2(
            supplier.port, tls=True, ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key
        )
        lookup = await pdq_client(config, SENDER).lookup("ZQ4471902")
        assert lookup.result.candidates == (ODALYS,)
        rogue = PdqConfig(**{**config.model_dump(), "ca_file": pki.other_ca_cert})
        with pytest.raises(PdqUnavailableError, match="certificate"):
            await pdq_client(rogue, SENDER).lookup("ZQ4471902")


def test_unreadable_tls_file_is_a_config_error(tmp_path: Path) -> None:
    config = v2(1234, tls=True, ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"pdq\.ca_file: cannot read"):
        pdq_client(config, SENDER)


# ------------------------------------------------------------------------------------------ PDQm


def fhir(base_url: str, **kw: Any) -> PdqConfig:
    values: dict[str, Any] = {
        "mode": "fhir",
        "base_url": base_url,
        "assigning_authority": AUTHORITY,
        "timeout_seconds": 2.0,
    }
    values.update(kw)
    return PdqConfig(**values)


async def test_pdqm_lookup_with_bearer_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    async with FhirEndpoint([patient_resource(ODALYS)], token="s3cret-token") as server:
        lookup = await pdq_client(fhir(server.base_url, bearer_token_file=token), SENDER).lookup("ZQ4471902")
    (candidate,) = lookup.result.candidates
    assert candidate == PdqCandidate(
        mrn="ZQ4471902",
        authority=Authority("EXCLINIC", "2.999.1", "ISO"),
        identifier_type="MR",
        family="QUIRKE",
        given="ODALYS",
        birth_date="19610923",
        sex="F",
    )
    (request,) = server.requests
    assert request["query"] == {"identifier": "urn:oid:2.999.1|ZQ4471902", "_count": "10"}
    assert request["authorization"] == "Bearer s3cret-token"
    assert request["accept"] == "application/fhir+json"


async def test_pdqm_unknown_mrn_inactive_and_other_system() -> None:
    inactive = patient_resource(ODALYS, active=False)
    async with FhirEndpoint([inactive]) as server:
        client = pdq_client(fhir(server.base_url), SENDER)
        assert (await client.lookup("ZQ4471902")).result.candidates == ()
        assert (await client.lookup("NOPE")).result.candidates == ()


async def test_pdqm_token_file_is_read_by_fhir_deliverys_reader_with_the_same_messages(
    tmp_path: Path,
) -> None:
    """One home for token files: [pdq] and [fhir] bearer_token_file say the same, naming their key."""
    from vitals_agent.errors import ConnectFailedError
    from vitals_agent.net.http_client import FileToken

    token = tmp_path / "token"
    token.write_text("  \n")
    async with FhirEndpoint([patient_resource(ODALYS)], token="right") as server:
        client = pdq_client(fhir(server.base_url, bearer_token_file=token), SENDER)
        assert isinstance(getattr(client, "tokens", None), FileToken)
        with pytest.raises(PdqUnavailableError) as pdq_empty:
            await client.lookup("ZQ4471902")
        token.unlink()
        with pytest.raises(PdqUnavailableError) as pdq_gone:
            await client.lookup("ZQ4471902")
        assert server.requests == []  # nothing sent without a token
    with pytest.raises(ConnectFailedError) as fhir_gone:
        await FileToken(token).token()
    token.write_text("")
    with pytest.raises(ConnectFailedError) as fhir_empty:
        await FileToken(token).token()
    assert str(pdq_empty.value) == f"pdq.bearer_token_file {token} is empty"
    assert str(fhir_empty.value) == f"fhir.bearer_token_file {token} is empty"
    assert str(pdq_gone.value) == f"cannot read pdq.bearer_token_file {token}: No such file or directory"
    assert str(fhir_gone.value) == str(pdq_gone.value).replace("pdq.", "fhir.")
    with pytest.raises(ConfigError) as at_start:
        pdq_client(fhir(server.base_url, bearer_token_file=tmp_path / "none"), SENDER)
    assert at_start.value.problems == [
        ("pdq.bearer_token_file", f"{tmp_path / 'none'} is not a readable file")
    ]


async def test_pdqm_wrong_token_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("wrong")
    async with FhirEndpoint([patient_resource(ODALYS)], token="right") as server:
        with pytest.raises(PdqRefusedError, match="HTTP 401"):
            await pdq_client(fhir(server.base_url, bearer_token_file=token), SENDER).lookup("ZQ4471902")


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"status": 500}, PdqRefusedError, "HTTP 500"),
        ({"body": b"not json"}, PdqUnavailableError, "not a FHIR Bundle"),
        ({"body": b'{"resourceType": "Patient"}'}, PdqUnavailableError, "not a FHIR Bundle"),
        ({"silent": True}, PdqUnavailableError, "did not answer within 0.3 s"),
    ],
)
async def test_pdqm_failures(kw: dict[str, Any], error: type[Exception], message: str) -> None:
    async with FhirEndpoint([], **kw) as server:
        with pytest.raises(error, match=message):
            await pdq_client(fhir(server.base_url, timeout_seconds=0.3), SENDER).lookup("ZQ4471902")


async def test_pdqm_server_hanging_up_is_said_as_the_other_clients_say_it() -> None:
    """A PDQm server that closes the connection before answering: the wording of the v2 lookup and of FHIR
    delivery (aiohttp's own "Server disconnected" before they shared one reason)."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(PdqUnavailableError) as info:
            await pdq_client(fhir(f"http://127.0.0.1:{port}/fhir"), SENDER).lookup("ZQ4471902")
    assert str(info.value) == (
        f"cannot reach the PDQm server http://127.0.0.1:{port}/fhir:"
        " the server closed the connection before answering"
    )


async def test_pdqm_server_down() -> None:
    with pytest.raises(PdqUnavailableError, match="cannot reach"):
        await pdq_client(fhir(f"http://127.0.0.1:{free_port()}/fhir"), SENDER).lookup("ZQ4471902")


async def test_pdqm_over_mutual_tls(pki: Pki) -> None:
    ctx = pki.server_context(require_client=True)
    async with FhirEndpoint([patient_resource(ODALYS)], ssl_context=ctx) as server:
        config = fhir(
            server.base_url, ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key
        )
        lookup = await pdq_client(config, SENDER).lookup("ZQ4471902")
        assert [c.mrn for c in lookup.result.candidates] == ["ZQ4471902"]
        assert server.requests[0]["peercert"] is not None  # the server saw our client certificate
        without_cert = fhir(server.base_url, ca_file=pki.ca_cert)
        with pytest.raises(PdqUnavailableError):
            await pdq_client(without_cert, SENDER).lookup("ZQ4471902")


def test_pdq_config_rules() -> None:
    with pytest.raises(ValueError, match="port is required"):
        PdqConfig()
    with pytest.raises(ValueError, match="base_url is required"):
        PdqConfig(mode="fhir")
    with pytest.raises(ValueError, match="identifier_system is required"):
        PdqConfig(mode="fhir", base_url="https://x/fhir")
    with pytest.raises(ValueError, match="must be an http:// or https:// URL"):  # as [fhir]: no white space
        PdqConfig(mode="fhir", base_url="https://x/fhir r4", assigning_authority=AUTHORITY)
    assert PdqConfig(
        mode="fhir", base_url="https://x/fhir/", assigning_authority=AUTHORITY
    ).fhir_system() == ("urn:oid:2.999.1")
    assert PdqConfig(port=1).pdq_fallback == "refuse"
    assert PdqConfig(port=1).confirm_timeout_seconds == 120
    assert PdqConfig(port=1).timeout_seconds == 5


# ------------------------------------------------------------------------------------------ receive --pdq


async def test_receive_pdq_answers_queries_and_acks_orus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from tests.fake_ehr import make_message
    from tests.pdq_helpers import PATIENTS_CSV
    from tests.pdq_oracle import validate_rsp
    from vitals_agent.cli import main
    from vitals_agent.hl7.ack import parse_ack
    from vitals_agent.net.mllp import MllpClient

    csv_file = tmp_path / "patients.csv"
    csv_file.write_text(PATIENTS_CSV)
    args = ["receive", "--port", "0", "--count", "2", "--pdq", str(csv_file), "--pdq-authority", AUTHORITY]
    task = asyncio.create_task(main(args))
    found, out = await printed(capsys, r"listening on 127\.0\.0\.1:(\d+) .*PDQ supplier for 1 patient")
    port = int(found.group(1))
    lookup = await pdq_client(v2(port), SENDER).lookup("ZQ4471902")
    assert lookup.result.candidates == (ODALYS,)
    mllp = MllpClient("127.0.0.1", port)
    ack = parse_ack(await mllp.send(make_message("ORU-1"), 5))
    await mllp.close()
    assert ack.code == "AA" and ack.control_id == "ORU-1"
    assert await asyncio.wait_for(task, 5) == 0
    out += capsys.readouterr().out
    assert "--- answer 1 ---" in out and "--- ack 2 ---" in out
    answer = out.split("--- answer 1 ---\n", 1)[1].split("--- message 2 ---", 1)[0]
    validate_rsp("\r".join(answer.strip().splitlines()) + "\r")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("mrn,name\n", "missing: dob, sex"),
        ("mrn,name,dob,sex\nA,B,1,F\n", "line 2: dob"),
    ],
)
async def test_receive_pdq_bad_csv_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    from vitals_agent.cli import main

    csv_file = tmp_path / "patients.csv"
    if content is not None:
        csv_file.write_text(content)
    assert await main(["receive", "--port", "0", "--pdq", str(csv_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


async def test_check_config_reports_pdq_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vitals_agent.cli import main

    base = f'[agent]\nfacility = "X"\ndata_dir = {toml_str(tmp_path / "data")}\n'
    cfg = tmp_path / "agent.toml"
    cfg.write_text(base + '[pdq]\nmode = "fhir"\n')
    assert await main(["check-config", str(cfg)]) == 1
    assert capsys.readouterr().out.startswith("pdq: base_url is required")
    cfg.write_text(
        base
        + f'[pdq]\nport = 3375\ntls = true\nca_file = {toml_str(tmp_path / "none.pem")}\npdq_fallback = "x"\n'
    )
    assert await main(["check-config", str(cfg)]) == 1
    assert "pdq.pdq_fallback: must be 'refuse' or 'typed'" in capsys.readouterr().out
    cfg.write_text(base + f"[pdq]\nport = 3375\ntls = true\nca_file = {toml_str(tmp_path / 'none.pem')}\n")
    assert await main(["check-config", str(cfg)]) == 1
    assert f"pdq.ca_file: {tmp_path / 'none.pem'} does not exist" in capsys.readouterr().out
    cfg.write_text(base + '[pdq]\nport = 3375\nassigning_authority = "EXCLINIC&2.999.1&ISO"\n')
    assert await main(["check-config", str(cfg)]) == 0
