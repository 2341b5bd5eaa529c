"""``vitals-agent outbox list|show|retry|purge`` on a real outbox file."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from tests.fake_ehr import make_message
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.cli import main

SECRET = "DOE^JANE-SECRET"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    ob = Outbox(tmp_path)
    for i in range(3):
        body = make_message(f"C{i}").replace(b"UNKNOWN^UNKNOWN", SECRET.encode())
        ob.enqueue(control_id=f"C{i}", device_id="spo2-room12", body=body)
    ob.mark_failure(2, "AR: unsupported", negative=True)
    ob.dead_letter(2, "rejected by the receiver (AR)", ack_code="AR", ack_text="AR: unsupported")
    ob.close()
    return tmp_path


async def test_list(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["outbox", "list", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 queued, 1 dead"
    rows = [line.split() for line in out[2:]]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("1", "queued", "C0", "spo2-room12"),
        ("3", "queued", "C2", "spo2-room12"),
        ("2", "dead", "C1", "spo2-room12"),
    ]
    assert out[-1].endswith("rejected by the receiver (AR) (receiver text hidden; --show-phi shows it)")
    assert "unsupported" not in "\n".join(out)  # the receiver's MSA-3 may echo patient data
    assert SECRET not in "\n".join(out)


async def test_list_json_dead_only(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["outbox", "list", "--dead", "--json", "--data-dir", str(data)]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [
        (r["id"], r["state"], r["control_id"], r["reason"], r["ack_code"], r["attempts"]) for r in recs
    ] == [(2, "dead", "C1", "rejected by the receiver (AR)", "AR", 1)]


async def test_show_redacts_unless_show_phi(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["outbox", "show", "2", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "|C1|P|2.6|" in out  # MSH is shown
    assert "PID|… (" in out and "OBX|… (" in out and "redacted" in out
    assert await main(["outbox", "show", "2", "--show-phi", "--data-dir", str(data)]) == 0
    assert SECRET in capsys.readouterr().out


async def test_show_unknown_id(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["outbox", "show", "99", "--data-dir", str(data)]) == 1
    assert (
        capsys.readouterr().err.strip()
        == "error: no message with id or MSH-10 '99' (see `vitals-agent outbox list`)"
    )


async def test_retry_one_and_all(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["outbox", "retry", "1", "--data-dir", str(data)]) == 1
    assert "already queued" in capsys.readouterr().err
    assert await main(["outbox", "retry", "2", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.strip() == "re-queued message 2 (C1); it keeps its MSH-10"
    ob = Outbox(data)
    assert [(m.id, m.control_id) for m in ob.peek()] == [(1, "C0"), (2, "C1"), (3, "C2")]
    ob.dead_letter(1, "test")
    ob.dead_letter(3, "test")
    ob.close()
    assert await main(["outbox", "retry", "--all-dead", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.strip() == "re-queued 2 dead letter(s)"
    ob = Outbox(data)
    assert ob.depth() == 3 and ob.dead_count() == 0
    ob.close()


async def test_purge_older_than(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["outbox", "purge", "--dead", "--older-than", "7d", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.startswith("purged 0 dead letter(s)")
    assert await main(["outbox", "purge", "--dead", "--older-than", "0s", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.startswith("purged 1 dead letter(s)")
    ob = Outbox(data)
    item = ob.get(2)
    assert item is None and ob.depth() == 2
    ob.close()


async def test_missing_outbox_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["outbox", "list", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: no outbox at {tmp_path / 'outbox.sqlite3'}"
    assert not (tmp_path / "outbox.sqlite3").exists()
    config = tmp_path / "agent.toml"
    config.write_text(f"[agent]\nfacility = \"X\"\ndata_dir = '{tmp_path / 'nowhere'}'\n")
    assert await main(["outbox", "list", "--config", str(config)]) == 1
    assert "nowhere is not a directory" in capsys.readouterr().err


async def test_config_finds_data_dir(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f"[agent]\nfacility = \"X\"\ndata_dir = '{data}'\n")
    assert await main(["outbox", "list", "--queued", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "2 queued, 1 dead"


# --- the receiver's text and the audit trail (#10 minors) -------------------------------------------------

ECHO = "AE: unknown patient DOE^JANE-SECRET"


def audit_events(data: Path) -> list[dict[str, object]]:
    from vitals_agent.agent.storage.audit import read_audit

    path = data / "audit.jsonl"
    return list(read_audit(path)) if path.exists() else []


@pytest.fixture
def echoing(data: Path) -> Path:
    """A queued message with a negative answer and a dead letter whose receiver text echoes a name."""
    ob = Outbox(data)
    ob.mark_failure(1, ECHO, negative=True)
    ob.close()
    conn = sqlite3.connect(data / "outbox.sqlite3")
    conn.execute("UPDATE dead_letter SET ack_text = ?", (ECHO,))
    conn.commit()
    conn.close()
    return data


async def test_receiver_text_is_shown_only_with_show_phi_and_that_is_audited(
    echoing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["list"], ["list", "--json"], ["show", "1"], ["show", "2", "--json"]):
        assert await main(["outbox", *argv, "--data-dir", str(echoing)]) == 0
        out = capsys.readouterr().out
        assert "DOE^JANE" not in out and "SECRET" not in out, argv
        assert "hidden" in out, argv
    assert audit_events(echoing) == []  # nothing with patient data was shown: nothing to audit
    assert await main(["outbox", "list", "--show-phi", "--data-dir", str(echoing)]) == 0
    listed = capsys.readouterr().out
    assert "rejected by the receiver (AR): AE: unknown patient DOE^JANE-SECRET" in listed
    assert "hidden" not in listed
    assert await main(["outbox", "show", "C1", "--show-phi", "--data-dir", str(echoing)]) == 0
    out = capsys.readouterr().out
    assert ECHO in out and SECRET in out
    events = audit_events(echoing)
    assert [e["event"] for e in events] == ["outbox_listed", "outbox_shown"]
    shown = events[1]
    assert (shown["ids"], shown["control_ids"], shown["show_phi"], shown["channel"]) == (
        [2],
        ["C1"],
        True,
        "cli",
    )
    assert shown["user"] and shown.get("uid") == (os.getuid() if hasattr(os, "getuid") else None)


async def test_retry_and_purge_are_audited(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["outbox", "retry", "C1", "--data-dir", str(data)]) == 0
    ob = Outbox(data)
    ob.dead_letter(1, "test")
    ob.close()
    assert await main(["outbox", "retry", "--all-dead", "--data-dir", str(data)]) == 0
    ob = Outbox(data)
    ob.dead_letter(3, "test")
    ob.close()
    assert await main(["outbox", "purge", "--dead", "--older-than", "0s", "--data-dir", str(data)]) == 0
    capsys.readouterr()
    events = [(e["event"], e.get("ids"), e.get("count")) for e in audit_events(data)]
    assert events == [("outbox_retried", [2], 1), ("outbox_retried", [1], 1), ("outbox_purged", None, 1)]
    seqs = [e["seq"] for e in audit_events(data)]
    assert seqs == [1, 2, 3]


async def test_an_action_that_cannot_be_audited_is_not_done(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (data / "audit.jsonl").mkdir()
    assert await main(["outbox", "retry", "2", "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: cannot open the audit log {data / 'audit.jsonl'}: is a directory; "
        "nothing was done (every outbox action is audited)"
    )
    ob = Outbox(data)
    assert ob.dead_count() == 1  # still dead: not retried
    ob.close()
    assert await main(["outbox", "show", "2", "--show-phi", "--data-dir", str(data)]) == 1
    assert SECRET not in capsys.readouterr().out


def test_the_agent_and_the_tools_share_the_audit_sequence(tmp_path: Path) -> None:
    """Two writers (the running agent and an operator tool) append to one file: seq stays unique."""
    from vitals_agent.agent.storage.audit import AuditLog, read_audit

    agent = AuditLog.in_dir(tmp_path)
    agent.record("a1")
    tool = AuditLog.in_dir(tmp_path)
    tool.record("t1")
    agent.record("a2")
    tool.record("t2")
    agent.close()
    tool.close()
    assert [(e["event"], e["seq"]) for e in read_audit(tmp_path / "audit.jsonl")] == [
        ("a1", 1),
        ("t1", 2),
        ("a2", 3),
        ("t2", 4),
    ]
