"""Serial ports: how they are read, whether a port name is present, how names compare.

POSIX: a port is a file descriptor the event loop watches (pyserial-asyncio-fast), and a name is a path.
Windows: pyserial-asyncio-fast has no descriptor to watch there and polls the port every 0.5 ms, which
keeps a core busy on an idle exam-room PC. :class:`BlockingSerialLink` instead parks one thread per port
in a blocking read (overlapped ``ReadFile`` with no timeout: the thread sleeps in the kernel until a byte
arrives) and hands each chunk to the loop; closing cancels the read (``CancelIoEx``). No read timeout is
ever set, which also sidesteps Wine's habit of raising ``SerialException`` (1460, "Timeout") for a read
that times out empty instead of returning ``b""``. Names are ``COM5``; whether one is present is asked
of the system's DOS device table (``QueryDosDevice``, which also sees virtual ports that pyserial's
SetupAPI listing misses), then of the file system (Wine's ``dosdevices`` links made after boot).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import serial

from vitals_agent.errors import TransportError

READ_SIZE: Final = 4096

EVENT_DRIVEN_PORTS: Final[bool] = sys.platform != "win32"
"""Whether plain ports are read event-driven (pyserial-asyncio-fast) rather than by a reader thread."""


class BlockingSerialLink:
    """A pyserial port read by a private thread that blocks in the OS read (no polling, no timeouts).

    ``read()`` returns at least one byte, or ``b""`` once the link is closed; a lost device raises
    ``serial.SerialException``. Writes go through a second thread so a long read never delays them.
    """

    def __init__(self, port: serial.Serial) -> None:
        self._port = port
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serial-read")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serial-write")
        self._closed = False

    @classmethod
    async def open(cls, url: str, **settings: Any) -> BlockingSerialLink:
        """Open ``url`` (``COM5``, a path, or a pyserial URL) with line ``settings`` (baudrate, ...)."""
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="serial-open") as opener:
            port = await loop.run_in_executor(
                opener,
                lambda: serial.serial_for_url(url, timeout=None, write_timeout=2.0, **settings),
            )
        return cls(port)

    def _read_some(self) -> bytes:
        if self._closed:
            return b""
        first: bytes = self._port.read(1)  # blocks until a byte arrives or cancel_read()
        if not first:
            return b""
        waiting = self._port.in_waiting
        return first + (self._port.read(min(waiting, READ_SIZE)) if waiting else b"")

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        data: bytes = await loop.run_in_executor(self._reader, self._read_some)
        return data

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._port.write, data)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._port.cancel_read()  # wakes the blocked reader: its read returns b""
        with contextlib.suppress(Exception):
            self._port.cancel_write()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await loop.run_in_executor(self._writer, self._port.close)
        self._reader.shutdown(wait=False)
        self._writer.shutdown(wait=False)


def comports() -> list[Any]:
    """pyserial's port listing (``ListPortInfo`` with USB VID:PID and serial number). Raises
    :class:`TransportError` when the system's listing cannot be used (Wine 8 lacks a cfgmgr32 function
    pyserial needs on Windows)."""
    try:
        from serial.tools import list_ports
    except (ImportError, AttributeError, OSError) as exc:
        raise TransportError(
            f"this system cannot list serial ports ({exc}): configure the device's port by name"
        ) from None
    return list(list_ports.comports())


def port_present(port: str) -> bool:
    """Whether the serial port named ``port`` exists now (a path on POSIX, ``COMn`` on Windows)."""
    if sys.platform == "win32":
        import pywintypes
        import win32file

        name = port.removeprefix("\\\\.\\")
        try:
            if win32file.QueryDosDevice(name):
                return True
        except pywintypes.error:
            pass
        # Not in the DOS device table (e.g. a port Wine maps through dosdevices after boot): ask the file
        # system, which opens the device for attributes only.
        return os.path.exists(port)
    return os.path.exists(port)  # also False for a symlink to a vanished /dev/pts/N


def same_port_name(a: str, b: str) -> bool:
    """Whether two port names denote the same port (``COM5`` = ``com5`` = ``\\\\.\\COM5`` on Windows;
    symlinks such as ``/dev/serial/by-id/...`` followed on POSIX)."""
    if sys.platform == "win32":
        return a.removeprefix("\\\\.\\").casefold() == b.removeprefix("\\\\.\\").casefold()
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return a == b
