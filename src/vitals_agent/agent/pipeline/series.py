"""Automated office blood pressure (AOBP, issue #16 part 5): a device's ``bp_protocol`` series.

Pure: no I/O and no clock of its own (the caller passes monotonic seconds), so the rules are tested on their
own. The pipeline feeds it the readings it accepted from the device and acts on what it answers:

* the first blood-pressure reading with systolic and diastolic values starts a series (the clinician
  started it: the module's or host's start key, or ``vitals-agent nibp-start``);
* when the driver can start a measurement (a SunTech module), the next one is due ``interval_seconds``
  after the previous reading arrived (:meth:`BpSeries.due` says ``start``); a driver that cannot (a BLE
  cuff) is only awaited: the series is built from the readings the cuff sends in time;
* a reading joins the series when it arrives before the deadline (``interval_seconds`` +
  :data:`MEASUREMENT_GRACE_SECONDS` after the previous one) and was observed after it; past the deadline the
  series is *abandoned*: no mean is sent (every reading already was);
* a reading without systolic or diastolic value (the cuff's error) does not count: the measurement is
  due again at once (its result before :data:`MEASUREMENT_GRACE_SECONDS`; a BLE cuff's within the usual
  deadline); after :data:`MAX_FAILED` such readings in one series it is abandoned;
* after ``readings`` readings the mean of the averaged ones (all, or all but the first with
  ``discard_first``) is returned: every metric present with a value in each of them, in its unit, rounded
  exactly (:func:`mean_value`);
* a patient change stops the series (:meth:`BpSeries.stop`): its readings belong to the previous patient.

The series lives in memory: a restart abandons a series in progress (its readings are already durable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from vitals_agent.config.review import BpProtocol
from vitals_agent.models import Flag, Measurement, Reading, Series

# How long after its start a measurement's result may take to arrive (a cuff inflates, deflates and may
# retry once: about 40 s, twice that is generous)
MEASUREMENT_GRACE_SECONDS = 90.0
MAX_FAILED = 2  # error readings one series tolerates (each measured again)
REQUIRED = ("bp_systolic", "bp_diastolic")  # a reading without both does not count
_CARRIED_FLAGS = frozenset({Flag.TEST, Flag.DEMO})  # a mean of test data is test data


def mean_value(values: Sequence[Decimal]) -> Decimal:
    """The mean of ``values``, computed exactly (as a fraction), rounded half-even to the finest precision
    among them (a cuff's whole mm[Hg] give a whole mean; 36.55 and 36.6 give hundredths)."""
    if not values:
        raise ValueError("no values to average")
    places = max(0, *(-int(v.as_tuple().exponent) for v in values))
    exact = sum((Fraction(v) for v in values), Fraction(0)) / len(values)
    scaled = round(exact * 10**places)  # Fraction.__round__: exact, ties to even
    return Decimal(scaled).scaleb(-places)


def counts(reading: Reading) -> bool:
    """Whether a reading can be part of a series (it has systolic and diastolic values)."""
    have = {m.metric for m in reading.measurements if m.value is not None}
    return all(metric in have for metric in REQUIRED)


def series_mean(readings: Sequence[Reading], *, taken: int, discarded_first: bool) -> Reading:
    """The reading that is the mean of ``readings`` (oldest first): every metric with a value in all of
    them and one unit, exactly rounded; observed at the last one's time; ``series`` names their times."""
    if not readings:
        raise ValueError("no readings to average")
    last = readings[-1]
    measurements: list[Measurement] = []
    for m in last.measurements:
        same = [next((x for x in r.measurements if x.metric == m.metric), None) for r in readings]
        if any(x is None or x.value is None or x.unit != m.unit for x in same):
            continue  # not in every reading, or in another unit: not averaged
        values = [x.value for x in same if x is not None and x.value is not None]
        flags = tuple(sorted({f for x in same if x is not None for f in x.flags} & _CARRIED_FLAGS))
        measurements.append(
            Measurement(metric=m.metric, value=mean_value(values), unit=m.unit, flags=flags, site=m.site)
        )
    return Reading(
        device=last.device,
        device_class=last.device_class,
        measurements=tuple(measurements),
        observed_at=last.observed_at,
        received_at=last.received_at,
        flags=tuple(sorted({f for r in readings for f in r.flags})),
        series=Series(
            taken=taken, averaged_at=tuple(r.observed_at for r in readings), discarded_first=discarded_first
        ),
    )


Due = Literal["start", "abandon"]


@dataclass
class Offered:
    """What one reading did to the series."""

    joined: bool  # it is one of the series' readings
    started: bool = False  # it began a new series
    abandoned: int = 0  # readings of an earlier series that ran out of time (no mean)
    mean: Reading | None = None  # the series is complete: send this


@dataclass
class BpSeries:
    """One device's series state. ``can_start``: the agent can start a measurement on this device."""

    protocol: BpProtocol
    can_start: bool
    readings: list[Reading] = field(default_factory=list)
    deadline: float | None = None  # monotonic: the next reading must arrive before this
    start_at: float | None = None  # monotonic: start the next measurement then (can_start only)
    completed: int = 0
    abandoned: int = 0
    failed: int = 0  # readings without values while a series ran
    _failed_here: int = 0  # ... in the series in progress

    @property
    def running(self) -> bool:
        return bool(self.readings)

    def offer(self, reading: Reading, mono: float) -> Offered:
        """A reading the pipeline accepted from this device, arrived at ``mono``."""
        abandoned = 0
        if self.running and self.deadline is not None and mono > self.deadline:
            abandoned = self._abandon()
        if not counts(reading):
            if self.running:
                self.failed += 1
                self._failed_here += 1
                if self._failed_here > MAX_FAILED:
                    return Offered(joined=False, abandoned=abandoned + self._abandon())
                if self.can_start:  # measure again at once
                    self.start_at = mono
                    self.deadline = mono + MEASUREMENT_GRACE_SECONDS
                else:
                    self.deadline = mono + self.protocol.interval_seconds + MEASUREMENT_GRACE_SECONDS
            return Offered(joined=False, abandoned=abandoned)
        if self.running and reading.observed_at <= self.readings[-1].observed_at:
            return Offered(joined=False, abandoned=abandoned)  # a stored record from before: not a step
        started = not self.running
        self.readings.append(reading)
        if len(self.readings) < self.protocol.readings:
            self.deadline = mono + self.protocol.interval_seconds + MEASUREMENT_GRACE_SECONDS
            self.start_at = mono + self.protocol.interval_seconds if self.can_start else None
            return Offered(joined=True, started=started, abandoned=abandoned)
        averaged = self.readings[1:] if self.protocol.discard_first else list(self.readings)
        mean = series_mean(averaged, taken=len(self.readings), discarded_first=self.protocol.discard_first)
        self.completed += 1
        self._reset()
        return Offered(joined=True, started=started, abandoned=abandoned, mean=mean)

    def due(self, mono: float) -> Due | None:
        """Called about once a second and when ``start_at`` comes: ``start`` (start the next measurement now,
        once), ``abandon`` (the deadline passed: the series ended without a mean), or nothing."""
        if not self.running:
            return None
        if self.deadline is not None and mono > self.deadline:
            self._abandon()
            return "abandon"
        if self.start_at is not None and mono >= self.start_at:
            self.start_at = None
            return "start"
        return None

    def stop(self) -> int:
        """The patient changed (or the device went away): end the series without a mean. Returns how many
        readings it had taken."""
        return self._abandon() if self.running else 0

    @property
    def taken(self) -> int:
        return len(self.readings)

    def _abandon(self) -> int:
        taken = len(self.readings)
        self.abandoned += 1
        self._reset()
        return taken

    def _reset(self) -> None:
        self._failed_here = 0
        self.readings.clear()
        self.deadline = None
        self.start_at = None
