"""``vitals-agent status``: what the status page shows, in the terminal (from the running agent)."""

from __future__ import annotations

import argparse
import json

from vitals_agent.agent.control import ControlClient, render_text
from vitals_agent.commands._options import add_command, add_config_option, config_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "status", cmd_status)
    add_config_option(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the status snapshot as JSON")
    out.add_argument(
        "--url",
        action="store_true",
        help="print the status page address with a login code that works once, within 60 s",
    )


async def cmd_status(args: argparse.Namespace) -> int:
    client = ControlClient.from_config(config_from(args))
    if args.url:
        print(await client.login_url())
        return 0
    data = await client.call("GET", "/api/status")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(render_text(data, data.get("patient") or {}), end="")
    return 0
