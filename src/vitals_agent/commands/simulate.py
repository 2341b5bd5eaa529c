"""``vitals-agent simulate DRIVER --pty LINK | --tcp PORT | --rfc2217 PORT``: a realistic simulated device.

``--pty``: the device plays its protocol on the pty master; ``LINK`` is a symlink to the slave, which the
agent (or any serial program) opens like ``/dev/ttyUSB0``. The link is removed on exit.

``--tcp`` / ``--rfc2217``: the device sits behind a simulated terminal server (a Moxa NPort's port) on
``--host`` (loopback by default): raw TCP, or RFC 2217 with pyserial's server applying the line settings the
agent pushes. Each connection gets its own device. ``--count N`` serves N devices on N consecutive ports
(``--tcp 0``: N free ports), a ward for a test or a bench. With ``--verbose`` every byte sent and received is
logged at DEBUG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog

from vitals_agent import host
from vitals_agent import log_events as ev
from vitals_agent.commands._options import add_command
from vitals_agent.drivers.base import SimPort, Simulator, driver_class
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.errors import VitalsAgentError
from vitals_agent.logs import setup_logging

log = structlog.get_logger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "simulate", cmd_simulate)
    p.add_argument("driver", help="driver name (see `vitals-agent drivers`)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", type=Path, metavar="LINK", help="symlink to create for the device port")
    where.add_argument(
        "--tcp", type=_tcp_port, metavar="PORT", help="serve it on raw TCP (socket://HOST:PORT; 0: free)"
    )
    where.add_argument(
        "--rfc2217", type=_tcp_port, metavar="PORT", help="serve it on RFC 2217 (rfc2217://HOST:PORT)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on with --tcp/--rfc2217 (loopback)")
    p.add_argument(
        "--count", type=_count, default=1, metavar="N", help="with --tcp/--rfc2217: N devices on N ports"
    )
    p.add_argument(
        "--interval",
        type=_positive,
        metavar="S",
        help="seconds between readings (driver default if unset)",
    )
    p.add_argument("--seconds", type=float, metavar="N", help="stop after N seconds (default: until Ctrl-C)")
    p.add_argument("--verbose", "-v", action="store_true", help="log every byte sent and received (DEBUG)")


class LoggingPort:
    """A :class:`SimPort` that logs the traffic (hex and text) at DEBUG."""

    def __init__(self, port: SimPort, name: str) -> None:
        self._port = port
        self._name = name

    async def write(self, data: bytes) -> None:
        log.debug(ev.SIMULATOR_SENT, device=self._name, **_shown(data))
        await self._port.write(data)

    async def read(self, timeout: float) -> bytes:
        data = await self._port.read(timeout)
        if data:
            log.debug(ev.SIMULATOR_RECEIVED, device=self._name, **_shown(data))
        return data


def _shown(data: bytes) -> dict[str, str]:
    """Text protocols as text (CR/LF escaped), binary ones as hex."""
    text = data.decode("latin-1")
    if all(c.isprintable() or c in "\r\n" for c in text):
        return {"text": text.replace("\r", "\\r").replace("\n", "\\n")}
    return {"hex": data.hex()}


N = TypeVar("N", int, float)


def _checked(
    convert: Callable[[str], N], ok: Callable[[N], bool], unreadable: str, rule: str
) -> Callable[[str], N]:
    """An argparse ``type``: ``convert`` the text ("``unreadable``: 'text'" when it cannot), then ``rule``
    unless the value is ``ok``."""

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{unreadable}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(rule)
        return value

    return parse


_positive = _checked(float, lambda v: v > 0, "not a number", "must be > 0")
_tcp_port = _checked(
    int, lambda v: 0 <= v < 65536, "not a TCP port", "a TCP port is 0..65535 (0: a free one)"
)
_count = _checked(int, lambda v: 1 <= v <= 1000, "not a number", "must be 1..1000")


def check_link(link: Path) -> None:
    """Where the link goes: an existing folder, and no regular file of the user's to replace."""
    if os.path.lexists(link) and not os.path.islink(link):
        raise VitalsAgentError(f"{link} exists and is not a symlink; refusing to replace it")
    folder = link.parent
    if not folder.is_dir():
        raise VitalsAgentError(f"cannot create {link}: the folder {folder} does not exist")


def make_simulator(driver_name: str, interval: float | None) -> Simulator:
    """The driver's simulator; raises ValueError with a one-line reason when there is none, or when it
    has no interval setting but one was given."""
    driver = driver_class(driver_name)()
    try:
        return driver.simulator(**({} if interval is None else {"interval": interval}))
    except NotImplementedError:
        raise ValueError(f"driver {driver_name!r} has no simulator") from None


async def cmd_simulate(args: argparse.Namespace) -> int:
    setup_logging("DEBUG" if args.verbose else "INFO")
    tcp: int | None = getattr(args, "tcp", None)
    rfc: int | None = getattr(args, "rfc2217", None)
    if rfc is not None:
        return await _simulate_network(args, rfc, rfc2217=True)
    if tcp is not None:
        return await _simulate_network(args, tcp, rfc2217=False)
    link: Path = args.pty
    check_link(link)
    try:
        simulator = make_simulator(args.driver, args.interval)
    except ValueError as exc:
        raise VitalsAgentError(str(exc)) from None
    try:
        device = PtyDevice(link).open()
    except OSError as exc:
        raise VitalsAgentError(
            f"cannot create the pseudo-terminal at {link}: {exc.strerror or exc}"
        ) from None
    stop = asyncio.Event()
    remove_handlers = host.install_stop_handlers(stop)
    print(f"simulating {args.driver} on {link} -> {device.slave_name} (Ctrl-C to stop)", flush=True)
    task = asyncio.create_task(simulator.run(LoggingPort(device, args.driver)))
    waiter = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=args.seconds, return_when=asyncio.FIRST_COMPLETED
        )
        failure = task.exception() if task in done else None
        if failure is not None:
            raise VitalsAgentError(f"simulator stopped: {failure}")
        return 0
    finally:
        for pending in (task, waiter):
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        remove_handlers()
        device.close()


async def _simulate_network(args: argparse.Namespace, first_port: int, *, rfc2217: bool) -> int:
    """``--tcp`` / ``--rfc2217``: devices behind a simulated terminal server, until Ctrl-C or --seconds."""
    from vitals_agent.drivers.netsim import NetworkDevice

    try:
        make_simulator(args.driver, args.interval)  # fail early, in one line, for a driver without one
    except ValueError as exc:
        raise VitalsAgentError(str(exc)) from None
    count: int = getattr(args, "count", 1)
    address: str = getattr(args, "host", "127.0.0.1")
    devices: list[NetworkDevice] = []
    stop = asyncio.Event()
    remove_handlers = host.install_stop_handlers(stop)
    try:
        for n in range(count):
            port = first_port + n if first_port else 0
            device = NetworkDevice(
                lambda: make_simulator(args.driver, args.interval),
                rfc2217=rfc2217,
                host=address,
                port=port,
                name=f"{args.driver}-{n + 1}",
            )
            try:
                await device.start()
            except OSError as exc:
                raise VitalsAgentError(
                    f"cannot listen on {address}:{port}: {exc.strerror or exc} (choose another "
                    "--tcp/--rfc2217 port, or 0 for free ones)"
                ) from None
            devices.append(device)
            kind = "RFC 2217" if rfc2217 else "raw TCP"
            print(f"simulating {args.driver} on {device.url} ({kind}; set a device's port to it)", flush=True)
        print("Ctrl-C to stop", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.seconds):
                await stop.wait()
        return 0
    finally:
        for device in devices:
            await device.stop()
        remove_handlers()
