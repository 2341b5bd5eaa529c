"""Normalisation: canonical UCUM units, no special values, no impossible values, a trustworthy time.

Pure: a :class:`Reading` in, a :class:`Reading` out. Everything removed is recorded in
``Reading.dropped`` with a reason, so the audit trail says why a value the device showed was not sent.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from vitals_agent.codes import tables
from vitals_agent.hl7.units import UnitConversionError, convert
from vitals_agent.models import Dropped, Measurement, Reading, ReadingFlag

IMPLAUSIBLE = "implausible"  # reason prefix: outside the metric's plausible floor and ceiling
INCONSISTENT = "inconsistent"  # reason prefix: contradicts another value of the same reading


def withheld(dropped: Dropped) -> bool:
    """True for a value the device did send but the agent withheld as impossible (counted per device),
    as opposed to one the device itself marked missing."""
    return dropped.reason.startswith((IMPLAUSIBLE, INCONSISTENT))


_EXEMPT_FROM_SKEW = {ReadingFlag.STORED_RECORD, ReadingFlag.CLOCK_CORRECTED, ReadingFlag.CLOCK_UNSET}


def _normalise_measurement(m: Measurement) -> tuple[Measurement | None, Dropped | None]:
    t = tables()
    info = t.metric(m.metric)
    if m.value is None:
        return None, Dropped(metric=m.metric, reason=m.absent_reason or "no value")
    if not info.reportable:
        return None, Dropped(metric=m.metric, reason="progress value, not reported", raw=m.text_value())
    unit = t.canonical_unit(m.unit)
    if unit is None:
        return None, Dropped(metric=m.metric, reason=f"unknown unit {m.unit!r}", raw=m.text_value())
    value = m.value
    if unit != info.unit:
        try:
            value = convert(value, unit, info.unit)
        except UnitConversionError:
            return None, Dropped(
                metric=m.metric, reason=f"cannot convert {unit} to {info.unit}", raw=m.text_value()
            )
    if not info.minimum <= value <= info.maximum:
        return None, Dropped(
            metric=m.metric,
            reason=f"{IMPLAUSIBLE}: outside {info.minimum}..{info.maximum} {info.unit}",
            raw=f"{format(value, 'f')} {info.unit}",
        )
    method = m.method or info.method
    return m.model_copy(update={"value": value, "unit": info.unit, "method": method}), None


_PRESSURES = ("bp_systolic", "bp_diastolic", "bp_mean")
_BP_PULSE = "pulse_rate"


def _blood_pressure_consistency(
    kept: list[Measurement], dropped: list[Dropped]
) -> tuple[list[Measurement], list[Dropped]]:
    """Cross-field plausibility of one NIBP record (issue #12 item 4), on canonical values (mm[Hg]).

    Systolic must be above diastolic, and the mean within diastolic..systolic (oscillometry measures the
    mean at the oscillation maximum, between the two). When not, every pressure is withheld with the
    reason; the pulse rate is kept only if the record is otherwise valid, i.e. nothing else in it was
    withheld as implausible or inconsistent (a record with two defects is not trusted for anything)."""
    values = {m.metric: m.value for m in kept if m.metric in _PRESSURES and m.value is not None}
    sys, dia, mean = (values.get(k) for k in _PRESSURES)
    problem = None
    if sys is not None and dia is not None and sys <= dia:
        problem = f"systolic {_mm(sys)} is not above diastolic {_mm(dia)} mm[Hg]"
    elif mean is not None and ((dia is not None and mean < dia) or (sys is not None and mean > sys)):
        low = _mm(dia) if dia is not None else "-"
        high = _mm(sys) if sys is not None else "-"
        problem = f"mean {_mm(mean)} mm[Hg] is outside diastolic..systolic {low}..{high} mm[Hg]"
    if problem is None:
        return kept, []
    out = [
        Dropped(metric=m.metric, reason=f"{INCONSISTENT}: {problem}", raw=f"{_mm(m.value)} mm[Hg]")
        for m in kept
        if m.metric in values and m.value is not None
    ]
    other_defects = [d for d in dropped if withheld(d)]
    remaining = [m for m in kept if m.metric not in values]
    if other_defects:
        pulse = [m for m in remaining if m.metric == _BP_PULSE and m.value is not None]
        why = "; ".join(f"{d.metric} {d.reason}" for d in other_defects)
        out += [
            Dropped(
                metric=m.metric,
                reason=f"{INCONSISTENT}: blood pressure record also had {why}; pulse not trusted",
                raw=f"{_mm(m.value)} {m.unit}",
            )
            for m in pulse
        ]
        remaining = [m for m in remaining if m.metric != _BP_PULSE]
    return remaining, out


def _mm(value: Decimal | None) -> str:
    return "-" if value is None else format(value, "f")


def normalise(reading: Reading, *, max_clock_skew: timedelta) -> Reading:
    """Canonical units, special and impossible values dropped (with reasons), clock-skew policy applied.

    Clock policy (hl7-pcd01.md §8, issue: timestamps): a live reading keeps the device's time when it
    is within ``max_clock_skew`` of the host receive time; otherwise OBX-14 uses the host time and the
    reading is flagged ``clock_skew``. Stored records and readings a driver already corrected are left
    as the driver set them.
    """
    kept: list[Measurement] = []
    dropped = list(reading.dropped)
    flags = list(reading.flags)
    for m in reading.measurements:
        good, why = _normalise_measurement(m)
        if good is not None:
            kept.append(good)
        if why is not None:
            dropped.append(why)
            if withheld(why) and ReadingFlag.IMPLAUSIBLE_VALUE not in flags:
                flags.append(ReadingFlag.IMPLAUSIBLE_VALUE)
    kept, inconsistent = _blood_pressure_consistency(kept, dropped)
    dropped += inconsistent
    if inconsistent and ReadingFlag.IMPLAUSIBLE_VALUE not in flags:
        flags.append(ReadingFlag.IMPLAUSIBLE_VALUE)
    observed = reading.observed_at
    if reading.device_time is not None and not _EXEMPT_FROM_SKEW.intersection(reading.flags):
        if abs(reading.device_time - reading.received_at) > max_clock_skew:
            observed = reading.received_at
            if ReadingFlag.CLOCK_SKEW not in flags:
                flags.append(ReadingFlag.CLOCK_SKEW)
        else:
            observed = reading.device_time
    return reading.with_updates(
        measurements=tuple(kept), dropped=tuple(dropped), flags=tuple(flags), observed_at=observed
    )
