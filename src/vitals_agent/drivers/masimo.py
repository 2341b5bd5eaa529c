"""``masimo-ascii``: Masimo Rad-family pulse oximeters (Rad-8, Rad-5/-57/-87, Radical-5/-7, Rad-97) on their
serial ASCII output (devices.md section 5.3).

Every line is ``MM/DD/YY HH:MM:SS`` (the device clock: naive, in ``ctx.tz``; it drifts, the agent applies
its clock-skew policy; an unset clock ``--/--/-- --:--:--`` or an impossible date gives ``CLOCK_UNSET``)
then whitespace-separated ``KEY=VALUE`` fields, CR LF. Two grammars share that frame:

* **ASCII 1** (live output; devices.md 5.3, the Rad-8 operator's manual; MD PnP's Radical-5/-7 example
  strings in ``poxrad_discrete.h``): upper-case keys ``SN SPO2 BPM PI SPCO SPMET DESAT PIDELTA PVI ALARM
  EXC``; percentages carry ``%`` (``SPO2=096%``, ``PI=05.10%``); ``EXC`` is the exception mask in hex, 6
  digits (``EXC=000800``), or 3 on the Radical-5 (``EXC=800``); ``ALARM`` is a hex mask.
* **ASCII 2** (the Rad-8/-57/-87 trend download, which the Rad-87 manual says is "in ASCII 2 format", and
  the ASCII 2 serial/printer output): mixed-case keys ``SpO2 PR PI SpCO SpMet SpHb PVI ALARM EXC``, values
  without units (``SpO2=097 PI=04.69``; SpHb in g/dL), ``EXC`` as 3 hex digits followed by the exception
  names (``EXC=828:Search,OffPat,SET``); zero SpO2/PR mean "no data" (``SpO2=000 PR=000 PI=00.00``).

A line is ASCII 2 when its ``EXC`` carries names or its keys are mixed-case, else ASCII 1; ``format``
("auto", "ascii1", "ascii2"; "trend" = "ascii2") says which the device is set to.

* values are zero-padded and keep their decimals (``PI=05.10%`` -> ``5.10``); a trailing ``%`` is dropped;
  a value made only of ``-``, ``+`` and ``.`` means "not available";
* no sensor / defective / unrecognised sensor, sensor off and pulse search (EXC bits) suppress SpO2 and
  pulse rate (``SENSOR_OFF``); low perfusion, interference, ambient light and low signal IQ flag the
  values ``QUES``. ``ALARM``: the limit-violation and alarm-active bits (MD PnP's table: everything but
  0x0020 silenced, 0x0040 low battery, 0x0080 reserved) flag the reading ``ALARM``;
* unknown keys are kept in ``Reading.extra``, never sent.

Robustness: a line must start with a time stamp and carry SpO2, a pulse rate and ``EXC`` (the last field of
every documented format), so a line cut short by an unplug or lost bytes is a :class:`TruncatedError`, not a
reading. When a time stamp appears inside a line (garbage or a lost CR LF before it) the decoder
resynchronises there and reports the bytes before it as a failure; a line longer than 512 bytes is
discarded whole up to its CR/LF (no time stamp inside it is used). A line that gives no value yields
nothing (not a failure). Byte loss *inside* a value cannot be detected: the protocol has no checksum.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import validate_call

from vitals_agent.codes import device_codes
from vitals_agent.drivers.base import (
    DecodeContext,
    DecodeFailure,
    DecoderOutput,
    Line,
    LineSplitter,
    SerialDriver,
    SerialOptions,
    SimPort,
    Simulator,
    StreamDecoder,
    register_driver,
)
from vitals_agent.errors import DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import (
    DeviceClass,
    DeviceEvent,
    DeviceIdentity,
    DeviceStatusEvent,
    Flag,
    Measurement,
    Reading,
    ReadingFlag,
)

MasimoFormat = Literal["auto", "ascii1", "ascii2", "trend"]


class MasimoOptions(SerialOptions):
    """``format``: which output the device is set to: "ascii1", "ascii2" ("trend": the trend download,
    which uses the ASCII 2 grammar) or "auto" (either, line by line)."""

    format: MasimoFormat = "auto"


# Device key (upper-cased) -> (metric key, unit): data/device_codes.toml, whose order is a reading's.
METRICS = device_codes("masimo-ascii")
UNITS: dict[str, str] = dict(METRICS.values())  # metric key -> the unit the device reports it in
METRIC_ORDER = tuple(UNITS)  # the table's order, so a metric added there is never left out of a reading

# EXC bits (devices.md 5.3): (bit, name used in extra/absent reasons)
EXC_NO_SENSOR = 0x001
EXC_DEFECTIVE_SENSOR = 0x002
EXC_LOW_PERFUSION = 0x004
EXC_PULSE_SEARCH = 0x008
EXC_INTERFERENCE = 0x010
EXC_SENSOR_OFF = 0x020
EXC_AMBIENT_LIGHT = 0x040
EXC_UNRECOGNISED_SENSOR = 0x080
EXC_LOW_SIGNAL_IQ = 0x400
EXC_SET_MODE = 0x800

EXC_NAMES: dict[int, str] = {
    EXC_NO_SENSOR: "no_sensor",
    EXC_DEFECTIVE_SENSOR: "defective_sensor",
    EXC_LOW_PERFUSION: "low_perfusion",
    EXC_PULSE_SEARCH: "pulse_search",
    EXC_INTERFERENCE: "interference",
    EXC_SENSOR_OFF: "sensor_off",
    EXC_AMBIENT_LIGHT: "ambient_light",
    EXC_UNRECOGNISED_SENSOR: "unrecognised_sensor",
    EXC_LOW_SIGNAL_IQ: "low_signal_iq",
    EXC_SET_MODE: "set_mode",
}
# Most specific first: the first bit set is the absent reason of SpO2 and pulse rate.
SUPPRESS_BITS = (
    EXC_NO_SENSOR,
    EXC_DEFECTIVE_SENSOR,
    EXC_UNRECOGNISED_SENSOR,
    EXC_SENSOR_OFF,
    EXC_PULSE_SEARCH,
)
QUESTIONABLE_BITS = EXC_LOW_PERFUSION | EXC_INTERFERENCE | EXC_AMBIENT_LIGHT | EXC_LOW_SIGNAL_IQ

# SpO2 and pulse rate are reported as "no value, because ..." when absent; the optional parameters
# (PI, SpCO, SpMet, PVI: `--.-` on units without the option) only when they have a value.
ALWAYS_REPORTED = frozenset({"spo2", "pulse_rate_oximeter"})

NOT_AVAILABLE = "not_available"
NO_DATA = "no_data"

_STAMP = r"[0-9-]{2}/[0-9-]{2}/[0-9-]{2} [0-9-]{2}:[0-9-]{2}:[0-9-]{2}"
_STAMP_FIND = re.compile(
    b"(?=" + _STAMP.encode("ascii") + b")"
)  # overlapping: a cut stamp before a whole one
_STAMP_DIGITS = re.compile(r"(\d\d)/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)")
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,15}")
_UNSIGNED = re.compile(r"\d{1,4}(?:\.\d{1,3})?")
_ABSENT = re.compile(r"[-+.]+")
_HEX = re.compile(r"[0-9A-Fa-f]{1,8}")
_EXC = re.compile(r"([0-9A-Fa-f]{1,6})(?::([A-Za-z]+(?:,[A-Za-z]+)*))?")
_SERIAL = re.compile(r"[A-Za-z0-9-]{1,32}")
_ASCII1_EXC_DIGITS = (6, 3)  # Rad-8/Radical-7: 6; Radical-5 (2-digit ALARM): 3 (MD PnP poxrad_discrete.h)
_ASCII2_EXC_DIGITS = 3
# ALARM bits that are not an alarm condition (MD PnP poxrad_discrete.h alarmmessage()): silenced, low
# battery, reserved. Every other bit is a limit violation or "alarm active".
_ALARM_NOT_ACTIVE = {0x0020: "alarm_silenced", 0x0040: "low_battery", 0x0080: "reserved"}


@dataclass(frozen=True)
class MasimoLine:
    """One parsed line, before it becomes events (exposed for tests and the simulator)."""

    device_time: datetime | None
    clock_unset: bool
    fields: dict[str, str]  # upper-cased key -> raw value (as sent, `%` kept)
    grammar: Literal["ascii1", "ascii2"]
    exc: int  # the EXC exception mask

    @property
    def trend(self) -> bool:
        """The ASCII 2 grammar (the trend download's)."""
        return self.grammar == "ascii2"


def parse_line(text: str, ctx: DecodeContext) -> MasimoLine:
    """Split one line (no terminator) into its stamp and fields. Raises :class:`DecodeError`."""
    if len(text) < 18 or not re.fullmatch(_STAMP, text[:17]) or text[17] != " ":
        raise DecodeError("not a Masimo line: no MM/DD/YY HH:MM:SS time stamp at the start")
    device_time: datetime | None = None
    digits = _STAMP_DIGITS.fullmatch(text[:17])
    if digits:
        mo, d, y, h, mi, s = (int(g) for g in digits.groups())
        try:
            device_time = datetime(2000 + y, mo, d, h, mi, s, tzinfo=ctx.tz)
        except ValueError:
            device_time = None
    fields: dict[str, str] = {}
    mixed_case = False
    for token in text[18:].split():
        key, sep, value = token.partition("=")
        if not sep or not _KEY.fullmatch(key) or not value:
            raise DecodeError(f"not a KEY=VALUE field: {token[:40]!r}")
        upper = key.upper()
        if upper in fields:
            raise DecodeError(f"field {upper} appears twice (two lines run together?)")
        fields[upper] = value
        mixed_case = mixed_case or key != upper
    if "EXC" not in fields:
        raise TruncatedError("line has no EXC field (cut short?)")
    exc = _EXC.fullmatch(fields["EXC"])
    if not exc:
        raise DecodeError(f"EXC is not a hex exception mask: {fields['EXC'][:20]!r}")
    # ASCII 2: 3 hex digits and the exception names; ASCII 1: 6 hex digits (3 on a Radical-5), no names.
    # A line cut inside EXC fails either way (an ASCII 2 EXC without its names is cut short).
    grammar: Literal["ascii1", "ascii2"] = "ascii2" if exc.group(2) is not None or mixed_case else "ascii1"
    width = len(exc.group(1))
    if grammar == "ascii2" and (width != _ASCII2_EXC_DIGITS or exc.group(2) is None):
        raise TruncatedError("EXC must be 3 hex digits and the exception names in an ASCII 2 line")
    if grammar == "ascii1":
        # 6 digits beside a 4-digit ALARM (Rad-8, Radical-7); 3 beside the Radical-5's 2-digit ALARM. Pairing
        # them keeps "EXC=000820" cut to "EXC=000" (sensor off lost) a truncation, not a reading.
        alarm = fields.get("ALARM", "")
        want = _ASCII1_EXC_DIGITS[1] if len(alarm) == 2 and _HEX.fullmatch(alarm) else _ASCII1_EXC_DIGITS[0]
        if width != want:
            raise TruncatedError(f"EXC must have {want} hex digits in this ASCII 1 line")
    if "SPO2" not in fields or not ("BPM" in fields or "PR" in fields):
        raise TruncatedError("line lacks SpO2 or pulse rate (cut short?)")
    return MasimoLine(
        device_time=device_time,
        clock_unset=device_time is None,
        fields=fields,
        grammar=grammar,
        exc=int(exc.group(1), 16),
    )


def _value(key: str, raw: str) -> Decimal | None:
    text = raw[:-1] if raw.endswith("%") else raw
    if text and _ABSENT.fullmatch(text):
        return None
    if not _UNSIGNED.fullmatch(text):
        raise DecodeError(f"{key} is not a number: {raw[:20]!r}")
    return Decimal(text)


class MasimoDecoder(StreamDecoder):
    """CR/LF line decoder for Masimo ASCII output, resynchronising on time stamps."""

    max_line: int = 512

    def __init__(self, ctx: DecodeContext, fmt: MasimoFormat = "auto") -> None:
        super().__init__(ctx)
        self.format: MasimoFormat = fmt
        self._lines = LineSplitter(self.max_line, b"\r\n")
        self._announced_serial: str | None = None

    def reset(self) -> None:
        self._lines.reset()
        self._announced_serial = None  # re-announce the identity after a reconnect (maybe another unit)

    @property
    def pending(self) -> bytes:
        """Bytes of an unfinished line (for ``decode`` of input without a final CR LF)."""
        return self._lines.pending()

    def feed(self, data: bytes) -> list[DecoderOutput]:
        return self._take(self._lines.feed(data))

    def flush(self) -> list[DecoderOutput]:
        """Decode an unterminated last line (offline input is complete; a live link never calls this)."""
        return self._take(self._lines.finish())

    def _take(self, lines: list[Line]) -> list[DecoderOutput]:
        out: list[DecoderOutput] = []
        for line in lines:
            if line.failure is not None:
                out.append(line.failure)  # overlong: discarded whole, no time stamp inside it is used
            elif line.data:
                self._end_line(line.data, out)
        return out

    def _end_line(self, line: bytes, out: list[DecoderOutput]) -> None:
        if not line.strip():
            return
        starts = [m.start() for m in _STAMP_FIND.finditer(line)]
        if not starts:
            out.append(DecodeFailure(DecodeError("not a Masimo line: no time stamp", line)))
            return
        if line[: starts[0]].strip():
            out.append(DecodeFailure(DecodeError("garbage before a time stamp", line[: starts[0]])))
        for begin, end in zip(starts, [*starts[1:], len(line)], strict=True):
            segment = line[begin:end]
            try:
                out.extend(self.decode_line(segment))
            except DecodeError as exc:
                out.append(DecodeFailure.of(exc, segment))

    def decode_line(self, line: bytes) -> list[DeviceEvent]:
        """Decode one line (from its time stamp, without CR LF). Raises :class:`DecodeError`."""
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            raise DecodeError("line is not ASCII") from None
        if not text.isprintable():
            raise DecodeError("line has control characters")
        parsed = parse_line(text, self.ctx)
        if parsed.grammar == "ascii2" and self.format == "ascii1":
            raise UnsupportedError("ASCII 2 (trend) line while format = 'ascii1'")
        if parsed.grammar == "ascii1" and self.format in ("ascii2", "trend"):
            raise UnsupportedError(f"ASCII 1 line while format = {self.format!r}")
        return self._events(parsed, line)

    def _events(self, parsed: MasimoLine, raw: bytes) -> list[DeviceEvent]:
        fields = parsed.fields
        exc = parsed.exc
        alarm_raw = fields.get("ALARM")
        alarm = 0
        if alarm_raw is not None and not _ABSENT.fullmatch(alarm_raw):
            if not _HEX.fullmatch(alarm_raw):
                raise DecodeError(f"ALARM is not a hex mask: {alarm_raw[:20]!r}")
            alarm = int(alarm_raw, 16)
        alarm_notes = [name for bit, name in _ALARM_NOT_ACTIVE.items() if alarm & bit]
        alarm &= ~sum(_ALARM_NOT_ACTIVE)
        serial = fields.get("SN")
        if serial is not None and (_ABSENT.fullmatch(serial) or not _SERIAL.fullmatch(serial)):
            if not _ABSENT.fullmatch(serial):
                raise DecodeError(f"SN is not a serial number: {serial[:40]!r}")
            serial = None

        values: dict[str, Decimal | None] = {}
        for key, raw_value in fields.items():
            if key in METRICS:
                values[METRICS[key][0]] = _value(key, raw_value)

        reasons: dict[str, str] = {metric: NOT_AVAILABLE for metric, v in values.items() if v is None}
        if parsed.grammar == "ascii2":  # ASCII 2 / trend records write zeros when there was no data
            for metric in ("spo2", "pulse_rate_oximeter"):
                if values.get(metric) == 0:
                    values[metric], reasons[metric] = None, NO_DATA
            no_pulse = values.get("spo2") is None and values.get("pulse_rate_oximeter") is None
            if no_pulse and values.get("perfusion_index") == 0:
                values["perfusion_index"], reasons["perfusion_index"] = None, NO_DATA
        suppress = next((bit for bit in SUPPRESS_BITS if exc & bit), None)
        if suppress is not None:
            for metric in ("spo2", "pulse_rate_oximeter"):
                if metric in values:
                    values[metric], reasons[metric] = None, EXC_NAMES[suppress]
        value_flags: tuple[Flag, ...] = (Flag.QUESTIONABLE,) if exc & QUESTIONABLE_BITS else ()

        events: list[DeviceEvent] = []
        identity = self.ctx.device.merged(
            DeviceIdentity(id=self.ctx.device.id, manufacturer="Masimo", serial_number=serial)
        )
        if serial is not None and serial != self._announced_serial:
            self._announced_serial = serial
            events.append(DeviceStatusEvent(identity=identity))
        if not any(v is not None for v in values.values()):
            return events  # a line without any value is not a reading

        measurements = []
        for metric in METRIC_ORDER:
            if metric not in values or (values[metric] is None and metric not in ALWAYS_REPORTED):
                continue
            value = values[metric]
            measurements.append(
                Measurement(
                    metric=metric,
                    value=value,
                    unit=UNITS[metric],
                    flags=value_flags if value is not None else (),
                    absent_reason=reasons.get(metric) if value is None else None,
                )
            )
        flags: list[ReadingFlag] = []
        if suppress is not None:
            flags.append(ReadingFlag.SENSOR_OFF)
        if alarm:
            flags.append(ReadingFlag.ALARM)
        if parsed.clock_unset:
            flags.append(ReadingFlag.CLOCK_UNSET)
        extra = {key: value for key, value in fields.items() if key not in METRICS and key != "SN"}
        names = [name for bit, name in EXC_NAMES.items() if exc & bit and bit != EXC_SET_MODE]
        if names:
            extra["exceptions"] = ",".join(names)
        if alarm_notes:
            extra["alarm_status"] = ",".join(alarm_notes)
        now = self.ctx.now()
        events.append(
            Reading(
                device=identity,
                device_class=DeviceClass.PULSE_OXIMETER,
                measurements=tuple(measurements),
                observed_at=parsed.device_time or now,
                received_at=now,
                device_time=parsed.device_time,
                flags=tuple(flags),
                extra=extra,
                raw=raw,
            )
        )
        return events


# ---------------------------------------------------------------------------------------------- simulator


class Rad8Simulator(Simulator):
    """A Rad-8 in ASCII 1: one line every ``interval`` seconds with drifting plausible values, and now
    and then a pulse-search or sensor-off episode (dashes, EXC bits). Deterministic with ``seed``."""

    @validate_call
    def __init__(
        self,
        interval: float = 1.0,
        serial_number: str = "0000123456",
        seed: int | None = None,
        episode_every: int = 45,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.interval = interval
        self.serial_number = serial_number
        self.episode_every = episode_every
        self._rng = random.Random(seed)
        self._clock = clock or datetime.now  # device clock: naive local time, like the real unit
        self._spo2 = 97.0
        self._bpm = 72.0
        self._pi = 4.0
        self._episode: tuple[int, int] | None = None  # (EXC bits, lines left)
        self.lines_sent = 0

    def next_line(self, at: datetime | None = None) -> bytes:
        """The next line the device sends (advances the simulated physiology)."""
        rng = self._rng
        at = at or self._clock()
        if self._episode is None and self.episode_every > 0 and rng.random() < 1.0 / self.episode_every:
            self._episode = (rng.choice((EXC_PULSE_SEARCH, EXC_SENSOR_OFF)), rng.randint(3, 8))
        exc = EXC_SET_MODE
        if self._episode is not None:
            bits, left = self._episode
            exc |= bits
            self._episode = (bits, left - 1) if left > 1 else None
        self._spo2 = min(100.0, max(90.0, self._spo2 + rng.gauss(0, 0.4) + (97.0 - self._spo2) * 0.1))
        self._bpm = min(120.0, max(50.0, self._bpm + rng.gauss(0, 1.0) + (72.0 - self._bpm) * 0.05))
        self._pi = min(12.0, max(0.5, self._pi + rng.gauss(0, 0.15) + (4.0 - self._pi) * 0.05))
        low_perf = self._pi < 1.0
        if low_perf:
            exc |= EXC_LOW_PERFUSION
        if exc & (EXC_PULSE_SEARCH | EXC_SENSOR_OFF):
            spo2, bpm, pi, alarm = "---", "---", "--.--", "0000"
        else:
            spo2, bpm, pi = f"{round(self._spo2):03d}", f"{round(self._bpm):03d}", f"{self._pi:05.2f}"
            alarm = "0001" if round(self._spo2) < 92 else "0000"
        stamp = at.strftime("%m/%d/%y %H:%M:%S")
        line = (
            f"{stamp} SN={self.serial_number} SPO2={spo2}% BPM={bpm} PI={pi}% SPCO=--.-% SPMET=--.-% "
            f"DESAT=-- PIDELTA=+-- ALARM={alarm} EXC={exc:06X}\r\n"
        )
        return line.encode("ascii")

    async def run(self, port: SimPort) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await port.write(self.next_line())
            self.lines_sent += 1
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))


# ---------------------------------------------------------------------------------------------- driver


@register_driver
class MasimoAsciiDriver(
    SerialDriver[MasimoOptions], name="masimo-ascii", device_class=DeviceClass.PULSE_OXIMETER
):
    """Masimo Rad-8/Rad-5/-57/-87/Radical-7/Rad-97 pulse oximeter, serial ASCII 1/ASCII 2/trend."""

    continuous = True
    silent_after_seconds = 30.0  # one line per second (ASCII 1 and 2), also with the sensor off
    simulator_class = Rad8Simulator

    def stream_decoder(self, ctx: DecodeContext) -> MasimoDecoder:
        return MasimoDecoder(ctx, self.options.format)
