"""``vitals-agent send-test``: one processing-id T message, the ACK in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fake_ehr import Hl7Ehr, RawEhr, msh10
from tests.kit import free_port
from tests.oracle import validate_oru
from tests.private_files import under_wine
from vitals_agent.cli import main

WINE_REFUSED = "Wine answers a refused loopback connect with WSAEINVAL (Windows: WSAECONNREFUSED)"


def write_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        "[agent]\n"
        'facility = "TEST_CLINIC"\n'
        'location = "CLINIC^ROOM12"\n'
        f"data_dir = '{tmp_path / 'data'}'\n"
        'gateway_eui64 = "0A1B2CFFFE3D4E5F"\n'
        "[ehr]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        "ack_timeout_seconds = 2\n"
        "connect_timeout_seconds = 2\n"
    )
    return path


async def test_send_test_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Hl7Ehr() as ehr:
        code = await main(["send-test", "--config", str(write_config(tmp_path, ehr.port))])
    out = capsys.readouterr().out.strip().splitlines()[-1]  # (unconfigured structlog also prints here)
    assert code == 0
    assert len(ehr.received) == 1
    raw = ehr.received[0].raw
    control_id = msh10(raw)
    assert out.startswith(f"AA from 127.0.0.1:{ehr.port} (plain) for {control_id} in ")
    msh = raw.split(b"\r")[0].split(b"|")
    assert msh[10] == b"T"  # MSH-11 processing id
    validate_oru(raw)


async def test_send_test_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with RawEhr(mode="AE") as ehr:
        code = await main(["send-test", "--config", str(write_config(tmp_path, ehr.port))])
    out = capsys.readouterr().out.strip().splitlines()[-1]  # (unconfigured structlog also prints here)
    assert code == 1
    assert out.startswith(
        "AE: Observation rejected [E 207^Application internal error^HL70357 at OBX^1^5] from "
    )


@pytest.mark.skipif(under_wine(), reason=WINE_REFUSED)
async def test_send_test_no_receiver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code = await main(["send-test", "--config", str(write_config(tmp_path, port))])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err == f"error: cannot connect to 127.0.0.1:{port}: Connection refused"
