"""The EKG kill loop (issue #10 item 4, full variant; the suite runs a short deterministic one in
tests/test_ecg_crash_once.py): N EKG files in a watched folder, the real agent process with a slow disk
(every outbox commit and state write takes ``--slow-ms`` longer) killed by SIGKILL K times at random
moments, then run to the end. Counts, per file, the MSH-10s python-hl7's MLLP server received it under.

    .venv/bin/python bench/bench_ekg_kill.py [-n 300] [--kills 30] [--slow-ms 20] [--seed S]

Pass: every file arrived (0 lost) and no file arrived under two MSH-10s (a re-send of the same MSH-10
after a kill is at-least-once delivery and is counted, not failed). Exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.e2e_helpers import write_config  # noqa: E402
from tests.fake_ehr import Hl7Ehr  # noqa: E402
from tests.test_ecg_fixtures import scp_record, scp_section1, scp_section7  # noqa: E402

WORKER = ROOT / "tests" / "ecg_crash_worker.py"


def depth(data: Path) -> int:
    path = data / "outbox.sqlite3"
    if not path.exists():
        return -1
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def by_patient(messages: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for message in messages:
        fields = {s.split("|", 1)[0]: s.split("|") for s in message.replace("\n", "\r").split("\r") if s}
        out.setdefault(fields["PID"][3].split("^")[0], []).append(fields["MSH"][9])
    return out


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--slow-ms", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="ekg-kill-"))
    share, data = tmp / "share", tmp / "data"
    share.mkdir()
    ehr = await Hl7Ehr().start()
    device = {"id": "ekg-1", "driver": "scp-ecg", "folder": str(share), "poll_seconds": 0.05}
    config = write_config(tmp / "agent.toml", data_dir=data, ehr_port=ehr.port, devices=[device])
    mrns = [f"K{i:04d}" for i in range(args.n)]
    for mrn in mrns:
        (share / f"{mrn}.scp").write_bytes(scp_record({1: scp_section1(pid=mrn), 7: scp_section7()}))
    cmd = [sys.executable, str(WORKER), str(config), "--slow-commit-ms", str(args.slow_ms)]
    started = time.monotonic()
    kills_done = 0

    def processed() -> int:
        return len(list((share / "processed").glob("*.scp")))

    for _ in range(args.kills):
        if processed() >= args.n:
            break
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        proc.kill()
        await proc.wait()
        kills_done += 1
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while (processed() < args.n or depth(data) != 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    proc.terminate()
    await proc.wait()
    await ehr.close()
    got = by_patient(ehr.messages)
    lost = [m for m in mrns if m not in got]
    two_ids = {m: sorted(set(ids)) for m, ids in got.items() if len(set(ids)) > 1}
    resent_same_id = sum(len(ids) - len(set(ids)) for ids in got.values())
    print(
        f"files {args.n}, kills {kills_done}, slow disk +{args.slow_ms:g} ms per commit, seed {seed}, "
        f"{time.monotonic() - started:.1f} s"
    )
    print(f"messages received {len(ehr.messages)}; re-sent under the same MSH-10 {resent_same_id}")
    print(f"lost {len(lost)}; sent under two or more MSH-10s {len(two_ids)} (must both be 0)")
    return 1 if lost or two_ids else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
