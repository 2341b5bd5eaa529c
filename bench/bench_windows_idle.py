"""Idle CPU of the agent under Wine with four silent COM devices (issue #14: under 1 % of one core),
beside a bare Windows CPython idling under Wine and the same agent on Linux, measured in the same run.

* Wine: the installed zip's agent (Windows CPython 3.13) reads four Linux ptys mapped to COM5..COM8 that
  never send a byte (one thread per port blocked in ReadFile), the EHR a python-hl7 receiver on loopback
  with nothing to send it. Once all four devices are connected and 5 s have passed, the CPU time
  (utime + stime, all threads, from ``/proc/<pid>/stat``) of the agent's process and of the prefix's
  ``wineserver`` (every wait and I/O request of a Wine process goes through it) is sampled over the
  window. Baseline: ``python.exe -c "import time; time.sleep(...)"`` under the same Wine, same window.
* Linux: the same configuration on four ptys, the agent from this checkout (event-driven serial).

Needs the Windows lane's prefix: ``make bench-windows`` builds it and runs this (``BENCH_SECONDS=60``), or
``.venv/bin/python bench/bench_windows_idle.py [--seconds 60]`` in a prefix ``make windows-prefix`` made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e_helpers import AgentProcess, write_config
from tests.fake_ehr import Hl7Ehr
from tests.windows import winelane

from vitals_agent.drivers.pty import PtyDevice

DEVICES = 4
TICK = os.sysconf("SC_CLK_TCK")
BASELINE_MARK = "vitals-idle-baseline"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pids_where(match: str) -> list[int]:
    """Processes whose command line contains ``match`` (a Wine process shows its Windows command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if match in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"):
                found.append(int(entry.name))
    return found


def wineserver_pid() -> int:
    """This prefix's wineserver (found by the WINEPREFIX in its environment)."""
    wanted = f"WINEPREFIX={winelane.PREFIX}".encode()
    for pid in pids_where("wineserver"):
        with contextlib.suppress(OSError):
            if wanted in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
    raise SystemExit("bench: no wineserver for the lane's prefix is running")


def sample(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Percent of one core each process used over ``seconds``."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    return {name: 100.0 * (cpu_seconds(pid) - before[name]) / wall for name, pid in pids.items()}


def one_pid(match: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while not (found := pids_where(match)):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: no process matching {match!r}")
        time.sleep(0.1)
    if len(found) > 1:
        raise SystemExit(f"bench: {len(found)} processes match {match!r}: {found}")
    return found[0]


def quiet_prefix() -> None:
    """A running wineserver for the prefix, and the installed service stopped (it starts automatically
    when Wine boots the prefix, and would run an agent of its own during the measurement)."""
    winelane.start_wineserver()
    # Boot with no pipe to inherit: services.exe (started now, if not yet) would hold it open for good.
    subprocess.run(
        ["wineboot"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=winelane.wine_env(),
        check=False,
        timeout=120,
    )
    winelane.agent("service", "stop", check=False, timeout=60)


def baseline_under_wine(seconds: float) -> dict[str, float]:
    proc = subprocess.Popen(
        ["wine", winelane.PYTHON, "-c", f"import time; time.sleep(100000)  # {BASELINE_MARK}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=winelane.wine_env(),
        start_new_session=True,
    )
    try:
        pid = one_pid(BASELINE_MARK)
        time.sleep(5)
        return sample({"process": pid, "wineserver": wineserver_pid()}, seconds)
    finally:
        proc.kill()
        proc.wait(timeout=30)


async def agent_under_wine(seconds: float) -> dict[str, float]:
    ehr = await Hl7Ehr().start()
    try:
        with winelane.com_ports(DEVICES):
            winelane.write_config(ehr.port, [f"COM{5 + i}" for i in range(DEVICES)])
            agent = winelane.WineAgent()
            try:
                await agent.wait(
                    lambda: len(agent.events("device.connected")) >= DEVICES, "four devices connected", 120
                )
                pid = one_pid(winelane.CONFIG)
                await asyncio.sleep(5)
                pids = {"process": pid, "wineserver": wineserver_pid()}
                return await asyncio.to_thread(sample, pids, seconds)
            finally:
                code, _ = agent.ctrl_c()
                if code != 0:
                    print(f"bench: the agent under Wine exited {code}:\n{agent.tail()}", file=sys.stderr)
    finally:
        await ehr.close()


@contextlib.contextmanager
def linux_ptys(work: Path) -> Iterator[list[PtyDevice]]:
    devices = [PtyDevice(work / f"ttyIDLE{i}").open() for i in range(DEVICES)]
    try:
        yield devices
    finally:
        for device in devices:
            device.close()


async def agent_on_linux(seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ehr = await Hl7Ehr().start()
        try:
            with linux_ptys(work) as devices:
                cfg = write_config(
                    work / "idle.toml",
                    data_dir=work / "data",
                    ehr_port=ehr.port,
                    devices=[
                        {"id": f"spo2-{i}", "driver": "masimo-ascii", "port": str(d.link), "report": "every"}
                        for i, d in enumerate(devices)
                    ],
                )
                agent = AgentProcess(cfg)
                try:
                    await agent.wait_log(
                        lambda: len(agent.events("device.connected")) >= DEVICES, 60, "four devices connected"
                    )
                    await asyncio.sleep(5)
                    return await asyncio.to_thread(sample, {"process": agent.proc.pid}, seconds)
                finally:
                    agent.terminate()
                    agent.cleanup()
        finally:
            await ehr.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="sampling window (default 60)")
    parser.add_argument("--no-linux", action="store_true", help="skip the Linux agent")
    args = parser.parse_args()
    if not winelane.prefix_ready():
        print("bench_windows_idle: skipped (no Wine prefix with the installed zip: make windows-prefix)")
        return
    quiet_prefix()
    try:
        base = await asyncio.to_thread(baseline_under_wine, args.seconds)
        wine = await agent_under_wine(args.seconds)
    finally:
        winelane.teardown()  # this prefix's wineserver and its processes only
    linux = None if args.no_linux else await agent_on_linux(args.seconds)
    print(f"idle CPU, {DEVICES} silent serial devices, {args.seconds:.0f} s window (% of one core):")
    for label, got in (("bare Windows python.exe under Wine", base), ("agent under Wine", wine)):
        print(f"  {label:<36}{got['process']:.2f} % (+ wineserver {got['wineserver']:.2f} %)")
    total = wine["process"] + wine["wineserver"] - base["wineserver"]
    print(f"  agent under Wine, with its share of wineserver: {total:.2f} % (target < 1 %)")
    if linux is not None:
        print(f"  agent on Linux (event-driven serial): {linux['process']:.2f} %")
        if linux["process"] > 0:
            print(f"  ratio, agent under Wine (with that share) / on Linux: {total / linux['process']:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
