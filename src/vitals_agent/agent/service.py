"""The agent service: wires devices, pipeline, outbox and sender, and runs until told to stop.

``vitals-agent run`` and ``vitals-agent demo`` both run :class:`AgentService`. Shutdown (SIGTERM/SIGINT):
device links stop first (no new readings), then the sender finishes the message in flight or leaves it
queued for the next start, then the outbox closes. The whole stop takes well under 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from vitals_agent import __version__, host
from vitals_agent import log_events as ev
from vitals_agent.agent.clock import Clock
from vitals_agent.agent.config_source import ConfigRefused, ConfigSource, Pulled, describe
from vitals_agent.agent.delivery.sender import QueueSender, Sender
from vitals_agent.agent.instance import acquire_instance_lock
from vitals_agent.agent.limits import raise_open_files_limit
from vitals_agent.agent.paths import data_dir, device_zone, gateway_eui64
from vitals_agent.agent.patient.clinician import ClinicianContextManager
from vitals_agent.agent.patient.context import PatientContextManager
from vitals_agent.agent.patient.review import ReviewDesk
from vitals_agent.agent.pipeline.flow import Pipeline
from vitals_agent.agent.pipeline.profile import message_profile
from vitals_agent.agent.reconfigure import Plan, plan
from vitals_agent.agent.runtime import DeviceRuntimeImpl
from vitals_agent.agent.storage.audit import AuditLog
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.agent.supervisor import DeviceSupervisor
from vitals_agent.config.schema import Config, DeviceConfig
from vitals_agent.drivers.base import DecodeContext, driver_class
from vitals_agent.errors import ConfigError, OutboxError, StorageFailedError, VitalsAgentError
from vitals_agent.hl7.ack import Ack
from vitals_agent.logs import setup_logging
from vitals_agent.models import DeviceIdentity
from vitals_agent.net.tls import ssl_context_from

if TYPE_CHECKING:  # and imported where used: a serial-only agent without them never loads them
    from vitals_agent.agent.alerts.monitor import AlertMonitor
    from vitals_agent.agent.control.server import ControlServer
    from vitals_agent.agent.metrics.registry import AgentMetrics
    from vitals_agent.agent.metrics.server import MetricsServer
    from vitals_agent.agent.patient.lookup import PatientLookup
    from vitals_agent.net.ack_listener import AckListener

log = structlog.get_logger(__name__)

EXIT_STORAGE_FAILED = 74  # EX_IOERR (sysexits.h): the outbox kept failing; see the last log line
STOP_TIMEOUT = 3.0  # seconds the sender gets to finish the message in flight at shutdown
DEVICE_STOP_TIMEOUT = 2.0  # seconds device links get to close (in parallel with the sender)
CONTROL_STOP_TIMEOUT = 0.5


class OutboxStateStore:
    """Per-device durable key/value state, kept in the outbox database."""

    def __init__(self, outbox: Outbox, device_id: str) -> None:
        self._outbox = outbox
        self._device_id = device_id

    def get(self, key: str) -> str | None:
        value: str | None = self._outbox.get_state(self._device_id, key)
        return value

    def set(self, key: str, value: str) -> None:
        self._outbox.set_state(self._device_id, key, value)


class AgentService:
    def __init__(
        self,
        config: Config,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        clock: Clock | None = None,
        source: ConfigSource | None = None,
        pulled: Pulled | None = None,
    ) -> None:
        """``source``: where the configuration comes from (the local file, and the central bundle when
        it names one), for reloads; ``pulled``: how ``config`` was obtained (a fresh bundle is kept as the
        last good one once this agent holds the data folder)."""
        self.config = config
        self.source = source
        self.pulled = pulled
        if clock is not None:  # one time source for everything (tests inject wall and monotonic clocks)
            now = clock.now
        self.now = now
        self.data_dir: Path = data_dir(config)
        # One agent per data_dir, taken before anything is written (token, outbox, gateway id, folders).
        self.lock = acquire_instance_lock(self.data_dir)
        try:
            self._open(config, now, clock)
        except BaseException:
            self.lock.release()
            raise
        if source is not None and pulled is not None and pulled.origin == "central":
            source.save_good(self.data_dir, pulled)
        self._reload = asyncio.Event()
        self._reloading = asyncio.Lock()
        self.config_state: dict[str, Any] = {
            **(describe(pulled) if pulled is not None else {"origin": "local"}),
            "applied_at": None,
            "last_error": None,
            "last_error_at": None,
            "restart_needed": [],
            "reloads": 0,
        }

    def _open(self, config: Config, now: Callable[[], datetime], clock: Clock | None) -> None:
        self.gateway = gateway_eui64(config, self.data_dir)
        self.outbox = Outbox(self.data_dir)
        # one sender per enabled destination, each with its own queue rows, back-off and dead letters
        self.senders: dict[str, QueueSender] = {}
        self.metrics: AgentMetrics | None = None
        if config.ehr.enabled:
            self.senders["ehr"] = self._make_sender("ehr", config)
        fhir_profile = None
        if config.fhir.enabled:
            from vitals_agent.agent.pipeline.profile import fhir_profile as make_fhir_profile
            from vitals_agent.fhir.bundle import load_models

            self.senders["fhir"] = self._make_sender("fhir", config)  # aiohttp only when FHIR is used
            fhir_profile = make_fhir_profile(config, self.gateway)
            load_models()  # at start, not on the first reading
        self.sender = next(iter(self.senders.values()))  # the first destination (the EHR when enabled)
        self.ack_listener: AckListener | None = None
        if config.ehr.enabled and config.ehr.app_ack_port is not None:  # enhanced mode's inbound port
            from vitals_agent.net.ack_listener import AckListener

            self.ack_listener = AckListener(
                config.ehr.app_ack_host,
                config.ehr.app_ack_port,
                self._application_ack,
                sending_application=config.ehr.sending_application,
            )
        self.audit = AuditLog.in_dir(self.data_dir, policy=config.audit)  # rotates and prunes
        # reading_accepted / message_sent records commit with the outbox rows (one fsync per reading);
        # records a crash left between the two files are appended now
        self.audit.attach(self.outbox)
        self.clock = clock or Clock(wall=now)  # monotonic ages, wall-clock step watch (clock.py)
        self.patients = PatientContextManager(self.data_dir, config.patient, self.audit, clock=self.clock)
        self.pipeline = Pipeline(
            config,
            message_profile(config, self.gateway),
            self.outbox,
            patients=self.patients,
            audit=self.audit,
            wake_sender=self._wake_senders,
            now=now,
            fhir_profile=fhir_profile,
            clock=self.clock,
        )
        self.patients.releaser = self.pipeline.release_held
        self.patients.unbound_releaser = self.pipeline.release_unbound
        self.lookup: PatientLookup | None = None
        if config.pdq is not None:
            self.lookup = patient_lookup(config, self.gateway, self.patients, self.audit, now=now)
        # Who takes the vitals, and the review list (issue #16). The clinician leaves with the patient.
        self.clinicians = ClinicianContextManager(self.data_dir, config.review, self.audit, clock=self.clock)
        self.patients.listeners.append(self.clinicians.patient_changed)
        self.review = ReviewDesk(
            self.data_dir,
            config.review,
            patients=self.patients,
            clinicians=self.clinicians,
            audit=self.audit,
            clock=self.clock,
            require_patient=config.patient.require_patient,
        )
        self.review.pipeline = self.pipeline
        self.pipeline.review = self.review
        self.pipeline.clinician_scans = self.clinicians.on_scan
        for sender in self.senders.values():
            sender.audit = self.audit
        self.control: ControlServer | None = None
        if config.control.enabled:
            from vitals_agent.agent.control.server import ControlServer

            self.control = ControlServer(
                self.data_dir,
                self.patients,
                self.status,
                host=config.control.host,
                port=config.control.port,
                lookup=self.lookup,
                review=self.review,
            )
        self.runtimes: dict[str, DeviceRuntimeImpl] = {}
        self.supervisors: dict[str, DeviceSupervisor] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._device_tasks: dict[str, asyncio.Task[None]] = {}
        self._sender_tasks: dict[str, asyncio.Task[None]] = {}
        self._stop: asyncio.Event | None = None
        self.started_at: datetime | None = None
        self.alerts = self._alert_monitor(config) if config.alerts.enabled else None
        self.metrics_server: MetricsServer | None = None
        if config.metrics.enabled:
            self._metrics(config)
        for dev in config.devices:
            if dev.enabled:
                self._make_device(dev)

    def _make_device(self, dev: DeviceConfig) -> None:
        driver = driver_class(dev.driver)(dev.options)
        ctx = DecodeContext(device=DeviceIdentity(id=dev.id), tz=device_zone(self.config), now=self.now)
        runtime = DeviceRuntimeImpl(
            dev,
            driver,
            ctx,
            OutboxStateStore(self.outbox, dev.id),
            self.pipeline.on_event,
            mono=self.clock.mono,
        )
        self.pipeline.add_device(runtime)
        self.runtimes[dev.id] = runtime
        supervisor = DeviceSupervisor(runtime)
        runtime.on_connected.append(supervisor.connected)
        self.supervisors[dev.id] = supervisor

    def _start_device(self, dev_id: str) -> None:
        self._device_tasks[dev_id] = asyncio.create_task(
            self.supervisors[dev_id].run(), name=f"device:{dev_id}"
        )

    async def _stop_device(self, dev_id: str) -> None:
        """Stop one device's link; a reading it already handed over still reaches the outbox."""
        task = self._device_tasks.pop(dev_id, None)
        if task is not None:
            task.cancel()
            _, pending = await asyncio.wait([task], timeout=DEVICE_STOP_TIMEOUT)
            if pending:
                log.warning(ev.DEVICE_NOT_STOPPED, device=dev_id)
        runtime = self.runtimes.pop(dev_id, None)
        if runtime is not None:
            await runtime.drain(DEVICE_STOP_TIMEOUT)
        self.supervisors.pop(dev_id, None)
        self.pipeline.remove_device(dev_id)

    def _make_sender(self, name: str, config: Config) -> QueueSender:
        sender: QueueSender
        if name == "ehr":
            sender = Sender(
                self.outbox,
                config.ehr,
                ssl_context=ssl_context_from(config.ehr),
                storage_give_up=config.agent.storage_give_up_seconds,
            )
        else:
            from vitals_agent.agent.delivery.fhir_sender import FhirSender

            sender = FhirSender(
                self.outbox, config.fhir, storage_give_up=config.agent.storage_give_up_seconds
            )
        sender.audit = getattr(self, "audit", None)
        if self.metrics is not None:
            sender.exchange_observers.append(self.metrics.on_exchange)
        return sender

    def _application_ack(self, ack: Ack) -> bool:
        """The inbound port's ACKs go to the EHR sender of the moment (a reload may have replaced it)."""
        sender = self.senders.get("ehr")
        return sender.application_ack(ack) if sender is not None else False

    def _start_sender(self, name: str) -> None:
        task = asyncio.create_task(self.senders[name].run(), name=f"sender:{name}")
        self._sender_tasks[name] = task
        # A sender ends by itself only when storage failed for too long: then the agent stops.
        task.add_done_callback(self._sender_ended)

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        if self._stop is not None and not task.cancelled() and task in self._sender_tasks.values():
            self._stop.set()

    async def _stop_sender(self, name: str, timeout: float) -> None:
        """Stop one sender after the message in flight is answered (or, after ``timeout``, leave it
        queued: the next sender sends it again with the same MSH-10)."""
        sender = self.senders[name]
        task = self._sender_tasks.pop(name, None)
        await sender.stop(timeout=timeout)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StorageFailedError):
                await task

    def _alert_monitor(self, config: Config) -> AlertMonitor:
        from vitals_agent.agent.alerts.facts import FactSource
        from vitals_agent.agent.alerts.monitor import AlertMonitor

        certs: dict[str, Path] = {}
        if config.ehr.enabled and config.ehr.tls and config.ehr.cert_file is not None:
            certs["EHR client certificate"] = config.ehr.cert_file
        if config.fhir.enabled and config.fhir.cert_file is not None:
            certs["FHIR client certificate"] = config.fhir.cert_file
        source = FactSource(
            senders=self.senders,
            runtimes=self.runtimes,
            patients=self.patients,
            outbox=self.outbox,
            data_dir=self.data_dir,
            clock=self.clock,
            cert_files=certs,
            config_error=lambda: self.config_state["last_error"],
        )
        return AlertMonitor(
            config.alerts,
            source.gather,
            room=_room(config),
            facility=config.agent.facility,
            gateway=self.gateway,
            clock=self.clock,
        )

    def _metrics(self, config: Config) -> None:
        """``[metrics]``: the registry, its observers, and the listener (started by :meth:`run`)."""
        import time

        from vitals_agent.agent.metrics.registry import AgentMetrics
        from vitals_agent.agent.metrics.server import MetricsServer

        self.metrics = metrics = AgentMetrics(
            config,
            runtimes=lambda: self.runtimes,
            senders=lambda: self.senders,
            alerts=lambda: self.alerts.banner() if self.alerts is not None else [],
            clock=time.time,
        )
        self.pipeline.observers.append(metrics.on_accepted)
        self.pipeline.withheld_observers.append(metrics.on_withheld)
        for sender in self.senders.values():
            sender.exchange_observers.append(metrics.on_exchange)
        self.metrics_server = MetricsServer(config.metrics, metrics.render)

    # --- configuration reload (SIGHUP, the service's reload control, the poll) ------------------------

    def request_reload(self) -> None:
        """Ask for the configuration to be read again now (the local file and the central bundle). Safe to
        call from a signal handler on the event loop; the Windows service calls it from its control
        handler through ``loop.call_soon_threadsafe``."""
        self._reload.set()

    async def _config_loop(self) -> None:
        while True:
            poll = self.config.agent.config_poll_seconds if self.config.agent.config_source else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._reload.wait()
            self._reload.clear()
            try:
                await self.reload()
            except Exception:  # a reload must never take the agent down
                log.exception(ev.CONFIG_RELOAD_FAILED)

    async def reload(self) -> Plan | None:
        """Read the configuration again and apply what changed. Returns the plan applied (None: nothing
        new, or refused: the reason is logged, audited and shown in the status)."""
        if self.source is None:
            return None
        async with self._reloading:
            try:
                pulled = await self.source.pull(self.data_dir)
            except (ConfigRefused, ConfigError) as exc:
                reason = str(exc) if isinstance(exc, ConfigRefused) else f"local configuration: {exc}"
                self._refused(reason)
                return None
            if pulled.config == self.config:
                if self.config_state["last_error"] is not None:
                    self.config_state["last_error"] = None
                return None
            applied = await self.apply_config(pulled.config)
            if pulled.origin == "central":
                self.source.save_good(self.data_dir, pulled)
            self.pulled = pulled
            self.config_state.update(describe(pulled))
            self.config_state.update(
                applied_at=self.now().isoformat(), last_error=None, restart_needed=applied.restart_needed
            )
            self.config_state["reloads"] += 1
            self._audit_config("config_applied", **applied.summary(), serial=self.config_state["serial"],
                               digest=self.config_state["digest"])  # fmt: skip
            return applied

    def _refused(self, reason: str) -> None:
        first = self.config_state["last_error"] != reason
        self.config_state.update(last_error=reason, last_error_at=self.now().isoformat())
        if first:  # once per distinct reason, not at every poll
            log.warning(ev.CONFIG_REFUSED, reason=reason)
            self._audit_config("config_refused", reason=reason)

    def _audit_config(self, event: str, **fields: Any) -> None:
        try:
            self.audit.record(event, source=self.config.agent.config_source or "local file", **fields)
        except VitalsAgentError as exc:
            log.error(ev.AUDIT_NOT_WRITTEN, audit_event=event, error=str(exc))

    async def apply_config(self, new: Config) -> Plan:
        """Apply ``new`` to the running agent: only devices whose table changed restart, a sender only
        when its connection changed (after the message in flight is answered); queued messages stay
        queued, and readings of the other devices keep flowing meanwhile."""
        steps = plan(self.config, new)
        old, self.config = self.config, new
        self.pipeline.config = new
        if steps.profile:
            self.pipeline.profile = message_profile(new, self.gateway)
            if new.fhir.enabled and self.pipeline.fhir_profile is not None:
                from vitals_agent.agent.pipeline.profile import fhir_profile as make_fhir_profile

                self.pipeline.fhir_profile = make_fhir_profile(new, self.gateway)
        for dev_id in [*steps.remove, *steps.restart]:
            await self._stop_device(dev_id)
        devices = {d.id: d for d in new.devices}
        for dev_id in [*steps.restart, *steps.add]:
            self._make_device(devices[dev_id])
            if self._stop is not None:
                self._start_device(dev_id)
        for name in steps.senders:
            if name not in self.senders:
                continue
            link = old.ehr if name == "ehr" else old.fhir
            await self._stop_sender(name, timeout=_answer_time(link))
            self.senders[name] = self._make_sender(name, new)
            if self._stop is not None:
                self._start_sender(name)
        self.sender = next(iter(self.senders.values()))
        if steps.alerts and self.alerts is not None:
            await self.alerts.reconfigure(new.alerts, room=_room(new))
        if self.metrics is not None:
            self.metrics.set_config(new)
        if steps.metrics and self.metrics_server is not None and self.metrics is not None:
            from vitals_agent.agent.metrics.server import MetricsServer

            await self.metrics_server.stop()
            self.metrics_server = MetricsServer(new.metrics, self.metrics.render)
            await self.metrics_server.start()
        log.info(ev.CONFIG_APPLIED, **steps.summary())
        if steps.restart_needed:
            log.warning(ev.CONFIG_RESTART_NEEDED, keys=steps.restart_needed)
        return steps

    def _wake_senders(self) -> None:
        for sender in self.senders.values():
            sender.wake()

    def status(self) -> dict[str, Any]:
        """Snapshot for ``vitals-agent status`` and the status page (no patient data). ``sender`` is the
        first destination's (the EHR's when enabled); ``destinations`` has each one's, by name."""
        destinations = {name: s.status() for name, s in self.senders.items()}  # each reads its depth once
        sender = next(iter(destinations.values()))
        depths = [d["depth"] for d in destinations.values()]
        deads = [d["dead"] for d in destinations.values()]
        return {
            "version": __version__,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "facility": self.config.agent.facility,
            "location": self.config.agent.location,
            "devices": [
                {**rt.snapshot(), "equipment": rt.identity.equipment_id(self.gateway).text()}
                for rt in self.runtimes.values()
            ],
            "outbox": {
                "depth": None if None in depths else sum(depths),
                "dead": None if None in deads else sum(deads),
            },
            "sender": sender,
            "destinations": destinations,
            "refused": self.pipeline.refused,
            "encoding": dict(self.pipeline.encoding),  # [ehr] charset / max_message_bytes: what gave way
            "not_sent_to": dict(self.pipeline.not_for),  # destination -> readings its builder refused
            "parked": self.pipeline.parked,
            "alerts": self.alerts.banner() if self.alerts is not None else [],
            "config": dict(self.config_state),
            "app_ack_listener": self.ack_listener.status() if self.ack_listener is not None else None,
            "review": self.review.snapshot(),  # mode, readings waiting, the signed-in clinician
            "storage": {
                "outbox": sender["storage"],  # error, failing since, seconds until the agent stops
                "held": {"ok": self.patients.held.problem is None, "error": self.patients.held.problem},
                "quarantined": list(self.patients.quarantined),  # stores moved aside at start
                "clock": self.clock.snapshot(),  # the last wall-clock step seen
            },
        }

    def _depth(self) -> int | None:
        try:
            return self.outbox.depth()
        except OutboxError:  # the sender reports it, backs off and, if it lasts, stops the agent
            return None

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.pipeline.tick()
                for runtime in list(self.runtimes.values()):
                    runtime.check_silence()
                if self.lookup is not None:
                    self.lookup.tick()
                # the audit file catches up with the records committed in the outbox (a batch per fsync)
                await asyncio.to_thread(self.audit.sync_journal, due_only=True)
                self.clinicians.tick()
                await self.review.tick()
            except VitalsAgentError as exc:  # logged and counted where it happened; keep ticking
                log.debug(ev.AGENT_TICK_READING_NOT_ACCEPTED, error=str(exc))
            except Exception:  # a bug must not silently stop expiry, hold timeouts and interval reports
                log.exception(ev.AGENT_TICK_FAILED)

    async def _watchdog(self, interval: float) -> None:
        while True:
            host.readiness.watchdog()
            await asyncio.sleep(interval)

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set. Returns the process exit code."""
        self.started_at = self.now()
        if self.control is not None:
            try:
                await self.control.start()
            except OSError as exc:
                self.close()
                raise control_port_error(self.config.control.host, self.config.control.port, exc) from None
        if self.metrics_server is not None:
            try:
                await self.metrics_server.start()
            except ConfigError:
                if self.control is not None:
                    await self.control.stop()
                self.close()
                raise
        if self.ack_listener is not None:
            try:
                await self.ack_listener.start()
            except OSError as exc:
                if self.control is not None:
                    await self.control.stop()
                self.close()
                raise app_ack_port_error(
                    self.config.ehr.app_ack_host, self.config.ehr.app_ack_port, exc
                ) from None
        log.info(
            ev.AGENT_STARTING,
            version=__version__,
            devices=len(self.runtimes),
            destinations={name: s.link.peer for name, s in self.senders.items()},
            data_dir=str(self.data_dir),
            queued=self._depth(),
        )
        self._stop = stop
        for name in self.senders:
            self._start_sender(name)
        for dev_id in self.supervisors:
            self._start_device(dev_id)
        if self.source is not None:
            self._tasks.append(asyncio.create_task(self._config_loop(), name="config"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="ticker"))
        self._tasks.append(asyncio.create_task(self.pipeline.run_series_starts(), name="aobp"))
        if self.alerts is not None:
            self._tasks.append(asyncio.create_task(self.alerts.run(), name="alerts"))
        await self.patients.release_held()  # a context and held readings that survived a restart
        await self.review.resume()  # review messages a crash interrupted: same bytes, same MSH-10
        interval = host.readiness.watchdog_interval()
        if interval:
            self._tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        host.readiness.ready(f"running: {len(self.runtimes)} devices")
        try:
            await stop.wait()
        finally:
            host.readiness.stopping()
            log.info(ev.AGENT_STOPPING)
            # Devices and the sender stop side by side, each under its own deadline, so the whole stop
            # stays well under systemd's and the 5 s whatever a device or the EHR does.
            tasks = [*self._tasks, *self._device_tasks.values()]
            for task in tasks:
                task.cancel()
            sender_tasks = list(self._sender_tasks.values())
            sender_stopping = [
                asyncio.create_task(sender.stop(timeout=STOP_TIMEOUT)) for sender in self.senders.values()
            ]
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=DEVICE_STOP_TIMEOUT)
                if pending:
                    log.warning(ev.AGENT_TASKS_NOT_STOPPED, tasks=sorted(t.get_name() for t in pending))
            await asyncio.gather(
                *sender_stopping, *(rt.drain(DEVICE_STOP_TIMEOUT) for rt in self.runtimes.values())
            )
            for task in sender_tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, StorageFailedError):
                    await task
            if self.control is not None:
                try:
                    async with asyncio.timeout(CONTROL_STOP_TIMEOUT):
                        await self.control.stop()
                except TimeoutError:
                    log.warning(ev.CONTROL_NOT_STOPPED)
            if self.lookup is not None:
                await self.lookup.close()
            if self.alerts is not None:
                await self.alerts.close()
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            if self.ack_listener is not None:
                await self.ack_listener.close()
            self.close()
            log.info(ev.AGENT_STOPPED)
        failure = next((f for f in map(_storage_failure, sender_tasks) if f is not None), None)
        if failure is not None:
            log.error(ev.AGENT_STOPPED_STORAGE_FAILED, reason=str(failure))
            host.readiness.status(f"stopped: {failure}")
            raise failure
        return 0

    def close(self) -> None:
        """Close the stores and free the data_dir for the next agent."""
        self.audit.detach()  # while the outbox that holds the journal is open
        self.outbox.close()
        self.review.close()
        self.clinicians.close()
        self.patients.close()
        self.audit.close()
        self.lock.release()


def _room(config: Config) -> str:
    return config.alerts.room or config.agent.location or config.agent.facility


def _answer_time(link: Any) -> float:
    """How long a sender being replaced may take to get the answer to the message in flight."""
    connect = float(getattr(link, "connect_timeout_seconds", 10.0))
    answer = float(getattr(link, "ack_timeout_seconds", getattr(link, "timeout_seconds", 30.0)))
    return connect + answer + 1.0


def control_port_error(host: str, port: int, exc: OSError) -> ConfigError:
    """The one line for a control port the agent cannot listen on (a configuration problem)."""
    if exc.errno == errno.EADDRINUSE:
        what = f"{host}:{port} is in use by another program (`ss -ltnp 'sport = :{port}'` shows which)"
    else:
        what = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return ConfigError(
        [("control.port", f"{what}: stop it, or set [control] port to another port (0 = any free port)")]
    )


def app_ack_port_error(host: str, port: int | None, exc: OSError) -> ConfigError:
    """The one line for an application-ACK port the agent cannot listen on."""
    if exc.errno == errno.EADDRINUSE:
        what = f"{host}:{port} is in use by another program (`ss -ltnp 'sport = :{port}'` shows which)"
    else:
        what = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return ConfigError([("ehr.app_ack_port", f"{what}: stop it, or set [ehr] app_ack_port to another port")])


def _storage_failure(task: asyncio.Task[None]) -> StorageFailedError | None:
    if not task.done() or task.cancelled():
        return None
    exc = task.exception()
    return exc if isinstance(exc, StorageFailedError) else None


def patient_lookup(
    config: Config,
    gateway: str,
    patients: PatientContextManager,
    audit: AuditLog,
    *,
    now: Callable[[], datetime],
) -> PatientLookup:
    """The ``[pdq]`` lookup-then-confirm flow (the query says who we are as the ORUs do)."""
    from vitals_agent.agent.patient.lookup import PatientLookup
    from vitals_agent.net.pdq import Sender, pdq_client

    assert config.pdq is not None
    sender = Sender(
        application=f"{config.ehr.sending_application}^{gateway}^EUI-64",
        facility=config.agent.facility,
        processing_id=config.ehr.processing_id,
    )
    return PatientLookup(patients, pdq_client(config.pdq, sender), config.pdq, audit, now=now)


def install_signal_handlers(stop: asyncio.Event, reload: Callable[[], None] | None = None) -> None:
    """Set ``stop`` on the platform's stop requests (signals; Ctrl-C/Ctrl-Break on Windows), and call
    ``reload`` on its reload request (SIGHUP: ``systemctl reload``)."""
    host.install_stop_handlers(stop)
    if reload is not None:
        host.install_reload_handler(reload)


async def startup_config(source: ConfigSource) -> Pulled:
    """The configuration to start with: the central bundle when it can be fetched and is good, else the
    last good one, else the local file alone (each fallback logged once at WARNING). Raises
    :class:`ConfigError` when none of them is a whole configuration."""
    folder = source.data_dir()
    try:
        return await source.pull(folder)
    except ConfigRefused as exc:
        fallback = source.fallback(folder)
        log.warning(
            ev.CONFIG_CENTRAL_UNAVAILABLE,
            reason=str(exc),
            using="the last good central configuration" if fallback.bundle else "the local file alone",
        )
        return fallback


async def run_service(
    config: Config | None = None, *, config_path: Path | None = None, log_level: str | None = None
) -> int:
    """Run the agent on ``config``, or on the configuration ``config_path`` gives (with ``[agent]
    config_source``: the central bundle merged over it), which SIGHUP then reads again."""
    raise_open_files_limit()  # before any file is opened: room for devices, delivery and the control API
    stop = asyncio.Event()
    source = ConfigSource(config_path) if config_path is not None else None
    pulled = None
    if source is not None:
        pulled = await startup_config(source)
        config = pulled.config
        setup_logging(log_level or config.agent.log_level)
    assert config is not None
    service = AgentService(config, source=source, pulled=pulled)
    install_signal_handlers(stop, service.request_reload)
    return await service.run(stop)
