"""``vitals-agent audit verify``: check the audit trail's hash chain (rotated files included)."""

from __future__ import annotations

import argparse
import asyncio

from vitals_agent.commands._options import add_action, add_actions, add_config_option, config_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = add_actions(sub, "audit")
    add_action(
        group,
        "verify",
        cmd_verify,
        help="check that no record was changed, removed or reordered (exit 1 when one was)",
    )
    for action in group.choices.values():  # each one reads the trail in the configuration's data_dir
        add_config_option(action)


async def cmd_verify(args: argparse.Namespace) -> int:
    from vitals_agent.agent.paths import data_dir
    from vitals_agent.agent.storage.audit_chain import read_head, trail_files, verify
    from vitals_agent.errors import VitalsAgentError

    folder = data_dir(config_from(args), create=False)
    try:
        files = trail_files(folder)
    except OSError as exc:
        raise VitalsAgentError(f"cannot read {folder}: {exc.strerror or exc}") from None
    if not files:
        raise VitalsAgentError(f"no audit trail in {folder}")
    try:
        verdict = await asyncio.to_thread(verify, files, read_head(folder))
    except OSError as exc:
        raise VitalsAgentError(f"cannot read the audit trail: {exc.strerror or exc}") from None
    for note in verdict.notes:
        print(f"note: {note}")
    for problem in verdict.problems:
        print(f"BROKEN: {problem}")
    span = f"{verdict.first_ts} .. {verdict.last_ts}" if verdict.first_ts else "empty"
    summary = (
        f"{verdict.records} records in {len(verdict.files)} file(s) ({span}), {verdict.chained} chained; "
        f"head seq {verdict.last_seq} sha256 {verdict.head}"
    )
    if verdict.problems:
        print(f"audit trail NOT intact: {len(verdict.problems)} problem(s); {summary}")
        return 1
    print(f"ok: {summary}")
    return 0
