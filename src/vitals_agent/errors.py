"""The agent's exception tree.

Every error the agent raises on purpose derives from :class:`VitalsAgentError` and carries a one-line,
human-readable message (``str(exc)``) that the CLI prints as is. Whether an operation may be retried is a
*type*, not a flag: anything deriving from :class:`RetryableError` is worth trying again later (a peer that
timed out, a port that disappeared); everything else is final for that input.
"""

from __future__ import annotations


class VitalsAgentError(Exception):
    """Base of every error the agent raises deliberately. ``str(exc)`` is one line for the user."""


class RetryableError(VitalsAgentError):
    """A transient failure: the same operation may succeed later (network, device unplugged, EHR down)."""


# --- configuration -----------------------------------------------------------------------------------


class ConfigError(VitalsAgentError):
    """The configuration is unusable. ``problems`` holds ``(key.path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        first = (f"{problems[0][0]}: " if problems and problems[0][0] else "") + (
            problems[0][1] if problems else "invalid configuration"
        )
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)


# --- device data ---------------------------------------------------------------------------------------


class DecodeError(VitalsAgentError):
    """Device data that cannot be decoded. Decoders raise only this type (or a subclass) on bad input."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        self.data = data
        super().__init__(message)


class ChecksumError(DecodeError):
    """A frame whose checksum or CRC does not match."""


class TruncatedError(DecodeError):
    """A frame or record that is shorter than its header or flags say."""


class UnsupportedError(DecodeError):
    """Well-formed data of a kind or version this driver does not handle."""


class OverlongError(DecodeError):
    """A line or packet longer than its decoder's cap. It is discarded whole, up to its terminator: no
    part of it (neither the bytes before the cap nor those after) is ever decoded."""


class UnknownDriverError(VitalsAgentError):
    """No driver is registered under the given name."""


# --- transports ----------------------------------------------------------------------------------------


class TransportError(RetryableError):
    """The link to a device failed (unplugged, port missing, BLE link lost). Reconnect later."""


class DeviceNotFoundError(TransportError):
    """The configured device is not present right now (no such port, no matching USB id, not advertising)."""


# --- delivery ------------------------------------------------------------------------------------------


class DeliveryError(VitalsAgentError):
    """Base of errors while delivering a message to the EHR."""


class PeerUnavailableError(DeliveryError, RetryableError):
    """Connection refused, reset, closed before the ACK, or timed out: re-send later with the same MSH-10."""


class ConnectFailedError(PeerUnavailableError):
    """No connection to the EHR could be made (refused, unreachable, TLS handshake): says nothing about
    the message itself."""


class RetryLaterError(PeerUnavailableError):
    """The receiver answered "not now" (HTTP 408, 429, 5xx, 401 ...): try the same message again, no sooner
    than ``retry_after`` seconds when the receiver said so. ``after_connect``: the failure may be this
    message's fault (e.g. a 500), so it counts towards the poison-message probe."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, after_connect: bool = False
    ) -> None:
        self.retry_after = retry_after
        self.after_connect = after_connect
        super().__init__(message)


class AckProtocolError(DeliveryError, RetryableError):
    """The peer answered with something that is not a usable ACK for this message (treated as no ACK)."""


class NegativeAckError(DeliveryError):
    """The receiver answered AE/AR/CE/CR. ``code`` is MSA-1, ``text`` MSA-3 and ERR details."""

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"receiver answered {code}" + (f": {text}" if text else ""))


class RefusedError(VitalsAgentError):
    """The agent refused a reading for good: it cannot become a conformant message (the text says why).
    A file-based transport moves its file to ``failed/``; a live device just carries on."""


class OutboxError(VitalsAgentError):
    """The durable queue could not accept or update a message (disk full, read-only, corrupt)."""


class OutboxFullError(OutboxError):
    """The reading was refused because it could not be committed durably (e.g. disk full)."""


class StorageFailedError(VitalsAgentError):
    """Storage kept failing for longer than the agent waits (``[agent] storage_give_up_seconds``): the
    agent stops with this one-line reason and a non-zero exit, so the service manager and alerts see it."""
