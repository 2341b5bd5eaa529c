"""The alert rules: what the agent's state says, turned into :class:`Observation` s (pure).

:class:`Facts` is gathered by the monitor (status snapshot, outbox, disk, certificates); :func:`observe`
applies the ``[alerts]`` thresholds. Only ids, counts and ages go into an observation: never a patient
identifier, a message body or a receiver's error text (receivers echo patient data in it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vitals_agent.agent.alerts.engine import Observation
from vitals_agent.agent.clock import span
from vitals_agent.config.alerts import AlertsConfig

LINK_NAMES = {"ehr": "EHR", "fhir": "FHIR server"}


@dataclass(frozen=True)
class LinkFacts:
    """One destination's sender."""

    peer: str
    failing: bool  # the last attempt to reach it failed (connect, timeout, reset...)
    failures: int  # consecutive failed attempts
    depth: int | None
    dead: int | None
    oldest_age: float | None  # seconds the oldest queued message has waited


@dataclass(frozen=True)
class DeviceFacts:
    """The runtime's own view of a device (agent/runtime.py): the same ``state`` status shows."""

    connected: bool  # the link is up
    unseen_for: float  # seconds since the device was last heard (or its link opened, or the agent started)
    state: str = ""  # "connected" | "silent" | "disconnected"; "" = from ``connected`` alone

    @property
    def quiet(self) -> bool:
        """Not talking: disconnected, or link up but silent for its ``silent_after_seconds``."""
        state = self.state or ("connected" if self.connected else "disconnected")
        return state != "connected"


@dataclass(frozen=True)
class CertFacts:
    which: str  # e.g. "ehr client certificate", "EHR server certificate"
    days_left: float


@dataclass(frozen=True)
class Facts:
    links: Mapping[str, LinkFacts] = field(default_factory=dict)
    devices: Mapping[str, DeviceFacts] = field(default_factory=dict)
    held: int = 0
    oldest_held_age: float | None = None
    disk_free_mb: float | None = None
    certs: Sequence[CertFacts] = ()
    config_error: str | None = None  # why the last new configuration was refused (None: none refused)


def observe(config: AlertsConfig, facts: Facts) -> list[Observation]:
    """Every enabled rule's observation for this round."""
    out: list[Observation] = []
    for name, link in facts.links.items():
        label = LINK_NAMES.get(name, name)
        waiting = link.depth or 0
        tries = link.failures
        if config.ehr_unreachable_seconds > 0:
            out.append(
                Observation(
                    f"ehr_unreachable:{name}",
                    "ehr_unreachable",
                    link.failing,
                    after=config.ehr_unreachable_seconds,
                    summary=(
                        f"{label} {link.peer} unreachable ({tries} failed attempts, {waiting} waiting)"
                        if link.failing
                        else f"{label} {link.peer} answers again ({waiting} waiting)"
                    ),
                    counts={"failed_attempts": link.failures, "waiting": waiting},
                )
            )
        if config.queue_age_seconds > 0:
            age = link.oldest_age or 0.0
            out.append(
                Observation(
                    f"queue_age:{name}",
                    "queue_age",
                    link.oldest_age is not None and age > config.queue_age_seconds,
                    summary=f"oldest message for the {label} waiting {span(age)} ({waiting} waiting)",
                    counts={"oldest_seconds": round(age), "waiting": waiting},
                )
            )
        if config.dead_letter:
            dead = link.dead or 0
            out.append(
                Observation(
                    f"dead_letter:{name}",
                    "dead_letter",
                    dead > 0,
                    summary=f"{dead} dead letter(s) for the {label} (see `vitals-agent outbox list`)",
                    counts={"dead": dead},
                )
            )
    if config.device_silent_seconds > 0:
        for dev_id, dev in facts.devices.items():
            silent = dev.quiet and dev.unseen_for > config.device_silent_seconds
            how = "connected but silent" if dev.connected else "not seen"
            out.append(
                Observation(
                    f"device_silent:{dev_id}",
                    "device_silent",
                    silent,
                    summary=(
                        f"device {dev_id} {how} for {span(dev.unseen_for)}"
                        if silent
                        else f"device {dev_id} seen again"
                    ),
                    device=dev_id,
                    counts={"unseen_seconds": round(dev.unseen_for)},
                )
            )
    if config.held_reading_seconds > 0:
        age = facts.oldest_held_age or 0.0
        out.append(
            Observation(
                "held_reading",
                "held_reading",
                facts.held > 0 and age > config.held_reading_seconds,
                summary=f"{facts.held} reading(s) held without a patient, the oldest for {span(age)}",
                counts={"held": facts.held, "oldest_seconds": round(age)},
            )
        )
    if config.disk_free_mb > 0 and facts.disk_free_mb is not None:
        out.append(
            Observation(
                "disk_free",
                "disk_free",
                facts.disk_free_mb < config.disk_free_mb,
                summary=f"{facts.disk_free_mb:.0f} MB free on the data folder's disk",
                counts={"free_mb": round(facts.disk_free_mb)},
            )
        )
    out.append(
        Observation(
            "config_refused",
            "config_refused",
            facts.config_error is not None,
            summary=f"new configuration refused: {facts.config_error}" if facts.config_error else "",
        )
    )
    if config.cert_expiry_days > 0:
        for cert in facts.certs:
            days = cert.days_left
            out.append(
                Observation(
                    f"cert_expiry:{cert.which}",
                    "cert_expiry",
                    days < config.cert_expiry_days,
                    summary=(
                        f"{cert.which} expired {-days:.0f} day(s) ago"
                        if days < 0
                        else f"{cert.which} expires in {days:.0f} day(s)"
                    ),
                    counts={"days_left": round(days)},
                )
            )
    return out
