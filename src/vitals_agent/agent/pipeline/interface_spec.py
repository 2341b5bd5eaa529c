"""The HL7 interface specification for one site, generated from the builder and profile the agent uses.

``vitals-agent interface-spec --config F [--format md|html]`` writes what an EHR interface analyst needs
(issue 17 item 5): transport and acknowledgement behaviour as configured, the MSH/PID/PV1/OBR/NTE/OBX
fields the agent fills (each with an example taken from a message it built), the code table (MDC, LOINC,
UCUM, plausible ranges) for the configured drivers only, the patient modes and sample messages.

Nothing here is hand-kept per field value: :func:`build_spec` builds messages from every configured
device's sample readings (``drivers/samples.py``, decoded by the drivers, normalised as the pipeline does)
with ``message_profile(config)``, unbound and bound (held then late-associated when ``require_patient``),
and lists exactly the fields and codes those messages carry. The words that explain a field come from
:data:`FIELD_DOCS`; a field the builder fills that has no words there is listed as undocumented (and the
drift test fails). ``tests/test_interface_spec.py`` checks the document both ways against messages the
running agent's pipeline builds for the same configuration.
"""

from __future__ import annotations

import html
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources

from vitals_agent.agent.pipeline.normalize import normalise
from vitals_agent.agent.pipeline.profile import message_profile, message_zone
from vitals_agent.codes import tables
from vitals_agent.config.schema import Config
from vitals_agent.drivers.samples import SAMPLE_TIME, sample_readings
from vitals_agent.hl7.escape import unescape
from vitals_agent.hl7.oru import MessageProfile, PatientIdentity, oru_message
from vitals_agent.models import DeviceClass, Reading, ReadingFlag

# A patient for the bound examples: obviously not a real one.
SAMPLE_PATIENT = PatientIdentity(
    mrn="SPEC0012345", family="SPECIMEN", given="PAT", birth_date="19700101", sex="U", encounter="V0001"
)


def _field_docs() -> dict[tuple[str, int], tuple[str, str]]:
    text = resources.files("vitals_agent").joinpath("data/hl7_fields.toml").read_text("utf-8")
    return {
        (segment, int(number)): (doc["name"], doc["content"])
        for segment, fields in tomllib.loads(text).items()
        for number, doc in fields.items()
    }


# (segment, field) -> (name, what the agent puts there), from ``data/hl7_fields.toml``. The builder decides
# *whether* a field is filled.
FIELD_DOCS = _field_docs()

SEGMENT_ORDER = ("MSH", "PID", "PV1", "OBR", "NTE", "OBX")
EXAMPLE_MAX = 90  # characters of an example value shown in the field tables


@dataclass(frozen=True)
class FieldRow:
    segment: str
    number: int
    name: str
    description: str
    example: str  # raw ER7 as sent (shortened)


@dataclass(frozen=True)
class CodeRow:
    observation: str  # OBX-3 as sent
    units: str  # OBX-6 as sent ("" for rows without units)
    metric: str  # the agent's metric key ("" for device/other rows)
    range: str  # plausible min..max in the canonical unit ("" when none)
    value_type: str  # OBX-2


@dataclass(frozen=True)
class SampleMessage:
    title: str
    body: str  # ER7, segments separated by CR


@dataclass
class InterfaceSpec:
    title: str
    transport: list[tuple[str, str]]
    fields: list[FieldRow]
    codes: list[CodeRow]
    modes: list[str]
    samples: list[SampleMessage]
    drivers: list[tuple[str, str, str]]  # (device id, driver, identity example)
    messages: list[str] = field(default_factory=list)  # every message the spec was built from


def _segments(body: str) -> list[list[str]]:
    out = []
    for text in body.split("\r"):
        if not text:
            continue
        if text.startswith("MSH"):
            out.append(["MSH", "|", text[4:8], *text[9:].split("|")])
        else:
            out.append(text.split("|"))
    return out


def filled_fields(body: str) -> dict[tuple[str, int], str]:
    """(segment, field) -> the first non-empty value in ``body`` (raw ER7)."""
    found: dict[tuple[str, int], str] = {}
    for fields in _segments(body):
        for n, value in enumerate(fields[1:], start=1):
            if value:
                found.setdefault((fields[0], n), value)
    return found


def observation_rows(body: str) -> list[tuple[str, str, str]]:
    """(OBX-2, OBX-3, OBX-6) of every OBX in ``body``."""
    rows = []
    for fields in _segments(body):
        if fields[0] == "OBX":
            padded = [*fields, "", "", "", "", "", "", ""]
            rows.append((padded[2], padded[3], padded[6]))
    return rows


def _readings(config: Config) -> list[tuple[str, str, Reading]]:
    """(device id, driver, normalised sample reading) for every enabled device that makes readings."""
    out = []
    tz = message_zone(config)
    for dev in config.devices:
        if not dev.enabled:
            continue
        skew = timedelta(seconds=dev.max_clock_skew_seconds or config.agent.max_clock_skew_seconds)
        for reading in sample_readings(dev.driver, dev.id, tz=tz) if dev.driver != "barcode" else []:
            out.append((dev.id, dev.driver, normalise(reading, max_clock_skew=skew)))
    return out


def build_messages(config: Config, profile: MessageProfile) -> list[tuple[str, str]]:
    """(title, ER7) of every message the spec describes: each sample reading unbound (held, then
    late-associated, with ``require_patient``) and bound to :data:`SAMPLE_PATIENT`."""
    out: list[tuple[str, str]] = []
    held = config.patient.require_patient
    for n, (device_id, driver, reading) in enumerate(_readings(config), start=1):
        first, second = sample_control_id(2 * n - 1), sample_control_id(2 * n)
        if held:
            late = reading.with_updates(flags=(*reading.flags, ReadingFlag.LATE_ASSOCIATED))
            unbound = oru_message(
                late, profile, control_id=first, created_at=SAMPLE_TIME, patient=SAMPLE_PATIENT
            )
            out.append(
                (f"{device_id} ({driver}): held until the patient was set", _text(unbound.body, profile))
            )
        elif reading.device_class is not DeviceClass.ECG or reading.source_patient is None:
            unbound = oru_message(reading, profile, control_id=first, created_at=SAMPLE_TIME)
            out.append((f"{device_id} ({driver}): unbound (no patient set)", _text(unbound.body, profile)))
        bound = oru_message(
            reading, profile, control_id=second, created_at=SAMPLE_TIME, patient=SAMPLE_PATIENT
        )
        out.append((f"{device_id} ({driver}): bound to the room's patient", _text(bound.body, profile)))
    return out


def sample_control_id(n: int) -> str:
    """A fixed MSH-10 of the agent's form (11 hex digits of milliseconds at :data:`SAMPLE_TIME`, 9 more)."""
    millis = int(SAMPLE_TIME.timestamp() * 1000)
    return f"{millis & 0xFFFFFFFFFFF:011X}{n:09X}"


def _text(body: bytes, profile: MessageProfile) -> str:
    codec = {"UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "ASCII": "ascii"}[profile.charset]
    return body.decode(codec)


def _metric_of(observation: str) -> str:
    comps = [unescape(c) for c in observation.split("^")]
    for i in (0, 3):
        if len(comps) > i + 2:
            code, system = comps[i], comps[i + 2]
            for info in tables().metrics.values():
                if (system == "MDC" and info.mdc is not None and str(info.mdc) == code) or (
                    system == "99VITALS" and info.refid == code
                ):
                    return info.key
    return ""


def code_rows(messages: Iterable[str]) -> list[CodeRow]:
    seen: dict[tuple[str, str], CodeRow] = {}
    for body in messages:
        for value_type, observation, units in observation_rows(body):
            if (observation, units) in seen:
                continue
            metric = _metric_of(observation) if value_type == "NM" else ""
            span = ""
            if metric:
                info = tables().metric(metric)
                span = f"{info.minimum} to {info.maximum} {info.unit}"
            seen[(observation, units)] = CodeRow(observation, units, metric, span, value_type or "(device)")
    return sorted(seen.values(), key=lambda r: (not r.metric, r.metric, r.value_type, r.observation))


def field_rows(messages: Iterable[str]) -> list[FieldRow]:
    found: dict[tuple[str, int], str] = {}
    for body in messages:
        for key, value in filled_fields(body).items():
            found.setdefault(key, value)
    rows = []
    for (segment, number), value in found.items():
        name, description = FIELD_DOCS.get((segment, number), ("(undocumented)", "(undocumented)"))
        example = value if len(value) <= EXAMPLE_MAX else value[: EXAMPLE_MAX - 1] + "…"
        rows.append(FieldRow(segment, number, name, description, example))
    order = {s: i for i, s in enumerate(SEGMENT_ORDER)}
    return sorted(rows, key=lambda r: (order.get(r.segment, 99), r.number))


def _transport(config: Config, profile: MessageProfile) -> list[tuple[str, str]]:
    ehr = config.ehr
    enhanced = ehr.application_ack_type != "NE"
    link = f"MLLP over TCP to {ehr.host}:{ehr.port}" + (" with TLS" if ehr.tls else " (plain TCP)")
    connections = "kept open for many messages"
    if not ehr.keep_connection_open:
        connections = "one connection per message (closed after its ACK)"
    backoff = f"{ehr.backoff_min_seconds:g} to {ehr.backoff_max_seconds:g} s"
    commit = "delivered"
    if enhanced:
        commit = (
            f"committed: the application ACK is awaited {ehr.app_ack_timeout_seconds:g} s, then overdue "
            "(reported; the site may re-send it with the same MSH-10, or stop waiting and dead-letter it)"
        )
    rows = [
        ("Transport", link),
        ("Connections", connections),
        ("Order", "one message in flight, oldest first; a re-send keeps MSH-10 and MSH-7"),
        ("MSH-15 / MSH-16", f"{ehr.accept_ack_type} / {ehr.application_ack_type}"),
        (
            "ACK expected",
            f"within {ehr.ack_timeout_seconds:g} s, MSA-2 = the message's MSH-10; else re-sent after a "
            f"back-off of {backoff}",
        ),
        ("AA", "delivered (also as the application ACK after a CA)" if enhanced else "delivered"),
        ("CA", commit),
        ("AE / CE", f"retried up to {ehr.max_attempts} times, then dead-lettered (later messages go on)"),
        ("AR / CR, unknown codes", "dead-lettered at once; the receiver's MSA-3/ERR text is kept for review"),
    ]
    if enhanced:
        where = "on the same connection (no inbound port: `[ehr] app_ack_port`)"
        if ehr.app_ack_port is not None:
            where = (
                f"on the same connection, or as its own MLLP message to port {ehr.app_ack_port} "
                f"({ehr.app_ack_host}), answered `MSA|CA`"
            )
        rows.append(("Application ACK", f"{where}; AA completes, AE/AR dead-letter with an alert"))
        if ehr.application_ack_type == "ER":
            rows.append(("MSH-16 ER", "no application error within the timeout means success"))
    charset = f"{profile.charset} (MSH-18)"
    if profile.charset != "UNICODE UTF-8":
        how = "HL7 hex escapes of their UTF-8 bytes"
        if profile.unrepresentable == "marker":
            how = f"replaced with {profile.marker!r} (counted)"
        charset += f"; characters it cannot carry: {how}"
    size = "none configured"
    if profile.max_message_bytes:
        size = f"{profile.max_message_bytes} bytes; a larger message: {profile.oversize}"
    rows += [
        ("Character set", charset),
        ("Size limit", size),
        ("HL7 version", profile.version),
        ("Processing id", profile.processing_id),
    ]
    return rows


def _modes(config: Config) -> list[str]:
    held = config.patient.require_patient
    pdq = ", confirmed against the EHR by PDQ" if config.pdq is not None else ""
    return [
        f"**Bound** (a patient is set: wristband scan, `patient set`, the page{pdq}): PID-3 the MRN under "
        "the assigning authority (`MR`), PID-5/7/8 and PV1-19 from the patient context, PID-31 `N`.",
        "**Unbound** (no patient set"
        + (", not used here: `require_patient` is on" if held else "")
        + "): PID-3 `TMP-<device EI-1>@<EI-3>-<UTC time>` (`PI`), PID-5 `^^^^^^U`, PID-31 `Y`, the room "
        "in PV1-3 and the device in OBX-18, so the engine can file by room and device.",
        "**Held** (`[patient] require_patient = true`; "
        + ("on here" if held else "off here")
        + "): readings wait durably until a patient is set, then go bound with an NTE `late-associated: "
        f"held until patient was set`; after {config.patient.hold_timeout_minutes:g} minutes they are "
        "dropped with an audit record.",
        "**Cart patient** (EKG carts that name their own patient): PID from the cart's file, PID-31 empty; "
        "a room bound to another patient parks the message for review instead of sending it.",
    ]


def build_spec(config: Config, gateway_eui64: str) -> InterfaceSpec:
    profile = message_profile(config, gateway_eui64)
    built = build_messages(config, profile)
    messages = [body for _, body in built]
    drivers = []
    for dev in config.devices:
        if dev.enabled and dev.driver != "barcode":
            readings = sample_readings(dev.driver, dev.id)
            ident = readings[0].device.equipment_id(profile.gateway_eui64).text() if readings else ""
            drivers.append((dev.id, dev.driver, ident))
    samples: list[SampleMessage] = []
    devices_shown: set[str] = set()
    bound_shown = False
    for title, body in built:  # each device's first message (unbound or held), and one bound message
        device = title.split(" ", 1)[0]
        bound = "bound to the room's patient" in title
        if bound and not bound_shown:
            bound_shown = True
        elif bound or device in devices_shown:
            continue
        else:
            devices_shown.add(device)
        samples.append(SampleMessage(title, body))
    location = config.agent.location or config.agent.facility
    return InterfaceSpec(
        title=f"HL7 v2 interface specification: vitals-agent at {config.agent.facility} ({location})",
        transport=_transport(config, profile),
        fields=field_rows(messages),
        codes=code_rows(messages),
        modes=_modes(config),
        samples=samples,
        drivers=drivers,
        messages=messages,
    )


# --- rendering -------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def render_markdown(spec: InterfaceSpec) -> str:
    out = [f"# {spec.title}", ""]
    out += [
        "Generated by `vitals-agent interface-spec` from the agent's own message builder and this site's "
        "configuration (IHE PCD-01 ORU^R01). Examples are real messages for sample readings.",
        "",
        "## Transport and acknowledgements",
        "",
        "| item | behaviour |",
        "|---|---|",
    ]
    out += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in spec.transport]
    out += ["", "## Devices", "", "| device | driver | OBX-18 identity (example) |", "|---|---|---|"]
    out += [f"| {_md_cell(d)} | {_md_cell(r)} | {_code(_md_cell(i))} |" for d, r, i in spec.drivers]
    out += ["", "## Segments and fields", ""]
    for segment in SEGMENT_ORDER:
        rows = [r for r in spec.fields if r.segment == segment]
        if not rows:
            continue
        out += [f"### {segment}", "", "| field | name | content | example |", "|---|---|---|---|"]
        out += [
            f"| {segment}-{r.number} | {_md_cell(r.name)} | {_md_cell(r.description)} | "
            f"{_code(_md_cell(r.example))} |"
            for r in rows
        ]
        out.append("")
    out += ["## Code table (configured drivers)", "", "| OBX-2 | OBX-3 | OBX-6 | metric | plausible range |"]
    out.append("|---|---|---|---|---|")
    out += [
        f"| {r.value_type} | {_code(_md_cell(r.observation))} | {_code(_md_cell(r.units))} | "
        f"{r.metric} | {r.range} |"
        for r in spec.codes
    ]
    out += ["", "## Patient modes", ""]
    out += [f"* {m}" for m in spec.modes]
    out += ["", "## Sample messages", ""]
    for sample in spec.samples:
        out += [f"### {sample.title}", "", "```", *[s for s in sample.body.split("\r") if s], "```", ""]
    return "\n".join(out).rstrip() + "\n"


def render_html(spec: InterfaceSpec) -> str:
    e = html.escape

    def table(head: Sequence[str], rows: Iterable[Sequence[str]], code: Sequence[int] = ()) -> str:
        cells = "".join(f"<th>{e(h)}</th>" for h in head)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td><code>{e(c)}</code></td>" if i in code and c else f"<td>{e(c)}</td>"
                for i, c in enumerate(row)
            )
            + "</tr>"
            for row in rows
        )
        return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"

    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(spec.title)}</title>",
        "<style>body{font-family:sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .5rem;"
        "vertical-align:top;text-align:left}code,pre{font-size:.85rem}pre{background:#f6f6f6;padding:1rem;"
        "overflow-x:auto}</style></head><body>",
        f"<h1>{e(spec.title)}</h1>",
        "<p>Generated by <code>vitals-agent interface-spec</code> from the agent's own message builder and "
        "this site's configuration (IHE PCD-01 ORU^R01). Examples are real messages for sample readings.</p>",
        "<h2>Transport and acknowledgements</h2>",
        table(("item", "behaviour"), spec.transport),
        "<h2>Devices</h2>",
        table(("device", "driver", "OBX-18 identity (example)"), spec.drivers, code=(2,)),
        "<h2>Segments and fields</h2>",
    ]
    for segment in SEGMENT_ORDER:
        rows = [r for r in spec.fields if r.segment == segment]
        if rows:
            parts.append(f"<h3>{segment}</h3>")
            parts.append(
                table(
                    ("field", "name", "content", "example"),
                    [(f"{r.segment}-{r.number}", r.name, r.description, r.example) for r in rows],
                    code=(3,),
                )
            )
    parts.append("<h2>Code table (configured drivers)</h2>")
    parts.append(
        table(
            ("OBX-2", "OBX-3", "OBX-6", "metric", "plausible range"),
            [(r.value_type, r.observation, r.units, r.metric, r.range) for r in spec.codes],
            code=(1, 2),
        )
    )
    parts.append("<h2>Patient modes</h2><ul>")
    parts += [f"<li>{e(m.replace('**', ''))}</li>" for m in spec.modes]
    parts.append("</ul><h2>Sample messages</h2>")
    for sample in spec.samples:
        lines = "\n".join(s for s in sample.body.split("\r") if s)
        parts.append(f"<h3>{e(sample.title)}</h3><pre>{e(lines)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
