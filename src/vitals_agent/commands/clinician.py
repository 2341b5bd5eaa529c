"""``vitals-agent clinician set|show|clear``: who is taking the vitals (the running agent's clinician).

A badge scan (the barcode driver's ``clinician_pattern``) or the status page does the same. The clinician
is signed out with the patient, on ``clear``, or after ``[review] clinician_timeout_minutes`` without
activity. Talks to the control API on loopback, like ``patient``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from vitals_agent.agent.control import ControlClient
from vitals_agent.agent.patient.clinician import parse_clinician
from vitals_agent.commands._control import call_as_operator, operator
from vitals_agent.commands._options import add_action, add_actions, add_config_option, config_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = add_actions(sub, "clinician")
    s = add_action(
        group, "set", cmd_set, help="sign a clinician in (OBX-16 / OBR-10 of the readings they validate)"
    )
    s.add_argument("--id", required=True, dest="clinician_id", help="the clinician's id (badge number)")
    s.add_argument("--name", metavar="FAMILY^GIVEN", help="the clinician's name")
    w = add_action(group, "show", cmd_show, help="show who is signed in")
    w.add_argument("--json", action="store_true", help="print JSON")
    add_action(group, "clear", cmd_clear, help="sign the clinician out")
    for action in group.choices.values():  # each one asks the running agent
        add_config_option(action)


def clinician_line(snapshot: Any) -> str:
    if not isinstance(snapshot, dict) or not snapshot.get("set"):
        return "No clinician signed in"
    who = (
        f"{snapshot.get('name')} ({snapshot.get('id')})" if snapshot.get("name") else str(snapshot.get("id"))
    )
    return f"Clinician {who}: signed in via {snapshot.get('channel')}, until {snapshot.get('expires_at')}"


async def cmd_set(args: argparse.Namespace) -> int:
    config = config_from(args)
    clinician = parse_clinician(args.clinician_id, args.name)  # one clear line before any round trip
    body: dict[str, Any] = {**clinician.model_dump(exclude_none=True), **operator()}
    data = await ControlClient.from_config(config).call("PUT", "/api/clinician", body)
    print(clinician_line(data.get("clinician")))
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    data = await ControlClient.from_config(config_from(args)).call("GET", "/api/clinician")
    print(json.dumps(data.get("clinician"), indent=2) if args.json else clinician_line(data.get("clinician")))
    return 0


async def cmd_clear(args: argparse.Namespace) -> int:
    data = await call_as_operator(args, "DELETE", "/api/clinician")
    print("clinician signed out" if data.get("cleared") else "no clinician was signed in")
    return 0
