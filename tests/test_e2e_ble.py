"""BLE end to end: a fake A&D cuff on a fake BlueZ (private D-Bus) -> the agent as a real process
using bleak's real BlueZ backend -> python-hl7's MLLP server. Stored records, most of them failed and
one repeated, give exactly one ORU^R01 per good record; a dropped link and an agent restart produce no
duplicate; the cuff's clock is set."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e_helpers import AgentProcess, write_config
from tests.fake_ehr import Hl7Ehr
from tests.fakebluez.gatt import and_ua651ble, u16
from tests.fakebluez.payloads import NAN, blood_pressure
from tests.fakebluez.scenarios import indicate_then_leave
from tests.fakebluez.server import FakeBlueZ
from tests.oracle import validate_oru

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # the agent as a subprocess


def systolic_of(message: str) -> str:
    return validate_oru(message).value("150021")


async def test_cuff_stored_records_reach_ehr_once_across_link_drop_and_restart(
    fake_bluez: FakeBlueZ, tmp_path: Path
) -> None:
    ehr = await Hl7Ehr().start()
    cuff = fake_bluez.add(and_ua651ble())
    t = datetime(2026, 11, 28, 8, 0, 0)
    good1 = blood_pressure(128, 84, 99, 67, t)
    good2 = blood_pressure(131, 86, 101, 70, t + timedelta(minutes=5))
    failed = [blood_pressure(NAN, NAN, NAN, NAN, t + timedelta(minutes=m)) for m in (1, 2, 3)]
    first_batch = [failed[0], good1, failed[1], good2, good1, failed[2]]  # good1 repeated, three failed
    cfg = write_config(
        tmp_path / "agent.toml",
        data_dir=tmp_path / "data",
        ehr_port=ehr.port,
        devices=[
            {
                "id": "cuff-1",
                "driver": "ble-blood-pressure",
                "address": "00:09:1F:12:34:56",
                "scan_seconds": 5,
            }
        ],
    )
    agent = AgentProcess(cfg)
    try:
        await indicate_then_leave(cuff, first_batch, timeout=30)
        await ehr.wait_for(2, timeout=30)
        # The cuff comes back (dropped link): it re-sends everything it stored plus one new record.
        good3 = blood_pressure(118, 76, 90, 64, t + timedelta(minutes=9))
        await indicate_then_leave(cuff, [*first_batch, good3], timeout=30)
        await ehr.wait_for(3, timeout=30)
        code, _ = agent.terminate()
        assert code == 0
        # The agent restarts; the cuff re-sends its whole memory once more: nothing new may be sent.
        agent = AgentProcess(cfg)
        await indicate_then_leave(cuff, [*first_batch, good3], timeout=30)
        await agent.wait_log(
            lambda: bool(agent.events("device.disconnected")), what="session end", timeout=30
        )
        code, _ = agent.terminate()
        assert code == 0
    finally:
        agent.cleanup()
        await ehr.close()
    assert len(ehr.messages) == 3, [systolic_of(m) for m in ehr.messages]
    assert [systolic_of(m) for m in ehr.messages] == ["128", "131", "118"]
    for message in ehr.messages:
        parsed = validate_oru(message)
        identity = "|".join(seg[18] for seg in parsed.obx)
        assert "00091FFFFE123456" in identity or "5140300185" in identity
    assert cuff.writes.get(u16(0x2A08)), "the cuff's clock was set"
