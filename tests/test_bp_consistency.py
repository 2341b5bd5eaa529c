"""Issue #12 item 4: blood-pressure cross-field plausibility. Systolic not above diastolic, or the mean
outside diastolic..systolic, withholds every pressure with a reason; the pulse is kept only when the
record is otherwise valid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from vitals_agent.agent.pipeline.normalize import normalise, withheld
from vitals_agent.drivers.base import DecodeContext, DecoderOutput, driver_class
from vitals_agent.drivers.suntech import SunTechDecoder, encode_bp_data
from vitals_agent.models import DeviceClass, DeviceIdentity, Dropped, Measurement, Reading, ReadingFlag

T = datetime(2026, 3, 11, 14, 0, tzinfo=UTC)
SKEW = timedelta(seconds=120)
CTX = DecodeContext(device=DeviceIdentity(id="bp-1"), now=lambda: T)


def bp(
    sys: str | None, dia: str | None, mean: str | None, pulse: str | None = "72", unit: str = "mm[Hg]"
) -> Reading:
    rows = [
        ("bp_systolic", sys, unit),
        ("bp_diastolic", dia, unit),
        ("bp_mean", mean, unit),
        ("pulse_rate", pulse, "/min"),
    ]
    return Reading(
        device=DeviceIdentity(id="bp-1"),
        device_class=DeviceClass.BLOOD_PRESSURE,
        measurements=tuple(
            Measurement(metric=k, value=Decimal(v), unit=u) for k, v, u in rows if v is not None
        ),
        observed_at=T,
        received_at=T,
    )


def kept(reading: Reading) -> dict[str, Decimal | None]:
    return {m.metric: m.value for m in reading.measurements}


def test_systolic_below_diastolic_withholds_the_pressures_keeps_the_pulse() -> None:
    out = normalise(bp("80", "120", "100"), max_clock_skew=SKEW)
    assert kept(out) == {"pulse_rate": Decimal(72)}
    why = "inconsistent: systolic 80 is not above diastolic 120 mm[Hg]"
    assert out.dropped == (
        Dropped(metric="bp_systolic", reason=why, raw="80 mm[Hg]"),
        Dropped(metric="bp_diastolic", reason=why, raw="120 mm[Hg]"),
        Dropped(metric="bp_mean", reason=why, raw="100 mm[Hg]"),
    )
    assert all(withheld(d) for d in out.dropped) and ReadingFlag.IMPLAUSIBLE_VALUE in out.flags


def test_equal_systolic_and_diastolic_is_inconsistent() -> None:
    out = normalise(bp("90", "90", None), max_clock_skew=SKEW)
    assert kept(out) == {"pulse_rate": Decimal(72)}
    assert {d.metric for d in out.dropped} == {"bp_systolic", "bp_diastolic"}


def test_mean_outside_diastolic_to_systolic_is_inconsistent() -> None:
    high = normalise(bp("120", "80", "150"), max_clock_skew=SKEW)
    low = normalise(bp("120", "80", "60"), max_clock_skew=SKEW)
    for out in (high, low):
        assert kept(out) == {"pulse_rate": Decimal(72)}
        assert len(out.dropped) == 3
    assert (
        high.dropped[0].reason
        == "inconsistent: mean 150 mm[Hg] is outside diastolic..systolic 80..120 mm[Hg]"
    )
    edge = normalise(bp("120", "80", "80"), max_clock_skew=SKEW)  # the bounds themselves are allowed
    assert set(kept(edge)) == {"bp_systolic", "bp_diastolic", "bp_mean", "pulse_rate"}


def test_mean_with_only_one_side_is_checked_against_that_side() -> None:
    out = normalise(bp(None, "80", "70"), max_clock_skew=SKEW)
    assert kept(out) == {"pulse_rate": Decimal(72)}


def test_a_record_with_another_defect_loses_its_pulse_too() -> None:
    # systolic below diastolic AND a mean outside the plausible range: nothing in the record is trusted
    out = normalise(bp("80", "120", "400"), max_clock_skew=SKEW)
    assert kept(out) == {}
    assert [d.metric for d in out.dropped] == ["bp_mean", "bp_systolic", "bp_diastolic", "pulse_rate"]
    assert out.dropped[0].reason == "implausible: outside 15..280 mm[Hg]"
    assert out.dropped[-1].reason == (
        "inconsistent: blood pressure record also had bp_mean implausible: outside 15..280 mm[Hg];"
        " pulse not trusted"
    )


def test_a_consistent_record_is_untouched_and_kpa_is_checked_in_mmhg() -> None:
    assert normalise(bp("120", "80", "93"), max_clock_skew=SKEW).dropped == ()
    # Nordic Android-BLE-Common-Library BloodPressureMeasurementDataCallbackTest (_some): 18.9/11.0/15.9 kPa
    # is a consistent record (141.8/82.5/119.3 mm[Hg]); peer expected value: sys 18.9 dia 11.0 map 15.9 kPa
    driver = driver_class("ble-blood-pressure")()
    [reading] = driver.decode_chunks([bytes.fromhex("15BDF00B009FF03C001200")], CTX)
    assert isinstance(reading, Reading)
    out = normalise(reading, max_clock_skew=SKEW)
    assert out.dropped == () and len(out.measurements) == 4


def test_ble_cuff_with_swapped_pressures() -> None:
    # Blood Pressure Measurement 0x2A35 (devices.md 1.1), flags 0x04 (pulse): sys 88, dia 138, MAP 120,
    # pulse 60 -- the Nordic "_full" vector's pressures with systolic and diastolic swapped.
    payload = bytes.fromhex("04" + "5800" + "8A00" + "7800" + "3C00")
    [reading] = driver_class("ble-blood-pressure")().decode_chunks([payload], CTX)
    assert isinstance(reading, Reading)
    out = normalise(reading, max_clock_skew=SKEW)
    assert kept(out) == {"pulse_rate": Decimal(60)}
    assert {d.metric for d in out.dropped} == {"bp_systolic", "bp_diastolic", "bp_mean"}


def test_suntech_frame_with_systolic_below_diastolic() -> None:
    outputs: list[DecoderOutput] = SunTechDecoder(CTX).feed(encode_bp_data(70, 110, 90, 64))
    [reading] = [o for o in outputs if isinstance(o, Reading)]
    out = normalise(reading, max_clock_skew=SKEW)
    assert kept(out) == {"pulse_rate": Decimal(64)}


pressure = st.integers(20, 250).map(Decimal)


@settings(max_examples=300, deadline=None)
@given(pressure, pressure, st.one_of(st.none(), pressure), st.one_of(st.none(), st.integers(15, 350)))
def test_what_is_sent_is_always_ordered(
    sys: Decimal, dia: Decimal, mean: Decimal | None, pulse: int | None
) -> None:
    out = normalise(
        bp(str(sys), str(dia), None if mean is None else str(mean), None if pulse is None else str(pulse)),
        max_clock_skew=SKEW,
    )
    values = kept(out)
    s, d, m = values.get("bp_systolic"), values.get("bp_diastolic"), values.get("bp_mean")
    if s is not None and d is not None:
        assert s > d
        assert m is None or d <= m <= s
    # pressures are all sent or all withheld; a pulse is lost only with another defect in the record
    assert len({k for k in values if k.startswith("bp_")}) in (0, 2 + (mean is not None and mean <= 280))
    if pulse is not None and sys <= 300 and dia <= 250 and (mean is None or mean <= 280):
        assert values.get("pulse_rate") == Decimal(pulse)
