"""Small service pieces: sd_notify datagrams, watchdog interval, log redaction, gateway identity."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest
import structlog

from vitals_agent import host
from vitals_agent.agent import sdnotify
from vitals_agent.agent.paths import _eui64_from_mac, gateway_eui64
from vitals_agent.config.schema import parse_config
from vitals_agent.logs import setup_logging
from vitals_agent.redact import redact_message


@pytest.mark.skipif(host.WINDOWS, reason="systemd notify: Linux (the Windows service reports its status)")
def test_sd_notify_sends_datagram_to_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("READY=1") is True
        assert server.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sdnotify.notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval() is None


def test_redacted_message_keeps_header_and_drops_patient_values() -> None:
    msg = (
        "MSH|^~\\&|VA^0A1B2CFFFE3D4E5F^EUI-64|CLINIC|||20250314153012+0000||ORU^R01^ORU_R01|ID1|P|2.6\r"
        "PID|||MRN0012345^^^EXHOSP^MR||DOE^JANE\rOBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||97"
    )
    out = redact_message(msg)
    assert "ID1" in out and "ORU^R01^ORU_R01" in out
    assert "MRN0012345" not in out and "DOE" not in out and "97" not in out
    assert out.endswith(" / PID|… (38 bytes redacted) / OBX|… (44 bytes redacted)")


def test_json_logs_when_not_a_terminal() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    structlog.get_logger("t").info("hello", device="d1")
    structlog.get_logger("t").debug("hidden")
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "hello" and entry["device"] == "d1" and entry["level"] == "info"


def test_gateway_eui64_from_mac_and_persisted(tmp_path: Path) -> None:
    assert _eui64_from_mac(0x0A1B2C3D4E5F & ~(0x03 << 40)) == "081B2CFFFE3D4E5F"
    assert _eui64_from_mac(0x030000000001) is None  # multicast/random node ids are not IEEE-assigned
    config = parse_config({"agent": {"facility": "F"}})
    first = gateway_eui64(config, tmp_path)
    assert len(first) == 16 and first == gateway_eui64(config, tmp_path)
    assert (tmp_path / "gateway-eui64").read_text().strip() == first
    configured = parse_config({"agent": {"facility": "F", "gateway_eui64": "00:11:22:ff:fe:33:44:55"}})
    assert gateway_eui64(configured, tmp_path) == "001122FFFE334455"
