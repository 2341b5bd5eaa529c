"""ITI-21 query builder, answer parser and the small supplier (pure; hl7apy STRICT on every shape)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.pdq_oracle import validate_qbp, validate_rsp
from vitals_agent.errors import VitalsAgentError
from vitals_agent.hl7.pdq import (
    Authority,
    PdqCandidate,
    PdqDirectory,
    PdqError,
    PdqProtocolError,
    PdqQuery,
    PdqRefusedError,
    build_qbp,
    next_increment,
    parse_patients_csv,
    parse_qbp,
    parse_rsp,
)

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
AUTH = Authority.parse("EXCLINIC&2.999.1&ISO")
ODALYS = PdqCandidate(
    mrn="ZQ4471902",
    authority=AUTH,
    identifier_type="MR",
    family="QUIRKE",
    given="ODALYS",
    birth_date="19610923",
    sex="F",
    encounter="V778",
)


def query(mrn: str = "ZQ4471902", *, authority: Authority | None = AUTH, **kw: object) -> PdqQuery:
    base: dict[str, object] = {
        "mrn": mrn,
        "control_id": "QRY0001",
        "query_tag": "TAG0001",
        "created_at": NOW,
        "authority": authority,
        "sending_application": "VITALS_AGENT^0011223344556677^EUI-64",
        "sending_facility": "CLINIC",
        "receiving_application": "PDQ_SUPPLIER",
        "receiving_facility": "EHR",
    }
    base.update(kw)
    return PdqQuery(**base)  # type: ignore[arg-type]


def segs(raw: bytes | str) -> list[str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return [s for s in text.split("\r") if s]


# ------------------------------------------------------------------------------------------ query


def test_qbp_is_strict_valid_iti21_with_mrn_and_domain() -> None:
    raw = build_qbp(query())
    msg = validate_qbp(raw)
    assert msg.msh.msh_10.to_er7() == "QRY0001"
    lines = segs(raw)
    assert lines[0].split("|")[8] == "QBP^Q22^QBP_Q21"
    assert lines[0].split("|")[11] == "2.5"
    assert lines[0].split("|")[4] == "PDQ_SUPPLIER"
    assert lines[1] == (
        "QPD|IHE PDQ Query|TAG0001|@PID.3.1^ZQ4471902~@PID.3.4.1^EXCLINIC~@PID.3.4.2^2.999.1~@PID.3.4.3^ISO"
    )
    assert lines[2] == "RCP|I|10^RD"


def test_qbp_without_domain_names_only_the_mrn() -> None:
    raw = build_qbp(query(authority=None, limit=3))
    validate_qbp(raw)
    assert segs(raw)[1] == "QPD|IHE PDQ Query|TAG0001|@PID.3.1^ZQ4471902"
    assert segs(raw)[2] == "RCP|I|3^RD"


def test_qbp_escapes_delimiters_in_the_mrn() -> None:
    raw = build_qbp(query("A|B^C~D&E\\F"))
    validate_qbp(raw)
    assert parse_qbp(raw).parameters["PID.3.1"] == "A|B^C~D&E\\F"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"mrn": "  "}, "empty"),
        ({"mrn": "A\rB"}, "control character"),
        ({"control_id": "bad id"}, "control_id"),
        ({"query_tag": ""}, "query_tag"),
        ({"limit": 0}, "limit"),
        ({"processing_id": "X"}, "processing id"),
    ],
)
def test_bad_queries_are_typed_errors(kw: dict[str, object], message: str) -> None:
    with pytest.raises(PdqError, match=message):
        query(**kw)  # type: ignore[arg-type]


def test_the_oracle_rejects_a_query_without_rcp() -> None:
    raw = build_qbp(query()).decode().replace("RCP|I|10^RD\r", "")
    with pytest.raises(AssertionError, match="RCP"):
        validate_qbp(raw)


# ------------------------------------------------------------------------------------------ answer


def directory(*patients: PdqCandidate) -> PdqDirectory:
    return PdqDirectory(list(patients) or [ODALYS], authority=AUTH, application="EHR_PDQ", facility="EHR")


def test_supplier_answer_is_strict_valid_and_parses_to_the_patient() -> None:
    q = query()
    answer = directory().answer(build_qbp(q), control_id="RSP0001", now=NOW)
    msg = validate_rsp(answer)
    assert msg.msa.msa_2.to_er7() == "QRY0001"
    lines = segs(answer)
    assert lines[0].split("|")[2:6] == [
        "PDQ_SUPPLIER",
        "EHR",
        "VITALS_AGENT^0011223344556677^EUI-64",
        "CLINIC",
    ]
    assert lines[2] == "QAK|TAG0001|OK"
    assert (
        lines[4]
        == "PID|1||ZQ4471902^^^EXCLINIC&2.999.1&ISO^MR||QUIRKE^ODALYS^^^^^L||19610923|F" + "|" * 10 + "V778"
    )
    result = parse_rsp(answer, q)
    assert result.status == "OK"
    assert result.candidates == (ODALYS,)
    assert not result.more


def test_unknown_mrn_is_nf_with_no_candidates() -> None:
    q = query("ZQ0000000")
    answer = directory().answer(build_qbp(q), control_id="RSP0002", now=NOW)
    validate_rsp(answer)
    assert "QAK|TAG0001|NF" in segs(answer)
    result = parse_rsp(answer, q)
    assert result.status == "NF" and result.candidates == ()


def test_other_domain_finds_nothing() -> None:
    q = query(authority=Authority.parse("OTHER&2.999.9&ISO"))
    result = parse_rsp(directory().answer(build_qbp(q), control_id="R3", now=NOW), q)
    assert result.candidates == ()


def test_several_matches_are_all_returned_and_limit_adds_dsc() -> None:
    twin = PdqCandidate(
        mrn="ZQ4471902", authority=AUTH, family="QUIRKE", given="OLIVE", birth_date="19750101"
    )
    third = PdqCandidate(
        mrn="ZQ4471902", authority=AUTH, family="QUIRKE", given="OTTO", birth_date="19800202"
    )
    d = directory(ODALYS, twin, third)
    q = query()
    result = parse_rsp(d.answer(build_qbp(q), control_id="R4", now=NOW), q)
    assert [c.given for c in result.candidates] == ["ODALYS", "OLIVE", "OTTO"]
    q2 = query(limit=2)
    answer = d.answer(build_qbp(q2), control_id="R5", now=NOW)
    validate_rsp(answer)
    limited = parse_rsp(answer, q2)
    assert [c.given for c in limited.candidates] == ["ODALYS", "OLIVE"]
    assert limited.more


def _family(n: int) -> PdqCandidate:
    return PdqCandidate(mrn="ZQ4471902", authority=AUTH, family="QUIRKE", given=f"CHILD{n}", sex="F")


def test_incremental_response_continues_with_the_pointer_and_the_same_query_tag() -> None:
    """ITI-21 incremental response: the supplier sends a page and DSC-1 a pointer; the same QPD with that
    pointer in DSC-1 (fresh MSH-10) gets the next page, until no DSC comes."""
    d = PdqDirectory([_family(n) for n in range(5)], authority=AUTH, page_size=2)
    q = query(limit=10)
    pages: list[list[str | None]] = []
    while True:
        answer = d.answer(build_qbp(q), control_id=f"R{len(pages)}", now=NOW)
        validate_rsp(answer)
        result = parse_rsp(answer, q)
        pages.append([c.given for c in result.candidates])
        if not result.more:
            assert result.continuation == "" and "DSC|" not in answer
            break
        assert result.continuation == f"TAG0001-{2 * len(pages)}"
        q = next_increment(q, result, control_id=f"QRY000{len(pages) + 1}", created_at=NOW, limit=10)
        raw = build_qbp(q)
        msg = validate_qbp(raw)  # hl7apy STRICT: QBP_Q21 with its optional DSC
        assert msg.dsc.dsc_1.to_er7() == result.continuation and msg.dsc.dsc_2.to_er7() == "I"
        assert msg.qpd.qpd_2.to_er7() == "TAG0001" and msg.msh.msh_10.to_er7() == f"QRY000{len(pages) + 1}"
    assert pages == [["CHILD0", "CHILD1"], ["CHILD2", "CHILD3"], ["CHILD4"]]
    assert [r.continuation for r in d.queries] == ["", "TAG0001-2", "TAG0001-4"]


def test_a_pointer_the_supplier_did_not_give_is_refused() -> None:
    d = PdqDirectory([_family(n) for n in range(3)], authority=AUTH, page_size=2)
    for pointer in ("OTHERTAG-2", "TAG0001-x", "junk"):
        q = query(continuation=pointer)
        answer = d.answer(build_qbp(q), control_id="R9", now=NOW)
        validate_rsp(answer)
        with pytest.raises(PdqRefusedError, match=r"\(AE \[103\]\)"):
            parse_rsp(answer, q)


def test_no_next_increment_without_a_pointer() -> None:
    q = query()
    result = parse_rsp(directory(ODALYS).answer(build_qbp(q), control_id="R1", now=NOW), q)
    with pytest.raises(PdqError, match="no continuation pointer"):
        next_increment(q, result, control_id="QRY0002", created_at=NOW, limit=5)
    with pytest.raises(PdqError, match="continuation pointer"):
        query(continuation="A\rB")


@pytest.mark.parametrize("code", ["AE", "AR"])
def test_supplier_error_answers_are_refusals(code: str) -> None:
    q = query()
    answer = directory().answer(build_qbp(q), control_id="R6", now=NOW, ack_code=code)
    validate_rsp(answer)
    with pytest.raises(PdqRefusedError) as info:
        parse_rsp(answer, q)
    assert info.value.code == code
    assert info.value.errors == ("207",)
    assert "ZQ4471902" not in str(info.value)


def test_msa2_must_match_the_query_control_id() -> None:
    q = query()
    answer = directory().answer(build_qbp(q), control_id="R7", now=NOW)
    with pytest.raises(PdqProtocolError, match="MSA-2"):
        parse_rsp(answer, query(control_id="QRY9999"))


def test_qak1_must_match_the_query_tag() -> None:
    q = query()
    answer = directory().answer(build_qbp(q), control_id="R8", now=NOW)
    with pytest.raises(PdqProtocolError, match="QAK-1"):
        parse_rsp(answer, query(query_tag="OTHERTAG"))


def test_a_plain_ack_is_not_an_answer() -> None:
    ack = "MSH|^~\\&|EHR||VA||20240101000000+0000||ACK^Q22^ACK|A1|P|2.5\rMSA|AA|QRY0001\r"
    with pytest.raises(PdqProtocolError, match="RSP\\^K22"):
        parse_rsp(ack, query())


def test_pid3_is_taken_from_the_queried_domain_with_the_answers_authority() -> None:
    answer = (
        "MSH|^~\\&|EHR||VA||20240101000000+0000||RSP^K22^RSP_K21|A1|P|2.5\r"
        "MSA|AA|QRY0001\rQAK|TAG0001|OK\rQPD|IHE PDQ Query|TAG0001|@PID.3.1^ZQ4471902\r"
        "PID|1||998877^^^NATIONAL&2.16.1&ISO^NI~ZQ4471902^^^EXCLINIC&2.999.1&ISO^MR||O\\T\\NEILL^ODALYS^^^^^L~OQ^^^^^^A||"
        "196109231200|F\rPV1|1|O|||||||||||||||||V999\rQRI|1\r"
        "PID|2||555^^^NATIONAL&2.16.1&ISO^NI||OTHER^PERSON||19700101|M\rQRI|1\r"
    )
    result = parse_rsp(answer, query())
    assert result.outside_domain == 1
    (c,) = result.candidates
    assert c.mrn == "ZQ4471902"
    assert c.authority == Authority("EXCLINIC", "2.999.1", "ISO")
    assert c.identifier_type == "MR"
    assert (c.family, c.given, c.birth_date, c.sex, c.encounter) == (
        "O&NEILL",
        "ODALYS",
        "19610923",
        "F",
        "V999",
    )


def test_without_domain_the_repetition_equal_to_the_mrn_wins() -> None:
    answer = (
        "MSH|^~\\&|EHR||VA||20240101000000+0000||RSP^K22^RSP_K21|A1|P|2.5\r"
        "MSA|AA|QRY0001\rQAK|TAG0001|OK\r"
        "PID|1||998877^^^NATIONAL^NI~ZQ4471902^^^LOCAL^MR||QUIRKE^ODALYS||1961|X\r"
    )
    (c,) = parse_rsp(answer, query(authority=None)).candidates
    assert c.mrn == "ZQ4471902" and c.authority == Authority("LOCAL")
    assert c.birth_date is None  # year only is not a date of birth to bind
    assert c.sex is None  # not in table 0001


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"HELLO", "no MSH"),
        (b"MSH|^~\\&|A||B||1||RSP^K22|X|P|2.5\r", "no MSA"),
        (b"MSH|^~\\&|A||B||1||RSP^K22|X|P|2.5\rMSA|A1|QRY0001\r", "MSA-1"),
        (b"MSH|^~\\&|A||B||1||RSP^K22|X|P|2.5\rMSA|AA|QRY0001\r", "no QAK"),
        (b"MSH|^~\\&|A||B||1||RSP^K22|X|P|2.5\rMSA|AA|QRY0001\rQAK|TAG0001|XX\r", "QAK-2"),
        (b"MSH|^~\\&|A||B||1||RSP^K22|X|P|2.5\rMSA|AA|QRY0001\rbad|x\r", "segment name"),
        (b"MSH|^~\\&|A||B||1||RSP^K22|X|P|2.5\rMSA|ZZ|QRY0001\r", "unknown MSA-1"),
    ],
)
def test_malformed_answers_are_protocol_errors(payload: bytes, message: str) -> None:
    with pytest.raises(PdqProtocolError, match=message):
        parse_rsp(payload, query())


@given(st.binary(max_size=400))
def test_any_bytes_give_a_result_or_a_typed_error(payload: bytes) -> None:
    with contextlib.suppress(VitalsAgentError):
        parse_rsp(b"MSH|^~\\&|" + payload, query())


_mrn = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), min_size=1
).filter(lambda s: s.strip() == s and s)


@given(_mrn, st.sampled_from([None, AUTH, Authority("ONLYNS")]))
def test_any_mrn_round_trips_through_query_supplier_and_answer(mrn: str, authority: Authority | None) -> None:
    q = query(mrn, authority=authority)
    raw = build_qbp(q)
    assert parse_qbp(raw).parameters["PID.3.1"] == mrn
    patient = PdqCandidate(mrn=mrn, authority=authority, identifier_type="MR", family="X", given="Y")
    d = PdqDirectory([patient], authority=authority)
    result = parse_rsp(d.answer(raw, control_id="R1", now=NOW), q)
    assert [c.mrn for c in result.candidates] == [mrn]


def test_supplier_rejects_what_is_not_a_qbp() -> None:
    oru = "MSH|^~\\&|VA||EHR||20240101000000+0000||ORU^R01^ORU_R01|M1|P|2.6\r"
    answer = directory().answer(oru, control_id="R9", now=NOW)
    assert segs(answer)[1] == "MSA|AR|M1"


def test_patients_csv() -> None:
    text = "mrn,name,dob,sex,visit\nZQ4471902,QUIRKE^ODALYS,1961-09-23,F,V778\n\nZQ1,SOLO,19700101,m,\n"
    patients = parse_patients_csv(text, authority=AUTH)
    assert patients[0] == ODALYS
    assert patients[1].family == "SOLO" and patients[1].given is None and patients[1].sex == "M"
    assert patients[1].encounter is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mrn,name\nA,B\n", "missing: dob, sex"),
        ("mrn,name,dob,sex\n,X,19700101,F\n", "line 2: mrn is empty"),
        ("mrn,name,dob,sex\nA,X,19701301,F\n", "line 2: dob"),
        ("mrn,name,dob,sex\nA,X,19700101,Q\n", "line 2: sex"),
    ],
)
def test_bad_patients_csv(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_patients_csv(text)
