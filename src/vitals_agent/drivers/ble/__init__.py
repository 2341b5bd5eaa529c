"""Bluetooth LE health devices: IEEE 11073 numbers, pure characteristic decoders, the registered BLE
drivers, the bleak transport ("ble"), and the scan/pair technician tools."""
