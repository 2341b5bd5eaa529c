"""The delivery policy as a pure state machine: an injected clock (plain numbers) and jitter, no sockets,
no outbox. Each test plays the sender's part: it asks for the next step and reports what happened."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from vitals_agent.agent.delivery.policy import (
    DeadLetter,
    DeliveryPolicy,
    Fetch,
    Refill,
    Removal,
    Retry,
    Send,
    Settings,
    Settle,
    Step,
    Wait,
)
from vitals_agent.config.ehr import EhrConfig


@dataclass(frozen=True)
class Msg:
    id: int
    control_id: str


class Top(random.Random):
    """Jitter always at the top of its range: delays equal the cap, so tests can state them exactly."""

    def random(self) -> float:
        return 1.0


SETTINGS = Settings(
    max_attempts=3,
    backoff_min=1.0,
    backoff_max=8.0,
    ack_timeout=10.0,
    batch=4,
    idle_poll=2.0,
    poison_after=3,
    storage_backoff_min=0.5,
    storage_backoff_max=4.0,
    storage_give_up=30.0,
    max_unsettled=3,
)


def policy(**overrides: object) -> DeliveryPolicy[Msg]:
    settings = Settings(**{**SETTINGS.__dict__, **overrides})
    return DeliveryPolicy(settings, rng=Top())


def msgs(*ids: int) -> list[Msg]:
    return [Msg(i, f"M{i}") for i in ids]


def sent(step: Step[Msg]) -> int:
    assert isinstance(step, Send), step
    return step.message.id


def deliver_ok(p: DeliveryPolicy[Msg], msg: Msg, now: float) -> None:
    """The EHR answered AA and the removal was written."""
    p.answered(msg)
    p.accepted(msg)
    step = p.next_step(now)
    assert isinstance(step, Settle) and step.message_id == msg.id and isinstance(step.outcome, Removal)
    p.settled(msg.id, now)


def test_in_order_one_at_a_time_then_idle_until_woken() -> None:
    p = policy()
    assert p.next_step(0.0) == Refill(4)
    p.refilled(msgs(1, 2), 0.0)
    for expected in (1, 2):
        step = p.next_step(0.0)
        assert sent(step) == expected
        deliver_ok(p, Msg(expected, f"M{expected}"), 0.0)
    assert p.next_step(0.0) == Refill(4)
    p.refilled([], 0.0)
    assert p.next_step(0.0) == Wait(2.0, True, "idle")
    assert p.next_step(5.0) == Wait(2.0, True, "idle")  # nothing new until a wake-up or the poll ends
    p.woken()
    assert p.next_step(5.0) == Refill(4)


def test_link_failures_back_off_exponentially_capped_and_resend_the_same_message() -> None:
    p = policy()
    p.refilled(msgs(1, 2), 0.0)
    now = 0.0
    delays = []
    for _ in range(6):
        msg = Msg(sent(p.next_step(now)), "M1")
        assert msg.id == 1  # order kept: the same message again
        verdict = p.link_failed(msg, now, after_connect=False)
        delays.append(verdict.delay)
        step = p.next_step(now)
        assert step == Wait(verdict.delay, False, "link")  # a new reading does not cut it short
        now += verdict.delay
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert p.failures == 6
    assert p.answered(Msg(1, "M1")) == 6
    assert p.failures == 0


def test_backoff_jitter_stays_in_the_upper_half() -> None:
    p = DeliveryPolicy[Msg](SETTINGS, rng=random.Random(7))
    for n, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (60, 8.0), (10_000, 8.0)]:
        values = [p.backoff(n) for _ in range(200)]
        assert all(cap / 2 <= v <= cap for v in values)
        assert len(set(values)) > 100


def test_ae_defers_the_message_lets_later_ones_go_then_dead_letters_after_max_attempts() -> None:
    p = policy()
    p.refilled(msgs(1, 2, 3), 0.0)
    m1 = Msg(1, "M1")
    assert sent(p.next_step(0.0)) == 1
    p.answered(m1)
    assert p.negative(m1, "AE", known=True, nacks=1, now=0.0, text="AE: bad") == Retry(1.0, 1)
    assert sent(p.next_step(0.0)) == 2  # not held back behind M1
    deliver_ok(p, Msg(2, "M2"), 0.0)
    assert sent(p.next_step(0.5)) == 3
    deliver_ok(p, Msg(3, "M3"), 0.5)
    assert p.next_step(1.0) == Fetch(1)  # M1's back-off is over: read it again, send it first
    p.fetched(1, m1, 1.0)
    assert sent(p.next_step(1.0)) == 1
    p.answered(m1)
    assert p.negative(m1, "AE", known=True, nacks=2, now=1.0, text="AE: bad") == Retry(2.0, 2)
    p.fetched(1, m1, 3.0)
    p.answered(m1)
    verdict = p.negative(m1, "AE", known=True, nacks=3, now=3.0, text="AE: bad")
    assert verdict == DeadLetter("AE 3 times (max_attempts 3)", "AE", "AE: bad", "AE")
    step = p.next_step(3.0)
    assert isinstance(step, Settle) and (step.message_id, step.outcome) == (1, verdict)


@pytest.mark.parametrize(
    ("code", "known", "reason"),
    [
        ("AR", True, "rejected by the receiver (AR)"),
        ("CR", True, "rejected by the receiver (CR)"),
        ("XX", False, "unknown acknowledgement code 'XX'"),
    ],
)
def test_reject_and_unknown_codes_dead_letter_at_once(code: str, known: bool, reason: str) -> None:
    p = policy()
    p.refilled(msgs(1, 2), 0.0)
    m1 = Msg(1, "M1")
    sent(p.next_step(0.0))
    p.answered(m1)
    verdict = p.negative(m1, code, known=known, nacks=1, now=0.0, text=f"{code}: no", summary=f"{code} [1]")
    assert verdict == DeadLetter(reason, code, f"{code}: no", f"{code} [1]")
    step = p.next_step(0.0)
    assert isinstance(step, Settle) and step.message_id == 1
    p.settled(1, 0.0)
    assert sent(p.next_step(0.0)) == 2


def test_negative_count_survives_an_outbox_that_cannot_count() -> None:
    """mark_failure failed (nacks=None): the policy's own count still reaches max_attempts."""
    p = policy()
    p.refilled(msgs(1), 0.0)
    m1 = Msg(1, "M1")
    results = []
    for now in (0.0, 10.0, 20.0):
        p.fetched(1, m1, now)
        results.append(p.negative(m1, "AE", known=True, nacks=None, now=now, text="AE"))
    assert isinstance(results[0], Retry) and isinstance(results[1], Retry)
    assert results[2] == DeadLetter("AE 3 times (max_attempts 3)", "AE", "AE", "AE")


def test_a_message_failing_after_connect_is_probed_as_poison_and_dead_lettered() -> None:
    p = policy()
    p.refilled(msgs(1, 2, 3), 0.0)
    m1 = Msg(1, "M1")
    now = 0.0
    for attempt in range(1, 4):
        assert sent(p.next_step(now)) == 1
        verdict = p.link_failed(m1, now, after_connect=True)
        assert verdict.suspect is (attempt == 3)
        now += verdict.delay
    assert sent(p.next_step(now)) == 2  # the next message is tried in M1's place
    p.answered(Msg(2, "M2"))  # ... and the receiver takes it: M1 is poison
    p.accepted(Msg(2, "M2"))
    outcomes = []
    while isinstance(step := p.next_step(now), Settle):
        outcomes.append((step.message_id, type(step.outcome).__name__))
        p.settled(step.message_id, now)
    assert sorted(outcomes) == [(1, "DeadLetter"), (2, "Removal")]
    assert sent(step) == 3


def test_an_ehr_failing_every_message_dead_letters_nothing_and_restores_order() -> None:
    p = policy()
    p.refilled(msgs(1, 2), 0.0)
    now = 0.0
    for _ in range(3):
        verdict = p.link_failed(Msg(sent(p.next_step(now)), "M1"), now, after_connect=True)
        now += verdict.delay
    assert sent(p.next_step(now)) == 2
    verdict = p.link_failed(Msg(2, "M2"), now, after_connect=True)  # the probe fails too
    assert not verdict.suspect
    now += verdict.delay
    assert p.next_step(now) == Fetch(1)  # M1 back in front: order restored
    p.fetched(1, Msg(1, "M1"), now)
    assert sent(p.next_step(now)) == 1
    assert p.snapshot(now)["suspect"] is None


def test_refused_connections_never_make_a_message_a_suspect() -> None:
    p = policy()
    p.refilled(msgs(1, 2), 0.0)
    now = 0.0
    for _ in range(10):
        verdict = p.link_failed(Msg(sent(p.next_step(now)), "M1"), now, after_connect=False)
        assert not verdict.suspect
        now += verdict.delay


def test_an_acknowledged_message_is_never_offered_again_while_its_removal_fails() -> None:
    """Issue 10 item 7: the resend storm on a full disk."""
    p = policy()
    p.refilled(msgs(1, 2, 3, 4, 5), 0.0)
    now = 0.0
    offered: list[int] = []
    while len(offered) < 30:
        step = p.next_step(now)
        if isinstance(step, Send):
            offered.append(step.message.id)
            p.answered(step.message)
            p.accepted(step.message)
        elif isinstance(step, Settle):
            verdict = p.storage_failed(now, "disk full", write=True)  # the delete fails, every time
            assert not verdict.give_up or now >= 30.0
        elif isinstance(step, Refill):
            p.refilled(msgs(1, 2, 3, 4, 5), now)  # the outbox still lists every one of them
        else:
            assert isinstance(step, Wait)
            now += max(step.seconds, 0.01)
            if step.wake_on_new:
                p.woken()
        if now > 25.0:
            break
    assert offered == [1, 2, 3]  # each once; then max_unsettled (3) pauses sending
    assert p.snapshot(now)["unsettled_removals"] == 3


def test_settling_is_retried_on_the_storage_back_off_and_sending_goes_on_meanwhile() -> None:
    p = policy(max_unsettled=10)
    p.refilled(msgs(1, 2), 0.0)
    m1, m2 = Msg(1, "M1"), Msg(2, "M2")
    sent(p.next_step(0.0))
    p.answered(m1)
    p.accepted(m1)
    first = p.next_step(0.0)
    assert isinstance(first, Settle) and first.first_try
    verdict = p.storage_failed(0.0, "disk full", write=True)
    assert (verdict.delay, verdict.first, verdict.give_up) == (0.5, True, False)
    assert sent(p.next_step(0.1)) == 2  # the removal waits; the next message does not
    p.answered(m2)
    p.accepted(m2)
    assert p.next_step(0.2) == Refill(4 + 2)
    p.refilled(msgs(1, 2), 0.2)  # the outbox still lists both: neither is offered again
    step = p.next_step(0.2)
    assert isinstance(step, Wait) and step.wake_on_new and step.seconds == pytest.approx(0.3)
    again = p.next_step(0.5)
    assert isinstance(again, Settle) and again.message_id == 1 and not again.first_try
    assert p.settled(1, 0.5) is True  # that ended the failure
    step = p.next_step(0.5)
    assert isinstance(step, Settle) and step.message_id == 2
    assert p.settled(2, 0.5) is False
    assert p.snapshot(0.5)["unsettled"] == 0


def test_removals_remembered_from_the_last_run_come_before_anything_is_sent() -> None:
    p = policy()
    p.remembered({7: "M7", 5: "M5"})
    steps = []
    while isinstance(step := p.next_step(0.0), Settle):
        steps.append((step.message_id, step.control_id, step.message))
        p.settled(step.message_id, 0.0)
    assert steps == [(5, "M5", None), (7, "M7", None)]
    assert p.next_step(0.0) == Refill(4)
    p.refilled(msgs(5, 6), 0.0)
    assert sent(p.next_step(0.0)) == 5  # settled: whatever the outbox still says is sent


def test_remembered_removals_are_not_resent_while_the_outbox_cannot_remove_them() -> None:
    p = policy()
    p.remembered({1: "M1"})
    assert isinstance(p.next_step(0.0), Settle)
    p.storage_failed(0.0, "read-only", write=True)
    assert p.next_step(0.0) == Refill(4 + 1)
    p.refilled(msgs(1, 2), 0.0)
    assert sent(p.next_step(0.0)) == 2


def test_storage_read_errors_back_off_capped_and_give_up_after_the_bound() -> None:
    p = policy()
    now = 0.0
    delays = []
    verdicts = []
    while True:
        step = p.next_step(now)
        if isinstance(step, Wait):
            now += step.seconds
            continue
        assert step == Refill(4)
        verdict = p.storage_failed(now, "the file is damaged", write=False)
        verdicts.append(verdict)
        delays.append(verdict.delay)
        if verdict.give_up:
            break
        now += 0.0
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [v.first for v in verdicts] == [True] + [False] * (len(verdicts) - 1)
    assert verdicts[-1].failing_for >= 30.0 and not verdicts[-2].give_up
    assert len(verdicts) <= 2 + 30 // 4 + 3  # bounded: not 25 attempts a second
    snap = p.snapshot(now)
    assert snap["storage_error"] == "the file is damaged" and snap["storage_failures"] == len(verdicts)


def test_a_success_ends_a_run_of_storage_failures() -> None:
    p = policy()
    p.storage_failed(0.0, "locked", write=False)
    p.storage_failed(0.5, "locked", write=False)
    assert p.refilled([], 29.0) is True
    assert p.snapshot(29.0)["storage_error"] is None
    verdict = p.storage_failed(29.5, "locked", write=False)
    assert verdict.first and verdict.failing_for == 0.0 and not verdict.give_up


def test_framing_bytes_are_refused_and_dead_lettered() -> None:
    p = policy()
    p.refilled(msgs(1, 2), 0.0)
    p.refuse(Msg(1, "M1"), "framing byte")
    step = p.next_step(0.0)
    assert isinstance(step, Settle) and step.outcome == DeadLetter("framing byte")
    p.settled(1, 0.0)
    assert sent(p.next_step(0.0)) == 2


def test_internal_errors_back_off_more_each_time_and_reset_on_an_answer() -> None:
    p = policy()
    assert [p.internal_error(0.0) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert p.next_step(0.0) == Wait(8.0, False, "link")
    p.answered(Msg(1, "M1"))
    assert p.internal_error(0.0) == 1.0


def test_late_acks_are_recognised_for_recently_delivered_messages() -> None:
    p = policy()
    p.refilled(msgs(1), 0.0)
    deliver_ok(p, Msg(1, "M1"), 0.0)
    assert p.was_acked("M1") and not p.was_acked("M2")


def test_settings_from_the_ehr_section() -> None:
    ehr = EhrConfig(max_attempts=5, retry_negative="AE", backoff_min_seconds=0.1, backoff_max_seconds=9)
    s = Settings.from_ehr(ehr)
    assert (s.max_attempts, s.retry_negative, s.backoff_min, s.backoff_max) == (5, frozenset({"AE"}), 0.1, 9)
    tuned = s.tuned(storage_give_up=10.0, batch=8, idle_poll=0.5, poison_after=2)
    assert (tuned.storage_give_up, tuned.storage_backoff_max) == (10.0, 2.0)
    assert (tuned.batch, tuned.idle_poll, tuned.poison_after, tuned.max_attempts) == (8, 0.5, 2, 5)
    assert s.tuned(storage_give_up=300.0, batch=8, idle_poll=0.5, poison_after=2).storage_backoff_max == 30.0
