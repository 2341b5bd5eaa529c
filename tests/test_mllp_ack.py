"""parse_ack: our own ER7 splitter for ACK messages (hl7-pcd01.md §9.1)."""

from __future__ import annotations

import hl7
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fake_ehr import make_message
from vitals_agent.errors import AckProtocolError
from vitals_agent.hl7.ack import Ack, AckErrorDetail, parse_ack

REFERENCE_AE = (
    b"MSH|^~\\&|EHR|EXAMPLE_HOSP|VITALS_AGENT^0A1B2CFFFE3D4E5F^EUI-64|EXAMPLE_CLINIC|20250314153013+0000||"
    b"ACK^R01^ACK|EHR-77812|P|2.6\r"
    b"MSA|AE|0A1B2C3D4E5F-000123\r"
    b"ERR||OBX^2^5|207^Application internal error^HL70357|E\r"
)


def test_reference_ae_from_the_spec() -> None:
    assert parse_ack(REFERENCE_AE) == Ack(
        code="AE",
        control_id="0A1B2C3D4E5F-000123",
        text="",
        errors=(
            AckErrorDetail(location="OBX^2^5", code="207^Application internal error^HL70357", severity="E"),
        ),
        message_type="ACK^R01^ACK",
        ack_control_id="EHR-77812",
    )
    assert parse_ack(REFERENCE_AE).describe() == "AE [E 207^Application internal error^HL70357 at OBX^2^5]"


def test_python_hl7_create_ack_is_understood() -> None:
    original = hl7.parse(make_message("CTRL-9").decode())
    for code in ("AA", "CA", "AR"):
        ack = parse_ack(str(original.create_ack(code)).encode())
        assert (ack.code, ack.control_id, ack.message_type) == (code, "CTRL-9", "ACK^R01^ACK")
        assert ack.accepted is (code in ("AA", "CA"))


def test_msa3_text_unescaped_and_lf_segments_accepted() -> None:
    payload = b"MSH|^~\\&|EHR|H|A|F|20250101||ACK|X1|P|2.6\nMSA|AR|ID-1|bad \\F\\ value \\T\\ here|\n"
    ack = parse_ack(payload)
    assert (ack.code, ack.control_id, ack.text) == ("AR", "ID-1", "bad | value & here")
    assert ack.describe() == "AR: bad | value & here"


def test_other_delimiters_and_unknown_segments() -> None:
    payload = b"MSH#:~\\&#EHR#H#A#F#2025##ACK:R01:ACK#Z9#P#2.6\rZZZ#whatever\rMSA#CE#M-7:ignored#try later\r"
    ack = parse_ack(payload)
    assert (ack.code, ack.control_id, ack.text, ack.message_type) == ("CE", "M-7", "try later", "ACK:R01:ACK")
    assert not ack.accepted and ack.known


def test_unknown_code_is_parsed_but_not_known() -> None:
    ack = parse_ack(b"MSH|^~\\&|E|H|A|F|2025||ACK|1|P|2.6\rMSA|XX|M1\r")
    assert ack.code == "XX" and not ack.known and not ack.accepted


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty answer"),
        (b"HTTP/1.1 400 Bad Request\r\n", "no MSH segment"),
        (b"MSH|^~\\&|E|H|A|F|2025||ACK|1|P|2.6\r", "no MSA segment"),
        (b"MSH|^~\\&|E|H|A|F|2025||ACK|1|P|2.6\rMSA||M1\r", "invalid MSA-1"),
        (b"MSH|^~\\&|E|H|A|F|2025||ACK|1|P|2.6\rMSA|AA|\r", "empty MSA-2"),
        (b"MSH|^~\\&|E|H|A|F|2025||ACK|1|P|2.6\rmsa|AA|M1\r", "malformed segment name"),
        (b"MSHA^~\\&|E", "invalid MSH field separator"),
    ],
)
def test_unusable_answers_raise_ack_protocol_error(payload: bytes, reason: str) -> None:
    with pytest.raises(AckProtocolError, match=reason):
        parse_ack(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_property_random_bytes_only_ever_raise_ack_protocol_error(data: bytes) -> None:
    try:
        ack = parse_ack(data)
    except AckProtocolError:
        return
    assert len(ack.code) == 2 and ack.control_id


@settings(max_examples=200, deadline=None)
@given(
    code=st.sampled_from(["AA", "AE", "AR", "CA", "CE", "CR"]),
    control=st.text(alphabet="ABCDEFGHIJ0123456789-.", min_size=1, max_size=20),
)
def test_property_round_trip_of_generated_acks(code: str, control: str) -> None:
    payload = f"MSH|^~\\&|E|H|A|F|2025||ACK^R01^ACK|A1|P|2.6\rMSA|{code}|{control}\r".encode()
    ack = parse_ack(payload)
    assert (ack.code, ack.control_id) == (code, control)
