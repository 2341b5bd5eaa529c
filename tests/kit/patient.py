"""Patient-context helpers: a manager on a temp data dir, and the audit records it wrote."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from vitals_agent.agent.patient.context import PatientContextManager
from vitals_agent.agent.storage.audit import AuditLog, read_audit
from vitals_agent.config.patient import PatientConfig


def manager(
    data_dir: Path, clock: Callable[[], datetime], audit: AuditLog | None = None, **config: Any
) -> PatientContextManager:
    """A :class:`PatientContextManager` in ``data_dir`` whose clock (and audit log's) is ``clock``."""
    audit = audit or AuditLog.in_dir(data_dir, now=clock)
    return PatientContextManager(data_dir, PatientConfig(**config), audit, now=clock)


def events(data_dir: Path) -> list[dict[str, Any]]:
    """The audit records in ``data_dir``."""
    return list(read_audit(data_dir / "audit.jsonl"))


def event_names(data_dir: Path) -> list[str]:
    return [e["event"] for e in events(data_dir)]
