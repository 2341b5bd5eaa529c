"""Issue #10 item 1: an overlong line is discarded whole, up to its terminator, in every line-based decoder.

The defect (hostile trial): a 2D wristband payload longer than the barcode line cap (256 bytes) was dropped
as "line too long", but the rest of the same line was then decoded as a whole scan: a 260-byte scan ending
in ``4471`` bound the room to MRN ``4471``. The same cut-and-carry-on pattern was in the Masimo line buffer,
the scale and Tanita line buffers and the Health o meter packet (an overlong field, then the packet's later
tags decoded as a packet of their own).

Line-based decoders here (SunTech and Nonin are binary, length- or sync-framed with checksums; they have no
lines): ``barcode``, ``scale-ascii`` (four dialects), ``masimo-ascii``, ``tanita`` (CR/LF-terminated
records) and ``health-o-meter`` (ESC-tagged packets ending in ESC E, which plays the terminator's part).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.kit import fixed_ctx, oximeter_reading, start, stop, until
from tests.oracle import validate_oru
from vitals_agent.agent.service import AgentService
from vitals_agent.config.schema import parse_config
from vitals_agent.drivers.barcode import BarcodeDriver, BarcodeOptions
from vitals_agent.drivers.base import (
    DecodeFailure,
    DecoderOutput,
    LineSplitter,
    StreamDecoder,
    transport_class,
)
from vitals_agent.drivers.health_o_meter import HealthOMeterDecoder, encode_packet
from vitals_agent.drivers.masimo import MasimoDecoder, Rad8Simulator
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.drivers.scale_ascii import ScaleDecoder, encode_line
from vitals_agent.drivers.tanita import MAX_RECORD, TanitaDecoder, encode_record
from vitals_agent.errors import OverlongError
from vitals_agent.models import DeviceStatusEvent, PatientScan

# A 2D wristband payload (AIM ]d2 = Data Matrix) of 260 bytes whose last four characters are "4471": with
# the default mrn_pattern, those four alone are a valid MRN.
LONG_SCAN = b"]d2MRN0012345^DOE^JANE^19750102^F^" + b"ALLERGY:NONE;" * 17
LONG_SCAN = LONG_SCAN + b"W" * (256 - len(LONG_SCAN)) + b"4471"
assert len(LONG_SCAN) == 260


def _events(out: list[DecoderOutput]) -> list[object]:
    return [o for o in out if not isinstance(o, DecodeFailure)]


def _overlong(out: list[DecoderOutput]) -> list[DecodeFailure]:
    return [o for o in out if isinstance(o, DecodeFailure) and isinstance(o.error, OverlongError)]


# --------------------------------------------------------------------------------- the reproduction


async def test_long_wristband_scan_never_binds_its_tail_to_the_room(tmp_path: Path) -> None:
    """Issue #10 item 1, reproduced as reported: the barcode driver on a real pty through the serial
    transport, the agent's pipeline and patient context; then the next reading's PID-3."""
    with PtyDevice(tmp_path / "ttyScan") as scanner:
        config = parse_config(
            {
                "agent": {
                    "facility": "EXCLINIC",
                    "location": "CLINIC^ROOM12",
                    "data_dir": str(tmp_path / "d"),
                },
                "control": {"enabled": False},
                "patient": {"assigning_authority": "EXCLINIC&2.999.1&ISO"},
                "devices": [
                    {"id": "scanner", "driver": "barcode", "port": str(scanner.link)},
                    {"id": "oxi-1", "driver": "masimo-ascii", "port": str(tmp_path / "ttyNone")},
                ],
            }
        )
        service = AgentService(config)
        runtime = service.runtimes["scanner"]
        task = start(transport_class("serial")(runtime))
        try:
            await until(lambda: runtime.status.connected)
            with capture_logs() as logs:
                await scanner.write(LONG_SCAN + b"\r\n")
                await until(lambda: runtime.status.decode_failures == 1)
            assert service.patients.current() is None  # before: bound to MRN 4471
            assert (runtime.status.discarded_lines, runtime.status.readings) == (1, 0)
            # counted and logged in hex at DEBUG (the whole line), nothing at INFO or above
            [logged] = [e for e in logs if e["event"] == "device.decode_failed"]
            assert logged["log_level"] == "debug" and logged["kind"] == "OverlongError"
            assert bytes.fromhex(logged["hex"]) == LONG_SCAN and logged["bytes"] == 260
            assert not [e for e in logs if e["log_level"] not in ("debug",)]

            # the next reading goes out unbound (temporary PID-3), not filed to "4471"
            accepted = await service.pipeline.accept(
                service.runtimes["oxi-1"], oximeter_reading(datetime.now(UTC))
            )
            assert accepted is not None
            pid = validate_oru(accepted.message).pid
            assert pid.text(3, 1).startswith("TMP-") and pid[31] == "Y"
            assert b"4471" not in accepted.message.split(b"\rPV1")[0].split(b"\rPID")[1]

            # the scanner carries on: the next scan (after the overlong line's terminator) binds
            await scanner.write(b"MRN0012345\r\n")
            await until(lambda: service.patients.current() is not None)
            current = service.patients.current()
            assert current is not None and current.mrn == "MRN0012345"
        finally:
            await stop(task)
            service.outbox.close()
            service.patients.close()
            service.audit.close()


def test_long_scan_split_anywhere_is_one_discarded_line() -> None:
    for cut in range(0, len(LONG_SCAN) + 1, 13):
        options = BarcodeOptions(port="/dev/null")
        decoder = BarcodeDriver(options).stream_decoder(fixed_ctx("scanner"))
        out = decoder.feed(LONG_SCAN[:cut]) + decoder.feed(LONG_SCAN[cut:] + b"\r\n")
        [failure] = out
        assert isinstance(failure, DecodeFailure) and isinstance(failure.error, OverlongError)
        assert failure.data == LONG_SCAN
        assert str(failure.error) == "scan longer than 256 bytes (260 bytes): discarded up to its terminator"


# --------------------------------------------------------------------------------- the splitter itself


def test_splitter_bounds_memory_and_reports_a_line_that_never_ends() -> None:
    splitter = LineSplitter(256, keep=64, max_discard=4096)
    out = []
    for _ in range(100):
        out += splitter.feed(b"A" * 1000)
        assert len(splitter.pending()) <= 256
    reports = [line.failure for line in out if line.failure is not None]
    # counted as it goes (every >= 4096 bytes, here every fifth 1000-byte read), not only at the terminator
    assert len(reports) == 20
    assert all(len(f.data) == 64 and "(5000 bytes): no terminator yet" in str(f.error) for f in reports)
    [end] = splitter.feed(b"tail\n4471\n")[:1]
    assert end.failure is not None and end.end == ord("\n")
    assert splitter.feed(b"") == [] and splitter.discarded == 1
    assert [(line.data, line.failure) for line in splitter.feed(b"ok\r")] == [(b"ok", None)]


def test_a_line_of_exactly_the_cap_is_a_line() -> None:
    splitter = LineSplitter(8)
    assert [(line.data, line.failure) for line in splitter.feed(b"12345678\n")] == [(b"12345678", None)]
    [over] = splitter.feed(b"123456789\n")
    assert over.data == b"" and over.failure is not None and over.failure.data == b"123456789"


def test_unterminated_overlong_line_at_end_of_input() -> None:
    decoder = MasimoDecoder(fixed_ctx())
    line = Rad8Simulator(seed=1).next_line(datetime(2026, 3, 11, 14, 0))
    assert decoder.feed(b"x" * 600 + line.rstrip(b"\r\n")) == []
    [failure] = decoder.flush()
    assert isinstance(failure, DecodeFailure) and isinstance(failure.error, OverlongError)
    assert str(failure.error).endswith("input ended before its terminator")


# --------------------------------------------------------------------------------- every line decoder


@dataclass(frozen=True)
class Case:
    """A line-based decoder and how its units (lines, packets) look."""

    name: str
    make: Callable[[], StreamDecoder]
    good: tuple[bytes, ...]  # complete units as the device sends them (terminator included)
    cap: int  # the longest unit (or field) the decoder takes
    ends: bytes  # bytes that end a unit: never inside the filler
    overlong: Callable[[bytes, bytes, bytes], bytes]  # (unit before, filler, unit after) -> one overlong unit
    min_filler: int = 1


def _line_overlong(ends: bytes) -> Callable[[bytes, bytes, bytes], bytes]:
    def build(before: bytes, filler: bytes, after: bytes) -> bytes:
        # a whole good line, the filler, then a whole good line: all one line (the first one's terminator
        # removed), so both a prefix and a suffix of it would decode if the decoder cut it anywhere
        return before.rstrip(ends) + filler + after

    return build


def _hom_overlong(before: bytes, filler: bytes, after: bytes) -> bytes:
    # a packet whose ID field is longer than MAX_FIELD, followed by another packet's tags and its end tag:
    # before, the tags after the overlong field were decoded as a packet of their own
    return before[:-2] + b"\x1bI" + filler + after[after.index(b"\x1bW") :]


def _hom_many_fields(before: bytes, filler: bytes, after: bytes) -> bytes:
    # more than MAX_FIELDS tags, then a good packet's tags and end tag
    return before[:-2] + b"\x1bT1" * (24 + len(filler) % 8) + after[after.index(b"\x1bW") :]


T = datetime(2026, 3, 11, 14, 0)
RAD8 = Rad8Simulator(seed=7, episode_every=0)
CASES = [
    Case(
        "barcode",
        lambda: BarcodeDriver(BarcodeOptions(port="/dev/null")).stream_decoder(fixed_ctx()),
        (b"MRN0012345\r\n", b"4471\n", b"A-99.1\r"),
        256,
        b"\r\n",
        _line_overlong(b"\r\n"),
    ),
    *[
        Case(
            f"scale-ascii/{dialect}",
            lambda dialect=dialect: ScaleDecoder(fixed_ctx(), dialect=dialect),  # type: ignore[misc]
            tuple(
                unit
                for w in ("70.50", "82.30", "65.10")
                for unit in (encode_line(dialect, Decimal("0.00")), encode_line(dialect, Decimal(w)))
            ),
            256,
            b"\r\n\x04",
            _line_overlong(b"\r\n\x04"),
        )
        for dialect in ("and", "rice-lake", "fairbanks", "detecto")
    ],
    Case(
        "masimo-ascii",
        lambda: MasimoDecoder(fixed_ctx()),
        tuple(RAD8.next_line(T + timedelta(seconds=i)) for i in range(4)),
        512,
        b"\r\n",
        _line_overlong(b"\r\n"),
    ),
    Case(
        "tanita",
        lambda: TanitaDecoder(fixed_ctx()),
        tuple(encode_record([("MO", '"BC-418"'), ("Wk", w), ("FW", "31.2")]) for w in ("68.4", "70.1")),
        MAX_RECORD,
        b"\r\n",
        _line_overlong(b"\r\n"),
    ),
    Case(
        "health-o-meter/field",
        lambda: HealthOMeterDecoder(fixed_ctx(), id_field="patient"),
        (
            encode_packet("80.1", patient_id="P1"),
            encode_packet("0.0"),
            encode_packet("90.2", patient_id="P2"),
        ),
        40,
        b"\x1b",
        _hom_overlong,
        min_filler=41,  # the ID field's content: longer than MAX_FIELD
    ),
    Case(
        "health-o-meter/fields",
        lambda: HealthOMeterDecoder(fixed_ctx()),
        (encode_packet("80.1"), encode_packet("0.0"), encode_packet("90.2")),
        0,
        b"\x1b",
        _hom_many_fields,
    ),
]


def _decode(make: Callable[[], StreamDecoder], chunks: list[bytes]) -> list[DecoderOutput]:
    decoder = make()
    out: list[DecoderOutput] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out + decoder.flush()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_no_prefix_or_suffix_of_an_overlong_line_is_decoded(case: Case, data: st.DataObject) -> None:
    """Differential property: a stream with overlong units decodes to exactly the events of the same
    stream with those units taken out (each overlong unit contributes one OverlongError and nothing else),
    however the stream is cut into reads."""
    n = len(case.good)
    plan = data.draw(
        st.lists(
            st.tuples(
                st.booleans(),  # True: an overlong unit made of the two good units and a filler
                st.integers(0, n - 1),
                st.integers(0, n - 1),
                st.binary(min_size=1, max_size=32),
                # the line's length up to the second good unit: exactly one or two caps (a decoder that cuts
                # at the cap and carries on would then decode the second unit whole), or any
                st.one_of(
                    st.just(case.cap), st.just(2 * case.cap), st.integers(case.cap + 1, case.cap + 300)
                ),
            ),
            min_size=1,
            max_size=8,
        ),
        label="plan",
    )
    stream = bytearray()
    reference = bytearray()
    longs = 0
    for long, before, after, seed, upto in plan:
        if not long:
            stream += case.good[before]
            reference += case.good[before]
            continue
        size = max(case.min_filler, upto - len(case.good[before].rstrip(case.ends)))
        filler = bytes(b if b not in case.ends else 0x78 for b in seed * (1 + size // len(seed)))[:size]
        stream += case.overlong(case.good[before], filler, case.good[after])
        longs += 1
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts"))
    chunks = [bytes(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    full = _decode(case.make, chunks)
    ref = _decode(case.make, [bytes(reference)])
    assert _events(full) == _events(ref)
    assert len(_overlong(full)) == longs
    assert not _overlong(ref)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_case_really_decodes_its_good_units(case: Case) -> None:
    """Guard for the property above: its good units do decode (else it would hold vacuously)."""
    out = _decode(case.make, list(case.good))
    events = [e for e in _events(out) if not isinstance(e, DeviceStatusEvent)]
    assert events and not [o for o in out if isinstance(o, DecodeFailure)]
    if case.name == "barcode":
        assert [e.mrn for e in events if isinstance(e, PatientScan)] == ["MRN0012345", "4471", "A-99.1"]
