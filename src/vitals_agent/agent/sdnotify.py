"""Moved to :mod:`vitals_agent.host.sdnotify` (the platform layer); kept so existing imports work."""

from vitals_agent.host.sdnotify import notify, watchdog_interval

__all__ = ["notify", "watchdog_interval"]
