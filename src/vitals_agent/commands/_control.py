"""What the commands that talk to the running agent share (``patient``, ``clinician``, ``review``,
``manual``): who is asking, for the agent's audit record, and the call made on their behalf."""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from vitals_agent.agent.control import ControlClient
from vitals_agent.commands._options import config_from


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"


def operator() -> dict[str, str]:
    """The person at this terminal as the control API audits them: channel ``cli``, the OS user."""
    return {"channel": "cli", "source": os_user()}


async def call_as_operator(args: argparse.Namespace, method: str, path: str, **fields: Any) -> Any:
    """Call the control API of the agent ``--config`` names, for the person at this terminal."""
    return await ControlClient.from_config(config_from(args)).call(method, path, {**operator(), **fields})
