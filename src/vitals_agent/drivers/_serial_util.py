"""Small helpers shared by the serial drivers (Nonin, SunTech, scales, Tanita). Not a driver module.

Everything here is pure except :class:`TimedSimulator`, which plays a device on a
:class:`~vitals_agent.drivers.base.SimPort` and therefore waits.
"""

from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation

from pydantic import Field

from vitals_agent.drivers.base import (
    DecodeContext,
    DecodeFailure,
    DecoderOutput,
    SerialOptions,
    SimPort,
    Simulator,
    StreamDecoder,
)
from vitals_agent.errors import DecodeError, TruncatedError
from vitals_agent.models import (
    DeviceClass,
    DeviceIdentity,
    Flag,
    Measurement,
    PatientInfo,
    Reading,
    ReadingFlag,
)

LB_IN_KG = Decimal("0.45359237")


def hexs(data: bytes | bytearray, limit: int = 48) -> str:
    """``data`` as spaced upper-case hex for error messages (shortened after ``limit`` bytes)."""
    text = bytes(data[:limit]).hex(" ").upper()
    return text + (" ..." if len(data) > limit else "")


def failure(kind: type[DecodeError], message: str, data: bytes) -> DecodeFailure:
    """A stream failure about ``data``, its message ending in the bytes as hex: ``message (1B 45 ...)``."""
    return DecodeFailure(kind(f"{message} ({hexs(data)})", data))


def take(buf: bytearray, n: int) -> bytes:
    """The first ``n`` bytes of ``buf``, removed from it (a frame, or bytes cut off as a failure)."""
    part = bytes(buf[:n])
    del buf[:n]
    return part


def shed(junk: bytearray, buf: bytearray, keep: int) -> bytes:
    """Over the buffer cap: ``junk`` (bytes known not to start a frame, which precede ``buf``) and ``buf``
    give up all but their last ``keep`` bytes (a frame may start there), which ``buf`` keeps; returns the
    bytes given up, for one failure."""
    whole = junk + buf
    junk.clear()
    buf[:] = whole[-keep:]
    return bytes(whole[:-keep])


def value(metric: str, number: Decimal | int | str, unit: str, flags: Iterable[Flag] = ()) -> Measurement:
    return Measurement(metric=metric, value=Decimal(number), unit=unit, flags=tuple(flags))


def absent(metric: str, unit: str, reason: str) -> Measurement:
    """A "no value" measurement: the device sent a missing-value code, an error, or a sensor alarm."""
    return Measurement(metric=metric, value=None, unit=unit, absent_reason=reason)


def parse_decimal(text: str, what: str) -> Decimal:
    """A device's decimal text (``+0070.50`` -> ``70.50``, precision kept); DecodeError if it is not one."""
    stripped = text.strip()
    if not stripped or not all(c in "+-.0123456789" for c in stripped):
        raise DecodeError(f"{what}: {text!r} is not a number")
    try:
        number = Decimal(stripped)
    except InvalidOperation:
        raise DecodeError(f"{what}: {text!r} is not a number") from None
    if not number.is_finite():
        raise DecodeError(f"{what}: {text!r} is not a number")
    # Decimal keeps leading zeros out and the decimals in: Decimal("+0070.50") == 70.50 with exponent -2.
    return number


_FEET_INCHES = re.compile(r"^(\d+)'\s*(\d+(?:\.\d+)?)\"?$")


def parse_feet_inches(text: str) -> Decimal | None:
    """A height as feet'inches (``5'03.0"``) in inches (``63.0``); None if ``text`` is not in that form."""
    match = _FEET_INCHES.match(text)
    if match is None:
        return None
    return int(match.group(1)) * 12 + Decimal(match.group(2))


def make_reading(
    ctx: DecodeContext,
    device_class: DeviceClass,
    measurements: Sequence[Measurement],
    raw: bytes,
    *,
    device_time: datetime | None = None,
    flags: Iterable[ReadingFlag] = (),
    extra: dict[str, str] | None = None,
    identity: DeviceIdentity | None = None,
    source_patient: PatientInfo | None = None,
    manufacturer: str | None = None,
) -> Reading:
    """A live reading: observed and received now (host clock); the normaliser applies the clock policy."""
    now = ctx.now()
    device = ctx.device if identity is None else ctx.device.merged(identity)
    if manufacturer is not None and device.manufacturer is None:
        device = device.model_copy(update={"manufacturer": manufacturer})
    return Reading(
        device=device,
        device_class=device_class,
        measurements=tuple(measurements),
        observed_at=now,
        received_at=now,
        device_time=device_time,
        flags=tuple(dict.fromkeys(flags)),
        extra=dict(extra or {}),
        source_patient=source_patient,
        raw=bytes(raw),
    )


class FlushingDecoder(StreamDecoder):
    """A stream decoder that can say, at the end of an offline decode, what was left half-done."""

    @abc.abstractmethod
    def pending(self) -> bytes:
        """Bytes held in the buffer waiting for the rest of a frame."""

    def flush(self) -> list[DecoderOutput]:
        """End of input (``vitals-agent decode``): a half frame is a truncated record, never a reading."""
        rest = self.pending()
        self.reset()
        if not rest:
            return []
        return [failure(TruncatedError, "truncated record: input ended inside a frame", rest)]


class TimedSimulator(Simulator):
    """A device that sends something every ``interval`` seconds and answers what the host writes.

    Subclasses implement :meth:`on_request` (host bytes in, reply bytes out) and :meth:`periodic` (bytes to
    send each tick; may be empty for request/response devices).
    """

    def __init__(self, interval: float = 1.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.received = bytearray()  # everything the host wrote (tests inspect it)

    @abc.abstractmethod
    def on_request(self, data: bytes) -> bytes:
        """Bytes the host wrote (possibly a partial command); return the device's reply (or b"")."""

    def periodic(self) -> bytes:
        return b""

    async def run(self, port: SimPort) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            now = loop.time()
            if now >= next_tick:
                chunk = self.periodic()
                if chunk:
                    await port.write(chunk)
                next_tick = now + self.interval
            data = await port.read(max(0.0, min(self.interval, next_tick - loop.time())))
            if data:
                self.received.extend(data)
                reply = self.on_request(data)
                if reply:
                    await port.write(reply)


# ---------------------------------------------------------------------------------------------- weighing

UNIT_TO_KG: dict[str, Decimal] = {"kg": Decimal(1), "g": Decimal("0.001"), "[lb_av]": LB_IN_KG}


class WeighingOptions(SerialOptions):
    """Keys of the scales that report once per weighing (:class:`WeighingTracker`)."""

    zero_band_kg: Decimal = Field(default=Decimal("0.1"), ge=0)  # at or below: platform unloaded
    min_change_kg: Decimal = Field(default=Decimal(0), ge=0)  # a stable value that moves more: a new weighing
    # how often to ask the scale for a record; None: the driver's default (scale-ascii: 2 s for the polled
    # dialects; health-o-meter: never, the scale sends when its print key is pressed)
    poll_seconds: float | None = Field(default=None, gt=0)


def to_kg(number: Decimal, unit: str) -> Decimal:
    return number * UNIT_TO_KG[unit]


def weighing_measurements(
    weight: Decimal, unit: str, height: Decimal | None, height_unit: str, bmi: Decimal | None
) -> list[Measurement]:
    """A scale's measurements: body weight, and body height and BMI when the scale sent them."""
    measurements = [value("body_weight", weight, unit)]
    if height is not None:
        measurements.append(value("body_height", height, height_unit))
    if bmi is not None:
        measurements.append(value("bmi", bmi, "kg/m2"))
    return measurements


class WeighingTracker:
    """Once per weighing: report a stable weight when the platform was unloaded (near zero) since the last
    report, or when the stable value changed; suppress the repeats a streaming or polled scale sends.

    Pure protocol state, kept across reconnects (a replugged cable with the same patient on the platform is
    not a new weighing).
    """

    def __init__(self, zero_band_kg: Decimal = Decimal("0.1"), min_change_kg: Decimal = Decimal(0)) -> None:
        self.zero_band_kg = zero_band_kg
        self.min_change_kg = min_change_kg
        self._armed = True
        self._last_kg: Decimal | None = None
        self._last_other: tuple[object, ...] = ()

    def observe(self, number: Decimal, unit: str, stable: bool, other: tuple[object, ...] = ()) -> bool:
        """True if this reading is a new weighing to report."""
        kg = to_kg(number, unit)
        if kg <= self.zero_band_kg:  # unloaded (negative net weights included)
            self._armed = True
            self._last_kg = None
            return False
        if not stable:
            return False
        changed = (
            self._last_kg is None or abs(kg - self._last_kg) > self.min_change_kg or other != self._last_other
        )
        if self._armed or changed:
            self._armed = False
            self._last_kg = kg
            self._last_other = other
            return True
        return False
