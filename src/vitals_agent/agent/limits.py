"""Process limits the agent raises for itself at start."""

from __future__ import annotations

import structlog

from vitals_agent import log_events as ev

log = structlog.get_logger(__name__)

OPEN_FILES_TARGET = 65536


def raise_open_files_limit(target: int = OPEN_FILES_TARGET) -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (at most ``target``), where the system allows.

    A process may raise its soft limit up to its hard limit without privileges; the common default soft
    limit of 1024 is low for an agent that also serves connections. Returns (before, after), or None
    where there is no such limit (Windows). Never raises: a refusal is logged and the agent goes on."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning(ev.AGENT_OPEN_FILES_LIMIT_NOT_RAISED, soft=soft, hard=hard, error=str(exc))
            return soft, soft
        log.debug(ev.AGENT_OPEN_FILES_LIMIT_RAISED, before=soft, after=want)
        return soft, want
    return soft, soft
