"""Whether a process id still names a running process (a stale control.json or lock file)."""

from __future__ import annotations

import os
import sys

STILL_ACTIVE = 259  # GetExitCodeProcess of a process that has not ended


def process_gone(pid: int) -> bool:
    """True when no process has this id; False when it exists or cannot be told."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        import pywintypes
        import win32api
        import win32con
        import win32process
        import winerror

        try:
            handle = win32api.OpenProcess(win32con.PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        except pywintypes.error as exc:
            return bool(exc.winerror == winerror.ERROR_INVALID_PARAMETER)  # no such process
        try:
            # An ended process stays openable while anyone holds a handle to it (its parent, say): it is
            # gone once it has an exit code.
            return bool(win32process.GetExitCodeProcess(handle) != STILL_ACTIVE)
        except pywintypes.error:
            return False
        finally:
            win32api.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, under another user
        return False
    return False
