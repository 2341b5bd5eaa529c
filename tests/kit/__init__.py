"""The test kit: one of each thing tests need, so no test file grows its own.

* ``clock``: :class:`FakeClock` (a wall clock with a monotonic face, ``advance``), :data:`T0`.
* ``wait``: :func:`until` / :func:`until_sync`, to wait on a condition (never sleep for an effect);
  :func:`printed` waits for a command's output.
* ``runtime``: :class:`FakeRuntime` (the one fake DeviceRuntime, with ``wait_until``), ``MemoryState``,
  :func:`fixed_ctx`, :func:`make_driver`, and :func:`start` / :func:`stop` / :func:`finish` /
  :func:`running` to run a transport, :func:`supervise` to restart it after link failures.
* ``readings``: :func:`m`, :func:`reading`, :func:`oximeter_reading`, :data:`PROFILE` / :func:`profile`,
  the test patient's strings, :func:`readings_in` / :func:`failures_in`.
* ``patient``: :func:`manager` (a PatientContextManager on a temp dir), :func:`events` (its audit).
* ``delivery``: :func:`fast_ehr`, :func:`running_sender`, :func:`free_port`.
* ``shared``: :func:`shared_file` (``../shared``; skips with a reason that says so).
* ``fixtures``: ``clock``, ``outbox``, ``ehr``, ``pty_device``, ``fake_bluez`` (registered for every test
  by ``tests/conftest.py``).

The independent peers the tests talk to stay beside the kit: ``tests/fake_ehr.py`` (python-hl7's MLLP server
and a raw one), ``tests/fake_fhir.py``, ``tests/fakebluez/`` (BlueZ on a private D-Bus), ``tests/oracle.py``
(hl7apy STRICT validation), ``tests/e2e_helpers.py`` (the agent as a subprocess: tests marked ``slow``).
"""

from tests.kit.clock import T0, FakeClock
from tests.kit.delivery import fast_ehr, free_port, running_sender
from tests.kit.patient import event_names, events, manager
from tests.kit.readings import (
    DOB,
    FAMILY,
    GIVEN,
    MRN,
    PROFILE,
    failures_in,
    m,
    oximeter_reading,
    profile,
    reading,
    readings_in,
)
from tests.kit.runtime import (
    FakeRuntime,
    MemoryState,
    finish,
    fixed_ctx,
    make_driver,
    running,
    start,
    stop,
    supervise,
)
from tests.kit.shared import NEEDS_SHARED, SHARED, shared_file
from tests.kit.wait import printed, until, until_sync

__all__ = [
    "DOB",
    "FAMILY",
    "GIVEN",
    "MRN",
    "NEEDS_SHARED",
    "PROFILE",
    "SHARED",
    "T0",
    "FakeClock",
    "FakeRuntime",
    "MemoryState",
    "event_names",
    "events",
    "failures_in",
    "fast_ehr",
    "finish",
    "fixed_ctx",
    "free_port",
    "m",
    "make_driver",
    "manager",
    "oximeter_reading",
    "printed",
    "profile",
    "reading",
    "readings_in",
    "running",
    "running_sender",
    "shared_file",
    "start",
    "stop",
    "supervise",
    "until",
    "until_sync",
]
