"""``vitals-agent ecg-render FILE --out report.pdf``: draw an HL7 aECG or Philips XML file's 12 leads on a
standard ECG page (25 mm/s, 10 mm/mV); PDF or PNG by the output's extension (or ``--format``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Literal

from vitals_agent.commands._options import add_command
from vitals_agent.drivers.ecg.render import render_file
from vitals_agent.drivers.ecg.xmlsafe import DEFAULT_MAX_XML_BYTES
from vitals_agent.errors import DecodeError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "ecg-render", cmd_ecg_render)
    p.add_argument("file", type=Path, help="the aECG or Philips Sierra ECG XML file")
    p.add_argument("--out", "-o", type=Path, required=True, help="output file (.pdf or .png)")
    p.add_argument("--format", choices=("pdf", "png"), help="default: from the --out extension")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_XML_BYTES, help="refuse larger input files")


def output_format(args: argparse.Namespace) -> Literal["pdf", "png"]:
    chosen = args.format or args.out.suffix.lower().lstrip(".")
    if chosen not in ("pdf", "png"):
        raise ValueError(f"cannot tell the format from {args.out.name!r}: use .pdf, .png or --format")
    return "png" if chosen == "png" else "pdf"


def _render(args: argparse.Namespace) -> int:
    try:
        fmt = output_format(args)
        size = args.file.stat().st_size
        if size > args.max_bytes:
            raise DecodeError(f"file too large ({size} bytes > {args.max_bytes})")
        data = render_file(args.file.read_bytes(), fmt=fmt, max_bytes=args.max_bytes)
        args.out.write_bytes(data)
    except (OSError, ValueError, DecodeError) as exc:
        print(f"ecg-render: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({len(data)} bytes, {fmt})")
    return 0


async def cmd_ecg_render(args: argparse.Namespace) -> int:
    return await asyncio.to_thread(_render, args)
