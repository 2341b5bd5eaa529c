"""SunTech Advantage-type OEM NIBP module (serial, 9600 8N1).

Byte layouts: ``../shared/reference/devices.md`` §2.5 ([X]: two public implementations agree; obtain
SunTech's interface specification before production use).

* Host -> module frames start with ``:`` (0x3A); module -> host frames are ``> LEN DATA... CHK`` where LEN
  is the length of the whole frame and CHK makes the sum of every frame byte 0 (mod 256).
* ``> 04 4B CHK`` ("K") signals that a measurement finished: the decoder then asks for the result
  (``3A 79 03 00 4A``) and the module answers with the 24-byte BP-data frame: systolic u16 LE at frame
  offset 2, diastolic at 4, beats counted at 6, BP status at 7, 8 test-code bytes at 8-15, heart rate u8 at
  16, MAP u16 LE at 18, error code at 20 (offsets from the ``>`` byte).
* ``> 05 LL HH CHK`` is the cuff pressure during a measurement (progress only; not reported).

A non-zero error code gives "no value" measurements with the reason, never numbers.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import validate_call

from vitals_agent.drivers._serial_util import (
    FlushingDecoder,
    TimedSimulator,
    absent,
    failure,
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
from vitals_agent.errors import ChecksumError, DecodeError, TruncatedError, UnsupportedError
from vitals_agent.models import DeviceClass, DeviceStatusEvent, Measurement

START = 0x3E  # ">"
MIN_LEN = 4
MAX_LEN = 0x43
BP_DATA_LEN = 0x18
MMHG = "mm[Hg]"

START_MEASUREMENT = bytes([0x3A, 0x20, 0xA6])
GET_BP_DATA = bytes([0x3A, 0x79, 0x03, 0x00, 0x4A])
GET_CUFF_PRESSURE = bytes([0x3A, 0x79, 0x05, 0x00, 0x48])
PNEUMATICS_CLOSED = bytes([0x3A, 0x0C, 0x00, 0x01, 0x01, 0xB8])


def with_checksum(body: bytes) -> bytes:
    """``body`` plus the byte that makes the sum of the whole frame 0 mod 256."""
    return body + bytes([(-sum(body)) & 0xFF])


def encode_response(data: bytes) -> bytes:
    """A module -> host frame ``> LEN data CHK``."""
    return with_checksum(bytes([START, len(data) + 3]) + data)


def encode_bp_data(
    systolic: int,
    diastolic: int,
    mean: int,
    heart_rate: int,
    *,
    error: int = 0,
    status: int = 0x01,
    beats: int = 30,
) -> bytes:
    data = (
        systolic.to_bytes(2, "little")
        + diastolic.to_bytes(2, "little")
        + bytes([beats, status])
        + bytes(8)
        + bytes([heart_rate, 0])
        + mean.to_bytes(2, "little")
        + bytes([error, 0, 0])
    )
    return encode_response(data)


COMPLETE_FRAME = encode_response(b"K")


class SunTechOptions(SerialOptions):
    pass


class SunTechDecoder(FlushingDecoder):
    """Module -> host frames. Asks for the result (via :meth:`send`) when a measurement completes, asks
    again (up to ``RESULT_RETRIES`` times, from :meth:`poll`) if the result does not come, and drops a
    repeated copy of the same result (a late answer to a retry is not a second measurement)."""

    RESULT_RETRIES: ClassVar[int] = 2
    poll_interval = 2.0

    def __init__(self, ctx: DecodeContext) -> None:
        super().__init__(ctx)
        self._buf = bytearray()
        # Out of sync: the bytes already known not to start a frame (they precede ``_buf``); kept only to be
        # reported as one failure, never scanned again (so the work per byte is bounded).
        self._junk = bytearray()
        self._result_pending = False  # "K" seen, BP data not yet received
        self._polls_waited = 0
        self._retries_left = 0
        self._last_result: bytes | None = None  # BP data frame since the last "K"

    def pending(self) -> bytes:
        return bytes(self._junk + self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._junk.clear()

    def poll(self) -> None:
        """Every ``poll_interval`` s: if a finished measurement's result did not arrive, ask again."""
        if not self._result_pending:
            return
        self._polls_waited += 1
        if self._polls_waited >= 2 and self._retries_left > 0:
            self._retries_left -= 1
            self._polls_waited = 0
            self.send(GET_BP_DATA)

    def _frame_at(self, i: int) -> bool | None:
        """True/False: a valid frame starts at ``i``; None: more bytes are needed to know."""
        buf = self._buf
        if buf[i] != START:
            return False
        if i + 1 >= len(buf):
            return None
        n = buf[i + 1]
        if not MIN_LEN <= n <= MAX_LEN:
            return False
        if i + n > len(buf):
            return None
        return sum(buf[i : i + n]) & 0xFF == 0

    def _skip_garbage(self, i: int) -> bool:
        """Move ``_buf[:j]`` to ``_junk``, ``j`` the first index from ``i`` on that may start a frame. True if
        a valid frame starts at ``j``; False if the buffer ended, or more bytes are needed to know."""
        buf = self._buf
        j = i
        ok: bool | None = False
        while j < len(buf):
            ok = self._frame_at(j)
            if ok is not False:
                break
            j += 1
        self._junk += buf[:j]
        del buf[:j]
        return bool(ok)

    def _garbage(self) -> DecodeFailure:
        junk = bytes(self._junk)
        self._junk.clear()
        return failure(DecodeError, f"SunTech: {len(junk)} bytes outside a frame", junk)

    def feed(self, data: bytes) -> list[DecoderOutput]:
        out: list[DecoderOutput] = []
        buf = self._buf
        buf.extend(data)
        while buf:
            if self._junk:  # out of sync (below): resume the scan at the head, never rescan the junk
                if not self._skip_garbage(0):
                    break
                out.append(self._garbage())
                continue
            head = self._frame_at(0)
            if head is None:
                # Waiting for the rest of a frame; but if a complete frame already starts inside it, this one
                # was cut short (unplug, lost bytes): do not hold the next frame hostage.
                cut = next((j for j in range(1, len(buf)) if buf[j] == START and self._frame_at(j)), None)
                if cut is None:
                    break
                part = take(buf, cut)
                out.append(failure(TruncatedError, f"truncated SunTech frame: {len(part)} bytes", part))
                continue
            if head:
                out.extend(self._frame(take(buf, buf[1])))
                continue
            if buf[0] == START and len(buf) >= 2 and MIN_LEN <= buf[1] <= MAX_LEN:
                n = buf[1]
                # A complete frame whose checksum fails: corrupted, or cut short by the next frame.
                later = [(j, self._frame_at(j)) for j in range(1, n) if buf[j] == START]
                if any(ok is None for _, ok in later):
                    break
                cut = next((j for j, ok in later if ok), None)
                if cut is not None:
                    part = take(buf, cut)
                    out.append(
                        failure(TruncatedError, f"truncated SunTech frame: {len(part)} of {n} bytes", part)
                    )
                else:
                    frame = take(buf, n)
                    got, computed = frame[-1], (-sum(frame[:-1])) & 0xFF
                    message = f"SunTech checksum mismatch: got 0x{got:02X}, computed 0x{computed:02X}"
                    out.append(failure(ChecksumError, message, frame))
                continue
            # Out of sync (garbage, or a ">" with an impossible length byte): skip to the next valid frame.
            if not self._skip_garbage(1):
                break
            out.append(self._garbage())
        if len(self._junk) + len(buf) > self.max_buffer:
            junk = shed(self._junk, buf, MAX_LEN)
            out.append(DecodeFailure(DecodeError(f"SunTech: no frame in {len(junk)} bytes", junk)))
        return out

    def _frame(self, frame: bytes) -> list[DecoderOutput]:
        n = len(frame)
        if n == 4:
            if frame[2] == ord("K"):
                self.send(GET_BP_DATA)
                self._result_pending = True
                self._polls_waited = 0
                self._retries_left = self.RESULT_RETRIES
                self._last_result = None
                return [DeviceStatusEvent(note="SunTech measurement complete; result requested")]
            return []  # other one-byte acknowledgements carry nothing to report
        if n == 5:
            return []  # cuff pressure during a measurement: progress only
        if n == BP_DATA_LEN:
            if frame == self._last_result:
                return []  # the same result again (answer to a retry): not a new measurement
            self._last_result = frame
            self._result_pending = False
            return [self._bp_data(frame)]
        return [failure(UnsupportedError, f"SunTech: unknown {n}-byte response", frame)]

    def _bp_data(self, frame: bytes) -> DecoderOutput:
        sys = int.from_bytes(frame[2:4], "little")
        dia = int.from_bytes(frame[4:6], "little")
        beats, status = frame[6], frame[7]
        hr = frame[16]
        mean = int.from_bytes(frame[18:20], "little")
        error = frame[20]
        extra = {
            "bp_status": f"0x{status:02X}",
            "heart_beats": str(beats),
            "test_codes": frame[8:16].hex().upper(),
        }
        spec = (("bp_systolic", sys, MMHG), ("bp_diastolic", dia, MMHG), ("bp_mean", mean, MMHG))
        measurements: list[Measurement]
        if error:
            extra["error_code"] = str(error)
            why = f"measurement failed: SunTech error code {error}"
            measurements = [absent(metric, unit, why) for metric, _, unit in spec]
            measurements.append(absent("pulse_rate", "/min", why))
        else:
            measurements = [
                value(metric, number, unit)
                if number
                else absent(metric, unit, "device reported 0 (no value)")
                for metric, number, unit in spec
            ]
            measurements.append(
                value("pulse_rate", hr, "/min")
                if hr
                else absent("pulse_rate", "/min", "device reported 0 (no value)")
            )
        return make_reading(
            self.ctx,
            DeviceClass.BLOOD_PRESSURE,
            measurements,
            frame,
            extra=extra,
            manufacturer="SunTech Medical",
        )


class SunTechSimulator(TimedSimulator):
    """A SunTech-type module: on the start command it inflates (cuff-pressure frames each tick when asked),
    deflates, sends ``K`` and then answers "get BP data" with the configured result."""

    KNOWN = (START_MEASUREMENT, GET_BP_DATA, GET_CUFF_PRESSURE, PNEUMATICS_CLOSED)

    @validate_call
    def __init__(
        self,
        systolic: int = 120,
        diastolic: int = 80,
        mean: int = 93,
        heart_rate: int = 72,
        error: int = 0,
        interval: float = 0.5,
        steps: int = 4,
        auto_start: bool = False,
    ) -> None:
        super().__init__(interval)
        self.result = (systolic, diastolic, mean, heart_rate, error)
        self.steps = steps
        self.auto_start = auto_start
        self.measuring = 0  # ticks left in the current measurement
        self.cuff = 0
        self.measurements = 0
        self.idle = 0
        self._cmd = bytearray()

    def periodic(self) -> bytes:
        if self.measuring == 0:
            if not self.auto_start:
                return b""
            self.idle += 1
            if self.idle < 2 * self.steps and self.measurements:
                return b""
            self.idle = 0
            self.measuring = self.steps  # the host monitor's automatic cycle started a measurement
        self.measuring -= 1
        self.cuff = 160 * self.measuring // max(1, self.steps)
        out = encode_response(self.cuff.to_bytes(2, "little"))
        if self.measuring == 0:
            self.measurements += 1
            out += COMPLETE_FRAME
        return out

    def on_request(self, data: bytes) -> bytes:
        self._cmd.extend(data)
        reply = bytearray()
        while self._cmd:
            match = next((c for c in self.KNOWN if self._cmd.startswith(c)), None)
            if match is not None:
                del self._cmd[: len(match)]
                reply += self._answer(match)
                continue
            if any(c.startswith(bytes(self._cmd)) for c in self.KNOWN):
                break  # a command in progress
            del self._cmd[0]
        return bytes(reply)

    def _answer(self, cmd: bytes) -> bytes:
        if cmd == START_MEASUREMENT:
            if self.measuring == 0:
                self.measuring = self.steps
            return b""
        if cmd == GET_BP_DATA:
            s, d, m, h, e = self.result
            return encode_bp_data(s, d, m, h, error=e)
        if cmd == GET_CUFF_PRESSURE:
            return encode_response(self.cuff.to_bytes(2, "little"))
        return b""


@register_driver
class SunTechDriver(
    SerialDriver[SunTechOptions], name="suntech-advantage", device_class=DeviceClass.BLOOD_PRESSURE
):
    """SunTech Advantage-type OEM NIBP module (serial; result read when a measurement completes)."""

    decoder_class = SunTechDecoder
    simulator_class = SunTechSimulator
    start_command = START_MEASUREMENT  # automated office BP: the agent starts the series' measurements
