"""PtyDevice, the simulated serial device (``vitals-agent simulate`` and the tests' ``pty_device``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from tests.kit import until
from vitals_agent.drivers.pty import PtyDevice


async def test_a_stop_that_comes_as_the_agent_writes_stops_a_read(
    pty_device: PtyDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The simulator's stop (Ctrl-C) cancels its read in the loop turn in which the agent's bytes make the
    # pty readable: the stop must win (on Python 3.11 asyncio.wait_for dropped it and the simulator ran
    # on, so `simulate` did not end).
    loop = asyncio.get_running_loop()
    add_reader = loop.add_reader
    task: asyncio.Task[bytes] | None = None
    watched: list[int] = []

    def readable_as_the_stop_comes(fd: int, callback: Callable[[], object]) -> None:
        watched.append(fd)

        def readable() -> None:
            callback()
            if task is not None:
                task.cancel()

        add_reader(fd, readable)

    monkeypatch.setattr(loop, "add_reader", readable_as_the_stop_comes)
    task = asyncio.create_task(pty_device.read(300))
    await until(lambda: watched, what="the device to wait for the agent's bytes")
    agent = os.open(pty_device.slave_name or "", os.O_WRONLY | os.O_NOCTTY)
    try:
        os.write(agent, b"\x02START\x03")
        await until(task.done, what="the read to end")
    finally:
        os.close(agent)
    assert task.cancelled()
