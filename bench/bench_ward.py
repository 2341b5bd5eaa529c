"""Ward benchmark: N oximeters behind a simulated terminal server (raw TCP), one agent, python-hl7's MLLP
server as the EHR; each figure beside the same run's bare python-hl7 loop.

For N = 1, 10, 50, 100, 200 devices sending one Masimo ASCII 1 line a second each (``report = "every"``):

* agent: CPU per reading (user + system time of the agent process over the window / readings the EHR got
  in it), latency from the device's write to the EHR's receipt of the ORU (the moment it sends the ACK;
  p50/p99), RSS, open file descriptors, threads, and fsyncs per reading (``strace -c`` on the agent for a
  few seconds after the window, when strace is installed; its slowdown is kept out of the other figures);
* baseline, same run: a bare python-hl7 loop in its own process sending prebuilt ORUs at the same rate over
  one connection to the same kind of EHR, waiting for each ACK: CPU per message, p50/p99 send -> ACK, RSS,
  fds; and the same loop with one fsync (an appended, fsynced record) before each send.

The devices and the EHR run in processes of their own (the EHR in a subprocess, the devices in this one),
so their work is not the agent's. Prints one table and how the agent's cost per reading grows with N.

Run: ``.venv/bin/python bench/bench_ward.py [--n 1,10,50,100,200] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e_helpers import AgentProcess, masimo_ascii1_line, write_config

if TYPE_CHECKING:  # the bare loop and EHR subprocesses run this file: they import no agent module
    from vitals_agent.drivers.base import SimPort, Simulator

TICK = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve()


# ------------------------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


# ------------------------------------------------------------------------------------------- the EHR


def serve_ehr(out: Path) -> None:
    """Subprocess: python-hl7's MLLP server; records (time of receipt, OBX-18 serial, SpO2, pulse)."""
    import hl7
    import hl7.mllp

    seen: list[tuple[float, str, str, str]] = []

    async def client(reader: Any, writer: Any) -> None:
        try:
            while True:
                message = await reader.readmessage()
                at = time.time()
                writer.writemessage(message.create_ack())
                await writer.drain()
                seen.append((at, *_key(str(message))))
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def main() -> None:
        server = await hl7.mllp.start_hl7_server(client, "127.0.0.1", 0, encoding="utf-8")
        print(server.sockets[0].getsockname()[1], flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()
        out.write_text(json.dumps(seen))

    asyncio.run(main())


def _key(text: str) -> tuple[str, str, str]:
    serial = spo2 = pulse = ""
    for seg in text.split("\r"):
        if not seg.startswith("OBX|"):
            continue
        f = seg.split("|")
        if len(f) > 18 and f[18] and not serial:
            serial = f[18].split("^")[0]
        if "150456" in f[3]:
            spo2 = f[5]
        elif "149530" in f[3]:
            pulse = f[5]
    return serial, spo2, pulse


class Ehr:
    def __init__(self, work: Path) -> None:
        self.out = work / f"ehr-{time.monotonic_ns()}.json"
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--serve-ehr", str(self.out)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def stop(self) -> list[tuple[float, str, str, str]]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return [(float(a), str(b), str(c), str(d)) for a, b, c, d in json.loads(self.out.read_text())]


# ------------------------------------------------------------------------------------------- devices


@dataclass
class Sent:
    at: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (serial, spo2, pulse) -> time


class Oximeter:
    """A :class:`~vitals_agent.drivers.base.Simulator`: one line a second, the first at ``phase`` seconds;
    SpO2 and pulse walk so that every reading of the run has its own (serial, SpO2, pulse)."""

    def __init__(self, serial: str, phase: float, sent: Sent) -> None:
        self.serial = serial
        self.phase = phase
        self.sent = sent
        self.k = 0

    async def run(self, port: SimPort) -> None:
        await asyncio.sleep(self.phase)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            spo2, pulse = 90 + self.k % 10, 50 + (self.k // 10) % 50
            line = masimo_ascii1_line(
                datetime.now(UTC) - timedelta(seconds=1),
                f"{spo2:03d}",
                f"{pulse:03d}",
                "04.00",
                serial=self.serial,
            )
            at = time.time()
            await port.write(line)
            self.sent.at[(self.serial, str(spo2), str(pulse))] = at
            self.k += 1
            next_at += 1.0
            await asyncio.sleep(max(0.0, next_at - loop.time()))


def _factory(d: int, n: int, sent: Sent) -> Callable[[], Simulator]:
    return lambda: Oximeter(f"{7000000000 + d:010d}", d / n, sent)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- the bare loop


def bare_loop(port: int, rate: float, seconds: float, fsync_dir: str) -> None:
    """Subprocess: python-hl7 client sending ``rate`` messages a second for ``seconds``, waiting for each
    ACK; then the same with one fsync before each send. Prints JSON."""
    import hl7
    import hl7.mllp
    from tests.fake_ehr import make_message

    async def run(sync: bool) -> dict[str, Any]:
        reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port, encoding="utf-8")
        messages = [hl7.parse(make_message(f"B{i:08d}").decode()) for i in range(200)]
        fd = os.open(
            os.path.join(fsync_dir, f"bare-{sync}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        lat: list[float] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        cpu0 = time.process_time()
        i = 0
        while loop.time() - start < seconds:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            t0 = time.perf_counter()
            if sync:
                os.write(fd, b"x" * 200 + b"\n")
                os.fsync(fd)
            writer.writemessage(messages[i % len(messages)])
            await writer.drain()
            await reader.readmessage()
            lat.append(time.perf_counter() - t0)
            i += 1
        cpu = time.process_time() - cpu0
        os.close(fd)
        writer.close()
        pid = os.getpid()
        return {
            "n": i,
            "cpu_per_msg": cpu / max(1, i),
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "rss_kib": proc_status(pid, "VmRSS"),
            "fds": fd_count(pid),
        }

    async def main() -> None:
        plain = await run(False)
        synced = await run(True)
        print(json.dumps({"plain": plain, "fsync": synced}))

    asyncio.run(main())


def run_bare(rate: float, seconds: float, work: Path) -> dict[str, Any]:
    ehr = Ehr(work)
    try:
        out = subprocess.run(
            [sys.executable, str(HERE), "--bare", str(ehr.port), str(rate), str(seconds), str(work)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        ehr.stop()
    result: dict[str, Any] = json.loads(out)
    return result


# ------------------------------------------------------------------------------------------- one N


def count_fsyncs(pid: int, seconds: float, work: Path) -> int | None:
    """fsync + fdatasync calls of ``pid`` (all threads) during ``seconds``, by strace -c; None without it."""
    if shutil.which("strace") is None:
        return None
    out = work / f"strace-{pid}.txt"
    proc = subprocess.Popen(
        ["strace", "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", "-p", str(pid), "-o", str(out)],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    calls = 0
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            calls += int(parts[3]) if len(parts) >= 5 else 0
    return calls


async def run_agent(n: int, seconds: float, work: Path) -> dict[str, Any]:
    from vitals_agent.drivers.netsim import NetworkDevice

    ehr = Ehr(work)
    sent = Sent()
    devices = [NetworkDevice(_factory(d, n, sent), name=f"oxi-{d}") for d in range(n)]
    for dev in devices:
        await dev.start()
    data = work / f"data-{n}"
    cfg = write_config(
        work / f"agent-{n}.toml",
        data_dir=data,
        ehr_port=ehr.port,
        devices=[
            {"id": f"oxi-{d}", "driver": "masimo-ascii", "port": dev.url, "report": "every"}
            for d, dev in enumerate(devices)
        ],
    )
    agent = AgentProcess(cfg)
    pid = agent.proc.pid
    try:
        await agent.wait_log(lambda: len(agent.events("device.connected")) >= n, 120, f"{n} connections")
        await asyncio.sleep(3.0)  # warm-up: every device has sent, the sender's connection is up
        cpu0, t0 = cpu_seconds(pid), time.time()
        await asyncio.sleep(seconds)
        cpu1, t1 = cpu_seconds(pid), time.time()
        rss, fds, threads = proc_status(pid, "VmRSS"), fd_count(pid), proc_status(pid, "Threads")
        f0 = time.time()
        fsyncs = await asyncio.to_thread(count_fsyncs, pid, 5.0, work)
        f1 = time.time()
        await asyncio.sleep(1.0)
        agent.terminate(timeout=15)
    finally:
        agent.cleanup()
        for dev in devices:
            await dev.stop()
        got = ehr.stop()
    in_window = [(at, key) for at, *key in got if t0 <= at < t1]
    latencies = [at - sent.at[tuple(key)] for at, key in in_window if tuple(key) in sent.at]  # type: ignore[index]
    in_fsync = sum(1 for at, *_ in got if f0 <= at < f1)
    return {
        "readings": len(in_window),
        "rate": len(in_window) / (t1 - t0),
        "cpu_per_reading": (cpu1 - cpu0) / max(1, len(in_window)),
        "core": (cpu1 - cpu0) / (t1 - t0),
        "p50": pct(latencies, 50),
        "p99": pct(latencies, 99),
        "matched": len(latencies),
        "rss_kib": rss,
        "fds": fds,
        "threads": threads,
        "fsync_per_reading": (fsyncs / in_fsync) if fsyncs is not None and in_fsync else None,
        "delivered": len(got),
        "sent": len(sent.at),
    }


# ------------------------------------------------------------------------------------------- main


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", default="1,10,50,100,200")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    from vitals_agent.logs import setup_logging

    setup_logging("WARNING")  # the simulated devices' own DEBUG lines are not the bench's output
    ns = [int(x) for x in args.n.split(",")]
    ms = 1000.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in ns:
            agent = await run_agent(n, args.seconds, work)
            bare = await asyncio.to_thread(run_bare, float(n), min(args.seconds, 10.0), work)
            rows.append((n, agent, bare))
            print(f"  N={n}: done", flush=True)
    print(
        f"ward: N oximeters over TCP at 1 reading/s each, report=every; agent vs a bare python-hl7 loop "
        f"(same rate, same run); window {args.seconds:g} s"
    )
    head = (
        f"{'N':>4} {'rd/s':>6} {'agent CPU/rd':>12} {'bare CPU/msg':>12} {'x':>5} {'core':>5}"
        f" {'p50 agent':>9} {'p99 agent':>9} {'p50 bare':>8} {'p50 +fsync':>10} {'p99 bare':>8}"
        f" {'RSS agent':>9} {'RSS bare':>8} {'fds':>5} {'bare':>4} {'thr':>4} {'fsync/rd':>8}"
    )
    print(head)
    for n, a, b in rows:
        plain, synced = b["plain"], b["fsync"]
        fs = a["fsync_per_reading"]
        fs_text = f"{fs:.2f}" if fs is not None else "n/a"
        print(
            f"{n:>4} {a['rate']:>6.1f} {a['cpu_per_reading'] * ms:>9.2f} ms"
            f" {plain['cpu_per_msg'] * ms:>9.2f} ms"
            f" {a['cpu_per_reading'] / plain['cpu_per_msg']:>5.1f} {a['core'] * 100:>4.0f}%"
            f" {a['p50'] * ms:>6.2f} ms {a['p99'] * ms:>6.2f} ms {plain['p50'] * ms:>5.2f} ms"
            f" {synced['p50'] * ms:>7.2f} ms {plain['p99'] * ms:>5.2f} ms"
            f" {a['rss_kib'] / 1024:>6.1f} MB {plain['rss_kib'] / 1024:>5.1f} MB"
            f" {a['fds']:>5} {plain['fds']:>4} {a['threads']:>4} {fs_text:>8}"
        )
    base = rows[0][1]["cpu_per_reading"]
    growth = ", ".join(f"N={n}: {a['cpu_per_reading'] / base:.2f}x" for n, a, _ in rows)
    print(f"agent CPU per reading relative to N={rows[0][0]}: {growth}")
    last_n, last, last_bare = rows[-1]
    print(
        f"targets at N={last_n}: core {last['core'] * 100:.0f}% (< 50%),"
        f" p99 {last['p99'] * ms:.1f} ms (< 50),"
        f" RSS {last['rss_kib'] / 1024:.0f} MB (< 150); p50 {last['p50'] * ms:.2f} ms vs bare+fsync"
        f" {last_bare['fsync']['p50'] * ms:.2f} ms (within 1 ms?)"
    )
    lost = [(n, a["sent"] - a["delivered"]) for n, a, _ in rows if a["sent"] - a["delivered"] > n]
    if lost:
        print(f"note: readings sent but not delivered by the end (in flight at stop): {lost}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-ehr":
        serve_ehr(Path(sys.argv[2]))
    elif len(sys.argv) > 5 and sys.argv[1] == "--bare":
        bare_loop(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    else:
        asyncio.run(main())
