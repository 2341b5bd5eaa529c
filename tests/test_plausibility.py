"""Issue #12 item 1: every metric has a plausible floor and ceiling; a value outside is withheld with a
reason (audit), counted per device, never sent. Regression: a PLX record with SpO2 9.8e-07 % (both PLX
characteristics) was sent, only flagged ``implausible_value``."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from tests.kit import events
from tests.oracle import validate_oru
from vitals_agent.agent.pipeline.normalize import normalise, withheld
from vitals_agent.agent.service import AgentService
from vitals_agent.cli import main
from vitals_agent.codes import parse_tables, tables
from vitals_agent.config.schema import parse_config
from vitals_agent.drivers.base import DecodeContext, driver_class
from vitals_agent.drivers.ble.ieee11073 import Number, decode_sfloat
from vitals_agent.models import DeviceClass, DeviceIdentity, Dropped, Measurement, Reading, ReadingFlag

# A typical adult value per metric (canonical unit). Every metric of the table must be listed here, so a
# new metric cannot arrive without someone checking its bounds against a real value.
TYPICAL: dict[str, Decimal] = {
    **{k: Decimal(v) for k, v in (("bp_systolic", 120), ("bp_diastolic", 80), ("bp_mean", 93))},
    **{k: Decimal(v) for k, v in (("pulse_rate", 72), ("bp_cuff_pressure", 160), ("spo2", 97))},
    **{k: Decimal(v) for k, v in (("pulse_rate_oximeter", 72), ("perfusion_index", 4))},
    **{k: Decimal(v) for k, v in (("pulse_amplitude_index", "8.7"), ("spco", 1), ("spmet", 1), ("pvi", 15))},
    "sphb": Decimal("13.5"),
    **{
        k: Decimal("37.0")
        for k in (
            "body_temperature",
            "body_temperature_oral",
            "body_temperature_axillary",
            "body_temperature_tympanic",
            "body_temperature_rectal",
            "body_temperature_ear",
            "body_temperature_core",
        )
    },
    "body_temperature_skin": Decimal(33),
    **{k: Decimal(v) for k, v in (("body_weight", 70), ("body_height", 170), ("bmi", 24))},
    **{k: Decimal(v) for k, v in (("body_fat_pct", 25), ("respiratory_rate", 16), ("ecg_heart_rate", 72))},
    **{k: Decimal(v) for k, v in (("pain_score", 3), ("oxygen_flow_rate", 6))},
    **{
        k: Decimal(v)
        for k, v in (("ecg_pr_interval", 160), ("ecg_qrs_duration", 90), ("ecg_qt_interval", 400))
    },
    **{k: Decimal(420) for k in ("ecg_qtc_interval", "ecg_qtc_bazett", "ecg_qtc_fridericia")},
    **{
        k: Decimal(v) for k, v in (("ecg_p_duration", 100), ("ecg_rr_interval", 833), ("ecg_atrial_rate", 72))
    },
    **{k: Decimal(v) for k, v in (("ecg_p_axis", 60), ("ecg_qrs_axis", 45), ("ecg_t_axis", 40))},
}
# Metrics for which 0 is a real reading (no carbon monoxide, no variability, an empty cuff).
ZERO_IS_REAL = {"bp_cuff_pressure", "spco", "spmet", "pvi", "pain_score"}  # pain 0 = no pain
# Electrical axes in degrees: negative is normal (left axis deviation); both -180..180 and -90..270 are used.
AXES = {"ecg_p_axis", "ecg_qrs_axis", "ecg_t_axis"}


def test_every_metric_has_a_sane_floor_and_ceiling() -> None:
    metrics = tables().metrics
    assert set(metrics) == set(TYPICAL), "a metric was added or removed: review its bounds and TYPICAL"
    for key, info in metrics.items():
        low, high, typical = info.minimum, info.maximum, TYPICAL[key]
        assert isinstance(low, Decimal) and isinstance(high, Decimal), key
        assert low.is_finite() and high.is_finite() and low < typical < high, (key, low, typical, high)
        if key in AXES:
            assert Decimal(-180) <= low and high <= Decimal(360), key
            continue
        assert low >= 0, key
        if key not in ZERO_IS_REAL:
            assert low > 0, f"{key}: 0 is not a plausible {info.name.lower()}"
        if info.unit == "%":
            assert high <= 100, key
        else:
            assert high <= 12 * typical, f"{key}: ceiling {high} is not a physiological bound"


def test_the_table_refuses_a_metric_without_both_bounds() -> None:
    raw: dict[str, Any] = tomllib.loads(
        resources.files("vitals_agent").joinpath("data/metrics.toml").read_text("utf-8")
    )
    assert parse_tables(raw).metrics["spo2"].minimum == Decimal(50)
    del raw["metrics"]["spo2"]["min"]
    with pytest.raises(ValueError, match=r"^metrics\.spo2: needs both 'min' and 'max'"):
        parse_tables(raw)
    raw["metrics"]["spo2"]["min"] = 100
    with pytest.raises(ValueError, match=r"^metrics\.spo2: 'min' \(100\) must be below 'max' \(100\)$"):
        parse_tables(raw)


@pytest.mark.parametrize("key", sorted(k for k in TYPICAL if k != "bp_cuff_pressure"))  # (never reported)
def test_values_just_outside_either_bound_are_withheld(key: str) -> None:
    info = tables().metric(key)
    step = Decimal("0.01")
    for value, kept in ((info.minimum, True), (info.maximum, True), (info.minimum - step, False)):
        out = normalise(_reading(key, value, info.unit), max_clock_skew=_SKEW)
        assert bool(out.measurements) is kept, (key, value)
    out = normalise(_reading(key, info.maximum + step, info.unit), max_clock_skew=_SKEW)
    assert out.measurements == ()
    [dropped] = out.dropped
    assert (
        withheld(dropped)
        and dropped.reason == f"implausible: outside {info.minimum}..{info.maximum} {info.unit}"
    )
    assert ReadingFlag.IMPLAUSIBLE_VALUE in out.flags


# ------------------------------------------------------------------------------- the PLX 9.8e-07 % record


def test_sfloat_0x8062_is_98e_minus_8_by_the_spec() -> None:
    """Which spec text decides the exponent: IEEE 11073-20601 Annex F.8 (SFLOAT-Type: a 4-bit exponent and a
    12-bit mantissa, "each in two's-complement form"), restated by the HL7 PHD FHIR IG page "Mder FLOATs
    and SFLOATs" (HL7/phd input/pagecontent/MderFLOATsandSFLOATs.md: "Both the exponent and mantissa are
    signed"). So the nibble 0x8 is -8 and 0x8062 is 98 x 10^-8. A reading that adds a bias to the exponent
    nibble (value = m x 10^(e-8)) would turn the same bytes into 98 %; we keep the spec's reading, and the
    plausibility floor is what keeps the impossible value out of the chart."""
    number = decode_sfloat(0x8062)
    assert isinstance(number, Number) and (number.mantissa, number.exponent) == (98, -8)
    assert number.value == Decimal("9.8E-7")


# PLX Spot-Check 0x2A5E and Continuous 0x2A5F, flags 0x00: SpO2 SFLOAT 0x8062 (bytes 62 80), pulse rate
# SFLOAT 0x0048 = 72 /min (devices.md 5.1; layout as in SpeziBluetooth PLXTests.swift, whose vectors use
# the same two leading SFLOATs, e.g. "00 E8 F3 84 F3" = SpO2 100 %, PR 90).
PLX_98E_8 = bytes.fromhex("0062804800")
_SKEW = timedelta(seconds=120)


def _reading(metric: str, value: Decimal, unit: str) -> Reading:
    now = datetime(2026, 3, 11, 14, 0, tzinfo=UTC)
    return Reading(
        device=DeviceIdentity(id="d"),
        device_class=DeviceClass.OTHER,
        measurements=(Measurement(metric=metric, value=value, unit=unit),),
        observed_at=now,
        received_at=now,
    )


@pytest.mark.parametrize("characteristic", ["2A5E", "2A5F"])
def test_plx_spo2_of_9_8e_minus_7_percent_is_withheld_pulse_kept(characteristic: str) -> None:
    driver = driver_class("ble-pulse-oximeter")()
    ctx = DecodeContext(device=DeviceIdentity(id="plx"))
    [reading] = driver.decode_chunks([PLX_98E_8], ctx, characteristic)
    assert isinstance(reading, Reading)
    assert reading.values()["spo2"] == Decimal("9.8E-7")  # the decoder reads the bytes as the spec says
    out = normalise(reading, max_clock_skew=_SKEW)
    assert [(m.metric, m.value) for m in out.measurements] == [("pulse_rate_oximeter", Decimal(72))]
    assert out.dropped == (
        Dropped(metric="spo2", reason="implausible: outside 50..100 %", raw="0.00000098 %"),
    )
    assert ReadingFlag.IMPLAUSIBLE_VALUE in out.flags


async def test_decode_command_shows_the_spo2_as_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        await main(["decode", "ble-pulse-oximeter", "--characteristic", "2A5F", "--hex", PLX_98E_8.hex()])
        == 0
    )
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["metric"] for m in row["measurements"]] == ["pulse_rate_oximeter"]
    assert row["dropped"] == [
        {"metric": "spo2", "reason": "implausible: outside 50..100 %", "raw": "0.00000098 %"}
    ]
    assert "implausible_value" in row["flags"]


async def test_in_the_agent_the_value_never_reaches_the_message_and_is_counted(tmp_path: Path) -> None:
    config = parse_config(
        {
            "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path)},
            "control": {"enabled": False},
            "devices": [
                {
                    "id": "plx",
                    "driver": "ble-pulse-oximeter",
                    "address": "AA:BB:CC:DD:EE:FF",
                    "report": "every",
                }
            ],
        }
    )
    service = AgentService(config)
    try:
        runtime = service.runtimes["plx"]
        seen: list[bytes] = []
        service.pipeline.observers.append(lambda accepted: seen.append(accepted.message))
        driver = runtime.driver
        for characteristic in ("2A5E", "2A5F"):
            [reading] = driver.decode_chunks([PLX_98E_8], runtime.ctx, characteristic)
            assert isinstance(reading, Reading)
            await service.pipeline.on_event(runtime, reading)
        assert len(seen) == 2
        for message in seen:
            oru = validate_oru(message)
            assert oru.value("149530") == "72"  # the pulse rate went out
            assert b"150456" not in message and b"9.8" not in message  # no SpO2 row at all
        assert runtime.status.counters["values_withheld"] == 2
        accepted = [e for e in events(tmp_path) if e["event"] == "reading_accepted"]
        assert [e["dropped"] for e in accepted] == [["spo2: implausible: outside 50..100 %"]] * 2
    finally:
        service.outbox.close()
        service.patients.close()
        service.audit.close()
