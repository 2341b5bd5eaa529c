"""Device drivers and transports. Every module in this package (and its sub-packages) is imported by
:func:`load_all`, which is how drivers and transports register themselves."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache


@cache
def load_all() -> None:
    """Import every driver and transport module once (they register themselves on import)."""
    for info in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.startswith("_") or leaf.startswith("test"):
            continue
        importlib.import_module(info.name)
