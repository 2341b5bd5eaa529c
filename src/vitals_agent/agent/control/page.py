"""What a person reads: the status page (HTML) and its terminal form (``vitals-agent status``).

Pure functions of the status snapshot, the patient snapshot and the time: no I/O besides reading the page
template from the package once. Every value is HTML-escaped; the page has no script.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import resources
from string import Template
from typing import Any

from vitals_agent.codes import tables

# Short labels a nurse knows, by metric key (codes.md); any other metric shows its table name.
METRIC_LABELS = {
    "bp_systolic": "Systolic",
    "bp_diastolic": "Diastolic",
    "bp_mean": "MAP",
    "pulse_rate": "Pulse",
    "bp_cuff_pressure": "Cuff",
    "spo2": "SpO2",
    "pulse_rate_oximeter": "Pulse",
    "perfusion_index": "PI",
    "pulse_amplitude_index": "PAI",
    "spco": "SpCO",
    "spmet": "SpMet",
    "pvi": "PVI",
    "body_temperature": "Temp",
    "body_temperature_oral": "Temp (oral)",
    "body_temperature_axillary": "Temp (axillary)",
    "body_temperature_tympanic": "Temp (tympanic)",
    "body_temperature_rectal": "Temp (rectal)",
    "body_temperature_ear": "Temp (ear)",
    "body_temperature_core": "Temp (core)",
    "body_temperature_skin": "Temp (skin)",
    "body_weight": "Weight",
    "body_height": "Height",
    "bmi": "BMI",
    "body_fat_pct": "Body fat",
    "respiratory_rate": "Resp",
    "ecg_heart_rate": "HR",
    "ecg_pr_interval": "PR",
    "ecg_qrs_duration": "QRS",
    "ecg_qt_interval": "QT",
    "ecg_qtc_interval": "QTc",
    "ecg_qtc_bazett": "QTc (Bazett)",
    "ecg_qtc_fridericia": "QTc (Fridericia)",
    "ecg_p_duration": "P",
    "ecg_rr_interval": "RR",
    "ecg_p_axis": "P axis",
    "ecg_qrs_axis": "QRS axis",
    "ecg_t_axis": "T axis",
    "ecg_atrial_rate": "Atrial rate",
    "pain_score": "Pain",
    "oxygen_flow_rate": "O2 flow",
}

# UCUM codes as people write them.
UNIT_LABELS = {
    "mm[Hg]": "mmHg",
    "Cel": "\u00b0C",
    "[degF]": "\u00b0F",
    "[lb_av]": "lb",
    "[in_i]": "in",
    "1": "",
    "{score}": "/10",
}


# ------------------------------------------------------------------------------------------ times


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def when(value: Any, now: datetime) -> str:
    """``13:05:02 (2 min ago)`` in the host's local time; the date too when it is not today's;
    ``never`` for None."""
    moment = _parse_time(value)
    if moment is None:
        return "never"
    local = moment.astimezone()
    seconds = (now - moment).total_seconds()
    if seconds < 0:
        rel = "in " + _span(-seconds)
    elif seconds < 5:
        rel = "just now"
    else:
        rel = _span(seconds) + " ago"
    stamp = f"{local:%H:%M:%S}" if local.date() == now.astimezone().date() else f"{local:%Y-%m-%d %H:%M:%S}"
    return f"{stamp} ({rel})"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 5400:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{int(seconds // 86400)} d"


# ------------------------------------------------------------------------------------------ values


def metric_label(key: str) -> str:
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    info = tables().metrics.get(key)
    return info.name if info is not None else key


def _metric_order(key: str) -> tuple[int, str]:
    order = list(tables().metrics)
    return (order.index(key), key) if key in order else (len(order), key)


def _value_text(text: str) -> str:
    value, _, unit = str(text).rpartition(" ")
    if not value:
        return str(text)
    shown = UNIT_LABELS.get(unit, unit)
    return f"{value} {shown}".rstrip() if shown not in {"%", "\u00b0C", "\u00b0F"} else f"{value}{shown}"


def reading_text(dev: Mapping[str, Any]) -> str:
    """``SpO2 97%, Pulse 72 /min``: the device's last reading with labels a person knows."""
    values = dev.get("last_reading") or {}
    keys = sorted(values, key=_metric_order)
    return ", ".join(f"{metric_label(k)} {_value_text(values[k])}" for k in keys)


def device_state(dev: Mapping[str, Any]) -> str:
    """``connected``, ``disconnected``, or a state the runtime reports (e.g. ``silent``)."""
    state = dev.get("state")
    if isinstance(state, str) and state:
        return state
    return "connected" if dev.get("connected") else "disconnected"


def device_counts(dev: Mapping[str, Any]) -> str:
    """``overlong lines discarded 2, files failed 1``: a device's problem counters that are not zero."""
    counts: list[tuple[str, Any]] = [("overlong lines discarded", dev.get("discarded_lines"))]
    counters = dev.get("counters")
    if isinstance(counters, Mapping):
        counts += [(str(key).replace("_", " "), value) for key, value in sorted(counters.items())]
    return ", ".join(
        f"{label} {value}"
        for label, value in counts
        if isinstance(value, int) and not isinstance(value, bool) and value
    )


def ehr_line(status: Mapping[str, Any], now: datetime) -> tuple[bool, str]:
    """(reachable?, one line): the EHR link as the sender last found it, whatever the outbox holds."""
    return link_line(_destination(status, "ehr"), "EHR", "ACK", now)


def fhir_line(status: Mapping[str, Any], now: datetime) -> tuple[bool, str] | None:
    """The FHIR server's line, when ``[fhir]`` is enabled (None otherwise)."""
    destinations = status.get("destinations") or {}
    if "fhir" not in destinations:
        return None
    return link_line(destinations["fhir"], "FHIR server", "answer", now)


def _destination(status: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    destinations = status.get("destinations") or {}
    if name in destinations:
        return dict(destinations[name])
    return dict(status.get("sender") or {}) if not destinations else {}


def has_ehr(status: Mapping[str, Any]) -> bool:
    """Whether the EHR (HL7 v2) destination is enabled (a status from before destinations: yes)."""
    destinations = status.get("destinations") or {}
    return not destinations or "ehr" in destinations


def link_line(sender: Mapping[str, Any], name: str, answer: str, now: datetime) -> tuple[bool, str]:
    peer = sender.get("peer") or name
    if sender.get("consecutive_failures"):
        error = sender.get("last_error") or "connection failed"
        return False, f"{peer}: UNREACHABLE ({error}; last try {when(sender.get('last_error_at'), now)})"
    if sender.get("connected"):
        return True, f"{peer}: connected; last {answer} {when(sender.get('last_ack_at'), now)}"
    if sender.get("last_ack_at"):
        return True, f"{peer}: idle; last {answer} {when(sender.get('last_ack_at'), now)}"
    return True, f"{peer}: not contacted yet (nothing to send)"


def app_ack_line(status: Mapping[str, Any]) -> tuple[bool, str] | None:
    """Enhanced acknowledgement: messages the EHR committed that still owe their application ACK (None
    when there are none). Overdue ones (past app_ack_timeout_seconds) are named by MSH-10."""
    sender = _destination(status, "ehr")
    waiting = int(sender.get("awaiting_app_ack") or 0)
    overdue = list(sender.get("app_ack_overdue") or [])
    if not waiting:
        return None
    text = f"{waiting} message(s) committed by the EHR, awaiting the application ACK"
    if overdue:
        shown = ", ".join(str(c) for c in overdue[:5]) + (" ..." if len(overdue) > 5 else "")
        text += f"; {len(overdue)} OVERDUE: {shown}"
    return not overdue, text


def patient_line(p: Mapping[str, Any], now: datetime) -> str:
    """One line about the room's patient (masked unless the snapshot was revealed)."""
    if not p.get("set"):
        if p.get("require_patient"):
            line = "No patient set: readings are HELD until a patient is set (scan a wristband)"
        else:
            line = "No patient set: readings are sent unbound (by room)"
    else:
        who = str(p.get("mrn") or "")
        if p.get("name"):
            who += f" ({p['name']})"
        if p.get("revealed"):
            extra = [f"{k} {p[k]}" for k in ("birth_date", "sex", "encounter") if p.get(k)]
            if extra:
                who += " " + ", ".join(extra).replace("birth_date", "born")
        said = [str(p[k]) for k in ("client", "source") if p.get(k)]
        via = str(p.get("channel") or "?") + (f" ({', '.join(said)})" if said else "")
        set_at, expires = when(p.get("set_at"), now), when(p.get("expires_at"), now)
        line = f"Patient {who}: set via {via} at {set_at}, expires {expires}"
        if p.get("verified") == "ehr":
            line += "; confirmed against the EHR"
        elif p.get("verified") == "unverified":
            line += "; UNVERIFIED: bound as typed while the EHR could not be asked"
    if p.get("held"):
        line += f"; {p['held']} held reading(s), oldest {when(p.get('oldest_held_at'), now)}"
    return line


WAITING_LINE = "No patient bound yet: readings are HELD until the patient is confirmed or cancelled"


def pending_line(v: Mapping[str, Any], now: datetime) -> str:
    """One line about a pending patient confirmation (``[pdq]``), masked unless the view was revealed."""
    held = f"; {v['held']} reading(s) held until then" if v.get("held") else ""
    if v.get("state") != "confirm":
        return f"Asking the EHR about MRN {v.get('mrn')} ...{held}"
    candidates = list(v.get("candidates") or [])
    expires = when(v.get("expires_at"), now)
    if len(candidates) == 1:
        return (
            f"Waiting for confirmation: {candidates[0].get('line')} (MRN {v.get('mrn')}); "
            f"confirm with: vitals-agent patient confirm; expires {expires}{held}"
        )
    listed = "; ".join(f"{c.get('n')}) {c.get('line')}" for c in candidates)
    return (
        f"Waiting for a choice: {len(candidates)} patients with MRN {v.get('mrn')} in the EHR: {listed}; "
        f"choose with: vitals-agent patient confirm --pick N; expires {expires}{held}"
    )


def _sex(code: Any) -> str:
    names = {
        "F": "female",
        "M": "male",
        "O": "other",
        "U": "unknown",
        "A": "ambiguous",
        "N": "not applicable",
    }
    return f"{names.get(str(code), str(code))} ({code})" if code else "not given"


def pending_html(v: Mapping[str, Any], form_token: str, now: datetime) -> str:
    """The confirmation card: what the EHR answered, in full, with Confirm (per candidate) and Cancel."""
    token = f'<input type="hidden" name="csrf" value="{_e(form_token)}">'
    held = (
        f'<p class="muted">{_e(v["held"])} reading(s) taken since are held until you confirm or cancel.</p>'
        if v.get("held")
        else ""
    )
    if v.get("state") != "confirm":
        return (
            '<div id="pending" class="card pending"><p>Asking the EHR who MRN '
            f"<b>{_e(v.get('mrn'))}</b> is &hellip;</p>{held}</div>"
        )
    candidates = list(v.get("candidates") or [])
    ask = (
        "Is this the patient in the room?"
        if len(candidates) == 1
        else f"{len(candidates)} patients have this MRN in the EHR. Which one is in the room?"
    )
    if v.get("more"):
        ask += " (The EHR has more; check the wristband.)"
    rows = []
    for c in candidates:
        n = int(c.get("n") or 0)
        visit = f" &middot; visit {_e(c['encounter'])}" if c.get("encounter") else ""
        rows.append(
            f'<div class="candidate" data-n="{n}">'
            f'<div><span class="who">{_e(c.get("name") or "(no name)")}</span><br>'
            f'born <b class="dob">{_e(c.get("birth_date") or "not given")}</b> &middot; '
            f'sex <b class="sex">{_e(_sex(c.get("sex")))}</b> &middot; MRN {_e(c.get("mrn"))}{visit}</div>'
            f'<form method="post" action="/patient/confirm">{token}'
            f'<input type="hidden" name="pick" value="{n}">'
            f'<button type="submit" class="btn confirm" id="confirm-{n}">Confirm</button></form></div>'
        )
    cancel = (
        f'<form method="post" action="/patient/cancel">{token}'
        '<button type="submit" class="btn cancel" id="cancel">Cancel</button></form>'
    )
    return (
        f'<div id="pending" class="card pending"><p class="ask">Wristband / entered MRN '
        f"<b>{_e(v.get('mrn'))}</b>. {_e(ask)}</p>{''.join(rows)}"
        f'<div class="actions"><span class="muted">Expires {_e(when(v.get("expires_at"), now))}.</span>'
        f"{cancel}</div>{held}</div>"
    )


def _counters(status: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Problem counters of the agent that are not zero (label, count)."""
    named = [("refused", "reading(s) refused"), ("parked", "message(s) parked for review")]
    out = []
    for key, label in named:
        value = status.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value:
            out.append((label, value))
    encoding = status.get("encoding") or {}
    for key, label in (
        ("escaped", "character(s) sent as HL7 escapes ([ehr] charset)"),
        ("replaced", "character(s) replaced with the marker ([ehr] charset)"),
        ("attachments_dropped", "attachment(s) left out ([ehr] max_message_bytes)"),
    ):
        value = encoding.get(key)
        if isinstance(value, int) and value:
            out.append((label, value))
    return out


# ------------------------------------------------------------------------------------------ alerts


def alert_lines(status: Mapping[str, Any], now: datetime) -> list[str]:
    """One line per alert that is on (room, device and counts only: the alert monitor has no patient
    data to give)."""
    return [
        f"{a.get('summary') or a.get('alert')}, since {when(a.get('since'), now)}"
        for a in status.get("alerts") or []
    ]


def alerts_html(status: Mapping[str, Any], now: datetime) -> str:
    lines = alert_lines(status, now)
    if not lines:
        return ""
    items = "".join(f'<p class="alert">&#9888; {_e(line)}</p>' for line in lines)
    return f'<div id="alerts" class="card" role="alert">{items}</div>'


# ------------------------------------------------------------------------------------------ terminal


def review_line(review: Mapping[str, Any]) -> str:
    """``Review (confirm): 2 reading(s) waiting; clinician ANNA NURSE (4711)``."""
    clinician = review.get("clinician") or {}
    if clinician.get("set"):
        name = clinician.get("name")
        who = f"clinician {name} ({clinician.get('id')})" if name else f"clinician {clinician.get('id')}"
    else:
        who = "no clinician signed in"
    waiting = int(review.get("pending") or 0) + int(review.get("awaiting_confirmation") or 0)
    return f"Review ({review.get('mode')}): {waiting} reading(s) waiting; {who}"


def render_text(status: Mapping[str, Any], patient: Mapping[str, Any], now: datetime | None = None) -> str:
    """The terminal form of the status page (``vitals-agent status``)."""
    now = now or datetime.now(UTC)
    pending = status.get("pending")
    out = [
        f"vitals-agent {status.get('version', '?')}  {status.get('facility', '')} "
        f"{status.get('location', '')}".rstrip(),
        f"started {when(status.get('started_at'), now)}",
        *[f"ALERT: {line}" for line in alert_lines(status, now)],
        "",
        WAITING_LINE if pending and not patient.get("set") else patient_line(patient, now),
        *([pending_line(pending, now)] if pending else []),
        *([str(status["lookup_notice"])] if status.get("lookup_notice") else []),
        *([review_line(status["review"])] if isinstance(status.get("review"), Mapping) else []),
        "",
        "Devices:",
    ]
    devices = list(status.get("devices") or [])
    if not devices:
        out.append("  (none configured)")
    for dev in devices:
        state = device_state(dev)
        state = state if state == "connected" else state.upper()
        detail = f" ({dev['detail']})" if dev.get("detail") else ""
        battery = f", battery {dev['battery_percent']}%" if dev.get("battery_percent") is not None else ""
        out.append(f"  {dev.get('id')} [{dev.get('driver')}]: {state}{detail}{battery}")
        if dev.get("equipment"):
            out.append(f"    identity {dev['equipment']}")
        out.append(
            f"    last seen {when(dev.get('last_seen'), now)}; decode errors {dev.get('decode_failures', 0)}"
        )
        reading = reading_text(dev)
        out.append(
            f"    last reading {when(dev.get('last_reading_at'), now)}" + (f": {reading}" if reading else "")
        )
        counts = device_counts(dev)
        if counts:
            out.append(f"    {counts}")
    outbox = status.get("outbox") or {}
    out.append("")
    if has_ehr(status):
        out.append(f"EHR {ehr_line(status, now)[1]}")
        awaiting = app_ack_line(status)
        if awaiting is not None:
            out.append(f"EHR {awaiting[1]}")
    fhir = fhir_line(status, now)
    if fhir is not None:
        out.append(f"FHIR {fhir[1]}")
    out.append(f"Outbox: {outbox.get('depth', 0)} waiting, {outbox.get('dead', 0)} dead letter(s)")
    shown = [("ehr", "EHR")] if has_ehr(status) else []
    if fhir is not None:
        shown.append(("fhir", "FHIR"))
    for name, label in shown:
        sender = _destination(status, name)
        out.append(
            f"Last {label} error: "
            + (
                f"{sender['last_error']} ({when(sender.get('last_error_at'), now)})"
                if sender.get("last_error")
                else "none"
            )
        )
    out += [f"{count} {label}" for label, count in _counters(status)]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------ page


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


@functools.cache
def _page_template() -> Template:
    """The status page template, read from the package once (the page reloads every few seconds)."""
    return Template(resources.files("vitals_agent.data").joinpath("status.html").read_text("utf-8"))


def render_html(
    status: Mapping[str, Any],
    patient: Mapping[str, Any],
    *,
    refresh_seconds: int = 5,
    now: datetime | None = None,
    pending: Mapping[str, Any] | None = None,
    form_token: str | None = None,
    notice: str | None = None,
    review_panel: str = "",
    refreshing: bool = True,
) -> str:
    """The status page. Every value is HTML-escaped; no script; refreshes with a meta refresh.

    ``pending`` (revealed) and ``form_token``: a patient confirmation waiting for the person at the
    workstation, shown in full with its Confirm and Cancel forms. While it is shown the page does not
    refresh (a reload would reset the view of the person deciding: scroll, focus, a button half-pressed);
    it reloads once, just after the confirmation expires, to show what became of it. ``review_panel``: the
    clinician review (review_page.py, already escaped); ``refreshing``: False while someone types into its
    forms."""
    now = now or datetime.now(UTC)
    revealed = bool(patient.get("revealed"))
    # A revealed page falls back to the masked page after 30 s; the masked one just refreshes.
    refresh = f"{max(refresh_seconds, 30)};url=/" if revealed else f"{refresh_seconds};url=/"
    if pending is not None and form_token is not None and pending.get("state") == "confirm":
        expires = _parse_time(pending.get("expires_at"))
        if expires is not None:
            left = math.ceil((expires - now).total_seconds()) + 1
            refresh = f"{max(refresh_seconds, left)};url=/"
    line = patient_line(patient, now)
    if not patient.get("set"):
        cls = "held" if patient.get("require_patient") else "unbound"
        action = ""
        if pending is not None:
            cls, line = "held", WAITING_LINE
    else:
        cls = "bound"
        action = (
            '<a class="btn" href="/">Hide</a>' if revealed else '<a class="btn" href="/?reveal=1">Reveal</a>'
        )
    patient_html = f'<div id="patient" class="card {cls}"><p>{_e(line)}</p>{action}</div>'
    if pending is not None and form_token is not None:
        patient_html = pending_html(pending, form_token, now) + patient_html
    elif notice:
        patient_html = (
            f'<div id="lookup-notice" class="card pending"><p>{_e(notice)}</p></div>' + patient_html
        )

    rows = []
    for dev in status.get("devices") or []:
        state = device_state(dev)
        dot = state if state in {"connected", "disconnected"} else "other"
        detail = f'<br><span class="muted">{_e(dev["detail"])}</span>' if dev.get("detail") else ""
        counts = device_counts(dev)
        if counts:
            detail += f'<br><span class="counts">{_e(counts)}</span>'
        battery = f"{_e(dev['battery_percent'])}%" if dev.get("battery_percent") is not None else "&ndash;"
        reading = reading_text(dev)
        errors = int(dev.get("decode_failures") or 0)
        rows.append(
            f'<tr class="device" data-id="{_e(dev.get("id"))}">'
            f'<td><b>{_e(dev.get("id"))}</b><br><span class="muted">{_e(dev.get("driver"))}</span>'
            + (
                f'<br><span class="muted equipment" title="OBX-18">{_e(dev["equipment"])}</span>'
                if dev.get("equipment")
                else ""
            )
            + "</td>"
            f'<td><span class="state"><span class="dot {dot}"></span>{_e(state)}</span>{detail}</td>'
            f"<td>{_e(when(dev.get('last_seen'), now))}</td>"
            f"<td>{_e(when(dev.get('last_reading_at'), now))}"
            + (f'<br><span class="values">{_e(reading)}</span>' if reading else "")
            + "</td>"
            f'<td class="num{" warn" if errors else ""}">{errors}</td>'
            f'<td class="num">{battery}</td></tr>'
        )
    if not rows:
        rows.append('<tr><td colspan="6" class="muted">No devices configured</td></tr>')

    outbox = status.get("outbox") or {}
    depth, dead = int(outbox.get("depth") or 0), int(outbox.get("dead") or 0)

    def last_error(sender: Mapping[str, Any]) -> str:
        if not sender.get("last_error"):
            return "none"
        at = when(sender.get("last_error_at"), now)
        return f'{_e(sender["last_error"])} <span class="muted">{_e(at)}</span>'

    counters = "".join(
        f'<div class="stat bad"><span class="big">{count}</span> {_e(label)}</div>'
        for label, count in _counters(status)
    )
    links = ""
    error_lines = ""
    if has_ehr(status):
        reachable, ehr = ehr_line(status, now)
        links += f'<div id="ehr" class="stat wide{"" if reachable else " bad"}">EHR {_e(ehr)}</div>'
        awaiting = app_ack_line(status)
        if awaiting is not None:
            bad = "" if awaiting[0] else " bad"
            links += f'<div id="app-ack" class="stat wide{bad}">EHR {_e(awaiting[1])}</div>'
        error_lines += (
            '<div class="stat wide">Last EHR error: '
            f'<span id="ehr-error">{last_error(_destination(status, "ehr"))}</span></div>'
        )
    fhir = fhir_line(status, now)
    if fhir is not None:
        links += f'<div id="fhir" class="stat wide{"" if fhir[0] else " bad"}">FHIR {_e(fhir[1])}</div>'
        error_lines += (
            '<div class="stat wide">Last FHIR error: '
            f'<span id="fhir-error">{last_error(_destination(status, "fhir"))}</span></div>'
        )
    delivery = (
        '<div id="delivery" class="card">'
        f"{links}"
        f'<div class="stat"><span class="big">{depth}</span> waiting in outbox</div>'
        f'<div class="stat{" bad" if dead else ""}"><span class="big">{dead}</span> dead letter(s)</div>'
        f"{counters}"
        f"{error_lines}"
        "</div>"
    )
    refresh_tag = f'<meta http-equiv="refresh" content="{_e(refresh)}">' if refreshing else ""
    return _page_template().substitute(
        alerts=alerts_html(status, now),
        refresh_tag=refresh_tag,
        title=_e(f"vitals-agent {status.get('location') or status.get('facility') or ''}".strip()),
        facility=_e(status.get("facility") or ""),
        location=_e(status.get("location") or ""),
        version=_e(status.get("version") or "?"),
        started=_e(when(status.get("started_at"), now)),
        updated=_e(f"{now.astimezone():%H:%M:%S}"),
        patient=patient_html,
        review=review_panel,
        device_rows="\n".join(rows),
        delivery=delivery,
    )
