"""Health o meter Professional 1100KL / 2101KL family: the ESC-tagged protocol.

``<ESC>R<ESC>I1234567890<ESC>W200.00<ESC>Nm<ESC>...<ESC>E`` (ESC = 0x1B; ``../shared/reference/devices.md``
§4.5). Tags: ``I`` ID (10 characters; whose ID is not documented: option ``id_field``), ``W`` weight,
``H`` height, ``T`` tare, ``B`` BMI, ``N`` units (``m`` metric: kg/cm, ``c`` conventional: lb/in), ``E`` end
of packet; a packet starts with ``R`` (meaning not documented). The host may request a packet with ``Q``
(``poll_seconds``; default: the scale sends when its print key is pressed).

A weighing is reported once (same rule as ``scale-ascii``): a repeated packet with the same values is not a
new reading until the platform was unloaded or the value changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from pydantic import validate_call

from vitals_agent.drivers._serial_util import (
    FlushingDecoder,
    TimedSimulator,
    WeighingOptions,
    WeighingTracker,
    failure,
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
    SerialDriver,
    register_driver,
)
from vitals_agent.errors import DecodeError, OverlongError, TruncatedError, UnsupportedError
from vitals_agent.models import DeviceClass, DeviceIdentity, PatientInfo

ESC = 0x1B
MAX_FIELD = 40
MAX_FIELDS = 24
DISCARD_KEEP = 4096  # bytes of a discarded packet kept for the DEBUG hex dump
MAX_DISCARD = 65536  # an overlong packet without an end tag is reported every this many bytes
_WHITESPACE = b" \r\n\t\x00"


class HealthOMeterOptions(WeighingOptions):
    """``poll_seconds``: send ``Q`` this often (default: never; the scale sends on its print key)."""

    # What the 10-character ``I`` field is: the manual calls it "ID" without saying whose. "ignore" (default)
    # drops it; "patient" sends it as the patient's MRN when no patient is bound; "device" uses it as the
    # scale's serial number.
    id_field: Literal["ignore", "patient", "device"] = "ignore"


def _blank(text: str) -> bool:
    return not text.strip() or not set(text.strip()) - set("-. ")


class HealthOMeterDecoder(FlushingDecoder):
    def __init__(
        self,
        ctx: DecodeContext,
        zero_band_kg: Decimal = Decimal("0.1"),
        min_change_kg: Decimal = Decimal(0),
        poll_seconds: float | None = None,
        id_field: str = "ignore",
    ) -> None:
        super().__init__(ctx)
        self.id_field = id_field
        self.tracker = WeighingTracker(zero_band_kg, min_change_kg)
        self.poll_interval = poll_seconds
        self._raw = bytearray()  # the packet so far (or garbage outside a packet)
        self._fields: list[tuple[str, bytearray]] = []
        self._in_packet = False
        self._after_esc = False
        # An overlong packet (field, field count or size over the cap) is discarded whole, up to its end tag
        # ESC E: none of its tags, before or after the cap, is ever decoded as a packet.
        self._discarding = False
        self._discard_why = ""
        self._discard_len = 0
        self._discard_head = bytearray()  # its first DISCARD_KEEP bytes, for the DEBUG hex dump

    def poll_command(self) -> bytes | None:
        return b"Q"

    def pending(self) -> bytes:
        return bytes(self._raw) if self._in_packet else b""

    def reset(self) -> None:
        self._raw.clear()
        self._fields.clear()
        self._in_packet = False
        self._after_esc = False
        self._discarding = False
        self._discard_len = 0
        self._discard_head.clear()

    def flush(self) -> list[DecoderOutput]:
        if self._discarding:
            failure = self._discarded("input ended before its end tag (ESC E)")
            self.reset()
            return [failure]
        return super().flush()

    def feed(self, data: bytes) -> list[DecoderOutput]:
        out: list[DecoderOutput] = []
        for byte in data:
            if self._discarding:
                self._discard(byte, out)
                continue
            if not self._in_packet:
                if byte != ESC:
                    if byte not in _WHITESPACE or self._raw:
                        self._raw.append(byte)
                        if len(self._raw) > self.max_buffer:
                            out.append(self._garbage())
                    continue
                if self._raw:
                    out.append(self._garbage())
                self._in_packet = True
                self._after_esc = True
                self._raw.append(byte)
                continue
            if len(self._raw) >= self.max_buffer:  # e.g. endless ESCs: never grow without bound
                self._abandon(f"Health o meter packet longer than {self.max_buffer} bytes", self._after_esc)
                self._discard(byte, out)
                continue
            self._raw.append(byte)
            if self._after_esc:
                if byte == ESC:  # an empty tag (a packet cut right after its ESC): wait for the real tag
                    continue
                self._after_esc = False
                tag = chr(byte)
                if tag == "E":
                    out.extend(self._packet())
                    continue
                if tag == "R" and self._fields:
                    part = bytes(self._raw[:-2])
                    out.append(
                        DecodeFailure(
                            TruncatedError("truncated Health o meter packet: no end tag (ESC E)", part)
                        )
                    )
                    self._fields.clear()
                    del self._raw[:-2]
                if len(self._fields) >= MAX_FIELDS:
                    self._abandon(f"Health o meter packet with more than {MAX_FIELDS} fields", False)
                    continue
                self._fields.append((tag, bytearray()))
                continue
            if byte == ESC:
                self._after_esc = True
                continue
            if not self._fields:  # cannot happen: a packet starts with ESC + tag
                continue
            field = self._fields[-1][1]
            if len(field) >= MAX_FIELD:
                self._abandon(f"Health o meter field longer than {MAX_FIELD} bytes", False)
                continue
            field.append(byte)
        return out

    def _abandon(self, why: str, after_esc: bool) -> None:
        """The packet in progress is overlong: from here on discard everything up to its ESC E."""
        head = bytes(self._raw[:DISCARD_KEEP])
        length = len(self._raw)
        self.reset()
        self._discarding = True
        self._discard_why = why
        self._discard_len = length
        self._discard_head[:] = head
        self._after_esc = after_esc

    def _discard(self, byte: int, out: list[DecoderOutput]) -> None:
        self._discard_len += 1
        if len(self._discard_head) < DISCARD_KEEP:
            self._discard_head.append(byte)
        if self._after_esc and byte == ord("E"):
            out.append(self._discarded("discarded up to its end tag (ESC E)"))
            self.reset()
            return
        self._after_esc = byte == ESC
        if self._discard_len >= MAX_DISCARD:  # still no end tag: report (and count) what went so far
            out.append(self._discarded("no end tag (ESC E) yet: still discarding"))
            self._discard_len = 0
            self._discard_head.clear()

    def _discarded(self, how: str) -> DecodeFailure:
        message = f"{self._discard_why} ({self._discard_len} bytes): {how}"
        return DecodeFailure(OverlongError(message, bytes(self._discard_head)))

    def _garbage(self) -> DecodeFailure:
        junk = bytes(self._raw)
        self._raw.clear()
        return failure(DecodeError, f"Health o meter: {len(junk)} bytes outside a packet", junk)

    def _packet(self) -> list[DecoderOutput]:
        raw = bytes(self._raw)
        fields = [(tag, bytes(v)) for tag, v in self._fields]
        self.reset()
        try:
            return self._decode(fields, raw)
        except DecodeError as exc:
            return [DecodeFailure.of(exc, raw)]

    def _decode(self, fields: Sequence[tuple[str, bytes]], raw: bytes) -> list[DecoderOutput]:
        values: dict[str, str] = {}
        for tag, data in fields:
            try:
                text = data.decode("ascii")
            except UnicodeDecodeError:
                raise DecodeError(f"Health o meter: non-ASCII value in tag {tag!r} ({hexs(data)})") from None
            if not text.isprintable():
                raise DecodeError(f"Health o meter: control characters in tag {tag!r} ({hexs(data)})")
            values[tag] = text
        if "W" not in values or _blank(values["W"]):
            return []  # a packet without a weight (e.g. the platform is empty and the display blank)
        units = values.get("N", "").strip().lower()
        if units not in ("m", "c"):
            if "N" not in values:
                raise TruncatedError("Health o meter packet has no units tag (N)")
            raise UnsupportedError(f"Health o meter: unknown units {values['N']!r} (expected m or c)")
        metric = units == "m"
        weight = parse_decimal(values["W"], "Health o meter weight")
        weight_unit = "kg" if metric else "[lb_av]"
        height = None
        if "H" in values and not _blank(values["H"]):
            h = values["H"].strip()
            height = parse_feet_inches(h)
            if height is None:
                height = parse_decimal(h, "height")
        bmi = parse_decimal(values["B"], "BMI") if "B" in values and not _blank(values["B"]) else None
        if not self.tracker.observe(weight, weight_unit, True, (height, bmi)):
            return []
        measurements = weighing_measurements(weight, weight_unit, height, "cm" if metric else "[in_i]", bmi)
        extra = {}
        if "T" in values and not _blank(values["T"]):
            extra["tare"] = f"{parse_decimal(values['T'], 'tare')} {'kg' if metric else 'lb'}"
        tag_id = values.get("I", "").strip()
        if not tag_id or set(tag_id) == {"0"}:
            tag_id = ""
        patient = PatientInfo(mrn=tag_id) if tag_id and self.id_field == "patient" else None
        serial = tag_id if tag_id and self.id_field == "device" else None
        identity = DeviceIdentity(id=self.ctx.device.id, manufacturer="Health o meter", serial_number=serial)
        return [
            make_reading(
                self.ctx,
                DeviceClass.SCALE,
                measurements,
                raw,
                extra=extra,
                source_patient=patient,
                identity=identity,
            )
        ]


def encode_packet(
    weight: str | None,
    *,
    metric: bool = True,
    height: str | None = None,
    bmi: str | None = None,
    patient_id: str = "",
    tare: str | None = None,
) -> bytes:
    parts = [b"R", b"I" + patient_id.ljust(10)[:10].encode()]
    if weight is not None:
        parts.append(b"W" + weight.encode())
    if height is not None:
        parts.append(b"H" + height.encode())
    if tare is not None:
        parts.append(b"T" + tare.encode())
    if bmi is not None:
        parts.append(b"B" + bmi.encode())
    parts += [b"N" + (b"m" if metric else b"c"), b"E"]
    return b"".join(b"\x1b" + p for p in parts)


class HealthOMeterSimulator(TimedSimulator):
    """Sends a packet every ``interval`` (the print key) cycling empty platform / patient weights, and
    answers ``Q`` with the current packet."""

    @validate_call
    def __init__(
        self,
        weights: Sequence[str] = ("200.00", "0.00", "185.40", "0.00"),
        metric: bool = False,
        height: str | None = "68.0",
        bmi: str | None = None,
        patient_id: str = "",
        interval: float = 1.0,
        stream: bool = True,
    ) -> None:
        super().__init__(interval)
        self.weights = list(weights)
        self.metric = metric
        self.height = height
        self.bmi = bmi
        self.patient_id = patient_id
        self.stream = stream
        self.step = 0

    def packet(self) -> bytes:
        w = self.weights[self.step % len(self.weights)]
        loaded = Decimal(w) > 0
        return encode_packet(
            w,
            metric=self.metric,
            height=self.height if loaded else None,
            bmi=self.bmi if loaded else None,
            patient_id=self.patient_id,
        )

    def periodic(self) -> bytes:
        if not self.stream:
            return b""
        out = self.packet()
        self.step += 1
        return out

    def on_request(self, data: bytes) -> bytes:
        return self.packet() * data.count(b"Q")


@register_driver
class HealthOMeterDriver(
    SerialDriver[HealthOMeterOptions], name="health-o-meter", device_class=DeviceClass.SCALE
):
    """Health o meter Professional 1100KL/2101KL scales (ESC-tagged packets: weight, height, BMI)."""

    simulator_class = HealthOMeterSimulator

    def stream_decoder(self, ctx: DecodeContext) -> HealthOMeterDecoder:
        o = self.options
        return HealthOMeterDecoder(
            ctx,
            zero_band_kg=o.zero_band_kg,
            min_change_kg=o.min_change_kg,
            poll_seconds=o.poll_seconds,
            id_field=o.id_field,
        )
