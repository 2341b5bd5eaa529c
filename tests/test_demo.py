"""`vitals-agent demo` (what `make demo` runs): simulated devices through the real agent to the built-in
receiver; it ends by itself, exits 0, and every ORU it shows is valid under the STRICT oracle."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.oracle import validate_oru
from vitals_agent import host

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # the agent as a subprocess


@pytest.mark.skipif(not host.HAS_PTY, reason="the demo's simulated devices need POSIX pseudo-terminals")
def test_demo_shows_acknowledged_valid_messages_from_every_simulated_device_and_ends() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vitals_agent", "demo", "--seconds", "8"],
        capture_output=True,
        text=True,
        timeout=45,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    acked = int(re.search(r"demo finished: (\d+) ORU\^R01 messages acknowledged", out).group(1))  # type: ignore[union-attr]
    messages = re.findall(r"<< EHR received ORU\^R01 \S+:\n((?:   .*\n)+)", out)
    assert acked == len(messages) >= 3
    devices = set()
    for block in messages:
        raw = "\r".join(line[3:] for line in block.splitlines())
        parsed = validate_oru(raw)
        assert parsed.msh[11] == "D"  # demo data is never sent as production (P)
        devices.add(parsed.obx[0][3].split("^")[1])
    assert devices >= {
        "MDC_DEV_SPEC_PROFILE_PULS_OXIM",
        "MDC_DEV_SPEC_PROFILE_BP",
        "MDC_DEV_SPEC_PROFILE_SCALE",
    }
    # scan -> lookup -> confirm -> bound: the demo's wristband is looked up in the EHR (a valid QBP^Q22),
    # confirmed, and the ORUs after that carry the EHR's patient
    assert "<< EHR received patient query QBP^Q22" in out
    assert "** nurse confirms" in out
    bound = [validate_oru("\r".join(line[3:] for line in b.splitlines())) for b in messages]
    pids = [p.pid for p in bound if p.pid.text(3, 1) == "ZQ4471902"]
    assert pids, "no ORU was bound to the scanned, confirmed patient"
    assert all((p[5], p[7], p[8]) == ("QUIRKE^ODALYS^^^^^L", "19610923", "F") for p in pids)
    assert out.index("** nurse confirms") < out.index("PID|||ZQ4471902")
