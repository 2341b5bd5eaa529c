"""``vitals-agent manual NAME=VALUE...``: values a clinician entered by hand (the running agent).

Respiration rate, pain 0-10, height, O2 flow (``resp_rate=16 pain=3 height=172 o2_flow=2``) and coded
context (``position=sitting arm=left_arm cuff=adult temp_site=oral o2=nasal_cannula``). They join the
reading of this visit still waiting for review, else go to the EHR at once, validated by the signed-in
clinician (refused without one).
"""

from __future__ import annotations

import argparse

from vitals_agent.commands._control import call_as_operator
from vitals_agent.commands._options import add_command, add_config_option
from vitals_agent.commands.review import pairs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "manual", cmd_manual)
    p.add_argument("values", nargs="+", metavar="NAME=VALUE", help="e.g. resp_rate=16 pain=3 arm=left_arm")
    add_config_option(p)


async def cmd_manual(args: argparse.Namespace) -> int:
    data = await call_as_operator(args, "POST", "/api/manual", values=pairs(args.values))
    if data.get("attached"):
        print(f"entered: joins review item {data['item']} (sent when it is confirmed)")
    else:
        print(f"entered and sent (review item {data['item']}, MSH-10 {data['control_id']})")
    return 0
