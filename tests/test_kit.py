"""The test kit keeps its promises: one clock whose faces move together, waits that fail loudly, a fake
runtime that wakes its waiters, and the ``../shared`` rule (a skip for want of it fails in CI when it is
there)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.kit import T0, FakeClock, FakeRuntime, m, make_driver, until
from tests.kit import reading as kit_reading
from tests.kit.shared import NEEDS_SHARED, REPO
from vitals_agent import host
from vitals_agent.models import DeviceClass


def test_clock_faces_move_together_and_the_wall_clock_can_jump() -> None:
    clock = FakeClock()
    start = clock.monotonic()
    assert clock() == T0
    assert clock.advance(90) == T0 + timedelta(seconds=90)
    assert clock.advance(minutes=1) == T0 + timedelta(seconds=150)
    assert clock.monotonic() - start == 150
    clock.set(T0 - timedelta(hours=1))  # an NTP step back
    assert clock() == T0 - timedelta(hours=1) and clock.monotonic() - start == 150


async def test_until_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for the moon"):
        await until(lambda: False, timeout=0.05, what="the moon")


async def test_until_takes_a_coroutine_predicate() -> None:
    calls: list[int] = []

    async def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    await until(third_time)
    assert len(calls) == 3


async def test_fake_runtime_wakes_a_waiter_on_emit() -> None:
    runtime = FakeRuntime(make_driver("masimo-ascii", "/dev/null"))
    reading = kit_reading(DeviceClass.PULSE_OXIMETER, m("spo2", "97", "%"))
    waiter = asyncio.create_task(runtime.wait_readings(1, timeout=5))
    await asyncio.sleep(0)  # the waiter is blocked on the runtime's change event
    assert not waiter.done()
    await runtime.emit(reading)
    assert await waiter == [reading]


SHARED_TEST = """
from tests.kit.shared import shared_file

def test_wants_a_sample() -> None:
    shared_file("samples", "renamed-or-missing.txt")
"""


def run_pytest(directory: Path, shared: Path, *, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["VITALS_AGENT_SHARED"] = str(shared)
    env["PYTHONPATH"] = str(REPO)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--rootdir", str(directory)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow  # three pytest processes
@pytest.mark.skipif(
    host.WINDOWS,
    reason="runs pytest in child Pythons: the Windows lane's CPython finds pytest only through run_tests.py",
)
def test_a_skip_for_want_of_shared_fails_in_ci_when_shared_is_there(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text("from tests.conftest import pytest_runtest_makereport  # noqa: F401\n")
    (suite / "test_wants_shared.py").write_text(SHARED_TEST)
    (tmp_path / "shared").mkdir()
    local = run_pytest(suite, tmp_path / "shared", ci=False)
    ci = run_pytest(suite, tmp_path / "shared", ci=True)
    absent = run_pytest(suite, tmp_path / "no-shared", ci=True)
    assert "1 skipped" in local.stdout and NEEDS_SHARED in local.stdout, local.stdout + local.stderr
    assert "1 failed" in ci.stdout and "this skip hides a missing or renamed file" in ci.stdout, ci.stdout
    assert "1 skipped" in absent.stdout, absent.stdout  # no ../shared at all: a clean skip, also in CI
