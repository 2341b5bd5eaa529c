"""Tanita scales and body-composition analysers in "PC" output mode (WB-3000, SC-240/330, BC-418,
HD-351BT, BD-815U).

One record per measurement: comma-separated ``KEY,VALUE`` pairs, ``{0,16,~0,1,~1,1,~2,1,MO,"BC-418",...``
ending ``,CS,XX`` and CR LF (``../shared/reference/devices.md`` §4.5). ``XX`` = the sum of every byte from
``{`` up to and including the comma before ``CS``, mod 256, as two upper-case hex digits (inferred; it
reproduces the SC-240 manual's example).

Mapped (``codes.md`` §7): ``Wk`` weight kg / ``Wp`` weight lb -> ``body_weight``, ``Hm`` -> ``body_height``
(cm), ``MI`` -> ``bmi``, ``FW`` -> ``body_fat_pct``. Other body-composition values (fat mass, fat-free
mass, water, impedance, ...) are kept in ``Reading.extra`` (not sent). Gender and age keyed in on the
device (``GE``, ``AG``) are patient data and are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from pydantic import validate_call

from vitals_agent.codes import device_codes
from vitals_agent.drivers._serial_util import (
    FlushingDecoder,
    TimedSimulator,
    absent,
    failure,
    hexs,
    make_reading,
    parse_decimal,
    value,
)
from vitals_agent.drivers.base import (
    DecodeContext,
    DecodeFailure,
    DecoderOutput,
    LineSplitter,
    SerialDriver,
    SerialOptions,
    register_driver,
)
from vitals_agent.errors import ChecksumError, DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import DeviceClass, DeviceIdentity, Measurement

MAX_RECORD = 1024
MAPPED = device_codes("tanita")  # key -> (metric, UCUM unit): data/device_codes.toml
FRAMING_KEYS = {"0", "~0", "~1", "~2", "CS"}
PATIENT_KEYS = {"GE", "AG"}  # gender, age: keyed in, patient data, not measurements
_IDLE = b" \r\n\t\x00\xff"  # line noise between records (the WB-3000 glitches ~0.1 s after a record)


def checksum(body: bytes) -> int:
    return sum(body) & 0xFF


def encode_record(pairs: Sequence[tuple[str, str]]) -> bytes:
    """A record with its checksum: ``pairs`` after the fixed prefix, e.g. ``[("MO", '"BC-418"'), ...]``."""
    body = "{0,16,~0,1,~1,1,~2,1," + "".join(f"{k},{v}," for k, v in pairs)
    raw = body.encode("ascii")
    return raw + f"CS,{checksum(raw):02X}\r\n".encode("ascii")


class TanitaOptions(SerialOptions):
    pass


class TanitaDecoder(FlushingDecoder):
    """Records ``{...,CS,XX`` one per CR/LF-terminated line. A ``{`` starts a record (one before it in the
    same line was cut short); non-noise bytes before the first ``{`` are garbage. A line longer than
    ``MAX_RECORD`` is discarded whole, up to its CR/LF: no record inside it or after the cap is decoded."""

    def __init__(self, ctx: DecodeContext) -> None:
        super().__init__(ctx)
        self._lines = LineSplitter(MAX_RECORD, b"\r\n", what="Tanita line")

    def pending(self) -> bytes:
        part = self._lines.pending()
        start = part.find(b"{")
        return part[start:] if start >= 0 else b""  # garbage without a record start is not a record

    def reset(self) -> None:
        self._lines.reset()

    def flush(self) -> list[DecoderOutput]:
        if self._lines.discarding:
            return [line.failure for line in self._lines.finish() if line.failure is not None]
        return super().flush()

    def feed(self, data: bytes) -> list[DecoderOutput]:
        out: list[DecoderOutput] = []
        for line in self._lines.feed(data):
            if line.failure is not None:
                out.append(line.failure)
            else:
                self._line(line.data, out)
        return out

    def _line(self, line: bytes, out: list[DecoderOutput]) -> None:
        start = line.find(b"{")
        head = (line if start < 0 else line[:start]).strip(_IDLE)
        if head:
            out.append(failure(DecodeError, f"Tanita: {len(head)} bytes outside a record", head))
        if start < 0:
            return
        parts = line[start:].split(b"{")[1:]
        for part in parts[:-1]:
            cut = b"{" + part
            out.append(
                DecodeFailure(TruncatedError(f"truncated Tanita record ({len(cut)} bytes, no end)", cut))
            )
        out.extend(self._record(b"{" + parts[-1]))

    def _record(self, raw: bytes) -> list[DecoderOutput]:
        try:
            return [self.decode_record(raw)]
        except DecodeError as exc:
            return [DecodeFailure.of(exc, raw)]

    def decode_record(self, raw: bytes) -> DecoderOutput:
        """Decode one record (without CR LF). Raises DecodeError subclasses."""
        cut = raw.rfind(b",CS,")
        if cut < 0:
            raise TruncatedError(f"truncated Tanita record: no checksum field (CS) ({hexs(raw)})")
        body, cs_text = raw[: cut + 1], raw[cut + 4 :].strip()
        computed = checksum(body)
        if len(cs_text) != 2 or not all(c in b"0123456789ABCDEFabcdef" for c in cs_text):
            if not cs_text or len(cs_text) < 2:
                raise TruncatedError(
                    f"truncated Tanita record: checksum {cs_text.decode('latin-1')!r} incomplete"
                )
            raise DecodeError(f"Tanita checksum field {cs_text.decode('latin-1')!r} is not two hex digits")
        got = int(cs_text, 16)
        if got != computed:
            raise ChecksumError(f"Tanita checksum mismatch: got 0x{got:02X}, computed 0x{computed:02X}")
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("Tanita record with non-ASCII bytes") from None
        tokens = text[1:-1].split(",")
        if len(tokens) % 2:
            raise DecodeError(f"Tanita record with an odd number of fields ({len(tokens)})")
        pairs = [(tokens[i].strip(), tokens[i + 1].strip().strip('"')) for i in range(0, len(tokens), 2)]
        measurements: list[Measurement] = []
        extra: dict[str, str] = {}
        model: str | None = None
        seen: set[str] = set()
        for key, val in pairs:
            if key in FRAMING_KEYS or key in PATIENT_KEYS:
                continue
            if key == "MO":
                model = val or None
                continue
            if key in MAPPED:
                metric, unit = MAPPED[key]
                if metric in seen:
                    continue  # e.g. both Wk and Wp: keep the first
                seen.add(metric)
                if not set(val) - set("-. "):  # e.g. "FW,-": no value for this metric, keep the rest
                    measurements.append(absent(metric, unit, f"device sent no value ({key},{val})"))
                    continue
                measurements.append(value(metric, parse_decimal(val, f"Tanita {key}"), unit))
                continue
            extra[key] = val
        if "body_weight" not in seen:
            raise UnsupportedError("Tanita record without a weight (Wk or Wp)")
        identity = DeviceIdentity(id=self.ctx.device.id, manufacturer="Tanita", model=model)
        return make_reading(
            self.ctx, DeviceClass.BODY_COMPOSITION, measurements, raw, extra=extra, identity=identity
        )


class TanitaSimulator(TimedSimulator):
    """A Tanita body-composition analyser sending one record per measurement (every ``interval``
    seconds), followed by the WB-3000's spurious glitch byte when ``glitch`` is set."""

    @validate_call
    def __init__(
        self,
        model: str = "BC-418",
        weight: str = "68.4",
        height: str = "165.0",
        bmi: str = "25.1",
        fat: str = "31.2",
        interval: float = 5.0,
        glitch: bool = False,
    ) -> None:
        super().__init__(interval)
        self.record = encode_record(
            [
                ("MO", f'"{model}"'),
                ("Bt", "0"),
                ("GE", "2"),
                ("AG", "45"),
                ("Hm", height),
                ("Pt", "1.0"),
                ("Wk", weight),
                ("MI", bmi),
                ("FW", fat),
                ("fW", format(Decimal(weight) * Decimal(fat) / 100, ".1f")),
                ("MW", format(Decimal(weight) * (100 - Decimal(fat)) / 100, ".1f")),
                ("ZF", "512"),
            ]
        )
        self.glitch = glitch

    def periodic(self) -> bytes:
        return self.record + (b"\x00" if self.glitch else b"")

    def on_request(self, data: bytes) -> bytes:
        return b""


@register_driver
class TanitaDriver(SerialDriver[TanitaOptions], name="tanita", device_class=DeviceClass.BODY_COMPOSITION):
    """Tanita scales / body-composition analysers, PC output (KEY,VALUE record with CS checksum)."""

    decoder_class = TanitaDecoder
    simulator_class = TanitaSimulator
