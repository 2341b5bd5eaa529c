"""The alert monitor: gathers the facts every few seconds, asks the engine, and tells the channels.

Always on (unless ``[alerts] enabled = false``): the status page's banner (:meth:`AlertMonitor.banner`)
and one WARNING log line per alert start and clear. Configured channels (SMTP, webhook, syslog) each
get the same payload through their own queue, so a slow mail server never delays the webhook, and a
failed send is retried (``retry_delays``) before it is given up with a WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from typing import Any

import structlog

from vitals_agent import __version__
from vitals_agent import log_events as ev
from vitals_agent.agent.alerts.engine import AlertEngine, AlertEvent
from vitals_agent.agent.alerts.rules import Facts, observe
from vitals_agent.agent.clock import Clock
from vitals_agent.config.alerts import AlertsConfig

log = structlog.get_logger(__name__)

RETRY_DELAYS = (5.0, 30.0, 120.0, 600.0)  # seconds between the tries of one channel send
QUEUE_LIMIT = 200  # payloads waiting per channel; beyond it the oldest is dropped (with a WARNING)


def configured_channels(config: AlertsConfig) -> list[Any]:
    """The configured channels (their module is imported only when there is one)."""
    if config.smtp is None and config.webhook is None and config.syslog is None:
        return []
    from vitals_agent.agent.alerts import channels

    out: list[Any] = []
    if config.smtp is not None:
        out.append(channels.SmtpSender(config.smtp))
    if config.webhook is not None:
        out.append(channels.WebhookSender(config.webhook))
    if config.syslog is not None:
        out.append(channels.SyslogSender(config.syslog))
    return out


class _Outlet:
    """One channel's queue and worker."""

    def __init__(self, channel: Any, delays: Sequence[float]) -> None:
        self.channel = channel
        self.delays = tuple(delays)
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def put(self, payload: dict[str, Any]) -> None:
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.queue.get_nowait()
            log.warning(ev.ALERT_CHANNEL_BACKLOG_FULL, channel=self.channel.name)
        self.queue.put_nowait(payload)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._work(), name=f"alerts:{self.channel.name}")

    async def _work(self) -> None:
        from vitals_agent.agent.alerts.channels import ChannelError

        while not self.queue.empty():
            payload = self.queue.get_nowait()
            for attempt in range(len(self.delays) + 1):
                try:
                    await self.channel.send(payload)
                except ChannelError as exc:
                    self.last_error = str(exc)
                    if attempt == len(self.delays):
                        self.failed += 1
                        log.warning(
                            ev.ALERT_DELIVERY_GIVEN_UP,
                            channel=self.channel.name,
                            alert=payload["alert"],
                            state=payload["state"],
                            error=str(exc),
                        )
                        break
                    log.warning(
                        ev.ALERT_DELIVERY_FAILED,
                        channel=self.channel.name,
                        alert=payload["alert"],
                        error=str(exc),
                        retry_in=self.delays[attempt],
                    )
                    await asyncio.sleep(self.delays[attempt])
                except Exception as exc:  # a bug in a channel must not stop the others
                    self.failed += 1
                    log.error(ev.ALERT_CHANNEL_FAILED, channel=self.channel.name, error=type(exc).__name__)
                    break
                else:
                    self.sent += 1
                    self.last_error = None
                    break

    async def drain(self, timeout: float) -> None:
        if self.task is not None and not self.task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self.task)
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.channel.close()


class AlertMonitor:
    def __init__(
        self,
        config: AlertsConfig,
        gather: Callable[[], Awaitable[Facts]],
        *,
        room: str,
        facility: str,
        gateway: str,
        clock: Clock | None = None,
        channels: Sequence[Any] | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.config = config
        self.gather = gather
        self.room, self.facility, self.gateway = room, facility, gateway
        self.clock = clock or Clock()
        self.engine = AlertEngine(config.hold_down_seconds)
        chosen = configured_channels(config) if channels is None else list(channels)
        self.outlets = [_Outlet(ch, retry_delays) for ch in chosen]
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # e.g. metrics: every payload
        self.fired = 0
        self.cleared = 0

    async def reconfigure(self, config: AlertsConfig, *, room: str) -> None:
        """New thresholds and channels; alerts that are on stay on (no repeat, no spurious clear)."""
        channels_changed = (config.smtp, config.webhook, config.syslog) != (
            self.config.smtp, self.config.webhook, self.config.syslog
        )  # fmt: skip
        self.config, self.room = config, room
        self.engine.hold_down = config.hold_down_seconds
        if channels_changed:
            old = self.outlets
            delays = old[0].delays if old else RETRY_DELAYS
            self.outlets = [_Outlet(ch, delays) for ch in configured_channels(config)]
            await asyncio.gather(*(o.drain(2.0) for o in old))

    def payload(self, event: AlertEvent) -> dict[str, Any]:
        """What every channel gets: room, device and counts, never patient data."""
        return {
            "agent": "vitals-agent",
            "version": __version__,
            "gateway": self.gateway,
            "facility": self.facility,
            "room": self.room,
            "alert": event.kind,
            "key": event.key,
            "state": event.state,
            "device": event.device,
            "counts": dict(event.counts),
            "summary": event.summary,
            "since": self._wall(event.since),
            "at": self._wall(event.at),
        }

    def _wall(self, mono: float) -> str:
        return self.clock.wall_at(mono).astimezone(UTC).isoformat(timespec="seconds")

    async def check(self) -> list[AlertEvent]:
        """One round: gather, decide, announce. Returns the events of this round."""
        facts = await self.gather()
        events = self.engine.observe(self.clock.mono(), observe(self.config, facts))
        for event in events:
            payload = self.payload(event)
            if event.state == "firing":
                self.fired += 1
                log.warning(ev.ALERT_FIRING, alert=event.kind, room=self.room, device=event.device,
                            summary=event.summary, counts=dict(event.counts))  # fmt: skip
            else:
                self.cleared += 1
                log.warning(ev.ALERT_CLEARED, alert=event.kind, room=self.room, device=event.device,
                            summary=event.summary)  # fmt: skip
            for outlet in self.outlets:
                outlet.put(payload)
            for listener in self.listeners:
                listener(payload)
        return events

    def banner(self) -> list[dict[str, Any]]:
        """The alerts that are on (for the status snapshot and the page's banner)."""
        return [
            {
                "alert": a.kind,
                "device": a.device,
                "summary": a.summary,
                "since": self._wall(a.since),
                "counts": dict(a.counts),
            }
            for a in self.engine.active()
        ]

    def channel_status(self) -> dict[str, Any]:
        return {
            o.channel.name: {"sent": o.sent, "failed": o.failed, "last_error": o.last_error}
            for o in self.outlets
        }

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # alerting must never take the agent down
                log.exception(ev.ALERT_CHECK_FAILED)
            await asyncio.sleep(self.config.check_seconds)

    async def close(self, timeout: float = 2.0) -> None:
        """Give queued alerts a moment to go out (e.g. the last clear before a stop), then stop."""
        await asyncio.gather(*(o.drain(timeout) for o in self.outlets))
