"""``vitals-agent interface-spec --config FILE [--format md|html] [--out FILE]``: the HL7 interface
specification for this site, generated from the agent's own message builder (for the EHR interface team)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from vitals_agent.agent.paths import data_dir, gateway_eui64
from vitals_agent.agent.pipeline.interface_spec import build_spec, render_html, render_markdown
from vitals_agent.commands._options import add_command, add_config_option, config_from
from vitals_agent.errors import VitalsAgentError
from vitals_agent.models import eui64_digits


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "interface-spec", cmd_interface_spec)
    add_config_option(p)
    p.add_argument("--format", choices=("md", "html"), default="md", help="Markdown (default) or HTML")
    p.add_argument("--out", "-o", type=Path, metavar="FILE", help="write here instead of standard output")
    p.add_argument(
        "--gateway-eui64",
        metavar="HEX",
        help="the gateway EUI-64 to show (default: this host's, as the agent would use)",
    )


async def cmd_interface_spec(args: argparse.Namespace) -> int:
    config = config_from(args)
    # the agent's gateway id when it has one; nothing is written into its data_dir from here
    gateway = args.gateway_eui64 or gateway_eui64(config, data_dir(config, create=False), persist=False)
    gateway = eui64_digits(gateway)
    if not re.fullmatch(r"[0-9A-F]{16}", gateway):
        raise VitalsAgentError(f"--gateway-eui64 {args.gateway_eui64!r}: 16 hexadecimal digits, please")
    spec = build_spec(config, gateway)
    text = render_html(spec) if args.format == "html" else render_markdown(spec)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise VitalsAgentError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    print(
        f"wrote {args.out} ({len(spec.fields)} fields, {len(spec.codes)} codes, {len(spec.samples)} samples)"
    )
    return 0
