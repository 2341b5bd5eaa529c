"""The files and folders a configuration names, checked for ``check-config`` (nothing is changed).

Checks run as the current user: run ``check-config`` as the agent's user (``sudo -u vitals-agent
vitals-agent check-config``) to see what the service will see. Under systemd a folder outside the unit's
writable paths is read-only whatever its permissions: ``vitals-agent service sync-unit`` adds every folder
named here to the unit's drop-in.
"""

from __future__ import annotations

import os
from pathlib import Path

from vitals_agent.config.schema import Config


def _user() -> str:
    if hasattr(os, "geteuid"):
        import pwd

        try:
            return pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            return str(os.geteuid())
    return "this user"


def read_only(path: Path) -> bool:
    """True when ``path`` is on a read-only mount (e.g. outside a systemd unit's ReadWritePaths)."""
    if not hasattr(os, "statvfs"):
        return False
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (where a ``mkdir -p`` would start)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK) and not read_only(path)


def folder_problem(path: Path) -> str | None:
    """A watched folder: exists, is a folder, readable and writable (files move to processed/, failed/)."""
    path = path.expanduser()
    if not path.exists():
        return f"{path} does not exist: create it, e.g. install -d -o {_user()} {path}"
    if not path.is_dir():
        return f"{path} is not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{path} is not readable by {_user()}"
    if not _writable(path):
        return f"{path} is not writable by {_user()} (files are moved to processed/ and failed/ in it)"
    return None


def output_folder_problem(path: Path) -> str | None:
    """A folder the agent writes into: writable, or creatable in its nearest existing parent."""
    path = path.expanduser()
    if path.exists():
        if not path.is_dir():
            return f"{path} is not a folder"
        if not _writable(path):
            return f"{path} is not writable by {_user()}"
        return None
    parent = nearest_existing(path)
    if not _writable(parent):
        return f"{path} does not exist and {_user()} cannot create it in {parent}"
    return None


def readable_file_problem(path: Path) -> str | None:
    path = path.expanduser()
    if not path.is_file():
        return f"{path} does not exist or is not a file"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable by {_user()}"
    return None


def local_paths(config: Config) -> list[tuple[str, str, Path]]:
    """``(key, kind, path)`` for every local folder the devices name (kind: ``folder``/``output-folder``)."""
    out: list[tuple[str, str, Path]] = []
    for index, device in enumerate(config.devices):
        for key, (marker, value) in device.options.local_paths().items():
            out.append((f"devices[{index}].{key}", marker.kind, Path(value)))
    return out


def filesystem_problems(config: Config) -> list[tuple[str, str]]:
    """Every missing, unreadable or unwritable file or folder the configuration names."""
    problems: list[tuple[str, str]] = []
    for key, kind, path in local_paths(config):
        problem = folder_problem(path) if kind == "folder" else output_folder_problem(path)
        if problem:
            problems.append((key, problem))
    named: list[tuple[str, Path | None]] = [
        (f"ehr.{name}", getattr(config.ehr, name)) for name in ("ca_file", "cert_file", "key_file")
    ]
    if config.fhir.enabled:
        named += [
            (f"fhir.{name}", getattr(config.fhir, name))
            for name in ("ca_file", "cert_file", "key_file", "bearer_token_file", "private_key_file")
        ]
    if config.pdq is not None:
        named += [
            (f"pdq.{name}", getattr(config.pdq, name))
            for name in ("ca_file", "cert_file", "key_file", "bearer_token_file")
        ]
    for key, file in named:
        if file is not None:
            problem = readable_file_problem(file)
            if problem:
                problems.append((key, problem))
    return problems
