"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, TF-2 App. I), pure: no I/O.

A frame is ``0x0B`` + message + ``0x1C 0x0D``. :func:`frame` wraps a message; :class:`MllpDeframer` cuts
frames out of a byte stream. The client that sends them over TCP is :mod:`vitals_agent.net.mllp`.
"""

from __future__ import annotations

START_BLOCK = 0x0B
END_BLOCK = 0x1C
CARRIAGE_RETURN = 0x0D
_SB = b"\x0b"
_TRAILER = b"\x1c\x0d"

DEFAULT_MAX_FRAME = 4 * 1024 * 1024  # 4 MiB: big enough for an EKG attachment, small enough to bound memory


def frame(message: bytes) -> bytes:
    """Wrap one HL7 message in an MLLP block. The message must not contain the framing bytes."""
    if _SB in message or b"\x1c" in message:
        raise ValueError("an HL7 message must not contain the MLLP framing bytes 0x0B or 0x1C")
    return _SB + message + _TRAILER


class MllpDeframer:
    """Incremental MLLP deframer: feed bytes as they arrive, get complete message payloads back.

    * Bytes outside a frame are garbage: they are dropped and counted in :attr:`garbage_bytes`.
    * A ``0x0B`` inside an unfinished frame means the previous frame was cut short: the partial frame is
      dropped (counted as garbage) and decoding resynchronises on the new start byte.
    * A frame that grows beyond ``max_frame`` bytes without its trailer is dropped and counted in
      :attr:`overflows`; decoding resumes at the next ``0x0B``. Memory use is bounded by ``max_frame``.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._in_frame = False
        self.garbage_bytes = 0
        self.overflows = 0

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished frame."""
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._in_frame = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        view = memoryview(data)
        pos = 0
        n = len(data)
        while pos < n:
            if not self._in_frame:
                start = data.find(_SB, pos)
                if start < 0:
                    self.garbage_bytes += n - pos
                    break
                self.garbage_bytes += start - pos
                self._in_frame = True
                pos = start + 1
                continue
            # Inside a frame: look for the trailer or a new start byte, whichever comes first. The trailer
            # may straddle two chunks (0x1C at the end of the buffer, 0x0D at the start of this chunk).
            if self._buf and self._buf[-1] == END_BLOCK and data[pos] == CARRIAGE_RETURN:
                out.append(bytes(self._buf[:-1]))
                self._buf.clear()
                self._in_frame = False
                pos += 1
                continue
            end = data.find(_TRAILER, pos)
            restart = data.find(_SB, pos)
            if restart >= 0 and (end < 0 or restart < end):
                self.garbage_bytes += len(self._buf) + (restart - pos) + 1  # +1: the dropped start byte
                self._buf.clear()
                pos = restart + 1
                continue
            if end >= 0:
                if len(self._buf) + (end - pos) > self.max_frame:
                    self._overflow()
                else:
                    self._buf += view[pos:end]
                    out.append(bytes(self._buf))
                    self._buf.clear()
                    self._in_frame = False
                pos = end + 2
                continue
            self._buf += view[pos:]
            pos = n
            if len(self._buf) > self.max_frame:
                self._overflow()
        return out

    def _overflow(self) -> None:
        self.overflows += 1
        self.garbage_bytes += len(self._buf)
        self._buf.clear()
        self._in_frame = False
