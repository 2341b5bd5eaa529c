"""MLLP framing (pure) and the asyncio MLLP client against real peers on 127.0.0.1."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fake_ehr import Hl7Ehr, RawEhr, make_message, msh10
from tests.kit import until
from vitals_agent.errors import AckProtocolError, PeerUnavailableError
from vitals_agent.hl7.ack import parse_ack
from vitals_agent.hl7.mllp import MllpDeframer, frame
from vitals_agent.net.mllp import MllpClient

# --- framing -----------------------------------------------------------------------------------------


def test_frame_wraps_message() -> None:
    assert frame(b"MSH|x\r") == b"\x0bMSH|x\r\x1c\x0d"


@pytest.mark.parametrize("bad", [b"MSH\x0b|", b"MSH\x1c|"])
def test_frame_refuses_framing_bytes(bad: bytes) -> None:
    with pytest.raises(ValueError, match="framing bytes"):
        frame(bad)


def test_deframer_whole_and_split_frames() -> None:
    d = MllpDeframer()
    assert d.feed(b"\x0bONE\r\x1c\x0d\x0bTWO\r\x1c") == [b"ONE\r"]
    assert d.pending == 5  # "TWO\r" and the 0x1C waiting for its 0x0D
    assert d.feed(b"\x0d") == [b"TWO\r"]
    assert d.pending == 0
    assert d.garbage_bytes == 0


def test_deframer_drops_garbage_and_resyncs_on_start_byte() -> None:
    d = MllpDeframer()
    out = d.feed(b"HTTP/1.1 400 Bad\r\n\x0bhalf a fr\x0bMSH|ok\r\x1c\x0dtrailing")
    assert out == [b"MSH|ok\r"]
    # "HTTP/1.1 400 Bad\r\n" (18) + "\x0bhalf a fr" (10) + "trailing" (8)
    assert d.garbage_bytes == 18 + 10 + 8
    assert d.pending == 0


def test_deframer_buffer_cap_drops_oversized_frame_and_recovers() -> None:
    d = MllpDeframer(max_frame=16)
    assert d.feed(b"\x0b" + b"A" * 40) == []
    assert d.overflows == 1
    assert d.pending == 0
    assert d.feed(b"B" * 10 + b"\x1c\x0d\x0bsmall\x1c\x0d") == [b"small"]
    assert d.overflows == 1


def test_deframer_cap_applies_to_frame_completed_in_one_chunk() -> None:
    d = MllpDeframer(max_frame=4)
    assert d.feed(b"\x0b123456\x1c\x0d\x0b1234\x1c\x0d") == [b"1234"]
    assert d.overflows == 1


_payload = st.binary(min_size=0, max_size=60).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
_garbage = st.binary(min_size=0, max_size=20).map(lambda b: b.replace(b"\x1c", b""))


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(_payload, min_size=1, max_size=8),
    garbage=st.lists(_garbage, min_size=9, max_size=9),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_deframer_property_random_splits_and_garbage(
    messages: list[bytes], garbage: list[bytes], cuts: list[int]
) -> None:
    """Any split of (garbage, frame)* yields exactly the frames, whatever the garbage (minus 0x1C)."""
    stream = b"".join(g + frame(m) for g, m in zip(garbage, messages, strict=False)) + garbage[-1]
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    d = MllpDeframer(max_frame=100)
    out: list[bytes] = []
    for c in chunks:
        out.extend(d.feed(c))
    assert out == messages
    assert d.overflows == 0


@settings(max_examples=200, deadline=None)
@given(noise=st.binary(max_size=300), cap=st.integers(min_value=2, max_value=64))
def test_deframer_property_arbitrary_bytes_never_exceed_cap(noise: bytes, cap: int) -> None:
    d = MllpDeframer(max_frame=cap)
    for i in range(0, len(noise), 7):
        for f in d.feed(noise[i : i + 7]):
            assert len(f) <= cap
        assert d.pending <= cap + 1
    # whatever came before, a clean frame afterwards is recovered
    assert d.feed(b"\x0bOK\x1c\x0d")[-1:] == [b"OK"]


# --- client ------------------------------------------------------------------------------------------


async def test_client_round_trip_on_one_connection_against_python_hl7() -> None:
    async with Hl7Ehr() as ehr:
        client = MllpClient(ehr.host, ehr.port, connect_timeout=2)
        try:
            for i in range(3):
                ack = parse_ack(await client.send(make_message(f"C{i}"), timeout=5))
                assert (ack.code, ack.control_id) == ("AA", f"C{i}")
            assert client.connections == 1
            assert ehr.control_ids == ["C0", "C1", "C2"]
            assert ehr.received[0].raw.rstrip(b"\r") == make_message("C0").rstrip(b"\r")
        finally:
            await client.close()


async def test_client_reconnects_to_peer_that_closes_after_every_ack() -> None:
    async with RawEhr(mode="AA_CLOSE") as ehr:
        client = MllpClient(ehr.host, ehr.port, connect_timeout=2)
        try:
            for i in range(4):
                ack = parse_ack(await client.send(make_message(f"K{i}"), timeout=5))
                assert ack.control_id == f"K{i}"
                await until(lambda: not client._reusable)  # the FIN arrived: the client must notice it
            assert client.connections == 4
            assert ehr.control_ids == ["K0", "K1", "K2", "K3"]
        finally:
            await client.close()


async def test_client_refused_is_peer_unavailable() -> None:
    ehr = RawEhr()
    await ehr.start()
    port = ehr.port
    await ehr.stop()
    client = MllpClient("127.0.0.1", port, connect_timeout=2)
    with pytest.raises(PeerUnavailableError, match=f"cannot connect to 127.0.0.1:{port}"):
        await client.send(make_message("R1"), timeout=1)


@pytest.mark.parametrize(
    ("mode", "error", "text"),
    [
        ("SILENT", PeerUnavailableError, "no ACK from"),
        ("CLOSE", PeerUnavailableError, "closed the connection before the ACK"),
        ("GARBLE", AckProtocolError, "not an MLLP frame"),
        ("RESET", PeerUnavailableError, "before the ACK"),
    ],
)
async def test_client_failures_are_typed_and_close_the_connection(mode: str, error: type, text: str) -> None:
    async with RawEhr(mode=mode) as ehr:
        client = MllpClient(ehr.host, ehr.port, connect_timeout=2)
        with pytest.raises(error, match=text):
            await client.send(make_message("F1"), timeout=0.3)
        assert not client.connected
        assert ehr.control_ids == ["F1"]
        ehr.mode = "AA"
        ack = parse_ack(await client.send(make_message("F2"), timeout=5))
        assert ack.control_id == "F2"
        assert client.connections == 2
        await client.close()


async def test_client_receive_reads_the_aa_that_follows_a_ca() -> None:
    async with Hl7Ehr(mode="CA_AA") as ehr:
        client = MllpClient(ehr.host, ehr.port)
        first = parse_ack(await client.send(make_message("Q1"), timeout=5))
        second = parse_ack(await client.receive(timeout=5))
        assert [(first.code, first.control_id), (second.code, second.control_id)] == [
            ("CA", "Q1"),
            ("AA", "Q1"),
        ]
        await client.close()


def test_msh10_helper() -> None:
    assert msh10(make_message("ABC-1")) == "ABC-1"
