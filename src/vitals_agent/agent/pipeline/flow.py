"""The one-way data path after decoding:

Reading -> normalise -> reporting policy -> patient context -> ORU builder and/or FHIR Bundle builder
-> outbox (durable, one row per destination) -> one sender per destination.

A reading is *accepted* when the reporting policy selects it; from then on it is committed to the outbox
before anything else happens to it, and the senders take it from there. With ``[ehr]`` and ``[fhir]``
both enabled, the ORU and the Bundle are committed in one transaction under the same control id; a reading
one builder cannot express goes to the other destination alone (logged and counted), and is refused only
when no enabled destination can take it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from vitals_agent import log_events as ev
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.patient.context import PatientContextManager, PatientDetails
from vitals_agent.agent.patient.review import BuildRequest
from vitals_agent.agent.pipeline.normalize import normalise, withheld
from vitals_agent.agent.pipeline.reporting import Arrival, ReportingPolicy, make_policy
from vitals_agent.agent.pipeline.series import BpSeries
from vitals_agent.agent.runtime import DeviceRuntimeImpl
from vitals_agent.agent.storage.audit import READING_ACCEPTED, AuditError, AuditLog, reading_fields
from vitals_agent.agent.storage.commit import GroupCommit
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.config.schema import Config, DeviceConfig
from vitals_agent.errors import OutboxError, RefusedError, TransportError, VitalsAgentError
from vitals_agent.hl7.oru import (
    MessageBuildError,
    MessageProfile,
    OruMessage,
    PatientIdentity,
    ResultReview,
    new_control_id,
    oru_message,
)
from vitals_agent.models import ClinicianScan, DeviceEvent, PatientInfo, PatientScan, Reading

if TYPE_CHECKING:
    from vitals_agent.agent.patient.review import ReviewDesk
    from vitals_agent.fhir.bundle import Status

if TYPE_CHECKING:  # the FHIR builder loads only when [fhir] is enabled
    from vitals_agent.fhir.bundle import FhirProfile

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Accepted:
    """A reading that became a queued message (what observers such as the demo see)."""

    device_id: str
    reading: Reading
    control_id: str
    message: bytes  # the ORU (the Bundle when only [fhir] is enabled)
    bodies: dict[str, bytes] = field(default_factory=dict)  # destination -> what was queued for it


@dataclass(frozen=True)
class Reviewed:
    """A reading that waits in the review list for a clinician (``[review] mode = "confirm"``)."""

    device_id: str
    reading: Reading
    control_id: str  # the MSH-10 reserved for it (the confirmed message carries it)
    item_id: int


Observer = Callable[[Accepted], None]


class Pipeline:
    def __init__(
        self,
        config: Config,
        profile: MessageProfile,
        outbox: Outbox,
        *,
        patients: PatientContextManager,
        audit: AuditLog,
        wake_sender: Callable[[], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        fhir_profile: FhirProfile | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        # ages (reporting periods, "arrived before the patient was set") on the monotonic clock
        self.clock = clock or Clock.following(now)
        self.profile = profile
        self.fhir_profile = fhir_profile if config.fhir.enabled else None
        self.to_ehr = config.ehr.enabled
        self.outbox = outbox
        self.patients = patients
        self.audit = audit
        # readings and their reading_accepted records commit together, several per fsync under load
        self.committer = GroupCommit(outbox, after_commit=audit.flush_journal)
        self.wake_sender = wake_sender
        self.now = now
        self.observers: list[Observer] = []
        self.withheld_observers: list[Callable[[str, str], None]] = []  # (device id, metric) per value
        self.review: ReviewDesk | None = None  # the review list (set by the service)
        self.clinician_scans: Callable[[ClinicianScan], None] | None = None  # badge scans (the service)
        self._policies: dict[str, ReportingPolicy] = {}
        self._runtimes: dict[str, DeviceRuntimeImpl] = {}
        self.refused = 0  # readings that could not be committed (disk full...)
        self.parked = 0  # messages stored for review instead of sent (patient mismatch)
        self.dropped = 0  # readings taken before the current patient context began
        self.not_for: dict[str, int] = {}  # destination -> readings its builder refused (others got them)
        # what gave way for the receiver ([ehr] charset, max_message_bytes): characters escaped or replaced
        # with the marker, attachments left out; nothing is dropped without being counted here
        self.encoding: dict[str, int] = {"escaped": 0, "replaced": 0, "attachments_dropped": 0}
        # automated office BP (a device's bp_protocol): the series in progress, per device
        self.series: dict[str, BpSeries] = {}
        # set when a series' next start may have changed: run_series_starts looks again (its wait for the
        # start is self.sleep: tests replace it)
        self._series_scheduled = asyncio.Event()
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        current = patients.current_details(now())
        self._series_mrn: str | None = current.mrn if current is not None else None
        patients.listeners.append(self._patient_changed)

    def add_device(self, runtime: DeviceRuntimeImpl) -> None:
        dev = runtime.config
        self._runtimes[dev.id] = runtime
        self._policies[dev.id] = make_policy(dev.report_policy(), dev.report_seconds)
        self.series.pop(dev.id, None)
        if dev.bp_protocol is not None:
            can_start = runtime.driver.start_command is not None
            self.series[dev.id] = BpSeries(dev.bp_protocol, can_start=can_start)

    def remove_device(self, device_id: str) -> None:
        """A device stopped by a configuration change (its held readings stay held)."""
        self._runtimes.pop(device_id, None)
        self._policies.pop(device_id, None)
        self.series.pop(device_id, None)

    def _skew(self, dev: DeviceConfig) -> timedelta:
        seconds = dev.max_clock_skew_seconds or self.config.agent.max_clock_skew_seconds
        return timedelta(seconds=seconds)

    async def on_event(self, runtime: DeviceRuntimeImpl, event: DeviceEvent) -> None:
        """Sink for every event a device runtime emits."""
        if isinstance(event, PatientScan):
            await self.on_scan(event)
            return
        if isinstance(event, ClinicianScan):
            if self.clinician_scans is not None:
                self.clinician_scans(event)
            else:
                log.warning(ev.CLINICIAN_BADGE_IGNORED, device=event.device_id)
            return
        if not isinstance(event, Reading):
            return
        dev = runtime.config
        reading = normalise(event, max_clock_skew=self._skew(dev))
        if reading.dropped:
            log.debug(
                ev.READING_VALUES_WITHHELD,
                device=dev.id,
                dropped=[f"{d.metric}: {d.reason}" for d in reading.dropped],
            )
            impossible = [d for d in reading.dropped if withheld(d)]
            if impossible:  # implausible or contradicting values the device did send: counted per device
                runtime.count("values_withheld", len(impossible))
                for observer in self.withheld_observers:
                    for dropped in impossible:
                        observer(dev.id, dropped.metric)
        arrival = Arrival(reading, self.clock.mono_at(event.received_at))
        for due in self._policies[dev.id].offer(arrival):
            await self.accept(runtime, due.reading, arrived=due.at)
            await self._series_offer(runtime, due.reading, due.at)

    async def tick(self) -> None:
        """Called about once a second: lets time-based policies (``interval``) release readings, expires
        the patient context and old holds, and watches the wall clock for steps."""
        step = self.clock.check_step()
        now = self.now()
        if step is not None:
            self.patients.clock_stepped(step, now)
        mono = self.clock.mono()
        for device_id, policy in self._policies.items():
            for due in policy.tick(mono):
                await self.accept(self._runtimes[device_id], due.reading, arrived=due.at)
                await self._series_offer(self._runtimes[device_id], due.reading, due.at)
        await self._series_tick(mono)
        self.patients.tick(now)  # patient context expiry, hold timeout

    # --- automated office blood pressure (agent/pipeline/series.py) -------------------------------------
    async def _series_offer(self, runtime: DeviceRuntimeImpl, reading: Reading, arrived: float) -> None:
        """After a reading of a ``bp_protocol`` device was accepted: its series' next step, and the mean
        (accepted like a reading) when the series is complete."""
        series = self.series.get(runtime.config.id)
        if series is None:
            return
        context = self.patients.context(self.now())
        if context is not None and context.set_mono > arrived:
            return  # taken before this patient was set (dropped): part of no series
        device_id = runtime.config.id
        protocol = series.protocol
        outcome = series.offer(reading, arrived)
        self._series_scheduled.set()
        if outcome.abandoned:
            self._series_ended(runtime, outcome.abandoned, "the next reading did not come in time")
        if outcome.started:
            runtime.count("bp_series_started")
            log.info(
                ev.AOBP_STARTED,
                device=device_id,
                readings=protocol.readings,
                interval_seconds=protocol.interval_seconds,
                agent_starts_measurements=series.can_start,
            )
        if outcome.mean is not None:
            runtime.count("bp_series_completed")
            log.info(ev.AOBP_COMPLETED, device=device_id, taken=protocol.readings, averaged=protocol.averaged)
            await self.accept(runtime, outcome.mean, arrived=arrived)
        elif outcome.joined and not outcome.started:
            log.info(ev.AOBP_READING, device=device_id, taken=series.taken, of=protocol.readings)

    async def run_series_starts(self) -> None:
        """Starts each series' next measurement at its due time (the agent runs this for as long as it
        runs). :meth:`tick` looks only once a second: with ``interval_seconds = 1`` a start would come up
        to 2 s after the reading."""
        while True:
            self._series_scheduled.clear()
            due = [
                s.start_at for d, s in self.series.items() if s.start_at is not None and d in self._runtimes
            ]
            delay = min(due) - self.clock.mono() if due else None
            if delay is None or delay > 0:
                await self._sleep_unless_scheduled(delay)
            else:
                await self._series_tick(self.clock.mono())

    async def _sleep_unless_scheduled(self, seconds: float | None) -> None:
        """Wait ``seconds`` (None: for ever), or less if a series' next start is set meanwhile."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._series_scheduled.wait())]
        if seconds is not None:
            waits.append(asyncio.ensure_future(self.sleep(seconds)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _series_tick(self, mono: float) -> None:
        for device_id, series in list(self.series.items()):
            runtime = self._runtimes.get(device_id)
            if runtime is None:
                continue
            taken = series.taken
            due = series.due(mono)
            if due == "abandon":
                self._series_ended(runtime, taken, "the next reading did not come in time")
            elif due == "start":
                try:
                    await runtime.start_measurement()
                except TransportError as exc:  # the deadline ends the series if the device stays away
                    log.warning(ev.AOBP_START_FAILED, device=device_id, error=str(exc))
                else:
                    log.debug(ev.AOBP_MEASUREMENT_STARTED, device=device_id, taken=taken)

    def _series_ended(self, runtime: DeviceRuntimeImpl, taken: int, why: str) -> None:
        runtime.count("bp_series_abandoned")
        series = self.series.get(runtime.config.id)
        log.warning(
            ev.AOBP_ABANDONED,
            why=why,
            device=runtime.config.id,
            taken=taken,
            of=series.protocol.readings if series is not None else None,
        )

    def _patient_changed(self, what: str, patient: PatientDetails | None) -> None:
        """PatientContextManager listener: a series belongs to one patient; another one (or none) stops it."""
        mrn = patient.mrn if patient is not None else None
        if what == "set" and mrn is not None and mrn == self._series_mrn:
            return  # the same patient's wristband again
        self._series_mrn = mrn
        for device_id, series in self.series.items():
            taken = series.stop()
            runtime = self._runtimes.get(device_id)
            if taken and runtime is not None:
                self._series_ended(runtime, taken, f"the patient context was {what}")

    async def on_scan(self, scan: PatientScan) -> None:
        await self.patients.on_scan(scan)

    def _audit(self, event: str, **fields: Any) -> None:
        """Append an audit record; a failure to write it is logged, never a reason to lose a reading."""
        try:
            self.audit.record(event, **fields)
        except AuditError as exc:
            log.error(ev.AUDIT_NOT_WRITTEN, event=event, error=str(exc))

    def _parked(self, device_id: str, control_id: str, reading: Reading, reason: str) -> None:
        """A message stored but not sent (patient mismatch): WARNING without identifiers, full audit."""
        self.parked += 1
        log.warning(
            ev.READING_HELD_PATIENT_MISMATCH,
            device=device_id,
            control_id=control_id,
            see="vitals-agent outbox list",
        )
        cart = reading.source_patient
        bound = self.patients.current_details(self.now())
        self._audit(
            "message_parked",
            device_id=device_id,
            control_id=control_id,
            reason=reason,
            device_patient=cart.model_dump(exclude_none=True) if cart is not None else None,
            room_patient=bound.model_dump(exclude_none=True) if bound is not None else None,
        )

    async def release_held(
        self, device_id: str, reading: Reading, patient: PatientDetails | None, control_id: str | None = None
    ) -> str | None:
        """PatientContextManager.releaser: queue a held reading for ``patient`` (late-associated; None, the
        unbound releaser: through the usual patient rules, i.e. unbound once nothing holds it) under the
        MSH-10 reserved when it was held. Already queued (a release interrupted by a crash): nothing new."""
        runtime = self._runtimes.get(device_id)
        if runtime is None:
            log.warning(ev.READING_HELD_DEVICE_UNKNOWN, device=device_id)
            return None
        if control_id is not None and await asyncio.to_thread(self.outbox.has_control_id, control_id):
            return control_id
        try:
            accepted = await self.submit(runtime, reading, late_patient=patient, control_id=control_id)
        except (OutboxError, RefusedError):
            return None  # logged and counted by accept; stays held
        return accepted.control_id if accepted else None

    async def release_unbound(
        self, device_id: str, reading: Reading, control_id: str | None = None
    ) -> str | None:
        """PatientContextManager.unbound_releaser."""
        return await self.release_held(device_id, reading, None, control_id)

    async def _seen_before(self, device_id: str, key: str) -> bool:
        """Whether a reading with this once-only key was queued (recorded with its message) or is held."""
        if await asyncio.to_thread(self.outbox.get_state, device_id, key) is not None:
            return True
        if self.review is not None and await asyncio.to_thread(self.review.seen, device_id, key):
            return True
        held = await asyncio.to_thread(self.patients.held.all)
        return any(item.device_id == device_id and item.reading.dedupe_key == key for item in held)

    def _patient_decision(
        self, device_id: str, reading: Reading, late_patient: PatientDetails | None, arrived: float | None
    ) -> _Decision:
        """Which patient a reading is filed to, or whether it is held, parked or dropped."""
        if late_patient is not None:
            return _Decision(details=late_patient)
        now = self.now()
        cart = reading.source_patient
        if cart is not None and any((cart.mrn, cart.family_name, cart.given_name, cart.birth_date)):
            # The device names its own patient (an EKG cart). Never file it to another chart: with the
            # room bound to someone else, or to anyone when the device gave no id to compare, the
            # message is parked for review instead of sent. Unbound, the cart's id goes to PID-3 (the
            # file identifies its patient, so it is not held).
            bound = self.patients.current_details(now)
            if bound is None and cart.mrn:
                return _Decision()
            if bound is not None and cart.mrn and _same_id(bound.mrn, cart.mrn):
                self.patients.touch(now)
                return _Decision(details=bound)
            if bound is not None:
                reason = (
                    "patient mismatch: the device's patient id differs from the room's current patient"
                    if cart.mrn
                    else "patient not verifiable: the device named a patient without an id"
                )
                return _Decision(park_reason=reason)
        context = self.patients.context(now)
        if arrived is None:
            arrived = self.clock.mono_at(reading.received_at)
        if context is not None and context.set_mono > arrived:
            # Taken before this patient's context began (e.g. held back by the interval policy across a
            # wristband scan): it belongs to the previous patient or to no one, never to this one.
            self.dropped += 1
            log.info(ev.READING_BEFORE_PATIENT, device=device_id)
            self._audit(
                "reading_dropped",
                device_id=device_id,
                reason="taken before the current patient context was set",
                received_at=reading.received_at,
                context_set_at=context.set_at,
            )
            return _Decision(stop=True)
        route = self.patients.route(device_id, reading, now)
        if route.held:
            return _Decision(stop=True)  # stored durably by the patient context; released when set
        return _Decision(details=route.patient)

    async def accept(
        self, runtime: DeviceRuntimeImpl, reading: Reading, *, arrived: float | None = None
    ) -> Accepted | None:
        """:meth:`submit` of a fresh reading, for callers that only care about queued messages (None also
        when the reading waits in the review list)."""
        result = await self.submit(runtime, reading, arrived=arrived)
        return result if isinstance(result, Accepted) else None

    async def submit(
        self,
        runtime: DeviceRuntimeImpl,
        reading: Reading,
        *,
        late_patient: PatientDetails | None = None,
        control_id: str | None = None,
        arrived: float | None = None,
    ) -> Accepted | Reviewed | None:
        """Build the message and commit it durably.

        ``arrived``: when the agent received the reading, on the monotonic clock (default: derived from
        ``reading.received_at``); a reading that arrived before the current patient was set is dropped.

        Returns the queued message, the review-list entry (``confirm`` mode: it waits for a clinician), or
        None when the patient rules held, parked or dropped the reading
        (each durable or audited). Raises :class:`OutboxError` when the reading could not be stored
        durably (a file or BLE transport then keeps it and tries again) and :class:`RefusedError` when it
        can never become a conformant message; both are logged and counted here.

        ``late_patient``: a held reading being released to that patient (PatientDetails).
        """
        device_id = runtime.config.id
        key = reading.dedupe_key
        if key is not None and late_patient is None and await self._seen_before(device_id, key):
            log.info(ev.READING_DUPLICATE_SOURCE, device=device_id)
            return None
        try:
            decision = self._patient_decision(device_id, reading, late_patient, arrived)
        except (OSError, sqlite3.Error, VitalsAgentError) as exc:
            self.refused += 1
            log.error(ev.READING_REFUSED_PATIENT_CONTEXT, device=device_id, error=str(exc))
            raise OutboxError(f"patient context unavailable: {exc}") from exc
        if decision.stop:
            return None
        details = decision.details
        control_id = control_id or new_control_id()
        late = late_patient is not None
        review = self.review
        collector = review.clinicians.current() if review is not None else None
        request = BuildRequest(
            device_id=device_id,
            reading=reading,
            patient=details,
            late=late,
            control_id=control_id,
            created_at=self.now(),
            review=ResultReview(collector=collector),  # OBR-10: the clinician signed in, when one is
        )
        if _small(reading):  # a vital sign builds in well under a millisecond: a thread hop costs more
            bodies = self._build(request)
        else:
            # built off the event loop: an EKG with a 10 MiB original costs ~0.1 s per format (base64, and
            # the Bundle's validation), which must not stall the other devices' reads
            bodies = await asyncio.to_thread(self._build, request)
        if review is not None and review.holds() and decision.park_reason is None:
            # confirm mode: built once above (a reading no builder can express is refused now, not at
            # the confirmation); it waits for a clinician, durably, under this MSH-10
            return await self._hold_for_review(runtime, request)
        meta = {"device": device_id, "observed_at": reading.observed_at.isoformat()}
        # The audit record commits with the message (one fsync for both): accepted = both on disk.
        audited = reading_fields(
            device_id=device_id,
            control_id=control_id,
            reading=reading,
            patient=details.model_dump() if details is not None else None,
            disposition="bound" if details is not None else "unbound",
            late_associated=late_patient is not None,
        )
        record = None
        if decision.park_reason is None and self.audit.journal is not None:
            record = self.audit.make(READING_ACCEPTED, **audited)
        try:
            first, *others = bodies.items()
            await self.committer.enqueue(
                control_id=control_id,
                device_id=device_id,
                body=first[1],
                destination=first[0],
                also=dict(others),
                meta=meta,
                park_reason=decision.park_reason,
                # the once-only key commits with the message: a crash cannot separate them
                state={key: json.dumps({"control_id": control_id, "at": time.time()})} if key else None,
                audit=(record,) if record is not None else (),
            )
        except OutboxError as exc:
            self.refused += 1
            log.error(ev.READING_REFUSED_NOT_DURABLE, device=device_id, error=str(exc))
            raise
        if decision.park_reason is not None:
            self._parked(device_id, control_id, reading, decision.park_reason)
            return None
        self.wake_sender()  # durable now; the sender cannot run before this coroutine yields
        runtime.record_sent(reading)
        if record is None:  # an audit log without the outbox's journal: its own fsync'd record
            try:
                self.audit.record(READING_ACCEPTED, **audited)
            except AuditError as exc:
                log.error(ev.AUDIT_NOT_WRITTEN, control_id=control_id, error=str(exc))
        log.info(
            ev.READING_QUEUED,
            device=device_id,
            control_id=control_id,
            destinations=list(bodies),
            metrics=sorted(m.metric for m in reading.measurements),
            flags=[str(f) for f in reading.flags],
        )
        if review is not None:  # listed, so it can be confirmed (auto+confirm), corrected or retracted
            await review.sent(request)
        accepted = Accepted(device_id, reading, control_id, bodies.get("ehr") or first[1], bodies)
        for observer in self.observers:
            observer(accepted)
        return accepted

    async def _hold_for_review(self, runtime: DeviceRuntimeImpl, request: BuildRequest) -> Reviewed:
        assert self.review is not None
        device_id, reading, control_id, details = (
            request.device_id, request.reading, request.control_id, request.patient
        )  # fmt: skip
        try:
            item_id = await self.review.hold(request)
        except VitalsAgentError as exc:  # the review list cannot be written: like an outbox failure
            self.refused += 1
            log.error(ev.READING_REFUSED_NOT_LISTED, device=device_id, error=str(exc))
            raise OutboxError(f"review list unavailable: {exc}") from exc
        runtime.record_sent(reading)
        try:
            self.audit.record(
                READING_ACCEPTED,
                **reading_fields(
                    device_id=device_id,
                    control_id=control_id,
                    reading=reading,
                    patient=details.model_dump() if details is not None else None,
                    disposition="review",
                    late_associated=request.late,
                ),
            )
        except AuditError as exc:
            log.error(ev.AUDIT_NOT_WRITTEN, control_id=control_id, error=str(exc))
        return Reviewed(device_id, reading, control_id, item_id)

    # --- the review's messages (agent/patient/review.py) ----------------------------------------------
    def build_reviewed(self, request: BuildRequest) -> dict[str, bytes]:
        """The bodies of a reviewed message (F, C, W, a refile): same builders, the review's status."""
        return self._build(request)

    async def commit_reviewed(
        self,
        device_id: str,
        control_id: str,
        bodies: Mapping[str, bytes],
        meta: Mapping[str, Any],
        state: Mapping[str, str] | None,
    ) -> None:
        """Queue a reviewed message durably; nothing when the outbox has this MSH-10 already (a resumed
        action: the same bytes went in before the crash)."""
        if await asyncio.to_thread(self.outbox.has_control_id, control_id):
            return
        first, *others = bodies.items()
        await asyncio.to_thread(
            self.outbox.enqueue,
            control_id=control_id,
            device_id=device_id,
            body=first[1],
            destination=first[0],
            also=dict(others),
            meta=dict(meta),
            state=dict(state) if state else None,
        )
        self.wake_sender()
        log.info(ev.REVIEW_QUEUED, device=device_id, control_id=control_id, review=meta.get("review"))

    def _build(self, request: BuildRequest) -> dict[str, bytes]:
        """The message for each enabled destination (``ehr``: ORU, ``fhir``: Bundle). A destination whose
        builder refuses the reading is left out (logged, counted); when none is left the reading is
        refused with :class:`RefusedError`."""
        device_id, control_id, details = request.device_id, request.control_id, request.patient
        bodies: dict[str, bytes] = {}
        failed: list[tuple[str, Exception]] = []
        if self.to_ehr:
            patient: PatientIdentity | None = details.to_identity() if details is not None else None
            try:
                built = oru_message(
                    request.reading, self.profile, control_id=control_id, created_at=request.created_at,
                    patient=patient, late_associated=request.late, review=request.review, also=request.also,
                )  # fmt: skip
                bodies["ehr"] = built.body
                self._gave_way(device_id, control_id, built)
            except Exception as exc:  # any build failure is this reading's, final: never a crash loop
                failed.append(("ehr", exc))
        if self.fhir_profile is not None:
            try:
                bodies["fhir"] = _fhir_body(
                    (request.reading, *request.also), self.fhir_profile, message_id=control_id,
                    created_at=request.created_at, patient=details.to_info() if details is not None else None,
                    late_associated=request.late, review=request.review, revision=request.revision,
                )  # fmt: skip
            except Exception as exc:
                failed.append(("fhir", exc))
        reasons = []
        for destination, error in failed:
            self.not_for[destination] = self.not_for.get(destination, 0) + 1
            what = "message" if destination == "ehr" else "FHIR Bundle"
            if _says_why(destination, error):
                reason, shown = str(error), str(error)
            else:  # the text may quote the reading (a file name, a patient field): type only above DEBUG
                reason = f"the {what} could not be built ({type(error).__name__})"
                shown = type(error).__name__
                log.debug(
                    ev.READING_BUILD_FAILURE, device=device_id, destination=destination, error_info=error
                )
            reasons.append(reason)
            if bodies:
                log.error(
                    ev.READING_NOT_SENT_TO_DESTINATION,
                    destination=destination,
                    what=what,
                    device=device_id,
                    control_id=control_id,
                    error=shown,
                    sent_to=list(bodies),
                )
            elif _says_why(destination, error):
                log.error(ev.READING_REFUSED_NOT_CONFORMANT, what=what, device=device_id, error=shown)
            else:
                log.error(ev.READING_REFUSED_NOT_BUILT, what=what, device=device_id, error=shown)
        if not bodies:
            self.refused += 1
            raise RefusedError("; ".join(reasons) or "no destination is enabled")
        return bodies

    def _gave_way(self, device_id: str, control_id: str, built: OruMessage) -> None:
        """Count (and say) what the receiver's charset and size limit changed in a message."""
        if not (built.escaped or built.replaced or built.dropped_attachments):
            return
        first_replaced, first_escaped = not self.encoding["replaced"], not self.encoding["escaped"]
        self.encoding["escaped"] += built.escaped
        self.encoding["replaced"] += built.replaced
        self.encoding["attachments_dropped"] += len(built.dropped_attachments)
        fields = {"device": device_id, "control_id": control_id, "charset": self.profile.charset}
        if built.dropped_attachments:
            log.warning(
                ev.READING_ATTACHMENT_DROPPED,
                attachments=len(built.dropped_attachments),
                max_message_bytes=self.profile.max_message_bytes,
                **fields,
            )
        if built.replaced:
            (log.warning if first_replaced else log.info)(
                ev.READING_CHARS_REPLACED,
                replaced=built.replaced,
                marker=self.profile.marker,
                **fields,
            )
        if built.escaped:
            (log.info if first_escaped else log.debug)(
                ev.READING_CHARS_ESCAPED,
                escaped=built.escaped,
                **fields,
            )


INLINE_BUILD_BYTES = 16384  # readings with less raw data and no attachment are built on the event loop


def _says_why(destination: str, error: Exception) -> bool:
    """A builder's own refusal (its text says why, without patient data), not an unexpected failure."""
    if isinstance(error, MessageBuildError):
        return True
    if destination != "fhir":
        return False
    from vitals_agent.fhir.bundle import FhirBuildError  # loaded already: a Bundle was being built

    return isinstance(error, FhirBuildError)


def _small(reading: Reading) -> bool:
    return not reading.attachments and len(reading.raw) <= INLINE_BUILD_BYTES


_FHIR_STATUS: dict[str, Status] = {
    "R": "preliminary",
    "F": "final",
    "C": "corrected",
    "W": "entered-in-error",
}


def _fhir_body(
    readings: tuple[Reading, ...],
    profile: FhirProfile,
    *,
    message_id: str,
    created_at: datetime,
    patient: PatientInfo | None,
    late_associated: bool,
    review: ResultReview,
    revision: bool,
) -> bytes:
    """One transaction Bundle for a reading and the manual entries riding with it (entries merged, the
    shared Patient/Location/Device once)."""
    from vitals_agent.fhir.bundle import Performer, bundle_dict, validated_bytes  # only with [fhir] on

    observer = review.observer
    performer = Performer(observer.id, observer.family, observer.given) if observer is not None else None
    bundle: dict[str, Any] | None = None
    seen: set[str] = set()
    for reading in readings:
        part = bundle_dict(
            reading, profile, message_id=message_id, created_at=created_at, patient=patient,
            status=_FHIR_STATUS[review.status], performer=performer, revision=revision,
            late_associated=late_associated, order_key=review.order_key,
        )  # fmt: skip
        if bundle is None:
            bundle = part
            seen = {e.get("fullUrl", "") for e in part["entry"]}
            continue
        for entry in part["entry"]:
            if entry.get("fullUrl", "") not in seen:
                seen.add(entry.get("fullUrl", ""))
                bundle["entry"].append(entry)
    assert bundle is not None
    return validated_bytes(bundle)


@dataclass(frozen=True)
class _Decision:
    details: PatientDetails | None = None  # None = unbound (or the device's own patient)
    park_reason: str | None = None  # store for review instead of sending
    stop: bool = False  # held or dropped: nothing to queue now


def _same_id(a: str, b: str) -> bool:
    """Two patient identifiers name the same patient: equal after trimming and case folding. Anything
    looser (leading zeros, check digits) is a site rule and must not be guessed here."""
    return a.strip().casefold() == b.strip().casefold()
