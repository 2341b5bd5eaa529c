"""The control API: token file 0600, 401 without the token, patient set/show/clear, cookie login."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.kit import DOB, FAMILY, GIVEN, MRN, FakeClock, events, manager, oximeter_reading, until
from tests.private_files import assert_private
from vitals_agent.agent.control import ControlClient, ControlError, ControlServer, StatusSnapshot
from vitals_agent.agent.patient.context import PatientContextManager, PatientDetails
from vitals_agent.agent.patient.origin import Origin

MASKED = "\u2022" * 3 + "342"  # mask_mrn(MRN): never the length, the last three


def fake_status() -> StatusSnapshot:
    return {
        "version": "0.1.0",
        "started_at": "2026-03-11T13:00:00+00:00",
        "facility": "EXCLINIC",
        "location": "CARDIO^EXAM 3",
        "devices": [
            {
                "id": "oxi-1",
                "driver": "masimo",
                "connected": True,
                "detail": "/dev/ttyUSB0",
                "last_seen": "2026-03-11T13:59:58+00:00",
                "last_reading_at": "2026-03-11T13:59:30+00:00",
                "last_reading": {"spo2": "97 %", "pulse_rate_oximeter": "72 /min"},
                "readings": 12,
                "messages": 3,
                "decode_failures": 2,
                "link_failures": 0,
                "battery_percent": None,
                "identity": {},
            }
        ],
        "outbox": {"depth": 4, "dead": 1},
        "sender": {
            "connected": False,
            "peer": "127.0.0.1:2575",
            "last_error": "connection refused",
            "last_error_at": "2026-03-11T13:59:00+00:00",
            "consecutive_failures": 3,
        },
    }


class Env:
    def __init__(
        self, server: ControlServer, patients: PatientContextManager, data_dir: Path, ticks: FakeClock
    ) -> None:
        self.server = server
        self.patients = patients
        self.data_dir = data_dir
        self.ticks = ticks

    async def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        token: str | None = "ok",
    ) -> tuple[int, dict[str, str], bytes]:
        """An independent HTTP client (the standard library's http.client, in a thread)."""
        hdrs = dict(headers or {})
        if token == "ok":
            hdrs["Authorization"] = f"Bearer {self.server.token}"
        elif token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        payload = json.dumps(body).encode() if body is not None else None

        def call() -> tuple[int, dict[str, str], bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
            try:
                conn.request(method, path, body=payload, headers=hdrs)
                resp = conn.getresponse()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
            finally:
                conn.close()

        return await asyncio.to_thread(call)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock, ticks = FakeClock(), FakeClock()  # wall clock; monotonic (code and session lifetimes)
    patients = manager(tmp_path, clock, require_patient=True)
    server = ControlServer(tmp_path, patients, fake_status, port=0, now=clock, clock=ticks.monotonic)
    await server.start()
    try:
        yield Env(server, patients, tmp_path, ticks)
    finally:
        await server.stop()
        patients.close()


async def test_token_and_endpoint_files_are_private(env: Env) -> None:
    token_file = env.data_dir / "control.token"
    assert_private(token_file)
    assert token_file.read_text().strip() == env.server.token
    assert len(env.server.token) >= 40
    info = json.loads((env.data_dir / "control.json").read_text())
    assert (info["host"], info["port"]) == ("127.0.0.1", env.server.port)
    assert_private(env.data_dir / "control.json")


async def test_a_new_token_on_every_start(tmp_path: Path) -> None:
    patients = manager(tmp_path, FakeClock())
    tokens = []
    for _ in range(2):
        server = ControlServer(tmp_path, patients, fake_status, port=0)
        await server.start()
        tokens.append(server.token)
        await server.stop()
    assert tokens[0] != tokens[1]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/", None),
        ("GET", "/api/status", None),
        ("GET", "/api/patient", None),
        ("GET", "/api/patient?reveal=1", None),
        ("PUT", "/api/patient", {"mrn": "EVIL1"}),
        ("DELETE", "/api/patient", None),
        ("DELETE", "/api/held", None),
        ("GET", "/nonexistent", None),
    ],
)
@pytest.mark.parametrize("token", [None, "wrong-token", ""])
async def test_every_request_without_the_token_is_refused(
    env: Env, method: str, path: str, body: Any, token: str | None
) -> None:
    env.patients.set(PatientDetails(mrn=MRN, family=FAMILY), Origin("cli"))
    env.patients.route("oxi-1", oximeter_reading())  # touches; with a patient set nothing is held
    status, headers, content = await env.http(method, path, body, token=token)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert MRN.encode() not in content and FAMILY.encode() not in content
    assert b"EXCLINIC" not in content and b"oxi-1" not in content  # no status data either
    assert env.patients.current_details() == PatientDetails(mrn=MRN, family=FAMILY)  # nothing changed


async def login(env: Env) -> str:
    """A page session the way a browser gets one: a login code (bearer), traded once for a cookie."""
    status, _, content = await env.http("POST", "/api/login-code")
    assert status == 200
    code = json.loads(content)["code"]
    status, headers, _ = await env.http("GET", f"/?code={code}", token=None)
    assert status == 303
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie.startswith("vitals_session=")
    return cookie


async def test_the_session_cookie_is_for_reading_only(env: Env) -> None:
    cookie = {"Cookie": await login(env)}
    status, _, _ = await env.http("GET", "/api/status", headers=cookie, token=None)
    assert status == 200
    status, _, _ = await env.http("PUT", "/api/patient", {"mrn": "EVIL1"}, headers=cookie, token=None)
    assert status == 401
    status, _, _ = await env.http("DELETE", "/api/patient", headers=cookie, token=None)
    assert status == 401
    status, _, _ = await env.http("POST", "/api/login-code", headers=cookie, token=None)
    assert status == 401  # a page cannot mint new login codes
    assert env.patients.current() is None


@pytest.mark.parametrize("name", ["vitals_session", "vitals_control"])
async def test_the_token_is_not_a_cookie(env: Env, name: str) -> None:
    cookie = {"Cookie": f"{name}={env.server.token}"}
    assert (await env.http("GET", "/api/status", headers=cookie, token=None))[0] == 401
    assert (await env.http("GET", "/", headers=cookie, token=None))[0] == 401


async def test_page_login_code_is_single_use_and_the_cookie_is_not_the_token(env: Env) -> None:
    status, _, content = await env.http("POST", "/api/login-code")
    answer = json.loads(content)
    assert (status, answer["expires_in"], answer["path"]) == (200, 60, f"/?code={answer['code']}")
    assert len(answer["code"]) >= 20 and env.server.token not in content.decode()
    status, headers, _ = await env.http("GET", answer["path"], token=None)
    assert (status, headers["location"]) == (303, "/")
    session = headers["set-cookie"].split(";")[0].removeprefix("vitals_session=")
    assert headers["set-cookie"] == f"vitals_session={session}; HttpOnly; SameSite=Strict; Path=/"
    assert len(session) >= 40 and session != env.server.token
    status, _, page = await env.http("GET", "/", headers={"Cookie": f"vitals_session={session}"}, token=None)
    assert status == 200 and b'id="patient"' in page
    status, _, page = await env.http("GET", answer["path"], token=None)  # used already
    assert status == 401 and b"expired or was used" in page
    assert (await env.http("GET", "/?code=nope", token=None))[0] == 401


async def test_page_login_code_expires_within_60_seconds(env: Env) -> None:
    _, _, content = await env.http("POST", "/api/login-code")
    env.ticks.advance(60.0)
    assert (await env.http("GET", json.loads(content)["path"], token=None))[0] == 401
    _, _, content = await env.http("POST", "/api/login-code")
    env.ticks.advance(59.0)
    assert (await env.http("GET", json.loads(content)["path"], token=None))[0] == 303


async def test_the_token_in_a_url_opens_nothing(env: Env) -> None:
    status, headers, _ = await env.http("GET", f"/?token={env.server.token}", token=None)
    assert status == 401 and "set-cookie" not in headers


async def test_put_show_clear_through_the_api(env: Env) -> None:
    body = {"mrn": MRN, "name": f"{FAMILY}^{GIVEN}", "birth_date": DOB, "sex": "F", "encounter": "V1"}
    status, headers, content = await env.http("PUT", "/api/patient", body)
    assert status == 200
    assert headers["cache-control"] == "no-store"
    answer = json.loads(content)["patient"]
    assert (answer["set"], answer["mrn"], answer["name"], answer["channel"]) == (True, MASKED, "Q. Z.", "api")
    assert MRN.encode() not in content  # masked unless revealed
    assert env.patients.current_details() == PatientDetails(
        mrn=MRN, family=FAMILY, given=GIVEN, birth_date=DOB, sex="F", encounter="V1"
    )

    status, _, content = await env.http("GET", "/api/patient?reveal=1")
    revealed = json.loads(content)["patient"]
    assert (revealed["mrn"], revealed["name"], revealed["birth_date"], revealed["revealed"]) == (
        MRN,
        f"{FAMILY} {GIVEN}",
        DOB,
        True,
    )

    status, _, content = await env.http("DELETE", "/api/patient", {"channel": "cli", "source": "nurse1"})
    assert (status, json.loads(content)["cleared"]) == (200, True)
    assert env.patients.current() is None

    # The channel is the real one (the API); what the caller says about itself is kept as its claim.
    trail = [(e["event"], e.get("channel"), e.get("client")) for e in events(env.data_dir)]
    assert trail == [
        ("context_set", "api", None),
        ("context_revealed", "api", None),
        ("context_cleared", "api", "cli"),
    ]
    assert events(env.data_dir)[2]["source"] == "nurse1"


@pytest.mark.parametrize("claimed", ["barcode", "cli"])
async def test_the_audit_records_the_real_channel_and_the_calling_user(env: Env, claimed: str) -> None:
    body = {"mrn": MRN, "channel": claimed, "source": "keyboard"}
    assert (await env.http("PUT", "/api/patient", body))[0] == 200
    record = events(env.data_dir)[-1]
    assert (record["event"], record["channel"], record["client"], record["source"]) == (
        "context_set",
        "api",
        claimed,
        "keyboard",
    )
    assert env.patients.snapshot()["channel"] == "api"
    if sys.platform.startswith("linux"):  # the kernel's word for who owns the calling socket
        import pwd

        assert record["uid"] == os.getuid()
        assert record["user"] == pwd.getpwuid(os.getuid()).pw_name


async def test_put_over_another_patient_says_it_replaced_one(env: Env) -> None:
    _, _, content = await env.http("PUT", "/api/patient", {"mrn": MRN, "name": f"{FAMILY}^{GIVEN}"})
    assert json.loads(content)["replaced"] is None
    _, _, content = await env.http("PUT", "/api/patient", {"mrn": MRN})
    assert json.loads(content)["replaced"] is None  # the same patient again
    _, _, content = await env.http("PUT", "/api/patient", {"mrn": "OTHER77"})
    assert json.loads(content)["replaced"] == {"mrn": MASKED, "name": None}
    assert MRN.encode() not in content


async def test_status_json_carries_the_service_snapshot_and_the_masked_patient(env: Env) -> None:
    env.patients.set(PatientDetails(mrn=MRN), Origin("barcode", source="scan-1"))
    status, _, content = await env.http("GET", "/api/status")
    data = json.loads(content)
    assert status == 200
    patient = data.pop("patient")
    assert data == json.loads(json.dumps(fake_status()))
    assert (patient["mrn"], patient["channel"], patient["source"], patient["require_patient"]) == (
        MASKED,
        "barcode",
        "scan-1",
        True,
    )


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"mrn": "SECRET|1"}, "mrn: MRN contains a control character or one of | ^ ~ \\ &"),
        ({"mrn": "M1", "birth_date": "SECRET"}, "birth_date: date of birth must be YYYYMMDD"),
        ({"mrn": "M1", "channel": "expiry"}, "channel must be one of api, barcode, cli"),
        ({"mrn": "M1", "name": 5}, "name: must be a string FAMILY^GIVEN"),
        (["M1"], "body must be a JSON object"),
    ],
)
async def test_bad_input_is_a_400_that_does_not_echo_it(env: Env, body: Any, error: str) -> None:
    status, _, content = await env.http("PUT", "/api/patient", body)
    assert (status, json.loads(content)) == (400, {"error": error})
    assert b"SECRET" not in content
    assert env.patients.current() is None


async def test_not_found_method_not_allowed_and_wrong_host(env: Env) -> None:
    assert (await env.http("GET", "/nope"))[0] == 404
    assert (await env.http("POST", "/api/patient", {}))[0] == 405
    status, _, _ = await env.http("GET", "/api/status", headers={"Host": "evil.example:80"})
    assert status == 421


async def test_discard_held_through_the_api(env: Env) -> None:
    env.patients.route("oxi-1", oximeter_reading())
    status, _, content = await env.http("DELETE", "/api/held", {"channel": "cli"})
    assert (status, json.loads(content)) == (200, {"discarded": 1})
    assert env.patients.held.summary() == (0, None)


async def test_client_reads_the_files_and_reports_errors_in_one_line(env: Env, tmp_path: Path) -> None:
    client = ControlClient.from_data_dir(env.data_dir)
    assert (client.port, client.token) == (env.server.port, env.server.token)
    data = await client.call("GET", "/api/patient")
    assert data["patient"]["set"] is False
    with pytest.raises(ControlError, match=r"^mrn: MRN is empty$"):
        await client.call("PUT", "/api/patient", {"mrn": ""})
    wrong = ControlClient("127.0.0.1", env.server.port, "bad")
    with pytest.raises(ControlError, match="unauthorized"):
        await wrong.call("GET", "/api/status")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    with pytest.raises(ControlError, match=r"the agent is not running \(no .*control.json\)"):
        ControlClient.from_data_dir(empty)


async def test_stopped_server_removes_its_endpoint_and_refuses_connections(tmp_path: Path) -> None:
    patients = manager(tmp_path, FakeClock())
    server = ControlServer(tmp_path, patients, fake_status, port=0)
    await server.start()
    client = ControlClient.from_data_dir(tmp_path)
    await server.stop()
    assert not (tmp_path / "control.json").exists()
    with pytest.raises(ControlError, match=r"^the agent is not running \(nothing answers at http://127"):
        await client.call("GET", "/api/status")


async def test_malformed_requests_do_not_kill_the_server(env: Env) -> None:
    junk_requests = (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    for junk in junk_requests:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
        writer.write(junk)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 4"), answer[:40]
    assert (await env.http("GET", "/api/status"))[0] == 200


async def test_audit_failure_refuses_the_change_with_a_one_line_500(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os as _os

    def disk_full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_os, "write", disk_full)
    status, _, content = await env.http("PUT", "/api/patient", {"mrn": MRN})
    monkeypatch.undo()
    assert status == 500
    error = json.loads(content)["error"]
    assert error.startswith("cannot write audit log ") and error.endswith("No space left on device")
    assert MRN not in error
    assert env.patients.current() is None  # no unaudited context


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:{port}", True),
        ("localhost:{port}", True),
        ("LOCALHOST:{port}", True),
        ("[::1]:{port}", True),
        ("127.0.0.2:{port}", False),
        ("127.evil.example:{port}", False),
        ("127.0.0.1.nip.io:{port}", False),
        ("127.0.0.1", False),  # no port: port 80, not this server
        ("127.0.0.1:1", False),
        ("localhost:{port}.evil.example", False),
        ("", False),
    ],
)
async def test_host_check_accepts_only_loopback_names_with_the_port(
    env: Env, host: str, allowed: bool
) -> None:
    status, _, content = await env.http(
        "GET", "/api/status", headers={"Host": host.format(port=env.server.port)}
    )
    assert status == (200 if allowed else 421), content
    if not allowed:
        assert b"EXCLINIC" not in content


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            {"mrn": "M1", "family": "A\u2028B"},
            "family: name contains a control character or one of | ^ ~ \\ &",
        ),
        ({"mrn": "M1", "given": "A\u2029B"}, "given: name contains a control character or one of | ^ ~ \\ &"),
        ({"mrn": "M\u0085X"}, "mrn: MRN contains a control character or one of | ^ ~ \\ &"),
        (
            {"mrn": "M1", "encounter": "V\u009b1"},
            "encounter: encounter contains a control character or one of | ^ ~ \\ &",
        ),
        (
            {"mrn": "M1", "family": "M\udcfcLLER"},
            "family: name is not valid UTF-8 text (check the terminal's character set)",
        ),
        ({"mrn": "M1", "source": "nurse\u2028"}, "source contains a control character or line separator"),
    ],
)
async def test_line_separators_c1_controls_and_lone_surrogates_are_refused(
    env: Env, body: dict[str, str], error: str
) -> None:
    status, _, content = await env.http("PUT", "/api/patient", body)
    assert (status, json.loads(content)) == (400, {"error": error})
    assert env.patients.current() is None
    assert not events(env.data_dir)


# ----------------------------------------------------------------------------------------- connection cap


async def raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_idle_connections_are_capped_and_closed_fast(tmp_path: Path) -> None:
    patients = manager(tmp_path, FakeClock())
    server = ControlServer(tmp_path, patients, fake_status, port=0, max_connections=4, request_timeout=1.0)
    await server.start()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(40):
            idle.append(await raw_connect(server.port))
        await until(lambda: server.busy_refused == 36)
        assert server.connections == 4  # never more than the cap, however many connect
        # Over the cap: an immediate 503, then closed.
        answers = [await reader.read() for reader, _ in idle[4:]]
        assert all(a.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") for a in answers)
        assert b"too many control connections" in answers[0]
        # The four served ones send nothing: closed after request_timeout, without an answer.
        assert [await reader.read() for reader, _ in idle[:4]] == [b""] * 4
        await until(lambda: server.connections == 0)
        status, _ = await ControlClient.from_data_dir(tmp_path).request("GET", "/api/status")
        assert status == 200
    finally:
        for _, writer in idle:
            writer.close()
        await server.stop()
        patients.close()


async def test_a_slow_request_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    """Slowloris: a byte every 50 ms keeps no connection open past request_timeout."""
    patients = manager(tmp_path, FakeClock())
    server = ControlServer(tmp_path, patients, fake_status, port=0, request_timeout=0.5)
    await server.start()
    try:
        reader, writer = await raw_connect(server.port)
        request = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 10_000
        sent = 0
        async with asyncio.timeout(10):
            while not reader.at_eof():
                if sent < len(request):
                    with contextlib.suppress(ConnectionError):
                        writer.write(request[sent : sent + 1])
                        await writer.drain()
                    sent += 1
                with contextlib.suppress(TimeoutError):  # (simulation) a client sending a byte at a time
                    await asyncio.wait_for(reader.read(1), 0.05)
        assert sent < len(request)  # cut off long before the request could complete
        writer.close()
        await until(lambda: server.connections == 0)
    finally:
        await server.stop()
        patients.close()


def test_the_cap_stays_well_below_the_file_limit() -> None:
    from vitals_agent.agent.control.server import MAX_CONNECTIONS, connection_cap

    assert connection_cap(1024) == MAX_CONNECTIONS == 32
    assert connection_cap(256) == 16
    assert connection_cap(20) == 4


async def test_the_client_tries_again_on_the_busy_answer_only() -> None:
    """The agent's busy answer (503 with Retry-After) is tried again; a 503 that answers the request (the
    EHR could not be asked about the patient) is not: trying again would ask the EHR again."""
    answers = [b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n", b"HTTP/1.1 200 OK\r\n"]
    requests = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        requests += 1
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"ok": 1}'
        head = answers.pop(0) if answers else b"HTTP/1.1 503 Service Unavailable\r\n"
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        client = ControlClient("127.0.0.1", server.sockets[0].getsockname()[1], "token")
        assert await client.request("GET", "/api/status") == (200, {"ok": 1})
        assert requests == 2  # busy, then served
        assert await client.request("PUT", "/api/patient", {"mrn": "X"}) == (503, {"ok": 1})
        assert requests == 3  # answered once
    finally:
        server.close()
        await server.wait_closed()
