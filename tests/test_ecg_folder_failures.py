"""One EKG file never wedges its folder (issue #10 item 9 and its minor, issue #11 item 8).

* A file name with a non-UTF-8 byte and ``attach_original = true`` crashed the device task in a loop (116
  restarts a minute) and later files were never sent: the name now reaches the message as printable text,
  and any failure to build the message sends the file to ``failed/`` with a reason.
* A 255-byte file name can still be moved to ``processed/`` (with a ``-1`` counter) and to ``failed/``
  (whose ``.reason.txt`` would overflow NAME_MAX).
* Files wrong from their header (length over ``max_file_bytes``, wrong magic or version) go to ``failed/``
  at once, not after ``incomplete_timeout_seconds``, each with one INFO line and counted.

The first two run the agent's real pipeline (normalise, ORU builder, outbox) in process.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.oracle import validate_oru
from tests.test_ecg_fixtures import (
    driver,
    scp_record,
    scp_section1,
    scp_section7,
    synthetic_aecg,
    synthetic_philips_104,
    synthetic_scp,
)
from tests.test_ecg_folder import make, polls
from vitals_agent.agent.pipeline import flow as pipeline_module
from vitals_agent.agent.service import AgentService
from vitals_agent.config.schema import parse_config
from vitals_agent.drivers.base import transport_class
from vitals_agent.drivers.ecg.folder import FolderTransport
from vitals_agent.logs import setup_logging


def regular(path: Path) -> list[bytes]:
    """Names (as bytes: some are not UTF-8) of the regular files in ``path``."""
    return sorted(os.fsencode(p.name) for p in path.iterdir() if p.is_file() and not p.is_symlink())


@pytest.fixture
def service(tmp_path: Path) -> Iterator[AgentService]:
    share = tmp_path / "share"
    share.mkdir()
    config = parse_config(
        {
            "agent": {
                "facility": "EXCLINIC",
                "location": "CLINIC^ROOM12",
                "data_dir": str(tmp_path / "data"),
            },
            "control": {"enabled": False},
            "devices": [
                {
                    "id": "ekg-1",
                    "driver": "scp-ecg",
                    "folder": str(share),
                    "attach_original": True,
                    "poll_seconds": 0.01,
                }
            ],
        }
    )
    svc = AgentService(config)
    yield svc
    svc.outbox.close()
    svc.patients.close()
    svc.audit.close()


def folder_of(service: AgentService) -> tuple[FolderTransport, Path]:
    runtime = service.runtimes["ekg-1"]
    transport = transport_class("folder")(runtime)
    assert isinstance(transport, FolderTransport)
    return transport, transport.folder


async def test_non_utf8_file_name_with_attach_original_is_sent_not_a_crash_loop(
    service: AgentService,
) -> None:
    transport, share = folder_of(service)
    odd = os.fsdecode(b"ECG\xff01.scp")  # a cart on a Latin-1 share
    (share / odd).write_bytes(synthetic_scp())
    (share / "next.scp").write_bytes(synthetic_scp(rr=1000, vent_rate=60))
    await polls(transport, 3)  # before: UnicodeEncodeError out of the ORU builder, every pass
    queued = service.outbox.list_queued()
    assert len(queued) == 2, "the odd name does not hold back the next file"
    [first] = [m for m in queued if b"Attachment: ECG\xef\xbf\xbd01.scp" in m.body]
    validate_oru(first.body.decode("utf-8"))
    assert regular(share / "processed") == [b"ECG\xff01.scp", b"next.scp"]  # the original name, unchanged
    assert regular(share / "failed") == []


async def test_any_message_build_error_sends_the_file_to_failed(
    service: AgentService, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport, share = folder_of(service)

    def broken_builder(*_args: Any, **_kwargs: Any) -> bytes:
        raise KeyError("a bug in the builder")

    monkeypatch.setattr(pipeline_module, "oru_message", broken_builder)
    (share / "a.scp").write_bytes(synthetic_scp())
    await polls(transport, 3)
    assert service.outbox.depth() == 0 and service.pipeline.refused == 1
    assert regular(share / "failed") == [b"a.scp", b"a.scp.reason.txt"]
    assert (share / "failed" / "a.scp.reason.txt").read_text() == (
        "refused by the agent: the message could not be built (KeyError)\n"
    )
    assert service.runtimes["ekg-1"].status.counters == {"files_failed": 1}
    monkeypatch.undo()
    (share / "b.scp").write_bytes(synthetic_scp(rr=1000))
    await polls(transport, 3)
    assert service.outbox.depth() == 1  # the folder carries on


async def test_an_unexpected_hand_over_error_fails_the_file_after_three_tries(tmp_path: Path) -> None:
    transport, runtime = make("scp-ecg", tmp_path)
    calls = 0

    async def crashing_emit(_event: Any) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug behind emit")

    runtime.emit = crashing_emit  # type: ignore[method-assign,assignment]
    (tmp_path / "x.scp").write_bytes(synthetic_scp())
    await polls(transport, 3)  # seen, then two failed hand-overs: still waiting in the folder
    assert calls == 2 and regular(tmp_path) == [b"x.scp"]
    await polls(transport, 1)
    assert calls == 3
    assert (tmp_path / "failed" / "x.scp.reason.txt").read_text() == (
        "internal error while handing the reading over (RuntimeError), 3 attempts\n"
    )


async def test_255_byte_names_go_to_processed_and_failed(tmp_path: Path) -> None:
    transport, runtime = make("scp-ecg", tmp_path, incomplete_timeout_seconds=0.01)
    longest = "P" * 251 + ".scp"  # 255 bytes, the longest name the file system allows
    (tmp_path / longest).write_bytes(synthetic_scp())
    await polls(transport, 2)
    (tmp_path / longest).write_bytes(synthetic_scp())  # dropped again: a duplicate, "-1" must still fit
    await polls(transport, 2)
    processed = regular(tmp_path / "processed")
    assert len(processed) == 2 and os.fsencode(longest) in processed
    assert all(len(n) <= 255 and n.endswith(b".scp") for n in processed)
    assert [o.status for o in transport.outcomes] == ["sent", "duplicate"]
    bad = "F" * 251 + ".scp"
    (tmp_path / bad).write_bytes(b"\x00" * 10)  # no plausible SCP header: decoded and failed
    await polls(transport, 2)
    failed = regular(tmp_path / "failed")
    assert len(failed) == 2 and failed[1] == failed[0] + b".reason.txt" and len(failed[1]) == 255
    assert failed[0].startswith(b"F" * 200) and failed[0].endswith(b".scp")
    assert regular(tmp_path) == [] and len(runtime.readings) == 1


# ------------------------------------------------------------------------------------ wrong from the header


def _scp_announcing(length: int) -> bytes:
    data = bytearray(synthetic_scp())
    struct.pack_into("<I", data, 2, length)
    return bytes(data)


def _scp_half(version: int = 20, section_id: int = 0) -> bytes:
    data = bytearray(scp_record({1: scp_section1(), 7: scp_section7()}, version=version))
    struct.pack_into("<H", data, 8, section_id)
    return bytes(data[: len(data) // 2])  # shorter than its header says: otherwise waited for


HEADER_CASES = [
    (
        "scp-ecg",
        "huge.scp",
        lambda: _scp_announcing(2**31),
        "SCP header announces 2147483648 bytes, more than",
    ),
    ("scp-ecg", "version.scp", lambda: _scp_half(version=77), "SCP-ECG protocol version 77 is not supported"),
    ("scp-ecg", "magic.scp", lambda: _scp_half(section_id=7), "not an SCP-ECG record: section 0 must follow"),
    ("scp-ecg", "tiny.scp", lambda: _scp_announcing(9)[:100], "SCP header: record length 9 is impossible"),
    ("philips-xml", "report.xml", lambda: b"%PDF-1.4 a renamed PDF", "not an XML file"),
    (
        "philips-xml",
        "aecg.xml",
        lambda: synthetic_aecg()[:300],
        "root element <AnnotatedECG> is not <restingecgdata>",
    ),
    (
        "aecg-xml",
        "philips.xml",
        lambda: synthetic_philips_104()[:400],
        "root element <restingecgdata> is not <AnnotatedECG>",
    ),
]


@pytest.mark.parametrize(
    ("name", "filename", "content", "reason"), HEADER_CASES, ids=[c[1] for c in HEADER_CASES]
)
async def test_files_wrong_from_their_header_fail_at_once(
    tmp_path: Path, name: str, filename: str, content: Any, reason: str
) -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    # before: waited for incomplete_timeout_seconds (600 by default; an hour here) before failing
    transport, runtime = make(name, tmp_path, incomplete_timeout_seconds=3600)
    patient_named = f"DOE_JANE_{filename}"  # carts often name files after the patient
    (tmp_path / patient_named).write_bytes(content())
    await polls(transport, 2)
    assert regular(tmp_path / "failed") == sorted(
        [os.fsencode(patient_named), os.fsencode(patient_named) + b".reason.txt"]
    )
    assert reason in (tmp_path / "failed" / f"{patient_named}.reason.txt").read_text()
    assert runtime.counters == {"files_failed": 1} and len(runtime.failures) == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [info] = [e for e in lines if e["event"] == "ecg.file_failed"]
    assert info["level"] == "info" and reason in info["reason"]
    assert "DOE" not in stream.getvalue()


async def test_a_good_file_still_being_written_is_not_refused_by_its_header(tmp_path: Path) -> None:
    transport, runtime = make("philips-xml", tmp_path, incomplete_timeout_seconds=3600)
    data = synthetic_philips_104()
    for cut in (1, 2, 40, 300, len(data) // 2):  # the head as a cart writes it, a few bytes at a time
        (tmp_path / "ecg.xml").write_bytes(data[:cut])
        await polls(transport, 2)
        assert regular(tmp_path / "failed") == []
    (tmp_path / "ecg.xml").write_bytes(data)
    await polls(transport, 2)
    assert len(runtime.readings) == 1
    scp, _ = make("scp-ecg", tmp_path / "s", incomplete_timeout_seconds=3600)
    (tmp_path / "s").mkdir()
    record = synthetic_scp()
    for cut in (3, 6, 20, 200):
        (tmp_path / "s" / "a.scp").write_bytes(record[:cut])
        await polls(scp, 2)
        assert regular(tmp_path / "s" / "failed") == []


def test_header_problem_of_every_driver_on_good_files() -> None:
    assert driver("scp-ecg").header_problem(synthetic_scp()[:4096]) is None  # type: ignore[attr-defined]
    assert driver("aecg-xml").header_problem(synthetic_aecg()[:4096]) is None  # type: ignore[attr-defined]
    philips = synthetic_philips_104()
    assert driver("philips-xml").header_problem(philips[:4096]) is None  # type: ignore[attr-defined]
    utf8 = synthetic_philips_104(encoding="utf-8")
    assert driver("philips-xml").header_problem(utf8[:4096]) is None  # type: ignore[attr-defined]
