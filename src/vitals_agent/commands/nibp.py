"""``vitals-agent nibp-start``: start a blood-pressure measurement on a SunTech Advantage-type module.

Writes the module's start command (``3A 20 A6``, devices.md 2.5) to the port of a configured
``suntech-advantage`` device (``--config FILE --device ID``; ``usb`` identities are resolved like the agent
does) or to ``--port PATH``. The running agent, which has the port open, sees the module's "measurement
complete" frame, asks for the result and reports it: this command only starts the measurement. The port is
opened without an exclusive lock, so it works while the agent is running.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import serial

from vitals_agent.commands._options import add_command, add_config_option, config_path
from vitals_agent.config.schema import load_config
from vitals_agent.drivers.base import SerialSettings, driver_class
from vitals_agent.drivers.ports import resolve_usb
from vitals_agent.drivers.suntech import START_MEASUREMENT, SunTechDriver
from vitals_agent.errors import VitalsAgentError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "nibp-start", cmd_nibp_start)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--device", metavar="ID", help="a configured suntech-advantage device (needs --config)"
    )
    where.add_argument("--port", metavar="PATH", help="serial port path or pyserial URL of the module")
    add_config_option(p, help="configuration file (with --device; default: the installed one)")


def target_from_config(path: Path, device_id: str) -> tuple[str, SerialSettings]:
    """The port and line settings of configured device ``device_id``. Raises VitalsAgentError."""
    config = load_config(path)
    device = next((d for d in config.devices if d.id == device_id), None)
    if device is None:
        raise VitalsAgentError(f"no device {device_id!r} in {path}")
    driver = driver_class(device.driver)(device.options)
    if not isinstance(driver, SunTechDriver):
        raise VitalsAgentError(
            f"device {device_id!r} uses driver {device.driver!r}, not {SunTechDriver.name!r}"
        )
    options = driver.options
    port = resolve_usb(options.usb).device if options.usb is not None else options.port
    if port is None:
        raise VitalsAgentError(f"device {device_id!r} has no port or usb")
    return port, driver.line_settings()


def send_start(port: str, settings: SerialSettings) -> None:
    try:
        link = serial.serial_for_url(port, **settings.model_dump(), timeout=1.0, write_timeout=2.0)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise VitalsAgentError(f"cannot open {port}: {' '.join(str(exc).split())}") from None
    try:
        link.write(START_MEASUREMENT)
        link.flush()
    except (serial.SerialException, OSError) as exc:
        raise VitalsAgentError(f"write to {port} failed: {' '.join(str(exc).split())}") from None
    finally:
        link.close()


async def cmd_nibp_start(args: argparse.Namespace) -> int:
    if args.device is not None:
        path = config_path(args)
        assert path is not None
        port, settings = target_from_config(path, args.device)
    else:
        port, settings = args.port, SunTechDriver.serial_defaults or SerialSettings()
    await asyncio.to_thread(send_start, port, settings)
    print(f"start command sent to {port}")
    return 0
