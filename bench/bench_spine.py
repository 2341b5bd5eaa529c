"""Spine benchmark: end-to-end latency and idle memory, each beside a baseline measured in the same run.

* Latency: the agent runs as a real process with a Masimo oximeter on a pseudo-terminal (report = every)
  and python-hl7's MLLP server as the EHR. For each reading we time from the last byte written to the pty
  to the agent's log line saying the ACK was received (the sender's ``delivered`` event, logged at
  DEBUG, whose ISO timestamp comes from the same host clock); failing that, to the EHR's receipt.
  Baseline: a bare python-hl7 loop (``open_hl7_connection``, send, wait for the ACK) sending the very
  same messages to the same server. Printed: p50/p99 for both and their ratio.
* Idle RSS of the agent with one device connected and nothing to do, beside a bare Python interpreter
  that imports nothing.

Run: ``.venv/bin/python bench/bench_spine.py [--n 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import hl7
import hl7.mllp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e_helpers import AgentProcess, masimo_ascii1_line, write_config
from tests.fake_ehr import Hl7Ehr

from vitals_agent.drivers.pty import PtyDevice


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def agent_latency(n: int, work: Path) -> tuple[list[float], list[str], str, int]:
    ehr = await Hl7Ehr().start()
    receipt: list[float] = []
    with PtyDevice(work / "ttyRad8") as pty:
        cfg = write_config(
            work / "agent.toml",
            data_dir=work / "data",
            ehr_port=ehr.port,
            devices=[{"id": "spo2", "driver": "masimo-ascii", "port": str(pty.link), "report": "every"}],
        )
        agent = AgentProcess(cfg, args=("--log-level", "DEBUG"))
        try:
            await agent.wait_log(lambda: bool(agent.events("device.connected")), what="connect")
            await asyncio.sleep(2.0)
            idle = rss_kib(agent.proc.pid)
            latencies: list[float] = []
            source = "EHR receipt"
            for i in range(n):
                line = masimo_ascii1_line(datetime.now(UTC), f"{90 + i % 10:03d}", "070", "03.00")
                before = len(ehr.received)
                await pty.write(line)
                t_write = time.time()
                while len(ehr.received) <= before:
                    await asyncio.sleep(0)
                t_ehr = time.time()
                receipt.append(t_ehr)
                latencies.append(t_ehr - t_write)
            await asyncio.sleep(0.5)
            delivered = agent.events("delivery.delivered")
            if len(delivered) >= n:
                source = "ACK received by the agent"
                stamps = [datetime.fromisoformat(e["timestamp"]).timestamp() for e in delivered[-n:]]
                writes = [r - lat for r, lat in zip(receipt, latencies, strict=True)]
                latencies = [s - w for s, w in zip(stamps, writes, strict=True)]
            agent.terminate()
        finally:
            agent.cleanup()
            messages = list(ehr.messages)
            await ehr.close()
    return latencies, messages, source, idle


async def baseline_latency(messages: list[str]) -> list[float]:
    ehr = await Hl7Ehr().start()
    reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", ehr.port, encoding="utf-8")
    out = []
    for text in messages:
        msg = hl7.parse(text)
        t0 = time.time()
        writer.writemessage(msg)
        await writer.drain()
        await reader.readmessage()
        out.append(time.time() - t0)
    writer.close()
    await ehr.close()
    return out


def bare_python_rss() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    time.sleep(1.0)
    try:
        return rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        latencies, messages, source, idle = await agent_latency(args.n, Path(tmp))
    base = await baseline_latency(messages)
    bare = bare_python_rss()
    ms = 1000.0
    print(f"spine latency, {args.n} readings (last byte on pty -> {source}):")
    print(
        f"  agent     p50 {pct(latencies, 50) * ms:7.2f} ms   p99 {pct(latencies, 99) * ms:7.2f} ms"
        f"   mean {statistics.mean(latencies) * ms:.2f} ms"
    )
    print(
        f"  baseline  p50 {pct(base, 50) * ms:7.2f} ms   p99 {pct(base, 99) * ms:7.2f} ms"
        "   (bare python-hl7 send + wait for ACK, same messages)"
    )
    print(
        f"  ratio     p50 {pct(latencies, 50) / pct(base, 50):7.1f}x"
        f"    p99 {pct(latencies, 99) / pct(base, 99):7.1f}x"
    )
    print(
        f"idle RSS: agent {idle / 1024:.1f} MiB, bare python {bare / 1024:.1f} MiB, ratio {idle / bare:.1f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())
