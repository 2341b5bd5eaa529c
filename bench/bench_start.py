"""Start-up benchmark: ``vitals-agent --help`` and ``check-config`` wall time, and the idle RSS of a
serial-only agent, each beside a bare interpreter measured in the same run.

* ``--help`` and ``check-config FILE`` (one serial oximeter behind a terminal server): median of 9 runs
  of the console script, beside ``python -c pass`` (the interpreter's own start) and ``python -c "import
  pydantic"`` (what reading any configuration needs).
* idle RSS: the agent running with that device connected to a simulated terminal server and nothing to do,
  beside a bare interpreter sleeping.

Run: ``.venv/bin/python bench/bench_start.py``.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e_helpers import AgentProcess, write_config

SCRIPT = Path(sys.executable).with_name("vitals-agent")


def wall(cmd: list[str], runs: int = 9) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
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


async def idle_rss(work: Path, env: dict[str, str] | None = None) -> int:
    from tests.kit.netdev import FedDevice

    from vitals_agent.logs import setup_logging

    setup_logging("WARNING")
    device = await FedDevice("oxi").start()
    cfg = write_config(
        work / "idle.toml",
        data_dir=work / "idle-data",
        ehr_port=9,
        devices=[{"id": "oxi", "driver": "masimo-ascii", "port": device.url, "report": "every"}],
    )
    agent = AgentProcess(cfg, extra_env=env)
    try:
        await agent.wait_log(lambda: bool(agent.events("device connected")), 30, "connect")
        await asyncio.sleep(3.0)
        return rss_kib(agent.proc.pid)
    finally:
        agent.terminate()
        agent.cleanup()
        await device.server.stop()


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
        helps = wall([str(SCRIPT), "--help"])
        check = wall([str(SCRIPT), "check-config", str(config)])
        idle = asyncio.run(idle_rss(work))
        idle_installed = asyncio.run(idle_rss(work, without_rich(work)))
    bare_mem = bare_rss()
    ms = 1000.0
    print("start-up (median of 9 runs; targets: --help and check-config < 250 ms, idle RSS < 40 MB):")
    print(f"  bare interpreter (python -c pass)  {bare * ms:6.0f} ms")
    print(f"  python -c 'import pydantic'        {pydantic * ms:6.0f} ms")
    print(f"  vitals-agent --help                {helps * ms:6.0f} ms  ({helps / bare:.1f}x bare)")
    print(f"  vitals-agent check-config FILE     {check * ms:6.0f} ms  ({check / bare:.1f}x bare)")
    print(
        f"idle RSS: serial-only agent {idle / 1024:.1f} MB in this venv,"
        f" {idle_installed / 1024:.1f} MB without rich (as installed);"
        f" bare interpreter {bare_mem / 1024:.1f} MB ({idle_installed / bare_mem:.1f}x)"
    )


if __name__ == "__main__":
    main()
