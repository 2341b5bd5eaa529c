"""The built-in MLLP receiver and the ``receive`` command, driven over real 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import hl7
import hl7.mllp
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from tests.kit import printed, until
from tests.test_hl7_oru import JANE, PROFILE, bp_reading
from vitals_agent.cli import main
from vitals_agent.hl7.ack import parse_ack
from vitals_agent.hl7.oru import PatientIdentity, build_oru
from vitals_agent.net.receiver import build_ack, start_receiver

pytestmark = pytest.mark.timeout(20)

DTM = re.compile(r"^\d{14}[+-]\d{4}$")


def message(control_id: str, patient: PatientIdentity = JANE) -> bytes:
    return build_oru(
        bp_reading(),
        PROFILE,
        control_id=control_id,
        created_at=datetime(2025, 3, 14, 15, 30, tzinfo=UTC),
        patient=patient,
    )


async def send_raw(port: int, frames: list[bytes]) -> list[bytes]:
    """Send MLLP frames on one raw socket; return the ACK payloads (without framing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    acks = []
    try:
        for frame in frames:
            writer.write(b"\x0b" + frame + b"\x1c\r")
            await writer.drain()
            block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)
            assert block.startswith(b"\x0b")
            acks.append(block[1:-2])
    finally:
        writer.close()
        await writer.wait_closed()
    return acks


def fields(segment: str) -> list[str]:
    parts = segment.split("|")
    return ["MSH", "|", *parts[1:]] if parts[0] == "MSH" else parts


async def test_raw_socket_message_gets_a_proper_ack() -> None:
    received: list[str] = []
    handle = await start_receiver("127.0.0.1", 0, received.append)
    try:
        assert handle.port > 0
        raw = message("CTRL-0001")
        (ack,) = await send_raw(handle.port, [raw])
    finally:
        await handle.close()
    assert received == [raw.decode()]  # exactly as sent, CR separators kept
    text = ack.decode()
    assert "\n" not in text
    msh, msa = (fields(s) for s in text.split("\r") if s)
    assert msh[3:7] == ["EHR", "EXAMPLE_HOSP", "VITALS_AGENT^0A1B2CFFFE3D4E5F^EUI-64", "EXAMPLE_CLINIC"]
    assert DTM.match(msh[7]), msh[7]
    assert msh[9] == "ACK^R01^ACK"
    assert re.fullmatch(r"[0-9A-F]{20}", msh[10])
    assert (msh[11], msh[12]) == ("P", "2.6")
    assert msa == ["MSA", "AA", "CTRL-0001"]
    # the delivery side's own ACK parser and hl7apy STRICT both accept it
    parsed = parse_ack(ack)
    assert (parsed.code, parsed.control_id, parsed.message_type) == ("AA", "CTRL-0001", "ACK^R01^ACK")
    hl7apy_ack = parse_message(text.rstrip("\r"), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    hl7apy_ack.validate()


async def test_many_messages_on_one_connection_and_async_callback() -> None:
    seen: list[str] = []

    async def on_message(text: str) -> None:
        await asyncio.sleep(0)  # a callback that really is asynchronous (gives the loop a turn)
        seen.append(text.split("\r")[0].split("|")[9])

    handle = await start_receiver("127.0.0.1", 0, on_message)
    try:
        acks = await send_raw(handle.port, [message(f"C{i}") for i in range(5)])
    finally:
        await handle.close()
    assert seen == [f"C{i}" for i in range(5)]
    assert [parse_ack(a).control_id for a in acks] == [f"C{i}" for i in range(5)]
    assert [x.message.split("|")[9] for x in handle.received] == seen


@pytest.mark.parametrize("code", ["AE", "AR"])
async def test_negative_ack_has_err_segment(code: str) -> None:
    handle = await start_receiver("127.0.0.1", 0, lambda _m: None, code)
    try:
        (ack,) = await send_raw(handle.port, [message("NEG-1")])
    finally:
        await handle.close()
    parsed = parse_ack(ack)
    assert (parsed.code, parsed.control_id) == (code, "NEG-1")
    assert [e.code for e in parsed.errors] == ["207^Application internal error^HL70357"]
    assert [e.severity for e in parsed.errors] == ["E"]


async def test_python_hl7_client_with_non_ascii_name() -> None:
    received: list[str] = []
    handle = await start_receiver("127.0.0.1", 0, received.append)
    try:
        reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", handle.port, encoding="utf-8")
        raw = message("UTF-1", PatientIdentity(mrn="M1", family="Müller", given="Zoë"))
        writer.writeblock(raw)
        await writer.drain()
        ack = await asyncio.wait_for(reader.readmessage(), 5)
        writer.close()
        await writer.wait_closed()
    finally:
        await handle.close()
    assert "Müller^Zoë" in received[0]
    assert str(ack.segment("MSA")(2)) == "UTF-1"


async def test_callback_failure_still_acks_and_garbage_closes_connection() -> None:
    def boom(_text: str) -> None:
        raise RuntimeError("callback bug")

    handle = await start_receiver("127.0.0.1", 0, boom)
    try:
        (ack,) = await send_raw(handle.port, [message("B1")])
        assert parse_ack(ack).code == "AA"
        reader, writer = await asyncio.open_connection("127.0.0.1", handle.port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n\x1c\r")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
        writer.close()
    finally:
        await handle.close()


def test_build_ack_for_unparseable_message_is_ar() -> None:
    ack = build_ack("not hl7 at all")
    msh, msa, err = (fields(s) for s in ack.split("\r") if s)
    assert msh[9] == "ACK^R01^ACK" and DTM.match(msh[7])
    assert msa == ["MSA", "AR", ""]  # no MSH-10 could be read
    assert err[3] == "207^Application internal error^HL70357"
    with pytest.raises(ValueError, match="ACK code"):
        build_ack("MSH|^~\\&|A", "XX")


async def test_close_with_an_idle_connection_open() -> None:
    handle = await start_receiver("127.0.0.1", 0, lambda _m: None)
    _reader, writer = await asyncio.open_connection("127.0.0.1", handle.port)
    await until(lambda: handle._tasks)  # the receiver is serving the (idle) connection
    await asyncio.wait_for(handle.close(), 5)
    writer.close()


async def test_receive_command_prints_message_and_ack(capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.create_task(main(["receive", "--port", "0", "--count", "2", "--ack", "AE"]))
    found, out = await printed(capsys, r"listening on 127\.0\.0\.1:(\d+)")
    port = int(found.group(1))
    await send_raw(port, [message("CLI-1"), message("CLI-2")])
    assert await asyncio.wait_for(task, 5) == 0
    out += capsys.readouterr().out
    lines = out.splitlines()
    assert lines.count("--- message 1 ---") == 1 and lines.count("--- ack 2 ---") == 1
    assert any(line.startswith("PID|||MRN0012345^^^EXHOSP&2.999.1&ISO^MR") for line in lines)
    assert "MSA|AE|CLI-1" in lines and "MSA|AE|CLI-2" in lines
    assert lines.index("MSA|AE|CLI-1") < lines.index("--- message 2 ---")


async def test_receive_command_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    handle = await start_receiver("127.0.0.1", 0, lambda _m: None)
    try:
        code = await main(["receive", "--port", str(handle.port), "--count", "1"])
    finally:
        await handle.close()
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot listen on 127.0.0.1:") and err.count("\n") == 1
