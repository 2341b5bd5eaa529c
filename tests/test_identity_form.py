"""Issue 17 item 1: one device identity form for every driver and transport (hl7-pcd01.md §7.6).

Walks every driver's sample readings (drivers/samples.py: the simulators' bytes and devices.md layouts,
decoded by the drivers themselves) through the ORU builder, and the EKG decoders' synthetic files, and
checks OBX-18 of the MDS row, OBX-18 of every row without the hierarchy, the temporary PID-3, the FHIR
Device's identifier and the status page all carry the same EI: serial (else EUI-64, else configured
id) ^ model ^ EUI-64 (the device's, else the agent's) ^ ``EUI-64``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests import test_ecg_fixtures as ecg
from tests.kit import PROFILE
from tests.oracle import ParsedOru, validate_oru
from vitals_agent.agent.control import render_text
from vitals_agent.agent.service import AgentService
from vitals_agent.agent.storage.outbox import OutboxMessage
from vitals_agent.config.schema import parse_config
from vitals_agent.drivers.base import DecodeContext, driver_class
from vitals_agent.drivers.samples import SAMPLE_EUI64, drivers_with_readings, sample_readings
from vitals_agent.fhir.bundle import EQUIPMENT_SYSTEM, FhirProfile, build_bundle
from vitals_agent.hl7.oru import build_oru
from vitals_agent.models import DeviceIdentity, Reading

GATEWAY = PROFILE.gateway_eui64
CREATED = datetime(2025, 3, 14, 15, 30, 12, tzinfo=UTC)
BLE = {"ble-blood-pressure", "ble-thermometer", "ble-weight-scale", "ble-body-composition"}
BLE |= {"ble-pulse-oximeter", "ble-heart-rate"}


def _oru(reading: Reading, *, hierarchy_rows: bool = True) -> ParsedOru:
    profile = dataclasses.replace(PROFILE, hierarchy_rows=hierarchy_rows)
    return validate_oru(build_oru(reading, profile, control_id="ID1", created_at=CREATED))


def _expected(device: DeviceIdentity) -> list[str]:
    entity = device.serial_number or device.eui64 or device.id
    return [entity, (device.model or "")[:20], device.eui64 or GATEWAY, "EUI-64"]


def test_every_driver_has_sample_readings() -> None:
    names = drivers_with_readings()
    assert "barcode" not in names and len(names) >= 18
    for name in names:
        assert sample_readings(name), f"{name}: no sample reading"


@pytest.mark.parametrize("driver", drivers_with_readings())
def test_every_driver_sends_the_one_identity_form(driver: str) -> None:
    readings = sample_readings(driver, "dev-7")
    forms = set()
    for reading in readings:
        parsed = _oru(reading)
        mds = parsed.obx[0]
        assert mds[4] == "1.0.0.0" and mds[11] == "X"
        ei = mds.components(18)
        assert ei == _expected(reading.device), driver
        assert ei[3] == "EUI-64"  # the same type for every device
        if reading.device.serial_number:  # the device's own serial is always in it
            assert ei[0] == reading.device.serial_number
        if reading.device.eui64:
            assert ei[2] == reading.device.eui64
        assert all(o[18] == "" for o in parsed.obx[1:])
        # unbound: the temporary PID-3 names the same device (EI-1@EI-3)
        assert parsed.pid.text(3, 1).startswith(f"TMP-{ei[0]}@{ei[2]}-")
        # without the hierarchy every row carries the same EI
        flat = _oru(reading, hierarchy_rows=False)
        assert {o[18] for o in flat.obx} == {mds[18]}
        forms.add(mds[18])
    assert len(forms) == 1, f"{driver}: one device, one identity: {forms}"


@pytest.mark.parametrize("driver", drivers_with_readings())
def test_the_fhir_device_carries_the_same_identity(driver: str) -> None:
    """The FHIR Device names the device as OBX-18 does: identifier ``urn:vitals-agent:equipment|<EI>``."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.device import Device

    profile = FhirProfile(gateway_eui64=GATEWAY)
    for reading in sample_readings(driver, "dev-7"):
        obx18 = "^".join(_oru(reading).obx[0].components(18))
        body = build_bundle(reading, profile, message_id="ID1", created_at=CREATED)
        bundle = Bundle.model_validate_json(body)  # fhir.resources R4B: the whole transaction
        devices = [e.resource for e in bundle.entry or [] if isinstance(e.resource, Device)]
        assert len(devices) == 1, driver
        device = Device.model_validate(devices[0].model_dump())  # and the Device on its own
        forms = [i.value for i in device.identifier or [] if i.system == EQUIPMENT_SYSTEM]
        assert forms == [obx18], driver
        assert obx18.split("^") == _expected(reading.device)


def test_identities_by_transport() -> None:
    """Serial devices: under the agent's EUI-64; BLE devices with a System ID: under their own."""
    masimo = sample_readings("masimo-ascii")[0].device
    assert _oru(sample_readings("masimo-ascii")[0]).obx[0][18] == f"0000123456^^{GATEWAY}^EUI-64"
    assert masimo.serial_number == "0000123456"
    scale = sample_readings("scale-ascii", "scale-room7")[0]
    assert _oru(scale).obx[0][18] == f"scale-room7^^{GATEWAY}^EUI-64"
    for name in BLE:
        reading = sample_readings(name)[0]
        assert reading.device.eui64 == SAMPLE_EUI64
        assert _oru(reading).obx[0].components(18)[2:] == [SAMPLE_EUI64, "EUI-64"]
    nonin_ble = sample_readings("nonin-3230")[0]  # no System ID: its serial under the agent
    assert _oru(nonin_ble).obx[0][18] == f"502123456^3230^{GATEWAY}^EUI-64"


def test_ble_device_without_serial_keeps_the_pcd01_eui64_form() -> None:
    device = DeviceIdentity(id="cuff", eui64=SAMPLE_EUI64)
    reading = sample_readings("ble-blood-pressure")[0].with_updates(device=device)
    assert _oru(reading).obx[0][18] == f"{SAMPLE_EUI64}^^{SAMPLE_EUI64}^EUI-64"


def test_a_device_eui64_is_its_16_hex_digits_and_nothing_more() -> None:
    assert DeviceIdentity(id="cuff", eui64="00:09:1f:ff:fe:3d:4e:5f").eui64 == SAMPLE_EUI64
    with pytest.raises(ValueError, match="EUI-64 must be 16 hexadecimal digits"):
        DeviceIdentity(id="cuff", eui64=f"{SAMPLE_EUI64}\n")  # a line break after them went into EI-3


@pytest.mark.parametrize(
    ("driver", "data"),
    [
        ("scp-ecg", ecg.synthetic_scp),
        ("aecg-xml", ecg.synthetic_aecg),
        ("philips-xml", ecg.synthetic_philips_104),
    ],
)
def test_ekg_files_decoded_by_their_drivers_carry_the_form(driver: str, data: Callable[[], bytes]) -> None:
    ctx = DecodeContext(device=DeviceIdentity(id="cart-1"), now=lambda: CREATED)
    out = driver_class(driver)().decode_chunks([data()], ctx)
    reading = next(o for o in out if isinstance(o, Reading))
    ei = _oru(reading).obx[0].components(18)
    assert ei == _expected(reading.device)
    assert ei[0] == (reading.device.serial_number or "cart-1")


async def test_status_page_shows_the_identity_the_messages_carry(tmp_path: Path) -> None:
    config = parse_config(
        {
            "agent": {
                "facility": "EXCLINIC",
                "location": "CLINIC^ROOM12",
                "data_dir": str(tmp_path),
                "gateway_eui64": GATEWAY,
            },
            "control": {"enabled": False},
            "devices": [
                {"id": "oxi-1", "driver": "masimo-ascii", "port": str(tmp_path / "tty"), "report": "every"}
            ],
        }
    )
    svc = AgentService(config)
    try:
        assert svc.status()["devices"][0]["equipment"] == f"oxi-1^^{GATEWAY}^EUI-64"  # nothing stated yet
        runtime = svc.runtimes["oxi-1"]
        reading = sample_readings("masimo-ascii", "oxi-1")[0]
        await runtime.emit(reading)
        queued = svc.outbox.peek(5)
        assert queued and isinstance(queued[0], OutboxMessage)
        sent = validate_oru(queued[0].body).obx[0].components(18)
        shown = svc.status()["devices"][0]["equipment"]
        assert shown == "^".join(sent) == f"0000123456^^{GATEWAY}^EUI-64"
        assert f"identity {shown}" in render_text(svc.status(), {"set": False})
    finally:
        svc.close()
