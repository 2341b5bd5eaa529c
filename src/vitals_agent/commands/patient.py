"""``vitals-agent patient set|confirm|cancel|clear|show|scan|discard-held``: the room's patient, via the
running agent.

Each subcommand finds the running agent through ``--config`` (its ``data_dir`` holds ``control.json`` and the
``control.token`` only the agent's user can read) and talks to its control API on loopback. ``scan`` is for
keyboard-wedge scanners: it reads one line from standard input (``--loop``: one per line until end of
input) and applies the ``[patient] mrn_pattern``.

With ``[pdq]`` configured, ``set`` and ``scan`` look the MRN up in the EHR: one match is left pending and
shown masked (initials, year of birth); ``confirm`` binds it (``--pick N`` among several), ``cancel``
drops it. No match, or an EHR that cannot be asked, exits 1 with one line and binds nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from vitals_agent.agent.control import ControlClient, ControlError, patient_line
from vitals_agent.agent.control.page import WAITING_LINE, pending_line
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.commands._control import call_as_operator, operator
from vitals_agent.commands._options import add_action, add_actions, add_config_option, config_from
from vitals_agent.drivers.barcode import extract_mrn
from vitals_agent.errors import DecodeError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = add_actions(sub, "patient")

    s = add_action(group, "set", cmd_set, help="make a patient the room's patient")
    s.add_argument("--mrn", required=True, help="medical record number (PID-3)")
    s.add_argument("--name", metavar="FAMILY^GIVEN", help="patient name (PID-5)")
    s.add_argument("--dob", metavar="YYYYMMDD", help="date of birth (PID-7)")
    s.add_argument("--sex", choices=["F", "M", "U"], help="administrative sex (PID-8)")
    s.add_argument("--encounter", metavar="VISIT", help="visit number (PV1-19)")

    f = add_action(
        group,
        "confirm",
        cmd_confirm,
        help="bind the patient the EHR answered with ([pdq]; after set or a scan)",
    )
    f.add_argument("--pick", type=int, metavar="N", help="which one, when several patients match")

    add_action(group, "cancel", cmd_cancel, help="drop a pending confirmation ([pdq]); nothing is bound")
    add_action(group, "clear", cmd_clear, help="end the room's patient context (next readings are unbound)")

    w = add_action(group, "show", cmd_show, help="show the room's patient (masked unless --reveal)")
    w.add_argument("--reveal", action="store_true", help="show the identifiers (audited)")
    w.add_argument("--json", action="store_true", help="print JSON")

    k = add_action(
        group, "scan", cmd_scan, help="read a wristband scan from a keyboard-wedge scanner (standard input)"
    )
    k.add_argument("--loop", action="store_true", help="keep reading scans, one per line, until end of input")

    add_action(
        group, "discard-held", cmd_discard_held, help="discard readings held for a patient (require_patient)"
    )
    for action in group.choices.values():  # each one asks the running agent
        add_config_option(action)


def _print_patient(data: Any) -> None:
    patient = data.get("patient") if isinstance(data, dict) else None
    if isinstance(patient, dict):
        print(patient_line(patient, _now()))


def _now() -> datetime:
    return datetime.now(UTC)


async def cmd_set(args: argparse.Namespace) -> int:
    config = config_from(args)
    # Validate here first: a clear one-line error without a round trip (and without echoing values).
    details = PatientDetails.from_name(
        args.mrn,
        args.name,
        birth_date=args.dob,
        sex=args.sex,
        encounter=args.encounter,
        identifier_type=config.patient.identifier_type,
    )
    body: dict[str, Any] = {**details.model_dump(exclude_none=True), **operator()}
    return await _put(ControlClient.from_config(config), body)


async def _put(client: ControlClient, body: dict[str, Any]) -> int:
    """PUT /api/patient and say what happened: bound, pending confirmation, no match, EHR trouble."""
    status, data = await client.request("PUT", "/api/patient", body)
    outcome = data.get("outcome") if isinstance(data, dict) else None
    if outcome is None:
        if status != 200:
            message = data.get("error") if isinstance(data, dict) else None
            raise ControlError(message or f"the agent answered HTTP {status}")
        _print_replaced(data)
        _print_patient(data)
        return 0
    message = str(data.get("message") or data.get("error") or outcome)
    if outcome == "pending":
        print(message)
        return 0
    if outcome == "fallback":
        print(message, file=sys.stderr)
        _print_patient(data)
        return 0
    print(message, file=sys.stderr)  # no match, or the EHR could not be asked: nothing bound
    return 1


async def cmd_confirm(args: argparse.Namespace) -> int:
    pick = {"pick": args.pick} if args.pick is not None else {}
    _print_patient(await call_as_operator(args, "POST", "/api/patient/confirm", **pick))
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    data = await call_as_operator(args, "POST", "/api/patient/cancel")
    print("confirmation cancelled; nothing was bound" if data.get("cancelled") else "nothing was pending")
    return 0


def _print_replaced(data: Any) -> None:
    """Say so when the room had another patient (masked: last MRN characters and initials)."""
    replaced = data.get("replaced") if isinstance(data, dict) else None
    if isinstance(replaced, dict):
        who = str(replaced.get("mrn") or "")
        if replaced.get("name"):
            who += f" ({replaced['name']})"
        print(f"replaced the room's previous patient {who}")


async def cmd_clear(args: argparse.Namespace) -> int:
    data = await call_as_operator(args, "DELETE", "/api/patient")
    print("patient context cleared" if data.get("cleared") else "no patient was set")
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    config = config_from(args)
    path = "/api/patient?reveal=1" if args.reveal else "/api/patient"
    data = await ControlClient.from_config(config).call("GET", path)
    if args.json:
        print(json.dumps(data.get("patient"), indent=2))
    else:
        pending = data.get("pending")
        patient = data.get("patient")
        if isinstance(pending, dict) and not (isinstance(patient, dict) and patient.get("set")):
            print(WAITING_LINE)
        else:
            _print_patient(data)
        if isinstance(pending, dict):
            print(pending_line(pending, _now()))
    return 0


async def cmd_scan(args: argparse.Namespace) -> int:
    config = config_from(args)
    client = ControlClient.from_config(config)
    pattern = config.patient.mrn_pattern
    status = 0
    while True:
        if sys.stdin.isatty():
            print("scan wristband: ", end="", file=sys.stderr, flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            if not args.loop:
                print("error: no scan on standard input", file=sys.stderr)
                return 1
            return status
        try:
            mrn = extract_mrn(pattern, line)
        except DecodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            if args.loop:
                continue
            return 1
        body = {
            "mrn": mrn,
            "identifier_type": config.patient.identifier_type,
            "channel": "barcode",
            "source": "keyboard",
        }
        code = await _put(client, body)
        status = status or code
        if not args.loop:
            return code


async def cmd_discard_held(args: argparse.Namespace) -> int:
    data = await call_as_operator(args, "DELETE", "/api/held")
    print(f"{data.get('discarded', 0)} held reading(s) discarded")
    return 0
