"""The EKG-cart drivers: ``scp-ecg``, ``aecg-xml``, ``philips-xml`` (files in a watched folder) and
``scp-ecg-serial`` (SCP records sent over RS-232). One file = one Reading."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Protocol, Self, TypeVar

import structlog
from pydantic import Field, ValidationInfo, field_validator, model_validator

from vitals_agent.drivers.base import (
    DecodeContext,
    DecodeFailure,
    DecoderOutput,
    Driver,
    DriverOptions,
    LocalPath,
    SerialDriver,
    SerialOptions,
    is_offline,
    register_driver,
)
from vitals_agent.drivers.ecg import aecg, philips, scp
from vitals_agent.drivers.ecg.common import EcgDecoded, to_reading, with_original
from vitals_agent.drivers.ecg.framing import ScpFileFramer
from vitals_agent.errors import DecodeError
from vitals_agent.models import Attachment, DeviceClass, Reading

log = structlog.get_logger(__name__)

MiB = 1024 * 1024


class EcgAttachOptions(DriverOptions):
    """Keys of every EKG driver: what is attached, and how large a file may be."""

    attach_original: bool = False  # send the original file as an ED OBX
    attach_max_bytes: int = Field(10 * MiB, gt=0)
    # larger files are refused without being read (XML trees take ~10x their size in memory)
    max_file_bytes: int = Field(16 * MiB, gt=0)


class EcgFileOptions(EcgAttachOptions):
    """Keys of the folder-watching EKG drivers."""

    # the share the cart writes to (offline decoding needs none)
    folder: Annotated[str, LocalPath("folder")] = Field("", validate_default=True)
    pattern: str | None = None  # glob, matched case-insensitively; default per driver
    poll_seconds: float = Field(2.0, gt=0)
    # a file whose header announces more bytes than it has is waited for this long, then failed
    incomplete_timeout_seconds: float = Field(600.0, gt=0)

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str, info: ValidationInfo) -> str:
        if not value and not is_offline(info):
            raise ValueError("required")
        return value


class XmlOptions(EcgFileOptions):
    attach_report: bool = False  # render the 12 leads to a PDF page and attach it (ED)


class AecgOptions(XmlOptions):
    # What interval values written without a unit mean for this site's carts (HL7 says dimensionless,
    # so by default they are refused with a reason, never guessed); e.g. "ms" for TraceMasterVue exports.
    unitless_interval_unit: Literal["ms", "s"] | None = None


class PhilipsOptions(XmlOptions):
    """The 12 leads of ``attach_report`` are XLI-decompressed first."""


class EcgSerialOptions(SerialOptions, EcgAttachOptions):
    """Keys of ``scp-ecg-serial``: where the cart is plus how files are cut out of the byte stream."""

    idle_gap_seconds: float = Field(2.0, gt=0)  # silence that ends a file whose length is unknown
    # silence that abandons an SCP record whose header announced more bytes (a slow or stalled cart)
    record_timeout_seconds: float = Field(30.0, gt=0)
    # keep received files in <save_folder>/processed or /failed
    save_folder: Annotated[str | None, LocalPath("output-folder")] = None

    @model_validator(mode="after")
    def _limits(self) -> Self:
        if self.max_file_bytes < 64:
            raise ValueError("max_file_bytes must be at least 64")
        return self


EcgOptionsT = TypeVar("EcgOptionsT", bound=EcgAttachOptions, covariant=True)
FolderOptionsT = TypeVar("FolderOptionsT", bound=EcgFileOptions, covariant=True)


class EcgFileDriver(Driver[EcgOptionsT]):
    """Base of the file-based EKG drivers: a pure ``decode_file`` plus what the transports need."""

    device_class: ClassVar[DeviceClass] = DeviceClass.ECG
    transport: ClassVar[str] = "folder"
    default_pattern: ClassVar[str] = "*"
    media_type: ClassVar[str] = "application/octet-stream"
    default_name: ClassVar[str] = "ecg"
    _decoder: ClassVar[Callable[..., Reading]]

    @property
    def max_file_bytes(self) -> int:
        return self.options.max_file_bytes

    def expected_length(self, head: bytes) -> int | None:
        """Total size the file's header announces (SCP), or None when the format does not say."""
        return None

    def looks_complete(self, head: bytes, tail: bytes) -> bool:
        """Whether a file whose size stopped changing also looks finished (XML: the root is closed)."""
        return True

    def header_problem(self, head: bytes) -> str | None:
        """Why a file is wrong from its first bytes (``head``: up to HEAD_BYTES) whatever follows — a length
        over ``max_file_bytes``, a wrong magic or version — or None. Such a file is failed at once instead of
        being waited for as an incomplete file."""
        return None

    def decode_file(self, data: bytes, ctx: DecodeContext, name: str | None = None) -> Reading:
        """Decode one whole file and add the configured attachments. Raises only DecodeError."""
        reading = type(self)._decoder(data, ctx, max_bytes=self.max_file_bytes)
        return self.finish(reading, data, name or self.default_name)

    def finish(self, reading: Reading, data: bytes, name: str) -> Reading:
        opts = self.options
        if opts.attach_original:
            reading = with_original(
                reading, data, printable_name(name), self.media_type, opts.attach_max_bytes
            )
        return reading

    def decode_chunks(
        self, chunks: Sequence[bytes], ctx: DecodeContext, characteristic: str | None = None
    ) -> list[DecoderOutput]:
        """The chunks concatenated are one file."""
        data = b"".join(chunks)
        try:
            return [self.decode_file(data, ctx)]
        except DecodeError as exc:
            return [DecodeFailure.of(exc, data[:256])]


class FolderEcgDriver(EcgFileDriver[FolderOptionsT]):
    """An EKG driver whose files come from a watched folder (the ``folder`` transport)."""

    @property
    def folder_options(self) -> EcgFileOptions:
        return self.options

    @property
    def pattern(self) -> str:
        return self.options.pattern or self.default_pattern


XmlOptionsT = TypeVar("XmlOptionsT", bound=XmlOptions, covariant=True)


class _ReadsXml(Protocol):
    def __call__(self, data: bytes, *, max_bytes: int) -> ET.Element: ...


@dataclass(frozen=True, slots=True)
class XmlFormat:
    """What an XML EKG format's driver takes from the format's module (:mod:`aecg`, :mod:`philips`)."""

    root_element: str
    name: str  # for messages: "not a <name> file"
    document: _ReadsXml  # the parsed document, root element checked
    parse: Callable[[ET.Element], EcgDecoded]  # its global measurements, statements, patient, device
    waveforms: Callable[[ET.Element], aecg.Waveforms]  # its leads, for attach_report's page


AECG = XmlFormat("AnnotatedECG", "HL7 aECG", aecg.document, aecg.parse_document, aecg.document_waveforms)
PHILIPS = XmlFormat(
    "restingecgdata", "Philips Sierra ECG XML", philips.document, philips.parse_document, philips.waveforms
)


class XmlFileDriver(FolderEcgDriver[XmlOptionsT]):
    """An XML EKG format: one parse serves the reading and, with ``attach_report``, the rendered page."""

    format: ClassVar[XmlFormat]
    default_pattern = "*.xml"
    media_type = "application/xml"
    default_name = "ecg.xml"

    def decoded(self, root: ET.Element) -> EcgDecoded:
        """The format's parse; a driver overrides it to pass its options."""
        return self.format.parse(root)

    def decode_file(self, data: bytes, ctx: DecodeContext, name: str | None = None) -> Reading:
        root = self.format.document(data, max_bytes=self.max_file_bytes)
        decoded = self.decoded(root)
        reading = self.finish(to_reading(decoded, data, ctx), data, name or self.default_name)
        if self.options.attach_report:
            reading = with_report(reading, decoded, lambda: self.format.waveforms(root))
        return reading

    def looks_complete(self, head: bytes, tail: bytes) -> bool:
        return xml_root_closed(head, tail, self.format.root_element)

    def header_problem(self, head: bytes) -> str | None:
        if any(bom.startswith(head) for bom in (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
            return None  # part of a byte-order mark so far: maybe still being written
        text = _head_text(head)
        if not text:
            return None  # only a BOM or white space so far: maybe still being written
        expected = self.format.root_element
        if not text.startswith("<"):
            return f"not an XML file (it does not start with '<'; expected a <{expected}> document)"
        root = _root_name(text)
        if root is not None and root != expected:
            return f"root element <{root}> is not <{expected}>: not a {self.format.name} file"
        return None


def with_report(reading: Reading, decoded: EcgDecoded, waves: Callable[[], aecg.Waveforms]) -> Reading:
    """``reading`` with the rendered 12-lead page attached (PDF, ED), or the reason it was skipped in
    ``extra["report_skipped"]`` (a file whose waveforms cannot be read is still sent, without the page)."""
    from vitals_agent.drivers.ecg.render import render_waves

    try:
        pdf = render_waves(decoded, waves(), fmt="pdf")
    except DecodeError as exc:
        extra = dict(reading.extra)
        extra["report_skipped"] = str(exc)
        return reading.with_updates(extra=extra)
    attachment = Attachment(name="ecg_report.pdf", media_type="application/pdf", data=pdf)
    return reading.with_updates(attachments=(*reading.attachments, attachment))


HEAD_BYTES = 4096  # what the folder transport reads for header_problem / expected_length


def _head_text(head: bytes) -> str:
    """The start of an XML file as text (BOM or UTF-16 honoured), without leading white space."""
    if head.startswith(b"\xef\xbb\xbf"):
        head, encoding = head[3:], "utf-8"
    elif head.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    elif len(head) >= 2 and head[0] == 0 and head[1] != 0:
        encoding = "utf-16-be"
    elif len(head) >= 2 and head[1] == 0 and head[0] != 0:
        encoding = "utf-16-le"
    else:
        encoding = "utf-8"
    if encoding.startswith("utf-16") and len(head) % 2:
        head = head[:-1]
    return head.decode(encoding, errors="replace").lstrip(" \t\r\n\ufeff\x00")


_PROLOG = re.compile(r"\s*(?:<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>)", re.S)
_ROOT = re.compile(r"\s*<(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)[\s/>]")


def _root_name(text: str) -> str | None:
    """The root element's local name once the head shows it (after declaration, comments, DOCTYPE)."""
    pos = 0
    while m := _PROLOG.match(text, pos):
        pos = m.end()
    m = _ROOT.match(text, pos)
    return m.group(1) if m else None


def printable_name(name: str) -> str:
    """A file name as printable text for a message (an ED attachment's name): bytes that are not UTF-8
    (``os.fsdecode`` keeps them as surrogates) and control or separator characters become U+FFFD."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "replace")
    text = raw.decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)[:255] or "ecg"


def xml_root_closed(head: bytes, tail: bytes, root: str) -> bool:
    """True when ``tail`` (the file's last bytes) holds the closing tag of ``root`` (any prefix)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16-le" if head.startswith(b"\xff\xfe") else "utf-16-be"
        if len(tail) % 2:
            tail = tail[1:]
    else:
        encoding = "utf-8"
    text = tail.decode(encoding, errors="ignore").rstrip(" \t\r\n\x00\ufeff")
    if not text.endswith(">"):
        return False
    close = text.rfind("</")
    return close >= 0 and text[close + 2 :].rstrip(">").strip().split(":")[-1] == root


class _ScpFiles(EcgFileDriver[EcgOptionsT]):
    """SCP-ECG records (EN 1064): their length is in their header."""

    default_pattern = "*.scp"
    media_type = scp.MEDIA_TYPE
    default_name = "ecg.scp"
    _decoder = staticmethod(scp.decode)

    def expected_length(self, head: bytes) -> int | None:
        return scp.record_length(head)

    def header_problem(self, head: bytes) -> str | None:
        return scp.header_problem(head, self.max_file_bytes)

    def looks_complete(self, head: bytes, tail: bytes) -> bool:
        return len(head) >= scp.RECORD_HEADER + scp.HEADER  # shorter: not even a header yet


@register_driver
class ScpEcgDriver(_ScpFiles[EcgFileOptions], FolderEcgDriver[EcgFileOptions], name="scp-ecg"):
    """EKG cart SCP-ECG files (EN 1064) from a watched folder: global measurements, statements."""


@register_driver
class AecgXmlDriver(XmlFileDriver[AecgOptions], name="aecg-xml"):
    """EKG cart HL7 aECG XML files from a watched folder: global measurements, statements."""

    format = AECG

    def decoded(self, root: ET.Element) -> EcgDecoded:
        return aecg.parse_document(root, unitless_interval_unit=self.options.unitless_interval_unit)


@register_driver
class PhilipsXmlDriver(XmlFileDriver[PhilipsOptions], name="philips-xml"):
    """Philips PageWriter/HeartStart Sierra ECG XML (1.03, 1.04.x) from a watched folder."""

    format = PHILIPS


@register_driver
class ScpEcgSerialDriver(_ScpFiles[EcgSerialOptions], SerialDriver[EcgSerialOptions], name="scp-ecg-serial"):
    """EKG cart sending SCP-ECG records over RS-232 (file boundary by record length or idle gap)."""

    transport = "ecg-serial-file"

    def stream_decoder(self, ctx: DecodeContext) -> ScpFileFramer:
        return ScpFileFramer(ctx, self, self.max_file_bytes)
