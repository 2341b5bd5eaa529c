"""Driver ``barcode``: serial / USB-CDC barcode scanners reading patient wristbands.

A scanner in serial (CDC-ACM / virtual COM) mode sends each scan as one line of text ending in CR, LF or
CR LF (some prefix an AIM symbology identifier such as ``]C1``; strip it with ``mrn_pattern``). The
``mrn_pattern`` regex must match the *whole* scan; the MRN is its named group ``mrn`` (or group 1). A
match becomes a :class:`~vitals_agent.models.PatientScan`, which sets the room's patient (with
``clinician_pattern`` set, a scan matching it first is a staff badge: a
:class:`~vitals_agent.models.ClinicianScan` that signs the clinician in; its id is the named group ``id`` or
group 1, and optional groups ``family`` and ``given`` carry the name); anything else
is a :class:`~vitals_agent.drivers.base.DecodeFailure` whose message never contains the scanned text
(a wristband is patient data: the runtime logs the bytes in hex at DEBUG only). A scan longer than 256
bytes is discarded whole, up to its terminator: no part of it ever becomes a scan (issue #10: the last four
bytes of a 260-byte 2D payload once set the room's patient).

Keyboard-wedge scanners (HID keyboards) type into whatever has focus; use ``vitals-agent patient scan``,
which applies the ``[patient] mrn_pattern`` to one line of standard input (:func:`extract_mrn`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Annotated, ClassVar

from pydantic import AfterValidator, validate_call

from vitals_agent.drivers.base import (
    DecodeContext,
    LineDecoder,
    SerialDriver,
    SerialOptions,
    SimPort,
    Simulator,
    register_driver,
)
from vitals_agent.errors import DecodeError, UnsupportedError
from vitals_agent.models import ClinicianScan, DeviceClass, DeviceEvent, PatientScan

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

DEFAULT_MRN_PATTERN = r"(?P<mrn>[A-Za-z0-9][A-Za-z0-9._-]{0,31})"


def check_mrn_pattern(value: str) -> str:
    """A valid regex with a named group ``mrn`` or at least one group (group 1 is the MRN). Used by the
    scanner's options and by ``[patient] mrn_pattern`` (keyboard-wedge scans)."""
    return _check_group_pattern(value, "mrn", "the MRN")


def extract_mrn(pattern: re.Pattern[str] | str, scan: str) -> str:
    """The MRN in one scan (whole-string match). Raises :class:`DecodeError` without echoing the scan."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    text = scan.strip()
    if not text:
        raise DecodeError("empty scan")
    match = regex.fullmatch(text)
    if match is None:
        raise DecodeError(f"scan does not match mrn_pattern ({len(text)} characters)")
    mrn = match.group("mrn") if "mrn" in regex.groupindex else match.group(1)
    if not mrn or not mrn.strip():
        raise DecodeError("mrn_pattern matched but the MRN group is empty")
    return mrn.strip()


def check_clinician_pattern(value: str) -> str:
    """A valid regex with a named group ``id`` or at least one group (group 1 is the badge id)."""
    return _check_group_pattern(value, "id", "the badge id")


def _check_group_pattern(value: str, group: str, what: str) -> str:
    """``value`` unchanged if it compiles and has the named ``group`` or at least one group (group 1)."""
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    if group not in compiled.groupindex and compiled.groups < 1:
        raise ValueError(f"needs a named group (?P<{group}>...) or a capturing group for {what}")
    return value


def extract_clinician(pattern: re.Pattern[str], scan: str) -> tuple[str, str | None, str | None] | None:
    """(id, family, given) when ``scan`` is a staff badge (whole-string match), else None."""
    match = pattern.fullmatch(scan.strip())
    if match is None:
        return None
    ident = match.group("id") if "id" in pattern.groupindex else match.group(1)
    if not ident or not ident.strip():
        return None
    names = pattern.groupindex
    family = match.group("family") if "family" in names else None
    given = match.group("given") if "given" in names else None
    return ident.strip(), family or None, given or None


MrnPattern = Annotated[str, AfterValidator(check_mrn_pattern)]
BadgePattern = Annotated[str, AfterValidator(check_clinician_pattern)]


class BarcodeOptions(SerialOptions):
    mrn_pattern: MrnPattern = DEFAULT_MRN_PATTERN
    clinician_pattern: BadgePattern | None = None  # staff badges: a scan matching it signs the clinician in


class BarcodeDecoder(LineDecoder):
    """One scan per line. Emits :class:`PatientScan`; unmatched scans become failures."""

    max_line: ClassVar[int] = 256  # a longer line is discarded whole (never its last bytes as a scan)
    line_name: ClassVar[str] = "scan"

    def __init__(
        self, ctx: DecodeContext, mrn_pattern: str = DEFAULT_MRN_PATTERN, clinician_pattern: str | None = None
    ) -> None:
        super().__init__(ctx)
        self._pattern = re.compile(mrn_pattern)
        self._badge = re.compile(clinician_pattern) if clinician_pattern else None

    def decode_line(self, line: bytes) -> Iterable[DeviceEvent]:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise UnsupportedError("scan is not UTF-8 text", line) from None
        # GS1 FNC1 (GS, 0x1D) and similar separators are kept out of the MRN; other control bytes refuse
        text = text.replace("\x1d", "")
        if _CONTROL.search(text):
            raise UnsupportedError("scan contains control characters", line)
        if self._badge is not None:
            found = extract_clinician(self._badge, text)
            if found is not None:
                ident, family, given = found
                scan = ClinicianScan(
                    device_id=self.ctx.device.id,
                    clinician_id=ident,
                    family=family,
                    given=given,
                    raw=text.strip(),
                    received_at=self.ctx.now(),
                )
                return [scan]
        mrn = extract_mrn(self._pattern, text)
        return [
            PatientScan(device_id=self.ctx.device.id, mrn=mrn, raw=text.strip(), received_at=self.ctx.now())
        ]


class BarcodeSimulator(Simulator):
    """Plays a serial scanner: sends each code (CR LF terminated), ``interval`` seconds apart, then idles."""

    @validate_call
    def __init__(self, codes: Iterable[str] = ("MRN12345",), interval: float = 1.0) -> None:
        self.codes = list(codes)
        self.interval = interval

    async def run(self, port: SimPort) -> None:
        for code in self.codes:
            await port.write(code.encode() + b"\r\n")
            await asyncio.sleep(self.interval)
        while True:
            await asyncio.sleep(3600)


@register_driver
class BarcodeDriver(SerialDriver[BarcodeOptions], name="barcode", device_class=DeviceClass.BARCODE):
    """Serial / USB-CDC wristband barcode scanner (sets the room's patient; mrn_pattern)."""

    simulator_class = BarcodeSimulator

    def stream_decoder(self, ctx: DecodeContext) -> BarcodeDecoder:
        return BarcodeDecoder(ctx, self.options.mrn_pattern, self.options.clinician_pattern)
