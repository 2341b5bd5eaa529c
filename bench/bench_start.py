"""Start-up benchmark: ``vitals-agent --help`` and ``check-config`` wall time, and the idle RSS of a
serial-only agent, each beside a bare interpreter measured in the same run.

* ``--help`` and ``check-config FILE`` (one serial oximeter behind a terminal server): median of 9 runs
  of the console script, beside ``python -c pass`` (the interpreter's own start) and ``python -c "import
  pydantic"`` (what reading any configuration needs).
* idle RSS: the agent running with that device connected to a simulated terminal server and nothing to do
  (status server off, and on as by default), beside a bare interpreter sleeping and beside the stack's floor:
  an interpreter that imported what any agent needs (asyncio, pydantic with a model built, sqlite3 with a
  WAL database open, structlog, pyserial) and sleeps.
* "as installed": ``rich`` cannot be imported (it is not a dependency of the agent; import-linter brings
  it into the dev venv, and structlog loads it when it is there: ~4 MB and ~60 ms).

Run: ``.venv/bin/python bench/bench_start.py``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e_helpers import AgentProcess, write_config

SCRIPT = Path(sys.executable).with_name("vitals-agent")


def wall(cmd: list[str], runs: int = 9, env: dict[str, str] | None = None) -> float:
    times = []
    full_env = {**os.environ, **(env or {})}
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=full_env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def without_rich(work: Path) -> dict[str, str]:
    """An environment in which ``rich`` cannot be imported, as on an installed workstation: rich is not a
    dependency of the agent (import-linter, a test tool, brings it into the dev venv) but structlog loads
    it when it is there (about 10 MB)."""
    folder = work / "norich"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text("import sys\nsys.modules['rich'] = None\n")
    return {"PYTHONPATH": str(folder)}


async def idle_rss(work: Path, env: dict[str, str] | None = None, *, control: bool = False) -> int:
    from tests.kit.netdev import FedDevice

    from vitals_agent.logs import setup_logging

    setup_logging("WARNING")
    device = await FedDevice("oxi").start()
    cfg = write_config(
        work / "idle.toml",
        data_dir=work / "idle-data",
        ehr_port=9,
        devices=[{"id": "oxi", "driver": "masimo-ascii", "port": device.url, "report": "every"}],
        control_port=0 if control else None,
    )
    agent = AgentProcess(cfg, extra_env=env)
    try:
        await agent.wait_log(lambda: bool(agent.events("device.connected")), 30, "connect")
        await asyncio.sleep(3.0)
        return rss_kib(agent.proc.pid)
    finally:
        agent.terminate()
        agent.cleanup()
        await device.server.stop()


FLOOR = """
import asyncio, sqlite3, sys, time
import serial, structlog
from pydantic import BaseModel
class M(BaseModel):
    x: int
M(x=1)
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS t (x)")
db.commit()
print("ready", flush=True)
time.sleep(30)
"""


def floor_rss(work: Path, env: dict[str, str]) -> int:
    """What every agent needs before any of its own code: the stack, imported and idle."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR, str(work / "floor.sqlite3")],
        stdout=subprocess.PIPE,
        env={**os.environ, **env},
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        return rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def bare_rss() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    time.sleep(1.0)
    try:
        return rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "agent.toml"
        config.write_text(
            f"[agent]\nfacility = 'X'\ndata_dir = '{work / 'data'}'\n"
            "[[devices]]\nid = 'oxi'\ndriver = 'masimo-ascii'\nport = 'socket://127.0.0.1:4001'\n"
        )
        bare = wall([sys.executable, "-c", "pass"])
        pydantic = wall([sys.executable, "-c", "import pydantic"])
        installed = without_rich(work)
        helps = wall([str(SCRIPT), "--help"])
        check = wall([str(SCRIPT), "check-config", str(config)])
        helps_installed = wall([str(SCRIPT), "--help"], env=installed)
        check_installed = wall([str(SCRIPT), "check-config", str(config)], env=installed)
        idle = asyncio.run(idle_rss(work))
        idle_installed = asyncio.run(idle_rss(work, installed))
        idle_control = asyncio.run(idle_rss(work, installed, control=True))
        floor = floor_rss(work, installed)
    bare_mem = bare_rss()
    ms = 1000.0
    print("start-up (median of 9 runs; targets: --help and check-config < 250 ms, idle RSS < 40 MB):")
    print(f"  bare interpreter (python -c pass)  {bare * ms:6.0f} ms")
    print(f"  python -c 'import pydantic'        {pydantic * ms:6.0f} ms")
    print(
        f"  vitals-agent --help                {helps * ms:6.0f} ms  ({helps / bare:.1f}x bare);"
        f" as installed {helps_installed * ms:.0f} ms ({helps_installed / bare:.1f}x)"
    )
    print(
        f"  vitals-agent check-config FILE     {check * ms:6.0f} ms  ({check / bare:.1f}x bare);"
        f" as installed {check_installed * ms:.0f} ms ({check_installed / bare:.1f}x)"
    )
    mb = 1024
    print(
        f"idle RSS: serial-only agent {idle / mb:.1f} MB in this venv,"
        f" {idle_installed / mb:.1f} MB without rich (as installed;"
        f" {idle_control / mb:.1f} MB with the status server on, the default);"
        f" bare interpreter {bare_mem / mb:.1f} MB ({idle_installed / bare_mem:.1f}x);"
        f" the stack's floor {floor / mb:.1f} MB (agent = floor + {(idle_installed - floor) / mb:.1f} MB)"
    )


if __name__ == "__main__":
    main()
