"""RFC 2217 (Telnet COM-PORT-OPTION), the client side, sans-I/O: bytes from the network in, serial data out.

A terminal server (Moxa NPort, Lantronix, Digi) in RFC 2217 mode carries a serial line over Telnet: the
device's bytes travel with every 0xFF doubled, and the client sets the line (baud rate, data bits, parity,
stop bits, flow control) with sub-negotiations the server confirms with the value it applied. This codec
does the Telnet option negotiation, pushes the line settings once the server agrees to COM-PORT-OPTION,
records what the server confirmed, and passes the serial data through. It does no I/O: the link
(:mod:`vitals_agent.drivers.netserial`) writes :meth:`Rfc2217Codec.data_to_send` to the socket.

Why not pyserial's ``rfc2217://`` client: it is blocking (a reader thread per port that queues the data
byte by byte, plus a thread to wait on it, and a negotiation that sleeps in 50 ms steps), which does not fit
an asyncio agent serving a ward of devices from one process; its server side (``serial.rfc2217.
PortManager``) is what the simulator and the tests use as the independent peer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from serial import rfc2217 as _r

from vitals_agent.drivers.base import SerialSettings

IAC, SB, SE = _r.IAC[0], _r.SB[0], _r.SE[0]
WILL, WONT, DO, DONT = _r.WILL[0], _r.WONT[0], _r.DO[0], _r.DONT[0]
BINARY, SGA, COM_PORT = _r.BINARY[0], _r.SGA[0], _r.COM_PORT_OPTION[0]
SET_BAUDRATE, SET_DATASIZE, SET_PARITY, SET_STOPSIZE, SET_CONTROL = (
    _r.SET_BAUDRATE[0],
    _r.SET_DATASIZE[0],
    _r.SET_PARITY[0],
    _r.SET_STOPSIZE[0],
    _r.SET_CONTROL[0],
)
SERVER_OFFSET = 100  # a server's answer to command N is N + 100
NOTIFY_LINESTATE, NOTIFY_MODEMSTATE = _r.SERVER_NOTIFY_LINESTATE[0], _r.SERVER_NOTIFY_MODEMSTATE[0]
FLOW_SUSPEND, FLOW_RESUME = _r.FLOWCONTROL_SUSPEND[0], _r.FLOWCONTROL_RESUME[0]
CONTROL_NO_FLOW = 1  # SET-CONTROL value: no flow control (the devices here use none)

PARITY_CODES = {"N": 1, "O": 2, "E": 3, "M": 4, "S": 5}
STOPBIT_CODES = {1: 1, 2: 2}
_WANTED = (BINARY, SGA, COM_PORT)  # options we ask for, in both directions
_LINE_KEYS = ("baudrate", "datasize", "parity", "stopsize")
_MAX_SUBNEG = 64  # a sub-negotiation longer than this is not one of ours: dropped


@dataclass
class Rfc2217Codec:
    """The client's Telnet/RFC 2217 state. Feed it what the socket receives; send what it queues."""

    settings: SerialSettings
    confirmed: dict[str, int | str] = field(default_factory=dict)  # what the server says it applied
    refused: bool = False  # the server said WONT/DONT to COM-PORT-OPTION: not an RFC 2217 port
    accepted: bool = False  # the server agreed to COM-PORT-OPTION (the settings were sent)
    linestate: int = 0
    modemstate: int | None = None
    suspended: bool = False  # the server asked us to stop sending (FLOWCONTROL-SUSPEND)
    _out: bytearray = field(default_factory=bytearray)
    _mode: str = "data"  # data | iac | option | sub | sub_iac
    _command: int = 0
    _sub: bytearray = field(default_factory=bytearray)
    _asked_do: set[int] = field(default_factory=set)  # DO X sent (waiting for WILL X)
    _asked_will: set[int] = field(default_factory=set)  # WILL X sent (waiting for DO X)
    _sent_settings: bool = False

    def start(self) -> None:
        """Queue the opening requests: BINARY and SGA both ways, and WILL COM-PORT-OPTION."""
        for option in _WANTED:
            self._send(WILL, option)
            self._asked_will.add(option)
        for option in (BINARY, SGA):
            self._send(DO, option)
            self._asked_do.add(option)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    @staticmethod
    def escape(data: bytes) -> bytes:
        """Serial data for the network (0xFF doubled)."""
        return data.replace(b"\xff", b"\xff\xff")

    @property
    def settled(self) -> bool:
        """The server confirmed every line setting (or refused RFC 2217 altogether)."""
        return self.refused or all(k in self.confirmed for k in _LINE_KEYS)

    def mismatches(self) -> list[str]:
        """Line settings the server applied differently from the ones asked for (``baudrate 19200 (asked
        9600)``)."""
        want = self.wanted()
        return [
            f"{key} {self.confirmed[key]} (asked {value})"
            for key, value in want.items()
            if key in self.confirmed and self.confirmed[key] != value
        ]

    def wanted(self) -> dict[str, int | str]:
        s = self.settings
        return {"baudrate": s.baudrate, "datasize": s.bytesize, "parity": s.parity, "stopsize": s.stopbits}

    # ------------------------------------------------------------------------------------------- input

    def receive(self, data: bytes) -> bytes:
        """Consume network bytes; return the serial data among them (commands answered in the queue)."""
        if self._mode == "data" and IAC not in data:
            return data  # the common case: plain device data
        out = bytearray()
        for byte in data:
            mode = self._mode
            if mode == "data":
                if byte == IAC:
                    self._mode = "iac"
                else:
                    out.append(byte)
            elif mode == "iac":
                if byte == IAC:
                    out.append(IAC)
                    self._mode = "data"
                elif byte in (WILL, WONT, DO, DONT):
                    self._command = byte
                    self._mode = "option"
                elif byte == SB:
                    self._sub.clear()
                    self._mode = "sub"
                else:  # NOP, GA, AYT ...: nothing to do
                    self._mode = "data"
            elif mode == "option":
                self._negotiate(self._command, byte)
                self._mode = "data"
            elif mode == "sub":
                if byte == IAC:
                    self._mode = "sub_iac"
                elif len(self._sub) < _MAX_SUBNEG:
                    self._sub.append(byte)
            else:  # sub_iac
                if byte == SE:
                    self._subnegotiation(bytes(self._sub))
                    self._sub.clear()
                    self._mode = "data"
                elif byte == IAC:
                    if len(self._sub) < _MAX_SUBNEG:
                        self._sub.append(IAC)
                    self._mode = "sub"
                else:  # a broken sub-negotiation: drop it, read the byte as a command
                    self._sub.clear()
                    self._mode = "iac"
                    return bytes(out) + self.receive(bytes([byte]))
        return bytes(out)

    def _send(self, command: int, option: int) -> None:
        self._out += bytes((IAC, command, option))

    def _negotiate(self, command: int, option: int) -> None:
        if command in (DO, WILL):  # DO: the server asks us to use an option; WILL: it offers one
            agree, refuse, asked = (
                (WILL, WONT, self._asked_will) if command == DO else (DO, DONT, self._asked_do)
            )
            if option in _WANTED:
                if option not in asked:
                    self._send(agree, option)
                    asked.add(option)
                if option == COM_PORT:
                    self._com_port_accepted()
            else:
                self._send(refuse, option)
        elif option == COM_PORT and not self.accepted:  # WONT/DONT COM-PORT-OPTION before agreeing
            self.refused = True

    def _com_port_accepted(self) -> None:
        self.accepted = True
        if self._sent_settings:
            return
        self._sent_settings = True
        s = self.settings
        self._subneg(SET_BAUDRATE, struct.pack("!I", s.baudrate))
        self._subneg(SET_DATASIZE, bytes((s.bytesize,)))
        self._subneg(SET_PARITY, bytes((PARITY_CODES[s.parity],)))
        self._subneg(SET_STOPSIZE, bytes((STOPBIT_CODES[s.stopbits],)))
        self._subneg(SET_CONTROL, bytes((CONTROL_NO_FLOW,)))

    def _subneg(self, code: int, value: bytes) -> None:
        self._out += bytes((IAC, SB, COM_PORT, code)) + self.escape(value) + bytes((IAC, SE))

    def _subnegotiation(self, sub: bytes) -> None:
        if len(sub) < 2 or sub[0] != COM_PORT:
            return
        code, value = sub[1], sub[2:]
        if code == SET_BAUDRATE + SERVER_OFFSET and len(value) == 4:
            self.confirmed["baudrate"] = struct.unpack("!I", value)[0]
        elif code == SET_DATASIZE + SERVER_OFFSET and value:
            self.confirmed["datasize"] = value[0]
        elif code == SET_PARITY + SERVER_OFFSET and value:
            names = {v: k for k, v in PARITY_CODES.items()}
            self.confirmed["parity"] = names.get(value[0], str(value[0]))
        elif code == SET_STOPSIZE + SERVER_OFFSET and value:
            self.confirmed["stopsize"] = {1: 1, 2: 2}.get(value[0], value[0])
        elif code == SET_CONTROL + SERVER_OFFSET and value:
            self.confirmed["control"] = value[0]
        elif code == NOTIFY_LINESTATE and value:
            self.linestate = value[0]
        elif code == NOTIFY_MODEMSTATE and value:
            self.modemstate = value[0]
        elif code == FLOW_SUSPEND:
            self.suspended = True
        elif code == FLOW_RESUME:
            self.suspended = False
