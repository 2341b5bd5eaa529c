"""The kill loop (issue 10, done-when): the agent as a real process reading a Masimo Rad-8 stream on a
pseudo-terminal, killed with SIGKILL again and again at random moments, while the EHR is up, flapping
(refusing connections for a while) and answering a deterministic mix of AA, AE (then AA) and AR.

After the last kill the stream stops, the agent runs to an empty outbox and is stopped with SIGTERM. Then:

* accepted = every ``reading_accepted`` record in the audit log (fsynced before the agent logs it);
* lost = accepted MSH-10s the EHR never answered AA and that are not in the dead-letter table;
* split = readings (one device time each, OBR-7) the EHR received under more than one MSH-10;
* resent = extra copies of an MSH-10 the EHR received (at-least-once delivery after a kill; same bytes).

Pass: lost == 0 and split == 0. Used by tests/test_kill_loop.py (short, ``slow``) and
bench/bench_kill_loop.py (20 kills).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.e2e_helpers import AgentProcess, masimo_ascii1_line, write_config
from tests.fake_ehr import RawEhr
from vitals_agent.agent.storage.audit import read_audit
from vitals_agent.drivers.pty import PtyDevice


class MixedEhr(RawEhr):
    """AA to most messages; AE the first time to every ``ae_every``-th new MSH-10 (AA to its retry); AR,
    every time, to every ``ar_every``-th. Counted by MSH-10 in order of first arrival, so the mix does not
    depend on the random part of the MSH-10s and a re-sent message gets the same kind of answer."""

    def __init__(self, *, ae_every: int = 7, ar_every: int = 11, delay: float = 0.03) -> None:
        super().__init__(delay=delay)
        self.ae_every, self.ar_every = ae_every, ar_every
        self.answers: dict[str, list[str]] = {}
        self._order: dict[str, int] = {}

    def _mode_for(self, control_id: str) -> str:
        n = self._order.setdefault(control_id, len(self._order) + 1)
        seen = self.answers.setdefault(control_id, [])
        if n % self.ar_every == 0:
            mode = "AR"
        elif n % self.ae_every == 0 and "AE" not in seen:
            mode = "AE"
        else:
            mode = "AA"
        seen.append(mode)
        return "SLOW" if mode == "AA" else mode  # an AA after ``delay``: kills land with a message in flight


@dataclass
class KillLoopResult:
    kills: int
    accepted: int
    delivered: int
    dead: int
    lost: list[str]
    split: dict[str, list[str]]
    resent: int
    received: int
    answers: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    flaps: int = 0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.split

    def summary(self) -> str:
        answers = dict(sorted(self.answers.items()))
        return (
            f"{self.kills} SIGKILLs, {self.flaps} EHR outages, {self.seconds:.0f} s: "
            f"{self.accepted} readings accepted, {self.delivered} delivered (AA), "
            f"{self.dead} dead-lettered (AR), {len(self.lost)} lost, "
            f"{len(self.split)} sent under two MSH-10s; {self.received} messages received, "
            f"{self.resent} re-sent with the same MSH-10; answers {answers}"
        )


def _obr7(raw: bytes) -> str:
    for seg in raw.split(b"\r"):
        if seg.startswith(b"OBR|"):
            fields = seg.decode("utf-8", "replace").split("|")
            return fields[7] if len(fields) > 7 else ""
    return ""


def _dead_letters(data: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{data / 'outbox.sqlite3'}?mode=ro", uri=True)) as conn:
        return {str(r[0]) for r in conn.execute("SELECT control_id FROM dead_letter")}


def _depth(data: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{data / 'outbox.sqlite3'}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def _accepted_at_least(audit: Path, count: int) -> Callable[[], bool]:
    return lambda: _accepted_count(audit) >= count


async def run_kill_loop(
    workdir: Path, *, kills: int = 20, seed: int = 1, interval: float = 0.05, flap_every: int = 3
) -> KillLoopResult:
    rng = random.Random(seed)
    data = workdir / "data"
    started = time.monotonic()
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    ehr = MixedEhr()
    await ehr.start()
    flaps = 0
    stream_stop = asyncio.Event()
    with PtyDevice(workdir / "ttyRad8") as pty:
        config = write_config(
            workdir / "agent.toml",
            data_dir=data,
            ehr_port=ehr.port,
            devices=[
                {
                    "id": "spo2-room12",
                    "driver": "masimo-ascii",
                    "port": str(pty.link),
                    "report": "every",
                    # readings carry their device time (OBR-7), one second apart: the reading's identity
                    "max_clock_skew_seconds": 10_000_000,
                }
            ],
        )
        text = config.read_text().replace("ack_timeout_seconds = 2", "ack_timeout_seconds = 1")
        config.write_text(text.replace("backoff_max_seconds = 0.5", "backoff_max_seconds = 0.2"))

        async def stream() -> None:
            i = 0
            while not stream_stop.is_set():
                line = masimo_ascii1_line(t0 + timedelta(seconds=i), f"{90 + i % 10:03d}", "072", "03.00")
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(pty.write(line), 1.0)
                i += 1
                await asyncio.sleep(interval)  # the device's pace

        writer = asyncio.create_task(stream())
        agent: AgentProcess | None = None
        try:
            for k in range(kills):
                agent = AgentProcess(config)
                audit = data / "audit.jsonl"
                before = _accepted_count(audit)
                target = before + rng.randrange(2, 12)
                await agent.wait_log(
                    _accepted_at_least(audit, target),
                    30,
                    f"readings before kill {k + 1}",
                    interval=0.02,
                )
                if k % flap_every == flap_every - 1:  # the EHR goes away for a moment, then comes back
                    await ehr.stop()
                    flaps += 1
                    down_until = _accepted_count(audit) + rng.randrange(1, 5)
                    await agent.wait_log(
                        _accepted_at_least(audit, down_until),
                        30,
                        "readings while the EHR is down",
                        interval=0.02,
                    )
                    await ehr.start()
                agent.kill()
                agent.cleanup()
                agent = None
            stream_stop.set()
            await writer
            agent = AgentProcess(config)  # the last run: deliver everything, then a clean stop
            await agent.wait_log(
                lambda: data.joinpath("outbox.sqlite3").exists() and _depth(data) == 0, 120, "drain", 0.02
            )
            code, _ = await asyncio.to_thread(agent.terminate)
            assert code == 0, agent.tail()
        finally:
            stream_stop.set()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if agent is not None:
                agent.cleanup()
            await ehr.stop()
    return _account(data, ehr, kills, flaps, time.monotonic() - started)


def _accepted_count(audit: Path) -> int:
    if not audit.exists():
        return 0
    with open(audit, "rb") as fh:
        return sum(1 for line in fh if b'"reading_accepted"' in line)


def _account(data: Path, ehr: MixedEhr, kills: int, flaps: int, seconds: float) -> KillLoopResult:
    accepted = {
        str(e["control_id"]) for e in read_audit(data / "audit.jsonl") if e["event"] == "reading_accepted"
    }
    delivered = {cid for cid, modes in ehr.answers.items() if "AA" in modes}
    dead = _dead_letters(data)
    lost = sorted(accepted - delivered - dead)
    by_reading: dict[str, set[str]] = {}
    for r in ehr.received:
        by_reading.setdefault(_obr7(r.raw), set()).add(r.control_id)
    split = {when: sorted(ids) for when, ids in by_reading.items() if len(ids) > 1}
    counts = Counter(r.control_id for r in ehr.received)
    # copies beyond the first, less the one legitimate re-send after each AE
    resent = sum(n - 1 for n in counts.values()) - sum(1 for m in ehr.answers.values() if "AE" in m)
    answers: Counter[str] = Counter(m for modes in ehr.answers.values() for m in modes)
    return KillLoopResult(
        kills=kills,
        accepted=len(accepted),
        delivered=len(accepted & delivered),
        dead=len(accepted & dead),
        lost=lost,
        split=split,
        resent=resent,
        received=len(ehr.received),
        answers=answers,
        seconds=seconds,
        flaps=flaps,
    )
