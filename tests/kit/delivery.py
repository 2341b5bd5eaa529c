"""The delivery side for tests: EHR settings with short timeouts, a running sender, a free port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

from vitals_agent.agent.delivery.sender import Sender
from vitals_agent.config.ehr import EhrConfig
from vitals_agent.errors import StorageFailedError


def fast_ehr(port: int, **kw: Any) -> EhrConfig:
    """``[ehr]`` for a local fake EHR: short timeouts and back-off so faults resolve within a test."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "connect_timeout_seconds": 1.0,
        "ack_timeout_seconds": 0.3,
        "backoff_min_seconds": 0.01,
        "backoff_max_seconds": 0.05,
    }
    values.update(kw)
    return EhrConfig(**values)


@contextlib.asynccontextmanager
async def running_sender(sender: Sender) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``sender`` for the block; stop it (and its task) afterwards."""
    task = asyncio.create_task(sender.run())
    try:
        yield task
    finally:
        await sender.stop(timeout=1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StorageFailedError):
            await task  # a sender that stopped on a storage failure: the test looks at its status


def free_port() -> int:
    """A TCP port nobody listens on right now (for "the EHR is down" and subprocess configs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
