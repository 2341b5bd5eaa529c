"""A private system bus: `dbus-daemon` with an allow-all policy in a temporary directory (testing.md 2.2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="signal"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="signal"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""


def dbus_daemon_binary() -> str | None:
    return shutil.which("dbus-daemon") or (
        "/usr/bin/dbus-daemon" if os.access("/usr/bin/dbus-daemon", os.X_OK) else None
    )


class PrivateBus:
    """Start with :meth:`start` (returns the address); stop with :meth:`stop` (by PID)."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> str:
        binary = dbus_daemon_binary()
        if binary is None:
            raise FileNotFoundError("dbus-daemon is not installed (Debian package dbus-daemon)")
        self._dir = tempfile.TemporaryDirectory(prefix="fakebluez-")
        conf = Path(self._dir.name) / "bus.conf"
        conf.write_text(BUS_CONFIG.format(socket=Path(self._dir.name) / "system_bus_socket"))
        self._proc = subprocess.Popen(
            [binary, "--config-file", str(conf), "--nofork", "--nopidfile", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().decode().strip()
        if not line:
            self.stop()
            raise RuntimeError("dbus-daemon did not print its address")
        self.address = line
        return line

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
