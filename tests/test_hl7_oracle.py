"""The oracle itself: the reference message of hl7-pcd01.md section 10.1 passes, broken messages fail."""

from __future__ import annotations

import re

import pytest

from tests.kit.shared import shared_file
from tests.oracle import validate_oru

# hl7-pcd01.md section 10.1, one segment per line (CR on the wire)
REFERENCE = [
    "MSH|^~\\&|VITALS_AGENT^0A1B2CFFFE3D4E5F^EUI-64|EXAMPLE_CLINIC|EHR|EXAMPLE_HOSP|20250314153012+0000||"
    "ORU^R01^ORU_R01|0A1B2C3D4E5F-000123|P|2.6|||AL|NE||UNICODE UTF-8|en^English^ISO639||"
    "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
    "PID|||MRN0012345^^^EXHOSP&2.999.1&ISO^MR||DOE^JANE^Q^^^^L||19700101|F",
    "PV1||O|CARDIO CLINIC^EXAM 3^^EXHOSP&2.999.1&ISO",
    "OBR|1|0A1B2CFFFE3D4E5F20250314152958^VITALS_AGENT^0A1B2CFFFE3D4E5F^EUI-64|"
    "0A1B2CFFFE3D4E5F20250314152958^VITALS_AGENT^0A1B2CFFFE3D4E5F^EUI-64|"
    "182777000^monitoring of patient^SCT|||20250314152958+0000|||4711^NURSE^ANNA",
    "OBX|1||528391^MDC_DEV_SPEC_PROFILE_BP^MDC|1.0.0.0|||||||X|||||||"
    "00091FFFFE123456^^00091FFFFE123456^EUI-64",
    "OBX|2|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.0.0.1|128|266016^MDC_DIM_MMHG^MDC^mm[Hg]^mm[Hg]^UCUM|||||R|||"
    "20250314152958+0000||4711^NURSE^ANNA|MMEAS^manual-measurement^MDC|||LA^Left arm^HL70163",
    "OBX|3|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.0.0.2|84|266016^MDC_DIM_MMHG^MDC^mm[Hg]^mm[Hg]^UCUM|||||R|||"
    "20250314152958+0000||4711^NURSE^ANNA|MMEAS^manual-measurement^MDC|||LA^Left arm^HL70163",
    "OBX|4|NM|150023^MDC_PRESS_BLD_NONINV_MEAN^MDC|1.0.0.3|99|266016^MDC_DIM_MMHG^MDC^mm[Hg]^mm[Hg]^UCUM|||||R|||"
    "20250314152958+0000||4711^NURSE^ANNA|MMEAS^manual-measurement^MDC|||LA^Left arm^HL70163",
    "OBX|5|NM|149546^MDC_PULS_RATE_NON_INV^MDC|1.0.0.4|67|264864^MDC_DIM_BEAT_PER_MIN^MDC^/min^/min^UCUM|||||R|||"
    "20250314152958+0000||4711^NURSE^ANNA|MMEAS^manual-measurement^MDC",
]
CLOCK_ROW_AS_PRINTED = (
    "OBX|6|DTM|67975^MDC_ATTR_TIME_ABS^MDC|1.0.0.5|20170116123954||||||R|||20250314153004+0000"
)


def wire(segments: list[str]) -> str:
    return "\r".join(segments) + "\r"


def replaced(index: int, pattern: str, replacement: str) -> list[str]:
    segments = list(REFERENCE)
    new = re.sub(pattern, lambda _m: replacement, segments[index], count=1)
    assert new != segments[index], "test setup: pattern did not match"
    segments[index] = new
    return segments


def test_reference_message_passes_and_is_easy_to_inspect() -> None:
    parsed = validate_oru(wire(REFERENCE).encode())
    assert parsed.control_id == "0A1B2C3D4E5F-000123"
    assert parsed.names == ["MSH", "PID", "PV1", "OBR", "OBX", "OBX", "OBX", "OBX", "OBX"]
    assert parsed.value("150021") == "128"
    assert parsed.obx_by_code("150022")[6] == "266016^MDC_DIM_MMHG^MDC^mm[Hg]^mm[Hg]^UCUM"
    assert parsed.obx_by_code("150022").text(6, 4) == "mm[Hg]"
    assert parsed.pid.text(3, 4) == "EXHOSP&2.999.1&ISO"
    assert parsed.pid.text(5, 7) == "L"
    assert parsed.obr.text(10, 2) == "NURSE"
    assert parsed.msh[1] == "|" and parsed.msh[2] == "^~\\&" and parsed.msh[12] == "2.6"
    assert parsed.message.name == "ORU_R01"  # the hl7apy message is there too
    # without a trailing CR, and as str, it passes too
    validate_oru("\r".join(REFERENCE))


def test_reference_message_from_shared_docs_passes() -> None:
    doc = shared_file("reference", "hl7-pcd01.md")
    text = doc.read_text("utf-8")
    section = text.split("### 10.1", 1)[1].split("```", 2)[1]
    segments = [line for line in section.splitlines() if re.match(r"^[A-Z][A-Z0-9]{2}\|", line)]
    assert segments == REFERENCE
    validate_oru(wire(segments))


def test_reference_clock_row_as_printed_lacks_an_offset() -> None:
    with pytest.raises(AssertionError, match=r"OBX #6 OBX-5 '20170116123954'.*offset"):
        validate_oru(wire([*REFERENCE, CLOCK_ROW_AS_PRINTED]))
    fixed = CLOCK_ROW_AS_PRINTED.replace("|20170116123954|", "|20170116123954+0000|")
    validate_oru(wire([*REFERENCE, fixed]))


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        pytest.param(
            [REFERENCE[i] for i in (0, 1, 2, 4, 3, 5, 6, 7, 8)], "segment order", id="obx-before-obr"
        ),
        pytest.param(replaced(5, r"\|128\|", "|12a|"), "not an NM number", id="nm-not-a-number"),
        pytest.param(replaced(5, r"\|128\|", "|NaN|"), "not an NM number", id="nm-nan"),
        pytest.param(replaced(5, r"\|128\|", "||"), "not an NM number", id="nm-empty"),
        pytest.param(replaced(5, r"\|128\|", "|1.28E2|"), "not an NM number", id="nm-exponent"),
        pytest.param(replaced(5, r"\|128\|", "|2047|"), "sentinel", id="nm-sentinel-2047"),
        pytest.param(replaced(5, r"mm\[Hg\]\^mm\[Hg\]", "mmHg^mmHg"), "not valid UCUM", id="mmHg"),
        pytest.param(replaced(5, r"266016\^", "264864^"), "does not match UCUM", id="mdc-unit-mismatch"),
        pytest.param(
            replaced(5, r"MDC_PRESS_BLD_NONINV_SYS", "MDC_PRESS_BLD_NONINV_DIA"), "paired", id="refid"
        ),
        pytest.param(
            replaced(5, r"20250314152958\+0000", "20250314152958"), "OBX-14", id="missing-offset-obx14"
        ),
        pytest.param(
            replaced(3, r"20250314152958\+0000", "202503141529+0000"), "OBR-7", id="no-seconds-obr7"
        ),
        pytest.param(
            replaced(0, r"20250314153012\+0000", "20250314153012"), "MSH-7", id="missing-offset-msh7"
        ),
        pytest.param(replaced(0, r"1\.6\.1\.1\.1", "1.6.4.4.1"), "MSH-21", id="msh21-tf-typo"),
        pytest.param(replaced(0, r"\|IHE_PCD_001.*$", ""), "MSH-21", id="msh21-missing"),
        pytest.param(
            replaced(0, r"ORU\^R01\^ORU_R01", "ORU^R01"), "MSH-9|hl7apy", id="msh9-without-structure"
        ),
        pytest.param(replaced(0, r"\|2\.6\|", "|2.5|"), "MSH-12|hl7apy", id="wrong-version"),
        pytest.param(replaced(0, r"\|AL\|NE\|", "|XX|NE|"), "MSH-15", id="msh15-bad"),
        pytest.param(replaced(0, r"0A1B2C3D4E5F-000123", "X" * 21), "MSH-10", id="msh10-too-long"),
        pytest.param(replaced(5, r"^OBX\|2\|", "OBX|7|"), "OBX-1", id="obx1-gap"),
        pytest.param(replaced(6, r"1\.0\.0\.2", "1.0.0.1"), "repeated", id="obx4-duplicate"),
        pytest.param(replaced(6, r"1\.0\.0\.2", "1.0.0.10"), "dictionary order", id="obx4-order-numeric"),
        pytest.param(replaced(4, r"\|X\|", "|R|"), "device row", id="device-row-not-X"),
        pytest.param(replaced(5, r"\|R\|", "|Z|"), "table 0085", id="obx11-bad"),
        pytest.param(replaced(5, r"^OBX\|2\|NM\|", "OBX|2|XX|"), "table 0125", id="obx2-bad"),
        pytest.param(replaced(1, r"\|F$", "|Q"), "PID-8", id="pid8-bad"),
        pytest.param(replaced(0, r"\^0A1B2CFFFE3D4E5F\^", "^0a1b2c^"), "MSH-3", id="msh3-bad-eui64"),
        pytest.param(
            replaced(3, r"\^0A1B2CFFFE3D4E5F\^EUI-64\|0A", "^GATEWAY^EUI-64|0A"), "OBR-2", id="obr2-bad-eui64"
        ),
        pytest.param(replaced(1, r"19700101", "1970-01-01"), "PID-7|hl7apy", id="pid7-iso"),
        pytest.param(replaced(2, r"PV1\|\|O\|", "PV1||Z|"), "PV1-2", id="pv1-2-bad"),
        pytest.param(replaced(1, r"DOE", "DO\\E"), "escape", id="bad-escape"),
        pytest.param(replaced(1, r"DOE", "DÖE"), "", id="non-ascii-ok-with-msh18"),
    ],
)
def test_oracle_rejects(segments: list[str], message: str) -> None:
    if not message:  # the positive control in this table: must pass
        validate_oru(wire(segments).encode())
        return
    with pytest.raises(AssertionError, match=message):
        validate_oru(wire(segments).encode())


def test_oracle_rejects_bad_bytes() -> None:
    good = wire(REFERENCE)
    with pytest.raises(AssertionError, match="LF"):
        validate_oru(good.replace("\r", "\n"))
    with pytest.raises(AssertionError, match="0x0B"):
        validate_oru("\x0b" + good + "\x1c\r")
    with pytest.raises(AssertionError, match="control character"):
        validate_oru(good.replace("DOE", "DO\tE"))
    with pytest.raises(AssertionError, match="not UTF-8"):
        validate_oru(good.encode().replace(b"DOE", b"D\xd6E"))
    no_msh18 = good.replace("|UNICODE UTF-8|", "||").replace("DOE", "DÖE")
    with pytest.raises(AssertionError, match="MSH-18"):
        validate_oru(no_msh18.encode())


def test_oracle_rejects_impossible_spo2_sentinel_but_not_a_real_pulse_of_127() -> None:
    spo2 = "OBX|6|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.0.0.5|127|262688^MDC_DIM_PERCENT^MDC^%^%^UCUM|||||R"
    with pytest.raises(AssertionError, match="sentinel"):
        validate_oru(wire([*REFERENCE, spo2]))
    pulse = [re.sub(r"\|67\|", "|127|", s) for s in REFERENCE]
    assert validate_oru(wire(pulse)).value("149546") == "127"


def test_oracle_checks_configured_ack_types() -> None:
    validate_oru(wire(REFERENCE), accept_ack_type="AL", application_ack_type="NE")
    with pytest.raises(AssertionError, match="MSH-15 'AL' != configured 'NE'"):
        validate_oru(wire(REFERENCE), accept_ack_type="NE")
