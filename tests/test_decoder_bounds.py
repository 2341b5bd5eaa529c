"""Issue #12: no decoder can emit a value outside its metric's plausible bounds. For every registered driver
(serial, BLE, EKG), random payloads -- random numbers in the driver's own frame layout, and random bytes --
go through the offline decode path (``decode_chunks``, as ``vitals-agent decode``) and the normaliser; every
value left is in its metric's canonical unit and within the table's floor and ceiling."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_ecg_fixtures import (
    scp_record,
    scp_section1,
    scp_section7,
    synthetic_aecg,
    synthetic_philips_104,
)
from vitals_agent.agent.pipeline.normalize import normalise
from vitals_agent.codes import tables
from vitals_agent.drivers.base import DecodeContext, Driver, all_drivers, driver_class
from vitals_agent.drivers.ble.ieee11073 import Number, encode_float, encode_sfloat
from vitals_agent.drivers.health_o_meter import encode_packet
from vitals_agent.drivers.nonin import encode_df2_packet, encode_df8
from vitals_agent.drivers.scale_ascii import Dialect, ScaleOptions, encode_line
from vitals_agent.drivers.suntech import encode_bp_data
from vitals_agent.drivers.tanita import encode_record
from vitals_agent.models import DeviceIdentity, Reading

CTX = DecodeContext(device=DeviceIdentity(id="dev"), now=lambda: datetime(2026, 3, 11, 14, 0, tzinfo=UTC))

Payload = tuple[Driver, list[bytes], str | None]  # driver, chunks, BLE characteristic


def _num(digits: int, decimals: int = 0) -> st.SearchStrategy[str]:
    """A zero-padded device number: any value the field's width can hold (far outside any bound)."""
    top = 10**digits - 1
    if not decimals:
        return st.integers(0, top).map(lambda v: f"{v:0{digits}d}")
    return st.integers(0, 10 ** (digits + decimals) - 1).map(
        lambda v: f"{v // 10**decimals:0{digits}d}.{v % 10**decimals:0{decimals}d}"
    )


@st.composite
def masimo(draw: st.DrawFn) -> Payload:
    spo2, bpm, pi, co, met, hb, pvi = (
        draw(_num(3)),
        draw(_num(3)),
        draw(_num(2, 2)),
        draw(_num(2, 1)),
        draw(_num(2, 1)),
        draw(_num(2, 1)),
        draw(_num(3)),
    )
    if draw(st.booleans()):
        line = (
            f"03/11/26 14:00:00 SN=0000123456 SPO2={spo2}% BPM={bpm} PI={pi}% SPCO={co}% SPMET={met}% "
            f"PVI={pvi} ALARM=0000 EXC=000800"
        )
    else:
        line = (
            f"03/11/26 14:00:00 SpO2={spo2} PR={bpm} PI={pi} SpCO={co} SpMet={met} SpHb={hb} PVI={pvi}"
            " EXC=800:SET"
        )
    return driver_class("masimo-ascii")(), [line.encode() + b"\r\n"], None


@st.composite
def nonin_df8(draw: st.DrawFn) -> Payload:
    frames = b"".join(encode_df8(draw(st.integers(0, 511)), draw(st.integers(0, 127))) for _ in range(3))
    return driver_class("nonin-df8")(), [frames], None


@st.composite
def nonin_df2(draw: st.DrawFn) -> Payload:
    packet = encode_df2_packet(draw(st.integers(0, 511)), draw(st.integers(0, 127)))
    return driver_class("nonin-df2")(), [packet + packet[:5]], None


@st.composite
def suntech(draw: st.DrawFn) -> Payload:
    u16 = st.integers(0, 0xFFFF)
    frame = encode_bp_data(draw(u16), draw(u16), draw(u16), draw(st.integers(0, 255)))
    return driver_class("suntech-advantage")(), [frame], None


@st.composite
def scale(draw: st.DrawFn) -> Payload:
    dialect: Dialect = draw(st.sampled_from(["and", "rice-lake", "fairbanks", "detecto"]))
    driver = driver_class("scale-ascii")(ScaleOptions.model_construct(dialect=dialect))
    unit = draw(st.sampled_from(["kg", "[lb_av]", "g"]))
    weight = Decimal(draw(st.integers(1, 99_999))).scaleb(-draw(st.integers(0, 2)))
    height = Decimal(draw(st.integers(0, 1_200))).scaleb(-1) if dialect == "detecto" else None
    bmi = Decimal(draw(st.integers(0, 9_999))).scaleb(-1) if dialect == "detecto" else None
    zero = encode_line(dialect, Decimal("0.00"), unit)
    line = encode_line(dialect, weight, unit, height_in=height, bmi=bmi)
    return driver, [zero + line], None


@st.composite
def health_o_meter(draw: st.DrawFn) -> Payload:
    packet = encode_packet(
        draw(_num(4, 1)),
        metric=draw(st.booleans()),
        height=draw(st.one_of(st.none(), _num(3, 1))),
        bmi=draw(st.one_of(st.none(), _num(3, 1))),
    )
    return driver_class("health-o-meter")(), [packet], None


@st.composite
def tanita(draw: st.DrawFn) -> Payload:
    pairs = [
        ("Wk", draw(_num(3, 1))),
        ("Hm", draw(_num(3, 1))),
        ("MI", draw(_num(3, 1))),
        ("FW", draw(_num(2, 1))),
    ]
    return driver_class("tanita")(), [encode_record(pairs)], None


@st.composite
def barcode(draw: st.DrawFn) -> Payload:
    return driver_class("barcode")(), [draw(st.binary(max_size=80)) + b"\r\n"], None


@st.composite
def _ieee_number(draw: st.DrawFn) -> bytes:
    """An IEEE 11073 SFLOAT or FLOAT field: often a value a device could send, sometimes anything."""
    kind = draw(st.sampled_from(["bytes", "sfloat", "float"]))
    if kind == "bytes":
        return draw(st.binary(min_size=2, max_size=4))
    mantissa = draw(st.one_of(st.integers(20, 500), st.integers(0, 2000)))
    number = Number(mantissa, draw(st.sampled_from([-1, 0, -1, 0, -2, 1, -3, 2])))
    return encode_sfloat(number) if kind == "sfloat" else encode_float(number)


def ble(name: str) -> Callable[[], st.SearchStrategy[Payload]]:
    driver = driver_class(name)()
    measurement = list(getattr(driver, "measurement_characteristics", ()))

    @st.composite
    def payload(draw: st.DrawFn) -> Payload:
        char = draw(st.sampled_from(measurement))
        if name == "ble-thermometer":  # flags (degF, type), FLOAT temperature, type byte (devices.md 1.2)
            flags = draw(st.sampled_from([0x00, 0x01, 0x04, 0x05]))
            value = Number(draw(st.integers(-500, 1500)), draw(st.sampled_from([-2, -1, 0])))
            body = bytes([flags]) + encode_float(value) + bytes([draw(st.integers(0, 12))])
            return driver, [body], char
        chunks = [
            bytes([draw(st.integers(0, 0xFF))])
            + b"".join(draw(st.lists(_ieee_number(), min_size=1, max_size=8)))
            for _ in range(draw(st.integers(1, 3)))
        ]
        return driver, chunks, char

    return payload


_i16 = st.integers(-32768, 32767)
_u16 = st.integers(0, 0xFFFF)


@st.composite
def scp(draw: st.DrawFn) -> bytes:
    section7 = scp_section7(
        fiducials=tuple(draw(_u16) for _ in range(5)),  # type: ignore[arg-type]
        axes=(draw(_i16), draw(_i16), draw(_i16)),
        rr=draw(_u16),
        pp=draw(_u16),
        vent_rate=draw(_u16),
        atrial_rate=draw(_u16),
        qtc=draw(_u16),
    )
    return scp_record({1: scp_section1(), 7: section7})


def scp_file(name: str) -> Callable[[], st.SearchStrategy[Payload]]:
    @st.composite
    def payload(draw: st.DrawFn) -> Payload:
        return driver_class(name)(), [draw(scp())], None

    return payload


_AECG_CODES: list[tuple[str, list[str | None]]] = [
    ("MDC_ECG_HEART_RATE", ["bpm", "/min", None]),
    ("MDC_ECG_TIME_PD_P", ["ms", "s", None]),
    ("MDC_ECG_TIME_PD_PR", ["ms", "s"]),
    ("MDC_ECG_TIME_PD_QRS", ["ms", "s"]),
    ("MDC_ECG_TIME_PD_QT", ["ms", "s"]),
    ("MDC_ECG_TIME_PD_QTc", ["ms", "s"]),
    ("MDC_ECG_TIME_PD_RR", ["ms", "s"]),
    ("MDC_ECG_ANGLE_P_FRONT", ["deg"]),
    ("MDC_ECG_ANGLE_QRS_FRONT", ["deg"]),
    ("MDC_ECG_ANGLE_T_FRONT", ["deg"]),
]


@st.composite
def aecg(draw: st.DrawFn) -> Payload:
    measurements: list[tuple[str, str, str | None]] = []
    for code, units in _AECG_CODES:
        if draw(st.booleans()):
            value = str(Decimal(draw(st.integers(-99_999, 99_999))).scaleb(-draw(st.integers(0, 3))))
            measurements.append((code, value, draw(st.sampled_from(units))))
    return driver_class("aecg-xml")(), [synthetic_aecg(measurements=measurements)], None


@st.composite
def philips(draw: st.DrawFn) -> Payload:
    return (
        driver_class("philips-xml")(),
        [synthetic_philips_104(qtcb=str(draw(st.integers(0, 99_999))))],
        None,
    )


CASES: dict[str, Callable[[], st.SearchStrategy[Payload]]] = {
    "masimo-ascii": masimo,
    "nonin-df8": nonin_df8,
    "nonin-df2": nonin_df2,
    "suntech-advantage": suntech,
    "scale-ascii": scale,
    "health-o-meter": health_o_meter,
    "tanita": tanita,
    "barcode": barcode,
    **{n: ble(n) for n in ("ble-blood-pressure", "ble-body-composition", "ble-heart-rate")},
    **{n: ble(n) for n in ("ble-pulse-oximeter", "ble-thermometer", "ble-weight-scale", "nonin-3230")},
    "scp-ecg": scp_file("scp-ecg"),
    "scp-ecg-serial": scp_file("scp-ecg-serial"),
    "aecg-xml": aecg,
    "philips-xml": philips,
}


def test_every_registered_driver_is_covered() -> None:
    # the agent's own drivers (other tests register stand-in drivers of their own)
    shipped = {name for name, cls in all_drivers().items() if cls.__module__.startswith("vitals_agent.")}
    assert set(CASES) == shipped


def _check(payload: Payload) -> int:
    driver, chunks, characteristic = payload
    seen = 0
    for item in driver.decode_chunks(chunks, CTX, characteristic):
        if not isinstance(item, Reading):
            continue
        out = normalise(item, max_clock_skew=timedelta.max)
        for m in out.measurements:
            info = tables().metric(m.metric)
            assert m.value is not None and m.value.is_finite()
            assert m.unit == info.unit, (driver.name, m.metric, m.unit)
            assert info.minimum <= m.value <= info.maximum, (driver.name, m.metric, m.value)
            seen += 1
    return seen


@pytest.mark.parametrize("name", sorted(CASES))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_decoder_emits_a_value_outside_its_bounds(name: str, data: st.DataObject) -> None:
    _check(data.draw(CASES[name](), label=name))


@pytest.mark.parametrize("name", sorted(n for n in CASES if n != "barcode"))
def test_the_generators_reach_values(name: str) -> None:
    """Guard: each generator does produce readings with values (else the property holds vacuously)."""
    seen = 0

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        nonlocal seen
        seen += _check(data.draw(CASES[name](), label=name))

    run()
    assert seen > 0, f"{name}: no value ever passed the bounds"
