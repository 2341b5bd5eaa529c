"""Time for the agent: wall time for stamps, a monotonic clock for ages, and a watch for wall-clock steps.

Every *age* the agent acts on (how long a patient context has been idle, how long a reading has been held,
whether a reading arrived before the current patient was set, the reporting policies' periods) is measured
on the monotonic clock, so an NTP step, a manual ``date -s`` or a virtual machine resumed from a snapshot
neither drops readings for the length of a backward step nor expires everything at once on a forward one.
Wall times are still what the agent stores and shows (audit, HL7, the state files); a time stored before
a backward step lies in the future afterwards, and :meth:`Clock.check_step` reports the step (logged once)
so the owners of stored times can clamp them.

Tests inject a wall clock and a monotonic clock; :meth:`Clock.following` makes one whose monotonic time
simply follows a given wall clock (for tests that only move the wall clock, and never step it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from vitals_agent import log_events as ev

log = structlog.get_logger(__name__)

STEP_THRESHOLD = 2.0  # seconds the wall clock may drift against the monotonic one between checks


def span(seconds: float) -> str:
    """A length of time for a person: ``45 s``, ``12 min``, ``3.5 h`` (status details, alert summaries)."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Clock:
    def __init__(
        self,
        wall: Callable[[], datetime] = utc_now,
        mono: Callable[[], float] = time.monotonic,
        *,
        step_threshold: float = STEP_THRESHOLD,
    ) -> None:
        self._wall = wall
        self._mono = mono
        self._following = False
        self.step_threshold = step_threshold
        self._offset: float | None = None  # wall - monotonic at the last check
        self.last_step: float | None = None  # seconds of the last step seen (negative: backwards)
        self.last_step_at: datetime | None = None

    @classmethod
    def following(cls, wall: Callable[[], datetime]) -> Clock:
        """A clock whose monotonic time is the wall clock's (no steps can be seen)."""
        clock = cls(wall, lambda: wall().timestamp())
        clock._following = True
        return clock

    def now(self) -> datetime:
        return self._wall()

    def mono(self) -> float:
        return self._mono()

    def mono_at(self, wall: datetime) -> float:
        """The monotonic time of a wall-clock instant, as ages go: a time in the future (stored before the
        clock went back) counts as now, never as later."""
        if self._following:
            return wall.timestamp()
        age = (self._wall() - wall).total_seconds()
        return self._mono() - max(0.0, age)

    def wall_at(self, mono: float) -> datetime:
        """The wall time, on today's wall clock, of a monotonic instant."""
        return self._wall() - timedelta(seconds=self._mono() - mono)

    def check_step(self) -> float | None:
        """Call periodically. Returns the wall clock's step in seconds (negative: it went back) when it
        moved against the monotonic clock by more than the threshold since the last call; logs it once."""
        offset = self._wall().timestamp() - self._mono()
        previous, self._offset = self._offset, offset
        if previous is None or self._following:
            return None
        step = offset - previous
        if abs(step) <= self.step_threshold:
            return None
        self.last_step = step
        self.last_step_at = self._wall()
        log.warning(
            ev.CLOCK_STEPPED,
            direction="back" if step < 0 else "forward",
            seconds=round(abs(step), 1),
            note="ages are measured on the monotonic clock; stored times ahead of the clock are clamped",
        )
        return step

    def snapshot(self) -> dict[str, object]:
        """For the status: the last wall-clock step seen."""
        return {
            "last_step_seconds": round(self.last_step, 1) if self.last_step is not None else None,
            "last_step_at": self.last_step_at.isoformat() if self.last_step_at else None,
        }
