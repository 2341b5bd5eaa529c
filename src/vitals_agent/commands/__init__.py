"""The ``vitals-agent`` commands, one module per group: each module's ``register(subparsers)`` adds them.

Lean start: ``vitals-agent --help`` prints :data:`COMMANDS` and a command imports only its own module (not
the agent, PIL or BLE for ``status``). Each command's one-line help is written here only: the module's
parser takes it from this table (``_options.add_command``). tests/test_lean_start.py checks the table
against what the modules register. A module missing here still works (every module is then imported).
"""

from __future__ import annotations

# command -> one-line help
_HELP: dict[str, str] = {
    "audit": "the audit trail: verify its hash chain",
    "scan": "list nearby Bluetooth health devices (address, name, RSSI, services, Omron record counts)",
    "pair": "pair and bond with a Bluetooth device through BlueZ",
    "run": "run the agent (the service runs this)",
    "clinician": "sign a clinician in or out (who takes the vitals; running agent)",
    "check-config": "validate a configuration: every problem at once, files and folders included",
    "config": "central configuration: pull (--check), keygen, bundle",
    "decode": "decode device data offline and print one JSON object per reading",
    "drivers": "list the available drivers",
    "demo": "run simulated devices, the agent and a built-in EHR receiver",
    "ecg-render": "render an HL7 aECG or Philips XML file's 12 leads to a PDF or PNG report page",
    "interface-spec": (
        "write the HL7 interface specification for this configuration (for the EHR interface team)"
    ),
    "manual": "enter respiration, pain, height, O2, BP position/arm/cuff by hand",
    "nibp-start": "start a measurement on a SunTech Advantage NIBP module",
    "outbox": "list, show, retry, dead-letter or purge queued messages",
    "patient": "set, clear or show the room's patient (running agent)",
    "ports": "list serial ports (USB VID:PID, serial number) and matching devices",
    "receive": "listen for HL7 messages over MLLP and print them (a stand-in EHR)",
    "review": "confirm, reject, correct or retract readings (the review list)",
    "send-test": "send one test ORU^R01 (processing id T) and print the ACK",
    "service": "the agent as a system service (systemd drop-in; Windows service)",
    "simulate": "run a simulated serial device on a pseudo-terminal or a TCP port (terminal server)",
    "status": "show devices, patient context and delivery of the running agent",
    "support-bundle": "write a zip for support: config, status, logs, counts; no patient data",
}

# The module of a command whose module is not named after it (as ``send-test`` is ``send_test``).
_MODULE: dict[str, str] = {
    "scan": "ble",
    "pair": "ble",
    "run": "core",
    "check-config": "core",
    "decode": "core",
    "drivers": "core",
    "ecg-render": "ecg",
    "nibp-start": "nibp",
    "support-bundle": "support",
}

# command -> (module in vitals_agent.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    name: (_MODULE.get(name, name.replace("-", "_")), text) for name, text in _HELP.items()
}
