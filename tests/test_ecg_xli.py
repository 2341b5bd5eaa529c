"""Philips XLI waveform decompression (drivers/ecg/xli.py) against an encoder written here from the format
description (LZW with 10-bit codes, high/low byte halves, second differences), so the decoder is checked
against the format rather than against itself; plus bad input and the limb-lead rebuild. The peers'
expected samples from real files are in tests/test_ecg_peer.py."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitals_agent.drivers.ecg import xli
from vitals_agent.errors import DecodeError


def lzw_encode(data: bytes) -> bytes:
    table = {bytes((i,)): i for i in range(256)}
    codes: list[int] = []
    word = b""
    for byte in data:
        grown = word + bytes((byte,))
        if grown in table:
            word = grown
            continue
        codes.append(table[word])
        if len(table) <= 1022:
            table[grown] = len(table)
        word = bytes((byte,))
    if word:
        codes.append(table[word])
    codes.append(1023)  # end of stream
    bits = "".join(f"{c:010b}" for c in codes)
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") + b"\x00\x00"  # the writer's two padding bytes


def xli_encode(samples: list[int]) -> bytes:
    """One lead chunk: second differences, split into high and low byte halves, LZW, header."""
    raw = samples[:2]
    first = 2 * samples[1] - samples[0] - samples[2] if len(samples) > 2 else 0
    for i in range(3, len(samples)):
        raw.append(2 * samples[i - 1] - samples[i - 2] - samples[i] + 64)
    if len(samples) > 2:
        raw.append(64)  # the last raw value is never used
    halves = bytes((v >> 8) & 0xFF for v in raw) + bytes(v & 0xFF for v in raw)
    packed = lzw_encode(halves)
    return struct.pack("<i2xh", len(packed), first) + packed


leads_strategy = st.lists(
    st.lists(st.integers(-2000, 2000), min_size=3, max_size=600), min_size=1, max_size=4
)


@settings(max_examples=60)
@given(leads_strategy)
def test_round_trip_through_an_independent_encoder(leads: list[list[int]]) -> None:
    data = b"".join(xli_encode(lead) for lead in leads)
    assert xli.decode(data) == leads


def test_a_long_flat_then_busy_lead_fills_the_lzw_table() -> None:
    lead = [0] * 3000 + [((i * 37) % 401) - 200 for i in range(4000)]
    data = xli_encode(lead)
    assert len(data) < 4 * len(lead)  # compressed: the table filled and kept working at 1023 entries
    assert xli.decode(data) == [lead]


def test_limb_leads_rebuilt_from_their_residues() -> None:
    one, two = [100, -50], [40, 30]
    iii = [two[k] - one[k] for k in range(2)]
    # residues of 0: III = II - I, aVR = -(I + II) / 2, aVL = (I - III) / 2, aVF = (II + III) / 2
    rebuilt = xli.rebuild_limb_leads([one, two, [0, 0], [0, 0], [0, 0], [0, 0], [7, 8]])
    assert rebuilt[2] == iii == [-60, 80]
    assert rebuilt[3] == [-((100 + 40) // 2), -((-50 + 30) // 2)] == [-70, 10]
    assert rebuilt[4] == [(100 - -60) // 2, (-50 - 80) // 2] == [80, -65]
    assert rebuilt[5] == [(40 + -60) // 2, (30 + 80) // 2] == [-10, 55]
    assert rebuilt[6] == [7, 8]


def test_bad_streams_are_decode_errors() -> None:
    good = xli_encode([1, 2, 3, 4])
    with pytest.raises(DecodeError, match="announces 999 bytes"):
        xli.decode(struct.pack("<i2xh", 999, 0) + good[8:])
    with pytest.raises(DecodeError, match="stray bytes after lead 1"):
        xli.decode(good + b"\x00\x01")
    undefined = (600 << 14).to_bytes(3, "big") + b"\x00\x00\x00"  # code 600 as the first code
    with pytest.raises(DecodeError, match="LZW code 600 before it was defined"):
        xli.lzw_decode(undefined)


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        xli.decode(data)
