"""Pseudo-terminals (POSIX only): the device end of a simulated serial device."""

from __future__ import annotations

import os
import sys

from vitals_agent.host import PlatformError


class NoPseudoTerminalError(PlatformError):
    """This platform has no pseudo-terminals (Windows)."""


def open_raw_pty() -> tuple[int, int, str]:
    """A new pty pair with the slave in raw mode (no echo, no CR/LF translation) and the master
    non-blocking: ``(master_fd, slave_fd, slave_path)``. Raises :class:`NoPseudoTerminalError` on Windows."""
    if sys.platform == "win32":
        raise NoPseudoTerminalError(
            "simulated devices need a pseudo-terminal, which Windows does not have: run the simulator on "
            "Linux, or connect the device (or a virtual COM port pair)"
        )
    import tty

    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        os.set_blocking(master, False)
        name = os.ttyname(slave)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave, name
