"""masimo-ascii decoder properties (hypothesis)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kit import fixed_ctx
from vitals_agent.drivers.base import DecodeFailure, DecoderOutput
from vitals_agent.drivers.masimo import MasimoDecoder
from vitals_agent.errors import DecodeError
from vitals_agent.models import DeviceStatusEvent, Reading

CTX = fixed_ctx("spo2-prop")


def live_line(i: int, spo2: int, bpm: int, pi_hundredths: int, pvi: int | None) -> bytes:
    pvi_field = f" PVI={pvi:03d}%" if pvi is not None else ""
    return (
        f"03/11/26 08:{i // 60 % 60:02d}:{i % 60:02d} SN=0000123456 SPO2={spo2:03d}% BPM={bpm:03d} "
        f"PI={pi_hundredths // 100:02d}.{pi_hundredths % 100:02d}% SPCO=--.-% SPMET=--.-% DESAT=-- "
        f"PIDELTA=+--{pvi_field} ALARM=0000 EXC=000800\r\n"
    ).encode()


values = st.tuples(
    st.integers(50, 100), st.integers(20, 250), st.integers(0, 2000), st.none() | st.integers(0, 100)
)
streams = st.lists(values, min_size=1, max_size=8).map(
    lambda vs: [live_line(i, *v) for i, v in enumerate(vs)]
)


def feed_all(chunks: list[bytes]) -> list[DecoderOutput]:
    decoder = MasimoDecoder(CTX)
    out: list[DecoderOutput] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise(data: bytes) -> None:
    out = feed_all([data, b"\r\n"])
    for item in out:
        assert isinstance(item, Reading | DeviceStatusEvent | DecodeFailure)
        if isinstance(item, DecodeFailure):
            assert isinstance(item.error, DecodeError)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"SPO2=",
                b"BPM=",
                b"PI=",
                b"EXC=",
                b"%",
                b"-",
                b"0",
                b"9",
                b".",
                b" ",
                b"\r\n",
                b"03/11/26 08:00:00 ",
                b"SN=",
                b"ALARM=",
                b":",
                b"Z",
                b"\xff",
            ]
        ),
        max_size=60,
    )
)
def test_token_soup_never_raises(parts: list[bytes]) -> None:
    for item in feed_all([b"".join(parts), b"\r\n"]):
        assert isinstance(item, Reading | DeviceStatusEvent | DecodeFailure)


@settings(max_examples=100, deadline=None)
@given(streams, st.lists(st.integers(0, 10_000), max_size=12))
def test_random_splits_give_the_same_readings(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(lines)
    whole = feed_all([data])
    assert feed_all(split(data, cuts)) == whole
    assert feed_all([bytes([b]) for b in data]) == whole if len(data) < 400 else True


@settings(max_examples=100, deadline=None)
@given(streams)
def test_generated_values_round_trip(lines: list[bytes]) -> None:
    got = [o for o in feed_all(lines) if isinstance(o, Reading)]
    assert len(got) == len(lines)
    for reading, raw in zip(got, lines, strict=True):
        fields = dict(tok.split("=", 1) for tok in raw.decode().split()[2:])
        values = reading.values()
        assert values["spo2"] == Decimal(fields["SPO2"].rstrip("%"))
        assert values["pulse_rate_oximeter"] == Decimal(fields["BPM"])
        assert values["perfusion_index"] == Decimal(fields["PI"].rstrip("%"))
        assert values["perfusion_index"].as_tuple().exponent == -2  # two decimals kept
        if "PVI" in fields:
            assert values["pvi"] == Decimal(fields["PVI"].rstrip("%"))
        assert reading.raw == raw.rstrip(b"\r\n")


garbage = st.binary(min_size=1, max_size=60).filter(
    lambda g: b"\r" not in g and b"\n" not in g and g.strip() != b"" and b"/" not in g
)


@settings(max_examples=100, deadline=None)
@given(streams, st.lists(garbage, min_size=1, max_size=8), st.lists(st.integers(0, 10_000), max_size=6))
def test_garbage_between_lines_is_skipped_and_counted(
    lines: list[bytes], junk: list[bytes], cuts: list[int]
) -> None:
    clean = feed_all(lines)
    mixed = b""
    for i, line in enumerate(lines):
        mixed += junk[i % len(junk)] + b"\r\n" + line
    out = feed_all(split(mixed, cuts))
    assert [o for o in out if not isinstance(o, DecodeFailure)] == clean
    assert len([o for o in out if isinstance(o, DecodeFailure)]) == len(lines)


@settings(max_examples=100, deadline=None)
@given(streams, st.integers(1, 200))
def test_a_line_cut_short_is_never_a_reading(lines: list[bytes], keep: int) -> None:
    # A cut line followed by a complete one (the CR LF was lost with the tail): only complete lines decode.
    first = lines[0].rstrip(b"\r\n")
    keep = min(keep, len(first) - 1)
    out = feed_all([first[:keep], *lines])
    got = [o for o in out if isinstance(o, Reading)]
    assert [r.raw for r in got] == [raw.rstrip(b"\r\n") for raw in lines]
