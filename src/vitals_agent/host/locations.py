"""Where the agent keeps its data and configuration by default, and which time zone the host is in."""

from __future__ import annotations

import os
import sys
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

APP = "vitals-agent"


def config_root() -> Path:
    """``%ProgramData%\\vitals-agent`` on Windows (machine-wide, as a service needs); ``/etc/vitals-agent``
    on POSIX."""
    if sys.platform == "win32":
        import platformdirs  # here, not at start: it brings tempfile, shutil, bz2 and lzma along

        return Path(platformdirs.site_data_dir(APP, appauthor=False))
    return Path("/etc") / APP


def default_config_file() -> Path:
    """The configuration the Windows service and ``install.cmd`` use, and the documented POSIX place."""
    return config_root() / "agent.toml"


def default_data_dir() -> Path:
    """``[agent] data_dir`` when unset: ``%ProgramData%\\vitals-agent\\data`` on Windows (the service's
    machine-wide folder); the service user's data dir on POSIX (``~/.local/share/vitals-agent``; the
    systemd unit sets ``StateDirectory``)."""
    if sys.platform == "win32":
        return config_root() / "data"
    import platformdirs

    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def system_zone() -> tzinfo:
    """The host's time zone as an IANA zone where possible (DST rules kept), else a fixed offset."""
    tz = os.environ.get("TZ")
    if sys.platform == "win32":
        # Windows names its zones differently ("Central Standard Time"); tzlocal maps them to IANA and
        # tzdata supplies the rules (Windows has no zoneinfo database).
        try:
            import tzlocal

            zone: tzinfo = tzlocal.get_localzone()
            return zone
        except Exception:  # noqa: S110 - any failure here means "fall back to the fixed offset"
            pass
    else:
        try:
            link = os.readlink("/etc/localtime")
            if "zoneinfo/" in link:
                return ZoneInfo(link.split("zoneinfo/", 1)[1])
        except (OSError, ValueError, KeyError):
            pass
    if tz:
        try:
            return ZoneInfo(tz)
        except (KeyError, ValueError):
            pass
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local
