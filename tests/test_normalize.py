"""Normalisation: canonical units, special and impossible values dropped with reasons, clock policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from vitals_agent.agent.pipeline.normalize import normalise
from vitals_agent.models import (
    DeviceClass,
    DeviceIdentity,
    Dropped,
    Measurement,
    Qualifier,
    Reading,
    ReadingFlag,
)

T0 = datetime(2026, 11, 28, 15, 0, 0, tzinfo=UTC)
SKEW = timedelta(seconds=120)


def reading(
    *ms: Measurement, device_time: datetime | None = None, flags: tuple[ReadingFlag, ...] = ()
) -> Reading:
    return Reading(
        device=DeviceIdentity(id="d"),
        device_class=DeviceClass.OTHER,
        measurements=ms,
        observed_at=device_time or T0,
        received_at=T0,
        device_time=device_time,
        flags=flags,
    )


def test_units_are_converted_to_canonical_ucum() -> None:
    out = normalise(
        reading(
            Measurement(metric="body_temperature", value=Decimal("98.6"), unit="[degF]"),
            Measurement(metric="body_weight", value=Decimal("154.2"), unit="lb"),
            Measurement(metric="bp_systolic", value=Decimal("120"), unit="mmHg"),
        ),
        max_clock_skew=SKEW,
    )
    got = {m.metric: (m.value, m.unit) for m in out.measurements}
    assert got["bp_systolic"] == (Decimal("120"), "mm[Hg]")
    assert got["body_temperature"][1] == "Cel"
    temperature, weight = got["body_temperature"][0], got["body_weight"][0]
    assert temperature is not None and abs(temperature - Decimal("37.0")) <= Decimal("0.05")
    assert got["body_weight"][1] == "kg"
    assert weight is not None and abs(weight - Decimal("69.94")) <= Decimal("0.05")
    assert out.dropped == ()


def test_special_absent_and_impossible_values_are_dropped_with_reasons() -> None:
    out = normalise(
        reading(
            Measurement(metric="spo2", value=Decimal("101"), unit="%"),
            Measurement(metric="pulse_rate_oximeter", value=None, unit="/min", absent_reason="sentinel 511"),
            Measurement(metric="bp_cuff_pressure", value=Decimal("140"), unit="mm[Hg]"),
            Measurement(metric="perfusion_index", value=Decimal("3.60"), unit="%"),
        ),
        max_clock_skew=SKEW,
    )
    assert [(m.metric, m.value) for m in out.measurements] == [("perfusion_index", Decimal("3.60"))]
    assert out.measurements[0].text_value() == "3.60"
    assert out.dropped == (
        Dropped(metric="spo2", reason="implausible: outside 50..100 %", raw="101 %"),
        Dropped(metric="pulse_rate_oximeter", reason="sentinel 511"),
        Dropped(metric="bp_cuff_pressure", reason="progress value, not reported", raw="140"),
    )
    assert ReadingFlag.IMPLAUSIBLE_VALUE in out.flags


def test_device_time_is_kept_within_skew_and_replaced_beyond() -> None:
    near = normalise(reading(device_time=T0 - timedelta(seconds=30)), max_clock_skew=SKEW)
    assert near.observed_at == T0 - timedelta(seconds=30)
    assert ReadingFlag.CLOCK_SKEW not in near.flags
    far = normalise(reading(device_time=T0 - timedelta(days=400)), max_clock_skew=SKEW)
    assert far.observed_at == T0
    assert far.device_time == T0 - timedelta(days=400)
    assert ReadingFlag.CLOCK_SKEW in far.flags


def test_stored_records_keep_the_time_their_driver_chose() -> None:
    old = T0 - timedelta(hours=5)
    out = normalise(reading(device_time=old, flags=(ReadingFlag.STORED_RECORD,)), max_clock_skew=SKEW)
    assert out.observed_at == old
    assert ReadingFlag.CLOCK_SKEW not in out.flags


def test_a_measurement_cannot_hold_a_special_value() -> None:
    for special in ("NaN", "sNaN", "Infinity", "-Infinity"):
        with pytest.raises(ValidationError):
            Measurement(metric="spo2", value=Decimal(special), unit="%")


def test_a_measurement_and_a_qualifier_name_a_row_of_the_code_tables() -> None:
    with pytest.raises(ValidationError, match="unknown metric key 'spo3'"):
        Measurement(metric="spo3", value=Decimal(97), unit="%")
    with pytest.raises(ValidationError, match="unknown qualifier 'bp_posture'"):
        Qualifier(key="bp_posture", answer="sitting")
    assert Qualifier(key="bp_position", answer="sitting").key == "bp_position"


@given(st.decimals(allow_nan=False, allow_infinity=False, places=2))
def test_no_special_or_out_of_range_value_survives(value: Decimal) -> None:
    out = normalise(reading(Measurement(metric="spo2", value=value, unit="%")), max_clock_skew=SKEW)
    for m in out.measurements:
        assert m.value is not None and m.value.is_finite()
        assert Decimal(0) <= m.value <= Decimal(100)
    assert len(out.measurements) + len(out.dropped) == 1
