"""Fleet features and the idle agent: RSS of the agent with nothing of issue 18 configured (the alert
monitor is on by default: banner and log only) beside the same agent with alert channels (SMTP + webhook),
with the Prometheus listener (after 20 scrapes), and with a central configuration source (a signed
bundle on a file share), all measured in the same run; plus how long a reload that restarts one device
takes (SIGHUP to "config.applied", from the agent's own log).

Why: issue 18 asks that the idle agent stay lean: channel code, aiohttp and prometheus-client load only
when configured.

Run: ``.venv/bin/python bench/bench_fleet_rss.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ("plain", "channels", "metrics", "central")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BASE = """
[agent]
facility = "BENCH"
location = "ROOM^1"
data_dir = "{data}"
[ehr]
port = 9
[control]
enabled = false
[alerts]
disk_free_mb = 0
[[devices]]
id = "oxi-1"
driver = "masimo-ascii"
port = "/nonexistent/tty"
description = "{description}"
"""


def write_variant(work: Path, variant: str, description: str = "a") -> tuple[Path, int | None]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vitals_agent.config.central import make_bundle

    data = work / "data"
    body = BASE.format(data=data, description=description)
    port = None
    cfg = work / "agent.toml"
    if variant == "channels":
        body += (
            '[alerts.smtp]\nhost = "127.0.0.1"\nport = 9\nfrom = "a@b.test"\nto = ["c@d.test"]\n'
            '[alerts.webhook]\nurl = "http://127.0.0.1:9/hook"\n'
        )
    elif variant == "metrics":
        port = free_port()
        body += f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    elif variant == "central":
        key_file = work / "key.pem"
        if key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), None)
        else:
            key = Ed25519PrivateKey.generate()
            key_file.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        assert isinstance(key, Ed25519PrivateKey)
        public = base64.b64encode(
            key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ).decode()
        serial = int(time.time() * 1000)
        (work / "room.bundle").write_bytes(
            make_bundle(
                [("room", body.replace(f'data_dir = "{data}"\n', ""))],
                key,
                serial=serial,
                issued_at=datetime.now(UTC),
            )
        )
        if not cfg.exists():
            cfg.write_text(
                f'[agent]\ndata_dir = "{data}"\nconfig_source = "{work / "room.bundle"}"\n'
                f'config_public_key = "{public}"\nconfig_poll_seconds = 3600\n'
            )
        return cfg, None
    cfg.write_text(body)
    return cfg, port


def start(cfg: Path) -> tuple[subprocess.Popen[bytes], list[dict[str, object]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitals_agent", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc, []


def wait_for(
    proc: subprocess.Popen[bytes], log: list[dict[str, object]], event: str, timeout: float = 30
) -> dict[str, object]:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        chunk = proc.stdout.read() or b""
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            log.append(entry)
        for entry in log:
            if entry.get("event") == event:
                return entry
        time.sleep(0.02)
    raise RuntimeError(f"no {event!r} from the agent")


def measure(variant: str) -> tuple[int, float | None]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg, port = write_variant(work, variant)
        proc, log = start(cfg)
        try:
            wait_for(proc, log, "agent.starting")
            if port is not None:
                for _ in range(20):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                        resp.read()
            time.sleep(1.0)
            rss = rss_kib(proc.pid)
            reload_s = None
            if variant == "central":
                write_variant(work, variant, description="b")  # one device's table changes
                sent = time.monotonic()
                proc.send_signal(signal.SIGHUP)
                wait_for(proc, log, "config.applied")
                reload_s = time.monotonic() - sent
            return rss, reload_s
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[int]] = {v: [] for v in VARIANTS}
    reloads: list[float] = []
    for _ in range(args.rounds):
        for variant in VARIANTS:
            rss, reload_s = measure(variant)
            results[variant].append(rss)
            if reload_s is not None:
                reloads.append(reload_s)
    base = statistics.median(results["plain"])
    print(f"idle agent RSS, median of {args.rounds} (KiB; ratio to the plain agent measured in this run):")
    for variant in VARIANTS:
        med = statistics.median(results[variant])
        print(f"  {variant:<9} {med:>8.0f}  x{med / base:.3f}  (+{(med - base) / 1024:.1f} MiB)")
    print(
        f"reload restarting one device (SIGHUP -> applied): median {statistics.median(reloads) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
