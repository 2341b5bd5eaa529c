"""What the control server, its routes, the client and the page share: file names, the error type, the
status snapshot's shape."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NotRequired, TypedDict

from vitals_agent.errors import VitalsAgentError

TOKEN_FILE = "control.token"  # noqa: S105 - a file name, not a secret
ENDPOINT_FILE = "control.json"


class ControlError(VitalsAgentError):
    """The control API could not be reached or refused the request."""


class DeviceSnapshot(TypedDict):
    """One device (``DeviceStatus.as_dict()`` in agent/runtime.py). Times are ISO-8601 strings."""

    id: str
    driver: str
    connected: bool
    detail: str
    last_seen: str | None
    last_reading_at: str | None
    last_reading: dict[str, str]  # metric -> "value unit" (no patient data)
    readings: int
    messages: int
    decode_failures: int
    link_failures: int
    battery_percent: int | None
    identity: dict[str, Any]
    state: NotRequired[str]  # "connected" | "disconnected" | "silent" ... when the runtime reports it
    quiet_seconds: NotRequired[float]  # since the device was last heard (monotonic; see agent/runtime.py)
    silent_after_seconds: NotRequired[float | None]  # "silent" after this long with the link up (None: never)
    discarded_lines: NotRequired[int]  # overlong lines discarded whole (also in decode_failures)
    counters: NotRequired[dict[str, int]]  # transport events by name, e.g. files_failed, files_skipped
    equipment: NotRequired[str]  # the device identity as OBX-18 carries it (EI-1^EI-2^EI-3^EI-4)


class OutboxSnapshot(TypedDict):
    depth: int  # messages waiting to be sent
    dead: int  # dead letters (refused by the EHR or given up)


class SenderSnapshot(TypedDict, total=False):
    connected: bool
    peer: str
    last_error: str | None  # one line, no patient data
    last_error_at: str | None
    last_ack_at: str | None
    sent: int
    consecutive_failures: int  # > 0: the last attempt to reach the EHR failed


class StatusSnapshot(TypedDict):
    """What the service's status provider returns (``AgentService.status()``)."""

    version: str
    started_at: str | None
    facility: str
    location: str
    devices: list[DeviceSnapshot]
    outbox: OutboxSnapshot
    sender: SenderSnapshot  # the first destination's (the EHR's when enabled)
    destinations: NotRequired[dict[str, SenderSnapshot]]  # "ehr", "fhir": each enabled destination's
    refused: NotRequired[int]


StatusProvider = Callable[[], Mapping[str, Any]]
"""Returns a :class:`StatusSnapshot` (a plain dict of that shape is fine)."""


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
