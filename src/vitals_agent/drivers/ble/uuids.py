"""Bluetooth UUIDs used by the BLE drivers, and the normalisation of user-given UUID spellings."""

from __future__ import annotations

import re

from vitals_agent.errors import DecodeError

_BASE = "-0000-1000-8000-00805f9b34fb"
_FULL = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def uuid16(short: int) -> str:
    """The full lower-case 128-bit form of a 16-bit SIG UUID."""
    return f"0000{short:04x}{_BASE}"


def normalize_uuid(text: str) -> str:
    """Accept ``2A35``, ``0x2a35``, ``00002a35`` or a full UUID; return the full lower-case form."""
    value = text.strip().lower()
    if value.startswith("0x"):
        value = value[2:]
    if re.fullmatch(r"[0-9a-f]{4}", value):
        return f"0000{value}{_BASE}"
    if re.fullmatch(r"[0-9a-f]{8}", value):
        return f"{value}{_BASE}"
    if _FULL.match(value):
        return value
    raise DecodeError(f"not a Bluetooth UUID: {text!r}")


def short_name(uuid: str) -> str:
    """``2A35`` for SIG UUIDs, else the full UUID (for logs and messages)."""
    uuid = uuid.lower()
    if uuid.endswith(_BASE) and uuid.startswith("0000"):
        return uuid[4:8].upper()
    return uuid


# services
BLOOD_PRESSURE_SERVICE = uuid16(0x1810)
HEALTH_THERMOMETER_SERVICE = uuid16(0x1809)
WEIGHT_SCALE_SERVICE = uuid16(0x181D)
BODY_COMPOSITION_SERVICE = uuid16(0x181B)
PLX_SERVICE = uuid16(0x1822)
HEART_RATE_SERVICE = uuid16(0x180D)
DEVICE_INFORMATION_SERVICE = uuid16(0x180A)
BATTERY_SERVICE = uuid16(0x180F)
CURRENT_TIME_SERVICE = uuid16(0x1805)
NONIN_OXIMETRY_SERVICE = "46a970e0-0d5f-11e2-8b5e-0002a5d5c51b"
OMRON_OPTION_SERVICE = "5df5e817-a945-4f81-89c0-3d4e9759c07c"

HEALTH_SERVICES: dict[str, str] = {
    BLOOD_PRESSURE_SERVICE: "blood pressure",
    HEALTH_THERMOMETER_SERVICE: "health thermometer",
    WEIGHT_SCALE_SERVICE: "weight scale",
    BODY_COMPOSITION_SERVICE: "body composition",
    PLX_SERVICE: "pulse oximeter",
    HEART_RATE_SERVICE: "heart rate",
    NONIN_OXIMETRY_SERVICE: "Nonin oximetry",
}

# characteristics
BLOOD_PRESSURE_MEASUREMENT = uuid16(0x2A35)
INTERMEDIATE_CUFF_PRESSURE = uuid16(0x2A36)
BLOOD_PRESSURE_FEATURE = uuid16(0x2A49)
BLOOD_PRESSURE_RECORD = uuid16(0x2B36)
TEMPERATURE_MEASUREMENT = uuid16(0x2A1C)
TEMPERATURE_TYPE = uuid16(0x2A1D)
INTERMEDIATE_TEMPERATURE = uuid16(0x2A1E)
WEIGHT_MEASUREMENT = uuid16(0x2A9D)
WEIGHT_SCALE_FEATURE = uuid16(0x2A9E)
BODY_COMPOSITION_MEASUREMENT = uuid16(0x2A9C)
PLX_SPOT_CHECK = uuid16(0x2A5E)
PLX_CONTINUOUS = uuid16(0x2A5F)
PLX_FEATURES = uuid16(0x2A60)
HEART_RATE_MEASUREMENT = uuid16(0x2A37)
RACP = uuid16(0x2A52)
DATE_TIME = uuid16(0x2A08)
CURRENT_TIME = uuid16(0x2A2B)
BATTERY_LEVEL = uuid16(0x2A19)
MANUFACTURER_NAME = uuid16(0x2A29)
MODEL_NUMBER = uuid16(0x2A24)
SERIAL_NUMBER = uuid16(0x2A25)
HARDWARE_REVISION = uuid16(0x2A27)
FIRMWARE_REVISION = uuid16(0x2A26)
SOFTWARE_REVISION = uuid16(0x2A28)
SYSTEM_ID = uuid16(0x2A23)
PNP_ID = uuid16(0x2A50)
NONIN_MEASUREMENT = "0aad7ea0-0d60-11e2-8e3c-0002a5d5c51b"
NONIN_CONTROL_POINT = "1447af80-0d60-11e2-88b6-0002a5d5c51b"

OMRON_COMPANY_ID = 0x020E
