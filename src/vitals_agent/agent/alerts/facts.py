"""Gather the alert rules' :class:`~.rules.Facts` from the running agent's parts (read-only).

Queue counts and ages come from the outbox (off the event loop), device state from the runtimes, held
readings from the patient context's store, free space from the data folder's file system, certificate
lifetimes from the configured PEM files and from the EHR's certificate seen at the last TLS connect.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from vitals_agent import log_events as ev
from vitals_agent.agent.alerts.rules import CertFacts, DeviceFacts, Facts, LinkFacts
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.delivery.sender import QueueSender
from vitals_agent.agent.patient.context import PatientContextManager
from vitals_agent.agent.runtime import DeviceRuntimeImpl
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.errors import OutboxError

log = structlog.get_logger(__name__)

CERT_RECHECK_SECONDS = 3600.0  # PEM files are read again at most this often


class CertWatch:
    """The notAfter of each configured certificate file, read at most once an hour."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)
        self._cache: dict[str, float | None] = {}
        self._read_at = -CERT_RECHECK_SECONDS

    def expiries(self, mono: float) -> dict[str, float]:
        if mono - self._read_at >= CERT_RECHECK_SECONDS:
            self._read_at = mono
            self._cache = {which: _pem_not_after(path) for which, path in self.files.items()}
        return {which: at for which, at in self._cache.items() if at is not None}


def _pem_not_after(path: Path) -> float | None:
    try:
        from cryptography import x509

        data = path.expanduser().read_bytes()
        return x509.load_pem_x509_certificates(data)[0].not_valid_after_utc.timestamp()
    except (OSError, ValueError, IndexError) as exc:
        log.debug(ev.ALERT_CERTIFICATE_UNREADABLE, file=str(path), error=type(exc).__name__)
        return None


def _link_facts(sender: QueueSender, now: float) -> LinkFacts:
    try:
        depth: int | None = sender.outbox.depth(sender.destination)
        dead: int | None = sender.outbox.dead_count(sender.destination)
        oldest = sender.outbox.oldest_created(sender.destination)
    except OutboxError:  # the storage alerts are the sender's own (it stops the agent if it lasts)
        depth = dead = oldest = None
    return LinkFacts(
        peer=sender.link.peer,
        failing=sender.policy.failures > 0,
        failures=sender.policy.failures,
        depth=depth,
        dead=dead,
        oldest_age=max(0.0, now - oldest) if oldest is not None else None,
    )


@dataclass(eq=False, kw_only=True)
class FactSource:
    """Everything :func:`gather` needs, by reference (the service swaps senders and runtimes on reload)."""

    senders: Mapping[str, QueueSender]
    runtimes: Mapping[str, DeviceRuntimeImpl]
    patients: PatientContextManager
    outbox: Outbox
    data_dir: Path
    clock: Clock
    cert_files: InitVar[Mapping[str, Path]]
    config_error: Callable[[], str | None] = lambda: None
    certs: CertWatch = field(init=False)

    def __post_init__(self, cert_files: Mapping[str, Path]) -> None:
        self.certs = CertWatch(cert_files)

    async def gather(self) -> Facts:
        now = self.clock.now()
        wall = now.timestamp()
        mono = self.clock.mono()
        senders = list(self.senders.items())
        links = await asyncio.to_thread(lambda: {name: _link_facts(s, wall) for name, s in senders})
        devices = {
            dev_id: DeviceFacts(rt.status.connected, rt.quiet_seconds(mono), rt.link_state(mono))
            for dev_id, rt in self.runtimes.items()
        }
        held, oldest_held = await asyncio.to_thread(self.patients.held.summary)
        try:
            free = shutil.disk_usage(self.data_dir).free / 1e6
        except OSError:
            free = None
        expiries = dict(self.certs.expiries(mono))
        for name, sender in senders:
            client: Any = getattr(sender, "client", None)
            peer_expiry = getattr(client, "peer_cert_expires", None)
            if isinstance(peer_expiry, float):
                expiries[f"{name.upper()} server certificate"] = peer_expiry
        return Facts(
            links=links,
            devices=devices,
            held=held,
            oldest_held_age=(now - oldest_held).total_seconds() if oldest_held is not None else None,
            disk_free_mb=free,
            certs=_certs(expiries.items(), wall),
            config_error=self.config_error(),
        )


def _certs(items: Iterable[tuple[str, float]], wall: float) -> list[CertFacts]:
    return [CertFacts(which, (at - wall) / 86400.0) for which, at in sorted(items)]
