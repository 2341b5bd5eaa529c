"""The kill loop, full variant (issue 10 done-when; the suite runs a short one in tests/test_kill_loop.py):
the agent as a real process under a Masimo Rad-8 reading stream on a pty, SIGKILLed ``--kills`` times at
random moments while the EHR is up, flapping (every 3rd run it refuses connections for a while) and
answering AA (after 30 ms), AE once to every 7th message, AR to every 11th. See tests/kill_loop.py for
how readings are counted.

    .venv/bin/python bench/bench_kill_loop.py [--kills 20] [--seed S] [--rounds 1]

Pass: 0 readings lost and 0 readings sent under two MSH-10s (a re-send under the same MSH-10 after a kill
is at-least-once delivery and is counted, not failed). Exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.kill_loop import run_kill_loop  # noqa: E402


async def main(args: argparse.Namespace) -> int:
    failed = 0
    for round_ in range(args.rounds):
        seed = args.seed + round_
        with tempfile.TemporaryDirectory(prefix="killloop-") as tmp:
            result = await run_kill_loop(Path(tmp), kills=args.kills, seed=seed)
        verdict = "PASS" if result.ok else "FAIL"
        print(f"kill loop (seed {seed}): {verdict}: {result.summary()}", flush=True)
        if not result.ok:
            failed += 1
            print(f"  lost: {result.lost[:10]}  split: {list(result.split.items())[:5]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("KILL_LOOP_SEED", "1")))
    parser.add_argument("--rounds", type=int, default=1)
    sys.exit(asyncio.run(main(parser.parse_args())))
