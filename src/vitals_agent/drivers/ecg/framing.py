"""Cutting ECG files out of a serial byte stream (pure: no I/O, no clock)."""

from __future__ import annotations

from typing import Protocol

from vitals_agent.drivers.base import DecodeContext, DecodeFailure, DecoderOutput, StreamDecoder
from vitals_agent.drivers.ecg import scp
from vitals_agent.errors import DecodeError
from vitals_agent.models import Reading

MIN_SCP_RECORD = scp.RECORD_HEADER + scp.HEADER


class FileDecoder(Protocol):
    """What the framer needs of an EKG file driver: decode one whole file."""

    def decode_file(self, data: bytes, ctx: DecodeContext, name: str | None = None) -> Reading: ...


class ScpFileFramer(StreamDecoder):
    """Pure framer/decoder: cuts SCP records out of a byte stream by their header length; whatever is
    left when the line goes idle is one file too (``idle()``). ``feed`` decodes the records it cuts."""

    def __init__(self, ctx: DecodeContext, driver: FileDecoder, max_file_bytes: int) -> None:
        super().__init__(ctx)
        self.driver = driver
        self.max_file_bytes = max_file_bytes
        self._buf = bytearray()

    def reset(self) -> None:
        self._buf.clear()

    def pending(self) -> bytes:
        return bytes(self._buf)

    def _announced(self) -> int | None:
        """The record length a plausible SCP header at the start of the buffer announces, else None."""
        length = scp.record_length(bytes(self._buf[: scp.RECORD_HEADER]))
        if length is None or not MIN_SCP_RECORD <= length <= self.max_file_bytes:
            return None
        return length

    def frames(self, data: bytes) -> list[bytes]:
        """Files completed by ``data`` (by record length). Over-long unframed input is cut at the cap."""
        self._buf.extend(data)
        out: list[bytes] = []
        while len(self._buf) >= scp.RECORD_HEADER:
            length = self._announced()
            if length is None:
                break  # not an SCP header: the idle gap ends this file
            if len(self._buf) < length:
                return out
            out.append(bytes(self._buf[:length]))
            del self._buf[:length]
        if len(self._buf) > self.max_file_bytes:
            out.append(bytes(self._buf))  # will fail to decode (too large / no boundary); never kept forever
            self._buf.clear()
        return out

    def inside_record(self) -> bool:
        """True while the buffer holds the start of an SCP record whose header announces more bytes."""
        return self._announced() is not None

    def idle(self) -> bytes | None:
        """The line went quiet: whatever is buffered is one (possibly truncated) file."""
        if not self._buf:
            return None
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def decode(self, data: bytes) -> DecoderOutput:
        try:
            return self.driver.decode_file(data, self.ctx)
        except DecodeError as exc:
            return DecodeFailure.of(exc, data[:64])

    def feed(self, data: bytes) -> list[DecoderOutput]:
        return [self.decode(f) for f in self.frames(data)]
