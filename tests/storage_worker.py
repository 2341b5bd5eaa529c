"""Subprocess for the storage fault tests: the real Outbox and Sender on a data dir the test controls.

    python tests/storage_worker.py DATA_DIR PORT [--enqueue N] [--give-up SECONDS]

With ``--enqueue N`` it queues N small ORU^R01 (MSH-10 ``D0000``...) and truncates the WAL, so that every
later write needs new disk blocks. It prints ``ready``, waits for one line on stdin, then delivers to
127.0.0.1:PORT and prints a JSON status line whenever the status changes. A storage give-up prints
``{"fatal": reason}`` and exits 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.fake_ehr import make_message  # noqa: E402
from vitals_agent.agent.delivery.sender import Sender  # noqa: E402
from vitals_agent.agent.storage.outbox import Outbox  # noqa: E402
from vitals_agent.config.ehr import EhrConfig  # noqa: E402
from vitals_agent.errors import StorageFailedError  # noqa: E402


async def main(args: argparse.Namespace) -> int:
    outbox = Outbox(args.data_dir)
    if args.enqueue:
        for i in range(args.enqueue):
            cid = f"D{i:04d}"
            outbox.enqueue(control_id=cid, device_id="d", body=make_message(cid))
        outbox._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    ehr = EhrConfig(
        host="127.0.0.1",
        port=args.port,
        ack_timeout_seconds=2.0,
        backoff_min_seconds=0.01,
        backoff_max_seconds=0.1,
    )
    sender = Sender(outbox, ehr, storage_give_up=args.give_up)
    task = asyncio.create_task(sender.run())
    last = ""
    while not task.done():
        status = sender.status()
        line = json.dumps(
            {
                "depth": status["depth"],
                "unremoved": status["storage"]["acknowledged_not_removed"],
                "failures": sender.policy.snapshot(0.0)["storage_failures"],
                "error": status["storage"]["error"],
                "durable": status["storage"]["ledger_durable"],
            }
        )
        if line != last:
            print(line, flush=True)
            last = line
        await asyncio.sleep(0.02)  # the sampling rate of the status lines, not a wait for an effect
    try:
        task.result()
    except StorageFailedError as exc:
        print(json.dumps({"fatal": str(exc)}), flush=True)
        return 3
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--enqueue", type=int, default=0)
    parser.add_argument("--give-up", type=float, default=300.0)
    sys.exit(asyncio.run(main(parser.parse_args())))
