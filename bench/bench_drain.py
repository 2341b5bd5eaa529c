"""Backlog drain rate and outbox commit cost, each beside a baseline measured in the same run.

    .venv/bin/python bench/bench_drain.py [-n 2000] [--rounds 3]

* drain: N queued ORU^R01 through our Outbox (SQLite, durable) + Sender (MLLP, ACK checked, delete per
  ACK) vs a bare python-hl7 loop (``hl7.mllp.open_hl7_connection``, send, wait for the ACK) with the same
  messages to the same python-hl7 server (in a child process), with TLS off and on. Ratio = ours / bare.
* commit cost: ``Outbox.enqueue`` (synchronous=FULL, fsync per reading) vs a bare SQLite insert+commit
  with the same settings (WAL, synchronous=FULL) and vs the same without fsync (synchronous=OFF).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sqlite3
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import hl7  # noqa: E402
import hl7.mllp  # noqa: E402
import structlog  # noqa: E402
from tests.fake_ehr import make_message, make_test_pki  # noqa: E402

from vitals_agent.agent.delivery.sender import Sender  # noqa: E402
from vitals_agent.agent.storage.outbox import Outbox  # noqa: E402
from vitals_agent.config.ehr import EhrConfig  # noqa: E402

# --- the receiver: python-hl7 server in a child process ------------------------------------------------


def _server_main(port_q: mp.Queue, cert: str | None, key: str | None) -> None:  # type: ignore[type-arg]
    async def handle(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while True:
                msg = await reader.readmessage()
                writer.writemessage(msg.create_ack("AA"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        kw = {}
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            kw["ssl"] = ctx
        server = await hl7.mllp.start_hl7_server(handle, "127.0.0.1", 0, encoding="utf-8", **kw)
        port_q.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def start_server(cert: Path | None = None, key: Path | None = None) -> tuple[Any, int]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_server_main, args=(q, str(cert) if cert else None, str(key) if key else None))
    proc.daemon = True
    proc.start()
    return proc, q.get(timeout=20)


# --- the two senders -----------------------------------------------------------------------------------


async def bare_loop(port: int, messages: list[bytes], ctx: ssl.SSLContext | None) -> float:
    kw = {"ssl": ctx, "server_hostname": "localhost"} if ctx else {}
    texts = [m.decode() for m in messages]
    t0 = time.perf_counter()
    reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port, encoding="utf-8", **kw)
    for text in texts:
        writer.writemessage(text)
        await writer.drain()
        ack = await asyncio.wait_for(reader.readmessage(), 30)
        assert str(ack.segment("MSA")[1]) == "AA"
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed


async def our_sender(port: int, messages: list[bytes], ctx: ssl.SSLContext | None, data_dir: Path) -> float:
    outbox = Outbox(data_dir)
    outbox.enqueue_many(
        {"control_id": f"B{i:06d}", "device_id": "bench", "body": m} for i, m in enumerate(messages)
    )
    ehr = EhrConfig(
        host="127.0.0.1",
        port=port,
        server_name="localhost" if ctx else None,
        backlog_warning=10 * len(messages),
    )
    sender = Sender(outbox, ehr, ssl_context=ctx)
    t0 = time.perf_counter()
    task = asyncio.create_task(sender.run())
    while sender.status()["delivered"] < len(messages):
        await asyncio.sleep(0.005)
        if task.done():
            raise RuntimeError("sender stopped")
    elapsed = time.perf_counter() - t0
    assert outbox.depth() == 0
    await sender.stop()
    outbox.close()
    return elapsed


# --- commit cost -----------------------------------------------------------------------------------------


def commit_cost(tmp: Path, n: int, body: bytes) -> dict[str, tuple[float, float]]:
    """Median and mean microseconds per committed reading; the three variants interleaved per reading so
    that fsync-latency drift on the disk hits them alike."""
    ob = Outbox(tmp / "enq")
    bare: dict[str, sqlite3.Connection] = {}
    for sync in ("FULL", "OFF"):
        conn = sqlite3.connect(tmp / f"bare-{sync}.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, c TEXT, d TEXT, body BLOB)")
        bare[sync] = conn
    times: dict[str, list[float]] = {
        "Outbox.enqueue (WAL, FULL)": [],
        "bare insert+commit (WAL, FULL)": [],
        "bare insert+commit (WAL, OFF)": [],
    }
    for i in range(n):
        t0 = time.perf_counter()
        ob.enqueue(control_id=f"E{i}", device_id="bench", body=body, meta={"i": i})
        t1 = time.perf_counter()
        times["Outbox.enqueue (WAL, FULL)"].append(t1 - t0)
        for sync in ("FULL", "OFF"):
            conn = bare[sync]
            t0 = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t (c, d, body) VALUES (?, ?, ?)", (f"E{i}", "bench", body))
            conn.execute("COMMIT")
            times[f"bare insert+commit (WAL, {sync})"].append(time.perf_counter() - t0)
    ob.close()
    for conn in bare.values():
        conn.close()
    return {k: (statistics.median(v) * 1e6, statistics.fmean(v) * 1e6) for k, v in times.items()}


# --- main ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="messages per drain (default 2000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant (median taken)")
    ap.add_argument("--commits", type=int, default=200, help="enqueues for the commit cost (default 200)")
    args = ap.parse_args()
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    messages = [make_message(f"B{i:06d}", value=str(90 + i % 10)) for i in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pki = make_test_pki(tmp / "pki")
        client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        rows = []
        for label, ctx, cert, key in (
            ("plain", None, None, None),
            ("TLS", client_ctx, pki.server_cert, pki.server_key),
        ):
            proc, port = start_server(cert, key)
            try:
                asyncio.run(bare_loop(port, messages[:50], ctx))  # warm-up
                bare, ours = [], []
                for r in range(args.rounds):  # ABBA order, so a drift in machine load hits both alike
                    runs = ["bare", "ours"] if r % 2 == 0 else ["ours", "bare"]
                    for which in runs:
                        if which == "bare":
                            bare.append(asyncio.run(bare_loop(port, messages, ctx)))
                        else:
                            ours.append(asyncio.run(our_sender(port, messages, ctx, tmp / f"{label}-{r}")))
            finally:
                proc.kill()
                proc.join()
            b, o = statistics.median(bare), statistics.median(ours)
            rows.append((label, args.n / b, args.n / o, b / o))
        costs = commit_cost(tmp, args.commits, messages[0])

    print(f"drain of {args.n} messages to a python-hl7 server (separate process), median of {args.rounds}")
    print(f"{'link':<6} {'bare python-hl7 msg/s':>22} {'Outbox+Sender msg/s':>20} {'ratio':>6}")
    for label, b, o, ratio in rows:
        print(f"{label:<6} {b:>22.0f} {o:>20.0f} {ratio:>6.2f}")
    print()
    print(f"commit cost per reading ({args.commits} readings, {len(messages[0])}-byte ORU)")
    base = costs["bare insert+commit (WAL, FULL)"][0]
    print(f"{'':<34} {'median':>9}    {'mean':>9}    median vs bare FULL")
    for label, (med, mean) in costs.items():
        print(f"{label:<34} {med:>9.0f} us {mean:>9.0f} us   x{med / base:.2f}")
    print(f"(cpus: {os.cpu_count()}, load avg: {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
