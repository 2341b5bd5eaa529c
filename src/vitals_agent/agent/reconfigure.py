"""What a new configuration changes in a running agent (pure): which devices restart, which senders
restart, what is rebuilt in place, and what only a restart of the agent can apply.

Devices whose ``[[devices]]`` table is unchanged keep running. A sender restarts only when a key of its
connection changed (host, port, TLS, timeouts...); keys that only shape messages (MSH-3/5/6, processing
id, units...) rebuild the message profile, so the next message carries them, without a reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vitals_agent.config.schema import Config

# [ehr] keys that shape messages only (the profile); any other [ehr] key restarts the EHR sender
# (application_ack_type is both: MSH-16 and the sender's enhanced-mode policy, so it restarts the sender)
EHR_MESSAGE_KEYS = frozenset(
    {
        "sending_application", "receiving_application", "receiving_facility", "processing_id",
        "accept_ack_type", "hl7_version", "code_system", "preferred_units", "hierarchy_rows",
        "charset", "unrepresentable", "marker",
    }
)  # fmt: skip
# [ehr] keys only a restart of the agent applies (the inbound application-ACK listener)
EHR_RESTART_KEYS = frozenset({"app_ack_port", "app_ack_host"})
# [agent] keys applied in place (the message profile); the others need a restart of the agent
AGENT_HOT_KEYS = frozenset({"facility", "location", "max_clock_skew_seconds", "config_poll_seconds"})


@dataclass
class Plan:
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)  # devices whose table changed
    senders: list[str] = field(default_factory=list)  # destinations whose connection changed
    profile: bool = False  # message profiles (HL7 and FHIR) rebuilt
    alerts: bool = False
    metrics: bool = False
    restart_needed: list[str] = field(default_factory=list)  # keys only a restart of the agent applies

    @property
    def empty(self) -> bool:
        return not (
            self.add or self.remove or self.restart or self.senders or self.profile or self.alerts
            or self.metrics or self.restart_needed
        )  # fmt: skip

    def summary(self) -> dict[str, object]:
        return {
            "devices_added": self.add,
            "devices_removed": self.remove,
            "devices_restarted": self.restart,
            "senders_restarted": self.senders,
            "profile_rebuilt": self.profile,
            "alerts_changed": self.alerts,
            "metrics_changed": self.metrics,
            "restart_needed": self.restart_needed,
        }


def _changed_keys(old: object, new: object) -> set[str]:
    a = old.model_dump() if hasattr(old, "model_dump") else {}
    b = new.model_dump() if hasattr(new, "model_dump") else {}
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def plan(old: Config, new: Config) -> Plan:
    p = Plan()
    before = {d.id: d for d in old.devices if d.enabled}
    after = {d.id: d for d in new.devices if d.enabled}
    p.add = [i for i in after if i not in before]
    p.remove = [i for i in before if i not in after]
    p.restart = [i for i in after if i in before and after[i] != before[i]]
    agent = _changed_keys(old.agent, new.agent)
    p.restart_needed += [f"agent.{k}" for k in sorted(agent - AGENT_HOT_KEYS)]
    ehr = _changed_keys(old.ehr, new.ehr)
    p.restart_needed += [f"ehr.{k}" for k in sorted(ehr & EHR_RESTART_KEYS)]
    if "enabled" in ehr:
        p.restart_needed.append("ehr.enabled")
    elif new.ehr.enabled and ehr - EHR_MESSAGE_KEYS - EHR_RESTART_KEYS:
        p.senders.append("ehr")
    fhir = _changed_keys(old.fhir, new.fhir)
    if "enabled" in fhir:
        p.restart_needed.append("fhir.enabled")
    elif new.fhir.enabled and fhir:
        p.senders.append("fhir")
    p.profile = bool(agent & AGENT_HOT_KEYS) or bool(ehr) or bool(fhir)
    for section in ("patient", "pdq", "control", "review"):  # review: the mode and the clinician timeout
        if getattr(old, section) != getattr(new, section):
            p.restart_needed.append(section)
    if old.alerts != new.alerts:
        if old.alerts.enabled != new.alerts.enabled:
            p.restart_needed.append("alerts.enabled")
        else:
            p.alerts = True
    if old.metrics != new.metrics:
        if old.metrics.enabled != new.metrics.enabled:
            p.restart_needed.append("metrics.listen")
        else:
            p.metrics = True
    return p
