"""``vitals-agent receive``: a small MLLP receiver that prints every message and the ACK it sent."""

from __future__ import annotations

import argparse
import asyncio
import sys

from vitals_agent.hl7.receiver import ReceivedMessage, start_receiver


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("receive", help="listen for HL7 messages over MLLP and print them (a stand-in EHR)")
    p.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--ack", choices=["AA", "AE", "AR"], default="AA", help="acknowledgement code to answer")
    p.add_argument(
        "--count", type=int, default=0, help="stop after this many messages (default: run until Ctrl-C)"
    )
    p.set_defaults(func=cmd_receive)


def _print(exchange: ReceivedMessage, number: int) -> None:
    lines = [f"--- message {number} ---"]
    lines += [s for s in exchange.message.split("\r") if s]
    lines.append(f"--- ack {number} ---")
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

    try:
        handle = await start_receiver(
            args.host, args.port, lambda _m: None, args.ack, on_exchange=on_exchange
        )
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"listening on {args.host}:{handle.port} (MLLP, answering {args.ack})", flush=True)
    try:
        await done.wait()
    finally:
        await handle.close()
    return 0
