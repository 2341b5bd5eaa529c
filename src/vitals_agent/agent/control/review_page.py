"""The status page's review panel (issue #16): who is signed in, the readings waiting for review with
Confirm and Reject, and the keyboard-only forms to sign in and to enter values by hand.

Pure functions of the review snapshot: every value HTML-escaped, no script (the page's CSP allows none).
Every control is a native form control with a label, reachable with Tab in reading order; Enter submits.
The forms post to the page-form endpoints with the session's form token. The page refreshes itself every
few seconds, which would wipe a half-typed form, so typing happens on ``/?enter=1`` (the same page without
the refresh, the first field focused: no fragment in that address, as a fragment target turns autofocus
off); the confirm and reject buttons work on the refreshing page.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from vitals_agent.agent.control.page import _value_text, metric_label, when
from vitals_agent.codes import tables

# What the manual form offers, in the order a nurse takes them (metric key, label, unit shown, step).
MANUAL_FIELDS = (
    ("respiratory_rate", "Respiration", "/min", "1"),
    ("pain_score", "Pain", "0-10", "1"),
    ("body_height", "Height", "cm", "0.1"),
    ("oxygen_flow_rate", "O2 flow", "L/min", "0.5"),
)
QUALIFIER_LABELS = {
    "bp_position": "BP position",
    "bp_site": "BP arm",
    "bp_cuff_size": "Cuff size",
    "temperature_site": "Temperature site",
    "oxygen_delivery": "O2 delivery",
}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _values(item: Mapping[str, Any]) -> str:
    parts = [f"{metric_label(k)} {_value_text(v)}" for k, v in (item.get("values") or {}).items()]
    parts += [f"{QUALIFIER_LABELS.get(k, k)} {v}" for k, v in (item.get("qualifiers") or {}).items()]
    text = ", ".join(parts)
    for entry in item.get("manual") or []:
        text += " + " + ", ".join(
            f"{QUALIFIER_LABELS.get(k, metric_label(k))} {_value_text(v)}" for k, v in entry.items()
        )
    return text


def _patient(item: Mapping[str, Any]) -> str:
    p = item.get("patient")
    if not p:
        return "unbound (room)"
    return f"{p.get('mrn') or ''} {p.get('name') or ''}".strip()


def _hidden(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(token)}">'


def _clinician_html(clinician: Mapping[str, Any], token: str, now: datetime, editing: bool) -> str:
    if clinician.get("set"):
        who = clinician.get("name") or ""
        who = f"{who} ({clinician.get('id')})" if who else str(clinician.get("id"))
        expires = when(clinician.get("expires_at"), now)
        return (
            f'<div id="clinician" class="row"><p>Clinician: <b>{_e(who)}</b> '
            f'<span class="muted">via {_e(clinician.get("channel"))}, until {_e(expires)}</span></p>'
            f'<form method="post" action="/clinician/clear">{_hidden(token)}'
            '<button type="submit" class="btn secondary">Sign out</button></form></div>'
        )
    if not editing:
        return (
            '<div id="clinician" class="row"><p class="warn-text">No clinician signed in: readings cannot be '
            'confirmed. Scan your badge, or <a href="/?enter=1" accesskey="s">sign in here (S)</a>.'
            "</p></div>"
        )
    return (
        '<form id="sign-in" method="post" action="/clinician/set" class="fields">'
        f"{_hidden(token)}<fieldset><legend>Sign in (who takes the vitals)</legend>"
        '<label>Badge / id <input name="id" required maxlength="32" autocomplete="off" autofocus></label>'
        '<label>Family name <input name="family" maxlength="60" autocomplete="off"></label>'
        '<label>Given name <input name="given" maxlength="60" autocomplete="off"></label>'
        '<button type="submit" class="btn">Sign in</button></fieldset></form>'
    )


def _item_rows(items: Sequence[Mapping[str, Any]], token: str, now: datetime, reasons: Sequence[str]) -> str:
    rows = []
    for item in items:
        ident = _e(item.get("id"))
        kind = "manual entry" if item.get("kind") == "manual" else str(item.get("device"))
        state = "waits for the right patient" if item.get("awaiting_patient") else "waiting"
        if item.get("needs_confirm"):
            state = "sent unconfirmed (R)"
        options = "".join(f'<option value="{_e(r)}">{_e(r)}</option>' for r in reasons)
        actions = ""
        if item.get("waiting"):
            actions = (
                f'<form method="post" action="/review/confirm" class="inline">{_hidden(token)}'
                f'<input type="hidden" name="id" value="{ident}">'
                f'<button type="submit" class="btn" aria-label="Confirm reading {ident}">Confirm</button>'
                "</form>"
                f'<form method="post" action="/review/reject" class="inline">{_hidden(token)}'
                f'<input type="hidden" name="id" value="{ident}">'
                f'<label><span class="sr">Reason for rejecting reading {ident}</span>'
                '<select name="reason" required><option value="">reason&hellip;</option>'
                f"{options}</select>"
                "</label>"
                f'<button type="submit" class="btn danger" aria-label="Reject reading {ident}">'
                "Reject</button>"
                "</form>"
            )
        rows.append(
            f'<tr class="review-item" data-id="{ident}"><td class="num">{ident}</td>'
            f'<td>{_e(when(item.get("taken_at"), now))}<br><span class="muted">{_e(kind)}</span></td>'
            f'<td class="values">{_e(_values(item))}</td><td>{_e(_patient(item))}</td>'
            f'<td>{_e(state)}</td><td class="actions">{actions}</td></tr>'
        )
    return "\n".join(rows)


def _manual_html(token: str, focus_first: bool) -> str:
    fields = []
    for index, (key, label, unit, step) in enumerate(MANUAL_FIELDS):
        info = tables().metric(key)
        auto = " autofocus" if focus_first and index == 0 else ""
        fields.append(
            f'<label>{_e(label)} <input name="{_e(key)}" type="number" inputmode="decimal" '
            f'min="{_e(info.minimum)}" max="{_e(info.maximum)}" step="{_e(step)}"{auto}>'
            + f' <span class="muted">{_e(unit)}</span>'
            + "</label>"
        )
    for key, qinfo in tables().qualifiers.items():
        options = "".join(
            f'<option value="{_e(name)}">{_e(answer.display)}</option>'
            for name, answer in qinfo.answers.items()
        )
        fields.append(
            f'<label>{_e(QUALIFIER_LABELS.get(key, qinfo.name))} <select name="{_e(key)}">'
            f'<option value="">&ndash;</option>{options}</select></label>'
        )
    return (
        '<form id="manual" method="post" action="/review/manual" class="fields">'
        f"{_hidden(token)}<fieldset><legend>Enter values by hand</legend>{''.join(fields)}"
        '<button type="submit" class="btn">Send values</button>'
        '<a class="btn secondary" href="/#review">Done</a></fieldset></form>'
    )


def review_html(
    review: Mapping[str, Any],
    items: Sequence[Mapping[str, Any]],
    *,
    form_token: str,
    now: datetime,
    editing: bool,
    reasons: Sequence[str],
) -> str:
    """The review panel. ``review``: the status's review snapshot; ``items``: the review list (masked)."""
    waiting = [i for i in items if i.get("waiting") or i.get("awaiting_patient")]
    clinician = review.get("clinician") or {}
    mode = str(review.get("mode") or "auto")
    head = (
        f'<p class="muted">Review mode <b>{_e(mode)}</b>: '
        + {
            "auto": "readings go at once, unvalidated (R); confirm is not needed.",
            "confirm": "readings wait here until a clinician confirms them (F).",
            "auto+confirm": "readings go at once (R); confirming sends them again as validated (F).",
        }.get(mode, "")
        + "</p>"
    )
    if waiting:
        table = (
            '<table id="review-waiting"><thead><tr><th>#</th><th>Taken</th><th>Values</th><th>Patient</th>'
            "<th>State</th><th>Review</th></tr></thead><tbody>"
            f"{_item_rows(waiting, form_token, now, reasons)}</tbody></table>"
        )
        if len([i for i in waiting if i.get("waiting")]) > 1:
            table += (
                f'<form method="post" action="/review/confirm" class="inline">{_hidden(form_token)}'
                '<input type="hidden" name="all" value="1">'
                '<button type="submit" class="btn">Confirm all</button></form>'
            )
    else:
        table = '<p id="review-waiting" class="muted">No reading is waiting for review.</p>'
    if editing:
        entry = _manual_html(form_token, focus_first=bool(clinician.get("set")))
    else:
        entry = '<p><a class="btn secondary" href="/?enter=1" accesskey="m">Enter values by hand (M)</a></p>'
    return (
        '<h2 id="review-title">Review</h2>'
        f'<div id="review" class="card review{" editing" if editing else ""}">{head}'
        f"{_clinician_html(clinician, form_token, now, editing)}{table}{entry}</div>"
    )
