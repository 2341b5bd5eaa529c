"""scale-ascii: the manual examples (devices.md 4.5) per dialect, stability and once-per-weighing rules,
whole expected Readings, property tests, and end to end through a pty and the serial transport."""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import T0, FakeRuntime, failures_in, fixed_ctx, make_driver, readings_in, start, stop
from tests.kit.shared import shared_file
from vitals_agent.cli import main
from vitals_agent.drivers.base import DecodeFailure, DecoderOutput, driver_class
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.drivers.scale_ascii import (
    ScaleAsciiDriver,
    ScaleDecoder,
    ScaleOptions,
    ScaleSimulator,
    encode_line,
)
from vitals_agent.drivers.serial_transport import SerialTransport
from vitals_agent.errors import DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import DeviceClass, DeviceIdentity, DeviceStatusEvent, Measurement, Reading

TZ = ZoneInfo("America/New_York")
CTX = fixed_ctx("scale-1", tz=TZ)


def weight(v: str, unit: str = "kg") -> Measurement:
    return Measurement(metric="body_weight", value=Decimal(v), unit=unit)


def scale_reading(
    measurements: list[Measurement],
    raw: bytes,
    extra: dict[str, str],
    *,
    manufacturer: str | None = None,
    device_time: datetime | None = None,
) -> Reading:
    return Reading(
        device=DeviceIdentity(id="scale-1", manufacturer=manufacturer),
        device_class=DeviceClass.SCALE,
        measurements=tuple(measurements),
        observed_at=T0,
        received_at=T0,
        device_time=device_time,
        extra=extra,
        raw=raw,
    )


def decode(dialect: str, data: bytes, min_change_kg: Decimal = Decimal(0)) -> list[DecoderOutput]:
    decoder = ScaleDecoder(CTX, dialect, min_change_kg=min_change_kg)
    return decoder.feed(data) + decoder.flush()


# ---------------------------------------------------------------------------------------------- A&D


def test_and_manual_examples() -> None:
    assert decode("and", b"ST,NT,+0012.34kg\r\n") == [
        scale_reading([weight("12.34")], b"ST,NT,+0012.34kg", {"dialect": "and", "mode": "net"})
    ]
    # EK-L balance variant: no data header, 9-character value, right-aligned 3-character unit
    assert decode("and", b"ST,+001234.5  g\r\n") == [
        scale_reading([weight("1234.5", "g")], b"ST,+001234.5  g", {"dialect": "and"})
    ]
    assert decode("and", b"OL,+999999.9  g\r\n") == []  # overload: no weight
    assert decode("and", b"ST,GS,+0070.50lb\r\n") == [
        scale_reading([weight("70.50", "[lb_av]")], b"ST,GS,+0070.50lb", {"dialect": "and", "mode": "gross"})
    ]


def test_and_weighing_is_reported_once() -> None:
    lines = [
        "ST,GS,+0000.00kg",  # empty platform
        "US,GS,+0031.20kg",  # stepping on: motion
        "US,GS,+0070.20kg",
        *["ST,GS,+0070.50kg"] * 5,  # stable, repeated every line
        "US,GS,+0012.00kg",  # stepping off
        "ST,GS,+0000.00kg",
        "US,GS,+0082.00kg",
        *["ST,GS,+0082.30kg"] * 3,
        "ST,TR,+0001.00kg",  # a tare line is not a weight
    ]
    out = decode("and", "".join(f"{line}\r\n" for line in lines).encode())
    assert out == [
        scale_reading([weight("70.50")], b"ST,GS,+0070.50kg", {"dialect": "and", "mode": "gross"}),
        scale_reading([weight("82.30")], b"ST,GS,+0082.30kg", {"dialect": "and", "mode": "gross"}),
    ]


def test_and_value_change_while_loaded_is_a_new_weighing_unless_below_min_change() -> None:
    data = b"ST,GS,+0070.50kg\r\nST,GS,+0070.60kg\r\nST,GS,+0070.60kg\r\n"
    assert [r.values()["body_weight"] for r in readings_in(decode("and", data))] == [
        Decimal("70.50"),
        Decimal("70.60"),
    ]
    once = readings_in(decode("and", data, min_change_kg=Decimal("0.2")))
    assert [r.values()["body_weight"] for r in once] == [Decimal("70.50")]


def test_and_only_unstable_lines_give_nothing() -> None:
    assert decode("and", b"US,GS,+0070.50kg\r\n" * 4) == []


def test_and_bad_records() -> None:
    out = decode("and", b"ST,GS,+0070\r\nXX,GS,+0070.50kg\r\nST,GS,+0070.50oz\r\n\xff\xfe\r\nST,GS,+0070.5")
    errs = [f.error for f in failures_in(out)]
    assert [type(e) for e in errs] == [
        TruncatedError,
        DecodeError,
        UnsupportedError,
        DecodeError,
        TruncatedError,
    ]
    assert [str(e) for e in errs[:3]] == [
        "A&D: truncated record 'ST,GS,+0070' (no unit)",
        "A&D: unknown header 'XX' (expected ST, US, OL, LO or QT)",
        "A&D: unit 'oz' is not a weight unit (kg, lb, g)",
    ]
    assert errs[0].data == b"ST,GS,+0070"
    assert readings_in(out) == []


# ---------------------------------------------------------------------------------------------- others


def test_rice_lake_manual_examples() -> None:
    out = decode("rice-lake", b"    -10.0 lb  Net   \r\n     10.0 lb Gross \r\n")
    assert out == [
        scale_reading(
            [weight("10.0", "[lb_av]")],
            b"     10.0 lb Gross ",
            {"dialect": "rice-lake", "mode": "gross"},
            manufacturer="Rice Lake",
        )
    ]


def test_fairbanks_motion_stable_and_eot() -> None:
    out = decode("fairbanks", b"  154.5 lb gr     \r\n  154.5 lb GR     \r\n\x04")
    assert out == [
        scale_reading(
            [weight("154.5", "[lb_av]")],
            b"  154.5 lb GR     ",
            {"dialect": "fairbanks", "mode": "gross"},
            manufacturer="Fairbanks",
        ),
        DeviceStatusEvent(note="scale signalled an error (EOT)"),
    ]
    decoder = ScaleDecoder(CTX, "fairbanks")
    assert decoder.poll_command() == b"\r" and decoder.poll_interval == 2.0


DETECTO = b"12:00,08/07/15,21.5,5'03.0\",132.3lb"


def test_detecto_manual_example_with_height_and_bmi() -> None:
    assert decode("detecto", DETECTO + b"\r") == [
        scale_reading(
            [
                weight("132.3", "[lb_av]"),
                Measurement(metric="body_height", value=Decimal("63.0"), unit="[in_i]"),
                Measurement(metric="bmi", value=Decimal("21.5"), unit="kg/m2"),
            ],
            DETECTO,
            {"dialect": "detecto"},
            manufacturer="Detecto",
            device_time=datetime(2015, 8, 7, 12, 0, tzinfo=TZ),
        )
    ]


def test_detecto_polled_repeats_are_one_weighing() -> None:
    decoder = ScaleDecoder(CTX, "detecto", poll_seconds=0.5)
    assert decoder.poll_interval == 0.5
    decoder.poll()
    assert decoder.data_to_send() == b"\nP\r"
    empty = b"12:01,08/07/15,,,0.0lb\r"
    out = decoder.feed(DETECTO + b"\r" + DETECTO + b"\r" + empty + DETECTO + b"\r")
    assert len(readings_in(out)) == 2 and failures_in(out) == []
    # no height entered: weight only
    (r,) = readings_in(decode("detecto", b"12:00,08/07/15,,,60.2kg\r"))
    assert r.measurements == (weight("60.2"),)


def test_detecto_truncated() -> None:
    (f,) = failures_in(decode("detecto", b"12:00,08/07/15,21.5\r"))
    assert isinstance(f.error, TruncatedError) and str(f.error) == "Detecto: truncated record: 3 of 5 fields"


@pytest.mark.parametrize(
    ("dialect", "line", "message"),
    [
        ("rice-lake", b"     10.0", "Rice Lake: truncated record '     10.0' (no unit)"),
        ("fairbanks", b"  154.5 lb", "Fairbanks: truncated record '  154.5 lb' (no mode)"),
        ("detecto", b"12:00,08/07/15", "Detecto: truncated record: 2 of 5 fields"),
        ("and", b"ST", "A&D: truncated record 'ST' (no value field)"),
    ],
)
def test_truncated_lines(dialect: str, line: bytes, message: str) -> None:
    (f,) = failures_in(decode(dialect, line + b"\r\n"))
    assert isinstance(f.error, TruncatedError) and str(f.error) == message and f.data == line


def test_sample_file_examples() -> None:
    """The manual quotes in ../shared (skipped when the shared tree is absent)."""
    samples = shared_file("samples", "serial", "scale_ascii_examples_from_manuals.txt")
    section = None
    got: dict[str, list[Reading]] = {}
    dialects = {"A&D": "and", "EK-L": "and", "Detecto": "detecto", "Rice Lake": "rice-lake"}
    for line in samples.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            section = next((d for k, d in dialects.items() if k in line), None)
            continue
        if section is None or not line.strip():
            continue
        record = line.split("    (")[0]  # drop the explanatory note after a record
        for name, char in (("<CR>", "\r"), ("<LF>", "\n"), ("<SP>", " ")):
            record = record.replace(name, char)
        got.setdefault(section, []).extend(readings_in(decode(section, record.encode())))
    values = {
        d: [(str(r.values()["body_weight"]), r.measurements[0].unit) for r in rs] for d, rs in got.items()
    }
    assert values == {
        "and": [("12.34", "kg"), ("1234.5", "g")],
        "detecto": [("132.3", "[lb_av]")],
        "rice-lake": [("10.0", "[lb_av]")],
    }


def test_driver_contract_and_options() -> None:
    cls = driver_class("scale-ascii")
    assert cls is ScaleAsciiDriver
    assert (cls.transport, cls.continuous, cls.device_class) == ("serial", False, DeviceClass.SCALE)
    opts = ScaleOptions.model_validate({"port": "/dev/ttyUSB0", "dialect": "detecto", "poll_seconds": 1})
    decoder = cls(opts).stream_decoder(CTX)
    assert isinstance(decoder, ScaleDecoder) and decoder.dialect == "detecto" and decoder.poll_interval == 1
    with pytest.raises(ValueError, match="dialect"):
        cls.options_model.model_validate({"port": "/dev/ttyUSB0", "dialect": "seca"})
    assert ScaleDecoder(CTX, "and").poll_interval is None


async def test_decode_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["decode", "scale-ascii", "--hex", b"ST,GS,+0070\r\n".hex()]) == 1
    assert capsys.readouterr().err.strip() == "error: A&D: truncated record 'ST,GS,+0070' (no unit)"
    assert await main(["decode", "scale-ascii", "--hex", b"ST,GS,+0070.50kg\r\n".hex()]) == 0
    assert '"body_weight"' in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- properties


@given(st.sampled_from(["and", "rice-lake", "fairbanks", "detecto"]), st.binary(max_size=400))
@settings(max_examples=200, deadline=None)
def test_random_bytes_never_raise(dialect: str, data: bytes) -> None:
    for item in decode(dialect, data):
        assert isinstance(item, Reading | DeviceStatusEvent | DecodeFailure)
        if isinstance(item, DecodeFailure):
            assert isinstance(item.error, DecodeError) and "\n" not in str(item.error)


@given(
    st.sampled_from(["and", "rice-lake", "fairbanks", "detecto"]),
    st.text("0123456789.,+-STUGNlbkg '\"\r\n:/"),
)
@settings(max_examples=200, deadline=None)
def test_near_miss_text_never_raises(dialect: str, text: str) -> None:
    for item in decode(dialect, text.encode()):
        assert not isinstance(item, DecodeFailure) or isinstance(item.error, DecodeError)


WEIGHTS = st.decimals(min_value=Decimal("0.5"), max_value=Decimal("300"), places=1)


@given(
    st.sampled_from(["and", "rice-lake", "fairbanks", "detecto"]),
    st.lists(WEIGHTS, min_size=1, max_size=4),
    st.data(),
)
@settings(max_examples=80, deadline=None)
def test_random_splits_give_the_same_readings(
    dialect: str, weights: list[Decimal], data: st.DataObject
) -> None:
    stream = b""
    for w in weights:  # each weighing: empty platform, motion, three stable repeats
        stream += encode_line(dialect, Decimal("0.0"), "kg")
        if dialect in ("and", "fairbanks"):
            stream += encode_line(dialect, w / 2, "kg", stable=False)
        stream += encode_line(dialect, w, "kg") * 3
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    whole = ScaleDecoder(CTX, dialect).feed(stream)
    decoder = ScaleDecoder(CTX, dialect)
    pieces: list[DecoderOutput] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        pieces += decoder.feed(stream[prev:c])
        prev = c
    assert pieces == whole
    assert failures_in(whole) == []
    assert [r.values()["body_weight"] for r in readings_in(whole)] == weights


# ---------------------------------------------------------------------------------------------- pty


@pytest.mark.parametrize(("dialect", "options"), [("and", {}), ("detecto", {"poll_seconds": 0.02})])
async def test_end_to_end(pty_device: PtyDevice, dialect: str, options: dict[str, object]) -> None:
    driver = make_driver("scale-ascii", pty_device.link, dialect=dialect, **options)
    rt = FakeRuntime(driver, device_id="scale-1", ctx=CTX)
    sim = ScaleSimulator(dialect=dialect, weights=("70.50", "82.30"), interval=0.005, height_in=None)
    sim_task = asyncio.create_task(sim.run(pty_device))
    task = start(SerialTransport(rt))
    try:
        got = await rt.wait_readings(2)
    finally:
        await stop(task)
        sim_task.cancel()
    assert [r.values() for r in got[:2]] == [
        {"body_weight": Decimal("70.50")},
        {"body_weight": Decimal("82.30")},
    ]
    assert rt.failures == []
    if dialect == "detecto":
        assert bytes(sim.received).startswith(b"\nP\r\nP\r")
        assert got[0].device_time == datetime(2015, 8, 7, 12, 0, tzinfo=TZ)
    else:
        assert got[0] == scale_reading(
            [weight("70.50")], b"ST,GS,+0070.50kg", {"dialect": "and", "mode": "gross"}
        )
