"""SCP-ECG over RS-232: the pure framer (record length, idle gap) and the ``ecg-serial-file`` transport
on a real pseudo-terminal (pyserial-asyncio-fast, opened by the serial transport's own code)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import FakeRuntime, until
from tests.test_ecg_fixtures import (
    ctx,
    driver,
    scp_record,
    scp_section1,
    scp_section7,
    synthetic_scp,
)
from vitals_agent.drivers.base import DecodeFailure, transport_class
from vitals_agent.drivers.ecg.framing import ScpFileFramer
from vitals_agent.drivers.ecg.serial_file import SerialFileTransport
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.errors import TruncatedError
from vitals_agent.models import Reading

ONE = synthetic_scp()
TWO = scp_record({1: scp_section1(pid="MRN-43"), 7: scp_section7(rr=1000, vent_rate=60)})


def framer() -> ScpFileFramer:
    drv = driver("scp-ecg-serial", port="/dev/null")
    decoder = drv.stream_decoder(ctx())
    assert isinstance(decoder, ScpFileFramer)
    return decoder


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(ONE) + len(TWO) - 1), max_size=12, unique=True))
def test_records_are_cut_by_their_header_length_at_any_chunking(cuts: list[int]) -> None:
    stream = ONE + TWO
    bounds = [0, *sorted(cuts), len(stream)]
    f = framer()
    files = [file for a, b in itertools.pairwise(bounds) for file in f.frames(stream[a:b])]
    assert files == [ONE, TWO]
    assert f.pending() == b""


def test_feed_decodes_and_idle_flushes_unframed_bytes() -> None:
    f = framer()
    out = f.feed(ONE + b"junk without a header")
    assert len(out) == 1 and isinstance(out[0], Reading)
    assert out[0].source_patient is not None and out[0].source_patient.mrn == "MRN-42"
    rest = f.idle()
    assert rest == b"junk without a header"
    failure = f.decode(rest)
    assert isinstance(failure, DecodeFailure)
    assert f.idle() is None


def test_half_record_then_idle_is_a_truncated_file() -> None:
    f = framer()
    assert not f.inside_record()
    assert f.frames(ONE[:100]) == []
    assert f.inside_record()  # the transport waits record_timeout_seconds, not just the idle gap
    rest = f.idle()
    assert rest == ONE[:100]
    failure = f.decode(rest)
    assert isinstance(failure, DecodeFailure) and isinstance(failure.error, TruncatedError)


def test_unframed_input_is_capped() -> None:
    drv = driver("scp-ecg-serial", port="/dev/null", max_file_bytes=1000)
    f = drv.stream_decoder(ctx())
    assert isinstance(f, ScpFileFramer)
    assert f.frames(b"x" * 999) == []
    assert f.frames(b"yy") == [b"x" * 999 + b"yy"]
    assert f.pending() == b""


async def test_transport_on_a_pty(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    with PtyDevice(tmp_path / "ttyECG") as device:
        drv = driver("scp-ecg-serial", port=str(device.link), idle_gap_seconds=0.2, save_folder=str(saved))
        runtime = FakeRuntime(drv, ctx=ctx())
        transport = transport_class("ecg-serial-file")(runtime)
        assert isinstance(transport, SerialFileTransport)
        task = asyncio.create_task(transport.run())
        try:
            await runtime.wait_until(lambda _: bool(runtime.connections))
            for i in range(0, len(ONE), 700):  # the cart sends in bursts
                await device.write(ONE[i : i + 700])
                await asyncio.sleep(0.01)  # the cart's pause between bursts
            await runtime.wait_until(lambda _: len(runtime.readings) == 1)
            await device.write(b"\r\nGARBAGE LINE NOISE\r\n")  # no SCP header: ends at the idle gap
            await runtime.wait_until(lambda _: len(runtime.failures) == 1)
            await device.write(TWO + ONE)  # back to back; ONE again is a duplicate: not re-sent
            await runtime.wait_until(lambda _: transport.files == 4)
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert [r.source_patient.mrn for r in runtime.readings if r.source_patient] == ["MRN-42", "MRN-43"]
    assert runtime.readings[0].raw == ONE
    processed = sorted((saved / "processed").iterdir())
    failed = sorted(p.name for p in (saved / "failed").iterdir())
    assert len(processed) == 3  # ONE, TWO and the duplicate ONE are kept
    assert len(failed) == 2 and failed[1].endswith(".scp.reason.txt")
    reason = (saved / "failed" / failed[1]).read_text()
    assert reason.count("\n") == 1 and "SCP record" in reason
    assert runtime.connections[0][0] is True and runtime.connections[-1][0] is False


class _ChunkAsTheStopComes:
    """A port that delivers one chunk, and the agent's stop (``stop``) arrives in that same loop turn."""

    def __init__(self) -> None:
        self.chunk: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.stop: Callable[[], object] = lambda: None
        self.closed = False

    def describe(self) -> str:
        return "chunk then stop"

    async def read(self) -> bytes:
        if not self.chunk.done():
            return await self.chunk
        self.stop()  # the reader has just queued the chunk: the main loop is about to take it
        await asyncio.Event().wait()
        return b""

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


async def test_a_stop_that_comes_as_a_chunk_arrives_stops_the_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On Python 3.11 asyncio.wait_for around queue.get() returned the chunk and dropped the cancel: the
    # transport read on past the agent's stop (which waited its 2 s and logged agent.tasks_not_stopped).
    link = _ChunkAsTheStopComes()

    async def open_link(self: SerialFileTransport, url: str) -> _ChunkAsTheStopComes:
        return link

    monkeypatch.setattr(SerialFileTransport, "_open", open_link)
    runtime = FakeRuntime(driver("scp-ecg-serial", port="socket://127.0.0.1:9"), ctx=ctx())
    task = asyncio.create_task(transport_class("ecg-serial-file")(runtime).run())
    link.stop = task.cancel
    await runtime.wait_until(lambda _: bool(runtime.connections))
    link.chunk.set_result(ONE[:100])
    await until(task.done, what="the transport to stop")
    assert task.cancelled()
    assert link.closed
    assert runtime.connections[-1] == (False, "stopped")
