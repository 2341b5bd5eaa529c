"""``vitals-agent support-bundle -o FILE.zip``: what a support engineer needs, without patient data.

The zip holds: the configuration in force with secrets redacted, the running agent's status (patient block
reduced to counts), versions, serial ports and BLE devices seen, the last log lines at INFO and above,
outbox and dead-letter counts (no message bodies, no receiver text), audit record counts by event (no
record), and the data folder's file list.

Two guards keep patient data out: what is collected is chosen so none should be in it (structure), and
before anything is written every text is scrubbed of each patient identifier the agent knows (MRNs, names,
birth dates, visit numbers from the audit trail, the patient context, queued and dead messages), so a
leak anywhere upstream (a log line, a device name) still does not reach the zip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from vitals_agent import __version__, host
from vitals_agent.commands._options import add_command, add_config_option, config_from
from vitals_agent.config.central import SECRET_WORDS
from vitals_agent.config.schema import Config
from vitals_agent.errors import VitalsAgentError

REDACTED = "[redacted]"
PACKAGES = (
    "vitals-agent", "pydantic", "structlog", "pyserial", "pyserial-asyncio-fast", "bleak", "dbus-fast", "hl7",
    "aiohttp", "h11", "fhir.resources", "cryptography", "prometheus-client", "platformdirs",
)  # fmt: skip
LOG_LEVELS_KEPT = ("info", "warning", "error", "critical")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "support-bundle", cmd_support_bundle)
    add_config_option(p)
    p.add_argument("-o", "--out", type=Path, required=True, metavar="FILE.zip", help="the zip to write")
    p.add_argument("--lines", type=int, default=500, metavar="N", help="last N log lines (default 500)")
    p.add_argument(
        "--log",
        type=Path,
        metavar="FILE",
        help="the agent's log file (default: the systemd journal of vitals-agent)",
    )
    p.add_argument(
        "--ble-seconds", type=float, default=0.0, metavar="S", help="scan for BLE devices this long"
    )


async def cmd_support_bundle(args: argparse.Namespace) -> int:
    config = config_from(args)
    from vitals_agent.agent.paths import data_dir

    folder = data_dir(config, create=False)
    files: dict[str, Any] = {
        "config.json": redact_config(config.model_dump(mode="json")),
        "status.json": await _status(config),
        "versions.json": versions(),
        "ports.json": _ports(),
        "ble.json": await _ble(args.ble_seconds),
        "outbox.json": await asyncio.to_thread(outbox_counts, folder),
        "audit.json": await asyncio.to_thread(audit_counts, folder),
        "data_dir.json": listing(folder),
    }
    log_text = await asyncio.to_thread(log_lines, args.log, args.lines)
    secrets = await asyncio.to_thread(known_patient_strings, folder)
    scrubbed = 0
    texts: dict[str, str] = {}
    for name, value in files.items():
        texts[name] = json.dumps(value, indent=2, default=str, ensure_ascii=False) + "\n"
    texts["log.txt"] = log_text
    for name, text in texts.items():
        texts[name], n = scrub(text, secrets)
        scrubbed += n
    texts["README.txt"] = _readme(scrubbed, args.lines)
    await asyncio.to_thread(_write_zip, args.out, texts)
    print(f"wrote {args.out} ({len(texts)} files; {scrubbed} patient identifier(s) found and removed)")
    return 0


def _write_zip(out: Path, texts: dict[str, str]) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fd = host.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    except OSError as exc:
        raise VitalsAgentError(f"cannot write {out}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for name, text in texts.items():
            zf.writestr(f"vitals-agent-support-{stamp}/{name}", text)
    os.replace(tmp, out)


def _readme(scrubbed: int, lines: int) -> str:
    return (
        f"vitals-agent {__version__} support bundle, {datetime.now(UTC).isoformat(timespec='seconds')}\n\n"
        "config.json     the configuration in force, secrets replaced by [redacted]\n"
        "status.json     the running agent's status (patient: counts only), or why it could not be read\n"
        "versions.json   program, Python, operating system and library versions\n"
        "ports.json      serial ports and BLE devices seen (ble.json)\n"
        f"log.txt         the last {lines} log lines at INFO and above\n"
        "outbox.json     messages waiting and dead letters per destination: counts and ages only\n"
        "audit.json      audit records per event: counts only\n"
        "data_dir.json   the data folder's files: names, sizes, modes\n\n"
        f"Patient identifiers known to the agent found in the collected text and removed: {scrubbed}.\n"
    )


# ------------------------------------------------------------------------------------------ parts


def redact_config(value: Any, key: str = "") -> Any:
    """Secrets (passwords, tokens, keys given inline) replaced; file names kept (they are not secrets)."""
    if isinstance(value, dict):
        return {k: redact_config(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_config(v, key) for v in value]
    secret = any(word in key.lower() for word in (*SECRET_WORDS, "username")) and not key.endswith("_file")
    return REDACTED if secret and value not in (None, "") else value


async def _status(config: Config) -> dict[str, Any]:
    from vitals_agent.agent.control import ControlClient

    try:
        async with asyncio.timeout(10):
            data = await ControlClient.from_config(config).call("GET", "/api/status")
    except (VitalsAgentError, OSError, TimeoutError) as exc:
        return {"running": None, "error": f"status not read: {exc}"}
    return status_without_patient(data)


def status_without_patient(data: dict[str, Any]) -> dict[str, Any]:
    """The status snapshot with its patient block reduced to counts and no reading values."""
    out = dict(data)
    patient = out.pop("patient", None) or {}
    out["patient"] = {"set": bool(patient.get("set")), "held": patient.get("held", 0)}
    out.pop("pending", None)
    out.pop("lookup_notice", None)
    out["devices"] = [
        {k: v for k, v in dev.items() if k != "last_reading"}
        for dev in out.get("devices") or []
        if isinstance(dev, dict)
    ]
    return out


def versions() -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "vitals_agent": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": packages,
    }


def _ports() -> dict[str, Any]:
    try:
        from vitals_agent.drivers.ports import list_serial_ports

        return {"serial": [asdict(p) for p in list_serial_ports()]}
    except Exception as exc:  # the listing is best effort: say why it is missing
        return {"serial": None, "error": f"{type(exc).__name__}: {exc}"}


async def _ble(seconds: float) -> dict[str, Any]:
    if seconds <= 0:
        return {"scanned": False, "note": "use --ble-seconds S to include a BLE scan"}
    try:
        from vitals_agent.drivers.ble.scan import scan

        found = await scan(seconds)
    except Exception as exc:  # no adapter, no BlueZ, no permission: the bundle still gets written
        return {"scanned": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"scanned": True, "seconds": seconds, "devices": [r.line() for r in found]}


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def outbox_counts(folder: Path) -> dict[str, Any]:
    path = folder / "outbox.sqlite3"
    if not path.exists():
        return {"exists": False}
    now = datetime.now(UTC).timestamp()
    try:
        with contextlib.closing(_read_only(path)) as db:
            queued = db.execute(
                "SELECT destination, COUNT(*), MIN(created_at), SUM(attempts) FROM outbox"
                " GROUP BY destination"
            ).fetchall()
            dead = db.execute(
                "SELECT destination, COUNT(*), MIN(dead_at) FROM dead_letter GROUP BY destination"
            ).fetchall()
    except sqlite3.Error as exc:
        return {"exists": True, "error": f"cannot read the outbox: {exc}"}
    return {
        "queued": {
            d: {"count": n, "oldest_age_seconds": round(now - t), "attempts": a} for d, n, t, a in queued
        },
        "dead": {d: {"count": n, "oldest_age_seconds": round(now - t)} for d, n, t in dead},
    }


def audit_counts(folder: Path) -> dict[str, Any]:
    from vitals_agent.agent.storage.audit_chain import read_head, trail_files, verify

    try:
        files = trail_files(folder)
    except OSError:
        files = []
    if not files:
        return {"exists": False}
    events: Counter[str] = Counter()
    first = last = None
    torn = 0
    for record in (r for path in files for r in _records(path)):
        if record is None:
            torn += 1
            continue
        events[str(record.get("event"))] += 1
        first = first or record.get("ts")
        last = record.get("ts")
    try:
        verdict = verify(files, read_head(folder))
        chain: dict[str, Any] = {
            "intact": verdict.ok,
            "chained": verdict.chained,
            "problems": verdict.problems[:5],
        }
    except OSError as exc:
        chain = {"error": f"not verified: {exc.strerror or exc}"}
    return {
        "chain": chain,  # `vitals-agent audit verify`: file names, line numbers and seq only
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "records": sum(events.values()),
        "unreadable_lines": torn,
        "first": first,
        "last": last,
        "by_event": dict(sorted(events.items())),
    }


def _records(path: Path) -> Iterator[dict[str, Any] | None]:
    with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                yield None
                continue
            yield record if isinstance(record, dict) else None


def listing(folder: Path) -> list[dict[str, Any]] | dict[str, str]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        return {"error": f"{folder}: {exc.strerror or exc}"}
    out = []
    for entry in entries:
        with contextlib.suppress(OSError):
            st = entry.lstat()
            out.append({"name": entry.name, "bytes": st.st_size, "mode": f"{st.st_mode & 0o7777:o}"})
    return out


def log_lines(log_file: Path | None, n: int) -> str:
    """The last ``n`` lines at INFO and above: from ``log_file``, else the journal of the service."""
    if log_file is not None:
        try:
            with log_file.open(encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            return f"(log not read: {log_file}: {exc.strerror or exc})\n"
    elif shutil.which("journalctl"):
        try:
            out = subprocess.run(
                ["journalctl", "-u", "vitals-agent", "-n", str(n * 2), "-o", "cat", "--no-pager"],
                capture_output=True, text=True, timeout=20, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(journal not read: {exc})\n"
        lines = out.stdout.splitlines()
    else:
        return "(no log: give --log FILE; there is no systemd journal here)\n"
    kept = [line for line in lines if _level_kept(line)]
    return "\n".join(kept[-n:]) + "\n"


_CONSOLE_LEVEL = re.compile(r"\[\s*(debug|info|warning|error|critical)\s*\]", re.IGNORECASE)


def _level_kept(line: str) -> bool:
    """DEBUG lines carry device bytes in hex (a wristband is patient data): never in the bundle."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if isinstance(record, dict) and "level" in record:
        return str(record["level"]).lower() in LOG_LEVELS_KEPT
    match = _CONSOLE_LEVEL.search(line)
    return match is None or match.group(1).lower() in LOG_LEVELS_KEPT


# ------------------------------------------------------------------------------------------ scrub


PATIENT_KEYS = frozenset(
    {"mrn", "patient_mrn", "family", "given", "family_name", "given_name", "name", "birth_date", "dob",
     "encounter", "visit", "middle", "prefix", "suffix"}
)  # fmt: skip
MIN_SECRET = 3  # shorter strings (sex codes, initials) would scrub ordinary words


def _strings_in(value: Any, key: str = "", inside_patient: bool = False) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings_in(v, k, inside_patient or "patient" in k)
    elif isinstance(value, list):
        for v in value:
            yield from _strings_in(v, key, inside_patient)
    elif isinstance(value, str) and (key in PATIENT_KEYS and (inside_patient or key.endswith("mrn"))):
        yield value


def _hl7_patient_fields(body: str) -> Iterator[str]:
    """Patient identifiers of an HL7 v2 message: the ids (PID-2/3/4, PID-18/19, PV1-19: component 1), the
    names (PID-5, PID-6: family, given, middle) and the birth date (PID-7) - not the assigning authority,
    the name type or the sex, which are not identifying and would scrub ordinary words."""
    for segment in re.split(r"[\r\n]+", body):
        parts = segment.split("|")
        name = parts[0]
        for index, value in enumerate(parts):
            if not value:
                continue
            for rep in value.split("~"):
                comps = [c.split("&")[0] for c in rep.split("^")]
                if (name == "PID" and index in (2, 3, 4, 18, 19)) or (name == "PV1" and index == 19):
                    yield comps[0]
                elif name == "PID" and index in (5, 6):
                    yield from comps[:3]
                elif name == "PID" and index == 7:
                    yield comps[0][:8]


def known_patient_strings(folder: Path) -> set[str]:
    """Every patient identifier the agent has written anywhere it keeps data."""
    from vitals_agent.agent.storage.audit_chain import trail_files

    found: set[str] = set()
    with contextlib.suppress(OSError):
        for audit in trail_files(folder):
            for record in _records(audit):
                if record is not None:
                    found.update(_strings_in(record))
    context = folder / "patient_context.json"
    with contextlib.suppress(OSError, json.JSONDecodeError):
        found.update(_strings_in({"patient": json.loads(context.read_text())}))
    outbox = folder / "outbox.sqlite3"
    if outbox.exists():
        with contextlib.suppress(sqlite3.Error), contextlib.closing(_read_only(outbox)) as db:
            for (body,) in db.execute("SELECT body FROM outbox UNION ALL SELECT body FROM dead_letter"):
                text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
                if text.startswith("MSH"):
                    found.update(_hl7_patient_fields(text))
                else:
                    with contextlib.suppress(json.JSONDecodeError):
                        found.update(_fhir_patient_strings(json.loads(text)))
    variants = set()
    for item in found:
        item = item.strip()
        if re.fullmatch(r"\d{8}", item):  # a birth date as HL7 writes it, and as ISO
            variants.add(f"{item[:4]}-{item[4:6]}-{item[6:]}")
        variants.add(item)
    return {v for v in variants if len(v) >= MIN_SECRET}


def _fhir_patient_strings(bundle: Any) -> Iterator[str]:
    for entry in bundle.get("entry", []) if isinstance(bundle, dict) else []:
        resource = entry.get("resource", {}) if isinstance(entry, dict) else {}
        if resource.get("resourceType") == "Patient":
            for ident in resource.get("identifier", []):
                if isinstance(ident.get("value"), str):
                    yield ident["value"]
            for name in resource.get("name", []):
                yield from (x for x in [name.get("family"), *name.get("given", [])] if isinstance(x, str))
            if isinstance(resource.get("birthDate"), str):
                yield resource["birthDate"]
        subject = resource.get("subject", {}).get("reference", "") if isinstance(resource, dict) else ""
        if "|" in subject:
            yield subject.rsplit("|", 1)[1]


def scrub(text: str, secrets: Iterable[str]) -> tuple[str, int]:
    """``text`` with every occurrence of each secret replaced (longest first; case-insensitive)."""
    ordered = sorted(set(secrets), key=len, reverse=True)
    if not ordered:
        return text, 0
    pattern = re.compile("|".join(re.escape(s) for s in ordered), re.IGNORECASE)
    return pattern.subn(REDACTED, text)
