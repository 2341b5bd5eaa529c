"""Render an aECG file's 12 leads as a standard report page (PNG or PDF bytes).

Layout: A4 landscape, standard grid (1 mm minor, 5 mm major lines), 25 mm/s and 10 mm/mV; three rows of
four 2.5 s columns (I/II/III, aVR/aVL/aVF, V1-V3, V4-V6) plus a 10 s lead II rhythm strip, each row
starting with a 1 mV calibration pulse. The header carries the patient, acquisition time, device, the
cart's global measurements and its statements. Limb leads missing from the file are derived from I and II.
The PDF is the same raster page (8 px/mm, lossless) at its physical size: the scale is exact when
printed at 100 %.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Sequence
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

from vitals_agent.drivers.ecg import aecg, philips
from vitals_agent.drivers.ecg.common import EcgDecoded
from vitals_agent.drivers.ecg.xmlsafe import DEFAULT_MAX_XML_BYTES
from vitals_agent.errors import DecodeError

PAGE_MM = (297.0, 210.0)
PX_PER_MM = 8
MM_PER_S = 25.0
MM_PER_MV = 10.0
GRID_LEFT_MM = 17.0
GRID_TOP_MM = 42.0
GRID_WIDTH_MM = 265.0
ROW_MM = 40.0
ROWS = 4
CAL_MM = 5.0  # calibration pulse: 0.2 s wide, 1 mV high
COLUMN_S = 2.5
LAYOUT: tuple[tuple[str, str, str, str], ...] = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)
RHYTHM_LEAD = "II"

MINOR = (250, 205, 205)
MAJOR = (235, 140, 140)
TRACE = (0, 0, 0)
TEXT = (20, 20, 20)


def _px(mm: float) -> int:
    return round(mm * PX_PER_MM)


# Fonts with Latin-1 accents (Pillow's own default font has none): Debian fonts-dejavu-core, Liberation.
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "DejaVuSans.ttf",
)


def _font(size_mm: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, _px(size_mm))
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=_px(size_mm))
    except (OSError, TypeError, ValueError):  # Pillow without FreeType: bitmap font
        return ImageFont.load_default()


def derive_limb_leads(leads: dict[str, list[float]]) -> dict[str, list[float]]:
    """Einthoven/Goldberger: fill III, aVR, aVL, aVF from I and II when the file does not carry them."""
    out = dict(leads)
    one, two = leads.get("I"), leads.get("II")
    if one is None or two is None:
        return out
    n = min(len(one), len(two))
    pairs = list(zip(one[:n], two[:n], strict=True))
    out.setdefault("III", [b - a for a, b in pairs])
    out.setdefault("aVR", [-(a + b) / 2 for a, b in pairs])
    out.setdefault("aVL", [a - b / 2 for a, b in pairs])
    out.setdefault("aVF", [b - a / 2 for a, b in pairs])
    return out


def _grid(draw: ImageDraw.ImageDraw) -> None:
    left, top = GRID_LEFT_MM, GRID_TOP_MM
    width, height = GRID_WIDTH_MM, ROW_MM * ROWS
    for major in (False, True):
        step = 5 if major else 1
        color, line = (MAJOR, 2) if major else (MINOR, 1)
        for i in range(0, int(width) + 1, step):
            x = _px(left + i)
            draw.line([(x, _px(top)), (x, _px(top + height))], fill=color, width=line)
        for j in range(0, int(height) + 1, step):
            y = _px(top + j)
            draw.line([(_px(left), y), (_px(left + width), y)], fill=color, width=line)


def _calibration(draw: ImageDraw.ImageDraw, baseline_mm: float) -> float:
    x0 = GRID_LEFT_MM + 1.0
    top = baseline_mm - MM_PER_MV
    pts = [
        (x0, baseline_mm),
        (x0 + 1.0, baseline_mm),
        (x0 + 1.0, top),
        (x0 + 1.0 + CAL_MM, top),
        (x0 + 1.0 + CAL_MM, baseline_mm),
        (x0 + 2.0 + CAL_MM, baseline_mm),
    ]
    draw.line([(_px(x), _px(y)) for x, y in pts], fill=TRACE, width=3)
    return x0 + 2.0 + CAL_MM  # where the signal starts


def _trace(
    draw: ImageDraw.ImageDraw,
    samples: Sequence[float],
    interval: float,
    start_s: float,
    seconds: float,
    x_mm: float,
    baseline_mm: float,
) -> None:
    first = max(0, round(start_s / interval))
    last = min(len(samples), round((start_s + seconds) / interval))
    if last - first < 2:
        return
    lo, hi = _px(GRID_TOP_MM - 8), _px(GRID_TOP_MM + ROW_MM * ROWS + 8)
    points = []
    for i in range(first, last):
        t = (i - first) * interval
        x = _px(x_mm + t * MM_PER_S)
        y = _px(baseline_mm - samples[i] / 1000.0 * MM_PER_MV)
        points.append((x, min(max(y, lo), hi)))
    draw.line(points, fill=TRACE, width=2, joint="curve")


def _header(draw: ImageDraw.ImageDraw, info: EcgDecoded) -> None:
    big, small = _font(3.6), _font(2.7)
    p = info.patient
    who = "Patient: "
    if p is not None:
        name = ", ".join(x for x in (p.family_name, p.given_name) if x)
        who += "  ".join(
            x
            for x in (
                name or "(no name)",
                f"ID {p.mrn}" if p.mrn else "",
                f"born {p.birth_date[:4]}-{p.birth_date[4:6]}-{p.birth_date[6:]}" if p.birth_date else "",
                f"sex {p.sex}" if p.sex else "",
            )
            if x
        )
    else:
        who += "(not given)"
    draw.text((_px(GRID_LEFT_MM), _px(6)), who, fill=TEXT, font=big)
    when = info.acquired.strftime("%Y-%m-%d %H:%M:%S") if info.acquired else "unknown"
    device = " ".join(x for x in (info.manufacturer, info.model, info.firmware) if x) or "unknown"
    draw.text((_px(GRID_LEFT_MM), _px(12)), f"Acquired {when}    Device {device}", fill=TEXT, font=small)
    v = info.values

    def val(key: str, unit: str = "") -> str:
        return f"{v[key]}{unit}" if key in v else "--"

    qtc = val("ecg_qtc_interval") if "ecg_qtc_interval" in v else val("ecg_qtc_bazett")
    line = (
        f"HR {val('ecg_heart_rate', '/min')}   PR {val('ecg_pr_interval', ' ms')}   "
        f"QRS {val('ecg_qrs_duration', ' ms')}   QT/QTc {val('ecg_qt_interval')}/{qtc} ms   "
        f"P {val('ecg_p_duration', ' ms')}   P-QRS-T axes {val('ecg_p_axis')} {val('ecg_qrs_axis')} "
        f"{val('ecg_t_axis')}"
    )
    draw.text((_px(GRID_LEFT_MM), _px(17)), line, fill=TEXT, font=small)
    statements = list(info.statements) or ["(no interpretation statements in the file)"]
    for i, statement in enumerate(statements[:4]):
        draw.text((_px(GRID_LEFT_MM), _px(22 + 4 * i)), statement[:140], fill=TEXT, font=small)


def render_page(info: EcgDecoded, waves: aecg.Waveforms) -> Image.Image:
    """The report page as an RGB image (``PX_PER_MM`` pixels per millimetre)."""
    image = Image.new("RGB", (_px(PAGE_MM[0]), _px(PAGE_MM[1])), "white")
    draw = ImageDraw.Draw(image)
    _grid(draw)
    _header(draw, info)
    label = _font(2.7)
    leads = derive_limb_leads(waves.leads)
    interval = waves.sample_interval
    for row in range(ROWS):
        baseline = GRID_TOP_MM + ROW_MM * row + ROW_MM * 0.6
        x_start = _calibration(draw, baseline)
        if row < len(LAYOUT):
            for col, lead in enumerate(LAYOUT[row]):
                x_mm = x_start + col * COLUMN_S * MM_PER_S
                samples = leads.get(lead)
                text = lead if samples else f"{lead} (no data)"
                draw.text((_px(x_mm + 1), _px(baseline - 14)), text, fill=TEXT, font=label)
                if col:
                    draw.line(
                        [(_px(x_mm), _px(baseline - 3)), (_px(x_mm), _px(baseline + 3))], fill=TRACE, width=2
                    )
                if samples:
                    _trace(draw, samples, interval, col * COLUMN_S, COLUMN_S, x_mm, baseline)
        else:
            samples = leads.get(RHYTHM_LEAD)
            text = f"{RHYTHM_LEAD} (rhythm)"
            draw.text((_px(x_start + 1), _px(baseline - 14)), text, fill=TEXT, font=label)
            if samples:
                _trace(draw, samples, interval, 0.0, 4 * COLUMN_S, x_start, baseline)
    footer = (
        f"{MM_PER_S:g} mm/s   {MM_PER_MV:g} mm/mV   sample interval {interval * 1000:g} ms   "
        "rendered by vitals-agent from the file's waveform digits; confirm against the cart's own printout"
    )
    draw.text((_px(GRID_LEFT_MM), _px(GRID_TOP_MM + ROW_MM * ROWS + 3)), footer, fill=TEXT, font=label)
    return image


def pdf_page(image: Image.Image) -> bytes:
    """A one-page PDF showing ``image`` at its physical size (``PX_PER_MM``), losslessly: the page is
    quantised to a small palette and embedded as an indexed, Flate-compressed image (Pillow's own PDF
    writer would use JPEG, which blurs the thin trace)."""
    indexed = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette = (indexed.getpalette() or [])[: 3 * 16]
    colors = len(palette) // 3
    width, height = indexed.size
    pixels = zlib.compress(indexed.tobytes(), 6)
    w_pt = width / PX_PER_MM / 25.4 * 72
    h_pt = height / PX_PER_MM / 25.4 * 72
    content = f"q {w_pt:.2f} 0 0 {h_pt:.2f} 0 0 cm /Im0 Do Q\n".encode()
    image_dict = (
        f"<< /Type /XObject /Subtype /Image /Width {width} /Height {height} "
        f"/ColorSpace [/Indexed /DeviceRGB {colors - 1} <{bytes(palette).hex()}>] "
        f"/BitsPerComponent 8 /Filter /FlateDecode /Length {len(pixels)} >>"
    ).encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w_pt:.2f} {h_pt:.2f}] "
            "/Resources << /XObject << /Im0 4 0 R >> >> /Contents 5 0 R >>"
        ).encode(),
        image_dict + b"\nstream\n" + pixels + b"\nendstream",
        f"<< /Length {len(content)} >>".encode() + b"\nstream\n" + content + b"endstream",
        b"<< /Title (12-lead ECG) /Producer (vitals-agent) >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {len(objects)} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


def render_aecg(
    data: bytes, *, fmt: Literal["png", "pdf"] = "pdf", max_bytes: int = DEFAULT_MAX_XML_BYTES
) -> bytes:
    """PNG or PDF bytes of the report page for one aECG file. Raises DecodeError for unusable files."""
    root = aecg.document(data, max_bytes=max_bytes)
    return render_document(aecg.parse_document(root), root, fmt=fmt)


def render_file(
    data: bytes, *, fmt: Literal["png", "pdf"] = "pdf", max_bytes: int = DEFAULT_MAX_XML_BYTES
) -> bytes:
    """The report page of an HL7 aECG or a Philips Sierra ECG XML file (told apart by the root element)."""
    if b"restingecgdata" in data[:4096] or "restingecgdata".encode("utf-16-le") in data[:8192]:
        root = philips.document(data, max_bytes=max_bytes)
        return render_waves(philips.parse_document(root), philips.waveforms(root), fmt=fmt)
    return render_aecg(data, fmt=fmt, max_bytes=max_bytes)


def render_document(info: EcgDecoded, root: ET.Element, *, fmt: Literal["png", "pdf"] = "pdf") -> bytes:
    """:func:`render_aecg` for a document already parsed (:func:`aecg.document`) and decoded (``info``)."""
    return render_waves(info, aecg.document_waveforms(root), fmt=fmt)


def render_waves(info: EcgDecoded, waves: aecg.Waveforms, *, fmt: Literal["png", "pdf"] = "pdf") -> bytes:
    """PNG or PDF bytes of the report page for decoded values and waveforms of any format."""
    image = render_page(info, waves)
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG")
    elif fmt == "pdf":
        out.write(pdf_page(image))
    else:
        raise DecodeError(f"unknown output format {fmt!r}")
    return out.getvalue()
