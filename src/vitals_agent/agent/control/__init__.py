"""The local control API and the room status page: HTTP/1.1 on loopback (h11), bearer token.

- :mod:`.server`: sockets, HTTP framing, the connection cap and timeouts, the token and endpoint files;
- :mod:`.request`: one request as the server read it (and the error that answers it);
- :mod:`.routes`: what each request gets (auth, login codes and page sessions, patient set/clear, audit);
- :mod:`.page`: the status page and its terminal form, pure functions of the status snapshot;
- :mod:`.client`: what the CLI uses to talk to a running agent;
- :mod:`.common`: file names, the error type and the snapshot's shape.
"""

from vitals_agent.agent.control.client import ControlClient
from vitals_agent.agent.control.common import (
    ENDPOINT_FILE,
    TOKEN_FILE,
    ControlError,
    DeviceSnapshot,
    OutboxSnapshot,
    SenderSnapshot,
    StatusProvider,
    StatusSnapshot,
)
from vitals_agent.agent.control.page import patient_line, render_html, render_text, when
from vitals_agent.agent.control.request import Request
from vitals_agent.agent.control.routes import COOKIE, Credentials, Response, Routes
from vitals_agent.agent.control.server import ControlServer

__all__ = [
    "COOKIE",
    "ENDPOINT_FILE",
    "TOKEN_FILE",
    "ControlClient",
    "ControlError",
    "ControlServer",
    "Credentials",
    "DeviceSnapshot",
    "OutboxSnapshot",
    "Request",
    "Response",
    "Routes",
    "SenderSnapshot",
    "StatusProvider",
    "StatusSnapshot",
    "patient_line",
    "render_html",
    "render_text",
    "when",
]
