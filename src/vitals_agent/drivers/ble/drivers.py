"""The registered BLE drivers: one per Bluetooth health profile, plus Nonin's own oximetry service.

Each driver names its service, the characteristics it subscribes to (the first is the measurement and
the default of ``vitals-agent decode --characteristic``), and decodes one characteristic payload per
chunk. Timing, identity, stored records and de-duplication are the BLE transport's (``transport.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from vitals_agent.drivers.base import (
    DecodeContext,
    DecodeFailure,
    DecoderOutput,
    Driver,
    DriverOptions,
    is_offline,
)
from vitals_agent.drivers.base import register_driver as _register
from vitals_agent.drivers.ble import uuids as U
from vitals_agent.drivers.ble.address import parse_address
from vitals_agent.drivers.ble.clock import decode_current_time, decode_date_time
from vitals_agent.drivers.ble.decoders import (
    BleRecord,
    decode_battery_level,
    decode_blood_pressure,
    decode_blood_pressure_record,
    decode_body_composition,
    decode_dis_string,
    decode_heart_rate,
    decode_intermediate_cuff_pressure,
    decode_nonin_df19,
    decode_plx_continuous,
    decode_plx_features,
    decode_plx_spot_check,
    decode_pnp_id,
    decode_racp,
    decode_temperature,
    decode_temperature_type,
    decode_weight,
    record_to_event,
    system_id_to_eui64,
    temperature_type_name,
)
from vitals_agent.drivers.ble.quirks import BpQuirks, bp_quirks
from vitals_agent.errors import DecodeError, UnsupportedError
from vitals_agent.models import DeviceClass, DeviceEvent, DeviceIdentity, DeviceStatusEvent


def _address(value: str) -> str:
    try:
        return parse_address(value)
    except ValueError:
        raise ValueError("address must look like AA:BB:CC:DD:EE:FF") from None


def _name_pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"name is not a valid regular expression: {exc}") from None
    return value


def _service(value: str) -> str:
    try:
        return U.normalize_uuid(value)
    except DecodeError as exc:
        raise ValueError(str(exc)) from None


BleAddress = Annotated[str, AfterValidator(_address)]
NamePattern = Annotated[str, AfterValidator(_name_pattern)]
ServiceUuid = Annotated[str, AfterValidator(_service)]


class BleOptions(DriverOptions):
    """Keys of every BLE device: where it is (``address``, or ``name`` pattern + the driver's service)
    and how the link behaves."""

    address: BleAddress | None = None  # "AA:BB:CC:DD:EE:FF" (BlueZ) or a platform id
    name: NamePattern | None = None  # regular expression matched against the advertised name
    service: ServiceUuid | None = None  # service UUID to require when finding by name (default: the driver's)
    adapter: str | None = None  # "hci0"; default: BlueZ's default adapter
    set_clock: bool = True  # write the host clock to Date Time / Current Time when writable
    stored_records: bool = True  # fetch stored records through RACP where the device offers it
    scan_seconds: float = Field(60.0, gt=0)  # one scan per run(); not found -> DeviceNotFoundError
    connect_seconds: float = Field(10.0, gt=0)
    live_seconds: float = Field(120.0, gt=0)  # a record whose device time is older counts as stored
    idle_seconds: float | None = Field(None, gt=0)  # disconnect after this long without data (None: never)
    # The device's model number, for a device whose Device Information does not say (or says it wrong):
    # selects its per-model quirks (drivers/ble/quirks.py), e.g. model = "BM85".
    model: str | None = None

    @model_validator(mode="after")
    def _where(self, info: ValidationInfo) -> BleOptions:
        if self.address is None and self.name is None and not is_offline(info):
            raise ValueError("give 'address' or 'name' (a pattern of the advertised name)")
        return self


class ThermometerOptions(BleOptions):
    site: str | None = None  # OBX-20 site when the thermometer sends no temperature type


class HeartRateOptions(BleOptions):
    metric: Literal["ecg_heart_rate", "pulse_rate", "pulse_rate_oximeter"] = "ecg_heart_rate"


_STRING_IDENTITY = {
    U.MANUFACTURER_NAME: "manufacturer",
    U.MODEL_NUMBER: "model",
    U.SERIAL_NUMBER: "serial_number",
    U.FIRMWARE_REVISION: "firmware",
}
_INFO_CHARACTERISTICS = (
    U.MANUFACTURER_NAME,
    U.MODEL_NUMBER,
    U.SERIAL_NUMBER,
    U.HARDWARE_REVISION,
    U.FIRMWARE_REVISION,
    U.SOFTWARE_REVISION,
    U.SYSTEM_ID,
    U.PNP_ID,
    U.DATE_TIME,
    U.CURRENT_TIME,
    U.BATTERY_LEVEL,
    U.RACP,
)


def identity_from_dis(device_id: str, values: Mapping[str, bytes]) -> DeviceIdentity:
    """The identity the Device Information characteristics in ``values`` (UUID -> bytes) state."""
    fields: dict[str, Any] = {}
    for uuid, key in _STRING_IDENTITY.items():
        if uuid in values:
            text = decode_dis_string(values[uuid])
            if text:
                fields[key] = text
    if U.SYSTEM_ID in values:
        try:
            eui = system_id_to_eui64(values[U.SYSTEM_ID])
        except DecodeError:
            eui = None
        if eui is not None and eui.strip("0") and eui.strip("F"):
            fields["eui64"] = eui
    return DeviceIdentity(id=device_id, **fields)


BleOptionsT = TypeVar("BleOptionsT", bound=BleOptions, covariant=True)


class BleDriver(Driver[BleOptionsT]):
    """Base of the BLE drivers, generic over their options (:class:`BleOptions` or a subclass)."""

    transport = "ble"
    service: ClassVar[str]
    # measurement characteristic -> its decoder, for payloads that need nothing but their bytes
    decoders: ClassVar[Mapping[str, Callable[[bytes], BleRecord]]] = {}
    measurement_characteristics: ClassVar[tuple[str, ...]]  # subscribed, in this order (default: decoders)
    extra_characteristics: ClassVar[tuple[str, ...]] = ()  # read-only helpers (features, type)
    racp_supported: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "decoders" in cls.__dict__ and "measurement_characteristics" not in cls.__dict__:
            cls.measurement_characteristics = tuple(cls.decoders)
        if "measurement_characteristics" in cls.__dict__:
            cls.characteristics = (
                *cls.measurement_characteristics,
                *cls.extra_characteristics,
                *_INFO_CHARACTERISTICS,
            )

    @property
    def ble_options(self) -> BleOptions:
        return self.options

    def decode_measurement(self, uuid: str, data: bytes, context: Mapping[str, bytes]) -> BleRecord:
        """Decode one payload of a measurement characteristic. ``context`` holds values read on connect."""
        decoder = self.decoders.get(uuid)
        if decoder is None:
            raise UnsupportedError(f"{self.name} does not decode {U.short_name(uuid)}", bytes(data))
        return decoder(data)

    def describe(self, uuid: str, data: bytes, ctx: DecodeContext) -> DeviceEvent:
        """Decode one payload of an informational characteristic into a status event."""
        if uuid in _STRING_IDENTITY or uuid == U.SYSTEM_ID:
            return DeviceStatusEvent(identity=identity_from_dis(ctx.device.id, {uuid: data}))
        if uuid in (U.HARDWARE_REVISION, U.SOFTWARE_REVISION):
            return DeviceStatusEvent(note=f"{U.short_name(uuid)}: {decode_dis_string(data)}")
        if uuid == U.PNP_ID:
            pnp = decode_pnp_id(data)
            return DeviceStatusEvent(
                note=f"PnP ID: source {pnp.vendor_id_source} vendor 0x{pnp.vendor_id:04X} "
                f"product 0x{pnp.product_id:04X} version 0x{pnp.product_version:04X}"
            )
        if uuid == U.DATE_TIME:
            if len(data) != 7:
                raise DecodeError(f"Date Time must be 7 bytes, got {len(data)}", bytes(data))
            return DeviceStatusEvent(note=f"device clock {decode_date_time(data).key()}")
        if uuid == U.CURRENT_TIME:
            now = decode_current_time(data)
            return DeviceStatusEvent(
                note=f"device clock {now.date_time.key()} (adjust reason 0x{now.adjust_reason:02X})"
            )
        if uuid == U.BATTERY_LEVEL:
            return DeviceStatusEvent(battery_percent=decode_battery_level(data))
        if uuid == U.RACP:
            return DeviceStatusEvent(note=f"RACP: {decode_racp(data).text}")
        if uuid == U.TEMPERATURE_TYPE:
            return DeviceStatusEvent(
                note=f"temperature type: {temperature_type_name(decode_temperature_type(data))}"
            )
        if uuid == U.PLX_FEATURES:
            f = decode_plx_features(data)
            return DeviceStatusEvent(
                note=f"PLX features 0x{f.features:04X}"
                + (
                    f", measurement status support 0x{f.measurement_status_support:04X}"
                    if f.measurement_status_support is not None
                    else ""
                )
                + (
                    f", device status support 0x{f.device_status_support:06X}"
                    if f.device_status_support is not None
                    else ""
                )
            )
        if uuid in self.extra_characteristics:
            return DeviceStatusEvent(note=f"{U.short_name(uuid)}: 0x{int.from_bytes(data, 'little'):X}")
        raise UnsupportedError(f"{self.name} does not decode {U.short_name(uuid)}", bytes(data))

    def decode_chunks(
        self, chunks: Sequence[bytes], ctx: DecodeContext, characteristic: str | None = None
    ) -> list[DecoderOutput]:
        """Each chunk is one payload of ``characteristic`` (default: the measurement)."""
        uuid = U.normalize_uuid(characteristic) if characteristic else self.measurement_characteristics[0]
        if uuid not in self.characteristics:
            known = ", ".join(U.short_name(c) for c in self.characteristics)
            raise UnsupportedError(
                f"{self.name} does not decode characteristic {characteristic} (known: {known})"
            )
        out: list[DecoderOutput] = []
        for chunk in chunks:
            try:
                if uuid in self.measurement_characteristics:
                    out.append(record_to_event(self.decode_measurement(uuid, bytes(chunk), {}), ctx))
                else:
                    out.append(self.describe(uuid, bytes(chunk), ctx))
            except DecodeError as exc:
                out.append(DecodeFailure.of(exc, bytes(chunk)))
        return out


@_register
class BloodPressureDriver(
    BleDriver[BleOptions], name="ble-blood-pressure", device_class=DeviceClass.BLOOD_PRESSURE
):
    """Bluetooth Blood Pressure Service 0x1810 (A&D UA-651BLE, Omron, ...)."""

    service = U.BLOOD_PRESSURE_SERVICE
    decoders = {
        U.BLOOD_PRESSURE_MEASUREMENT: decode_blood_pressure,
        U.INTERMEDIATE_CUFF_PRESSURE: decode_intermediate_cuff_pressure,
        U.BLOOD_PRESSURE_RECORD: decode_blood_pressure_record,
    }
    extra_characteristics = (U.BLOOD_PRESSURE_FEATURE,)
    racp_supported = True

    def quirks(self, context: Mapping[str, bytes]) -> BpQuirks | None:
        """This cuff's deviations from the profile: from the configured ``model``, else from the
        Manufacturer Name and Model Number read on connect (``context``)."""
        manufacturer = (
            decode_dis_string(context[U.MANUFACTURER_NAME]) if U.MANUFACTURER_NAME in context else None
        )
        model = decode_dis_string(context[U.MODEL_NUMBER]) if U.MODEL_NUMBER in context else None
        if self.options.model:
            return bp_quirks(None, self.options.model)
        return bp_quirks(manufacturer, model)

    def decode_measurement(self, uuid: str, data: bytes, context: Mapping[str, bytes]) -> BleRecord:
        if uuid == U.BLOOD_PRESSURE_MEASUREMENT:
            return decode_blood_pressure(data, self.quirks(context))
        if uuid == U.BLOOD_PRESSURE_RECORD:
            return decode_blood_pressure_record(data, self.quirks(context))
        return super().decode_measurement(uuid, data, context)


@_register
class ThermometerDriver(
    BleDriver[ThermometerOptions], name="ble-thermometer", device_class=DeviceClass.THERMOMETER
):
    """Bluetooth Health Thermometer Service 0x1809."""

    service = U.HEALTH_THERMOMETER_SERVICE
    measurement_characteristics = (U.TEMPERATURE_MEASUREMENT,)
    extra_characteristics = (U.TEMPERATURE_TYPE,)

    def decode_measurement(self, uuid: str, data: bytes, context: Mapping[str, bytes]) -> BleRecord:
        if uuid != U.TEMPERATURE_MEASUREMENT:
            return super().decode_measurement(uuid, data, context)
        default_type = None
        if context.get(U.TEMPERATURE_TYPE):
            default_type = decode_temperature_type(context[U.TEMPERATURE_TYPE])
        return decode_temperature(data, default_type=default_type, default_site=self.options.site)


@_register
class WeightScaleDriver(BleDriver[BleOptions], name="ble-weight-scale", device_class=DeviceClass.SCALE):
    """Bluetooth Weight Scale Service 0x181D (A&D UC-352BLE, ...)."""

    service = U.WEIGHT_SCALE_SERVICE
    decoders = {U.WEIGHT_MEASUREMENT: decode_weight}
    extra_characteristics = (U.WEIGHT_SCALE_FEATURE,)


@_register
class BodyCompositionDriver(
    BleDriver[BleOptions], name="ble-body-composition", device_class=DeviceClass.BODY_COMPOSITION
):
    """Bluetooth Body Composition Service 0x181B."""

    service = U.BODY_COMPOSITION_SERVICE
    decoders = {U.BODY_COMPOSITION_MEASUREMENT: decode_body_composition}
    extra_characteristics = (U.uuid16(0x2A9B),)


@_register
class PulseOximeterDriver(
    BleDriver[BleOptions], name="ble-pulse-oximeter", device_class=DeviceClass.PULSE_OXIMETER
):
    """Bluetooth Pulse Oximeter Service (PLX) 0x1822: spot-check and continuous."""

    service = U.PLX_SERVICE
    decoders = {U.PLX_SPOT_CHECK: decode_plx_spot_check, U.PLX_CONTINUOUS: decode_plx_continuous}
    extra_characteristics = (U.PLX_FEATURES,)
    racp_supported = True


@_register
class HeartRateDriver(
    BleDriver[HeartRateOptions], name="ble-heart-rate", device_class=DeviceClass.HEART_RATE
):
    """Bluetooth Heart Rate Service 0x180D (chest straps; not an exam-room source)."""

    continuous = True
    silent_after_seconds = 30.0  # a notification a second while connected
    service = U.HEART_RATE_SERVICE
    measurement_characteristics = (U.HEART_RATE_MEASUREMENT,)
    extra_characteristics = (U.uuid16(0x2A38),)

    def decode_measurement(self, uuid: str, data: bytes, context: Mapping[str, bytes]) -> BleRecord:
        if uuid != U.HEART_RATE_MEASUREMENT:
            return super().decode_measurement(uuid, data, context)
        return decode_heart_rate(data, self.options.metric)


@_register
class Nonin3230Driver(BleDriver[BleOptions], name="nonin-3230", device_class=DeviceClass.PULSE_OXIMETER):
    """Nonin 3230 finger oximeter, Nonin Oximetry Service (bond first: encryption required)."""

    continuous = True
    silent_after_seconds = 30.0  # a DF19 notification a second while connected
    service = U.NONIN_OXIMETRY_SERVICE
    decoders = {U.NONIN_MEASUREMENT: decode_nonin_df19}
