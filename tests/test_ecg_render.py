"""The 12-lead report page: scale (25 mm/s, 10 mm/mV), grid, calibration pulse, derived limb leads, PNG
and PDF output, the ED attachment of ``aecg-xml`` with ``attach_report``. The page rendered from the HL7
example is saved to test-artifacts/ecg_report.png for people to look at."""

from __future__ import annotations

import asyncio
import io
import re
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.test_ecg_fixtures import ctx, driver, sample, synthetic_aecg
from vitals_agent.drivers.ecg import aecg, render
from vitals_agent.errors import DecodeError
from vitals_agent.models import Reading

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

# 4 s at 500 Hz: baseline, then a 1 mV (200 x 5 uV) plateau from 0.4 s to 0.6 s in lead I, nothing in II
PULSE = [200 if 200 <= i < 300 else 0 for i in range(2000)]


def pulse_file() -> bytes:
    return synthetic_aecg(leads={"MDC_ECG_LEAD_I": PULSE, "MDC_ECG_LEAD_II": [0] * 2000})


def px(mm: float) -> int:
    return round(mm * render.PX_PER_MM)


def dark(pixel: object) -> bool:
    assert isinstance(pixel, tuple)
    return bool(max(pixel) < 80)


def test_waveforms_in_microvolts() -> None:
    waves = aecg.waveforms(pulse_file())
    assert waves.sample_interval == 0.002
    assert waves.leads["I"][250] == 1000.0 and waves.leads["I"][0] == 0.0
    assert sorted(waves.leads) == ["I", "II"]


def test_limb_leads_are_derived_from_i_and_ii() -> None:
    leads = render.derive_limb_leads({"I": [100.0, 0.0], "II": [300.0, 200.0]})
    assert leads["III"] == [200.0, 200.0]
    assert leads["aVR"] == [-200.0, -100.0]
    assert leads["aVL"] == [-50.0, -100.0]
    assert leads["aVF"] == [250.0, 200.0]


def test_scale_grid_and_calibration() -> None:
    png = render.render_aecg(pulse_file(), fmt="png")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (px(297), px(210))  # A4 landscape at 8 px/mm
    baseline = render.GRID_TOP_MM + render.ROW_MM * 0.6  # row 0: I, aVR, V1, V4
    start = render.GRID_LEFT_MM + 2.0 + render.CAL_MM
    # calibration pulse: 10 mm tall (1 mV at 10 mm/mV), 5 mm wide (0.2 s at 25 mm/s)
    assert dark(image.getpixel((px(render.GRID_LEFT_MM + 2 + 2.5), px(baseline - 10))))
    assert not dark(image.getpixel((px(render.GRID_LEFT_MM + 2 + 2.5), px(baseline - 12))))
    # lead I plateau (1 mV) from 0.4 s to 0.6 s -> 10 mm up, 10 mm .. 15 mm after the signal start
    assert dark(image.getpixel((px(start + 12.5), px(baseline - 10))))
    assert dark(image.getpixel((px(start + 5), px(baseline))))  # baseline before the pulse
    assert not dark(image.getpixel((px(start + 12.5), px(baseline))))
    # grid: a 5 mm (major) line and a 1 mm (minor) line in an empty area of the rhythm row
    top_rhythm = render.GRID_TOP_MM + 3 * render.ROW_MM
    assert image.getpixel((px(render.GRID_LEFT_MM + 100), px(top_rhythm + 2))) == render.MAJOR
    assert image.getpixel((px(render.GRID_LEFT_MM + 101), px(top_rhythm + 2.5))) == render.MINOR


def test_pdf_is_a_lossless_a4_page_of_the_same_drawing() -> None:
    data = pulse_file()
    pdf = render.render_aecg(data, fmt="pdf")
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    box = re.search(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", pdf)
    assert box is not None
    width_mm, height_mm = (float(v) / 72 * 25.4 for v in box.groups())
    assert abs(width_mm - 297) < 0.1 and abs(height_mm - 210) < 0.1
    start = re.search(rb"startxref\s+(\d+)", pdf)
    assert start is not None and pdf[int(start.group(1)) :].startswith(b"xref")
    offsets = [int(x) for x in re.findall(rb"(\d{10}) 00000 n ", pdf)]
    assert len(offsets) == 6
    for number, offset in enumerate(offsets, 1):
        assert pdf[offset:].startswith(f"{number} 0 obj".encode())
    image = re.search(
        rb"/Width (\d+) /Height (\d+) /ColorSpace \[/Indexed /DeviceRGB (\d+) <([0-9a-f]+)>\] "
        rb"/BitsPerComponent 8 /Filter /FlateDecode /Length (\d+) >>\nstream\n",
        pdf,
    )
    assert image is not None
    width, height, _top, palette, length = image.groups()
    raw = zlib.decompress(pdf[image.end() : image.end() + int(length)])
    page = Image.frombytes("P", (int(width), int(height)), raw)
    page.putpalette(bytes.fromhex(palette.decode()))
    from_pdf = page.convert("RGB")
    from_png = Image.open(io.BytesIO(render.render_aecg(data, fmt="png"))).convert("RGB")
    assert from_pdf.size == from_png.size == (px(297), px(210))
    points = [(x, y) for x in range(0, from_png.width, 5) for y in range(0, from_png.height, 5)]
    differ = sum(dark(from_pdf.getpixel(p)) != dark(from_png.getpixel(p)) for p in points)
    assert differ <= len(points) // 1000


def test_file_without_waveforms_is_a_decode_error() -> None:
    data = sample("hl7-aecg", "fda_aecg-python_minimum_aecg.xml").read_bytes()
    # the minimal file has one lead: renders; a file with no sequence at all does not
    assert render.render_aecg(data, fmt="png").startswith(b"\x89PNG")
    with pytest.raises(DecodeError, match="no lead waveforms"):
        render.render_aecg(synthetic_aecg(leads={}).replace(b"MDC_ECG_LEAD_I", b"X"), fmt="png")


def test_aecg_driver_attaches_the_report_when_asked() -> None:
    drv = driver("aecg-xml", attach_report=True)
    reading = drv.decode_chunks([pulse_file()], ctx())[0]
    assert isinstance(reading, Reading)
    assert [(a.name, a.media_type) for a in reading.attachments] == [("ecg_report.pdf", "application/pdf")]
    assert reading.attachments[0].data.startswith(b"%PDF-")


def test_render_the_hl7_example_page() -> None:
    data = sample("hl7-aecg", "HL7_Example_aECG_2003-12.xml").read_bytes()
    png = render.render_aecg(data, fmt="png")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ecg_report.png").write_bytes(png)
    (ARTIFACTS / "ecg_report.pdf").write_bytes(render.render_aecg(data, fmt="pdf"))
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (px(297), px(210))
    # every one of the 12 panels and the rhythm strip has trace pixels on its baseline row
    for row in range(4):
        baseline = px(render.GRID_TOP_MM + render.ROW_MM * row + render.ROW_MM * 0.6)
        for col in range(4 if row < 3 else 1):
            x0 = px(render.GRID_LEFT_MM + 7 + col * 62.5 + 5)
            window = [
                image.getpixel((x, y))
                for x in range(x0, x0 + px(50), 4)
                for y in range(baseline - 40, baseline + 40)
            ]
            assert any(dark(p) for p in window), (row, col)


@pytest.mark.slow  # starts a Python process
def test_cli_ecg_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    src = tmp_path / "in.xml"
    src.write_bytes(pulse_file())
    out = tmp_path / "report.png"
    done = subprocess.run(
        [sys.executable, "-m", "vitals_agent", "ecg-render", str(src), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (px(297), px(210))
    import argparse

    from vitals_agent.commands.ecg import cmd_ecg_render

    args = argparse.Namespace(file=tmp_path / "missing.xml", out=out, format=None, max_bytes=1000)
    assert asyncio.run(cmd_ecg_render(args)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ecg-render: ")
