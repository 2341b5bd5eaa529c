"""Lean start: ``--help`` imports no command module, a command imports only its own, and an agent whose
devices are all serial loads no BLE, EKG reader, PIL, renderer, aiohttp or FHIR model. Timings are in
bench/bench_start.py (never asserted here); these tests check what is imported."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from vitals_agent import commands
from vitals_agent.cli import COMMANDS
from vitals_agent.drivers import DRIVER_MODULES, TRANSPORT_MODULES, load_all
from vitals_agent.drivers.base import _DRIVERS, _TRANSPORTS

HEAVY = (
    "PIL",
    "bleak",
    "dbus_fast",
    "aiohttp",
    "fhir.resources",
    "vitals_agent.drivers.ecg",
    "vitals_agent.drivers.ble",
    "vitals_agent.net.fhir_http",
)


def test_the_command_table_is_what_the_modules_register() -> None:
    registered: dict[str, tuple[str, str]] = {}
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        module.register(sub)
        for action in sub._choices_actions:
            registered[action.dest] = (info.name, action.help or "")
    assert registered == COMMANDS, "add the command to vitals_agent.commands.COMMANDS"


def test_the_driver_tables_are_what_the_modules_register() -> None:
    load_all()
    prefix = "vitals_agent.drivers."
    assert {
        n: c.__module__.removeprefix(prefix) for n, c in _DRIVERS.items() if not n.startswith("test")
    } == (DRIVER_MODULES), "add the driver to vitals_agent.drivers.DRIVER_MODULES"
    assert {
        n: c.__module__.removeprefix(prefix) for n, c in _TRANSPORTS.items() if n in TRANSPORT_MODULES
    } == (TRANSPORT_MODULES)
    assert set(TRANSPORT_MODULES) <= set(_TRANSPORTS)


def _imported(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names: list[str] = json.loads(out.splitlines()[-1])
    return names


_PRINT_HEAVY = (
    f"import json, sys; print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))"
)


@pytest.mark.slow  # a fresh interpreter
def test_help_imports_no_command_module() -> None:
    code = (
        "import asyncio, contextlib, json, sys\n"
        "from vitals_agent.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(None):\n"
        "    asyncio.run(main(['--help']))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('vitals_agent.commands.',"
        " 'pydantic', 'structlog')) and m != 'vitals_agent.commands._options')))\n"
    )
    assert _imported(code) == []


@pytest.mark.slow  # fresh interpreters
def test_a_serial_only_agent_and_check_config_load_nothing_heavy(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        "[agent]\nfacility = 'X'\n"
        f"data_dir = '{tmp_path / 'data'}'\n"
        "[control]\nenabled = false\n"
        "[[devices]]\nid = 'oxi'\ndriver = 'masimo-ascii'\nport = 'socket://127.0.0.1:4001'\n"
        "[[devices]]\nid = 'bp'\ndriver = 'suntech-advantage'\nport = 'rfc2217://127.0.0.1:4002'\n"
    )
    check = (
        "import asyncio, contextlib\n"
        "from vitals_agent.cli import main\n"
        f"assert asyncio.run(main(['check-config', {str(config)!r}])) == 0\n" + _PRINT_HEAVY
    )
    assert _imported(check) == []
    agent = (
        "from vitals_agent.config.schema import load_config\n"
        "from vitals_agent.agent.service import AgentService\n"
        f"service = AgentService(load_config({str(config)!r}))\n"
        "from vitals_agent.drivers.base import transport_class\n"
        "transport_class('serial')\n"
        "service.close()\n" + _PRINT_HEAVY
    )
    assert _imported(agent) == []
    # and a BLE device does load its driver (the tables are not a way of never loading anything)
    ble = (
        "from vitals_agent.drivers.base import driver_class\ndriver_class('ble-thermometer')\n" + _PRINT_HEAVY
    )
    assert "vitals_agent.drivers.ble.drivers" in _imported(ble)


# What ``run`` with serial devices only must not load: the status/control server when it is off, the
# [pdq] lookup and its QBP codec, the FHIR builder and sender, the inbound application-ACK port, metrics,
# python-hl7 and hl7apy (test peers), platformdirs (data_dir is set). Each of these was once loaded by
# every agent; together they were ~2.5 MB of the idle RSS (bench/bench_start.py).
NOT_FOR_SERIAL_ONLY = (
    *HEAVY,
    "vitals_agent.agent.patient.lookup",
    "vitals_agent.hl7.pdq",
    "vitals_agent.net.pdq",
    "vitals_agent.fhir",
    "vitals_agent.agent.delivery.fhir_sender",
    "vitals_agent.net.ack_listener",
    "vitals_agent.net.receiver",
    "vitals_agent.agent.metrics",
    "prometheus_client",
    "hl7apy",
    "platformdirs",
)
CONTROL = ("vitals_agent.agent.control", "h11", "html")

# ``vitals-agent run`` in a fresh interpreter: once the agent says it is ready and its device (a TCP
# terminal-server port opened here) has connected, print what is imported and stop the agent as
# systemd would (SIGTERM).
_RUN_UNTIL_CONNECTED = """
import asyncio, json, os, signal, socket, sys
from vitals_agent.cli import main
from vitals_agent.host import readiness

server = socket.create_server(("127.0.0.1", 0))
server.setblocking(False)
config = sys.argv[1]
with open(config, "a") as f:
    f.write(f"port = 'socket://127.0.0.1:{server.getsockname()[1]}'\\n")

async def report() -> None:
    conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(server), 60)
    print(json.dumps(sorted(m for m in sys.modules if m.startswith(tuple(sys.argv[2:])))), flush=True)
    conn.close()
    os.kill(os.getpid(), signal.SIGTERM)

tasks = []
readiness.add_listener(lambda event, _: event == "ready" and tasks.append(asyncio.ensure_future(report())))
sys.exit(asyncio.run(main(["run", "--config", config])))
"""


@pytest.mark.slow  # a fresh interpreter running the agent
@pytest.mark.parametrize("control", [False, True], ids=["control-off", "control-on"])
def test_run_with_serial_devices_only_loads_none_of_the_rest(tmp_path: Path, control: bool) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        "[agent]\nfacility = 'X'\nlog_level = 'WARNING'\n"
        f"data_dir = '{tmp_path / 'data'}'\n"
        "[ehr]\nhost = '127.0.0.1'\nport = 9\n"
        + ("[control]\nport = 0\n" if control else "[control]\nenabled = false\n")
        + "[[devices]]\nid = 'oxi'\ndriver = 'masimo-ascii'\n"  # the port line is added by the script
    )
    watched = NOT_FOR_SERIAL_ONLY + CONTROL + ("vitals_agent.drivers.masimo",)
    out = subprocess.run(
        [sys.executable, "-c", _RUN_UNTIL_CONNECTED, str(config), *watched],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    loaded = json.loads(out.stdout.splitlines()[-1])
    # the check is live: the configured driver is there, and the control server exactly when enabled
    assert "vitals_agent.drivers.masimo" in loaded
    assert ("vitals_agent.agent.control.server" in loaded) is control
    assert [m for m in loaded if m.startswith(NOT_FOR_SERIAL_ONLY)] == []
