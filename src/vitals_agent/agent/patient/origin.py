"""Who asked for a change, as the audit trail records it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Origin:
    """Who asked: built once where a request comes in (the control API's routes, a wristband scan, the
    expiry of a context) and handed down to every change it makes. The audit records of those changes
    name it: ``channel``, ``source``, then ``caller``'s fields."""

    channel: str  # cli, api, page, barcode, expiry...
    source: str | None = None  # the device or page that named the patient, as the caller said
    # Further audit fields about who asked: the client a control API caller claims to be and the
    # operating-system user of its socket; a scanner's device id.
    caller: Mapping[str, Any] = field(default_factory=dict)

    def audit_fields(self, **fields: Any) -> dict[str, Any]:
        """The fields of an audit record of a change it asked for: ``channel``, ``source``, ``fields``, then
        ``caller``'s."""
        return {"channel": self.channel, "source": self.source, **fields, **self.caller}
