"""The audit trail's hash chain, rotation and retention: ``audit verify`` passes an untouched trail
(rotated files included) and catches a changed, removed or reordered record, and removed last records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.kit.toml import toml_str
from tests.private_files import assert_private
from vitals_agent import host
from vitals_agent.agent.storage.audit import AuditLog
from vitals_agent.agent.storage.audit_chain import (
    GENESIS,
    HEAD,
    line_hash,
    read_head,
    trail_files,
    verify,
)
from vitals_agent.cli import main
from vitals_agent.config.audit import AuditConfig

# Rotation renames the file the agent holds open, which Windows refuses (the agent then keeps appending).
ROTATES = pytest.mark.skipif(host.WINDOWS, reason="the audit trail does not rotate on Windows yet")


class Wall:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 11, 14, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def trail(tmp_path: Path, n: int = 6, **policy: float) -> tuple[Path, Wall]:
    folder = tmp_path / "data"
    wall = Wall()
    log = AuditLog.in_dir(folder, now=wall, policy=AuditConfig.model_validate(policy) if policy else None)
    for i in range(n):
        log.record("context_set", channel="cli", patient={"mrn": f"MRN{i:04d}"})
        wall.now += timedelta(minutes=1)
    log.close()
    return folder, wall


def config_for(tmp_path: Path, folder: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nfacility = "X"\ndata_dir = {toml_str(folder)}\n[control]\nenabled = false\n')
    return path


def lines(folder: Path) -> list[str]:
    return (folder / "audit.jsonl").read_text().splitlines(keepends=True)


def test_each_record_names_the_hash_of_the_one_before(tmp_path: Path) -> None:
    folder, _ = trail(tmp_path, 3)
    records = [json.loads(line) for line in lines(folder)]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == GENESIS
    assert records[1]["prev"] == line_hash(lines(folder)[0])
    assert records[2]["prev"] == line_hash(lines(folder)[1])
    assert read_head(folder) == {"seq": 3, "hash": line_hash(lines(folder)[2])}
    assert verify(trail_files(folder), read_head(folder)).ok


async def test_audit_verify_passes_an_untouched_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = trail(tmp_path)
    assert await main(["audit", "verify", "--config", str(config_for(tmp_path, folder))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 6 records in 1 file(s)") and f"sha256 {line_hash(lines(folder)[-1])}" in out


@pytest.mark.parametrize(
    ("tamper", "expect"),
    [
        ("change", "line 3 (seq 3): does not follow the record before it"),
        ("remove", "line 3 (seq 4): does not follow the record before it"),
        ("reorder", "line 3 (seq 4): does not follow the record before it"),
        ("remove_last", "the trail ends at seq 5 but was written up to seq 6: its last records were removed"),
        ("change_last", "the last record (seq 6) was changed after it was written"),
    ],
)
async def test_audit_verify_catches_a_changed_removed_or_reordered_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: str, expect: str
) -> None:
    folder, _ = trail(tmp_path)
    text = lines(folder)
    if tamper == "change":  # someone edits whose chart a reading went to
        text[1] = text[1].replace("MRN0001", "MRN9999")
    elif tamper == "remove":
        del text[2]
    elif tamper == "reorder":
        text[2], text[3] = text[3], text[2]
    elif tamper == "remove_last":
        del text[-1]
    elif tamper == "change_last":
        text[-1] = text[-1].replace("MRN0005", "MRN9999")
    (folder / "audit.jsonl").write_text("".join(text), newline="\n")  # (Windows: no CRLF)
    assert await main(["audit", "verify", "--config", str(config_for(tmp_path, folder))]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN: audit.jsonl {expect}" in out or f"BROKEN: {expect}" in out, out
    assert "audit trail NOT intact" in out


@ROTATES
def test_rotation_by_size_keeps_the_chain_across_files_and_retention_prunes(tmp_path: Path) -> None:
    folder, wall = trail(tmp_path, 12, max_bytes=600, max_age_days=0, retention_days=0)
    files = trail_files(folder)
    assert len(files) >= 3 and files[-1].name == "audit.jsonl"
    for f in files:
        assert_private(f)
    verdict = verify(files, read_head(folder))
    assert verdict.ok, verdict.problems
    events = [json.loads(line)["event"] for f in files for line in f.read_text().splitlines()]
    assert events.count("context_set") == 12 and events.count("audit_rotated") == len(files) - 1
    first_of_active = json.loads(files[-1].read_text().splitlines()[0])
    assert first_of_active["event"] == "audit_rotated"
    assert first_of_active["prev"] == line_hash(files[-2].read_text().splitlines()[-1])
    # a year later with a 30-day retention: the rotated files go, the chain starts at the next one
    wall.now += timedelta(days=365)
    keep_30_days = AuditConfig(max_bytes=600, max_age_days=0, retention_days=30)
    log = AuditLog.in_dir(folder, now=wall, policy=keep_30_days)
    log.record("context_cleared", channel="cli")
    log.close()
    left = trail_files(folder)
    assert len(left) <= 2
    pruned = [json.loads(line) for f in left for line in f.read_text().splitlines()]
    assert any(r["event"] == "audit_pruned" and r["files"] for r in pruned)
    verdict = verify(left, read_head(folder))
    assert verdict.ok, verdict.problems
    assert any("the chain starts here" in n for n in verdict.notes)


@ROTATES
def test_rotation_by_age(tmp_path: Path) -> None:
    folder, wall = trail(tmp_path, 2, max_bytes=0, max_age_days=7)
    wall.now += timedelta(days=8)
    log = AuditLog.in_dir(folder, now=wall, policy=AuditConfig(max_bytes=0, max_age_days=7))
    log.record("context_cleared", channel="cli")
    log.close()
    files = trail_files(folder)
    assert [f.name.startswith("audit-") for f in files] == [True, False]
    assert verify(files, read_head(folder)).ok


def test_a_second_writer_and_a_legacy_trail_stay_chained(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    legacy = '{"ts": "2026-01-01T00:00:00+00:00", "seq": 1, "event": "context_set"}\n'
    (folder / "audit.jsonl").write_text(legacy, newline="\n")  # the agent's line ending, on Windows too
    a = AuditLog.in_dir(folder)
    b = AuditLog.in_dir(folder)  # e.g. `vitals-agent outbox retry` beside the running agent
    a.record("one")
    b.record("two")
    a.record("three")
    a.close()
    b.close()
    records = [json.loads(line) for line in lines(folder)]
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert records[1]["prev"] == line_hash(legacy)
    verdict = verify(trail_files(folder), read_head(folder))
    assert verdict.ok and verdict.chained == 3, verdict.problems
    assert_private(folder / HEAD)


@ROTATES
def test_a_writer_that_another_rotated_away_from_follows_to_the_new_file(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    agent = AuditLog.in_dir(folder, policy=AuditConfig(max_bytes=300, max_age_days=0))
    tool = AuditLog.in_dir(folder)  # opened before the rotation, e.g. `vitals-agent outbox retry`
    for i in range(4):
        agent.record("context_set", channel="cli", n=i)
    assert len(trail_files(folder)) >= 2
    tool.record("operator_retry", control_id="X1")
    agent.record("context_cleared", channel="cli")
    agent.close()
    tool.close()
    files = trail_files(folder)
    per_file = [[json.loads(line)["event"] for line in f.read_text().splitlines()] for f in files]
    events = [e for names in per_file for e in names if e != "audit_rotated"]
    assert events == ["context_set"] * 4 + ["operator_retry", "context_cleared"]
    assert "operator_retry" not in per_file[0]  # it went to the file in use, not the one rotated away
    verdict = verify(files, read_head(folder))
    assert verdict.ok, verdict.problems
    assert verdict.last_seq == 6 + sum(names.count("audit_rotated") for names in per_file)
