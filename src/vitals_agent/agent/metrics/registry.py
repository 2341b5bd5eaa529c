"""The agent's Prometheus metrics (prometheus-client), in a registry of its own.

Event counters (readings accepted and values withheld per device and metric, messages sent and answered,
the answer latency histogram) are fed by observers the pipeline and the senders call; the state (device
links, queue depth and age, dead letters, decode failures, active alerts) is read at each scrape.

Labels are configured ids and fixed vocabularies only: ``device`` (the ``[[devices]] id``), ``metric``
(the metric table's key, e.g. ``spo2``), ``destination`` (``ehr``/``fhir``), ``code`` (the answer's
code: ``AA``, ``AE``..., or ``2xx``/``4xx``... for FHIR), ``alert`` (the rule). Never a patient
identifier, a name or message content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vitals_agent import __version__
from vitals_agent.agent.delivery.sender import QueueSender
from vitals_agent.agent.pipeline.flow import Accepted
from vitals_agent.agent.runtime import SILENT, DeviceRuntimeImpl
from vitals_agent.config.schema import Config

PREFIX = "vitals_agent"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def config_hash(config: Config) -> str:
    """A short digest of the configuration in force (the same on every agent given the same config)."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def _gauge(name: str, help_text: str, label: str) -> GaugeMetricFamily:
    """A state gauge read at scrape time, ``vitals_agent_<name>`` by one label."""
    return GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=[label])


def _counter(name: str, help_text: str, label: str) -> CounterMetricFamily:
    """A running total read at scrape time, ``vitals_agent_<name>`` by one label."""
    return CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=[label])


class _StateCollector(Collector):
    """What is read from the agent at scrape time."""

    def __init__(self, source: AgentMetrics) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        src = self.source
        now = src.clock()
        connected = _gauge("device_connected", "1 when the device link is up", "device")
        silent = _gauge(
            "device_silent",
            "1 when the link is up but nothing came for the device's silent_after_seconds",
            "device",
        )
        age = _gauge(
            "device_last_reading_age_seconds",
            "seconds since the device's last reading was queued (absent before the first)",
            "device",
        )
        seen = _gauge("device_last_seen_age_seconds", "seconds since the device was last heard", "device")
        decode = _counter("decode_failures", "frames or records the device's decoder refused", "device")
        for dev_id, rt in src.runtimes().items():
            st = rt.status
            connected.add_metric([dev_id], 1.0 if st.connected else 0.0)
            silent.add_metric([dev_id], 1.0 if rt.link_state() == SILENT else 0.0)
            decode.add_metric([dev_id], float(st.decode_failures))
            if src.last_queued.get(dev_id) is not None:
                age.add_metric([dev_id], max(0.0, now - src.last_queued[dev_id]))
            if st.last_seen is not None:
                seen.add_metric([dev_id], max(0.0, now - st.last_seen.timestamp()))
        yield from (connected, silent, age, seen, decode)
        depth = _gauge("outbox_depth", "messages waiting", "destination")
        oldest = _gauge(
            "outbox_oldest_age_seconds", "age of the oldest waiting message (0: none)", "destination"
        )
        dead = _gauge("dead_letters", "dead letters kept", "destination")
        dead_total = _counter(
            "messages_dead", "messages dead-lettered since the agent started", "destination"
        )
        delivered = _counter(
            "messages_delivered", "messages delivered since the agent started", "destination"
        )
        link_up = _gauge("destination_up", "1 when the last attempt reached the destination", "destination")
        for name, sender in src.senders().items():
            status = sender.status()
            if status["depth"] is not None:
                depth.add_metric([name], float(status["depth"]))
            if status["dead"] is not None:
                dead.add_metric([name], float(status["dead"]))
            try:
                created = sender.outbox.oldest_created(name)
            except Exception:  # storage trouble shows in the depth gap and the alerts
                created = None
            oldest.add_metric([name], max(0.0, now - created) if created is not None else 0.0)
            dead_total.add_metric([name], float(status["dead_lettered"]))
            delivered.add_metric([name], float(status["delivered"]))
            link_up.add_metric([name], 0.0 if status["consecutive_failures"] else 1.0)
        yield from (depth, oldest, dead, dead_total, delivered, link_up)
        alerts = _gauge("alerts_active", "alerts that are on, by rule", "alert")
        counts: dict[str, int] = {}
        for item in src.alerts():
            counts[item["alert"]] = counts.get(item["alert"], 0) + 1
        for kind, n in sorted(counts.items()):
            alerts.add_metric([kind], float(n))
        yield alerts


class AgentMetrics:
    """The registry and the observers that feed it. ``runtimes``/``senders``/``alerts`` are read at each
    scrape (the service swaps them on a configuration reload)."""

    def __init__(
        self,
        config: Config,
        *,
        runtimes: Callable[[], Mapping[str, DeviceRuntimeImpl]],
        senders: Callable[[], Mapping[str, QueueSender]],
        alerts: Callable[[], list[dict[str, Any]]] = list,
        clock: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runtimes, self.senders, self.alerts, self.clock = runtimes, senders, alerts, clock
        self.last_queued: dict[str, float] = {}
        r = self.registry
        self.accepted = Counter(
            f"{PREFIX}_readings_accepted",
            "readings queued, per measured metric",
            ["device", "metric"],
            registry=r,
        )
        self.withheld = Counter(
            f"{PREFIX}_values_withheld",
            "values not sent: implausible, contradicting or flagged invalid by the device",
            ["device", "metric"],
            registry=r,
        )
        self.sent = Counter(
            f"{PREFIX}_messages_sent", "messages transmitted (each try)", ["destination"], registry=r
        )
        self.answered = Counter(
            f"{PREFIX}_messages_acked", "answers received, by code", ["destination", "code"], registry=r
        )
        self.link_failures = Counter(
            f"{PREFIX}_delivery_failures",
            "tries that got no answer after connecting (timeout, reset, garbage)",
            ["destination"],
            registry=r,
        )
        self.latency = Histogram(
            f"{PREFIX}_ack_latency_seconds",
            "from sending a message to its answer",
            ["destination"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.info = Info(PREFIX, "the running agent", registry=r)
        self.set_config(config)
        r.register(_StateCollector(self))

    def set_config(self, config: Config) -> None:
        self.info.info({"version": __version__, "config_hash": config_hash(config)})

    # --- observers ----------------------------------------------------------------------------------

    def on_accepted(self, accepted: Accepted) -> None:
        self.last_queued[accepted.device_id] = self.clock()
        for measurement in accepted.reading.measurements:
            self.accepted.labels(accepted.device_id, measurement.metric).inc()

    def on_withheld(self, device_id: str, metric: str) -> None:
        self.withheld.labels(device_id, metric).inc()

    def on_exchange(self, destination: str, code: str | None, seconds: float) -> None:
        """One try: ``code`` is the answer's (None: no answer)."""
        self.sent.labels(destination).inc()
        if code is None:
            self.link_failures.labels(destination).inc()
            return
        self.answered.labels(destination, code).inc()
        self.latency.labels(destination).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
