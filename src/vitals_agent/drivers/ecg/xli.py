"""Philips "XLI" waveform compression (Sierra/Philips ECG XML ``parsedwaveforms``), decoding only. Pure.

The format, as public decoders (sierra-ecg-tools) document it by behaviour; no Philips specification is
published. The Base64-decoded data is a run of chunks, one per lead:

* an 8-byte header: compressed size (int32, little-endian), 2 unused bytes, the first delta (int16, LE);
* ``size`` bytes of LZW: 10-bit codes, most significant bit first, a dictionary that starts with the 256
  single bytes and grows by one entry per code up to code 1022 (1023 ends the stream). A code is read only
  while at least 25 bits are left: the writer's last two bytes are padding;
* the decompressed bytes, as 16-bit values: the high bytes make the first half, the low bytes the second
  (an odd count gets a zero byte);
* second-difference coding: with ``x, y`` the two previous outputs and ``last`` the previous raw value
  minus 64 (the header's first delta for the third sample), each further sample is ``2y - x - last``.

Leads III, aVR, aVL and aVF are stored as residues and rebuilt from I and II (:func:`rebuild_limb_leads`).
"""

from __future__ import annotations

import struct

from vitals_agent.errors import DecodeError

CODE_BITS = 10
LAST_CODE = (1 << CODE_BITS) - 2  # 1022; 1023 ends a stream
HEADER = struct.Struct("<i2xh")


def lzw_decode(data: bytes) -> bytes:
    """Decompress one XLI chunk's LZW stream."""
    table: list[bytes] = [bytes((i,)) for i in range(256)]
    out = bytearray()
    previous = b""
    padded = data + b"\x00\x00\x00"
    total = len(data) * 8
    pos = 0
    while total - pos > 24:
        byte, shift = divmod(pos, 8)
        window = (padded[byte] << 16) | (padded[byte + 1] << 8) | padded[byte + 2]
        code = (window >> (24 - CODE_BITS - shift)) & ((1 << CODE_BITS) - 1)
        pos += CODE_BITS
        if code > LAST_CODE:
            break
        if code < len(table):
            entry = table[code]
        elif code == len(table) and previous:
            entry = previous + previous[:1]  # the code being defined right now (cScSc)
        else:
            raise DecodeError(f"XLI: LZW code {code} before it was defined (table has {len(table)})")
        if previous and len(table) <= LAST_CODE:
            table.append(previous + entry[:1])
        out += entry
        previous = entry
    return bytes(out)


def _int16(value: int) -> int:
    return ((value + 0x8000) & 0xFFFF) - 0x8000


def undelta(raw: bytes, first: int) -> list[int]:
    """The lead's samples from its decompressed bytes (see the module doc)."""
    if len(raw) % 2:
        raw += b"\x00"
    half = len(raw) // 2
    values = [_int16((raw[i] << 8) | raw[half + i]) for i in range(half)]
    if len(values) < 2:
        return values
    x, y, last = values[0], values[1], first
    for i in range(2, len(values)):
        z = _int16(2 * y - x - last)
        last = values[i] - 64
        values[i] = z
        x, y = y, z
    return values


def decode(data: bytes) -> list[list[int]]:
    """Every lead of an XLI block, in stored order, as integer samples (in the file's resolution units)."""
    leads: list[list[int]] = []
    offset = 0
    while offset < len(data):
        if offset + HEADER.size > len(data):
            raise DecodeError(f"XLI: {len(data) - offset} stray bytes after lead {len(leads)}")
        size, first = HEADER.unpack_from(data, offset)
        offset += HEADER.size
        if size < 0 or offset + size > len(data):
            raise DecodeError(f"XLI: lead {len(leads) + 1} announces {size} bytes, {len(data) - offset} left")
        leads.append(undelta(lzw_decode(data[offset : offset + size]), first))
        offset += size
    return leads


def rebuild_limb_leads(leads: list[list[int]]) -> list[list[int]]:
    """Leads I, II, III, aVR, aVL, aVF (+ the rest unchanged) with III and the augmented leads rebuilt from
    their stored residues: III = II - I - r3, aVR = -r4 - (I + II) / 2, aVL = (I - III) / 2 - r5,
    aVF = (II + III) / 2 - r6 (halves rounded down, as the writer's integer arithmetic does)."""
    if len(leads) < 6:
        return [list(lead) for lead in leads]
    i, ii, r3, r4, r5, r6 = leads[:6]
    n = min(len(i), len(ii), len(r3), len(r4), len(r5), len(r6))
    iii = [ii[k] - i[k] - r3[k] for k in range(n)]
    avr = [-r4[k] - (i[k] + ii[k]) // 2 for k in range(n)]
    avl = [(i[k] - iii[k]) // 2 - r5[k] for k in range(n)]
    avf = [(ii[k] + iii[k]) // 2 - r6[k] for k in range(n)]
    return [list(i), list(ii), iii, avr, avl, avf, *[list(lead) for lead in leads[6:]]]
