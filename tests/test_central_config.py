"""Central configuration: signed bundles, layer merge rules, the reload plan, applying a change to a running
agent (only changed devices restart; a sender reconnects only for connection keys; nothing queued is lost),
refusing unsigned, tampered and stale bundles while keeping the last good one, and `config pull --check`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fake_ehr import Hl7Ehr
from tests.kit import oximeter_reading, until
from tests.kit.toml import toml_str
from tests.private_files import assert_private, under_wine
from vitals_agent import host
from vitals_agent.agent.config_source import ConfigRefused, ConfigSource
from vitals_agent.agent.reconfigure import plan
from vitals_agent.agent.service import AgentService, startup_config
from vitals_agent.cli import main
from vitals_agent.config.central import (
    BundleError,
    Layer,
    diff_lines,
    make_bundle,
    merge_layers,
    open_bundle,
)
from vitals_agent.config.schema import parse_config
from vitals_agent.errors import ConfigError

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
PUBLIC_B64 = base64.b64encode(PUBLIC).decode()

SITE = """
[agent]
facility = "EXCLINIC"
[ehr]
receiving_facility = "HOSP"
ack_timeout_seconds = 2.0
backoff_min_seconds = 0.01
backoff_max_seconds = 0.05
[alerts]
disk_free_mb = 0
hold_down_seconds = 600
[[devices]]
id = "oxi-1"
driver = "masimo-ascii"
port = "/nonexistent/tty-oxi"
report = "every"
[[devices]]
id = "bp-1"
driver = "suntech-advantage"
port = "/nonexistent/tty-bp"
"""
UNIT = """
[alerts]
hold_down_seconds = 120
[[devices]]
id = "oxi-1"
description = "unit 3 oximeter"
"""
ROOM = """
[agent]
location = "CLINIC^ROOM12"
"""


def bundle(*layers: tuple[str, str], serial: int = 1, key: Ed25519PrivateKey = KEY) -> bytes:
    return make_bundle(layers, key, serial=serial, issued_at=datetime(2026, 3, 11, 14, tzinfo=UTC))


# --- pure parts --------------------------------------------------------------------------------------


def test_layers_merge_later_wins_tables_by_key_devices_by_id() -> None:
    local = {
        "agent": {"facility": "LOCAL", "data_dir": "/var/lib/x"},
        "ehr": {"host": "10.0.0.1", "port": 2575},
    }
    merged = merge_layers(
        local,
        [
            Layer("site", tomllib.loads(SITE)),
            Layer("unit", tomllib.loads(UNIT)),
            Layer(
                "room",
                tomllib.loads(ROOM + '[ehr]\nport = 2600\n[[devices]]\nid = "bp-1"\nenabled = false\n'),
            ),
        ],
    )
    assert merged["agent"] == {
        "facility": "EXCLINIC", "data_dir": "/var/lib/x", "location": "CLINIC^ROOM12"
    }  # fmt: skip
    assert merged["ehr"]["host"] == "10.0.0.1" and merged["ehr"]["port"] == 2600
    assert merged["ehr"]["receiving_facility"] == "HOSP"
    assert merged["alerts"] == {"disk_free_mb": 0, "hold_down_seconds": 120}
    assert [(d["id"], d.get("description"), d.get("enabled", True)) for d in merged["devices"]] == [
        ("oxi-1", "unit 3 oximeter", True),
        ("bp-1", None, False),
    ]
    assert merged["devices"][0]["port"] == "/nonexistent/tty-oxi"  # the unit layer changed one key only


def test_a_layer_may_not_set_local_only_keys() -> None:
    with pytest.raises(
        BundleError, match=r"layer 'unit' sets agent\.config_public_key, which only the local"
    ):
        merge_layers({}, [Layer("unit", {"agent": {"config_public_key": "x"}})])


def test_a_good_bundle_opens_and_every_bad_one_says_why() -> None:
    data = bundle(("site", SITE), ("room", ROOM), serial=7)
    opened = open_bundle(data, PUBLIC)
    assert (opened.serial, [x.name for x in opened.layers]) == (7, ["site", "room"])
    envelope = json.loads(data)
    payload = base64.b64decode(envelope["payload"]).replace(b"HOSP", b"EVIL")
    tampered = json.dumps({**envelope, "payload": base64.b64encode(payload).decode()}).encode()
    with pytest.raises(BundleError, match="signature does not verify"):
        open_bundle(tampered, PUBLIC)
    with pytest.raises(BundleError, match="signature does not verify"):
        open_bundle(bundle(("site", SITE), key=Ed25519PrivateKey.generate()), PUBLIC)
    with pytest.raises(BundleError, match=r"not JSON.*unsigned files are not accepted"):
        open_bundle(SITE.encode(), PUBLIC)
    with pytest.raises(BundleError, match="unsigned or malformed bundle: no 'signature'"):
        open_bundle(json.dumps({k: v for k, v in envelope.items() if k != "signature"}).encode(), PUBLIC)


def test_the_plan_restarts_only_what_changed() -> None:
    local = {"agent": {"facility": "X", "data_dir": "/tmp/x"}, "control": {"enabled": False}}
    old = parse_config(merge_layers(local, [Layer("site", tomllib.loads(SITE))]))
    same = plan(old, old)
    assert same.empty
    unit = tomllib.loads(UNIT + '[ehr]\nreceiving_facility = "HOSP2"\n')
    new = parse_config(merge_layers(local, [Layer("site", tomllib.loads(SITE)), Layer("unit", unit)]))
    steps = plan(old, new)
    assert (steps.restart, steps.add, steps.remove, steps.senders) == (["oxi-1"], [], [], [])
    assert steps.profile and steps.alerts and steps.restart_needed == []
    moved = parse_config(merge_layers(local, [Layer("site", tomllib.loads(SITE + "[control]\nport = 9\n"))]))
    assert plan(old, moved).restart_needed == ["control"]
    review = parse_config(
        merge_layers(local, [Layer("s", tomllib.loads(SITE + '[review]\nmode = "confirm"\n'))])
    )
    assert plan(old, review).restart_needed == ["review"]  # the review mode changes only with a restart
    port = parse_config(
        merge_layers(local, [Layer("s", tomllib.loads(SITE.replace("[ehr]", "[ehr]\nport = 9")))])
    )
    assert plan(old, port).senders == ["ehr"]


def test_diff_hides_secrets() -> None:
    lines = diff_lines(
        {"alerts": {"smtp": {"password": "a", "host": "h"}}}, {"alerts": {"smtp": {"password": "b"}}}
    )
    assert lines == ['  - alerts.smtp.host (was "h")', "  ~ alerts.smtp.password: (hidden) -> (hidden)"]


# --- a running agent ---------------------------------------------------------------------------------


def local_file(tmp_path: Path, source: Path, **agent: Any) -> Path:
    path = tmp_path / "agent.toml"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in agent.items())
    path.write_text(
        "[agent]\n"
        f"data_dir = {toml_str(tmp_path / 'data')}\n"
        f"config_source = {toml_str(source)}\n"
        f'config_public_key = "{PUBLIC_B64}"\n'
        "config_poll_seconds = 5\n" + extra + "[control]\nenabled = false\n[ehr]\nport = 1\n"
    )
    return path


async def started(path: Path) -> AgentService:
    source = ConfigSource(path)
    pulled = await startup_config(source)
    return AgentService(pulled.config, source=source, pulled=pulled)


async def test_a_running_agent_applies_a_change_and_refuses_bad_bundles(tmp_path: Path) -> None:
    share = tmp_path / "room12.bundle"
    ehr = await Hl7Ehr().start()
    try:
        site = SITE.replace("[ehr]", f"[ehr]\nport = {ehr.port}")
        share.write_bytes(bundle(("site", site), ("room", ROOM), serial=1))
        svc = await started(local_file(tmp_path, share))
        try:
            assert svc.config.agent.location == "CLINIC^ROOM12" and svc.config.ehr.port == ehr.port
            assert (tmp_path / "data" / "central-config.bundle").read_bytes() == share.read_bytes()
            stop = asyncio.Event()
            run = asyncio.create_task(svc.run(stop))
            await until(lambda: "oxi-1" in svc._device_tasks and "ehr" in svc._sender_tasks, 5, "the agent")
            bp_task, sender = svc._device_tasks["bp-1"], svc.senders["ehr"]
            await svc.pipeline.on_event(svc.runtimes["oxi-1"], oximeter_reading(datetime.now(UTC)))
            await ehr.wait_for(1)
            # the unit layer changes one device and MSH-6: that device restarts, nothing else does
            unit = UNIT + '[ehr]\nreceiving_facility = "HOSP2"\n'
            share.write_bytes(bundle(("site", site), ("unit", unit), ("room", ROOM), serial=2))
            steps = await svc.reload()
            assert steps is not None and steps.restart == ["oxi-1"] and steps.senders == []
            assert svc._device_tasks["bp-1"] is bp_task and svc.senders["ehr"] is sender
            assert svc.runtimes["oxi-1"].config.description == "unit 3 oximeter"
            assert svc.alerts is not None and svc.alerts.engine.hold_down == 120
            await svc.pipeline.on_event(svc.runtimes["oxi-1"], oximeter_reading(datetime.now(UTC)))
            messages = await ehr.wait_for(2)
            assert "|HOSP|" in messages[0].split("\r")[0] and "|HOSP2|" in messages[1].split("\r")[0]
            assert svc.status()["config"]["serial"] == 2
            # tampered on the share: refused, the configuration in force stays, status says why
            good = share.read_bytes()
            share.write_bytes(good.replace(b'"payload": "', b'"payload": "AAAA'))
            assert await svc.reload() is None
            assert svc.status()["config"]["last_error"].startswith("central configuration refused:")
            assert svc.config.ehr.receiving_facility == "HOSP2"
            assert (tmp_path / "data" / "central-config.bundle").read_bytes() == good
            # a replayed older bundle: refused too
            share.write_bytes(bundle(("site", site), ("room", ROOM), serial=1))
            assert await svc.reload() is None
            assert "serial 1 is older than the one in force (2)" in svc.status()["config"]["last_error"]
            # the EHR moves: the sender reconnects, a message queued meanwhile is delivered once
            ehr2 = await Hl7Ehr().start()
            try:
                share.write_bytes(bundle(("site", site.replace(f"port = {ehr.port}", f"port = {ehr2.port}")),
                                         ("room", ROOM), serial=3))  # fmt: skip
                await svc.pipeline.on_event(svc.runtimes["oxi-1"], oximeter_reading(datetime.now(UTC)))
                steps = await svc.reload()
                assert steps is not None and steps.senders == ["ehr"] and steps.restart == ["oxi-1"]
                await svc.pipeline.on_event(svc.runtimes["oxi-1"], oximeter_reading(datetime.now(UTC)))
                await until(lambda: svc.outbox.depth() == 0, 10, "the queue to drain")
                got = ehr.control_ids + ehr2.control_ids
                assert len(got) == len(set(got)) == 4
            finally:
                await ehr2.stop()
            events = [json.loads(line)["event"] for line in (tmp_path / "data" / "audit.jsonl").open()]
            assert events.count("config_applied") == 2 and events.count("config_refused") == 2
            stop.set()
            assert await run == 0
        finally:
            if svc.lock.held:  # the test failed before the agent stopped: stop it now
                svc.close()
    finally:
        await ehr.stop()


async def test_start_falls_back_to_the_last_good_bundle(tmp_path: Path) -> None:
    share = tmp_path / "room12.bundle"
    share.write_bytes(bundle(("site", SITE), ("room", ROOM), serial=5))
    path = local_file(tmp_path, share)
    svc = await started(path)
    svc.close()
    share.write_bytes(b"not a bundle")
    source = ConfigSource(path)
    pulled = await startup_config(source)
    assert (pulled.origin, pulled.bundle.serial if pulled.bundle else None) == ("last good", 5)
    assert pulled.config.agent.location == "CLINIC^ROOM12"
    share.unlink()
    (tmp_path / "data" / "central-config.bundle").unlink()
    with pytest.raises(ConfigError, match="no central configuration has been received yet"):
        await startup_config(source)  # the local file here holds the source and little else
    with pytest.raises(ConfigRefused, match=r"cannot fetch the central configuration: .*file not found"):
        await source.pull(tmp_path / "data")


async def test_cli_keygen_bundle_and_pull_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "signing.pem"
    assert await main(["config", "keygen", "--out", str(key)]) == 0
    found = re.search(r'config_public_key = "([^"]+)"', capsys.readouterr().out)
    assert found is not None
    public = found.group(1)
    if not under_wine():  # (Wine keeps no ACLs: WINE_ACLS; the rest of the test runs there too)
        assert_private(key)
    (tmp_path / "site.toml").write_text(SITE)
    (tmp_path / "room12.toml").write_text(ROOM)
    share = tmp_path / "room12.bundle"
    layers = [str(tmp_path / "site.toml"), str(tmp_path / "room12.toml")]
    assert (
        await main(["config", "bundle", "--key", str(key), "-o", str(share), "--serial", "4", *layers]) == 0
    )
    path = tmp_path / "agent.toml"
    path.write_text(
        f"[agent]\ndata_dir = {toml_str(tmp_path / 'data')}\nconfig_source = {toml_str(share)}\n"
        f'config_public_key = "{public}"\n[control]\nenabled = false\n'
    )
    capsys.readouterr()
    assert await main(["config", "pull", "--check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "serial 4, issued" in out and "signature good, layers: site, room12" in out
    assert '  + agent.location = "CLINIC^ROOM12"' in out
    assert '  + devices[oxi-1].driver = "masimo-ascii"' in out
    assert "devices started: oxi-1, bp-1" in out
    share.write_bytes(share.read_bytes().replace(b'"signature": "', b'"signature": "AAAA'))
    assert await main(["config", "pull", "--check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: central configuration refused: ") and err.count("\n") == 1


@pytest.mark.skipif(host.WINDOWS, reason="SIGHUP is POSIX (Windows: the service reload, tests/windows)")
async def test_sighup_rereads_a_local_file_and_restarts_only_the_changed_device(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    body = (
        f'[agent]\nfacility = "X"\ndata_dir = {toml_str(tmp_path / "data")}\n[control]\nenabled = false\n'
        "[alerts]\ndisk_free_mb = 0\n" + SITE[SITE.index("[[devices]]") :]
    )
    path.write_text(body)
    source = ConfigSource(path)
    svc = AgentService((await startup_config(source)).config, source=source)
    stop = asyncio.Event()
    run = asyncio.create_task(svc.run(stop))
    remove = host.install_reload_handler(svc.request_reload)
    try:
        await until(lambda: {"oxi-1", "bp-1"} <= set(svc._device_tasks), 5, "the devices")
        oxi, bp = svc._device_tasks["oxi-1"], svc._device_tasks["bp-1"]
        path.write_text(body.replace('id = "bp-1"', 'id = "bp-1"\ndescription = "moved to room 14"'))
        os.kill(os.getpid(), signal.SIGHUP)  # what `systemctl reload` ends in
        await until(lambda: svc.config_state["reloads"] == 1, 10, "the reload")
        assert svc._device_tasks["oxi-1"] is oxi and svc._device_tasks["bp-1"] is not bp
        assert svc.runtimes["bp-1"].config.description == "moved to room 14"
        assert svc.status()["config"]["origin"] == "local"
    finally:
        remove()
        stop.set()
        await run
