"""Reporting policy: which readings of a device become messages.

A continuous oximeter sends a line a second; the EHR wants one value per observation, not an ORU a
second. Policies are pure state machines driven by the time each reading arrived at the agent on the
monotonic clock (:class:`Arrival`; and, for ``interval``, by :meth:`ReportingPolicy.tick`), so they test
without sleeping and a wall-clock step neither silences a device nor floods the EHR.

* ``every``: each reading with values.
* ``stable``: one reading once the key values have stayed within a small band for ``report_seconds``;
  then nothing until they leave the band (or the sensor comes off) and settle again.
* ``interval``: the latest reading with values, once per ``report_seconds``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from decimal import Decimal

from vitals_agent.models import Reading

# Stability bands: how far a value may move and still count as "the same" for `stable`.
# Metrics not listed must match exactly; metrics listed with None are ignored (they fluctuate by nature).
STABILITY_BANDS: dict[str, Decimal | None] = {
    "spo2": Decimal(1),
    "pulse_rate_oximeter": Decimal(3),
    "pulse_rate": Decimal(3),
    "ecg_heart_rate": Decimal(3),
    "respiratory_rate": Decimal(2),
    "perfusion_index": None,
    "pulse_amplitude_index": None,
    "pvi": None,
    "spco": Decimal(1),
    "spmet": Decimal("0.5"),
}


@dataclass(frozen=True)
class Arrival:
    """A reading and the monotonic time (seconds) the agent received it."""

    reading: Reading
    at: float


def _key_values(reading: Reading) -> dict[str, Decimal]:
    return {k: v for k, v in reading.values().items() if STABILITY_BANDS.get(k, Decimal(0)) is not None}


def _within(anchor: dict[str, Decimal], values: dict[str, Decimal]) -> bool:
    if anchor.keys() != values.keys():
        return False
    for key, value in values.items():
        band = STABILITY_BANDS.get(key, Decimal(0))
        assert band is not None
        if abs(value - anchor[key]) > band:
            return False
    return True


class ReportingPolicy(abc.ABC):
    def __init__(self, seconds: float) -> None:
        self.period = seconds

    @abc.abstractmethod
    def offer(self, arrival: Arrival) -> list[Arrival]:
        """A new reading arrived; return the readings to send now."""

    def tick(self, now: float) -> list[Arrival]:
        """Time passed (monotonic seconds); return readings that became due (only ``interval``)."""
        return []


class EveryPolicy(ReportingPolicy):
    def offer(self, arrival: Arrival) -> list[Arrival]:
        reading = arrival.reading
        return [arrival] if reading.values() or reading.statements else []


class StablePolicy(ReportingPolicy):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self._anchor: dict[str, Decimal] | None = None
        self._since: float | None = None
        self._sent = False

    def offer(self, arrival: Arrival) -> list[Arrival]:
        values = _key_values(arrival.reading)
        if not values:
            self._anchor, self._since, self._sent = None, None, False
            return []
        if self._anchor is None or self._since is None or not _within(self._anchor, values):
            self._anchor, self._since, self._sent = values, arrival.at, False
            return [arrival] if self.period <= 0 else []
        if not self._sent and arrival.at - self._since >= self.period:
            self._sent = True
            return [arrival]
        return []


class IntervalPolicy(ReportingPolicy):
    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self._latest: Arrival | None = None
        self._last_sent: float | None = None

    def offer(self, arrival: Arrival) -> list[Arrival]:
        if not arrival.reading.values():
            return []
        self._latest = arrival
        return self.tick(arrival.at)

    def tick(self, now: float) -> list[Arrival]:
        if self._latest is None:
            return []
        if self._last_sent is not None and now - self._last_sent < self.period:
            return []
        due, self._latest = self._latest, None
        self._last_sent = now
        return [due]


def make_policy(name: str, seconds: float) -> ReportingPolicy:
    policies: dict[str, type[ReportingPolicy]] = {
        "every": EveryPolicy,
        "stable": StablePolicy,
        "interval": IntervalPolicy,
    }
    return policies[name](seconds)
