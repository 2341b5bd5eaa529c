"""Reporting policies: every / stable / interval, driven by the monotonic time each reading arrived."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from vitals_agent.agent.pipeline.reporting import Arrival, EveryPolicy, IntervalPolicy, StablePolicy
from vitals_agent.models import DeviceClass, DeviceIdentity, Measurement, Reading

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def ox(second: float, spo2: int | None, pulse: int = 72) -> Reading:
    at = T0 + timedelta(seconds=second)
    ms = (
        []
        if spo2 is None
        else [
            Measurement(metric="spo2", value=Decimal(spo2), unit="%"),
            Measurement(metric="pulse_rate_oximeter", value=Decimal(pulse), unit="/min"),
            Measurement(metric="perfusion_index", value=Decimal("3.1") + Decimal(int(second) % 7), unit="%"),
        ]
    )
    return Reading(
        device=DeviceIdentity(id="ox"),
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=tuple(ms),
        observed_at=at,
        received_at=at,
    )


def run(policy: StablePolicy | EveryPolicy | IntervalPolicy, readings: list[Reading]) -> list[Reading]:
    out: list[Reading] = []
    for r in readings:
        out.extend(a.reading for a in policy.offer(Arrival(r, (r.received_at - T0).total_seconds())))
    return out


def test_every_sends_each_reading_with_values() -> None:
    readings = [ox(0, 97), ox(1, None), ox(2, 96)]
    assert run(EveryPolicy(10), readings) == [readings[0], readings[2]]


def test_stable_sends_once_after_values_hold_for_the_period() -> None:
    # 97-98 % and 71-73 /min stay within the band; PI moves but is ignored.
    readings = [ox(s, 97 + s % 2, 72 + (s % 3) - 1) for s in range(0, 25)]
    sent = run(StablePolicy(10), readings)
    assert sent == [readings[10]]


def test_stable_restarts_when_values_change_or_sensor_comes_off() -> None:
    first = [ox(s, 97) for s in range(0, 12)]  # sent at t=10
    off = [ox(12, None)]  # sensor off: resets
    second = [ox(s, 97) for s in range(13, 30)]  # same values again, sent again at t=23
    jump = [ox(s, 90) for s in range(30, 45)]  # new value, sent at t=40
    sent = run(StablePolicy(10), first + off + second + jump)
    assert [r.received_at - T0 for r in sent] == [timedelta(seconds=s) for s in (10, 23, 40)]


def test_interval_sends_latest_once_per_period() -> None:
    policy = IntervalPolicy(5)
    sent = run(policy, [ox(s, 95 + s % 3) for s in range(0, 12)])
    assert [r.received_at - T0 for r in sent] == [timedelta(seconds=s) for s in (0, 5, 10)]
    # the reading of t=11 is still pending: the next due tick sends it, then nothing is left
    [late] = policy.tick(30.0)
    assert late.reading.received_at == T0 + timedelta(seconds=11) and late.at == 11.0
    assert policy.tick(60.0) == []


@given(st.lists(st.one_of(st.none(), st.integers(80, 100)), min_size=1, max_size=80))
def test_stable_never_sends_more_than_one_per_period(values: list[int | None]) -> None:
    readings = [ox(i, v) for i, v in enumerate(values)]
    sent = run(StablePolicy(10), readings)
    times = [r.received_at for r in sent]
    for a, b in itertools.pairwise(times):
        assert b - a >= timedelta(seconds=10)
    assert all(r.values() for r in sent)


def test_policies_follow_arrival_times_not_the_readings_wall_clock() -> None:
    """Issue 10 item 8: readings stamped by a wall clock that stepped back an hour (received_at jumps back)
    still report on time, because the policies only look at the monotonic arrival times."""
    stepped = [ox(s if s < 5 else s - 3600, 97) for s in range(0, 25)]
    stable = StablePolicy(10)
    sent = [a.at for r, s in zip(stepped, range(25), strict=True) for a in stable.offer(Arrival(r, float(s)))]
    assert sent == [10.0]
    interval = IntervalPolicy(5)
    sent = [
        a.at for r, s in zip(stepped, range(25), strict=True) for a in interval.offer(Arrival(r, float(s)))
    ]
    assert sent == [0.0, 5.0, 10.0, 15.0, 20.0]
