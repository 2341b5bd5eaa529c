"""The ``folder`` transport on a real directory: one reading per dropped file, files being written are
waited for (also across a restart), nothing is sent twice (also after a crash between the hand-over and
the move), and every bad file ends in failed/ with a one-line reason while the transport keeps running."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.kit import FakeRuntime, MemoryState, readings_in, running, until
from tests.test_ecg_fixtures import (
    BILLION_LAUGHS,
    ctx,
    driver,
    scp_record,
    scp_section1,
    scp_section7,
    synthetic_aecg,
    synthetic_philips_104,
    synthetic_scp,
)
from vitals_agent.drivers.base import transport_class
from vitals_agent.drivers.ecg.folder import FolderTransport
from vitals_agent.errors import OutboxFullError
from vitals_agent.models import DeviceEvent

POLL = 0.02


def make(
    name: str,
    watched: Path,
    *,
    state: MemoryState | None = None,
    accepted: list[DeviceEvent] | None = None,
    **kw: Any,
) -> tuple[FolderTransport, FakeRuntime]:
    options = {"folder": str(watched), "poll_seconds": POLL, **kw}
    after = options.pop("after_emit", None)
    runtime = FakeRuntime(driver(name, **options), ctx=ctx(), state=state, events=accepted, after_emit=after)
    transport = transport_class("folder")(runtime)
    assert isinstance(transport, FolderTransport)
    return transport, runtime


async def polls(transport: FolderTransport, n: int) -> None:
    """Make the transport pass over the folder ``n`` more times."""
    for _ in range(n):
        await transport.poll_once()


async def passes(transport: FolderTransport, n: int) -> None:
    """Wait until the running transport has passed over the folder ``n`` more times."""
    target = transport.passes + n
    await until(lambda: transport.passes >= target, what=f"{n} more passes over the folder")


def later(transport: FolderTransport, seconds: float) -> None:
    """Move the transport's clock on by ``seconds``: half-written files age without the test sleeping."""
    previous = transport.monotonic
    transport.monotonic = lambda: previous() + seconds


def listing(path: Path) -> list[str]:
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_file())


async def test_dropped_file_gives_exactly_one_reading(tmp_path: Path) -> None:
    transport, runtime = make("scp-ecg", tmp_path, attach_original=True)
    data = synthetic_scp()
    (tmp_path / "notes.txt").write_text("not an ECG")  # pattern *.scp: ignored
    async with running(transport) as task:
        (tmp_path / "ECG0001.SCP").write_bytes(data)  # the pattern is matched case-insensitively
        await until(lambda: listing(tmp_path / "processed") == ["ECG0001.SCP"])
        await passes(transport, 5)
        assert not task.done()
    assert len(runtime.readings) == 1
    reading = runtime.readings[0]
    assert reading.values()["ecg_pr_interval"] == 160
    assert reading.attachments[0].name == "ECG0001.SCP" and reading.attachments[0].data == data
    assert listing(tmp_path) == ["notes.txt"]
    assert listing(tmp_path / "failed") == []
    assert runtime.connections[0] == (True, f"watching {tmp_path}")
    assert runtime.connections[-1] == (False, "stopped")


async def test_restart_while_the_file_is_being_written_sends_once(tmp_path: Path) -> None:
    state, accepted = MemoryState(), list[DeviceEvent]()
    data = synthetic_scp()
    target = tmp_path / "ecg.scp"
    target.write_bytes(data[: len(data) // 2])  # the cart is still writing
    first, _ = make("scp-ecg", tmp_path, state=state, accepted=accepted)
    await polls(first, 5)  # the size is stable, but shorter than the SCP header says: waited for
    assert accepted == [] and listing(tmp_path) == ["ecg.scp"]
    # the agent restarts; meanwhile the cart finishes the file
    with target.open("ab") as fh:
        fh.write(data[len(data) // 2 :])
    second, _ = make("scp-ecg", tmp_path, state=state, accepted=accepted)
    await polls(second, 3)
    third, _ = make("scp-ecg", tmp_path, state=state, accepted=accepted)
    await polls(third, 3)
    assert len(accepted) == 1
    assert readings_in(accepted)[0].raw == data
    assert listing(tmp_path / "processed") == ["ecg.scp"]


async def test_half_written_xml_is_waited_for(tmp_path: Path) -> None:
    data = synthetic_philips_104()
    target = tmp_path / "ecg.xml"
    target.write_bytes(data[: len(data) // 2])
    transport, runtime = make("philips-xml", tmp_path)
    await polls(transport, 5)
    assert runtime.readings == [] and listing(tmp_path) == ["ecg.xml"]
    target.write_bytes(data)
    await polls(transport, 3)
    assert len(runtime.readings) == 1
    assert listing(tmp_path / "failed") == []


async def test_state_is_written_before_the_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash *in* the move (after the durable hand-over): the restart finds the file and does not re-send."""
    state, accepted = MemoryState(), list[DeviceEvent]()
    (tmp_path / "a.scp").write_bytes(synthetic_scp())
    first, _ = make("scp-ecg", tmp_path, state=state, accepted=accepted)

    def no_rename(*_args: Any, **_kw: Any) -> None:
        raise KeyboardInterrupt  # the process dies inside the move

    monkeypatch.setattr(os, "rename", no_rename)
    with pytest.raises(KeyboardInterrupt):
        await polls(first, 3)
    monkeypatch.undo()
    assert len(accepted) == 1 and listing(tmp_path) == ["a.scp"]
    second, _ = make("scp-ecg", tmp_path, state=state, accepted=accepted)
    await polls(second, 3)
    assert len(accepted) == 1
    assert listing(tmp_path / "processed") == ["a.scp"]


async def test_same_file_dropped_twice_is_sent_once(tmp_path: Path) -> None:
    transport, runtime = make("scp-ecg", tmp_path)
    data = synthetic_scp()
    (tmp_path / "x.scp").write_bytes(data)
    await polls(transport, 3)
    (tmp_path / "x.scp").write_bytes(data)
    await polls(transport, 3)
    assert len(runtime.readings) == 1
    assert listing(tmp_path / "processed") == ["x-1.scp", "x.scp"]
    assert [o.status for o in transport.outcomes] == ["sent", "duplicate"]


async def test_outbox_refusal_leaves_the_file_for_a_retry(tmp_path: Path) -> None:
    transport, runtime = make("scp-ecg", tmp_path)
    calls = 0
    real_emit = runtime.emit

    async def flaky_emit(event: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OutboxFullError("disk full")
        await real_emit(event)

    runtime.emit = flaky_emit  # type: ignore[method-assign]
    (tmp_path / "x.scp").write_bytes(synthetic_scp())
    await polls(transport, 2)
    assert runtime.readings == [] and listing(tmp_path) == ["x.scp"]
    await polls(transport, 1)
    assert len(runtime.readings) == 1 and listing(tmp_path / "processed") == ["x.scp"]


# ------------------------------------------------------------------------------------------- bad files


def _truncated() -> bytes:
    return synthetic_scp()[:-25]


def _bad_crc() -> bytes:
    data = bytearray(synthetic_scp())
    data[0] ^= 0x55
    return bytes(data)


def _unknown_scp_version() -> bytes:
    return scp_record({1: scp_section1(), 7: scp_section7()}, version=77)


BAD_FILES = [
    ("scp-ecg", "truncated.scp", _truncated, "SCP record truncated"),
    ("scp-ecg", "badcrc.scp", _bad_crc, "SCP record CRC mismatch"),
    ("scp-ecg", "version.scp", _unknown_scp_version, "SCP-ECG protocol version 77 is not supported"),
    ("aecg-xml", "invalid.xml", lambda: b"<AnnotatedECG><oops></AnnotatedECG>", "invalid aECG XML"),
    ("aecg-xml", "bomb.xml", lambda: BILLION_LAUGHS, "refused"),
    (
        "philips-xml",
        "future.xml",
        lambda: synthetic_philips_104("9.99"),
        "Files of type PhilipsECG 9.99 are unsupported",
    ),
]


@pytest.mark.parametrize(("name", "filename", "content", "reason"), BAD_FILES, ids=[b[1] for b in BAD_FILES])
async def test_bad_file_goes_to_failed_with_a_reason(
    tmp_path: Path, name: str, filename: str, content: Callable[[], bytes], reason: str
) -> None:
    transport, runtime = make(name, tmp_path, incomplete_timeout_seconds=0.05)
    async with running(transport) as task:
        (tmp_path / filename).write_bytes(content())
        await until(lambda: (tmp_path / "failed" / f"{filename}.reason.txt").exists())
        # still running: a good file afterwards is processed
        good = (
            synthetic_scp()
            if name == "scp-ecg"
            else (synthetic_aecg() if name == "aecg-xml" else synthetic_philips_104())
        )
        (tmp_path / f"good{Path(filename).suffix}").write_bytes(good)
        await until(lambda: len(runtime.readings) == 1)
        assert not task.done()
    lines = (tmp_path / "failed" / f"{filename}.reason.txt").read_text().splitlines()
    assert len(lines) == 1 and reason in lines[0]
    assert listing(tmp_path / "failed") == [filename, f"{filename}.reason.txt"]
    assert len(runtime.failures) == 1


async def test_two_gigabyte_file_is_refused_by_size_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = tmp_path / "huge.scp"
    with huge.open("wb") as fh:
        fh.truncate(2 * 1024**3)  # sparse: no disk space used
    opened: list[str] = []
    real_open = os.open

    def spy_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    transport, runtime = make("scp-ecg", tmp_path)
    await polls(transport, 3)
    reason = (tmp_path / "failed" / "huge.scp.reason.txt").read_text()
    assert reason == f"file too large ({2 * 1024**3} bytes > max_file_bytes {16 * 1024 * 1024})\n"
    assert "huge.scp" not in opened
    assert runtime.readings == [] and len(runtime.failures) == 1


async def test_empty_file_fails_only_after_the_incomplete_timeout(tmp_path: Path) -> None:
    transport, _ = make("scp-ecg", tmp_path, incomplete_timeout_seconds=3600)
    (tmp_path / "empty.scp").write_bytes(b"")
    await polls(transport, 3)
    assert listing(tmp_path) == ["empty.scp"]  # a cart may create the file first and write later
    transport2, _ = make("scp-ecg", tmp_path, incomplete_timeout_seconds=0.01)
    await polls(transport2, 2)
    later(transport2, 0.02)
    await polls(transport2, 1)
    assert (tmp_path / "failed" / "empty.scp.reason.txt").read_text() == "empty file\n"


async def test_missing_folder_is_a_device_not_found(tmp_path: Path) -> None:
    from vitals_agent.errors import DeviceNotFoundError

    transport, _ = make("scp-ecg", tmp_path / "nope")
    with pytest.raises(DeviceNotFoundError, match="does not exist"):
        await transport.run()


def test_temporary_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    transport, _ = make("aecg-xml", tmp_path)
    for name in ("a.xml.part", ".b.xml", "c.xml.tmp", "d.xml"):
        (tmp_path / name).write_text("x")
    os.mkdir(tmp_path / "e.xml")
    dirs = transport._open_dirs()
    try:
        assert [c.name for c in transport._candidates(dirs)[0]] == ["d.xml"]
    finally:
        dirs.close()


def test_config_keys(tmp_path: Path) -> None:
    from vitals_agent.config.schema import load_config
    from vitals_agent.errors import ConfigError

    def cfg(device: str) -> Path:
        path = tmp_path / "agent.toml"
        path.write_text(f'[agent]\nfacility = "X"\nlocation = "A^B"\n[[devices]]\nid = "ekg"\n{device}\n')
        return path

    keys = 'folder = "/srv/ekg"\npattern = "*.XML"\nattach_report = true\nattach_original = true'
    loaded = load_config(cfg(f'driver = "aecg-xml"\n{keys}'))
    options = loaded.devices[0].options
    assert options.model_dump() == {
        "folder": "/srv/ekg",
        "pattern": "*.XML",
        "attach_original": True,
        "attach_max_bytes": 10 * 1024 * 1024,
        "max_file_bytes": 16 * 1024 * 1024,
        "poll_seconds": 2.0,
        "incomplete_timeout_seconds": 600.0,
        "attach_report": True,
        "unitless_interval_unit": None,
    }
    with pytest.raises(ConfigError, match=r"devices\[0\]\.folder: required"):
        load_config(cfg('driver = "scp-ecg"'))
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(cfg('driver = "philips-xml"\nfolder = "/x"\nunitless_interval_unit = "ms"'))
    serial = load_config(cfg('driver = "scp-ecg-serial"\nport = "/dev/ttyS0"\nidle_gap_seconds = 1.5'))
    assert serial.devices[0].options.model_dump()["idle_gap_seconds"] == 1.5
