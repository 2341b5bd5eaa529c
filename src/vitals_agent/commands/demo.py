"""``vitals-agent demo``: simulated devices, the real agent and a built-in EHR receiver in one process.

Everything real except the two ends: each simulated device plays its protocol on a pseudo-terminal that
the agent opens with pyserial like a USB serial port; messages go over real TCP/MLLP to a receiver built
on python-hl7, which prints each ORU^R01 and acknowledges it. Data stays in a temporary directory.

The receiver is also the EHR's patient lookup (IHE PDQ): a simulated wristband scanner scans MRN
``ZQ4471902`` after a few seconds, the agent asks the EHR (QBP^Q22), shows the answer for confirmation,
the demo confirms it as the nurse would, and the ORUs from then on carry the EHR's patient.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vitals_agent.agent.patient.origin import Origin
from vitals_agent.agent.pipeline.flow import Accepted
from vitals_agent.agent.service import AgentService, install_signal_handlers
from vitals_agent.commands._options import add_command
from vitals_agent.config.schema import parse_config
from vitals_agent.drivers.base import Simulator, all_drivers
from vitals_agent.drivers.pty import PtyDevice
from vitals_agent.hl7.oru import new_control_id
from vitals_agent.hl7.pdq import Authority, PdqCandidate, PdqDirectory
from vitals_agent.logs import setup_logging
from vitals_agent.net.receiver import start_receiver

# (device id, driver, report policy, report seconds, simulator options)
DEMO_DEVICES: list[tuple[str, str, str, float, dict[str, Any]]] = [
    ("spo2-demo", "masimo-ascii", "stable", 3.0, {"interval": 0.5, "seed": 1}),
    ("nibp-demo", "suntech-advantage", "every", 10.0, {"interval": 0.5, "auto_start": True}),
    ("scale-demo", "scale-ascii", "every", 10.0, {"interval": 0.5}),
]


DEMO_AUTHORITY = "DEMO_CLINIC&2.999.1&ISO"
DEMO_MRN = "ZQ4471902"
DEMO_PATIENT = PdqCandidate(
    mrn=DEMO_MRN,
    authority=Authority.parse(DEMO_AUTHORITY),
    identifier_type="MR",
    family="QUIRKE",
    given="ODALYS",
    birth_date="19610923",
    sex="F",
    encounter="V778",
)
SCAN_AFTER = 2.5  # seconds: the first readings go out unbound, by room
CONFIRM_AFTER = 1.5  # seconds the "nurse" looks at the name and date of birth


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "demo", cmd_demo)
    length = p.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=12.0, help="how long to run (default 12)")
    length.add_argument("--forever", action="store_true", help="run until Ctrl-C")
    p.add_argument("--data-dir", type=Path, help="keep the outbox here (default: a temporary directory)")
    p.add_argument("--verbose", "-v", action="store_true", help="show the agent's own log (INFO)")


def _simulator(driver_name: str, settings: dict[str, Any]) -> Simulator | None:
    """The driver's simulator with ``settings`` (a wrong setting is an error, not silently dropped); None
    when the driver is not installed or has none."""
    cls = all_drivers().get(driver_name)
    if cls is None or cls.simulator_class is None:
        return None
    return cls().simulator(**settings)


def _print_reading(accepted: Accepted) -> None:
    values = "  ".join(f"{m.metric}={m.text_value()} {m.unit}" for m in accepted.reading.measurements)
    flags = f"  flags={','.join(accepted.reading.flags)}" if accepted.reading.flags else ""
    print(f"\n>> reading  {accepted.device_id}  {values}{flags}")
    print(f"   queued as {accepted.control_id}")


async def _later(seconds: float, work: Any) -> None:
    await asyncio.sleep(seconds)
    await work


async def _confirm_when_pending(service: AgentService) -> None:
    """Plays the nurse at the workstation: reads the EHR's answer and confirms it."""
    lookup = service.lookup
    if lookup is None:
        return
    while True:
        view = lookup.view(reveal=True)
        if view is not None and view["state"] == "confirm":
            break
        await asyncio.sleep(0.1)
    (who,) = view["candidates"]
    print(
        f"\n** wristband scanned; the EHR says: {who['name']}, born {who['birth_date']}, sex {who['sex']}"
        f" -- pending confirmation ({view['held']} reading(s) held meanwhile)"
    )
    await asyncio.sleep(CONFIRM_AFTER)
    print(
        "** nurse confirms: readings from now on (and those held) go to this patient, from the EHR's answer"
    )
    await lookup.confirm(Origin("api", source="demo nurse"))


def _field(message: str, segment: str, index: int) -> str:
    for seg in message.replace("\n", "\r").split("\r"):
        if seg.startswith(segment + "|"):
            fields = seg.split("|")
            # MSH-1 is the separator itself, so MSH-n is fields[n-1]
            pos = index - 1 if segment == "MSH" else index
            return fields[pos] if pos < len(fields) else ""
    return ""


async def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("INFO" if args.verbose else "WARNING", json=False)
    workdir = Path(tempfile.mkdtemp(prefix="vitals-agent-demo-"))
    data = args.data_dir or workdir / "data"
    acked: list[str] = []

    directory = PdqDirectory(
        [DEMO_PATIENT], authority=Authority.parse(DEMO_AUTHORITY), application="DEMO_EHR"
    )

    def on_message(text: str) -> None:
        control_id = _field(text, "MSH", 10)
        if _field(text, "MSH", 9).startswith("QBP"):
            return  # printed with its answer
        print(f"<< EHR received ORU^R01 {control_id}:")
        for seg in text.replace("\n", "\r").split("\r"):
            if seg:
                print(f"   {seg}")
        print(f"<< EHR answered ACK  MSA|AA|{control_id}")
        acked.append(control_id)

    def answer(text: str) -> str | None:
        if not _field(text, "MSH", 9).startswith("QBP"):
            return None
        print(f"\n<< EHR received patient query QBP^Q22 {_field(text, 'MSH', 10)}:")
        for seg in text.replace("\n", "\r").split("\r")[1:]:
            if seg:
                print(f"   {seg}")
        rsp = directory.answer(text, control_id=new_control_id(), now=datetime.now(UTC))
        print("<< EHR answered RSP^K22:")
        for seg in rsp.split("\r")[1:]:
            if seg.startswith(("QAK", "PID")):
                print(f"   {seg}")
        return rsp

    receiver = await start_receiver("127.0.0.1", 0, on_message, answer=answer)
    ptys: list[PtyDevice] = []
    sims: list[asyncio.Task[None]] = []
    devices: list[dict[str, Any]] = []
    for dev_id, driver_name, report, seconds, sim_options in DEMO_DEVICES:
        sim = _simulator(driver_name, sim_options)
        if sim is None:
            continue
        pty = PtyDevice(workdir / f"tty-{dev_id}").open()
        ptys.append(pty)
        sims.append(asyncio.create_task(sim.run(pty), name=f"sim:{dev_id}"))
        devices.append(
            {
                "id": dev_id,
                "driver": driver_name,
                "port": str(pty.link),
                "report": report,
                "report_seconds": seconds,
            }
        )
    scanner = _simulator("barcode", {"codes": [DEMO_MRN], "interval": 1.0})
    if scanner is not None:
        pty = PtyDevice(workdir / "tty-scanner").open()
        ptys.append(pty)
        sims.append(asyncio.create_task(_later(SCAN_AFTER, scanner.run(pty)), name="sim:scanner"))
        devices.append({"id": "wristband", "driver": "barcode", "port": str(pty.link)})
    config = parse_config(
        {
            "agent": {"facility": "DEMO_CLINIC", "location": "DEMO^ROOM1", "data_dir": str(data)},
            "ehr": {"host": "127.0.0.1", "port": receiver.port, "processing_id": "D"},
            "patient": {"assigning_authority": DEMO_AUTHORITY},
            "pdq": {
                "host": "127.0.0.1",
                "port": receiver.port,
                "receiving_application": "DEMO_EHR",
                "assigning_authority": DEMO_AUTHORITY,
            },
            "control": {"enabled": False},
            "devices": devices,
        }
    )
    print(
        f"vitals-agent demo: {len(devices)} simulated devices -> agent -> "
        f"EHR receiver on 127.0.0.1:{receiver.port}"
    )
    for dev in devices:
        report = f"  (report={dev['report']})" if "report" in dev else "  (wristband scanner)"
        print(f"   {dev['id']:<11} {dev['driver']:<18} on {dev['port']}{report}")
    service = AgentService(config)
    service.pipeline.observers.append(_print_reading)
    stop = asyncio.Event()
    install_signal_handlers(stop)
    nurse = asyncio.create_task(_confirm_when_pending(service), name="nurse")
    sims.append(nurse)

    async def stop_later() -> None:
        await asyncio.sleep(args.seconds)
        # let the last queued messages reach the receiver before stopping
        for _ in range(40):
            if service.outbox.depth() == 0:
                break
            await asyncio.sleep(0.05)
        stop.set()

    timer = None if args.forever else asyncio.create_task(stop_later())
    try:
        code = await service.run(stop)
    finally:
        for task in [*sims, *([timer] if timer else [])]:
            task.cancel()
        await asyncio.gather(*sims, return_exceptions=True)
        for pty in ptys:
            pty.close()
        await receiver.close()
        shutil.rmtree(workdir, ignore_errors=True)  # the ptys' links, and the outbox unless --data-dir
    print(f"\ndemo finished: {len(acked)} ORU^R01 messages acknowledged by the EHR receiver.")
    if not acked:
        print("error: no message was acknowledged", file=sys.stderr)
        return 1
    return code
