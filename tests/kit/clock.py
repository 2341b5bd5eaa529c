"""The one fake clock of the test suite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

T0 = datetime(2026, 3, 11, 14, 0, 0, tzinfo=UTC)
"""The suite's fixed "now" (a Wednesday afternoon, UTC)."""


class FakeClock:
    """A settable clock with two faces that move together.

    * ``clock()`` is the wall clock (an aware datetime): pass ``clock`` wherever code takes ``now=``.
    * ``clock.monotonic()`` is seconds on a monotonic scale: pass ``clock.monotonic`` wherever code takes a
      monotonic source (session lifetimes, retry timers, BLE session deadlines).

    ``advance(seconds=..., minutes=...)`` moves both; ``set(at)`` jumps the wall clock only (like an NTP
    step: monotonic time never jumps).
    """

    def __init__(self, start: datetime = T0, *, monotonic_start: float = 1000.0) -> None:
        self.now = start
        self.ticks = monotonic_start

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, seconds: float = 0.0, **kwargs: float) -> datetime:
        delta = timedelta(seconds=seconds, **kwargs)
        self.now += delta
        self.ticks += delta.total_seconds()
        return self.now

    def set(self, at: datetime) -> None:
        self.now = at
