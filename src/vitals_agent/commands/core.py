"""Core commands: ``run``, ``check-config``, ``decode``, ``drivers``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from vitals_agent.agent.pipeline.normalize import normalise
from vitals_agent.commands._options import (
    EXIT_CONFIG,
    add_command,
    add_config_option,
    config_from,
    config_path,
)
from vitals_agent.config.agent_section import LOG_LEVELS
from vitals_agent.config.schema import read_document
from vitals_agent.drivers.base import (
    DecodeContext,
    DecodeFailure,
    Driver,
    DriverOptions,
    all_drivers,
    driver_class,
)
from vitals_agent.errors import ConfigError, StorageFailedError, VitalsAgentError
from vitals_agent.logs import setup_logging
from vitals_agent.models import DeviceIdentity, DeviceStatusEvent, PatientScan, Reading


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "run", cmd_run)
    add_config_option(p)
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help="override [agent] log_level: DEBUG, INFO, WARNING or ERROR (any case)",
    )
    # A configuration or data_dir problem: exit 78 so the unit does not restart into it (see cli.py).
    p.set_defaults(config_error_status=EXIT_CONFIG)

    p = add_command(sub, "check-config", cmd_check_config)
    p.add_argument("config_file", nargs="?", type=Path, metavar="FILE", help="same as --config FILE")
    add_config_option(p)

    p = add_command(sub, "decode", cmd_decode)
    p.add_argument("driver", help="driver name (see `vitals-agent drivers`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--hex",
        nargs="+",
        action="extend",  # `--hex A --hex B` decodes A and B (a plain nargs option kept only the last)
        metavar="HEX",
        help="payloads in hex (one per frame/characteristic value; repeatable)",
    )
    src.add_argument("--file", type=Path, metavar="PATH", help="a capture or device file")
    src.add_argument("-", dest="stdin", action="store_true", help="read raw bytes from standard input")
    p.add_argument("--characteristic", metavar="UUID", help="BLE characteristic the payloads came from")
    p.add_argument("--timezone", metavar="ZONE", help="zone of the device clock (default: system zone)")
    p.add_argument("--device-id", default="decode", help="device id to show in the output")
    p.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a driver option as in the config, e.g. dialect=detecto or format=df7 (repeatable)",
    )
    p.add_argument(
        "--fhir",
        action="store_true",
        help="print the FHIR R4 transaction Bundle each reading would produce (one JSON object per line)",
    )

    add_command(sub, "drivers", cmd_drivers)


async def cmd_run(args: argparse.Namespace) -> int:
    from vitals_agent.agent.service import EXIT_STORAGE_FAILED, run_service

    path = config_path(args)
    assert path is not None
    agent = read_document(path).get("agent")
    level = agent.get("log_level") if isinstance(agent, dict) else None
    # the local file's level while the central configuration is fetched; then the configuration's own
    setup_logging(args.log_level or (level.upper() if isinstance(level, str) else "INFO"))
    try:
        return await run_service(config_path=path, log_level=args.log_level)
    except StorageFailedError as exc:  # after a clean stop: one line, and an exit code systemd reports
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STORAGE_FAILED


async def cmd_check_config(args: argparse.Namespace) -> int:
    """Every problem at once: keys and types, HL7 values, then the files and folders the config names."""
    from vitals_agent.agent.instance import check_data_dir
    from vitals_agent.agent.paths import data_dir
    from vitals_agent.agent.pipeline.profile import message_profile
    from vitals_agent.config.filesystem import filesystem_problems
    from vitals_agent.hl7.oru import MessageBuildError

    if args.config_file is not None and args.config is not None and args.config_file != args.config:
        raise VitalsAgentError("give the configuration once: FILE or --config FILE")
    if args.config_file is not None:
        args.config = args.config_file
    path = config_path(args)
    assert path is not None
    try:
        config = config_from(args)
    except ConfigError as exc:
        for key, message in exc.problems:
            print(f"{key}: {message}")
        return 1
    if config.agent.config_source is not None:
        print(
            f"note: central configuration from {config.agent.config_source}: checked the last good bundle "
            "over this file (`vitals-agent config pull --check` fetches and checks the current one)"
        )
    problems: list[tuple[str, str]] = []
    try:  # values the HL7 profile cannot carry (e.g. an MSH-4 longer than the data type allows)
        message_profile(config, config.agent.gateway_eui64 or "0000000000000000")
    except MessageBuildError as exc:
        problems.append(("(message profile)", str(exc)))
    data_dir_problem = check_data_dir(data_dir(config, create=False))
    if data_dir_problem:
        problems.append(("agent.data_dir", data_dir_problem))
    problems.extend(filesystem_problems(config))
    for key, message in problems:
        print(f"{key}: {message}")
    if problems:
        return 1
    n = len(config.devices)
    print(f"ok: {n} device{'s' if n != 1 else ''}")
    return 0


def _hex_chunks(items: list[str]) -> list[bytes]:
    chunks = []
    for item in items:
        cleaned = re.sub(r"[\s:,-]", "", item)
        if cleaned.lower().startswith("0x"):
            cleaned = cleaned[2:]
        try:
            chunks.append(bytes.fromhex(cleaned))
        except ValueError:
            raise VitalsAgentError(f"not hexadecimal: {item!r}") from None
    return chunks


def _same_characteristic(text: str, known: tuple[str, ...]) -> bool:
    """``2A35``, ``0x2a35`` and the 128-bit form name the same characteristic."""
    from vitals_agent.drivers.ble.uuids import normalize_uuid
    from vitals_agent.errors import DecodeError

    try:
        return normalize_uuid(text) in {normalize_uuid(c) for c in known}
    except DecodeError:
        return False


def reading_json(reading: Reading) -> dict[str, Any]:
    """The ``decode`` JSON object for one reading (a public contract: extend, never rename)."""
    return {
        "observed_at": reading.observed_at.isoformat(),
        "device": reading.device.model_dump(exclude_none=True),
        "device_class": str(reading.device_class),
        "measurements": [
            {
                "metric": m.metric,
                "value": m.model_dump(mode="json")["value"],
                "unit": m.unit,
                "mdc": m.mdc,
                "loinc": m.loinc,
                **({"flags": [str(f) for f in m.flags]} if m.flags else {}),
                **({"site": m.site} if m.site else {}),
            }
            for m in reading.measurements
        ],
        "flags": [str(f) for f in reading.flags],
        **(
            {"dropped": [d.model_dump(exclude_none=True) for d in reading.dropped]} if reading.dropped else {}
        ),
        **({"statements": list(reading.statements)} if reading.statements else {}),
        **({"sequence": reading.sequence} if reading.sequence is not None else {}),
        **({"extra": dict(reading.extra)} if reading.extra else {}),
    }


def _driver_options(cls: type[Driver[Any]], items: list[str]) -> DriverOptions | None:
    """Driver options for offline decoding: the given keys, checked as in a config file except for
    *where* the device is (a port, a folder)."""
    if not items:
        return None
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise VitalsAgentError(f"--option wants KEY=VALUE, got {item!r}")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw
    unknown = set(values) - set(cls.options_model.model_fields)
    if unknown:
        raise VitalsAgentError(f"{cls.name} has no option {', '.join(sorted(unknown))}")
    try:
        return cls.options_model.offline(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = first["loc"][0] if first["loc"] else "options"
        raise VitalsAgentError(f"option {where}: {first['msg']}") from None


async def cmd_decode(args: argparse.Namespace) -> int:
    cls = driver_class(args.driver)
    driver = cls(_driver_options(cls, args.option))
    known = driver.characteristics
    if args.characteristic and known and not _same_characteristic(args.characteristic, known):
        raise VitalsAgentError(
            f"{args.driver} does not read characteristic {args.characteristic} (known: {', '.join(known)})"
        )
    if args.hex:
        chunks = _hex_chunks(args.hex)
    elif args.file:
        try:
            chunks = [args.file.read_bytes()]
        except OSError as exc:
            raise VitalsAgentError(f"cannot read {args.file}: {exc.strerror}") from None
    else:
        chunks = [sys.stdin.buffer.read()]
    if args.timezone:
        try:
            tz: Any = ZoneInfo(args.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise VitalsAgentError(f"unknown time zone {args.timezone!r}") from None
    else:
        from vitals_agent.agent.paths import system_zone

        tz = system_zone()
    ctx = DecodeContext(device=DeviceIdentity(id=args.device_id), tz=tz)
    show = _fhir_printer(tz) if args.fhir else _json_printer
    outputs = driver.decode_chunks(chunks, ctx, args.characteristic)
    printed = 0
    failures: list[DecodeFailure] = []
    statuses: list[DeviceStatusEvent] = []
    for item in outputs:
        if isinstance(item, DecodeFailure):
            failures.append(item)
        elif isinstance(item, Reading):
            # Offline there is no clock to correct against: the device's own time stamp stays.
            reading = normalise(item, max_clock_skew=timedelta.max)
            if show(reading):
                printed += 1
        elif isinstance(item, DeviceStatusEvent):
            statuses.append(item)
        elif isinstance(item, PatientScan):
            print(json.dumps({"scan": {"mrn": item.mrn}, "device": {"id": item.device_id}}))
            printed += 1
    if not printed:
        # Device Information, clock and similar characteristics hold no reading: show what they say.
        # (With readings present the output stays one reading per line.)
        for item in statuses:
            status = item.model_dump(mode="json", exclude_none=True)
            if status.get("identity"):
                status["identity"].pop("id", None)
            print(json.dumps({"status": status}, ensure_ascii=False))
            printed += 1
    for failure in failures:
        if printed:
            print(f"warning: {failure.error}", file=sys.stderr)
    if printed == 0:
        raise VitalsAgentError(str(failures[0].error) if failures else "no decodable reading in the input")
    return 0


def _json_printer(reading: Reading) -> bool:
    print(json.dumps(reading_json(reading), ensure_ascii=False))
    return True


def _fhir_printer(tz: Any) -> Callable[[Reading], bool]:
    """``decode --fhir``: each reading as the Bundle the agent would send (unbound, no site profile)."""
    from vitals_agent.fhir.bundle import FhirBuildError, FhirProfile, build_bundle

    profile = FhirProfile(gateway_eui64="0" * 16, tz=tz)
    count = 0

    def show(reading: Reading) -> bool:
        nonlocal count
        count += 1
        try:
            body = build_bundle(reading, profile, message_id=f"decode-{count}", created_at=datetime.now(UTC))
        except FhirBuildError as exc:
            print(f"warning: reading {count}: no FHIR Bundle: {exc}", file=sys.stderr)
            return False
        print(body.decode("utf-8"))
        return True

    return show


async def cmd_drivers(args: argparse.Namespace) -> int:
    rows = [("DRIVER", "TRANSPORT", "DEVICE CLASS", "DESCRIPTION")]
    rows += [
        (name, cls.transport, str(cls.device_class), cls.description) for name, cls in all_drivers().items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        )
    return 0
