"""Bluetooth date/time characteristics: Date Time 0x2A08, Day Date Time 0x2A0A, Current Time 0x2A2B.

The device's clock is its *local* time with no zone. Any field may be 0 (= unknown); a
:class:`DateTimeValue` keeps the raw fields and says whether they form a complete, plausible instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo

from vitals_agent.errors import DecodeError, TruncatedError

__all__ = [
    "CurrentTime",
    "DateTimeValue",
    "decode_current_time",
    "decode_date_time",
    "encode_current_time",
    "encode_date_time",
]

# A clock before this year is treated as never set (A&D cuffs start in 2017, others in 2000 or 1970).
PLAUSIBLE_FROM_YEAR = 2000


@dataclass(frozen=True, slots=True)
class DateTimeValue:
    """The seven Date Time fields as sent (0 = unknown for year, month and day)."""

    year: int
    month: int
    day: int
    hours: int
    minutes: int
    seconds: int

    @property
    def complete(self) -> bool:
        return self.year != 0 and self.month != 0 and self.day != 0

    def to_datetime(self, tz: tzinfo) -> datetime | None:
        """The instant in the device's zone ``tz``; None if a field is unknown or impossible."""
        if not self.complete:
            return None
        try:
            return datetime(
                self.year, self.month, self.day, self.hours, self.minutes, self.seconds, tzinfo=tz
            )
        except ValueError:
            return None

    def plausible(self, tz: tzinfo) -> datetime | None:
        """Like :meth:`to_datetime`, and None for clocks that were evidently never set."""
        value = self.to_datetime(tz)
        if value is None or value.year < PLAUSIBLE_FROM_YEAR:
            return None
        return value

    def key(self) -> str:
        date = f"{self.year:04d}-{self.month:02d}-{self.day:02d}"
        return f"{date}T{self.hours:02d}:{self.minutes:02d}:{self.seconds:02d}"

    @classmethod
    def from_datetime(cls, value: datetime) -> DateTimeValue:
        return cls(value.year, value.month, value.day, value.hour, value.minute, value.second)


def decode_date_time(data: bytes, offset: int = 0) -> DateTimeValue:
    """Decode 7 bytes of Date Time at ``offset``. Out-of-range fields are kept (lenient when receiving);
    :meth:`DateTimeValue.to_datetime` then returns None, so a reading keeps its values but not its time."""
    if len(data) < offset + 7:
        raise TruncatedError(f"Date Time needs 7 bytes, got {max(0, len(data) - offset)}", bytes(data))
    year = int.from_bytes(data[offset : offset + 2], "little")
    month, day, hours, minutes, seconds = data[offset + 2 : offset + 7]
    return DateTimeValue(year, month, day, hours, minutes, seconds)


def encode_date_time(value: DateTimeValue | datetime) -> bytes:
    if isinstance(value, datetime):
        value = DateTimeValue.from_datetime(value)
    return value.year.to_bytes(2, "little") + bytes(
        [value.month, value.day, value.hours, value.minutes, value.seconds]
    )


@dataclass(frozen=True, slots=True)
class CurrentTime:
    """Current Time 0x2A2B: Date Time, day of week (0 unknown, 1 Monday … 7 Sunday), fractions256 and
    the adjust-reason bits."""

    date_time: DateTimeValue
    day_of_week: int
    fractions256: int
    adjust_reason: int


def decode_current_time(data: bytes) -> CurrentTime:
    if len(data) < 10:
        raise TruncatedError(f"Current Time needs 10 bytes, got {len(data)}", bytes(data))
    date_time = decode_date_time(data)
    if data[7] > 7:
        raise DecodeError(f"day of week {data[7]} out of range", bytes(data))
    return CurrentTime(date_time, data[7], data[8], data[9])


def encode_current_time(value: datetime, adjust_reason: int = 0x01) -> bytes:
    """Current Time for ``value`` (naive or aware: its wall-clock fields are used); reason = manual update."""
    return encode_date_time(value) + bytes(
        [value.isoweekday(), int(value.microsecond * 256 / 1_000_000), adjust_reason]
    )
