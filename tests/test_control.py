"""The control API: token file 0600, 401 without the token, patient set/show/clear, cookie login."""

from __future__ import annotations

import asyncio
import http.client
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.patient_helpers import DOB, FAMILY, GIVEN, MRN, Clock, events, make_reading, manager
from vitals_agent.agent.control import ControlClient, ControlError, ControlServer, StatusSnapshot
from vitals_agent.agent.patient_context import PatientContextManager, PatientDetails

MASKED = "\u2022" * 11 + "42"


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
            "last_error": "connection refused",
            "last_error_at": "2026-03-11T13:59:00+00:00",
        },
    }


class Env:
    def __init__(self, server: ControlServer, patients: PatientContextManager, data_dir: Path) -> None:
        self.server = server
        self.patients = patients
        self.data_dir = data_dir

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
    clock = Clock()
    patients = manager(tmp_path, clock, require_patient=True)
    server = ControlServer(tmp_path, patients, fake_status, port=0, now=clock)
    await server.start()
    try:
        yield Env(server, patients, tmp_path)
    finally:
        await server.stop()
        patients.close()


async def test_token_and_endpoint_files_are_private(env: Env) -> None:
    token_file = env.data_dir / "control.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == env.server.token
    assert len(env.server.token) >= 40
    info = json.loads((env.data_dir / "control.json").read_text())
    assert (info["host"], info["port"]) == ("127.0.0.1", env.server.port)
    assert stat.S_IMODE((env.data_dir / "control.json").stat().st_mode) == 0o600


async def test_a_new_token_on_every_start(tmp_path: Path) -> None:
    patients = manager(tmp_path, Clock())
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
    env.patients.set(PatientDetails(mrn=MRN, family=FAMILY), "cli")
    env.patients.route("oxi-1", make_reading())  # touches; with a patient set nothing is held
    status, headers, content = await env.http(method, path, body, token=token)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert MRN.encode() not in content and FAMILY.encode() not in content
    assert b"EXCLINIC" not in content and b"oxi-1" not in content  # no status data either
    assert env.patients.current_details() == PatientDetails(mrn=MRN, family=FAMILY)  # nothing changed


async def test_the_cookie_is_for_reading_only(env: Env) -> None:
    cookie = {"Cookie": f"vitals_control={env.server.token}"}
    status, _, _ = await env.http("GET", "/api/status", headers=cookie, token=None)
    assert status == 200
    status, _, _ = await env.http("PUT", "/api/patient", {"mrn": "EVIL1"}, headers=cookie, token=None)
    assert status == 401
    status, _, _ = await env.http("DELETE", "/api/patient", headers=cookie, token=None)
    assert status == 401
    assert env.patients.current() is None


async def test_page_login_sets_an_httponly_strict_cookie_and_drops_the_token_from_the_url(env: Env) -> None:
    status, headers, _ = await env.http("GET", f"/?token={env.server.token}", token=None)
    assert status == 303
    assert headers["location"] == "/"
    assert headers["set-cookie"] == f"vitals_control={env.server.token}; HttpOnly; SameSite=Strict; Path=/"
    status, _, _ = await env.http("GET", "/?token=nope", token=None)
    assert status == 401


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

    trail = [(e["event"], e.get("channel")) for e in events(env.data_dir)]
    assert trail == [("context_set", "api"), ("context_revealed", "api"), ("context_cleared", "cli")]
    assert events(env.data_dir)[2]["source"] == "nurse1"


async def test_status_json_carries_the_service_snapshot_and_the_masked_patient(env: Env) -> None:
    env.patients.set(PatientDetails(mrn=MRN), "barcode", source="scan-1")
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
    env.patients.route("oxi-1", make_reading())
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
    patients = manager(tmp_path, Clock())
    server = ControlServer(tmp_path, patients, fake_status, port=0)
    await server.start()
    client = ControlClient.from_data_dir(tmp_path)
    await server.stop()
    assert not (tmp_path / "control.json").exists()
    with pytest.raises(ControlError, match="cannot reach the agent"):
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
