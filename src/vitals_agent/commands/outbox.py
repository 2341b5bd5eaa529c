"""``vitals-agent outbox``: look at and repair the delivery queue of a running or stopped agent.

    vitals-agent outbox list            [--dead | --queued] [--json]
    vitals-agent outbox show ID         [--show-phi] [--json]
    vitals-agent outbox retry ID | --all-dead | --all-ackwait
    vitals-agent outbox dead-letter ID | --all-ackwait  [--reason TEXT]
    vitals-agent outbox purge --dead --older-than 7d

Every subcommand takes ``--config FILE`` (to find ``[agent] data_dir``; default: the installed config) or
``--data-dir DIR``. It opens the agent's SQLite outbox next to the running agent (WAL and SQLite's own
locking keep both consistent) and never creates one. Run by root on the service's ``data_dir``, it first
becomes the directory's owner (and says so), so no root-owned file is left for the service to trip over.
Message bodies hold patient data: ``show`` prints only the MSH segment and the segment names unless
``--show-phi`` is given (a FHIR Bundle: its identifier and each entry's method and resource type). The
receiver's free text (MSA-3/ERR of a negative ACK, a FHIR OperationOutcome), which receivers use to echo
patient names and ids, is shown by ``list`` and ``show`` only with ``--show-phi`` as well.

Every action that touches patient data or the queue is an audit record in ``data_dir/audit.jsonl``
(``outbox_retried``, ``outbox_dead_lettered``, ``outbox_purged``, ``outbox_shown`` / ``outbox_listed``
with ``--show-phi``), with the operating-system user who ran it; the action is refused when the audit log
cannot be written. ``show``, ``retry`` and ``dead-letter`` take the row id or the MSH-10 (control id). Each
row is one reading for one destination (``TO``: ``ehr`` or ``fhir``); a reading sent to both has two rows
with the same control id.

Enhanced acknowledgement mode (``[ehr] application_ack_type`` AL/SU) leaves messages the receiver committed
(``CA``) in the state ``ackwait`` until their application ACK; when it is overdue the interface analyst
decides: ``retry`` sends the message again with the same MSH-10 (the engine's duplicate check can tell a
re-send), ``dead-letter`` stops waiting and parks it with the dead letters (``retry`` can still send it,
``purge`` deletes it). A running agent notices either within its idle poll (about 2 s) and stops waiting.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vitals_agent.agent.instance import run_as_data_dir_owner, user_name
from vitals_agent.agent.storage.audit import CHANNEL_CLI, AuditError, AuditLog
from vitals_agent.agent.storage.outbox import AwaitingMessage, DeadLetter, Outbox, OutboxMessage
from vitals_agent.commands._options import Handler, add_action, add_actions, add_config_option, config_from
from vitals_agent.errors import ConfigError, VitalsAgentError
from vitals_agent.redact import message_lines

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` -> seconds."""
    match = _DURATION.match(text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The way a user writes it: ``7d``, ``12h``, ``90m``, ``45s`` (the largest unit that divides it)."""
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds:g}s"


# --all-... flags: what they act on
_EVERY = {
    "--all-dead": "every dead letter",
    "--all-ackwait": "every message awaiting its application ACK",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = add_actions(sub, "outbox")

    def action(name: str, func: Handler, help: str) -> argparse.ArgumentParser:
        q = add_action(group, name, func, help=help)
        add_config_option(q)
        q.add_argument(
            "--data-dir", type=Path, metavar="DIR", help="the agent's data directory, instead of --config"
        )
        return q

    def target(q: argparse.ArgumentParser, id_help: str, *every: str) -> None:
        """ID, or one of the ``--all-...`` flags (exactly one)."""
        one_of = q.add_mutually_exclusive_group(required=True)
        one_of.add_argument("id", nargs="?", metavar="ID", help=id_help)
        for flag in every:
            one_of.add_argument(flag, action="store_true", help=_EVERY[flag])

    q = action("list", cmd_list, "list queued messages and dead letters (no bodies)")
    which = q.add_mutually_exclusive_group()
    which.add_argument("--dead", action="store_true", help="only dead letters")
    which.add_argument("--queued", action="store_true", help="only messages waiting for delivery")
    q.add_argument("--limit", type=int, default=1000, help="at most this many of each (default 1000)")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.add_argument(
        "--show-phi",
        action="store_true",
        help="include the receiver's error text (it may echo patient data; audited)",
    )

    q = action("show", cmd_show, "show one message (body redacted unless --show-phi)")
    q.add_argument("id", metavar="ID", help="message id or MSH-10 control id (from `outbox list`)")
    q.add_argument(
        "--show-phi",
        action="store_true",
        help="print the whole message and the receiver's text, patient data included (audited)",
    )
    q.add_argument("--json", action="store_true", help="print as JSON")

    q = action(
        "retry",
        cmd_retry,
        "send dead letters or messages awaiting an application ACK again (same MSH-10, original place)",
    )
    target(q, "id or MSH-10 of a dead letter or of an ackwait message", "--all-dead", "--all-ackwait")

    q = action(
        "dead-letter",
        cmd_dead_letter,
        "stop waiting for the application ACK of a committed message (ackwait): park it as dead",
    )
    target(q, "id or MSH-10 of an ackwait message", "--all-ackwait")
    q.add_argument(
        "--reason",
        metavar="TEXT",
        default="",
        help="why (kept with the dead letter and in the audit log), e.g. a ticket number",
    )

    q = action("purge", cmd_purge, "delete old dead letters")
    q.add_argument("--dead", action="store_true", required=True, help="purge dead letters (required)")
    q.add_argument(
        "--older-than", type=parse_duration, required=True, metavar="AGE", help="e.g. 7d, 12h, 30m"
    )


def _operator() -> dict[str, Any]:
    """Who runs the command, for the audit record (taken before any switch to the data dir's owner)."""
    uid = os.getuid() if hasattr(os, "getuid") else None  # Windows: no uids; the account name says who
    who: dict[str, Any] = {"channel": CHANNEL_CLI}
    if uid is None:
        who["user"] = getpass.getuser()
    else:
        who.update(uid=uid, user=user_name(uid))
    if os.environ.get("SUDO_USER"):
        who["sudo_user"] = os.environ["SUDO_USER"]
    return who


class _Audited:
    """The outbox and the audit log, opened together: an action that cannot be audited is not done."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.operator = _operator()
        self.outbox = _open(args)
        try:
            self.audit = AuditLog.in_dir(self.outbox.data_dir)
        except AuditError as exc:
            self.outbox.close()
            raise VitalsAgentError(f"{exc}; nothing was done (every outbox action is audited)") from None

    def record(self, event: str, **fields: Any) -> None:
        try:
            self.audit.record(event, **self.operator, **fields)
        except AuditError as exc:
            raise VitalsAgentError(f"{exc}; the action was not audited") from None

    def close(self) -> None:
        self.outbox.close()
        self.audit.close()


def _open(args: argparse.Namespace) -> Outbox:
    if args.data_dir is not None:
        if args.config is not None:
            raise VitalsAgentError("give --config FILE or --data-dir DIR, not both")
        directory: Path = args.data_dir
    else:
        from vitals_agent.agent.paths import data_dir

        directory = data_dir(config_from(args), create=False)
    if not directory.is_dir():
        raise ConfigError([("data_dir", f"{directory} is not a directory")])
    user = run_as_data_dir_owner(directory)
    if user is not None:
        print(f"(running as {user}, the owner of {directory})", file=sys.stderr)
    return Outbox(directory, create=False)


Item = OutboxMessage | DeadLetter | AwaitingMessage


def _lookup(outbox: Outbox, key: str) -> list[Item]:
    """The message with this row id (digits), or every row with this MSH-10 (one per destination),
    queued, dead or awaiting its application ACK."""
    item = outbox.get(int(key)) if key.isdigit() else None
    if item is not None:
        return [item]
    awaiting = [a for a in outbox.awaiting() if a.control_id == key or (key.isdigit() and a.id == int(key))]
    if key.isdigit() and awaiting:
        return list(awaiting)
    return [*outbox.find_all(key), *awaiting]


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _one_line(text: str | None, width: int = 100) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


HIDDEN = "receiver text hidden; --show-phi shows it"


def _record(item: OutboxMessage | DeadLetter | AwaitingMessage, *, show_phi: bool = False) -> dict[str, Any]:
    """One row for ``list``/``show``. Without ``show_phi`` the receiver's free text (``ack_text``, and
    ``last_error`` once the receiver answered negatively) is withheld: receivers echo patient data in it."""
    rec = _raw_record(item)
    if not show_phi:
        hidden = False
        if rec.get("ack_text"):
            rec["ack_text"] = None
            hidden = True
        if rec.get("nacks") and rec.get("last_error"):
            rec["last_error"] = None
            hidden = True
        if hidden:
            rec["receiver_text"] = "hidden"
    return rec


def _raw_record(item: OutboxMessage | DeadLetter | AwaitingMessage) -> dict[str, Any]:
    if isinstance(item, AwaitingMessage):  # enhanced mode: committed (CA), the application ACK owed
        return {
            "id": item.id,
            "state": "ackwait",
            "destination": item.destination,
            "control_id": item.control_id,
            "device_id": item.device_id,
            "created_at": _when(item.created_at),
            "attempts": item.attempts,
            "committed_at": _when(item.committed_at),
            "reason": f"committed by the receiver {_when(item.committed_at)}; awaiting its application ACK",
            "meta": item.meta,
            "bytes": len(item.body),
        }
    if isinstance(item, DeadLetter):
        return {
            "id": item.id,
            "state": "dead",
            "destination": item.destination,
            "control_id": item.control_id,
            "device_id": item.device_id,
            "created_at": _when(item.created_at),
            "attempts": item.attempts,
            "dead_at": _when(item.dead_at),
            "reason": item.reason,
            "ack_code": item.ack_code,
            "ack_text": item.ack_text,
            "meta": item.meta,
            "bytes": len(item.body),
        }
    return {
        "id": item.id,
        "state": "queued",
        "destination": item.destination,
        "control_id": item.control_id,
        "device_id": item.device_id,
        "created_at": _when(item.created_at),
        "attempts": item.attempts,
        "nacks": item.nacks,
        "last_error": item.last_error,
        "meta": item.meta,
        "bytes": len(item.body),
    }


async def cmd_list(args: argparse.Namespace) -> int:
    session = _Audited(args) if args.show_phi else None
    outbox = session.outbox if session is not None else _open(args)
    try:
        items: list[OutboxMessage | DeadLetter | AwaitingMessage] = []
        awaiting = outbox.awaiting()
        if not args.dead:
            items.extend(outbox.list_queued(args.limit))
            items.extend(awaiting[: args.limit])
        if not args.queued:
            items.extend(outbox.list_dead(args.limit))
        depth, dead = outbox.depth(), outbox.dead_count()
        if session is not None:
            session.record("outbox_listed", show_phi=True, rows=len(items))
    finally:
        if session is not None:
            session.close()
        else:
            outbox.close()
    if args.json:
        for item in items:
            print(json.dumps(_record(item, show_phi=args.show_phi)))
        return 0
    waiting = f", {len(awaiting)} awaiting an application ACK" if awaiting else ""
    print(f"{depth} queued{waiting}, {dead} dead")
    if items:
        print(
            f"{'ID':>7}  {'STATE':<7}  {'CONTROL ID':<22}  {'DEVICE':<16}  {'TO':<4}  "
            f"{'CREATED (UTC)':<25}  {'TRIES':>5}  NOTE"
        )
    for item in items:
        rec = _record(item, show_phi=args.show_phi)
        note = rec.get("reason") or rec.get("last_error") or ""
        if rec.get("ack_text") and rec["ack_text"] != note:
            note = f"{note}: {rec['ack_text']}"
        if rec.get("receiver_text") == "hidden":
            note = f"{note} ({HIDDEN})" if note else f"({HIDDEN})"
        print(
            f"{rec['id']:>7}  {rec['state']:<7}  {rec['control_id']:<22}  {rec['device_id']:<16}  "
            f"{rec['destination']:<4}  {rec['created_at']:<25}  {rec['attempts']:>5}  {_one_line(note)}"
        )
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    session = _Audited(args) if args.show_phi else None
    outbox = session.outbox if session is not None else _open(args)
    try:
        items = _lookup(outbox, args.id)
        if items and session is not None:  # before anything is printed
            session.record(
                "outbox_shown",
                show_phi=True,
                ids=[item.id for item in items],
                control_ids=sorted({item.control_id for item in items}),
            )
    finally:
        if session is not None:
            session.close()
        else:
            outbox.close()
    if not items:
        raise VitalsAgentError(f"no message with id or MSH-10 {args.id!r} (see `vitals-agent outbox list`)")
    for index, item in enumerate(items):
        rec = _record(item, show_phi=args.show_phi)
        body = item.body.decode("utf-8", "replace") if args.show_phi else "\n".join(message_lines(item.body))
        if args.json:
            rec["body"] = body
            rec["body_redacted"] = not args.show_phi
            print(json.dumps(rec, indent=2))
            continue
        if index:
            print()
        for key, value in rec.items():
            if value not in (None, "", {}):
                print(f"{key:>11}: {value}")
        print("       body:" + ("" if args.show_phi else " (redacted; --show-phi shows patient data)"))
        for line in body.replace("\r", "\n").splitlines():
            print(f"  {line}")
    return 0


def _requeue(outbox: Outbox, item: DeadLetter | AwaitingMessage) -> bool:
    if isinstance(item, DeadLetter):
        return outbox.retry_dead(item.id) > 0
    return outbox.retry_awaiting(item.id)


async def cmd_retry(args: argparse.Namespace) -> int:
    session = _Audited(args)
    outbox = session.outbox
    try:
        if args.all_dead:
            every = outbox.list_dead(limit=1_000_000)
            moved = outbox.retry_dead()
            session.record(
                "outbox_retried",
                all_dead=True,
                count=moved,
                ids=[d.id for d in every],
                control_ids=sorted({d.control_id for d in every}),
            )
            print(f"re-queued {moved} dead letter(s)")
            return 0
        if args.all_ackwait:
            waiting = outbox.awaiting()
            sent = [item for item in waiting if outbox.retry_awaiting(item.id)]
            session.record(
                "outbox_retried",
                all_ackwait=True,
                ackwait=True,
                count=len(sent),
                ids=[a.id for a in sent],
                control_ids=sorted({a.control_id for a in sent}),
            )
            print(f"re-queued {len(sent)} message(s) awaiting an application ACK; each keeps its MSH-10")
            return 0
        items = _lookup(outbox, args.id)
        if not items:
            raise VitalsAgentError(f"no message with id or MSH-10 {args.id!r}")
        movable = [item for item in items if isinstance(item, DeadLetter | AwaitingMessage)]
        if not movable:
            item = items[0]
            raise VitalsAgentError(f"message {item.id} ({item.control_id}) is already queued, not dead")
        moved_items = [item for item in movable if _requeue(outbox, item)]
        ackwait = [item for item in moved_items if isinstance(item, AwaitingMessage)]
        session.record(
            "outbox_retried",
            all_dead=False,
            count=len(moved_items),
            ids=[item.id for item in moved_items],
            control_ids=sorted({item.control_id for item in moved_items}),
            **({"ackwait": True} if ackwait else {}),
        )
        for item in moved_items:
            to = f" for {item.destination}" if item.destination != "ehr" else ""
            was = " (it awaited its application ACK)" if isinstance(item, AwaitingMessage) else ""
            print(f"re-queued message {item.id} ({item.control_id}){to}{was}; it keeps its MSH-10")
        if len(moved_items) < len(movable):
            print("(the rest was no longer dead or awaiting: the agent or another operator moved it)")
    finally:
        session.close()
    return 0


GAVE_UP = "operator gave up waiting for the application ACK (the receiver had committed it, CA, {when})"


async def cmd_dead_letter(args: argparse.Namespace) -> int:
    session = _Audited(args)
    outbox = session.outbox
    try:
        if args.all_ackwait:
            waiting = outbox.awaiting()
        else:
            items = _lookup(outbox, args.id)
            if not items:
                raise VitalsAgentError(f"no message with id or MSH-10 {args.id!r}")
            waiting = [item for item in items if isinstance(item, AwaitingMessage)]
            if not waiting:
                item = items[0]
                state = "dead already" if isinstance(item, DeadLetter) else "queued"
                raise VitalsAgentError(
                    f"message {item.id} ({item.control_id}) is {state}, not awaiting an application ACK "
                    "(only ackwait messages are dead-lettered by hand)"
                )
        note = " ".join(args.reason.split())
        moved = []
        for item in waiting:
            reason = GAVE_UP.format(when=_when(item.committed_at)) + (f": {note}" if note else "")
            if outbox.give_up_awaiting(item.id, reason):
                moved.append(item)
        session.record(
            "outbox_dead_lettered",
            all_ackwait=bool(args.all_ackwait),
            count=len(moved),
            ids=[item.id for item in moved],
            control_ids=sorted({item.control_id for item in moved}),
            reason=note,
        )
    finally:
        session.close()
    for item in moved:
        print(
            f"dead-lettered message {item.id} ({item.control_id}): no longer waiting for its application ACK"
            " (`outbox retry` sends it again)"
        )
    if args.all_ackwait and not moved:
        print("no message awaits an application ACK")
    elif len(moved) < len(waiting):
        print("(the rest no longer awaited one: its application ACK came meanwhile, or an operator moved it)")
    return 0


async def cmd_purge(args: argparse.Namespace) -> int:
    session = _Audited(args)
    try:
        removed = session.outbox.purge_dead(args.older_than)
        session.record("outbox_purged", older_than_seconds=args.older_than, count=removed)
    finally:
        session.close()
    print(f"purged {removed} dead letter(s) older than {format_duration(args.older_than)}")
    return 0
