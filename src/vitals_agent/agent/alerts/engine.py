"""The alert engine: pure decisions, no I/O and no clock of its own.

Each round the caller hands :meth:`AlertEngine.observe` the time (any monotonic seconds) and what every
rule sees now (:class:`Observation`: a key such as ``ehr_unreachable:ehr`` or ``device_silent:bp1``,
whether it is bad, and how long it must stay bad before it is an alert). The engine answers with the
alerts that start or clear in this round (:class:`AlertEvent`).

The rules it keeps, per key (a property test drives them with random up/down sequences):

* an alert *starts* once the condition has been bad without a break for ``after`` seconds;
* it *clears* once the condition has been good without a break for ``hold_down`` seconds;
* starts and clears alternate, and two changes of one key are never closer than ``hold_down`` seconds
  (a condition that flaps produces one alert, not one per flap);
* a key no rule reports any more (a device removed, a rule turned off) counts as good.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

State = Literal["firing", "cleared"]


@dataclass(frozen=True)
class Observation:
    """What one rule sees in one round. Never patient data: ids, counts and a one-line summary."""

    key: str  # unique per condition, e.g. "ehr_unreachable:ehr", "device_silent:bp1"
    kind: str  # the rule, e.g. "ehr_unreachable"
    bad: bool
    after: float = 0.0  # seconds the condition must stay bad before it becomes an alert
    summary: str = ""  # e.g. "EHR 10.0.0.5:2575 unreachable (12 failed attempts, 40 waiting)"
    device: str | None = None
    counts: Mapping[str, int | float] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertEvent:
    """An alert starting (``firing``) or ending (``cleared``)."""

    key: str
    kind: str
    state: State
    at: float  # the caller's clock
    since: float  # when the condition went bad (firing) or good again (cleared)
    summary: str
    device: str | None
    counts: Mapping[str, int | float]


@dataclass
class _Track:
    bad_since: float | None = None
    good_since: float | None = None
    active: bool = False
    fired_at: float | None = None  # when the active alert started
    last_change: float | None = None
    last: Observation | None = None
    last_bad: Observation | None = None  # what the banner shows while the alert is on


@dataclass(frozen=True)
class ActiveAlert:
    """An alert that is on now (the status page's banner)."""

    key: str
    kind: str
    since: float  # when it started (the caller's clock)
    summary: str
    device: str | None
    counts: Mapping[str, int | float]


class AlertEngine:
    def __init__(self, hold_down: float) -> None:
        if hold_down < 0:
            raise ValueError("hold_down must not be negative")
        self.hold_down = hold_down
        self._tracks: dict[str, _Track] = {}

    def observe(self, now: float, observations: Iterable[Observation]) -> list[AlertEvent]:
        """One round at time ``now`` (never earlier than the previous round's)."""
        seen: dict[str, Observation] = {}
        for obs in observations:
            seen[obs.key] = obs
        events: list[AlertEvent] = []
        for key in sorted(set(self._tracks) | set(seen)):
            track = self._tracks.setdefault(key, _Track())
            reported = seen.get(key)
            if reported is not None:
                obs = reported
            elif track.last is None:
                continue
            else:  # nobody reports it any more: it is over
                obs = Observation(key, track.last.kind, False, device=track.last.device)
            event = self._step(track, obs, now)
            if event is not None:
                events.append(event)
            gone = key not in seen and not track.active
            if gone and (track.last_change is None or now - track.last_change >= self.hold_down):
                del self._tracks[key]  # forgotten once nothing can come of it
        return events

    def _step(self, track: _Track, obs: Observation, now: float) -> AlertEvent | None:
        if obs.bad:
            track.good_since = None
            if track.bad_since is None:
                track.bad_since = now
        else:
            track.bad_since = None
            if track.good_since is None:
                track.good_since = now
        track.last = obs
        if obs.bad:
            track.last_bad = obs
        # firing: bad for the rule's ``after``; cleared: good for the hold-down; either way no sooner than the
        # hold-down after the previous change (no flapping)
        since, needed = (track.good_since, self.hold_down) if track.active else (track.bad_since, obs.after)
        if since is None or now - since < needed:
            return None
        if track.last_change is not None and now - track.last_change < self.hold_down:
            return None
        track.active = not track.active
        track.fired_at, track.last_change = (now if track.active else None), now
        state: State = "firing" if track.active else "cleared"
        return AlertEvent(obs.key, obs.kind, state, now, since, obs.summary, obs.device, dict(obs.counts))

    def active(self) -> list[ActiveAlert]:
        """The alerts that are on, oldest first (with the latest summary and counts)."""
        out = []
        for key, track in self._tracks.items():
            if track.active and track.last_bad is not None and track.fired_at is not None:
                obs = track.last_bad
                out.append(ActiveAlert(key, obs.kind, track.fired_at, obs.summary, obs.device,
                                       dict(obs.counts)))  # fmt: skip
        return sorted(out, key=lambda a: (a.since, a.key))
