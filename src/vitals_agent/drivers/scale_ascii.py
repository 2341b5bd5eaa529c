"""Line-oriented serial scales: one configurable driver, ``dialect`` selects the record grammar.

Formats: ``../shared/reference/devices.md`` §4.5 (manual examples in
``../shared/samples/serial/scale_ascii_examples_from_manuals.txt``).

* ``and`` (A&D and many OEM indicators): ``ST,GS,+0070.50kg`` or, balances, ``ST,+001234.5  g``; stable
  when the header is ``ST``; the scale streams.
* ``rice-lake`` (350-10): ``     10.0 lb Gross ``; no motion field (sent on print, at standstill [M]).
* ``fairbanks`` (Ultegra): ``  154.5 lb GR`` on request (CR); a lower-case mode (``gr``) means motion.
* ``detecto`` (solo): ``12:00,08/07/15,21.5,5'03.0",132.3lb`` (time, date, BMI, height, weight) on request
  (``<LF>P<CR>``); date read as MM/DD/YY [M].

Only stable weights are accepted, and a weighing is reported once (see
:class:`~vitals_agent.drivers._serial_util.WeighingTracker`): a new stable value after the platform was
unloaded, or a stable value that changed; repeats of the same value are not new readings. Weights keep the
device's unit (``kg``, ``[lb_av]``, ``g``) and precision; the agent's normaliser converts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import validate_call

from vitals_agent.drivers._serial_util import (
    FlushingDecoder,
    TimedSimulator,
    WeighingOptions,
    WeighingTracker,
    hexs,
    make_reading,
    parse_decimal,
    parse_feet_inches,
    weighing_measurements,
)
from vitals_agent.drivers.base import (
    DecodeContext,
    DecodeFailure,
    DecoderOutput,
    LineDecoder,
    SerialDriver,
    register_driver,
)
from vitals_agent.errors import DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import DeviceClass, DeviceEvent, DeviceStatusEvent

Dialect = Literal["and", "rice-lake", "fairbanks", "detecto"]
DIALECTS: tuple[str, ...] = ("and", "rice-lake", "fairbanks", "detecto")
UNITS = {"kg": "kg", "lb": "[lb_av]", "g": "g"}
EOT = 0x04
POLL_COMMANDS: dict[str, bytes] = {"detecto": b"\nP\r", "fairbanks": b"\r"}
DEFAULT_POLL_SECONDS = 2.0
# The A&D format is used by many OEM indicators: no manufacturer is claimed for it.
MANUFACTURERS = {"rice-lake": "Rice Lake", "fairbanks": "Fairbanks", "detecto": "Detecto"}


class ScaleOptions(WeighingOptions):
    dialect: Dialect = "and"


@dataclass(frozen=True)
class ScaleLine:
    """One decoded record. ``weight`` None: no weight in this record (overload, tare, counting mode)."""

    stable: bool
    weight: Decimal | None = None
    unit: str = "kg"
    mode: str | None = None  # gross / net
    height: Decimal | None = None
    height_unit: str = "[in_i]"
    bmi: Decimal | None = None
    device_time: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _unit(text: str, dialect: str) -> str:
    unit = UNITS.get(text.strip().lower())
    if unit is None:
        raise UnsupportedError(f"{dialect}: unit {text.strip()!r} is not a weight unit (kg, lb, g)")
    return unit


_AND_VALUE = re.compile(r"^([+-])([0-9. ]*[0-9][0-9. ]*?)\s*([A-Za-z]*)\s*$")


def parse_and(line: str) -> ScaleLine:
    """A&D format: ``H1,H2,+DDDDDDD UU`` (indicators) or ``H1,+DDDDDDDD UUU`` (balances)."""
    fields = line.strip().split(",")
    header = fields[0].strip()
    if header not in ("ST", "US", "OL", "LO", "QT"):
        raise DecodeError(f"A&D: unknown header {header!r} (expected ST, US, OL, LO or QT)")
    if len(fields) == 1:
        raise TruncatedError(f"A&D: truncated record {line!r} (no value field)")
    if len(fields) > 3:
        raise DecodeError(f"A&D: {len(fields)} fields in {line!r} (expected 2 or 3)")
    mode_code = fields[1].strip() if len(fields) == 3 else None
    if mode_code is not None and mode_code not in ("GS", "NT", "TR"):
        raise DecodeError(f"A&D: unknown data header {mode_code!r} (expected GS, NT or TR)")
    if header in ("OL", "LO"):
        return ScaleLine(stable=False, extra={"status": "overload"})
    match = _AND_VALUE.match(fields[-1])
    if match is None:
        raise DecodeError(f"A&D: cannot read the value field {fields[-1]!r}")
    sign, digits, unit_text = match.groups()
    if not unit_text:
        raise TruncatedError(f"A&D: truncated record {line!r} (no unit)")
    if header == "QT" or mode_code == "TR":
        return ScaleLine(stable=False, extra={"status": "counting" if header == "QT" else "tare"})
    number = parse_decimal(sign + digits.replace(" ", ""), "A&D weight")
    mode = {"GS": "gross", "NT": "net", None: None}[mode_code]
    return ScaleLine(stable=header == "ST", weight=number, unit=_unit(unit_text, "A&D"), mode=mode)


@dataclass(frozen=True)
class _WeightUnitMode:
    """A dialect whose record is a weight, its unit and a mode word (Rice Lake, Fairbanks)."""

    name: str
    record: re.Pattern[str]  # groups: sign, digits, unit, mode
    cut_short: re.Pattern[str]  # a record that ended before its ``missing`` part
    missing: str
    modes: dict[str, str | None]  # mode word (lower case) -> gross / net / tare (None: not given)
    lower_case_is_motion: bool = False  # else every record is at standstill

    def parse(self, line: str) -> ScaleLine:
        match = self.record.match(line)
        if match is None:
            if self.cut_short.match(line):
                raise TruncatedError(f"{self.name}: truncated record {line!r} (no {self.missing})")
            raise DecodeError(f"{self.name}: not a weight record: {line!r}")
        sign, digits, unit_text, mode_text = match.groups()
        if mode_text.lower() not in self.modes:
            raise DecodeError(f"{self.name}: unknown mode {mode_text!r}")
        mode = self.modes[mode_text.lower()]
        if mode == "tare":
            return ScaleLine(stable=False, extra={"status": "tare"})
        number = parse_decimal(sign + digits, f"{self.name} weight")
        stable = mode_text.isupper() or not self.lower_case_is_motion
        return ScaleLine(stable=stable, weight=number, unit=_unit(unit_text, self.name), mode=mode)


_RICE_LAKE = _WeightUnitMode(
    "Rice Lake",
    re.compile(r"^\s*([+-]?)\s*([0-9.]+)\s+([A-Za-z]{1,3})\s*([A-Za-z]*)\s*$"),
    re.compile(r"^\s*[+-]?\s*[0-9.]+\s*$"),
    "unit",
    {"": None, "gross": "gross", "g": "gross", "net": "net", "n": "net", "tare": "tare", "t": "tare"},
)
_FAIRBANKS = _WeightUnitMode(
    "Fairbanks",
    re.compile(r"^\s*([+-]?)\s*([0-9.]+)\s*([A-Za-z]{1,3})\s+([A-Za-z]{2})\b.*$"),
    re.compile(r"^\s*[+-]?\s*[0-9.]+\s*([A-Za-z]{1,3})?\s*$"),
    "mode",
    {"gr": "gross", "nt": "net", "tr": "tare"},
    lower_case_is_motion=True,
)


def parse_rice_lake(line: str) -> ScaleLine:
    """Rice Lake 350-10: 9-character right-aligned weight, unit, mode (``Gross``/``Net``)."""
    return _RICE_LAKE.parse(line)


def parse_fairbanks(line: str) -> ScaleLine:
    """Fairbanks Ultegra: ``XXXXX.X lb GR`` — an upper-case mode is stable, lower case means motion."""
    return _FAIRBANKS.parse(line)


_NUMBER_UNIT = re.compile(r"^([0-9.]+)\s*([A-Za-z]*)$")


def parse_detecto(line: str, ctx: DecodeContext | None = None) -> ScaleLine:
    """Detecto solo: ``Time,Date,BMI,Height,Weight`` (height feet'inches", weight with unit suffix)."""
    fields = [f.strip() for f in line.strip().split(",")]
    if len(fields) < 5:
        raise TruncatedError(f"Detecto: truncated record: {len(fields)} of 5 fields")
    if len(fields) > 5:
        raise DecodeError(f"Detecto: {len(fields)} fields (expected 5: time, date, BMI, height, weight)")
    time_text, date_text, bmi_text, height_text, weight_text = fields
    match = _NUMBER_UNIT.match(weight_text)
    if match is None or not match.group(2):
        raise DecodeError(f"Detecto: cannot read the weight {weight_text!r}")
    weight = parse_decimal(match.group(1), "Detecto weight")
    unit = _unit(match.group(2), "Detecto")
    height: Decimal | None = None
    height_unit = "[in_i]"
    if height_text and set(height_text) - set("-' \""):
        height = parse_feet_inches(height_text)
        if height is None:
            metric = _NUMBER_UNIT.match(height_text)
            if metric is None or metric.group(2).lower() not in ("cm", "in"):
                raise DecodeError(f"Detecto: cannot read the height {height_text!r}")
            height = parse_decimal(metric.group(1), "Detecto height")
            height_unit = "cm" if metric.group(2).lower() == "cm" else "[in_i]"
    bmi = parse_decimal(bmi_text, "Detecto BMI") if bmi_text and set(bmi_text) - set("-. ") else None
    device_time: datetime | None = None
    extra = {}
    try:
        naive = datetime.strptime(f"{date_text} {time_text}", "%m/%d/%y %H:%M")
        device_time = naive.replace(tzinfo=ctx.tz) if ctx is not None else None
    except ValueError:
        extra["device_time_raw"] = f"{date_text} {time_text}"
    return ScaleLine(
        stable=True,
        weight=weight,
        unit=unit,
        height=height,
        height_unit=height_unit,
        bmi=bmi,
        device_time=device_time,
        extra=extra,
    )


class ScaleDecoder(LineDecoder, FlushingDecoder):
    """CR/LF-terminated records of one dialect; EOT (Fairbanks error) ends a record too and is reported as
    a status. Line splitting (an overlong line is discarded whole, up to its terminator), ``reset`` and the
    failure wrapping come from :class:`LineDecoder`."""

    max_line: ClassVar[int] = 256
    terminators: ClassVar[bytes] = b"\r\n\x04"

    def __init__(
        self,
        ctx: DecodeContext,
        dialect: str = "and",
        zero_band_kg: Decimal = Decimal("0.1"),
        min_change_kg: Decimal = Decimal(0),
        poll_seconds: float | None = None,
    ) -> None:
        super().__init__(ctx, what=f"{dialect} line")
        if dialect not in DIALECTS:
            raise ValueError(f"unknown scale dialect {dialect!r} (known: {', '.join(DIALECTS)})")
        self.dialect = dialect
        self.tracker = WeighingTracker(zero_band_kg, min_change_kg)
        if dialect in POLL_COMMANDS:
            self.poll_interval = poll_seconds or DEFAULT_POLL_SECONDS

    def poll_command(self) -> bytes | None:
        return POLL_COMMANDS.get(self.dialect)

    def flush(self) -> list[DecoderOutput]:
        if self._lines.discarding:
            return LineDecoder.flush(self)
        return FlushingDecoder.flush(self)

    def feed(self, data: bytes) -> list[DecoderOutput]:
        out: list[DecoderOutput] = []
        for line in self._lines.feed(data):
            if line.failure is not None:
                out.append(line.failure)
            elif line.data and line.end == EOT:
                out.append(
                    DecodeFailure(TruncatedError(f"{self.dialect}: record cut short by EOT", line.data))
                )
            elif line.data:
                out.extend(self._decode_safely(line.data))
            if line.end == EOT:
                out.append(DeviceStatusEvent(note="scale signalled an error (EOT)"))
        return out

    def decode_line(self, raw: bytes) -> list[DeviceEvent]:
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError(f"{self.dialect}: non-ASCII bytes in a record ({hexs(raw)})") from None
        if not text.strip():
            return []
        if not text.isprintable():
            raise DecodeError(f"{self.dialect}: control characters in a record ({hexs(raw)})")
        if self.dialect == "and":
            rec = parse_and(text)
        elif self.dialect == "rice-lake":
            rec = parse_rice_lake(text)
        elif self.dialect == "fairbanks":
            rec = parse_fairbanks(text)
        else:
            rec = parse_detecto(text, self.ctx)
        if rec.weight is None:
            return []
        other = (rec.height, rec.bmi)
        if not self.tracker.observe(rec.weight, rec.unit, rec.stable, other):
            return []
        measurements = weighing_measurements(rec.weight, rec.unit, rec.height, rec.height_unit, rec.bmi)
        extra = {"dialect": self.dialect, **rec.extra}
        if rec.mode:
            extra["mode"] = rec.mode
        return [
            make_reading(
                self.ctx,
                DeviceClass.SCALE,
                measurements,
                raw,
                device_time=rec.device_time,
                extra=extra,
                manufacturer=MANUFACTURERS.get(self.dialect),
            )
        ]


# ---------------------------------------------------------------------------------------------- encoders


def _lb_or_kg(unit: str) -> str:
    return {"kg": "kg", "[lb_av]": "lb", "lb": "lb", "g": "g"}[unit]


def encode_line(
    dialect: str,
    weight: Decimal,
    unit: str = "kg",
    *,
    stable: bool = True,
    mode: str = "gross",
    when: datetime | None = None,
    height_in: Decimal | None = None,
    bmi: Decimal | None = None,
) -> bytes:
    """One record as the scale sends it (CR LF or CR terminated)."""
    u = _lb_or_kg(unit)
    if dialect == "and":
        head = "ST" if stable else "US"
        text = f"{'+' if weight >= 0 else '-'}{format(abs(weight), 'f'):>7}".replace(" ", "0")
        return f"{head},{'GS' if mode == 'gross' else 'NT'},{text}{u}\r\n".encode()
    if dialect == "rice-lake":
        return f"{format(weight, 'f'):>9} {u:<2} {'Gross' if mode == 'gross' else 'Net':<5} \r\n".encode()
    if dialect == "fairbanks":
        m = "GR" if mode == "gross" else "NT"
        return f"{format(weight, 'f'):>7} {u:<2} {m if stable else m.lower()}     \r\n".encode()
    when = when or datetime(2015, 8, 7, 12, 0)
    h = ""
    if height_in is not None:
        feet, inches = divmod(height_in, 12)
        h = f"{int(feet)}'{format(inches, 'f').zfill(4)}\""
    b = format(bmi, "f") if bmi is not None else ""
    return f"{when:%H:%M},{when:%m/%d/%y},{b},{h},{format(weight, 'f')}{u}\r".encode()


# ---------------------------------------------------------------------------------------------- simulator


class ScaleSimulator(TimedSimulator):
    """A scale with a patient stepping on and off: zero, motion while loading, stable weight (several
    records), unloading. Streams (A&D, Rice Lake) or answers requests (Detecto ``<LF>P<CR>``,
    Fairbanks CR)."""

    @validate_call
    def __init__(
        self,
        dialect: str = "and",
        weights: Sequence[str | Decimal] = ("70.50", "82.30"),
        unit: str = "kg",
        interval: float = 0.5,
        height_in: str | Decimal | None = "63.0",
        bmi: str | Decimal | None = None,
    ) -> None:
        super().__init__(interval)
        if dialect not in DIALECTS:
            raise ValueError(f"unknown scale dialect {dialect!r}")
        self.dialect = dialect
        self.unit = unit
        self.height_in = Decimal(height_in) if height_in is not None else None
        self.bmi = Decimal(bmi) if bmi is not None else None
        # One cycle per patient: empty, two motion records, five stable ones.
        self.script: list[tuple[Decimal, bool]] = []
        for w in weights:
            target = Decimal(w)
            self.script += [(Decimal("0.00"), True), ((target / 2).quantize(target), False)]
            self.script += [(target - Decimal("0.3"), False)] + [(target, True)] * 5
        self.step = 0
        self._req = bytearray()

    def current(self) -> bytes:
        weight, stable = self.script[self.step % len(self.script)]
        self.step += 1
        if self.dialect == "rice-lake" and not stable:
            return b""  # Rice Lake sends on print only (at standstill)
        while self.dialect == "detecto" and not stable:  # the solo answers with the settled weight
            weight, stable = self.script[self.step % len(self.script)]
            self.step += 1
        return encode_line(
            self.dialect, weight, self.unit, stable=stable, height_in=self.height_in, bmi=self.bmi
        )

    def periodic(self) -> bytes:
        if self.dialect in POLL_COMMANDS:
            return b""
        return self.current()

    def on_request(self, data: bytes) -> bytes:
        command = POLL_COMMANDS.get(self.dialect)
        if command is None:
            return b""
        self._req.extend(data)
        reply = b""
        while command in self._req:
            idx = self._req.index(command)
            del self._req[: idx + len(command)]
            reply += self.current()
        if len(self._req) > 64:
            self._req.clear()
        return reply


@register_driver
class ScaleAsciiDriver(SerialDriver[ScaleOptions], name="scale-ascii", device_class=DeviceClass.SCALE):
    """Line-oriented serial scales (A&D format, Rice Lake, Fairbanks, Detecto solo): dialect option."""

    simulator_class = ScaleSimulator

    def stream_decoder(self, ctx: DecodeContext) -> ScaleDecoder:
        o = self.options
        return ScaleDecoder(
            ctx,
            dialect=o.dialect,
            zero_band_kg=o.zero_band_kg,
            min_change_kg=o.min_change_kg,
            poll_seconds=o.poll_seconds,
        )

    def simulator_settings(self) -> dict[str, Any]:
        return {"dialect": self.options.dialect}
