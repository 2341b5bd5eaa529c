"""The one-way data path after decoding:

Reading -> normalise -> reporting policy -> patient context -> ORU builder -> outbox (durable) -> sender.

A reading is *accepted* when the reporting policy selects it; from then on it is committed to the outbox
before anything else happens to it, and the sender takes it from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from vitals_agent.agent.audit import AuditError
from vitals_agent.agent.normalize import normalise
from vitals_agent.agent.outbox import Outbox
from vitals_agent.agent.reporting import ReportingPolicy, make_policy
from vitals_agent.agent.runtime import DeviceRuntimeImpl
from vitals_agent.config.schema import Config, DeviceConfig
from vitals_agent.errors import OutboxError
from vitals_agent.hl7.oru import (
    MessageBuildError,
    MessageProfile,
    PatientIdentity,
    build_oru,
    new_control_id,
)
from vitals_agent.models import DeviceEvent, PatientScan, Reading

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Accepted:
    """A reading that became a queued message (what observers such as the demo see)."""

    device_id: str
    reading: Reading
    control_id: str
    message: bytes


Observer = Callable[[Accepted], None]


class Pipeline:
    def __init__(
        self,
        config: Config,
        profile: MessageProfile,
        outbox: Outbox,
        *,
        wake_sender: Callable[[], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.profile = profile
        self.outbox = outbox
        self.wake_sender = wake_sender
        self.now = now
        self.observers: list[Observer] = []
        self.patients: Any = None  # PatientContextManager, wired by the service when available
        self.audit: Any = None  # AuditLog, wired by the service when available
        self._policies: dict[str, ReportingPolicy] = {}
        self._runtimes: dict[str, DeviceRuntimeImpl] = {}
        self.refused = 0  # readings that could not be committed (disk full...)
        self.parked = 0  # messages stored for review instead of sent (patient mismatch)

    def add_device(self, runtime: DeviceRuntimeImpl) -> None:
        dev = runtime.config
        self._runtimes[dev.id] = runtime
        self._policies[dev.id] = make_policy(dev.report_policy(), dev.report_seconds)

    def _skew(self, dev: DeviceConfig) -> timedelta:
        seconds = dev.max_clock_skew_seconds or self.config.agent.max_clock_skew_seconds
        return timedelta(seconds=seconds)

    async def on_event(self, runtime: DeviceRuntimeImpl, event: DeviceEvent) -> None:
        """Sink for every event a device runtime emits."""
        if isinstance(event, PatientScan):
            await self.on_scan(event)
            return
        if not isinstance(event, Reading):
            return
        dev = runtime.config
        reading = normalise(event, max_clock_skew=self._skew(dev))
        if reading.dropped:
            log.debug(
                "values not sent",
                device=dev.id,
                dropped=[f"{d.metric}: {d.reason}" for d in reading.dropped],
            )
        for due in self._policies[dev.id].offer(reading):
            await self.accept(runtime, due)

    async def tick(self) -> None:
        """Called about once a second: lets time-based policies (``interval``) release readings."""
        now = self.now()
        for device_id, policy in self._policies.items():
            for due in policy.tick(now):
                await self.accept(self._runtimes[device_id], due)
        if self.patients is not None:
            self.patients.tick(now)  # patient context expiry, hold timeout

    async def on_scan(self, scan: PatientScan) -> None:
        if self.patients is None:
            log.warning("wristband scan ignored: patient context is not available", device=scan.device_id)
            return
        await self.patients.on_scan(scan)

    def patient_for(self, reading: Reading) -> PatientIdentity | None:
        if self.patients is None:
            return None
        current: PatientIdentity | None = self.patients.current(self.now())
        return current

    def _parked(self, device_id: str, control_id: str, reading: Reading, reason: str) -> None:
        """A message stored but not sent (patient mismatch): WARNING without identifiers, full audit."""
        self.parked += 1
        log.warning(
            "message held for review, not sent: the device's patient is not the room's patient",
            device=device_id,
            control_id=control_id,
            see="vitals-agent outbox list",
        )
        if self.audit is not None:
            cart = reading.source_patient
            bound = self.patients.current_details(self.now()) if self.patients is not None else None
            try:
                self.audit.record(
                    "message_parked",
                    device_id=device_id,
                    control_id=control_id,
                    reason=reason,
                    device_patient=cart.model_dump(exclude_none=True) if cart is not None else None,
                    room_patient=bound.model_dump(exclude_none=True) if bound is not None else None,
                )
            except AuditError as exc:
                log.error("audit record not written", control_id=control_id, error=str(exc))

    async def release_held(self, device_id: str, reading: Reading, patient: Any) -> str | None:
        """PatientContextManager.releaser: queue a held reading for ``patient`` (late-associated)."""
        runtime = self._runtimes.get(device_id)
        if runtime is None:
            log.warning("held reading of a device no longer configured stays held", device=device_id)
            return None
        accepted = await self.accept(runtime, reading, late_patient=patient)
        return accepted.control_id if accepted else None

    async def accept(
        self, runtime: DeviceRuntimeImpl, reading: Reading, *, late_patient: Any = None
    ) -> Accepted | None:
        """Build the message and commit it durably. Returns None when the reading was refused or held.

        ``late_patient``: a held reading being released to that patient (PatientDetails).
        """
        details: Any = late_patient
        park_reason: str | None = None
        cart = reading.source_patient
        if details is None and self.patients is not None and cart is not None and cart.mrn:
            # The device names its own patient (an EKG cart). Never file it to another chart: bound to a
            # different patient, the message is parked for review instead of sent; unbound, the cart's
            # id goes to PID-3 (the file identifies its patient, so it is not held).
            bound = self.patients.current_details(self.now())
            if bound is not None and _same_id(bound.mrn, cart.mrn):
                self.patients.touch(self.now())
                details = bound
            elif bound is not None:
                park_reason = (
                    "patient mismatch: the cart's patient id differs from the room's current patient"
                )
        elif details is None and self.patients is not None:
            route = self.patients.route(runtime.config.id, reading, self.now())
            if route.held:
                return None  # stored durably by the patient context; released when a patient is set
            details = route.patient
        patient: PatientIdentity | None = details.to_identity() if details is not None else None
        control_id = new_control_id()
        try:
            body = build_oru(
                reading,
                self.profile,
                control_id=control_id,
                created_at=self.now(),
                patient=patient,
                late_associated=late_patient is not None,
            )
        except MessageBuildError as exc:
            self.refused += 1
            log.error("reading refused: no conformant message", device=runtime.config.id, error=str(exc))
            return None
        meta = {"device": runtime.config.id, "observed_at": reading.observed_at.isoformat()}
        try:
            await asyncio.to_thread(
                self.outbox.enqueue,
                control_id=control_id,
                device_id=runtime.config.id,
                body=body,
                meta=meta,
                park_reason=park_reason,
            )
        except OutboxError as exc:
            self.refused += 1
            log.error(
                "reading refused: could not be queued durably", device=runtime.config.id, error=str(exc)
            )
            return None
        if park_reason is not None:
            self._parked(runtime.config.id, control_id, reading, park_reason)
            return None
        runtime.record_sent(reading)
        if self.audit is not None:
            try:
                self.audit.reading_accepted(
                    device_id=runtime.config.id,
                    control_id=control_id,
                    reading=reading,
                    patient=details.model_dump() if details is not None else None,
                    disposition="bound" if details is not None else "unbound",
                    late_associated=late_patient is not None,
                )
            except AuditError as exc:
                log.error("audit record not written", control_id=control_id, error=str(exc))
        log.info(
            "reading queued",
            device=runtime.config.id,
            control_id=control_id,
            metrics=sorted(m.metric for m in reading.measurements),
            flags=[str(f) for f in reading.flags],
        )
        self.wake_sender()
        accepted = Accepted(runtime.config.id, reading, control_id, body)
        for observer in self.observers:
            observer(accepted)
        return accepted


def _same_id(a: str, b: str) -> bool:
    """Two patient identifiers name the same patient: equal after trimming and case folding. Anything
    looser (leading zeros, check digits) is a site rule and must not be guessed here."""
    return a.strip().casefold() == b.strip().casefold()
