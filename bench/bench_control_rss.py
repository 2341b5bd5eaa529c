"""Control API memory: the idle agent's RSS with the control API on h11 (shipped) and on aiohttp, beside
the same agent with the control API disabled, all measured in the same run.

Each variant is the real agent service (``AgentService``) in its own process, one simulated device-less
room, the EHR unreachable; the API variants answer 20 ``GET /api/status`` and 5 status page loads first,
so the HTTP code paths are loaded. The aiohttp variant serves the very same routes
(:class:`vitals_agent.agent.control.routes.Routes`) through ``aiohttp.web`` (aiohttp is installed for
the PDQm client; the variant is skipped with a note without it).

Why this matters: issue 13 asked for the kept HTTP library that keeps the agent's idle RSS lower.

Run: ``.venv/bin/python bench/bench_control_rss.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ("disabled", "h11", "aiohttp")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def write_config(work: Path, enabled: bool) -> Path:
    cfg = work / "agent.toml"
    cfg.write_text(
        "\n".join(
            [
                "[agent]",
                'facility = "BENCH"',
                'location = "ROOM^1"',
                f'data_dir = "{work / "data"}"',
                "[ehr]",
                'host = "127.0.0.1"',
                "port = 9",
                "[control]",
                f"enabled = {'true' if enabled else 'false'}",
                "port = 0",
            ]
        )
        + "\n"
    )
    return cfg


# ------------------------------------------------------------------------------------------ child


def aiohttp_server_class() -> Any:
    """ControlServer serving the same Routes through aiohttp.web (bench only)."""
    from aiohttp import web

    from vitals_agent.agent.control import ControlServer, Request
    from vitals_agent.agent.storage.audit import write_private

    class AiohttpControlServer(ControlServer):
        async def start(self) -> None:
            import secrets

            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.token = self.credentials.token = secrets.token_urlsafe(32)
            write_private(self.token_path, self.token + "\n")

            async def handle(req: web.Request) -> web.Response:
                request = Request(
                    method=req.method,
                    target=req.path_qs,
                    headers={k.lower(): v for k, v in req.headers.items()},
                    body=await req.read(),
                )
                answer = await self.routes.handle(request)
                return web.Response(
                    status=answer.status, body=answer.body, headers=dict(answer.header_list())
                )

            app = web.Application(client_max_size=16 * 1024)
            app.router.add_route("*", "/{tail:.*}", handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, 0)
            await site.start()
            self.port = int(self._runner.addresses[0][1])
            self.routes.allowed_hosts = self.allowed_hosts()
            endpoint = {"host": self.host, "port": self.port, "pid": os.getpid()}
            write_private(self.endpoint_path, json.dumps(endpoint) + "\n")

        async def stop(self) -> None:
            await self._runner.cleanup()

    return AiohttpControlServer


def child(variant: str, cfg: Path) -> None:
    from vitals_agent.agent import service
    from vitals_agent.config.schema import load_config
    from vitals_agent.logs import setup_logging

    setup_logging("WARNING")
    if variant == "aiohttp":
        service.ControlServer = aiohttp_server_class()  # type: ignore[attr-defined]
    config = load_config(cfg)

    async def run() -> int:
        stop = asyncio.Event()
        service.install_signal_handlers(stop)
        return await service.AgentService(config).run(stop)

    sys.exit(asyncio.run(run()))


# ------------------------------------------------------------------------------------------ parent


async def exercise(data: Path) -> None:
    from vitals_agent.agent.control import ControlClient

    client = ControlClient.from_data_dir(data)
    for _ in range(20):
        await client.call("GET", "/api/status")
    for _ in range(5):
        url = await client.login_url()
        path = url.removeprefix(client.url)
        status, _ = await client.request("GET", path)  # a page login (303) through the same routes
        assert status in (303, 401), status


def measure(variant: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = write_config(work, enabled=variant != "disabled")
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", variant, str(cfg)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            data = work / "data"
            deadline = time.monotonic() + 30
            ready = (data / "control.json") if variant != "disabled" else (data / "outbox.sqlite3")
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"{variant}: agent did not start\n{err}")
                time.sleep(0.05)
            if variant != "disabled":
                asyncio.run(exercise(data))
            time.sleep(1.0)  # settle: idle
            return rss_kib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "CONFIG"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        variants: tuple[str, ...] = ("disabled", "h11")
        print("aiohttp is not installed: comparing with h11 only")
    else:
        variants = VARIANTS
    results: dict[str, list[int]] = {v: [] for v in variants}
    for _ in range(args.rounds):  # interleaved, so drift hits every variant alike
        for variant in variants:
            results[variant].append(measure(variant))
    base = statistics.median(results["disabled"])
    print(f"idle agent RSS, median of {args.rounds} (KiB), ratio to the agent without the control API:")
    for variant in variants:
        rss = statistics.median(results[variant])
        print(f"  control {variant:<9} {rss:>8.0f} KiB  x{rss / base:.3f}  (+{rss - base:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
