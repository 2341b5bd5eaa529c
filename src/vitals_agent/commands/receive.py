"""``vitals-agent receive``: a small MLLP receiver that prints every message and the ACK it sent.

With ``--pdq PATIENTS.csv`` it is also an IHE PDQ supplier (ITI-21): a ``QBP^Q22`` is answered with an
``RSP^K22`` from the CSV (``mrn,name,dob,sex,visit``; see :func:`~vitals_agent.hl7.pdq.parse_patients_csv`),
``--ack AE``/``AR`` answering every query with that error instead.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import sys
from datetime import UTC, datetime
from pathlib import Path

from vitals_agent.commands._options import add_command
from vitals_agent.errors import VitalsAgentError
from vitals_agent.hl7.oru import new_control_id
from vitals_agent.hl7.pdq import Authority, PdqDirectory, parse_patients_csv
from vitals_agent.net.receiver import Answerer, ReceivedMessage, start_receiver


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "receive", cmd_receive)
    p.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--ack", choices=["AA", "AE", "AR"], default="AA", help="acknowledgement code to answer")
    p.add_argument(
        "--count", type=int, default=0, help="stop after this many messages (default: run until Ctrl-C)"
    )
    p.add_argument(
        "--pdq",
        type=Path,
        metavar="PATIENTS.csv",
        help="also answer IHE PDQ queries (QBP^Q22) from this CSV: mrn,name,dob,sex,visit",
    )
    p.add_argument(
        "--pdq-authority",
        default="",
        metavar="HD",
        help="the patients' assigning authority, e.g. EXCLINIC&2.999.1&ISO (PID-3.4 in answers)",
    )


def load_directory(path: Path, authority: str) -> PdqDirectory:
    """The PDQ supplier for ``--pdq``. Raises ValueError / OSError with a one-line reason."""
    text = path.read_text("utf-8-sig")
    domain = Authority.parse(authority)
    return PdqDirectory(
        parse_patients_csv(text, authority=domain), authority=domain, application="PDQ_SUPPLIER"
    )


def pdq_answerer(directory: PdqDirectory, ack_code: str) -> Answerer:
    def answer(text: str) -> str | None:
        if "QBP^Q22" not in text.split("\r", 1)[0]:
            return None  # not a query: the plain ACK
        return directory.answer(text, control_id=new_control_id(), now=datetime.now(UTC), ack_code=ack_code)

    return answer


def _print(exchange: ReceivedMessage, number: int) -> None:
    lines = [f"--- message {number} ---"]
    lines += [s for s in exchange.message.split("\r") if s]
    kind = "answer" if exchange.ack.split("\r", 1)[0].count("RSP^K22") else "ack"
    lines.append(f"--- {kind} {number} ---")
    lines += [s for s in exchange.ack.split("\r") if s]
    print("\n".join(lines), flush=True)


async def cmd_receive(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print("error: --port must be 0..65535", file=sys.stderr)
        return 2
    if args.count < 0:
        print("error: --count must be >= 0", file=sys.stderr)
        return 2
    done = asyncio.Event()
    seen = 0

    def on_exchange(exchange: ReceivedMessage) -> None:
        nonlocal seen
        seen += 1
        _print(exchange, seen)
        if args.count and seen >= args.count:
            done.set()

    answer: Answerer | None = None
    if args.pdq is not None:
        try:
            directory = load_directory(args.pdq, args.pdq_authority)
        except OSError as exc:
            raise VitalsAgentError(f"cannot read {args.pdq}: {exc.strerror or exc}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise VitalsAgentError(f"{args.pdq}: {exc}") from None
        answer = pdq_answerer(directory, args.ack)
    try:
        handle = await start_receiver(
            args.host, args.port, lambda _m: None, args.ack, on_exchange=on_exchange, answer=answer
        )
    except OSError as exc:
        busy = exc.errno == errno.EADDRINUSE
        reason = "the port is in use by another program" if busy else (exc.strerror or str(exc))
        raise VitalsAgentError(f"cannot listen on {args.host}:{args.port}: {reason}") from None
    pdq = f", PDQ supplier for {len(directory.patients)} patient(s)" if answer is not None else ""
    print(f"listening on {args.host}:{handle.port} (MLLP, answering {args.ack}{pdq})", flush=True)
    try:
        await done.wait()
    finally:
        await handle.close()
    return 0
