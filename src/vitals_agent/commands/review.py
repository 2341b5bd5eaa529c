"""``vitals-agent review list|confirm|reject|correct|wrong-patient``: the clinician's review list.

``confirm ID... | --all`` sends waiting readings with OBX-11 ``F`` and the signed-in clinician (refused
without one); ``reject ID --reason TEXT`` keeps a reading from the EHR (``confirm`` mode) or posts it as
wrong (``auto+confirm``); ``correct ID metric=value...`` re-sends with ``C``; ``wrong-patient ID`` sends
``W`` to the chart it went to and files the values to the next patient set. Through the running agent.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from vitals_agent.agent.control import ControlClient
from vitals_agent.agent.control.page import metric_label, when
from vitals_agent.commands._control import call_as_operator
from vitals_agent.commands._options import add_action, add_actions, add_config_option, config_from
from vitals_agent.commands.clinician import clinician_line
from vitals_agent.errors import VitalsAgentError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = add_actions(sub, "review")

    ls = add_action(group, "list", cmd_list, help="readings waiting for review, then the recent ones")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--reveal", action="store_true", help="show the patients' identifiers (audited)")

    c = add_action(
        group, "confirm", cmd_confirm, help="validate readings: sent with F and the signed-in clinician"
    )
    c.add_argument("ids", nargs="*", type=int, metavar="ID")
    c.add_argument("--all", action="store_true", help="every reading waiting for review")

    r = add_action(
        group, "reject", cmd_reject, help="keep a reading from the EHR (or post it as wrong once sent)"
    )
    r.add_argument("id", type=int, metavar="ID")
    r.add_argument("--reason", required=True, help="why (audited)")

    k = add_action(
        group, "correct", cmd_correct, help="correct values: re-sent with C (metric=value in its unit)"
    )
    k.add_argument("id", type=int, metavar="ID")
    k.add_argument("values", nargs="+", metavar="METRIC=VALUE", help="e.g. bp_systolic=132")

    w = add_action(
        group,
        "wrong-patient",
        cmd_wrong_patient,
        help="W to the chart it went to; the values to the next patient set",
    )
    w.add_argument("id", type=int, metavar="ID")
    for action in group.choices.values():  # each one asks the running agent
        add_config_option(action)


def pairs(values: list[str]) -> dict[str, str]:
    """``["resp_rate=16", "pain=3"]`` -> ``{"resp_rate": "16", "pain": "3"}``."""
    out: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise VitalsAgentError(f"{text!r}: write NAME=VALUE, e.g. resp_rate=16")
        if key.strip() in out:
            raise VitalsAgentError(f"{key.strip()} given twice")
        out[key.strip()] = value.strip()
    return out


def item_line(item: dict[str, Any], now: datetime) -> str:
    values = ", ".join(f"{metric_label(k)} {v}" for k, v in item.get("values", {}).items())
    values += "".join(f", {metric_label(k)} {v}" for k, v in item.get("qualifiers", {}).items())
    for part in item.get("manual", []):
        values += " + " + ", ".join(f"{metric_label(k)} {v}" for k, v in part.items())
    patient = item.get("patient")
    who = (
        "unbound"
        if not patient
        else f"{patient.get('mrn')}" + (f" {patient['name']}" if patient.get("name") else "")
    )
    if item.get("awaiting_patient"):
        state = "WAITS FOR THE RIGHT PATIENT"
    elif item.get("waiting"):
        state = "WAITING FOR REVIEW" + (" (sent as R)" if item.get("needs_confirm") else "")
    else:
        state = f"{item.get('state')} {item.get('status') or ''}".strip()
    by = f"; by {item['validator']}" if item.get("validator") else ""
    return (
        f"{item.get('id'):>5}  {when(item.get('taken_at'), now)}  {item.get('device')}  {values}  "
        f"[{who}]  {state}{by}"
    )


async def cmd_list(args: argparse.Namespace) -> int:
    path = "/api/review?reveal=1" if args.reveal else "/api/review"
    data = await ControlClient.from_config(config_from(args)).call("GET", path)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    now = datetime.now(UTC)
    print(f"review mode {data.get('mode')}; {clinician_line(data.get('clinician'))}")
    items = data.get("items") or []
    if not items:
        print("(no readings in the review list)")
    for item in items:
        print(item_line(item, now))
    return 0


async def cmd_confirm(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all):
        raise VitalsAgentError("give the review item ids, or --all")
    body: dict[str, Any] = {"all": True} if args.all else {"ids": args.ids}
    data = await call_as_operator(args, "POST", "/api/review/confirm", **body)
    for item, control_id in zip(data.get("confirmed", []), data.get("control_ids", []), strict=False):
        print(f"review item {item} confirmed: sent as F (MSH-10 {control_id})")
    return 0


async def _on_item(args: argparse.Namespace, action: str, **fields: Any) -> Any:
    """``POST /api/review/ACTION`` for review item ``args.id``, as the person at this terminal."""
    return await call_as_operator(args, "POST", f"/api/review/{action}", id=args.id, **fields)


async def cmd_reject(args: argparse.Namespace) -> int:
    data = await _on_item(args, "reject", reason=args.reason)
    sent = data.get("status") == "W"
    print(f"review item {args.id} rejected: " + ("posted to the EHR as wrong (W)" if sent else "not sent"))
    return 0


async def cmd_correct(args: argparse.Namespace) -> int:
    data = await _on_item(args, "correct", values=pairs(args.values))
    if data.get("status") == "C":
        print(f"review item {args.id} corrected: sent as C (MSH-10 {data['control_ids'][-1]})")
    else:
        print(f"review item {args.id} corrected in the review list (not sent yet)")
    return 0


async def cmd_wrong_patient(args: argparse.Namespace) -> int:
    data = await _on_item(args, "wrong-patient")
    if data.get("status") == "W":
        print(f"review item {args.id}: sent to its chart as wrong (W); the values go to the next patient set")
    else:
        print(f"review item {args.id}: not sent yet; it waits for the right patient to be set")
    return 0
