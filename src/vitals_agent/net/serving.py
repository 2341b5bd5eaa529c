"""Closing an asyncio TCP listener that keeps its connections' tasks (the app-ACK port, the metrics port)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import Any


async def close_server(
    server: asyncio.Server | None, tasks: Collection[asyncio.Task[Any]], *, timeout: float = 1.0
) -> None:
    """Stop listening, cancel the connections' tasks and wait for them to end, then wait (at most
    ``timeout`` seconds) for the server to close. ``server`` None: only the tasks."""
    if server is not None:
        server.close()
    running = list(tasks)
    for task in running:
        task.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)
    if server is not None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await server.wait_closed()
