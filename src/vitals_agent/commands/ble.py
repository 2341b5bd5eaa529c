"""Technician tools for Bluetooth devices: ``vitals-agent scan`` and ``vitals-agent pair ADDRESS``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vitals_agent import host
from vitals_agent.commands._options import add_command


def register(sub: argparse._SubParsersAction[Any]) -> None:
    scan = add_command(sub, "scan", cmd_scan)
    scan.add_argument("--seconds", type=float, default=10.0, help="how long to listen (default 10)")
    scan.add_argument(
        "--all", action="store_true", help="list every advertising device, not only health ones"
    )
    scan.add_argument("--adapter", default=None, help="Bluetooth adapter, e.g. hci1 (default: BlueZ's)")

    pair = add_command(sub, "pair", cmd_pair)
    pair.add_argument("address", help="device address, AA:BB:CC:DD:EE:FF (see `vitals-agent scan`)")
    pair.add_argument("--adapter", default="hci0", help="Bluetooth adapter (default hci0)")
    pair.add_argument("--seconds", type=float, default=10.0, help="how long to look for the device")
    pair.add_argument("--timeout", type=float, default=60.0, help="how long to wait for pairing")


async def cmd_scan(args: argparse.Namespace) -> int:
    from vitals_agent.drivers.ble.scan import scan

    if args.seconds <= 0:
        print("error: --seconds must be positive", file=sys.stderr)
        return 2
    results = await scan(args.seconds, adapter=args.adapter, everything=args.all)  # TransportError: cli
    for result in results:
        print(result.line())
    if not results:
        print(f"no {'' if args.all else 'health '}devices seen in {args.seconds:g} s", file=sys.stderr)
    return 0


async def cmd_pair(args: argparse.Namespace) -> int:
    if not host.HAS_BLUEZ:
        raise host.PlatformError(
            "`vitals-agent pair` bonds through BlueZ (Linux); on Windows pair the device in Settings > "
            "Bluetooth & devices, then configure its address"
        )
    from vitals_agent.drivers.ble._bluez_pair import pair
    from vitals_agent.drivers.ble.address import parse_address

    try:
        address = parse_address(args.address)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = await pair(address, adapter=args.adapter, scan_seconds=args.seconds, timeout=args.timeout)
    label = f"{result.address} ({result.name})" if result.name else result.address
    print(f"{label}: {'already paired' if result.already_paired else 'paired, bonded and trusted'}")
    return 0
