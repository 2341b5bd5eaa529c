"""Issue #10 item 2: whoever can write to a cart's share must not make the agent write, create, read or move
anything outside it. Each attack of the hostile trial is reproduced on a real directory: a planted
``failed/<name>.reason.txt`` link (dangling: the agent created a file outside; to an existing file: it
overwrote it), a planted ``processed/<name>`` link, ``processed/`` itself a link, a link or FIFO in the
folder, and a file swapped for a link to ``/dev/zero``, to a 300 MB file or for a FIFO between the scan
and the read. The folder transport and ``scp-ecg-serial``'s ``save_folder`` never follow a link they did
not create (``O_NOFOLLOW``/``O_EXCL`` relative to directory descriptors) and never read past
``max_file_bytes``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kit import FakeRuntime
from tests.test_ecg_fixtures import ctx, driver, synthetic_scp
from tests.test_ecg_folder import later, make, polls
from vitals_agent.drivers.base import transport_class
from vitals_agent.drivers.ecg import safefs
from vitals_agent.drivers.ecg.folder import FolderTransport, _Dirs, _Entry
from vitals_agent.drivers.ecg.serial_file import SerialFileTransport
from vitals_agent.errors import DeviceNotFoundError

BAD = b"not an SCP record at all, but long enough to have a header" * 2


def outside_tree(tmp_path: Path) -> tuple[Path, Path]:
    """The cart's share and a folder outside it the attacker wants the agent to touch."""
    share, outside = tmp_path / "share", tmp_path / "outside"
    share.mkdir()
    outside.mkdir()
    (outside / "victim.txt").write_text("precious\n")
    return share, outside


def regular(path: Path) -> list[str]:
    """Regular files (not links) in ``path``."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_file() and not p.is_symlink())


def links_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_symlink())


def outside_unchanged(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert (outside / "victim.txt").read_text() == "precious\n"


# ------------------------------------------------------------------------------------- planted links


async def test_planted_dangling_reason_link_creates_nothing_outside(tmp_path: Path) -> None:
    share, outside = outside_tree(tmp_path)
    (share / "failed").mkdir()
    (share / "failed" / "bad.scp.reason.txt").symlink_to(outside / "created.txt")
    (share / "bad.scp").write_bytes(BAD)
    transport, runtime = make("scp-ecg", share, incomplete_timeout_seconds=0.01)
    await polls(transport, 2)
    later(transport, 0.02)
    await polls(transport, 1)
    outside_unchanged(outside)
    # the file went to failed/ under a free name with its reason next to it; the planted link is untouched
    assert regular(share / "failed") == ["bad-1.scp", "bad-1.scp.reason.txt"]
    assert "SCP" in (share / "failed" / "bad-1.scp.reason.txt").read_text()
    assert links_in(share / "failed") == ["bad.scp.reason.txt"]
    assert runtime.counters == {"files_failed": 1, "files_skipped": 1}  # the planted link is reported


async def test_planted_reason_links_to_an_existing_file_never_overwrite_it(tmp_path: Path) -> None:
    share, outside = outside_tree(tmp_path)
    (share / "failed").mkdir()
    # The trial's overwrite: the agent skipped bad.scp (its reason name existed) but wrote bad-1's reason
    # through the second link without checking it.
    for name in ("bad.scp.reason.txt", "bad-1.scp.reason.txt", "bad-2.scp"):
        (share / "failed" / name).symlink_to(outside / "victim.txt")
    (share / "bad.scp").write_bytes(BAD)
    transport, runtime = make("scp-ecg", share, incomplete_timeout_seconds=0.01)
    await polls(transport, 2)
    later(transport, 0.02)
    await polls(transport, 1)
    outside_unchanged(outside)
    assert regular(share / "failed") == ["bad-3.scp", "bad-3.scp.reason.txt"]
    assert links_in(share / "failed") == ["bad-1.scp.reason.txt", "bad-2.scp", "bad.scp.reason.txt"]
    assert runtime.counters == {"files_failed": 1, "files_skipped": 3}


async def test_planted_processed_link_is_not_replaced_or_followed(tmp_path: Path) -> None:
    share, outside = outside_tree(tmp_path)
    (share / "processed").mkdir()
    (share / "processed" / "ecg.scp").symlink_to(outside / "victim.txt")
    (share / "ecg.scp").write_bytes(synthetic_scp())
    transport, runtime = make("scp-ecg", share)
    await polls(transport, 3)
    outside_unchanged(outside)
    assert len(runtime.readings) == 1
    assert regular(share / "processed") == ["ecg-1.scp"]
    assert (share / "processed" / "ecg-1.scp").read_bytes() == synthetic_scp()
    assert runtime.counters == {"files_skipped": 1}


@pytest.mark.parametrize("sub", ["processed", "failed"])
async def test_processed_or_failed_being_a_link_is_refused(tmp_path: Path, sub: str) -> None:
    share, outside = outside_tree(tmp_path)
    (share / sub).symlink_to(outside, target_is_directory=True)
    (share / "ecg.scp").write_bytes(synthetic_scp())
    transport, runtime = make("scp-ecg", share)
    with pytest.raises(
        DeviceNotFoundError, match=rf"{sub}/ is a symbolic link, not a directory; not followed"
    ):
        await transport.run()
    with pytest.raises(DeviceNotFoundError):
        await transport.poll_once()
    outside_unchanged(outside)
    assert runtime.readings == [] and regular(share) == ["ecg.scp"]
    assert runtime.counters == {"files_skipped": 1}  # reported once, not on every retry


# ------------------------------------------------------------------------------------- entries in the folder


async def test_links_and_fifos_in_the_folder_are_skipped_and_reported_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    share, outside = outside_tree(tmp_path)
    (outside / "real.scp").write_bytes(synthetic_scp())
    (share / "link.scp").symlink_to(outside / "real.scp")
    (share / "zero.scp").symlink_to("/dev/zero")
    os.mkfifo(share / "pipe.scp")
    (share / "good.scp").write_bytes(synthetic_scp())
    transport, runtime = make("scp-ecg", share, incomplete_timeout_seconds=0.01)
    await asyncio.wait_for(polls(transport, 6), 10)  # a FIFO never blocks a pass
    assert len(runtime.readings) == 1 and regular(share / "processed") == ["good.scp"]
    assert sorted(p.name for p in share.iterdir()) == [
        "failed",
        "link.scp",
        "pipe.scp",
        "processed",
        "zero.scp",
    ]
    assert (outside / "real.scp").read_bytes() == synthetic_scp()
    assert runtime.counters == {"files_skipped": 3}
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "[warning  ] ecg.entry_skipped " in line]
    assert len(skipped) == 3  # once per name, not once per pass
    assert sum("kind=FIFO" in line for line in skipped) == 1
    assert sum("kind='symbolic link'" in line for line in skipped) == 2
    loud = [line for line in out.splitlines() if "[debug" not in line]
    assert not any("link.scp" in line for line in loud)  # names may carry patient data: DEBUG only


# ------------------------------------------------------------------------------------- swapped files


def swap_after_scan(transport: FolderTransport, swap: Callable[[], None]) -> None:
    """Run ``swap`` right after the next scan, i.e. between the check and the read."""
    real = transport._candidates

    def candidates(dirs: _Dirs) -> tuple[list[_Entry], set[str]]:
        found = real(dirs)
        if transport._seen:  # the file has been seen once: this is the pass that reads it
            swap()
        return found

    transport._candidates = candidates  # type: ignore[method-assign]


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    real_pread = os.pread

    def pread(fd: int, size: int, offset: int) -> bytes:
        data = real_pread(fd, size, offset)
        reads.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", pread)
    return reads


@pytest.mark.parametrize("kind", ["dev-zero", "big-outside", "fifo"])
async def test_file_swapped_between_check_and_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    share, outside = outside_tree(tmp_path)
    target = share / "ecg.scp"
    target.write_bytes(synthetic_scp())
    big = outside / "big.scp"

    def swap() -> None:
        target.unlink()
        if kind == "dev-zero":
            target.symlink_to("/dev/zero")
        elif kind == "big-outside":
            with big.open("wb") as fh:
                fh.truncate(300 * 1024 * 1024)  # sparse
            target.symlink_to(big)
        else:
            os.mkfifo(target)

    transport, runtime = make("scp-ecg", share)
    swap_after_scan(transport, swap)
    reads = _count_reads(monkeypatch)
    await asyncio.wait_for(polls(transport, 4), 10)
    assert runtime.readings == [] and runtime.failures == []
    assert sum(reads) == 0  # nothing read through the swapped name
    assert runtime.counters == {"files_skipped": 1}
    assert target.is_symlink() or target.is_fifo()  # left where it is, not moved or followed
    assert regular(share / "processed") == regular(share / "failed") == []


async def test_file_swapped_for_a_bigger_file_is_never_read_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    share, _outside = outside_tree(tmp_path)
    target = share / "ecg.scp"
    target.write_bytes(synthetic_scp())

    def swap() -> None:
        tmp = share / ".swap"
        with tmp.open("wb") as fh:
            fh.truncate(300 * 1024 * 1024)
        os.replace(tmp, target)

    transport, runtime = make("scp-ecg", share, max_file_bytes=4096)
    swap_after_scan(transport, swap)
    reads = _count_reads(monkeypatch)
    await polls(transport, 3)
    assert runtime.readings == []
    assert sum(reads) == 0  # its descriptor said 300 MB: refused before reading
    assert (share / "failed" / "ecg.scp.reason.txt").read_text() == (
        f"file too large ({300 * 1024 * 1024} bytes > max_file_bytes 4096)\n"
    )
    assert runtime.counters == {"files_failed": 1}


def test_a_file_that_grows_after_its_check_is_read_to_the_limit_plus_one(tmp_path: Path) -> None:
    path = tmp_path / "growing.scp"
    path.write_bytes(b"x" * 100)
    dir_fd = safefs.open_dir(tmp_path)
    try:
        with safefs.open_regular(dir_fd, "growing.scp") as handle:
            assert handle.st.st_size == 100
            with path.open("ab") as fh:
                fh.write(b"y" * 10_000_000)  # grows after the fstat
            assert len(handle.read_at_most(1000)) == 1001
        with pytest.raises(safefs.TooLargeError):
            safefs.read_regular(dir_fd, "growing.scp", 1000)
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------------------------- names


def test_long_names_fit_name_max_with_counter_and_reason_suffix(tmp_path: Path) -> None:
    name = "E" * 251 + ".scp"  # 255 bytes: the longest legal name
    fitted = safefs.fit_name(name, len(safefs.REASON_SUFFIX))
    assert len(os.fsencode(fitted + safefs.REASON_SUFFIX)) == 255 and fitted.endswith(".scp")
    assert safefs.fit_name("short.scp", 11) == "short.scp"
    odd = os.fsdecode(b"\xff" * 200 + "é".encode() * 30 + b".xml")  # non-UTF-8 bytes and multi-byte chars
    fitted = safefs.fit_name(odd, 11)
    assert len(os.fsencode(fitted)) <= 244 and fitted.endswith(".xml")
    assert safefs.fit_name("E" * 252 + ".scp", 0) != safefs.fit_name("F" * 252 + ".scp", 0)
    dir_fd = safefs.open_dir(tmp_path)
    try:
        assert safefs.write_new(dir_fd, name, b"1") == name
        second = safefs.write_new(dir_fd, name, b"2")  # "-1" added: shortened to fit
        assert second != name and len(os.fsencode(second)) <= 255
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------------------------- scp-ecg-serial


def test_serial_save_folder_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    share, outside = outside_tree(tmp_path)
    drv = driver("scp-ecg-serial", port="/dev/null", save_folder=str(share))
    runtime = FakeRuntime(drv, ctx=ctx())
    transport = transport_class("ecg-serial-file")(runtime)
    assert isinstance(transport, SerialFileTransport)
    (share / "processed").mkdir()
    (share / "failed").mkdir()
    (share / "processed" / "a.scp").symlink_to(outside / "victim.txt")
    (share / "failed" / "b.scp").symlink_to(outside / "new.scp")
    (share / "failed" / "b.scp.reason.txt").symlink_to(outside / "victim.txt")
    transport._save(b"ONE", "a.scp", "sent", "")
    transport._save(b"TWO", "b.scp", "failed", "SCP record CRC mismatch")
    outside_unchanged(outside)
    assert (share / "processed" / "a-1.scp").read_bytes() == b"ONE"
    assert (share / "failed" / "b-1.scp").read_bytes() == b"TWO"
    assert (share / "failed" / "b-1.scp.reason.txt").read_text() == "SCP record CRC mismatch\n"
    os.unlink(share / "failed" / "b.scp")
    (share / "failed").rename(share / "failed.old")
    (share / "failed").symlink_to(outside, target_is_directory=True)
    transport._save(b"THREE", "c.scp", "failed", "x")
    outside_unchanged(outside)
    assert runtime.counters == {"files_skipped": 4}  # three planted links, then failed/ itself a link
