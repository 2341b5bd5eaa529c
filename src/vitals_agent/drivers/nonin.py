"""Nonin serial pulse oximeters (9560, OEM III, Xpod, WristOx, Avant): data formats DF8, DF2 and DF7.

Byte layouts: ``../shared/reference/devices.md`` §5.4. Link 9600 8N1, identical over a cable and over
Bluetooth SPP.

* ``nonin-df8``: 4-byte frames once per second, no checksum; sync = bit 7 set only in the first byte.
* ``nonin-df2`` (``format = "df2"`` or ``"df7"``): 5-byte frames with a checksum, 25 frames per packet
  (SYNC bit in frame 1); one reading per packet from the HR (frames 1/2) and SpO2 (frame 3) bytes; the
  display, extended and fast values are kept in ``Reading.extra``.

Missing values (HR 511, SpO2 127) and readings while the sensor alarm (SNSA) is set become "no value"
measurements with a reason, never numbers. With ``configure = true`` the agent selects the data format and
sets the device clock right after the port opens (Nonin answers ACK 0x06 or NAK 0x15).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import validate_call

from vitals_agent.drivers._serial_util import (
    FlushingDecoder,
    TimedSimulator,
    absent,
    failure,
    hexs,
    make_reading,
    shed,
    take,
    value,
)
from vitals_agent.drivers.base import (
    DecodeContext,
    DecodeFailure,
    DecoderOutput,
    SerialDriver,
    SerialOptions,
    register_driver,
)
from vitals_agent.errors import ChecksumError, DecodeError, TruncatedError
from vitals_agent.models import DeviceClass, DeviceIdentity, DeviceStatusEvent, Flag, Measurement, ReadingFlag

ACK = 0x06
NAK = 0x15
HR_MISSING = 511
SPO2_MISSING = 127
FORMAT_CODES: dict[str, int] = {"df2": 0x02, "df7": 0x07, "df8": 0x08, "df13": 0x0D}
PACKET_FRAMES = 25
SPO2_UNIT = "%"
HR_UNIT = "/min"


def select_format_command(fmt: str) -> bytes:
    """``02 70 02 02 ZZ 03``: select data format ZZ (stored in the device's NVRAM)."""
    return bytes([0x02, 0x70, 0x02, 0x02, FORMAT_CODES[fmt], 0x03])


def set_time_command(when: datetime) -> bytes:
    """``02 72 06 YY MM DD hh mm ss 03`` (binary, YY = year - 2000), the device's local time."""
    if not 2000 <= when.year <= 2127:
        raise ValueError(f"Nonin clocks hold years 2000..2127, not {when.year}")
    return bytes(
        [0x02, 0x72, 0x06, when.year - 2000, when.month, when.day, when.hour, when.minute, when.second, 0x03]
    )


GET_TIME_COMMAND = bytes([0x02, 0x72, 0x00, 0x03])


class NoninOptions(SerialOptions):
    configure: bool = False  # on connect: select this driver's data format and set the device clock


class NoninDF2Options(NoninOptions):
    format: Literal["df2", "df7"] = "df2"


def _oximeter_measurements(
    hr: int, spo2: int, sensor_alarm: bool, questionable: bool
) -> tuple[list[Measurement], list[ReadingFlag]]:
    flags = [Flag.QUESTIONABLE] if questionable else []
    if sensor_alarm:
        why = "sensor alarm (SNSA): sensor off the finger, disconnected or faulty"
        return [absent("spo2", SPO2_UNIT, why), absent("pulse_rate_oximeter", HR_UNIT, why)], [
            ReadingFlag.SENSOR_OFF
        ]
    out = [
        absent("spo2", SPO2_UNIT, f"device sent the missing-value code {SPO2_MISSING}")
        if spo2 == SPO2_MISSING
        else absent("spo2", SPO2_UNIT, f"device sent an impossible SpO2 {spo2}")
        if spo2 > 100
        else value("spo2", spo2, SPO2_UNIT, flags),
        absent("pulse_rate_oximeter", HR_UNIT, f"device sent the missing-value code {HR_MISSING}")
        if hr == HR_MISSING
        else value("pulse_rate_oximeter", hr, HR_UNIT, flags),
    ]
    return out, []


class _NoninDecoder(FlushingDecoder):
    """Common part: buffer, ACK/NAK handling for the configure commands, buffer cap."""

    frame_len: ClassVar[int]
    format_name: ClassVar[str]

    def __init__(self, ctx: DecodeContext, configure: bool = False) -> None:
        super().__init__(ctx)
        self.configure = configure
        self._buf = bytearray()
        self._awaiting: list[str] = []  # commands sent whose ACK/NAK has not arrived, oldest first
        self._scan_from = 0  # resync scan position in the buffer (0 = the head is not yet judged)
        # DF8 out of sync: the bytes already known to be outside a frame (they precede ``_buf``), kept only to
        # be reported as one failure, never scanned again (so the work per byte is bounded).
        self._junk = bytearray()

    def pending(self) -> bytes:
        return bytes(self._junk + self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._junk.clear()
        self._awaiting.clear()
        self._scan_from = 0

    def commands_on_connect(self) -> list[bytes]:
        if not self.configure:
            return []
        local = self.ctx.now().astimezone(self.ctx.tz)
        commands = [select_format_command(self.format_name)]
        self._awaiting = ["data-format select"]
        if 2000 <= local.year <= 2127:  # the device clock's range; a host clock outside it is not copied
            commands.append(set_time_command(local))
            self._awaiting.append("clock set")
        return commands

    def _ack(self, out: list[DecoderOutput]) -> bool:
        """Consume an ACK/NAK byte at the head of the buffer if one is expected."""
        if not self._awaiting or not self._buf or self._buf[0] not in (ACK, NAK):
            return False
        what = self._awaiting.pop(0)
        if self._buf[0] == ACK:
            note = f"Nonin acknowledged the {what}"
        else:
            note = f"Nonin refused the {what} (NAK)"
            if what == "data-format select":
                note += (
                    f": set {self.format_name.upper()} on the device"
                    " (it accepts the command only just after connecting)"
                )
        del self._buf[0]
        self._scan_from = 0
        out.append(DeviceStatusEvent(note=note))
        return True

    def _cap(self, out: list[DecoderOutput]) -> None:
        if len(self._junk) + len(self._buf) > self.max_buffer:
            junk = shed(self._junk, self._buf, self.frame_len)
            self._scan_from = 0
            out.append(
                DecodeFailure(
                    DecodeError(f"{self.format_name.upper()}: no frame sync in {len(junk)} bytes", junk)
                )
            )


class DF8Decoder(_NoninDecoder):
    """DF8: ``B1 B2 B3 B4``; B1 has bit 7 set, the others do not. No checksum."""

    frame_len = 4
    format_name = "df8"

    def feed(self, data: bytes) -> list[DecoderOutput]:
        out: list[DecoderOutput] = []
        self._buf.extend(data)
        while self._buf:
            if not self._junk and self._ack(out):  # (out of sync, an ACK/NAK byte is garbage like the rest)
                continue
            buf = self._buf
            if self._junk or not buf[0] & 0x80:
                start = next((i for i, b in enumerate(buf) if b & 0x80), None)
                self._junk += buf if start is None else buf[:start]
                del buf[:start]
                if start is None:
                    break  # keep the garbage (outside the buffer) until we know where it ends
                junk = bytes(self._junk)
                self._junk.clear()
                out.append(failure(DecodeError, f"DF8: {len(junk)} bytes outside frame sync", junk))
                continue
            nxt = next((i for i in range(1, min(len(buf), 4)) if buf[i] & 0x80), None)
            if nxt is not None:
                part = take(buf, nxt)
                out.append(failure(TruncatedError, f"truncated DF8 frame: {len(part)} of 4 bytes", part))
                continue
            if len(buf) < 4:
                break
            out.append(self._decode(take(buf, 4)))
        self._cap(out)
        return out

    def _decode(self, frame: bytes) -> DecoderOutput:
        b1, b2, b3, b4 = frame
        hr = ((b1 & 0x03) << 7) | b2
        spo2 = b3 & 0x7F
        names = [n for n, bit, index in _DF8_STATUS if frame[index] & bit]
        questionable = bool(b1 & (0x20 | 0x10 | 0x04))  # OOT, LPRF, ARTF
        measurements, flags = _oximeter_measurements(hr, spo2, bool(b4 & 0x08), questionable)
        extra = {"status": " ".join(names)} if names else {}
        if b4 & 0x01:
            extra["low_battery"] = "true"
        return make_reading(
            self.ctx,
            DeviceClass.PULSE_OXIMETER,
            measurements,
            frame,
            flags=flags,
            extra=extra,
            manufacturer="Nonin",
        )


_DF8_STATUS: tuple[tuple[str, int, int], ...] = (
    ("OOT", 0x20, 0),
    ("LPRF", 0x10, 0),
    ("MPRF", 0x08, 0),
    ("ARTF", 0x04, 0),
    ("SPA", 0x20, 3),
    ("SNSA", 0x08, 3),
    ("LOWBAT", 0x01, 3),
)

_DF2_STATUS: tuple[tuple[str, int], ...] = (
    ("SNSD", 0x40),
    ("ARTF", 0x20),
    ("OOT", 0x10),
    ("SNSA", 0x08),
    ("RPRF", 0x04),
    ("GPRF", 0x02),
)


@dataclass(frozen=True)
class _Frame:
    status: int
    float_byte: int
    raw: bytes


class DF2Decoder(_NoninDecoder):
    """DF2 ``01 STATUS PLETH FLOAT CHK`` / DF7 ``STATUS PLETH_MSB PLETH_LSB FLOAT CHK``; CHK = sum of the
    four preceding bytes mod 256. 25 frames per packet, SYNC (status bit 0) in frame 1."""

    frame_len = 5

    def __init__(self, ctx: DecodeContext, configure: bool = False, fmt: str = "df2") -> None:
        super().__init__(ctx, configure)
        if fmt not in ("df2", "df7"):
            raise ValueError(f"unknown Nonin format {fmt!r}")
        self.fmt = fmt
        self._packet: list[_Frame] | None = None
        self._quiet = True  # drop frames silently until the next SYNC (start of stream, after a failure)

    @property
    def format_name(self) -> str:  # type: ignore[override]
        return self.fmt

    def reset(self) -> None:
        super().reset()
        self._packet = None
        self._quiet = True

    def _looks_like_start(self, i: int) -> bool:
        buf = self._buf
        if self.fmt == "df2":
            return buf[i] == 0x01 and i + 1 < len(buf) and bool(buf[i + 1] & 0x80)
        return bool(buf[i] & 0x80)

    def _checksum_ok(self, i: int) -> bool:
        return sum(self._buf[i : i + 4]) & 0xFF == self._buf[i + 4]

    def _valid_at(self, i: int) -> bool | None:
        """True/False if a valid frame starts at ``i``; None if more bytes are needed to know."""
        if i + 1 >= len(self._buf) and self.fmt == "df2" and self._buf[i] == 0x01:
            return None
        if not self._looks_like_start(i):
            return False
        if i + self.frame_len > len(self._buf):
            return None
        return self._checksum_ok(i)

    def feed(self, data: bytes) -> list[DecoderOutput]:
        out: list[DecoderOutput] = []
        self._buf.extend(data)
        name = self.fmt.upper()
        while self._buf:
            if self._ack(out):
                continue
            buf = self._buf
            # _scan_from > 0: the head is already known not to start a frame; continue the scan.
            head = self._valid_at(0) if self._scan_from == 0 else False
            if head is None:
                break
            if head:
                out.extend(self._frame(take(buf, 5)))
                continue
            if self._looks_like_start(0) and len(buf) >= 5:
                # A frame start whose checksum fails: corrupted, or cut short by the next frame.
                later = [self._valid_at(j) for j in range(1, 5)]
                if any(v is None for v in later):
                    break
                cut = next((j for j, ok in enumerate(later, start=1) if ok), None)
                if cut is not None:
                    part = take(buf, cut)
                    err: DecodeError = TruncatedError(
                        f"truncated {name} frame: {len(part)} of 5 bytes ({hexs(part)})", part
                    )
                else:
                    frame = take(buf, 5)
                    err = ChecksumError(
                        f"{name} checksum mismatch: got 0x{frame[4]:02X},"
                        f" computed 0x{sum(frame[:4]) & 0xFF:02X} ({hexs(frame)})",
                        frame,
                    )
                out.append(self._broken(err))
                continue
            # Not in sync: skip to the next valid frame start (resuming the scan where the last feed stopped).
            start: int | None = None
            j = max(1, self._scan_from)
            while j < len(buf):
                ok = self._valid_at(j)
                if ok is None:
                    break
                if ok:
                    start = j
                    break
                j += 1
            self._scan_from = j
            if start is None:
                break  # garbage so far; wait for a frame (the cap below bounds the buffer)
            self._scan_from = 0
            junk = take(buf, start)
            out.append(
                self._broken(
                    DecodeError(f"{name}: {len(junk)} bytes outside frame sync ({hexs(junk)})", junk)
                )
            )
        self._cap(out)
        return out

    def _broken(self, error: DecodeError) -> DecodeFailure:
        """A failure inside the stream: the packet in progress is lost (never half a packet as a reading)."""
        self._packet = None
        self._quiet = True
        return DecodeFailure(error)

    def _frame(self, frame: bytes) -> list[DecoderOutput]:
        status = frame[1] if self.fmt == "df2" else frame[0]
        f = _Frame(status=status, float_byte=frame[3], raw=frame)
        if status & 0x01:  # SYNC: frame 1 of a packet
            out: list[DecoderOutput] = []
            if self._packet:
                part = b"".join(fr.raw for fr in self._packet)
                out.append(
                    DecodeFailure(
                        TruncatedError(
                            f"truncated {self.fmt.upper()} packet:"
                            f" {len(self._packet)} of {PACKET_FRAMES} frames",
                            part,
                        )
                    )
                )
            self._packet = [f]
            self._quiet = False
            return out
        if self._packet is None:
            if self._quiet:
                return []
            self._quiet = True
            return [
                DecodeFailure(
                    DecodeError(
                        f"{self.fmt.upper()} packet longer than {PACKET_FRAMES} frames (SYNC missing)", frame
                    )
                )
            ]
        self._packet.append(f)
        if len(self._packet) < PACKET_FRAMES:
            return []
        packet, self._packet = self._packet, None
        return [self._reading(packet)]

    def _reading(self, packet: Sequence[_Frame]) -> DecoderOutput:
        fl = [0] + [fr.float_byte for fr in packet]  # 1-based like the specification's table

        def word(msb: int, lsb: int) -> int:
            return ((fl[msb] & 0x03) << 7) | (fl[lsb] & 0x7F)

        status = 0
        low_perfusion = False
        for fr in packet:
            status |= fr.status
            if fr.status & 0x04 and not fr.status & 0x02:  # red perfusion only: low signal quality
                low_perfusion = True
        hr, spo2 = word(1, 2), fl[3] & 0x7F
        sensor_alarm = bool(status & (0x08 | 0x40))  # SNSA, SNSD (OEM III)
        questionable = bool(status & (0x20 | 0x10)) or low_perfusion  # ARTF, OOT, red perfusion
        measurements, flags = _oximeter_measurements(hr, spo2, sensor_alarm, questionable)

        def shown(number: int, missing: int) -> str:
            return "missing" if number == missing else str(number)

        extra = {
            "hr_display": shown(word(20, 21), HR_MISSING),
            "hr_extended": shown(word(14, 15), HR_MISSING),
            "spo2_display": shown(fl[9] & 0x7F, SPO2_MISSING),
            "spo2_extended": shown(fl[16] & 0x7F, SPO2_MISSING),
            "spo2_fast": shown(fl[10] & 0x7F, SPO2_MISSING),
            "spo2_beat_to_beat": shown(fl[11] & 0x7F, SPO2_MISSING),
            "timer": str((fl[6] << 8) | fl[7]),
            "stat2": f"0x{fl[8]:02X}",
        }
        names = [n for n, bit in _DF2_STATUS if status & bit]
        if names:
            extra["status"] = " ".join(names)
        identity = DeviceIdentity(id=self.ctx.device.id, manufacturer="Nonin", firmware=str(fl[4]))
        raw = b"".join(fr.raw for fr in packet)
        return make_reading(
            self.ctx,
            DeviceClass.PULSE_OXIMETER,
            measurements,
            raw,
            flags=flags,
            extra=extra,
            identity=identity,
        )


# ---------------------------------------------------------------------------------------------- encoders
# Used by the simulator and the tests: strict when sending.


def encode_df8(hr: int | None, spo2: int | None, *, snsa: bool = False, artf: bool = False) -> bytes:
    h = HR_MISSING if hr is None else hr
    s = SPO2_MISSING if spo2 is None else spo2
    b1 = 0x80 | (0x04 if artf else 0) | ((h >> 7) & 0x03)
    return bytes([b1, h & 0x7F, s & 0x7F, 0x08 if snsa else 0x00])


def encode_df2_packet(
    hr: int | None,
    spo2: int | None,
    *,
    fmt: str = "df2",
    status: int = 0x02,
    firmware: int = 0x2A,
    timer: int = 0,
    pleth: Sequence[int] | None = None,
) -> bytes:
    """One 25-frame DF2/DF7 packet with every checksum computed (``status`` without bit 7 / SYNC)."""
    h = HR_MISSING if hr is None else hr
    s = SPO2_MISSING if spo2 is None else spo2
    floats = [0] * (PACKET_FRAMES + 1)
    floats[1], floats[2], floats[3], floats[4] = (h >> 7) & 0x03, h & 0x7F, s, firmware
    floats[6], floats[7] = (timer >> 8) & 0xFF, timer & 0xFF
    floats[9] = floats[10] = floats[11] = floats[16] = floats[17] = s
    floats[14], floats[15] = floats[20], floats[21] = floats[22], floats[23] = (h >> 7) & 0x03, h & 0x7F
    out = bytearray()
    for n in range(1, PACKET_FRAMES + 1):
        st = 0x80 | (status & 0x7E) | (0x01 if n == 1 else 0)
        p = pleth[n - 1] if pleth is not None else (n * 37) % 256
        body = (
            bytes([0x01, st, p & 0xFF, floats[n]])
            if fmt == "df2"
            else bytes([st, (p >> 8) & 0xFF, p & 0xFF, floats[n]])
        )
        out += body + bytes([sum(body) & 0xFF])
    return bytes(out)


# ---------------------------------------------------------------------------------------------- simulator


class NoninSimulator(TimedSimulator):
    """A Nonin oximeter: streams DF8 frames (1/s) or DF2/DF7 packets (3/s), answers the format-select,
    set-time and get-time commands with ACK/NAK as the 9560 does, and switches format on request."""

    @validate_call
    def __init__(
        self,
        fmt: str = "df8",
        hr: int | None = 72,
        spo2: int | None = 97,
        interval: float | None = None,
        accept_commands: bool = True,
    ) -> None:
        if fmt not in ("df2", "df7", "df8"):
            raise ValueError(f"unknown Nonin format {fmt!r}")
        super().__init__(interval if interval is not None else (1.0 if fmt == "df8" else 1 / 3))
        self.fmt = fmt
        self.fixed_interval = interval is not None
        self.hr = hr
        self.spo2 = spo2
        self.accept_commands = accept_commands
        self.clock: datetime | None = None
        self.timer = 0
        self._cmd = bytearray()

    def periodic(self) -> bytes:
        self.timer = (self.timer + 1) & 0xFFFF
        if self.fmt == "df8":
            return encode_df8(self.hr, self.spo2)
        return encode_df2_packet(self.hr, self.spo2, fmt=self.fmt, timer=self.timer)

    def on_request(self, data: bytes) -> bytes:
        self._cmd.extend(data)
        reply = bytearray()
        while self._cmd:
            if self._cmd[0] != 0x02:
                del self._cmd[0]
                continue
            if len(self._cmd) < 3:
                break
            size = {0x70: 6, 0x72: 10 if self._cmd[2] == 0x06 else 4}.get(self._cmd[1])
            if size is None:
                del self._cmd[0]
                reply.append(NAK)
                continue
            if len(self._cmd) < size:
                break
            cmd = bytes(self._cmd[:size])
            del self._cmd[:size]
            reply += self._answer(cmd)
        return bytes(reply)

    def _answer(self, cmd: bytes) -> bytes:
        if cmd[-1] != 0x03 or not self.accept_commands:
            return bytes([NAK])
        if cmd[1] == 0x70:
            codes = {v: k for k, v in FORMAT_CODES.items()}
            fmt = codes.get(cmd[4])
            if cmd[2:4] != b"\x02\x02" or fmt not in ("df2", "df7", "df8"):
                return bytes([NAK])
            self.fmt = fmt
            if not self.fixed_interval:
                self.interval = 1.0 if fmt == "df8" else 1 / 3
            return bytes([ACK])
        if cmd[2] == 0x06:
            yy, mo, dd, hh, mi, ss = cmd[3:9]
            try:
                self.clock = datetime(2000 + yy, mo, dd, hh, mi, ss)
            except ValueError:
                return bytes([NAK])
            return bytes([ACK])
        c = self.clock or datetime(2000, 1, 1)
        return bytes([0x02, 0xF2, 0x06, c.year - 2000, c.month, c.day, c.hour, c.minute, c.second, 0x03])


# ---------------------------------------------------------------------------------------------- drivers


_NO = TypeVar("_NO", bound=NoninOptions, covariant=True)


class _NoninDriver(SerialDriver[_NO]):
    device_class = DeviceClass.PULSE_OXIMETER
    continuous = True
    silent_after_seconds = 30.0  # DF8 one frame a second, DF2 75 frames a second, also with the sensor off
    simulator_class = NoninSimulator


@register_driver
class NoninDF8Driver(_NoninDriver[NoninOptions], name="nonin-df8"):
    """Nonin serial pulse oximeter, data format 8 (4-byte frame per second; 9560, OEM III, Xpod)."""

    def stream_decoder(self, ctx: DecodeContext) -> DF8Decoder:
        return DF8Decoder(ctx, configure=self.options.configure)

    def simulator_settings(self) -> dict[str, Any]:
        return {"fmt": "df8"}


@register_driver
class NoninDF2Driver(_NoninDriver[NoninDF2Options], name="nonin-df2"):
    """Nonin serial pulse oximeter, data format 2 or 7 (25-frame packets with checksums, 3/s)."""

    def stream_decoder(self, ctx: DecodeContext) -> DF2Decoder:
        return DF2Decoder(ctx, configure=self.options.configure, fmt=self.options.format)

    def simulator_settings(self) -> dict[str, Any]:
        return {"fmt": self.options.format}
