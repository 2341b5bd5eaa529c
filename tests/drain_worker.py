"""Subprocess for the kill -9 test: drain an existing outbox through the real Sender to a local peer.

    python tests/drain_worker.py DATA_DIR PORT [--until-empty]

Prints ``started`` once the sender runs. Without ``--until-empty`` it runs until killed.
"""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.kit.wait import until  # noqa: E402
from vitals_agent.agent.delivery.sender import Sender  # noqa: E402
from vitals_agent.agent.storage.outbox import Outbox  # noqa: E402
from vitals_agent.config.ehr import EhrConfig  # noqa: E402


async def main(data_dir: Path, port: int, until_empty: bool) -> int:
    outbox = Outbox(data_dir)
    ehr = EhrConfig(
        host="127.0.0.1",
        port=port,
        ack_timeout_seconds=2.0,
        backoff_min_seconds=0.01,
        backoff_max_seconds=0.1,
    )
    sender = Sender(outbox, ehr)
    task = asyncio.create_task(sender.run())
    print("started", flush=True)

    def drained() -> bool:
        return until_empty and outbox.depth() == 0

    # until the outbox is empty (without --until-empty: until the test kills this process)
    await until(lambda: drained() or task.done(), math.inf, "the outbox drained", interval=0.02)
    if not drained():
        return 2  # the sender stopped by itself
    await sender.stop(timeout=2.0)
    outbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), "--until-empty" in sys.argv[3:])))
