"""Shared pytest configuration: hypothesis profiles, the test kit's fixtures, the ``../shared`` rule."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, settings

from tests.kit.fixtures import clock, ehr, fake_bluez, fake_bus_address, outbox, pty_device
from tests.kit.shared import NEEDS_SHARED, SHARED, shared_present

__all__ = ["clock", "ehr", "fake_bluez", "fake_bus_address", "outbox", "pty_device"]
from vitals_agent import host
from vitals_agent.host.terminal import NoPseudoTerminalError

# Property tests: random in development (they find new cases), deterministic in CI (a red CI must be
# reproducible, not a roll of the dice), and a heavier "fuzz" profile to run by hand:
#   HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest -q tests
# No deadlines: speed is measured in bench/, never asserted in tests.
settings.register_profile("dev", deadline=None)
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("fuzz", deadline=None, max_examples=2000, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults: a test that configures logging (the CLI does) must not
    change what later tests capture (e.g. a level filter hiding DEBUG events from ``capture_logs``)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


SLOW_PROGRAMS = ("python", "vitals-agent", "chromium")  # the agent, a worker, a browser


@pytest.fixture(autouse=True)
def _subprocesses_are_slow(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test that starts the agent, a worker or a browser is marked ``slow``, so that ``make test-fast``
    (``-m "not slow"``) stays fast. Quick tools (bleak asking ``bluetoothctl --version``) and processes of
    wider-scoped fixtures (the private D-Bus) do not count."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    started: list[str] = []
    original = subprocess.Popen.__init__

    def recording(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        argv = [str(a) for a in args] if isinstance(args, list | tuple) else [str(args)]
        program = os.path.basename(argv[0])
        if any(name in program for name in SLOW_PROGRAMS) or sys.executable in argv:
            started.append(" ".join(argv[:3]))
        original(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording)
    yield
    if started:
        pytest.fail(f"this test starts {'; '.join(started)}: mark it @pytest.mark.slow")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI, a test that skips for want of ``../shared`` while ``../shared`` is there fails instead: the
    file it wants was renamed or moved, and a silent skip would hide that its checks no longer run."""
    report = yield
    if report.skipped and os.environ.get("CI") and shared_present():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if NEEDS_SHARED in reason:
            report.outcome = "failed"
            report.longrepr = f"{reason}\n{SHARED} is present, so this skip hides a missing or renamed file"
    return report


# --- platforms: the same suite runs under the Windows CPython in the Windows lane (tests/windows) -------
# Modules that need BlueZ on a private D-Bus (Linux only) are not collected where there is no BlueZ; the
# terminal summary lists them. Tests that play a device on a POSIX pseudo-terminal are skipped, with that
# reason, where there are none (open_raw_pty raises NoPseudoTerminalError).
BLUEZ_ONLY = {
    "test_ble_fakebluez.py",
    "test_ble_scan_pair.py",
    "test_ble_transport.py",
    "test_e2e_ble.py",
}
_not_collected: list[str] = []


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not host.HAS_BLUEZ and collection_path.name in BLUEZ_ONLY:
        _not_collected.append(collection_path.name)
        return True
    return None


# Modules that drive the EKG folder transports (openat + O_NOFOLLOW relative to a folder descriptor, which
# Windows CPython does not have): skipped with that reason where the platform lacks it. There the
# configuration refuses EKG folders in one line (tests/test_check_config.py checks that refusal).
EKG_FOLDERS_ONLY = {
    "test_ecg_crash_once.py",
    "test_ecg_e2e.py",
    "test_ecg_folder.py",
    "test_ecg_folder_failures.py",
    "test_ecg_folder_links.py",
    "test_ecg_patient_check.py",
    "test_e2e_ecg_attach.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # a pytest-xdist worker
        items.sort(key=_long_first)
    if host.HAS_NOFOLLOW_DIRS:
        return
    skip = pytest.mark.skip(
        reason=f"EKG folders need no-follow access relative to a folder descriptor: POSIX only, "
        f"refused on {host.PLATFORM_NAME}"
    )
    for item in items:
        if item.path.name in EKG_FOLDERS_ONLY:
            item.add_marker(skip)


# --- pytest-xdist (`make test` runs the suite on one worker more than there are cores) ----------------------
# The tests are handed out one at a time, in collection order, which each worker sorts the long ones first
# (_long_first): no long test then starts last while the other workers run out of work. The tests of the
# ONE_WORKER modules go to one worker together, in file order: they share a module fixture that they change
# in turn. (That is what `--dist loadgroup` with an xdist_group mark is for, but pytest-xdist 3.8 cannot
# rename the test ids of pytest 9.2, so its groups are silently ignored.)
ONE_WORKER = {
    "tests/test_install.py",  # one install (11 s) that the tests change in turn; the uninstall comes last
}


def _long_first(item: pytest.Item) -> tuple[bool, float]:
    """The ``slow`` tests first, those allowed the longest time (their ``timeout`` mark) before the rest;
    a stable sort, so otherwise the order stays."""
    timeout = item.get_closest_marker("timeout")
    allowed = float(timeout.args[0]) if timeout is not None and timeout.args else 0.0
    return item.get_closest_marker("slow") is None, -allowed


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "load":  # another --dist was asked for explicitly: xdist's own
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class OneTestOrOneModule(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER else nodeid

    return OneTestOrOneModule(config, log)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _not_collected:
        terminalreporter.write_line(
            f"not collected on {host.PLATFORM_NAME} (need BlueZ on D-Bus, Linux only): "
            + ", ".join(sorted(set(_not_collected)))
        )


def _skip_without_pty(outcome: Any) -> None:
    excinfo = getattr(outcome, "excinfo", None)
    if excinfo is not None and isinstance(excinfo[1], NoPseudoTerminalError):
        outcome.force_exception(pytest.skip.Exception("needs a POSIX pseudo-terminal"))


@pytest.hookimpl(wrapper=False, hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, None]:
    outcome = yield
    _skip_without_pty(outcome)


@pytest.hookimpl(wrapper=False, hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, None]:
    outcome = yield
    _skip_without_pty(outcome)
