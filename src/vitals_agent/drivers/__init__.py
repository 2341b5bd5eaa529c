"""Device drivers and transports. A module registers its drivers and transports when it is imported.

The agent imports only what its configuration names (lean start: an agent with one serial oximeter never
loads BLE, the EKG readers, PIL or the renderer): :data:`DRIVER_MODULES` and :data:`TRANSPORT_MODULES` say
which module registers which name, and :func:`load_driver` / :func:`load_transport` import just that one.
:func:`load_all` imports every module of this package (``vitals-agent drivers``, and any name the tables
do not know, so a new driver module works before it is listed; ``tests/test_lean_start.py`` checks that the
tables match what the modules register).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import cache

DRIVER_MODULES: dict[str, str] = {
    "aecg-xml": "ecg.drivers",
    "barcode": "barcode",
    "ble-blood-pressure": "ble.drivers",
    "ble-body-composition": "ble.drivers",
    "ble-heart-rate": "ble.drivers",
    "ble-pulse-oximeter": "ble.drivers",
    "ble-thermometer": "ble.drivers",
    "ble-weight-scale": "ble.drivers",
    "health-o-meter": "health_o_meter",
    "masimo-ascii": "masimo",
    "nonin-3230": "ble.drivers",
    "nonin-df2": "nonin",
    "nonin-df8": "nonin",
    "philips-xml": "ecg.drivers",
    "scale-ascii": "scale_ascii",
    "scp-ecg": "ecg.drivers",
    "scp-ecg-serial": "ecg.drivers",
    "suntech-advantage": "suntech",
    "tanita": "tanita",
}
TRANSPORT_MODULES: dict[str, str] = {
    "ble": "ble.transport",
    "folder": "ecg.folder",
    "serial": "serial_transport",
    "ecg-serial-file": "ecg.serial_file",
}


def _import(module: str) -> None:
    importlib.import_module(f"{__name__}.{module}")


def _load(table: Mapping[str, str], name: str) -> None:
    module = table.get(name)
    if module is None:
        load_all()
    else:
        _import(module)


def load_driver(name: str) -> None:
    """Import the module that registers driver ``name`` (every module when the table does not know it)."""
    _load(DRIVER_MODULES, name)


def load_transport(name: str) -> None:
    """Import the module that registers transport ``name`` (every module when the table does not know it)."""
    _load(TRANSPORT_MODULES, name)


@cache
def load_all() -> None:
    """Import every driver and transport module once (they register themselves on import)."""
    for info in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.startswith("_") or leaf.startswith("test"):
            continue
        importlib.import_module(info.name)
