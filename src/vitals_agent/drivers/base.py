"""Driver and transport framework.

A *driver* knows one device protocol. Its decoder is pure (h11-style): bytes in, events out, no I/O, no
clock of its own (the host time comes from :class:`DecodeContext.now`). A *transport* knows one way of
reaching devices (serial port, BLE link, watched folder) and runs a device's link on asyncio, handing the
bytes it receives to the driver's decoder and the resulting events to the agent through
:class:`DeviceRuntime`.

Drivers and transports register themselves by name when their module is imported; :mod:`vitals_agent.
drivers` imports only the module a configured name needs (its ``DRIVER_MODULES`` table; a name it does not
list loads every module, so a new driver works before it is listed, and a test says to list it).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, ClassVar, Generic, Literal, Protocol, Self, TypeVar, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator

from vitals_agent.drivers.netport import network_port
from vitals_agent.errors import ConfigError, DecodeError, OverlongError, TruncatedError, UnknownDriverError
from vitals_agent.models import DeviceClass, DeviceEvent, DeviceIdentity

# ---------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class LocalPath:
    """Marks a driver key that names a local file or folder (``Annotated[str, LocalPath("folder")]``).

    The configuration resolves a relative value against the config file's folder; ``check-config``
    checks it, and the systemd drop-in (``vitals-agent service sync-unit``) makes it writable for the
    service. ``kind``: ``"folder"`` (must exist; the agent reads and moves files in it) or
    ``"output-folder"`` (created when missing; the agent writes into it).
    """

    kind: Literal["folder", "output-folder"]


def local_path_keys(model: type[BaseModel]) -> dict[str, LocalPath]:
    """The keys of an options model that name local paths, with their :class:`LocalPath` marker."""
    out: dict[str, LocalPath] = {}
    for name, field in model.model_fields.items():
        for item in field.metadata:
            if isinstance(item, LocalPath):
                out[name] = item
    return out


OFFLINE = "offline"  # validation context key: options for decoding files, no device to reach


class DriverOptions(BaseModel):
    """Per-device keys a driver accepts besides the common ones. Unknown keys are errors, and types are
    strict (``baudrate = "9600"`` is an error, not 9600): a config file says what it means.

    :meth:`offline` validates the same keys for decoding without a device (``vitals-agent decode``, a
    default driver): the checks of *where* the device is (a port, a folder, an address) do not apply then;
    every other check does."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def offline(cls, values: Mapping[str, Any] | None = None) -> Self:
        return cls.model_validate(dict(values or {}), context={OFFLINE: True})

    @property
    def serial_port(self) -> str | None:
        """The serial port path this device is configured on (serial drivers given ``port``), else None."""
        return None

    def local_paths(self) -> dict[str, tuple[LocalPath, str]]:
        """The keys set to a local file or folder (see :class:`LocalPath`): key -> (marker, value)."""
        values = self.model_dump()
        return {
            key: (marker, values[key])
            for key, marker in local_path_keys(type(self)).items()
            if isinstance(values[key], str) and values[key]
        }


def is_offline(info: ValidationInfo) -> bool:
    """Whether options are being validated for offline decoding (see :meth:`DriverOptions.offline`)."""
    return bool(info.context and info.context.get(OFFLINE))


Parity = Literal["N", "E", "O", "M", "S"]


class SerialSettings(BaseModel):
    """Line settings. Each serial driver states its defaults; the config may override each key.
    ``model_dump()`` is pyserial's keywords for them."""

    model_config = ConfigDict(frozen=True)

    baudrate: int = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1


class SerialOptions(DriverOptions):
    """Keys every serial driver accepts: where the device is (``port`` path or URL, or ``usb`` id) and
    line settings (None = the driver's default)."""

    # /dev/ttyUSB0, COM5, or a terminal server: socket://HOST:PORT (raw TCP), rfc2217://HOST:PORT
    port: str | None = None
    usb: str | None = None  # "VID:PID" or "VID:PID:SERIAL" (hex), matched against the port listing
    baudrate: int | None = None
    bytesize: Literal[5, 6, 7, 8] | None = None
    parity: Parity | None = None
    stopbits: Literal[1, 2] | None = None

    @model_validator(mode="after")
    def _where(self, info: ValidationInfo) -> SerialOptions:
        if self.port is not None and self.usb is not None:
            raise ValueError("give exactly one of 'port' or 'usb'")
        if self.port is None and self.usb is None and not is_offline(info):
            raise ValueError("give exactly one of 'port' or 'usb'")
        if self.port is not None:
            network_port(self.port)  # a terminal server's URL names its host and TCP port (ValueError)
        if self.usb is not None:
            parts = self.usb.split(":")
            if len(parts) not in (2, 3) or not all(
                len(p) == 4 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts[:2]
            ):
                raise ValueError("usb must be 'VID:PID' or 'VID:PID:SERIAL' with 4-digit hex ids")
        return self

    @property
    def serial_port(self) -> str | None:
        return self.port

    def line_settings(self, defaults: SerialSettings | None) -> SerialSettings:
        base = defaults or SerialSettings()
        return SerialSettings(
            baudrate=self.baudrate or base.baudrate,
            bytesize=self.bytesize or base.bytesize,
            parity=self.parity or base.parity,
            stopbits=self.stopbits or base.stopbits,
        )


# ---------------------------------------------------------------------------------------------- decoding


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DecodeContext:
    """What a pure decoder may know about the world: identity, device-clock zone, the host clock."""

    device: DeviceIdentity
    tz: tzinfo = UTC  # zone of the device's local clock
    now: Callable[[], datetime] = utc_now  # host receive time (UTC, aware)


@dataclass(frozen=True)
class DecodeFailure:
    """A stream decoder could not decode some bytes; it resynced and carries on."""

    error: DecodeError

    @classmethod
    def of(cls, error: DecodeError, data: bytes) -> DecodeFailure:
        """``error`` about ``data``: the bytes it carries for the DEBUG hex dump, unless it names its own."""
        if not error.data:
            error.data = data
        return cls(error)

    @property
    def data(self) -> bytes:
        return self.error.data


DecoderOutput = DeviceEvent | DecodeFailure


class StreamDecoder(abc.ABC):
    """Incremental decoder for a byte stream (serial). Never raises on bad input: it reports a
    :class:`DecodeFailure`, resynchronises on the next frame start, and caps its buffer."""

    max_buffer: ClassVar[int] = 8192
    poll_interval: float | None = None  # seconds between poll() calls while connected; None = never

    def __init__(self, ctx: DecodeContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def feed(self, data: bytes) -> list[DecoderOutput]:
        """Consume ``data``; return every complete event (and failure) it finished."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Forget any partial frame (called after a disconnect: a half frame is never a reading)."""

    def flush(self) -> list[DecoderOutput]:
        """End of an offline input (``vitals-agent decode``): report what was left half-done (e.g. a
        truncated record). A half frame is never a reading. Default: nothing to report."""
        return []

    def commands_on_connect(self) -> list[bytes]:
        """Bytes to write to the device after the port opens (e.g. select a data format)."""
        return []

    # -- writing to the device (sans-I/O, like h11): the decoder queues bytes, the transport writes them.
    #
    # After the port opens the transport writes ``commands_on_connect()``, then ``data_to_send()``; after
    # every ``feed()`` and every ``poll()`` it writes whatever ``data_to_send()`` returns. So a decoder can
    # answer what it decodes (ACK/NAK handshakes, a retry after NAK, "send the next request once the reply
    # arrived") by calling ``self.send(...)`` inside ``feed()``, and a polled device (Detecto ``<LF>P<CR>``,
    # Fairbanks CR) sets ``poll_interval`` and overrides ``poll_command()``. While disconnected nothing is
    # written: on disconnect the transport calls ``reset()`` and discards anything still queued.

    def send(self, data: bytes) -> None:
        """Queue ``data`` to be written to the device (by the transport, after the current call)."""
        self.__dict__.setdefault("_outgoing", bytearray()).extend(data)

    def data_to_send(self) -> bytes:
        """Return and forget the bytes queued by :meth:`send` (the transport calls this)."""
        out: bytearray = self.__dict__.setdefault("_outgoing", bytearray())
        data = bytes(out)
        out.clear()
        return data

    def poll(self) -> None:
        """Called every ``poll_interval`` seconds while connected (monotonic timer; the first call right
        after the connect commands). Default: queue :meth:`poll_command`. Override for timeouts/retries."""
        command = self.poll_command()
        if command:
            self.send(command)

    def poll_command(self) -> bytes | None:
        """The request a polled device needs to answer (e.g. ``b"\\nP\\r"``); None = nothing."""
        return None


@dataclass(frozen=True, slots=True)
class Line:
    """One item from :class:`LineSplitter`: a complete line, or (``failure`` set) a discarded one."""

    data: bytes  # the line without its terminator (empty when discarded)
    end: int | None  # the terminator byte; None when the input ended (``finish``) or mid-line (failure)
    failure: DecodeFailure | None = None  # set when the line was longer than the cap and was discarded


class LineSplitter:
    """Cuts a byte stream into terminated lines of at most ``max_line`` bytes (terminator excluded).

    A line that grows past the cap is discarded *whole, up to its terminator*: neither the bytes before
    the cap nor the ones after it are ever handed out as a line (a wristband scan of 260 bytes must not
    become a scan of its last 4). The discarded line is reported once, at its terminator, as a
    :class:`DecodeFailure` (:class:`~vitals_agent.errors.OverlongError`) carrying its first ``keep`` bytes
    for the DEBUG hex dump and its length in the message. A run of ``max_discard`` bytes without any
    terminator is reported as it goes, so a device that never ends its line is still counted. Memory is
    bounded by ``max_line + keep`` whatever arrives. ``discarded`` counts the discarded lines.
    """

    def __init__(
        self,
        max_line: int,
        terminators: bytes = b"\r\n",
        *,
        what: str = "line",
        keep: int = 4096,
        max_discard: int = 65536,
    ) -> None:
        if max_line < 1 or not terminators:
            raise ValueError("max_line must be >= 1 and terminators non-empty")
        self.max_line = max_line
        self.what = what
        self.keep = keep
        self.max_discard = max_discard
        self._term = re.compile(b"[" + b"".join(re.escape(bytes([t])) for t in terminators) + b"]")
        self._buf = bytearray()
        self._over = False  # inside an overlong line: discard until its terminator
        self._over_len = 0  # its length so far (since the last report)
        self._over_head = bytearray()  # its first ``keep`` bytes (since the last report)
        self.discarded = 0

    @property
    def discarding(self) -> bool:
        return self._over

    def pending(self) -> bytes:
        """The unfinished line so far (empty while discarding an overlong one)."""
        return bytes(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._over = False
        self._over_len = 0
        self._over_head.clear()

    def feed(self, data: bytes) -> list[Line]:
        out: list[Line] = []
        start = 0
        for match in self._term.finditer(data):
            self._add(data[start : match.start()], out)
            end = data[match.start()]
            if self._over:
                out.append(Line(b"", end, self._overlong("discarded up to its terminator", ended=True)))
            else:
                out.append(Line(bytes(self._buf), end))
                self._buf.clear()
            start = match.end()
        self._add(data[start:], out)
        return out

    def finish(self) -> list[Line]:
        """End of input: the unfinished line (``end`` None), or the overlong one's failure."""
        if self._over:
            line = Line(b"", None, self._overlong("input ended before its terminator", ended=True))
        elif self._buf:
            line = Line(bytes(self._buf), None)
        else:
            return []
        self.reset()
        return [line]

    def _add(self, piece: bytes, out: list[Line]) -> None:
        if not piece:
            return
        if not self._over:
            room = self.max_line - len(self._buf)
            if len(piece) <= room:
                self._buf += piece
                return
            # Over the cap: from here to the terminator everything is discarded, the buffer included.
            self._over = True
            self._over_len = len(self._buf)
            self._over_head[:] = self._buf[: self.keep]
            self._buf.clear()
        self._over_len += len(piece)
        room = self.keep - len(self._over_head)
        if room > 0:
            self._over_head += piece[:room]
        if self._over_len >= self.max_discard:
            out.append(Line(b"", None, self._overlong("no terminator yet: still discarding", ended=False)))

    def _overlong(self, how: str, *, ended: bool) -> DecodeFailure:
        length, head = self._over_len, bytes(self._over_head)
        self._over_len = 0
        self._over_head.clear()
        if ended:
            self._over = False
            self.discarded += 1
        return DecodeFailure(
            OverlongError(f"{self.what} longer than {self.max_line} bytes ({length} bytes): {how}", head)
        )


class LineDecoder(StreamDecoder):
    """Helper base for CR/LF line protocols: splits lines (:class:`LineSplitter`: an overlong line is
    discarded whole, up to its terminator), calls ``decode_line`` for each non-empty line."""

    terminators: ClassVar[bytes] = b"\r\n"
    max_line: ClassVar[int] = 512
    line_name: ClassVar[str] = "line"  # how failures name a line ("scan", "A&D line", ...)

    def __init__(self, ctx: DecodeContext, *, what: str | None = None) -> None:
        super().__init__(ctx)
        self._lines = LineSplitter(self.max_line, self.terminators, what=what or self.line_name)

    def reset(self) -> None:
        self._lines.reset()

    def pending(self) -> bytes:
        """The unfinished line so far."""
        return self._lines.pending()

    def feed(self, data: bytes) -> list[DecoderOutput]:
        out: list[DecoderOutput] = []
        for line in self._lines.feed(data):
            if line.failure is not None:
                out.append(line.failure)
            elif line.data:
                out.extend(self._decode_safely(line.data))
        return out

    def flush(self) -> list[DecoderOutput]:
        """End of an offline input: an unterminated last line is a truncated line, never decoded."""
        out: list[DecoderOutput] = []
        for line in self._lines.finish():
            if line.failure is not None:
                out.append(line.failure)
            elif line.data.strip():
                what = self._lines.what
                out.append(
                    DecodeFailure(TruncatedError(f"truncated {what}: input ended inside a {what}", line.data))
                )
        return out

    def _decode_safely(self, line: bytes) -> list[DecoderOutput]:
        try:
            return list(self.decode_line(line))
        except DecodeError as exc:
            return [DecodeFailure.of(exc, line)]

    @abc.abstractmethod
    def decode_line(self, line: bytes) -> Iterable[DeviceEvent]:
        """Decode one line (without its terminator). Raise :class:`DecodeError` for a bad line."""


# ---------------------------------------------------------------------------------------------- drivers


OptionsT = TypeVar("OptionsT", bound=DriverOptions, covariant=True)


class Driver(abc.ABC, Generic[OptionsT]):
    """A device protocol, generic over its options model. A driver states what it is in its class line and
    its docstring, and registers with :func:`register_driver`::

        @register_driver
        class TanitaDriver(SerialDriver[TanitaOptions], name="tanita", device_class=DeviceClass.SCALE):
            \"\"\"Tanita scales, PC output.\"\"\"           # the description `vitals-agent drivers` shows

            decoder_class = TanitaDecoder
            simulator_class = TanitaSimulator

    ``self.options`` is then a ``TanitaOptions`` (and :attr:`options_model` that class)."""

    name: ClassVar[str]
    description: ClassVar[str]
    device_class: ClassVar[DeviceClass]
    transport: ClassVar[str]  # name of a registered transport: "serial", "ble", "folder", ...
    continuous: ClassVar[bool] = False  # continuous devices default to report = "stable"
    # Seconds without a byte (or a notification) while the link is up after which status shows the device
    # "silent" instead of "connected" (the device key ``silent_after_seconds`` overrides it). None: a device
    # that is legitimately quiet between measurements (cuffs, scales, thermometers, EKG carts, scanners).
    silent_after_seconds: ClassVar[float | None] = None
    options_model: ClassVar[type[DriverOptions]] = DriverOptions  # set from the generic argument
    serial_defaults: ClassVar[SerialSettings | None] = None
    characteristics: ClassVar[tuple[str, ...]] = ()  # BLE: UUIDs `decode --characteristic` accepts
    decoder_class: ClassVar[type[StreamDecoder] | None] = None  # built with the context alone, if so
    simulator_class: ClassVar[type[Simulator] | None] = None  # a realistic simulated device, if any
    # Bytes that start a measurement (written to the open link), or None: the agent cannot start one
    # (automated office BP then awaits the readings the device sends)
    start_command: ClassVar[bytes | None] = None

    def __init_subclass__(
        cls, *, name: str | None = None, device_class: DeviceClass | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            if "description" not in cls.__dict__ and cls.__doc__:
                cls.description = " ".join(cls.__doc__.split("\n\n")[0].split()).removesuffix(".")
        if device_class is not None:
            cls.device_class = device_class
        if "options_model" in cls.__dict__:
            return
        for base in getattr(cls, "__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Driver):
                args = get_args(base)
                if args and isinstance(args[0], type) and issubclass(args[0], DriverOptions):
                    cls.options_model = args[0]

    def __init__(self, options: OptionsT | None = None) -> None:
        """``options``: validated by :attr:`options_model`; None: its defaults for offline decoding
        (``vitals-agent decode``, tests), where no device has to be reached."""
        # The one bridge from the class attribute to the type parameter (a ClassVar cannot name it).
        self.options: OptionsT = (
            options if options is not None else cast(OptionsT, self.options_model.offline())
        )

    def stream_decoder(self, ctx: DecodeContext) -> StreamDecoder:
        if self.decoder_class is None:
            raise NotImplementedError(f"{self.name} has no stream decoder")
        return self.decoder_class(ctx)

    def decode_chunks(
        self, chunks: Sequence[bytes], ctx: DecodeContext, characteristic: str | None = None
    ) -> list[DecoderOutput]:
        """Offline decoding for ``vitals-agent decode``: by default, the chunks as one byte stream."""
        decoder = self.stream_decoder(ctx)
        out: list[DecoderOutput] = []
        for chunk in chunks:
            out.extend(decoder.feed(chunk))
        out.extend(decoder.flush())
        return out

    def simulator_settings(self) -> dict[str, Any]:
        """Simulator settings that follow from this device's options (e.g. its data format)."""
        return {}

    def simulator(self, **settings: Any) -> Simulator:
        """This driver's simulator with ``settings``, validated against the simulator's typed keywords:
        an unknown or a wrong setting is a ValueError naming it. NotImplementedError when there is none."""
        if self.simulator_class is None:
            raise NotImplementedError(f"{self.name} has no simulator")
        try:
            return self.simulator_class(**{**self.simulator_settings(), **settings})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "settings"
            problem = "unknown setting" if first["type"] == "unexpected_keyword_argument" else first["msg"]
            raise ValueError(f"{self.name} simulator: {where}: {problem}") from None


SerialOptionsT = TypeVar("SerialOptionsT", bound=SerialOptions, covariant=True)


class SerialDriver(Driver[SerialOptionsT]):
    """A driver whose device is on a serial port (or a pyserial URL), with :class:`SerialOptions`;
    :attr:`serial_defaults` (9600 8N1 unless the driver says otherwise) are the line settings the config
    may override key by key. The one place serial settings are decided: :meth:`line_settings`."""

    transport: ClassVar[str] = "serial"
    serial_defaults: ClassVar[SerialSettings | None] = SerialSettings()

    @property
    def serial_options(self) -> SerialOptions:
        return self.options

    def line_settings(self) -> SerialSettings:
        """The driver's defaults, overridden key by key by the device's configuration."""
        return self.options.line_settings(self.serial_defaults)


class SimPort(Protocol):
    """The device side of a simulated link (a pty master, a socket)."""

    async def write(self, data: bytes) -> None: ...

    async def read(self, timeout: float) -> bytes: ...


class Simulator(abc.ABC):
    """A realistic simulated device: plays the device side of the protocol on a :class:`SimPort`.
    Subclasses decorate ``__init__`` with :func:`pydantic.validate_call`: its typed keywords are the
    simulator's options model, checked when ``vitals-agent simulate`` or the demo builds one."""

    @abc.abstractmethod
    async def run(self, port: SimPort) -> None:
        """Run until cancelled."""


_DRIVERS: dict[str, type[Driver[Any]]] = {}
_D = TypeVar("_D", bound=type[Driver[Any]])


def register_driver(cls: _D) -> _D:
    if cls.name in _DRIVERS and _DRIVERS[cls.name] is not cls:
        raise RuntimeError(f"driver name {cls.name!r} registered twice")
    _DRIVERS[cls.name] = cls
    return cls


def driver_class(name: str) -> type[Driver[Any]]:
    """The driver registered as ``name``; only its module is imported (lean start)."""
    from vitals_agent.drivers import load_all, load_driver

    if name not in _DRIVERS:
        load_driver(name)
    try:
        return _DRIVERS[name]
    except KeyError:
        load_all()
        known = ", ".join(sorted(_DRIVERS))
        raise UnknownDriverError(f"unknown driver {name!r} (known: {known})") from None


def all_drivers() -> dict[str, type[Driver[Any]]]:
    from vitals_agent.drivers import load_all

    load_all()
    return dict(sorted(_DRIVERS.items()))


# ---------------------------------------------------------------------------------------------- transports


class DeviceStateStore(Protocol):
    """Small durable key/value store per device (last BLE sequence number, processed files...)."""

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> None: ...


class DeviceRuntime(Protocol):
    """What the agent gives a transport for one configured device."""

    @property
    def device_id(self) -> str: ...

    @property
    def driver(self) -> Driver[Any]: ...

    @property
    def settings(self) -> dict[str, Any]:
        """The device's whole config table (common and driver keys), validated."""
        ...

    @property
    def ctx(self) -> DecodeContext: ...

    @property
    def state(self) -> DeviceStateStore: ...

    @property
    def log(self) -> Any: ...

    async def emit(self, event: DeviceEvent) -> None:
        """Hand a decoded event to the agent. Returns once a reading is durably accepted (or refused)."""
        ...

    def decode_failed(self, failure: DecodeFailure) -> None:
        """Count a decode failure and log its bytes (hex) at DEBUG."""
        ...

    def set_connected(self, connected: bool, detail: str = "") -> None: ...

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the device's counter ``key`` (shown in status), e.g. ``files_failed``."""
        ...

    def heard(self, n: int) -> None:
        """The link delivered ``n`` bytes (a serial read, a BLE notification), whether or not they decode:
        the device is talking (what ``silent_after_seconds`` watches). Called on the hot path: cheap."""
        ...


_DriverT = TypeVar("_DriverT", bound=Driver[Any])


class Transport(abc.ABC):
    """Runs one device's link. ``run`` returns or raises when the link ends; the supervisor restarts it
    with back-off. Raise :class:`~vitals_agent.errors.TransportError` for expected link failures."""

    name: ClassVar[str]
    # True when a link that ends is routine for this transport (a BLE cuff connects for one measurement and
    # leaves; a scan that finds nothing means nobody is near): the supervisor then reconnects promptly and
    # logs the end at DEBUG instead of as a failure.
    routine_disconnect: ClassVar[bool] = False

    def __init__(self, runtime: DeviceRuntime) -> None:
        self.runtime = runtime

    def require_driver(self, kind: type[_DriverT]) -> _DriverT:
        """The device's driver as a ``kind`` (the driver this transport can run), else a ConfigError."""
        driver = self.runtime.driver
        if not isinstance(driver, kind):
            raise ConfigError([("driver", f"{driver.name!r} cannot use the {self.name} transport")])
        return driver

    @abc.abstractmethod
    async def run(self) -> None: ...


_TRANSPORTS: dict[str, type[Transport]] = {}
_T = TypeVar("_T", bound=type[Transport])


def register_transport(cls: _T) -> _T:
    _TRANSPORTS[cls.name] = cls
    return cls


def transport_class(name: str) -> type[Transport]:
    """The transport registered as ``name``; only its module is imported (lean start)."""
    from vitals_agent.drivers import load_transport

    if name not in _TRANSPORTS:
        load_transport(name)
    try:
        return _TRANSPORTS[name]
    except KeyError:
        raise UnknownDriverError(f"no transport {name!r} is registered") from None
