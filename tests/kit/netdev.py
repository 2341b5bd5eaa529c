"""Devices behind a simulated terminal server whose lines come from the test (or the bench).

:class:`FedDevice` is a :class:`~vitals_agent.drivers.netsim.NetworkDevice` (raw TCP or RFC 2217) whose
device writes the lines :meth:`FedDevice.feed` hands it, in order, on whichever connection is open; a line
fed while nobody is connected waits for the next connection. :attr:`FedDevice.sent` lists what was written
to a connection (with the host time it was written, for latency figures).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

from vitals_agent.drivers.base import SimPort, Simulator
from vitals_agent.drivers.netsim import NetworkDevice


class FedDevice:
    def __init__(self, name: str = "device", *, rfc2217: bool = False) -> None:
        self.name = name
        self.server = NetworkDevice(self._simulator, rfc2217=rfc2217, name=name)
        self.sent: list[tuple[float, bytes]] = []  # (time.time() when written, line)
        self._queue: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> FedDevice:
        await self.server.start()
        return self

    def feed(self, *lines: bytes) -> None:
        self._queue.extend(lines)
        self._ready.set()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def _simulator(self) -> Simulator:
        return _Feeder(self)

    async def next_line(self) -> bytes:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def put_back(self, line: bytes) -> None:
        self._queue.appendleft(line)
        self._ready.set()


class _Feeder(Simulator):
    def __init__(self, device: FedDevice) -> None:
        self.device = device

    async def run(self, port: SimPort) -> None:
        reader = asyncio.create_task(_drain_reads(port))  # what the host writes is read (and ignored)
        waiting: asyncio.Task[bytes] | None = None
        try:
            while True:
                waiting = asyncio.create_task(self.device.next_line())
                await asyncio.wait({waiting, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader.done():  # the client went away
                    return
                line, waiting = waiting.result(), None
                at = time.time()
                try:
                    await port.write(line)
                except ConnectionError:
                    self.device.put_back(line)  # not written: the next connection sends it
                    raise
                except asyncio.CancelledError:
                    # write() hands the bytes to the socket before it waits; a closing connection
                    # still delivers them
                    self.device.sent.append((at, line))
                    raise
                self.device.sent.append((at, line))
        finally:
            reader.cancel()
            if waiting is not None:  # a line taken but never written goes back to the front
                waiting.cancel()
                if waiting.done() and not waiting.cancelled():
                    self.device.put_back(waiting.result())


async def _drain_reads(port: SimPort) -> None:
    """Read (and ignore) what the host writes; return when the connection ends."""
    with contextlib.suppress(ConnectionError, OSError):
        while True:
            await port.read(3600.0)
