"""Issue 17: the operator's actions on messages whose application ACK is overdue (STATE ``ackwait``).

Enhanced acknowledgement mode leaves a message the receiver committed (``CA``) in the outbox's
``awaiting_ack`` table until its application ACK. When the engine never sends one, the interface analyst
decides: ``outbox retry ID`` sends it again with the same MSH-10, ``outbox dead-letter ID`` stops waiting
and parks it with the dead letters. Both are audit records; a running agent stops waiting for it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.fake_ehr import Hl7Ehr, make_message, msh10
from tests.kit import until
from vitals_agent.agent.delivery import sender as sender_module
from vitals_agent.agent.delivery.policy import DeliveryPolicy, Settings
from vitals_agent.agent.service import AgentService
from vitals_agent.agent.storage.audit import read_audit
from vitals_agent.agent.storage.outbox import Outbox
from vitals_agent.cli import main
from vitals_agent.config.schema import parse_config


def audit(data: Path) -> list[dict[str, object]]:
    path = data / "audit.jsonl"
    return list(read_audit(path)) if path.exists() else []


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """C0 queued, C1 and C2 committed by the receiver (CA) and awaiting their application ACK, C3 dead."""
    ob = Outbox(tmp_path)
    for i in range(4):
        ob.enqueue(control_id=f"C{i}", device_id="cuff-room7", body=make_message(f"C{i}"))
    ob.mark_failure(2, "no ACK", attempted=True)
    ob.await_app_ack(2)
    ob.await_app_ack(3)
    ob.dead_letter(4, "rejected by the receiver (AR)", ack_code="AR")
    ob.close()
    return tmp_path


async def test_retry_sends_an_ackwait_message_again_with_its_msh10(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await main(["outbox", "retry", "C1", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.strip() == (
        "re-queued message 2 (C1) (it awaited its application ACK); it keeps its MSH-10"
    )
    ob = Outbox(data)
    try:
        queued = {m.id: m for m in ob.peek()}
        assert sorted(queued) == [1, 2]  # back at its original place, before nothing newer
        again = queued[2]
        assert (again.control_id, again.body, again.attempts) == ("C1", make_message("C1"), 1)
        assert again.last_error is not None and "no application ACK" in again.last_error
        assert [a.control_id for a in ob.awaiting()] == ["C2"]
    finally:
        ob.close()
    [rec] = audit(data)
    assert (rec["event"], rec["ids"], rec["control_ids"], rec["ackwait"], rec["channel"]) == (
        "outbox_retried",
        [2],
        ["C1"],
        True,
        "cli",
    )
    assert rec["user"] and rec.get("uid") == (os.getuid() if hasattr(os, "getuid") else None)


async def test_dead_letter_gives_up_on_an_ackwait_message(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["outbox", "dead-letter", "3", "--reason", "engine team: INC-4711", "--data-dir", str(data)]
    assert await main(args) == 0
    assert capsys.readouterr().out.strip() == (
        "dead-lettered message 3 (C2): no longer waiting for its application ACK "
        "(`outbox retry` sends it again)"
    )
    ob = Outbox(data)
    try:
        dead = {d.control_id: d for d in ob.list_dead()}
        assert sorted(dead) == ["C2", "C3"]
        assert dead["C2"].id == 3 and dead["C2"].body == make_message("C2") and dead["C2"].ack_code is None
        assert dead["C2"].reason.startswith("operator gave up waiting for the application ACK")
        assert dead["C2"].reason.endswith(": engine team: INC-4711")
        assert [a.control_id for a in ob.awaiting()] == ["C1"]
    finally:
        ob.close()
    [rec] = audit(data)
    assert (rec["event"], rec["ids"], rec["control_ids"], rec["reason"], rec["all_ackwait"]) == (
        "outbox_dead_lettered",
        [3],
        ["C2"],
        "engine team: INC-4711",
        False,
    )
    # a dead letter like any other: retry sends it again
    assert await main(["outbox", "retry", "C2", "--data-dir", str(data)]) == 0
    assert "re-queued message 3 (C2); it keeps its MSH-10" in capsys.readouterr().out


async def test_all_ackwait(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["outbox", "dead-letter", "--all-ackwait", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.count("dead-lettered message") == 2
    assert await main(["outbox", "dead-letter", "--all-ackwait", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.strip() == "no message awaits an application ACK"
    ob = Outbox(data)
    ob.await_app_ack(1)
    ob.close()
    assert await main(["outbox", "retry", "--all-ackwait", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.strip() == (
        "re-queued 1 message(s) awaiting an application ACK; each keeps its MSH-10"
    )
    events = [(e["event"], e["ids"], e["count"]) for e in audit(data)]
    assert events == [
        ("outbox_dead_lettered", [2, 3], 2),
        ("outbox_dead_lettered", [], 0),
        ("outbox_retried", [1], 1),
    ]


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("C0", "error: message 1 (C0) is queued, not awaiting an application ACK"),
        ("C3", "error: message 4 (C3) is dead already, not awaiting an application ACK"),
        ("C9", "error: no message with id or MSH-10 'C9'"),
    ],
)
async def test_dead_letter_refuses_what_is_not_ackwait(
    data: Path, capsys: pytest.CaptureFixture[str], key: str, error: str
) -> None:
    assert await main(["outbox", "dead-letter", key, "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(error) and "\n" not in err
    ob = Outbox(data)
    try:
        assert (ob.depth(), len(ob.awaiting()), ob.dead_count()) == (1, 2, 1)  # nothing moved
    finally:
        ob.close()
    assert audit(data) == []


async def test_show_finds_an_ackwait_message(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await main(["outbox", "show", "C2", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "state: ackwait" in out and "|C2|P|2.6|" in out


async def test_not_done_when_it_cannot_be_audited(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (data / "audit.jsonl").mkdir()
    assert await main(["outbox", "dead-letter", "C1", "--data-dir", str(data)]) == 1
    assert "nothing was done (every outbox action is audited)" in capsys.readouterr().err
    ob = Outbox(data)
    try:
        assert len(ob.awaiting()) == 2
    finally:
        ob.close()


# --- the policy forgets what an operator moved ------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    id: int
    control_id: str


def test_policy_forgets_awaited_messages_an_operator_moved() -> None:
    p: DeliveryPolicy[Msg] = DeliveryPolicy(Settings(app_ack="always", app_ack_timeout=5.0))
    p.restore_awaiting([(1, "M1", 0.0), (2, "M2", 0.0)], 0.0)
    p.answered(Msg(3, "M3"))
    assert p.accepted(Msg(3, "M3"), "CA", 0.0) is False  # its move to awaiting_ack is not written yet
    assert p.awaiting_moved({2}) == ["M1"]
    assert p.awaiting_count == 2 and p.awaiting("M2") and p.awaiting("M3")
    assert p.overdue(10.0) == (["M2", "M3"], [])  # M1 is never reported overdue
    assert p.application_ack("M1", "AA", 11.0) is None  # nor completed by a late AA


async def operator(*args: str) -> str:
    """The operator's command as its own process (``python -m vitals_agent``), beside the running agent."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vitals_agent",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


# --- a running agent and a real MLLP peer that commits (CA) and never sends the application ACK -----------


@pytest.mark.slow
async def test_running_agent_follows_the_operator_against_an_engine_that_never_sends_the_aa(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent sees an operator's change (another process) at its next idle look at the outbox: every
    # 0.1 s here, not every 2 s (what is tested is that it follows the change, not how soon).
    monkeypatch.setattr(sender_module, "IDLE_POLL_SECONDS", 0.1)
    async with Hl7Ehr(mode="CA") as ehr:  # python-hl7's MLLP server: CA to everything, never an AA
        config = parse_config(
            {
                "agent": {"facility": "EXCLINIC", "location": "CLINIC^ROOM12", "data_dir": str(tmp_path)},
                "ehr": {
                    "port": ehr.port,
                    "application_ack_type": "AL",
                    "app_ack_timeout_seconds": 0.5,  # overdue soon: the test waits for it twice
                    "backoff_min_seconds": 0.05,
                    "backoff_max_seconds": 0.1,
                },
                "control": {"enabled": False},
            }
        )
        svc = AgentService(config)
        for n in (1, 2):
            svc.outbox.enqueue(control_id=f"M{n}", device_id="cuff-1", body=make_message(f"M{n}"))

        def overdue() -> list[str]:
            return list(svc.status()["sender"]["app_ack_overdue"])

        stop = asyncio.Event()
        with capture_logs() as logs:
            run = asyncio.create_task(svc.run(stop))
            try:
                await until(lambda: overdue() == ["M1", "M2"], 15.0, "both overdue")
                assert ehr.control_ids == ["M1", "M2"]
                first_m1 = ehr.received[0].raw

                out = await operator("outbox", "retry", "M1", "--data-dir", str(tmp_path))
                assert out.startswith("re-queued message 1 (M1) (it awaited its application ACK)")
                await until(lambda: len(ehr.received) == 3, 15.0, "M1 sent again")
                assert msh10(ehr.received[2].raw) == "M1" and ehr.received[2].raw == first_m1
                # the engine committed the re-send (CA): awaiting again, overdue again after the timeout
                await until(
                    lambda: sorted(a.control_id for a in svc.outbox.awaiting()) == ["M1", "M2"],
                    15.0,
                    "M1 awaiting again",
                )
                await until(lambda: overdue() == ["M1", "M2"], 15.0, "M1 overdue again")

                args = ["dead-letter", "M2", "--reason", "INC-4711", "--data-dir", str(tmp_path)]
                assert (await operator("outbox", *args)).startswith("dead-lettered message 2 (M2)")
                await until(lambda: overdue() == ["M1"], 15.0, "the agent stops waiting for M2")
                status = svc.status()["sender"]
                assert (status["awaiting_app_ack"], status["dead"], status["depth"]) == (1, 1, 0)
            finally:
                stop.set()
                await run
    assert ehr.control_ids == ["M1", "M2", "M1"]  # M2 never again
    [dead] = Outbox(tmp_path).list_dead()
    assert dead.control_id == "M2" and dead.reason.endswith(": INC-4711")
    moved = [e for e in logs if e["event"] == "delivery.app_ack_abandoned"]
    assert [e["control_id"] for e in moved] == ["M1", "M2"]
    late = [e for e in logs if e["event"] == "delivery.app_ack_overdue"]
    assert [e["control_id"] for e in late] == ["M1", "M2", "M1"]
    actions = [(e["event"], e["control_ids"]) for e in audit(tmp_path) if "control_ids" in e]
    assert actions == [("outbox_retried", ["M1"]), ("outbox_dead_lettered", ["M2"])]
