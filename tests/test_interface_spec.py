"""Issue 17 item 5: the generated interface specification cannot drift from what the agent sends.

For a configuration, the document (``vitals-agent interface-spec``) is parsed back: the fields it lists per
segment and the OBX-3/OBX-6 pairs of its code table. Independently, every configured device's sample
readings go through the running agent's pipeline (normalise, patient context, builder, outbox), unbound
and then bound, and the fields and codes of the queued messages are collected. Both sets must be equal:
everything documented is sent, and everything sent is documented (with words, not "(undocumented)").
"""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.kit.toml import toml_str
from tests.oracle import validate_oru
from vitals_agent import host
from vitals_agent.agent.patient.context import PatientDetails
from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.pipeline.interface_spec import (
    FIELD_DOCS,
    SAMPLE_PATIENT,
    build_spec,
    filled_fields,
    observation_rows,
    render_html,
    render_markdown,
)
from vitals_agent.agent.pipeline.normalize import normalise
from vitals_agent.agent.service import AgentService
from vitals_agent.cli import main
from vitals_agent.config.schema import Config, parse_config
from vitals_agent.drivers.samples import sample_readings

REPO = Path(__file__).resolve().parents[1]
# The rich configuration has an EKG folder device, which Windows refuses (tests/test_check_config.py).
EKG_FOLDER = pytest.mark.skipif(
    not host.HAS_NOFOLLOW_DIRS,
    reason="the rich configuration has an EKG folder: POSIX only (refused on Windows)",
)
GATEWAY = "0A1B2CFFFE3D4E5F"

RICH: dict[str, Any] = {
    "agent": {"facility": "CARDIO_CLINIC", "location": "CARDIO^EXAM 3", "timezone": "Europe/Berlin"},
    "ehr": {
        "application_ack_type": "AL",
        "app_ack_port": 2576,
        "charset": "8859/1",
        "max_message_bytes": 99999,
        "keep_connection_open": False,
        "code_system": "mdc+loinc",
    },
    "patient": {"assigning_authority": "CARDIO&2.999.7&ISO"},
    "devices": [
        {"id": "spo2-3", "driver": "masimo-ascii", "port": "/dev/ttyUSB0"},
        {"id": "nibp-3", "driver": "suntech-advantage", "port": "/dev/ttyUSB1"},
        {"id": "scale-3", "driver": "scale-ascii", "port": "/dev/ttyUSB2"},
        {"id": "bodycomp-3", "driver": "tanita", "port": "/dev/ttyUSB3"},
        {"id": "cuff-3", "driver": "ble-blood-pressure", "address": "00:09:1F:3D:4E:5F"},
        {"id": "temp-3", "driver": "ble-thermometer", "address": "00:09:1F:3D:4E:60"},
        {"id": "ekg-3", "driver": "aecg-xml", "folder": "/srv/ekg"},
    ],
}


def example_config(tmp_path: Path) -> Config:
    data = tomllib.loads((REPO / "deploy" / "agent.example.toml").read_text())
    data["agent"]["data_dir"] = str(tmp_path / "data")
    data["agent"]["gateway_eui64"] = GATEWAY
    return parse_config(data)


def rich_config(tmp_path: Path) -> Config:
    data = {**RICH, "agent": {**RICH["agent"], "data_dir": str(tmp_path / "data"), "gateway_eui64": GATEWAY}}
    return parse_config(data)


def documented(markdown: str) -> tuple[set[tuple[str, int]], set[tuple[str, str]], list[str]]:
    """What the document lists: fields, (OBX-3, OBX-6) pairs, sample messages."""
    fields = {(m[1], int(m[2])) for m in re.finditer(r"^\| ([A-Z][A-Z0-9]{2})-(\d+) \|", markdown, re.M)}
    table = markdown.split("## Code table", 1)[1].split("\n## ", 1)[0]
    codes = set()
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 5 and cells[1].startswith("`"):
            codes.add((cells[1].strip("`"), cells[2].strip("`")))
    samples = [
        "\r".join(block.strip().splitlines()) + "\r" for block in re.findall(r"```\n(.*?)```", markdown, re.S)
    ]
    return fields, codes, samples


async def agent_messages(config: Config) -> list[bytes]:
    """What the agent's own pipeline queues for every configured device's sample readings, unbound and
    then bound to the sample patient."""
    svc = AgentService(config)
    try:
        zone = svc.pipeline.profile.tz
        for bound in (False, True):
            if bound:
                svc.patients.set(
                    PatientDetails(
                        mrn=SAMPLE_PATIENT.mrn,
                        family=SAMPLE_PATIENT.family,
                        given=SAMPLE_PATIENT.given,
                        birth_date=SAMPLE_PATIENT.birth_date,
                        sex=SAMPLE_PATIENT.sex,
                        encounter=SAMPLE_PATIENT.encounter,
                    ),
                    Origin("cli"),
                )
            now = datetime.now(UTC)
            for dev_id, runtime in svc.runtimes.items():
                for reading in sample_readings(runtime.config.driver, dev_id, now=now, tz=zone):
                    ready = normalise(reading, max_clock_skew=svc.pipeline._skew(runtime.config))
                    await svc.pipeline.accept(runtime, ready)
        return [m.body for m in svc.outbox.peek(10_000, destination="ehr")]
    finally:
        svc.close()


def sent(messages: list[bytes], charset: str) -> tuple[set[tuple[str, int]], set[tuple[str, str]]]:
    fields: set[tuple[str, int]] = set()
    codes: set[tuple[str, str]] = set()
    for raw in messages:
        body = raw.decode(charset)
        fields |= set(filled_fields(body))
        codes |= {(obs, units) for _, obs, units in observation_rows(body)}
    return fields, codes


@pytest.mark.parametrize(
    "make", [example_config, pytest.param(rich_config, marks=EKG_FOLDER)], ids=["example", "rich"]
)
async def test_the_document_and_the_agent_agree_both_ways(tmp_path: Path, make: Any) -> None:
    config = make(tmp_path)
    markdown = render_markdown(build_spec(config, GATEWAY))
    doc_fields, doc_codes, samples = documented(markdown)
    messages = await agent_messages(config)
    assert messages
    charset = "latin-1" if config.ehr.charset == "8859/1" else "utf-8"
    agent_fields, agent_codes = sent(messages, charset)
    assert doc_fields - agent_fields == set(), "documented but never sent"
    assert agent_fields - doc_fields == set(), "sent but not documented"
    assert doc_codes == agent_codes
    assert "(undocumented)" not in markdown
    assert all(key in FIELD_DOCS for key in doc_fields)
    for sample in samples:  # the document's samples are real, STRICT-valid messages
        parsed = validate_oru(sample.encode(charset), version=config.ehr.hl7_version)
        assert parsed.msh[12] == config.ehr.hl7_version


@EKG_FOLDER
async def test_the_rich_document_covers_every_configured_driver_and_only_those(tmp_path: Path) -> None:
    config = rich_config(tmp_path)
    spec = build_spec(config, GATEWAY)
    markdown = render_markdown(spec)
    assert [d for d, _, _ in spec.drivers] == [d["id"] for d in RICH["devices"]]
    metrics = {r.metric for r in spec.codes if r.metric}
    assert {
        "spo2",
        "bp_systolic",
        "body_weight",
        "body_fat_pct",
        "body_temperature_oral",
        "ecg_qtc_interval",
    } <= metrics
    assert "body_temperature_tympanic" not in metrics  # only what the configured drivers send
    assert "MLLP over TCP to 127.0.0.1:2575 (plain TCP)" in markdown
    assert "one connection per message" in markdown
    assert "committed: the application ACK is awaited 300 s, then overdue" in markdown
    assert "as its own MLLP message to port 2576" in markdown
    assert "8859/1 (MSH-18)" in markdown and "99999 bytes" in markdown
    assert "`5110800123^UA-651BLE^00091FFFFE3D4E5F^EUI-64`" in markdown
    assert "| MSH-18 | Character set |" in markdown and "| NTE-3 | Comment |" in markdown
    assert "ecg_qtc_interval" in markdown and "plausible range" in markdown


def test_html_has_the_same_content(tmp_path: Path) -> None:
    spec = build_spec(example_config(tmp_path), GATEWAY)
    page = render_html(spec)
    assert page.startswith("<!doctype html>")
    for row in spec.fields:
        assert f"<td>{row.segment}-{row.number}</td>" in page
    assert "150456^MDC_PULS_OXIM_SAT_O2^MDC^59408-5" in page


async def test_command_writes_markdown_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = (REPO / "deploy" / "agent.example.toml").read_text()
    conf = tmp_path / "agent.toml"
    conf.write_text(source.replace('"/var/lib/vitals-agent"', toml_str(tmp_path / "data")))
    assert await main(["interface-spec", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# HL7 v2 interface specification: vitals-agent at EXAMPLE_CLINIC")
    target = tmp_path / "spec.html"
    assert (
        await main(["interface-spec", "--config", str(conf), "--format", "html", "--out", str(target)]) == 0
    )
    assert "wrote" in capsys.readouterr().out and target.read_text().startswith("<!doctype html>")
    assert not (tmp_path / "data").exists()  # nothing written into the agent's data folder


def test_the_committed_example_document_is_current(tmp_path: Path) -> None:
    """docs/interface-spec.example.md is the example configuration's document (regenerate with
    `vitals-agent interface-spec --config deploy/agent.example.toml --gateway-eui64 0A1B2CFFFE3D4E5F
    --out docs/interface-spec.example.md`)."""
    committed = (REPO / "docs" / "interface-spec.example.md").read_text()
    assert render_markdown(build_spec(example_config(tmp_path), GATEWAY)) == committed
