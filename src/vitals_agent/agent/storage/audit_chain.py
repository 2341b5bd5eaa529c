"""The audit trail's hash chain, rotation and retention (pure parts and the verifier).

**Chain.** Every line carries ``"prev"``: the SHA-256 (hex) of the exact bytes of the line before it (its
text without the newline), across rotated files; the first line ever has :data:`GENESIS`. Changing,
removing or reordering a line breaks the ``prev`` of the line after it; ``seq`` counts up by one. The
head (the last line's hash and ``seq``) is also kept in ``audit.head``, so removing the *last* lines
shows too. A chain has no secret: whoever can rewrite the whole trail and its head can forge it; print
the head (``vitals-agent audit verify``) to keep it elsewhere when that matters.

**Rotation.** When the active file ``audit.jsonl`` passes ``max_bytes`` or its first line is older than
``max_age_days``, it is renamed ``audit-<UTC time>.jsonl`` and a new one begins with an ``audit_rotated``
record whose ``prev`` is the old file's last line: the chain runs on. Rotated files older than
``retention_days`` are deleted, oldest first, with an ``audit_pruned`` record naming them and the hash
the remaining chain starts from.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
ACTIVE = "audit.jsonl"
HEAD = "audit.head"
ROTATED = re.compile(r"^audit-(\d{8}T\d{6}(?:\.\d+)?Z)\.jsonl$")


def line_hash(line: bytes | str) -> str:
    """The hash the next line's ``prev`` names (the line's text, without its newline)."""
    data = line.encode() if isinstance(line, str) else line
    return hashlib.sha256(data.rstrip(b"\n")).hexdigest()


def chained(line: str, prev: str) -> str:
    """A ``{"ts": ..., "seq": n, ...}`` line with ``"prev"`` put right after ``seq``."""
    match = re.match(r'^(\{"ts": "[^"]*", "seq": \d+, )', line)
    if match is None:
        raise ValueError("not an audit line")
    head = match.group(1)
    return f'{head}"prev": "{prev}", {line[len(head) :]}'


def rotated_name(at: datetime) -> str:
    return f"audit-{at.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}.jsonl"


def trail_files(folder: Path) -> list[Path]:
    """The rotated files, oldest first, then the active one (when present)."""
    rotated = sorted(p for p in folder.iterdir() if ROTATED.match(p.name))
    active = folder / ACTIVE
    return [*rotated, *([active] if active.exists() else [])]


def should_rotate(
    size: int, first_ts: datetime | None, now: datetime, *, max_bytes: int, max_age_days: float
) -> bool:
    if max_bytes > 0 and size >= max_bytes:
        return True
    return max_age_days > 0 and first_ts is not None and now - first_ts >= timedelta(days=max_age_days)


def expired(files: Sequence[Path], now: datetime, retention_days: float) -> list[Path]:
    """Rotated files whose time (when they were rotated away) is older than the retention."""
    if retention_days <= 0:
        return []
    out = []
    for path in files:
        match = ROTATED.match(path.name)
        if match is None:
            continue
        stamp = datetime.strptime(match.group(1).replace(".", "").rstrip("Z"), "%Y%m%dT%H%M%S%f").replace(
            tzinfo=UTC
        )
        if now - stamp > timedelta(days=retention_days):
            out.append(path)
    return out


def last_line(path: Path, chunk: int = 1 << 16) -> bytes | None:
    """The last line of a file, without its newline (None when the file is empty or missing)."""
    try:
        with path.open("rb") as fh:
            end = fh.seek(0, 2)
            size = min(chunk, end)
            while True:
                fh.seek(end - size)
                body = fh.read(size).rstrip(b"\n")
                if b"\n" in body or size == end:
                    return body.rsplit(b"\n", 1)[-1] or None
                size = min(size * 2, end)
    except FileNotFoundError:
        return None


def tail_lines(path: Path, n: int, chunk: int = 1 << 16) -> list[bytes]:
    """Up to the last ``n`` lines of a file, without their newlines."""
    try:
        with path.open("rb") as fh:
            end = fh.seek(0, 2)
            fh.seek(max(0, end - chunk))
            data = fh.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if end > chunk:
        lines = lines[1:]  # the first one may be cut
    return [line for line in lines if line][-n:]


def read_head(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / HEAD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def head_text(seq: int, digest: str) -> bytes:
    return (json.dumps({"seq": seq, "hash": digest}) + "\n").encode()


# ------------------------------------------------------------------------------------------ verify


@dataclass
class Verdict:
    files: list[str] = field(default_factory=list)
    records: int = 0
    chained: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    head: str | None = None
    last_seq: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, text without newline, complete) for each line of a file."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            yield number, raw.rstrip(b"\n"), raw.endswith(b"\n")


def verify(files: Iterable[Path], head: dict[str, Any] | None) -> Verdict:
    """Walk the trail in order; every broken link, gap in ``seq`` or unreadable line is a problem."""
    v = Verdict()
    prev_hash: str | None = None
    prev_seq: int | None = None
    at_head: str | None = None  # the hash of the record the head names
    for path in files:
        v.files.append(path.name)
        for number, text, complete in _lines(path):
            where = f"{path.name} line {number}"
            if not text.strip():
                continue
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    raise ValueError
            except ValueError:
                # a torn line (a crash mid-write) stays a line of its own and the writer chains over it;
                # a record replaced by anything else breaks the link of the record after it
                v.notes.append(f"{where}: not a record ({'a torn line' if not complete else 'unreadable'})")
                prev_hash, prev_seq = line_hash(text), prev_seq
                continue
            v.records += 1
            seq = record.get("seq")
            v.first_ts = v.first_ts or record.get("ts")
            v.last_ts = record.get("ts")
            if "prev" in record:
                v.chained += 1
                expected = prev_hash if prev_hash is not None else None
                if expected is None:
                    if record["prev"] != GENESIS:
                        v.notes.append(
                            f"{where}: the chain starts here (earlier records are in files no longer kept)"
                        )
                elif record["prev"] != expected:
                    v.problems.append(
                        f"{where} (seq {seq}): does not follow the record before it: "
                        "a record was changed, removed or reordered here"
                    )
            elif v.chained:
                v.problems.append(f"{where} (seq {seq}): has no chain link (written or changed by hand?)")
            if (
                isinstance(seq, int)
                and isinstance(prev_seq, int)
                and seq != prev_seq + 1
                and "prev" in record
            ):
                v.problems.append(f"{where}: seq {seq} follows seq {prev_seq} (a record is missing or moved)")
            prev_hash, prev_seq = line_hash(text), seq if isinstance(seq, int) else None
            if head is not None and seq == head.get("seq"):
                at_head = prev_hash
    v.head, v.last_seq = prev_hash, prev_seq
    if v.chained and head is not None and head.get("hash") != v.head:
        head_seq = head.get("seq")
        if isinstance(head_seq, int) and isinstance(v.last_seq, int) and head_seq > v.last_seq:
            v.problems.append(
                f"the trail ends at seq {v.last_seq} but was written up to seq {head_seq}: "
                "its last records were removed"
            )
        elif isinstance(head_seq, int) and isinstance(v.last_seq, int) and head_seq < v.last_seq:
            if at_head != head.get("hash"):
                v.problems.append(f"the record at seq {head_seq} was changed after it was written")
            v.notes.append(
                f"{v.last_seq - head_seq} record(s) after the last head update (normal after a crash)"
            )
        else:
            v.problems.append(f"the last record (seq {v.last_seq}) was changed after it was written")
    elif v.chained and head is None:
        v.notes.append("no audit.head: whether the last records were removed cannot be checked")
    return v
