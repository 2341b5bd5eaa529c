"""TOML text for tests that write a configuration by hand."""

from __future__ import annotations

import json


def toml_str(value: object) -> str:
    """``value`` (a path, usually) as a TOML basic string: quoted and escaped, so a Windows path's
    backslashes (``C:\\Users\\...``) stay backslashes instead of starting escapes TOML refuses."""
    return json.dumps(str(value))
