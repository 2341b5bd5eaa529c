"""Subprocess for the EKG crash tests: the real agent (``vitals-agent run``), with two fault hooks placed
from outside the product code (the agent itself has no test hooks).

    python tests/ecg_crash_worker.py CONFIG [--kill-after-enqueue] [--slow-commit-ms N]

``--kill-after-enqueue``: SIGKILL this very process as soon as the first message is committed (fsynced) to
the outbox, i.e. between the durable hand-over of an EKG and everything the folder transport does after it
(the step where the hostile trial's 30 kills with a slow disk found 14-18 of 300 files sent twice).
``--slow-commit-ms N``: every outbox commit takes N ms longer (a slow disk), for the kill-loop benchmark.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from vitals_agent.agent.storage import outbox as outbox_module
from vitals_agent.cli import run


def main() -> None:
    args = sys.argv[1:]
    config = args[0]
    if "--kill-after-enqueue" in args:
        real_enqueue = outbox_module.Outbox.enqueue

        def enqueue(self: outbox_module.Outbox, **kwargs: Any) -> int:
            row = real_enqueue(self, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)  # committed and fsynced; nothing after it runs
            return row

        outbox_module.Outbox.enqueue = enqueue  # type: ignore[method-assign]
    if "--slow-commit-ms" in args:
        delay = float(args[args.index("--slow-commit-ms") + 1]) / 1000
        real_enqueue_slow = outbox_module.Outbox.enqueue

        def slow_enqueue(self: outbox_module.Outbox, **kwargs: Any) -> int:
            time.sleep(delay)  # in the worker thread, like a slow fsync
            return real_enqueue_slow(self, **kwargs)

        outbox_module.Outbox.enqueue = slow_enqueue  # type: ignore[method-assign]
        real_set_state = outbox_module.Outbox.set_state

        def slow_set_state(self: outbox_module.Outbox, device_id: str, key: str, value: str) -> None:
            time.sleep(delay)  # like a slow fsync, as above
            real_set_state(self, device_id, key, value)

        outbox_module.Outbox.set_state = slow_set_state  # type: ignore[method-assign]
    sys.argv = ["vitals-agent", "run", "--config", config]
    run()


if __name__ == "__main__":
    main()
