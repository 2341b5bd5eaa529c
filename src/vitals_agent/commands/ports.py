"""``vitals-agent ports [--config FILE]``: every serial port with its USB identity, and which configured
device (``usb`` or ``port``) it matches; devices behind terminal servers (``socket://``, ``rfc2217://``) are
listed with their kind and address."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from vitals_agent.commands._options import add_command, add_config_option, config_path
from vitals_agent.config.schema import load_config
from vitals_agent.drivers.base import SerialDriver, SerialOptions, driver_class
from vitals_agent.drivers.netport import network_port
from vitals_agent.drivers.ports import PortInfo, UsbId, list_serial_ports, same_port


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "ports", cmd_ports)
    add_config_option(
        p, help="show which configured device each port matches (default: the installed config, if any)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per port")


def configured_serial_devices(path: Path) -> list[tuple[str, SerialOptions]]:
    """(device id, serial options) of every configured serial device. Raises ConfigError."""
    config = load_config(path)
    drivers = [(d.id, driver_class(d.driver)(d.options)) for d in config.devices]
    return [
        (device_id, driver.serial_options)
        for device_id, driver in drivers
        if isinstance(driver, SerialDriver)
    ]


def matches_for(port: PortInfo, devices: list[tuple[str, SerialOptions]]) -> list[str]:
    """Ids of the configured devices that name this port (by usb identity or by path)."""
    out = []
    for device_id, options in devices:
        by_usb = options.usb is not None and UsbId.parse(options.usb).matches(port.usb)
        by_path = options.port is not None and same_port(options.port, port)
        if by_usb or by_path:
            out.append(device_id)
    return out


def unmatched(ports: list[PortInfo], devices: list[tuple[str, SerialOptions]]) -> list[tuple[str, str, str]]:
    """(device id, where, state) for configured devices that match no listed port."""
    matched = {device_id for p in ports for device_id in matches_for(p, devices)}
    out = []
    for device_id, options in devices:
        if device_id in matched:
            continue
        if options.usb is not None:
            out.append((device_id, f"usb {options.usb}", "not present"))
        else:
            where = options.port or ""
            net = network_port(where) if "://" in where else None
            if net is not None:
                state = f"on the network: {net.kind} to terminal server {net.host} port {net.port}"
            elif "://" in where:
                state = "URL (not a local port)"
            elif os.path.exists(where):
                state = "present, not in the port listing (pty or unusual driver)"
            else:
                state = "not present"
            out.append((device_id, f"port {where}", state))
    return out


def _row(port: PortInfo, matched: list[str]) -> dict[str, Any]:
    usb = port.usb
    return {
        "device": port.device,
        "usb": usb.ids if usb else None,
        "serial_number": usb.serial_number if usb else None,
        "description": port.description,
        "manufacturer": port.manufacturer,
        "matches": matched,
    }


async def cmd_ports(args: argparse.Namespace) -> int:
    devices: list[tuple[str, SerialOptions]] = []
    path = config_path(args, required=False)
    if path is not None:
        devices = configured_serial_devices(path)
    ports = list_serial_ports()
    rows = [_row(p, matches_for(p, devices)) for p in ports]
    missing = unmatched(ports, devices)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        for device_id, where, state in missing:
            print(json.dumps({"device_id": device_id, "configured": where, "state": state}))
        return 0
    if not rows:
        print("no serial ports found")
    else:
        headers = ("PORT", "USB", "SERIAL", "DESCRIPTION", "MANUFACTURER", "DEVICE")
        table = [
            (
                r["device"],
                r["usb"] or "-",
                r["serial_number"] or "-",
                r["description"] or "-",
                r["manufacturer"] or "-",
                ", ".join(r["matches"]) or "-",
            )
            for r in rows
        ]
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
        for line in (headers, *table):
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    if missing:
        print()
        for device_id, where, state in missing:
            print(f"{device_id}: {where}: {state}")
    return 0
