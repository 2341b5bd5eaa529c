"""Group commit: readings that arrive while the previous commit is on its way to disk share the next one.

A ward agent serves many devices; each accepted reading must be on disk (fsynced) before it counts. One
transaction per reading costs one fsync each, and the fsyncs queue behind each other. :class:`GroupCommit`
keeps one commit in flight at a time: readings arriving meanwhile wait for the next, which takes all of
them in one transaction (:meth:`~vitals_agent.agent.storage.outbox.Outbox.enqueue_group`). It adds no
delay of its own: a reading that arrives with nothing in flight is committed at once, alone. After each
commit the audit records committed with the readings are appended to the audit file (``after_commit``),
before any waiting caller resumes, so the file already has a reading's record when its caller learns it
was accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from vitals_agent import log_events as ev
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.errors import OutboxError

log = structlog.get_logger(__name__)

MAX_GROUP = 256  # readings in one transaction at most (a bound on its size and on the waiters' wait)


class GroupCommit:
    """One commit in flight; the readings that arrive meanwhile go together in the next."""

    def __init__(self, outbox: Outbox, *, after_commit: Callable[[], object] | None = None) -> None:
        self.outbox = outbox
        self.after_commit = after_commit
        self._waiting: list[tuple[Mapping[str, Any], asyncio.Future[int]]] = []
        self._task: asyncio.Task[None] | None = None
        self.commits = 0  # transactions
        self.items = 0  # readings committed (items / commits = the mean group size)

    async def enqueue(self, **item: Any) -> int:
        """Queue one reading (the keyword arguments of :meth:`Outbox.enqueue`); returns its id once it is
        on disk. Raises :class:`~vitals_agent.errors.OutboxError` when it could not be stored."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        self._waiting.append((item, done))
        if self._task is None:
            self._task = loop.create_task(self._run(), name="group-commit")
        return await done

    async def _run(self) -> None:
        batch: list[tuple[Mapping[str, Any], asyncio.Future[int]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                results = await asyncio.to_thread(self._commit, [item for item, _ in batch])
                for (_, done), result in zip(batch, results, strict=True):
                    if done.done():  # its caller was cancelled (shutdown); the reading is stored anyway
                        continue
                    if isinstance(result, OutboxError):
                        done.set_exception(result)
                    else:
                        done.set_result(result)
                batch = []
        finally:
            self._task = None
            for _, done in [*batch, *self._waiting]:  # cancelled mid-commit: nobody may wait forever
                if not done.done():
                    done.set_exception(OutboxError("the agent is stopping; the reading may not be queued"))
            self._waiting = []

    def _commit(self, items: list[Mapping[str, Any]]) -> list[int | OutboxError]:
        results = self.outbox.enqueue_group(items)
        self.commits += 1
        self.items += len(items)
        if self.after_commit is not None:
            try:
                self.after_commit()
            except Exception as exc:  # the records are committed with the readings: nothing is lost
                log.error(ev.AUDIT_AFTER_COMMIT_FAILED, error=str(exc))
        return results

    async def close(self) -> None:
        """Wait for the commit in flight (at shutdown)."""
        task = self._task
        if task is not None:
            with contextlib.suppress(BaseException):
                await task
