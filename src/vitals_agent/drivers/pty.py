"""A simulated serial device on a pseudo-terminal (POSIX only).

The *master* end of a pty pair plays the device; the agent opens the *slave* end exactly as it opens
``/dev/ttyUSB0``, through a stable symlink (``link``) that is re-pointed atomically on replug
(``../shared/reference/testing.md`` section 3.1):

* ``unplug()`` closes the master (the agent's reads and writes fail with ``SerialException``) and removes the
  link, as a USB adapter's device node disappears;
* ``replug()`` creates a new pair and points the link at it, so the agent reopens by the same path.

The slave is put in raw mode before anyone opens it (otherwise the line discipline echoes and translates
CR/LF). ``PtyDevice`` implements :class:`~vitals_agent.drivers.base.SimPort`, so a driver's simulator runs
on it directly (``vitals-agent simulate``, the demo and the tests use this class).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from pathlib import Path
from types import TracebackType

import structlog

from vitals_agent import log_events as ev
from vitals_agent.host.terminal import open_raw_pty

log = structlog.get_logger(__name__)


class PtyUnpluggedError(OSError):
    """The simulated device is unplugged (write while unplugged)."""


class PtyDevice:
    """The device side of a pty pair behind a symlink. Use as a (sync or async) context manager."""

    def __init__(self, link: str | os.PathLike[str]) -> None:
        self.link = Path(link)
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name: str | None = None
        self._waiters: dict[asyncio.Future[None], bool] = {}  # pending fd waits -> writable
        self.bytes_written = 0

    # ------------------------------------------------------------------------------------------ life cycle

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def slave_name(self) -> str | None:
        """The ``/dev/pts/N`` path the link points to (None while unplugged)."""
        return self._slave_name

    def open(self) -> PtyDevice:
        """Create the pty pair and (re-)point the link at its slave. Idempotent while plugged."""
        if self._master is not None:
            return self
        master, slave, name = open_raw_pty()  # raises a one-line error where there are no ptys
        self._master, self._slave, self._slave_name = master, slave, name
        self._point_link(name)
        log.debug(ev.PTY_PLUGGED, link=str(self.link), slave=name)
        return self

    def _point_link(self, target: str) -> None:
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, self.link)  # atomic: the link never disappears during a replug

    def _remove_link(self) -> None:
        # Only remove the link if it is ours (points at our slave); never a file someone else put there.
        with contextlib.suppress(OSError):
            if self.link.is_symlink() and os.readlink(self.link) == self._slave_name:
                self.link.unlink()

    def unplug(self, remove_link: bool = True) -> None:
        """Pull the cable: close the master (and our slave fd). By default the link goes away too, as a
        USB serial adapter's device node does; ``remove_link=False`` leaves a stale link behind."""
        if remove_link:
            self._remove_link()
        if self._waiters and self._master is not None:  # wake readers/writers before the fd goes away
            for waiter, writable in list(self._waiters.items()):
                self._unwatch(waiter, self._master, writable)
                if not waiter.done():
                    waiter.set_result(None)
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        log.debug(ev.PTY_UNPLUGGED, link=str(self.link))
        self._slave_name = None

    def replug(self) -> PtyDevice:
        """Plug in again: a new pty pair, the same link path (re-pointed atomically)."""
        if self._master is not None:
            self.unplug(remove_link=False)
        return self.open()

    def close(self) -> None:
        self.unplug(remove_link=True)

    def __enter__(self) -> PtyDevice:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> PtyDevice:
        return self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ I/O (SimPort)

    def write_nowait(self, data: bytes) -> int:
        """Write what the pty accepts right now; return the number of bytes written."""
        if self._master is None:
            raise PtyUnpluggedError(errno.ENODEV, "pty device is unplugged")
        try:
            n = os.write(self._master, data)
        except BlockingIOError:
            return 0
        self.bytes_written += n
        return n

    async def write(self, data: bytes) -> None:
        """Send bytes to the agent. Waits (without blocking the loop) while the pty buffer is full."""
        view = memoryview(data)
        while view:
            n = self.write_nowait(bytes(view))
            view = view[n:]
            if view:
                await self._wait_fd(writable=True, timeout=None)

    async def read(self, timeout: float) -> bytes:
        """Bytes the agent wrote, or ``b""`` after ``timeout`` seconds (or when unplugged)."""
        master = self._master
        if master is None:
            await asyncio.sleep(timeout)
            return b""
        data = self._read_now(master)
        if data:
            return data
        if not await self._wait_fd(writable=False, timeout=timeout):
            return b""
        return self._read_now(master) if self._master == master else b""

    def _read_now(self, fd: int) -> bytes:
        try:
            return os.read(fd, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:  # EIO: no process has the slave open (we hold one, so rare)
            if exc.errno == errno.EIO:
                return b""
            raise

    async def _wait_fd(self, *, writable: bool, timeout: float | None) -> bool:
        fd = self._master
        if fd is None:
            raise PtyUnpluggedError(errno.ENODEV, "pty device is unplugged")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def _ready() -> None:
            if not ready.done():
                ready.set_result(None)

        if writable:
            loop.add_writer(fd, _ready)
        else:
            loop.add_reader(fd, _ready)
        self._waiters[ready] = writable
        try:
            async with asyncio.timeout(timeout):
                await ready
            return True
        except TimeoutError:
            return False
        finally:
            if ready in self._waiters:
                self._unwatch(ready, fd, writable)

    def _unwatch(self, waiter: asyncio.Future[None], fd: int, writable: bool) -> None:
        del self._waiters[waiter]
        loop = waiter.get_loop()
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
