"""Issue 10 done-when, short variant of the kill loop (the full one is bench/bench_kill_loop.py): the agent
as a real process under a reading stream, SIGKILLed repeatedly while the EHR is up, flapping and answering
a mix of AA, AE and AR. 0 readings lost, 0 readings sent under two MSH-10s."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.kill_loop import run_kill_loop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_kill_loop_loses_nothing_and_never_splits_a_reading(tmp_path: Path) -> None:
    result = await run_kill_loop(
        tmp_path, kills=6, seed=int(os.environ.get("KILL_LOOP_SEED", "7")), flap_every=2
    )
    print(result.summary())
    assert result.lost == [], result.summary()
    assert result.split == {}, result.summary()
    assert result.accepted >= 6 * 2 >= 11  # each run accepted readings before it was killed
    assert result.delivered + result.dead == result.accepted
    assert result.answers["AE"] >= 1 and result.answers["AR"] >= 1  # every 7th and every 11th message
    assert result.flaps == 3
