"""A fake BlueZ (``org.bluez`` on a private dbus-daemon) for testing bleak-based code without a radio."""
