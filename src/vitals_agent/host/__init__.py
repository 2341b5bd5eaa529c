"""The platform layer: the one home for what differs between POSIX (Linux) and Windows.

Nothing outside this package looks at ``sys.platform`` or ``os.name`` (``tests/test_host.py`` checks the
source tree). What differs, and where:

* :mod:`.files` - private directories and files: 0700/0600 on POSIX; on Windows a protected ACL that
  lets only the owner, SYSTEM and Administrators in (:func:`describe_access` reads it back);
  ``fsync`` of a directory (POSIX only: Windows has no directory handle to flush).
* :mod:`.locations` - the default data and configuration folders (``%ProgramData%\\vitals-agent`` on
  Windows, via platformdirs) and the system time zone (the Windows zone mapped to IANA via tzlocal).
* :mod:`.stop` - stop requests: SIGTERM/SIGINT on POSIX; Ctrl-C/Ctrl-Break on a Windows console (the
  Windows service sets the same event from its stop control); reload requests: SIGHUP on POSIX.
* :mod:`.readiness` - "ready", "stopping" and the watchdog: systemd notify on Linux; on Windows the
  service host listens and reports SERVICE_RUNNING / SERVICE_STOP_PENDING.
* :mod:`.serial` - how a serial port is read (event-driven on POSIX; a blocking reader thread on Windows,
  where pyserial-asyncio-fast polls every 0.5 ms), whether a port name is present, and port names.
* :mod:`.com` - COM apartment for bleak's WinRT backend (MTA, before pywin32 could make it STA).
* :mod:`.lock` - the single-instance lock primitive (``fcntl.flock`` / ``msvcrt.locking``).
* :mod:`.winservice` - the Windows service (pywin32); imported only on Windows.
"""

from __future__ import annotations

import os
import sys
from typing import Final

from vitals_agent.errors import VitalsAgentError

WINDOWS: Final[bool] = sys.platform == "win32"
"""True on Windows. Platform-specific code belongs in this package; elsewhere ask for a capability."""

HAS_PTY: Final[bool] = not WINDOWS
"""Pseudo-terminals (``vitals-agent simulate``, the demo's simulated devices) exist on POSIX only."""

HAS_BLUEZ: Final[bool] = sys.platform == "linux"
"""BlueZ over D-Bus (``vitals-agent pair``); Windows pairs in its own Settings (bleak uses WinRT there)."""

PLATFORM_NAME: Final[str] = "Windows" if WINDOWS else "POSIX"

HAS_NOFOLLOW_DIRS: Final[bool] = (
    hasattr(os, "O_NOFOLLOW") and os.open in os.supports_dir_fd and os.rename in os.supports_dir_fd
)
"""Files opened, created and moved relative to a folder descriptor without following links (``openat``
with ``O_NOFOLLOW``): what the EKG folder drivers need (``drivers/ecg/safefs.py``). Not on Windows, whose
equivalent (handles opened with FILE_FLAG_OPEN_REPARSE_POINT, relative NtCreateFile) is not implemented."""


class PlatformError(VitalsAgentError):
    """Something this platform cannot do (a one-line message for the user)."""


from vitals_agent.host import readiness  # noqa: E402
from vitals_agent.host.files import (  # noqa: E402
    describe_access,
    ensure_private_file,
    fsync_data,
    fsync_dir,
    open_private,
    private_dir,
    replace_file,
    tighten_dir,
)
from vitals_agent.host.locations import default_config_file, default_data_dir, system_zone  # noqa: E402
from vitals_agent.host.stop import install_reload_handler, install_stop_handlers  # noqa: E402

__all__ = [
    "HAS_BLUEZ",
    "HAS_NOFOLLOW_DIRS",
    "HAS_PTY",
    "PLATFORM_NAME",
    "WINDOWS",
    "PlatformError",
    "default_config_file",
    "default_data_dir",
    "describe_access",
    "ensure_private_file",
    "fsync_data",
    "fsync_dir",
    "install_reload_handler",
    "install_stop_handlers",
    "open_private",
    "private_dir",
    "readiness",
    "replace_file",
    "system_zone",
    "tighten_dir",
]
